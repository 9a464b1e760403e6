"""RLDSReader against TFRecord/TFDS fixtures in the Bridge-V2 and LIBERO RLDS layouts."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import struct

import crc32c
import numpy as np
import pytest
import torch

from tests.fixtures.rlds import (
    EPISODE_WRITER_TEMPLATE,
    decode_example,
    read_tfrecords,
    tfrecord_frame,
    write_rlds_dataset,
)
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader
from vlm4vla.data.formats.detect import detect_format
from vlm4vla.data.formats.rlds import RLDSReader
from vlm4vla.data.formats.tfds import has_split, resolve_rlds_root
from vlm4vla.data.formats.tfrecord import Example, masked_crc32c

torch.set_num_threads(1)

PRIMARY = {"bridge": "image_0", "libero": "image"}
JPEG_MEAN_ERROR = 3.0


@pytest.fixture(scope="module", params=["bridge", "libero"])
def dataset(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"rlds-{request.param}")
    written = write_rlds_dataset(root, flavour=request.param, num_episodes=4, steps=6, num_shards=2, val_episodes=1)
    written["flavour"] = request.param
    return written


@pytest.fixture()
def copy(dataset, tmp_path):
    """A private copy of the dataset directory to corrupt."""
    target = tmp_path / dataset["name"]
    shutil.copytree(dataset["root"], target)
    return target


def _assert_frame(frame, frames, step):
    assert frame.dtype == np.uint8 and frame.shape == frames[step].shape
    errors = np.abs(frame.astype(np.int16)[None] - frames.astype(np.int16)).mean(axis=(1, 2, 3))
    assert errors[step] < JPEG_MEAN_ERROR, errors
    assert int(np.argmin(errors)) == step, errors


def test_episodes_actions_instructions_frames(dataset):
    reader = RLDSReader(dataset["root"])
    assert isinstance(reader, EpisodeReader)
    assert reader.image_key == f"steps/observation/{PRIMARY[dataset['flavour']]}"
    assert reader.stored_rotated_180 is False
    episodes = dataset["splits"]["train"]["episodes"]
    assert len(reader) == len(episodes)
    for e, written in enumerate(episodes):
        assert reader.episode_length(e) == written["length"]
        assert reader.instruction(e) == written["instruction"]
        actions = reader.actions(e)
        assert actions.dtype == np.float32 and actions.shape == (written["length"], 7)
        np.testing.assert_array_equal(actions, written["actions"])
        np.testing.assert_array_equal(reader.field(e, "steps/observation/state"), written["state"])
        primary = written["frames"][PRIMARY[dataset["flavour"]]]
        for step in range(written["length"]):
            _assert_frame(reader.frame(e, step), primary, step)
    with pytest.raises(IndexError):
        reader.frame(0, episodes[0]["length"])
    with pytest.raises(IndexError):
        reader.actions(len(reader))
    assert reader.field(0, "steps/is_first").tolist() == [1] + [0] * (episodes[0]["length"] - 1)


def test_explicit_image_key(dataset):
    other = "image_2" if dataset["flavour"] == "bridge" else "wrist_image"
    written = dataset["splits"]["train"]["episodes"][1]["frames"][other]
    for key in (other, f"steps/observation/{other}"):
        reader = RLDSReader(dataset["root"], image_key=key)
        assert reader.image_key == f"steps/observation/{other}"
        _assert_frame(reader.frame(1, 3), written, 3)
    with pytest.raises(DatasetFormatError, match=r"features\.json: missing field 'steps/observation/nope'"):
        RLDSReader(dataset["root"], image_key="nope")
    with pytest.raises(DatasetFormatError, match=r"'steps/observation/state' is a tensor feature"):
        RLDSReader(dataset["root"], image_key="state")


def test_splits(dataset):
    assert has_split(dataset["root"], "train") and has_split(dataset["root"], "val")
    assert not has_split(dataset["root"], "test")
    assert not has_split(dataset["root"].parent, "train")
    val = RLDSReader(dataset["root"], split="val")
    written = dataset["splits"]["val"]["episodes"]
    assert len(val) == len(written) == 1
    assert val.instruction(0) == written[0]["instruction"]
    np.testing.assert_array_equal(val.actions(0), written[0]["actions"])
    with pytest.raises(DatasetFormatError, match=r"no shards for split 'test'"):
        RLDSReader(dataset["root"], split="test")


def test_lazy_and_picklable(dataset):
    reader = RLDSReader(dataset["root"])
    assert reader._records is None and not reader._fds  # nothing opened in __init__
    first = reader.frame(3, 2)
    clone = pickle.loads(pickle.dumps(reader))
    assert not clone._fds and not clone._examples and clone._records is not None  # index travels
    np.testing.assert_array_equal(clone.frame(3, 2), first)
    reader.close()
    np.testing.assert_array_equal(reader.frame(3, 2), first)


def test_one_parse_per_episode(dataset, monkeypatch):
    reader = RLDSReader(dataset["root"])
    reads = []
    original = RLDSReader._pread
    monkeypatch.setattr(RLDSReader, "_pread", lambda self, f, n, o: (reads.append(n), original(self, f, n, o))[1])
    len(reader)
    headers = len(reads)
    assert set(reads) == {12}  # the index reads record headers only
    for step in range(reader.episode_length(2)):
        reader.frame(2, step)
    reader.actions(2)
    reader.instruction(2)
    assert len(reads) == headers + 1


def test_float64_declared_actions(tmp_path):
    written = write_rlds_dataset(
        tmp_path, flavour="libero", action_dtype="float64", num_episodes=2, steps=4, val_episodes=0
    )
    reader = RLDSReader(written["root"])
    assert reader.features["steps/action"].dtype == "float64"
    actions = reader.actions(1)
    assert actions.dtype == np.float32
    np.testing.assert_array_equal(actions, written["splits"]["train"]["episodes"][1]["actions"])
    assert not has_split(written["root"], "val")


def test_missing_primary_camera_skips_episode(tmp_path, caplog):
    written = write_rlds_dataset(
        tmp_path, flavour="bridge", num_episodes=3, steps=4, missing_primary=[1], val_episodes=0
    )
    reader = RLDSReader(written["root"])
    with caplog.at_level(logging.WARNING, logger="vlm4vla.data.formats.rlds"):
        lengths = [reader.episode_length(e) for e in range(len(reader))]
    assert lengths == [4, 0, 6]
    assert reader.actions(1).shape == (0, 7)
    assert reader.skipped_episodes == {1}
    assert "has_image_0' is 0 and every 'steps/observation/image_0' frame is blank" in caplog.text
    assert "1 skipped so far" in caplog.text
    with pytest.raises(IndexError):
        reader.frame(1, 0)
    np.testing.assert_array_equal(reader.actions(2), written["splits"]["train"]["episodes"][2]["actions"])


def _shard(copy, name="train", shard=1):
    return sorted(copy.glob(f"*-{name}.tfrecord-*"))[shard]


def test_payload_crc_mismatch_names_file_and_offset(copy):
    shard = _shard(copy)
    data = bytearray(shard.read_bytes())
    (first_length,) = struct.unpack("<Q", data[:8])
    second = 12 + first_length + 4
    data[second + 12 + 100] ^= 0xFF  # inside the second record's payload
    shard.write_bytes(bytes(data))
    reader = RLDSReader(copy)
    assert len(reader) == 4  # framing is intact
    reader.actions(2)  # the first record of shard 1 is fine
    with pytest.raises(DatasetFormatError, match=rf"{shard.name}: record at offset {second}: payload CRC32C mismatch"):
        reader.actions(3)


def test_length_crc_mismatch(copy):
    shard = _shard(copy, shard=0)
    data = bytearray(shard.read_bytes())
    data[9] ^= 0x01  # the length CRC of the first record
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError, match=rf"{shard.name}: record at offset 0: length CRC32C mismatch"):
        len(RLDSReader(copy))


def test_truncated_shard(copy):
    shard = _shard(copy)
    data = shard.read_bytes()
    shard.write_bytes(data[:-50])
    with pytest.raises(DatasetFormatError, match=rf"{shard.name}: record at offset \d+ is truncated"):
        len(RLDSReader(copy))
    shard.write_bytes(data + b"\x01\x02\x03")
    with pytest.raises(DatasetFormatError, match=rf"{shard.name}: truncated record header at offset {len(data)}"):
        len(RLDSReader(copy))


def test_shard_length_disagrees_with_dataset_info(copy):
    shard = _shard(copy)
    shard.write_bytes(shard.read_bytes() + tfrecord_frame(Example().SerializeToString()))
    with pytest.raises(
        DatasetFormatError,
        match=r"holds 3 records but dataset_info\.json field 'splits\[train\]\.shardLengths' says 2",
    ):
        len(RLDSReader(copy))


def test_missing_shard(copy):
    _shard(copy, shard=0).unlink()
    with pytest.raises(DatasetFormatError, match=r"split 'train' is missing shard\(s\) \[0\] of 2"):
        RLDSReader(copy)


@pytest.mark.parametrize("name", ["features.json", "dataset_info.json"])
def test_missing_metadata_file(copy, name):
    (copy / name).unlink()
    with pytest.raises(DatasetFormatError, match=rf"{name}: {name} not found"):
        RLDSReader(copy)


def test_wrong_action_dimension(copy):
    path = copy / "features.json"
    features = json.loads(path.read_text())
    action = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]["action"]
    action["tensor"]["shape"]["dimensions"] = ["6"]
    path.write_text(json.dumps(features))
    with pytest.raises(
        DatasetFormatError, match=r"features\.json: field 'steps/action' has shape \(6,\), expected \(7,\)"
    ):
        RLDSReader(copy)


def test_missing_step_field_in_example(copy, dataset):
    # Re-frame the first episode without its actions (valid CRCs): the error names the field.
    shard = _shard(copy, shard=0)
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    example = Example()
    example.ParseFromString(data[12 : 12 + length])
    del example.features.feature["steps/action"]
    shard.write_bytes(tfrecord_frame(example.SerializeToString()) + data[12 + length + 4 :])
    reader = RLDSReader(copy)
    with pytest.raises(DatasetFormatError, match=rf"{shard.name}@0: missing field 'steps/action'"):
        reader.actions(0)
    np.testing.assert_array_equal(reader.actions(1), dataset["splits"]["train"]["episodes"][1]["actions"])


def test_example_wire_format_matches_tensorflow():
    # Hand-encoded tf.train.Example bytes (example.proto / feature.proto field numbers, packed
    # repeated scalars as TensorFlow writes them), one per Feature kind.
    cases = {
        "0a0c0a0a0a016112051a030a0101": ("a", "int64_list", [1]),
        "0a0f0a0d0a0162120812060a040000803f": ("b", "float_list", [1.0]),
        "0a0e0a0c0a016312070a050a0378797a": ("c", "bytes_list", [b"xyz"]),
    }
    for wire, (key, kind, values) in cases.items():
        parsed = Example()
        parsed.ParseFromString(bytes.fromhex(wire))
        assert parsed.features.feature[key].WhichOneof("kind") == kind
        assert list(getattr(parsed.features.feature[key], kind).value) == values
        built = Example()
        getattr(built.features.feature[key], kind).value.extend(values)
        assert built.SerializeToString().hex() == wire


def test_masked_crc32c():
    assert crc32c.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    record = tfrecord_frame(b"payload")
    assert record[12:-4] == b"payload" and struct.unpack("<Q", record[:8])[0] == 7


# -- layouts real tools write (issue 10, items 15-18) ----------------------------------------------
def test_rlds_episode_writer_shard_names_without_of_n(tmp_path):
    # The rlds EpisodeWriter / envlogger names shards {DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_INDEX}
    # and records that template and the shard lengths in dataset_info.json.
    written = write_rlds_dataset(
        tmp_path, flavour="bridge", num_episodes=5, steps=4, num_shards=3, val_episodes=2, image_size=16,
        shard_template=EPISODE_WRITER_TEMPLATE,
    )  # fmt: skip
    names = sorted(p.name for p in written["root"].glob("*.tfrecord*"))
    assert names == [f"bridge_dataset-train.tfrecord-0000{i}" for i in range(3)] + [
        f"bridge_dataset-val.tfrecord-0000{i}" for i in range(2)
    ]
    assert has_split(written["root"], "train") and has_split(written["root"], "val")
    for split in ("train", "val"):
        reader = RLDSReader(written["root"], split=split)
        truth = written["splits"][split]["episodes"]
        assert len(reader) == len(truth)
        for e, episode in enumerate(truth):
            np.testing.assert_array_equal(reader.actions(e), episode["actions"])
            _assert_frame(reader.frame(e, 3), episode["frames"]["image_0"], 3)


def test_rlds_shards_named_by_template_missing_one(tmp_path):
    written = write_rlds_dataset(
        tmp_path, flavour="libero", num_episodes=3, steps=4, num_shards=3, val_episodes=0, image_size=16,
        shard_template=EPISODE_WRITER_TEMPLATE,
    )  # fmt: skip
    (written["root"] / "libero_10_no_noops-train.tfrecord-00001").unlink()
    with pytest.raises(
        DatasetFormatError,
        match=r"split 'train' is missing shard\(s\) \[1\] of 3 \(libero_10_no_noops-train\.tfrecord-00001 named by",
    ):
        RLDSReader(written["root"])


def test_rlds_without_template_falls_back_to_the_glob(copy, dataset):
    info = json.loads((copy / "dataset_info.json").read_text())
    for split in info["splits"]:
        del split["filepathTemplate"]
    (copy / "dataset_info.json").write_text(json.dumps(info))
    reader = RLDSReader(copy)
    np.testing.assert_array_equal(reader.actions(3), dataset["splits"]["train"]["episodes"][3]["actions"])


def test_bridge_has_image_0_zero_with_real_frames_is_read(tmp_path, caplog):
    # Real TFDS-written Bridge files flag has_image_0..3 = 0 on every episode; image_0 is real.
    written = write_rlds_dataset(
        tmp_path, flavour="bridge", num_episodes=4, steps=5, val_episodes=0, image_size=16,
        has_image_flags="zero", missing_primary=[2],
    )  # fmt: skip
    payloads = [p for f in written["splits"]["train"]["files"] for p in read_tfrecords(f)]
    assert all(decode_example(p)["episode_metadata/has_image_0"].tolist() == [0] for p in payloads)
    reader = RLDSReader(written["root"])
    truth = written["splits"]["train"]["episodes"]
    with caplog.at_level(logging.WARNING, logger="vlm4vla.data.formats.rlds"):
        lengths = [reader.episode_length(e) for e in range(len(reader))]
    assert lengths == [5, 6, 0, 5]  # only episode 2, whose frames are really black, is skipped
    assert reader.skipped_episodes == {2} and reader.flag_ignored_episodes == {0, 1, 3}
    assert caplog.text.count("holds real frames") == 1  # said once, not per episode
    for e in (0, 1, 3):
        np.testing.assert_array_equal(reader.actions(e), truth[e]["actions"])
        _assert_frame(reader.frame(e, 4), truth[e]["frames"]["image_0"], 4)


def test_rlds_root_above_versioned_folder_names_it(tmp_path):
    written = write_rlds_dataset(tmp_path / "data_dir", flavour="bridge", num_episodes=1, steps=3, val_episodes=0,
                                 image_size=16)  # fmt: skip
    found = str(written["root"])
    with pytest.raises(DatasetFormatError, match=rf"data_dir: no RLDS dataset .* found the RLDS dataset {found} below"):
        resolve_rlds_root(tmp_path / "data_dir")
    with pytest.raises(DatasetFormatError, match=rf"data_dir: no dataset found .*; found the RLDS dataset {found} below"):
        detect_format(tmp_path / "data_dir", ("rlds", "lerobot"))
    assert resolve_rlds_root(written["root"].parent) == written["root"]  # <name>/ still resolves


def test_rlds_action_and_instruction_keys(tmp_path):
    # LIBERO RLDS has a second 7-wide per-step tensor (joint_state) and a text episode field.
    dataset = write_rlds_dataset(tmp_path, flavour="libero", num_episodes=2, steps=3, val_episodes=0, image_size=16)
    first = decode_example(read_tfrecords(dataset["splits"]["train"]["files"][0])[0])
    reader = RLDSReader(dataset["root"], action_key="observation/joint_state", instruction_key="episode_metadata/file_path")
    assert reader.action_key == "steps/observation/joint_state"
    np.testing.assert_array_equal(reader.actions(0), first["steps/observation/joint_state"].reshape(-1, 7))
    assert reader.instruction(0) == first["episode_metadata/file_path"][0].decode()
    with pytest.raises(
        DatasetFormatError, match=r"features\.json: missing field 'steps/actions' \(tensor features: steps/action, "
    ):
        RLDSReader(dataset["root"], action_key="actions")
    with pytest.raises(DatasetFormatError, match=r"features\.json: missing field 'steps/instruction' \(text/tensor"):
        RLDSReader(dataset["root"], instruction_key="instruction")

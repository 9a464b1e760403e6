"""The RLDS fixture writer (tests/fixtures/rlds.py) is an independent oracle for the RLDS reader.

It shares no code with the reader (no ``vlm4vla`` import, no protobuf classes: the
``tf.train.Example`` wire format and the TFRecord framing are written by hand), and what it
writes is what TensorFlow writes: it re-encodes and re-frames a real TFDS-written Bridge shard
byte for byte, and its CRC32C agrees with a bitwise reference implementation.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import rlds as fixture

FIXTURE = Path(fixture.__file__)
REPO = Path(__file__).resolve().parents[2]
REAL_BRIDGE = Path("/work/shared/real-data/bridge_debug/bridge_dataset/1.0.0")
BANNED = ("vlm4vla", "google", "tensorflow")
REAL_SHARDS = sorted(REAL_BRIDGE.glob("bridge_dataset-*.tfrecord-*")) if REAL_BRIDGE.is_dir() else []


def test_fixture_imports_neither_vlm4vla_nor_protobuf(tmp_path):
    tree = ast.parse(FIXTURE.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    banned = sorted(m for m in imported if m.split(".")[0] in BANNED)
    assert not banned, f"{FIXTURE.name} imports {banned}"
    # … nor indirectly: a fresh interpreter that imports only the fixture and writes a dataset.
    probe = (
        "import sys, tests.fixtures.rlds as f; f.write_rlds_dataset(sys.argv[1], num_episodes=2, image_size=16);"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BANNED!r}))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "00"),
        (1, "01"),
        (150, "9601"),
        (300, "ac02"),
        (-1, "ffffffffffffffffff01"),
        (2**63 - 1, "ffffffffffffffff7f"),
    ],
)
def test_varint_matches_the_protobuf_encoding(value, wire):
    assert fixture._varint(value).hex() == wire


# Serialized by the protobuf runtime (tf.train.Example messages, as TensorFlow writes them).
EXAMPLE_WIRE = [
    ("0a0c0a0a0a016112051a030a0101", {"a": np.array([1], np.int64)}),
    ("0a0f0a0d0a0162120812060a040000803f", {"b": np.array([1.0], np.float32)}),
    ("0a0e0a0c0a016312070a050a0378797a", {"c": [b"xyz"]}),
    ("0a090a070a016412021200", {"d": np.zeros(0, np.float32)}),  # an empty list: no packed field
    ("0a150a130a0165120e1a0c0a0affffffffffffffffff01", {"e": np.array([-1], np.int64)}),
    ("0a1c0a1a0a016612151a130a1103808080808020fbffffffffffffffff01", {"f": np.array([3, 2**40, -5], np.int64)}),
    ("0a130a110a0167120c120a0a080000003f000000c0", {"g": np.array([0.5, -2.0], np.float32)}),
    ("0a0f0a0d0a016812080a060a000a026162", {"h": [b"", b"ab"]}),
]


@pytest.mark.parametrize(("wire", "features"), EXAMPLE_WIRE, ids=[next(iter(f)) for _, f in EXAMPLE_WIRE])
def test_example_bytes_match_protobuf(wire, features):
    assert fixture.encode_example(features).hex() == wire
    (key,) = features
    decoded = fixture.decode_example(bytes.fromhex(wire))[key]
    if isinstance(features[key], list):
        assert decoded == features[key]
    else:
        np.testing.assert_array_equal(decoded, features[key])


def _crc32c_bitwise(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one bit at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_tfrecord_framing_and_crc_against_a_bitwise_reference(tmp_path):
    assert _crc32c_bitwise(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 64, 1000):
        payload = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        frame = fixture.tfrecord_frame(payload)
        header = len(payload).to_bytes(8, "little")
        crc, masked = _crc32c_bitwise(header), _crc32c_bitwise(payload)
        mask = [(((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF for c in (crc, masked)]
        assert frame == header + mask[0].to_bytes(4, "little") + payload + mask[1].to_bytes(4, "little")
        path = tmp_path / f"{size}.tfrecord"
        path.write_bytes(frame + frame)
        assert fixture.read_tfrecords(path) == [payload, payload]


@pytest.mark.skipif(not REAL_SHARDS, reason="real Bridge excerpt not present")
@pytest.mark.parametrize("shard", REAL_SHARDS, ids=[p.name for p in REAL_SHARDS])
def test_fixture_reproduces_a_real_tfds_shard_byte_for_byte(shard: Path):
    data = shard.read_bytes()
    records = fixture.read_tfrecords(shard)
    assert len(records) == 25
    assert b"".join(fixture.tfrecord_frame(r) for r in records) == data  # framing and CRCs
    for i, record in enumerate(records):
        decoded = fixture.decode_example(record)
        assert "steps/action" in decoded and "steps/observation/image_0" in decoded
        assert fixture.encode_example(decoded) == record, f"record {i} re-encodes differently"


def test_written_dataset_decodes_to_its_truth(tmp_path):
    written = fixture.write_rlds_dataset(tmp_path, flavour="libero", num_episodes=3, steps=5, image_size=32)
    for split, content in written["splits"].items():
        payloads = [p for path in content["files"] for p in fixture.read_tfrecords(path)]
        assert len(payloads) == len(content["episodes"]), split
        for payload, truth in zip(payloads, content["episodes"], strict=True):
            example = fixture.decode_example(payload)
            np.testing.assert_array_equal(example["steps/action"].reshape(-1, 7), truth["actions"])
            assert example["steps/language_instruction"] == [truth["instruction"].encode()] * truth["length"]
            assert len(example["steps/observation/image"]) == truth["length"]


def test_the_librarys_synthetic_bridge_dataset_decodes_with_the_independent_reader(tmp_path):
    """`python -m vlm4vla.data.synthetic bridge DIR` writes TFDS framing (CRCs checked by the
    fixture's own reader), the features it declares, arm actions = state deltas, a 0/1 gripper;
    and the Bridge datamodule (bridge_orig transform) trains on it."""
    from vlm4vla.data import BridgeDataModule
    from vlm4vla.data.synthetic import main

    assert main(["bridge", str(tmp_path / "bridge"), "--num-episodes", "3", "--steps", "9", "--image-size", "32"]) == 0
    version = tmp_path / "bridge" / "bridge_dataset" / "1.0.0"
    info = __import__("json").loads((version / "dataset_info.json").read_text())
    assert [(s["name"], s["shardLengths"]) for s in info["splits"]] == [("train", ["3"]), ("val", ["1"])]
    (train,) = sorted(version.glob("bridge_dataset-train.tfrecord-*"))
    episodes = [fixture.decode_example(payload) for payload in fixture.read_tfrecords(train)]
    assert len(episodes) == 3
    for episode in episodes:
        state = np.asarray(episode["steps/observation/state"]).reshape(9, 7)
        action = np.asarray(episode["steps/action"]).reshape(9, 7)
        np.testing.assert_allclose(action[:-1, :6], np.diff(state[:, :6], axis=0), atol=1e-6)
        assert set(np.unique(action[:, 6])) <= {0.0, 1.0}
        assert len(episode["steps/observation/image_0"]) == 9 and episode["steps/is_first"].tolist()[0] == 1
        assert episode["steps/language_instruction"][0].decode()
    datamodule = BridgeDataModule(tmp_path / "bridge" / "bridge_dataset", batch_size=2, num_workers=0, chunk_size=4)
    datamodule.setup("fit")
    assert len(datamodule.train_dataset) > 0 and datamodule.normalizer.gripper.kind == "unit"

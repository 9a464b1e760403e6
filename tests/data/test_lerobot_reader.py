"""LeRobotReader against fixtures written in the LeRobot v3.0 / v2.1 layouts of datasets.md."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.fixtures.lerobot import AV1_CODEC, OPENPI_LIBERO_KEYS, WRIST_KEY, write_lerobot_dataset
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader
from vlm4vla.data.formats.lerobot import LeRobotReader
from vlm4vla.data.formats.lerobot_video import VideoStream

torch.set_num_threads(1)

LAYOUTS = [("v3.0", False), ("v3.0", True), ("v2.1", False), ("v2.1", True)]


@pytest.fixture(scope="module", params=LAYOUTS, ids=[f"{v}-{'video' if m else 'png'}" for v, m in LAYOUTS])
def dataset(request, tmp_path_factory):
    version, video = request.param
    root = tmp_path_factory.mktemp(f"lerobot-{version}-{video}")
    return write_lerobot_dataset(root, version=version, video=video, num_episodes=4, steps=9)


def _copy(written, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(written["root"], target)
    return target


def _assert_frame(frame, written, episode, step, video):
    expected = written["episodes"][episode]["frames"]
    assert frame.dtype == np.uint8 and frame.shape == expected[step].shape
    if not video:
        np.testing.assert_array_equal(frame, expected[step])
        return
    errors = np.abs(frame.astype(np.int16)[None] - expected.astype(np.int16)).mean(axis=(1, 2, 3))
    assert errors[step] < 4.0, errors
    assert int(np.argmin(errors)) == step, errors  # the right frame, not a neighbour


def test_episodes_actions_instructions_frames(dataset):
    reader = LeRobotReader(dataset["root"])
    video = reader.is_video
    assert isinstance(reader, EpisodeReader)
    assert reader.version == dataset["version"]
    assert reader.image_key == "observation.images.image"
    assert len(reader) == len(dataset["episodes"])
    for e, written in enumerate(dataset["episodes"]):
        assert reader.episode_length(e) == written["length"]
        assert reader.instruction(e) == written["instruction"]
        actions = reader.actions(e)
        assert actions.dtype == np.float32 and actions.shape == (written["length"], 7)
        np.testing.assert_array_equal(actions, written["actions"])
        for step in range(written["length"]):
            _assert_frame(reader.frame(e, step), dataset, e, step, video)
    # Random order (backward seeks, episode switches inside one v3.0 video / data file).
    for e, step in [(3, 7), (0, 0), (3, 1), (1, 8), (1, 2), (2, 10), (0, 8)]:
        _assert_frame(reader.frame(e, step), dataset, e, step, video)
    with pytest.raises(IndexError):
        reader.frame(0, dataset["episodes"][0]["length"])
    with pytest.raises(IndexError):
        reader.actions(len(reader))


def test_explicit_key_reads_other_camera(dataset):
    reader = LeRobotReader(dataset["root"], image_key=WRIST_KEY)
    frame = reader.frame(1, 4)
    expected = dataset["episodes"][1]["wrist_frames"][4]
    if reader.is_video:
        assert np.abs(frame.astype(int) - expected).mean() < 4.0
    else:
        np.testing.assert_array_equal(frame, expected)


def test_pickled_reader_reopens_lazily(dataset):
    reader = LeRobotReader(dataset["root"])
    first = reader.frame(2, 3)
    clone = pickle.loads(pickle.dumps(reader))
    assert not clone._parquets and not clone._videos and not clone._streams and not clone._columns
    np.testing.assert_array_equal(clone.frame(2, 3), first)
    np.testing.assert_array_equal(clone.actions(2), reader.actions(2))
    reader.close()
    np.testing.assert_array_equal(reader.frame(2, 3), first)  # reopens after close()


def test_episode_subset(dataset):
    reader = LeRobotReader(dataset["root"], episodes=[2, 0])
    assert len(reader) == 2 and reader.episode_indices == (2, 0)
    assert reader.episode_length(0) == dataset["episodes"][2]["length"]
    assert reader.instruction(0) == dataset["episodes"][2]["instruction"]
    np.testing.assert_array_equal(reader.actions(1), dataset["episodes"][0]["actions"])
    _assert_frame(reader.frame(0, 5), dataset, 2, 5, reader.is_video)
    with pytest.raises(DatasetFormatError, match="no episode_index 9"):
        LeRobotReader(dataset["root"], episodes=[0, 9])


@pytest.mark.skipif(AV1_CODEC is None, reason="PyAV built without an AV1 encoder")
@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_av1_video(tmp_path, version):
    written = write_lerobot_dataset(tmp_path, version=version, video=True, video_codec=AV1_CODEC, steps=6)
    reader = LeRobotReader(tmp_path)
    for e, written_episode in enumerate(written["episodes"]):
        for step in [*range(written_episode["length"]), 0, 4]:
            _assert_frame(reader.frame(e, step), written, e, step, video=True)


def test_sequential_video_frames_decode_without_reseeking(tmp_path, monkeypatch):
    written = write_lerobot_dataset(tmp_path, version="v3.0", video=True, num_episodes=2, steps=10)
    reader = LeRobotReader(tmp_path)
    seeks = []
    original = VideoStream.seek
    monkeypatch.setattr(VideoStream, "seek", lambda self, t, tolerance: (seeks.append(t), original(self, t, tolerance)))
    for step in range(written["episodes"][1]["length"]):
        _assert_frame(reader.frame(1, step), written, 1, step, video=True)
    assert len(seeks) == 1
    reader.frame(1, 0)  # going back needs a seek
    assert len(seeks) == 2


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_float64_actions_are_cast(tmp_path, version):
    written = write_lerobot_dataset(tmp_path, version=version, action_dtype="float64", num_episodes=2, steps=6)
    reader = LeRobotReader(tmp_path)
    actions = reader.actions(1)
    assert written["episodes"][1]["actions"].dtype == np.float64
    assert actions.dtype == np.float32
    np.testing.assert_array_equal(actions, written["episodes"][1]["actions"].astype(np.float32))


def test_flat_hub_key_is_detected(tmp_path):
    write_lerobot_dataset(tmp_path, image_key="image", num_episodes=1, steps=4)
    assert LeRobotReader(tmp_path).image_key == "image"


def test_unknown_camera_name_falls_back_to_first_third_person_camera(tmp_path):
    written = write_lerobot_dataset(tmp_path, image_key="observation.images.exterior", num_episodes=1, steps=4)
    reader = LeRobotReader(tmp_path)
    assert reader.image_key == "observation.images.exterior"  # not the wrist camera listed first
    np.testing.assert_array_equal(reader.frame(0, 2), written["episodes"][0]["frames"][2])


def test_bad_image_key(tmp_path):
    write_lerobot_dataset(tmp_path, num_episodes=1, steps=4)
    with pytest.raises(DatasetFormatError, match=r"info\.json: missing field 'features\.observation\.images\.nope'"):
        LeRobotReader(tmp_path, image_key="observation.images.nope")
    with pytest.raises(DatasetFormatError, match=r"'features\.action\.dtype' is 'float32'"):
        LeRobotReader(tmp_path, image_key="action")


def test_missing_info_json(tmp_path):
    write_lerobot_dataset(tmp_path, num_episodes=1, steps=4)
    (tmp_path / "meta" / "info.json").unlink()
    with pytest.raises(DatasetFormatError, match=r"meta/info\.json: info\.json not found"):
        LeRobotReader(tmp_path)


def test_unsupported_version(tmp_path):
    write_lerobot_dataset(tmp_path, num_episodes=1, steps=4)
    path = tmp_path / "meta" / "info.json"
    info = json.loads(path.read_text())
    info["codebase_version"] = "v1.6"
    path.write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match=r"info\.json: field 'codebase_version' is 'v1\.6'"):
        LeRobotReader(tmp_path)


@pytest.mark.parametrize("missing", ["meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet"])
def test_missing_v3_metadata(tmp_path, missing):
    write_lerobot_dataset(tmp_path, num_episodes=1, steps=4)
    (tmp_path / missing).unlink()
    with pytest.raises(
        DatasetFormatError, match=r"meta/(tasks\.parquet: tasks\.parquet not found|episodes: no episodes)"
    ):
        LeRobotReader(tmp_path)


def test_missing_v2_episodes_jsonl(tmp_path):
    write_lerobot_dataset(tmp_path, version="v2.1", num_episodes=1, steps=4)
    (tmp_path / "meta" / "episodes.jsonl").unlink()
    with pytest.raises(DatasetFormatError, match=r"episodes\.jsonl: episodes\.jsonl not found"):
        LeRobotReader(tmp_path)


def test_missing_data_and_video_files(tmp_path):
    write_lerobot_dataset(tmp_path, version="v2.1", video=True, num_episodes=2, steps=4)
    (tmp_path / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    (tmp_path / "videos" / "chunk-000" / "observation.images.image" / "episode_000000.mp4").unlink()
    reader = LeRobotReader(tmp_path)
    with pytest.raises(DatasetFormatError, match=r"episode_000001\.parquet: data file not found"):
        reader.actions(1)
    with pytest.raises(DatasetFormatError, match=r"episode_000000\.mp4: video file not found"):
        reader.frame(0, 0)


def test_data_action_width_differs_from_protocol(tmp_path):
    write_lerobot_dataset(tmp_path, action_dim=6, declared_action_dim=7, num_episodes=1, steps=4)
    reader = LeRobotReader(tmp_path)
    with pytest.raises(
        DatasetFormatError, match=r"file-000\.parquet episode_index=0: field 'action' has shape \(4, 6\)"
    ):
        reader.actions(0)


def test_declared_action_dimension_is_checked(tmp_path):
    write_lerobot_dataset(tmp_path, version="v2.1", action_dim=6, num_episodes=1, steps=4)
    with pytest.raises(DatasetFormatError, match=r"info\.json: field 'features\.action\.shape' is \[6\]"):
        LeRobotReader(tmp_path)


def test_corrupt_png_names_file_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_lerobot_dataset(tmp_path, version="v2.1", num_episodes=1, steps=4)
    path = tmp_path / "data" / "chunk-000" / "episode_000000.parquet"
    table = pq.read_table(path)
    images = table.column("observation.images.image").to_pylist()
    images[2] = {"bytes": b"not a png", "path": images[2]["path"]}
    column = table.schema.get_field_index("observation.images.image")
    table = table.set_column(column, "observation.images.image", pa.array(images, table.schema.field(column).type))
    pq.write_table(table, path)
    reader = LeRobotReader(tmp_path)
    reader.frame(0, 1)
    with pytest.raises(DatasetFormatError, match=r"episode_000000\.parquet: field 'observation\.images\.image' row 2"):
        reader.frame(0, 2)


def test_dataloader_workers(tmp_path):
    written = write_lerobot_dataset(tmp_path, version="v3.0", video=True, num_episodes=2, steps=5)
    reader = LeRobotReader(tmp_path)
    reader.frame(0, 0)  # handles opened in the parent must not leak into the worker

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return written["episodes"][1]["length"]

        def __getitem__(self, step):
            return torch.from_numpy(reader.frame(1, step).copy())

    loader = torch.utils.data.DataLoader(Frames(), batch_size=None, num_workers=1)
    frames = [frame.numpy() for frame in loader]
    for step, frame in enumerate(frames):
        _assert_frame(frame, written, 1, step, video=True)


# -- layouts real tools write (issue 10, items 14, 15, 20) -----------------------------------------
@pytest.mark.parametrize("row_groups", ["episode", "file"])
@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_lerobot_embedded_frames_with_long_row_groups(tmp_path, version, row_groups):
    # lerobot writes one row group per episode (0.4, v3.0) or per file (v2.x, the v2.1→v3.0
    # converter): far longer than the reader's 8-row batches. Every frame, shuffled, exact.
    written = write_lerobot_dataset(
        tmp_path, version=version, row_group_size=row_groups, num_episodes=5, steps=19, image_size=24,
        episodes_per_file=3,
    )  # fmt: skip
    data_files = sorted((tmp_path / "data").rglob("*.parquet"))
    groups = [pq.ParquetFile(f).metadata.num_row_groups for f in data_files]
    assert groups == ([3, 2] if row_groups == "episode" and version == "v3.0" else [1] * len(data_files))
    reader = LeRobotReader(tmp_path)
    pairs = [(e, t) for e, ep in enumerate(written["episodes"]) for t in range(ep["length"])]
    for i in np.random.default_rng(0).permutation(len(pairs)):
        e, t = pairs[i]
        np.testing.assert_array_equal(reader.frame(e, t), written["episodes"][e]["frames"][t])


def test_openpi_libero_feature_names(tmp_path):
    written = write_lerobot_dataset(tmp_path, version="v2.0", num_episodes=2, steps=10, **OPENPI_LIBERO_KEYS)
    with pytest.raises(
        DatasetFormatError,
        match=r"info\.json: missing field 'features\.action' \(non-image features: state, actions, timestamp,",
    ):
        LeRobotReader(tmp_path)
    reader = LeRobotReader(tmp_path, action_key="actions", image_key="image")
    np.testing.assert_array_equal(reader.actions(1), written["episodes"][1]["actions"])
    np.testing.assert_array_equal(reader.frame(1, 9), written["episodes"][1]["frames"][9])
    assert reader.instruction(1) == written["episodes"][1]["instruction"]


def _edit_info(root, edit):
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


INFO_LIES = {
    "total_frames": (lambda i: i.update(total_frames=i["total_frames"] + 1), r"field 'total_frames' is \d+ but"),
    "total_episodes": (lambda i: i.update(total_episodes=7), r"field 'total_episodes' is 7 but .* lists 3"),
    "image_shape": (
        lambda i: i["features"]["observation.images.image"].update(shape=[48, 48, 3]),
        r"field 'features\.observation\.images\.image\.shape' is \[48, 48, 3\] but .*decodes to \(16, 16, 3\)",
    ),
    "int_action_dtype": (
        lambda i: i["features"]["action"].update(dtype="int64"),
        r"field 'features\.action\.dtype' is 'int64' but .*parquet stores fixed_size_list<element: float>",
    ),
}


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
@pytest.mark.parametrize("lie", sorted(INFO_LIES))
def test_info_json_lies_name_file_and_field(tmp_path, version, lie):
    write_lerobot_dataset(tmp_path, version=version, num_episodes=3, steps=4, image_size=16)
    edit, message = INFO_LIES[lie]
    _edit_info(tmp_path, edit)
    with pytest.raises(DatasetFormatError, match=rf"info\.json: {message}"):
        reader = LeRobotReader(tmp_path)
        reader.actions(0)
        reader.frame(0, 0)


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_episode_lengths_checked_against_parquet_row_counts(tmp_path, version):
    write_lerobot_dataset(tmp_path, version=version, num_episodes=2, steps=4)
    if version == "v3.0":
        path = tmp_path / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
        table = pq.read_table(path)
        to = table.column("dataset_to_index").to_pylist()
        table = table.set_column(table.schema.get_field_index("dataset_to_index"), "dataset_to_index",
                                 pa.array([to[0] - 1, to[1]], pa.int64()))  # fmt: skip
        table = table.set_column(table.schema.get_field_index("length"), "length", pa.array([3, 5], pa.int64()))
        pq.write_table(table, path)
        _edit_info(tmp_path, lambda i: i.update(total_frames=8))
        with pytest.raises(DatasetFormatError, match=r"file-000\.parquet: holds 9 rows but meta/episodes/ field"):
            LeRobotReader(tmp_path)
    else:
        path = tmp_path / "meta" / "episodes.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        lines[1]["length"] = 4
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        _edit_info(tmp_path, lambda i: i.update(total_frames=8))
        reader = LeRobotReader(tmp_path)
        with pytest.raises(DatasetFormatError, match=r"episode_000001\.parquet: holds 5 rows but meta/episodes\.jsonl"):
            reader.actions(1)

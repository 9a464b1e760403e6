"""Write small synthetic datasets in the *real* on-disk layouts (``datasets.md``).

Used by the tests, the dataloader benchmark and the quickstart; the layouts, keys, dtypes
(float64 where real files have float64) and quirks (non-zero CALVIN frame ids, upside-down
LIBERO images) match the real datasets, so the same readers load both.

Images are synthetic scenes that are *upright* before any storage quirk: a red marker
square in the top-left corner and, in the bottom-right 2×2 pixels, the episode/frame identity
(see :func:`scene_image` and :func:`decode_identity`). Tests use these to check orientation
and that a sample shows the right frame.

Command line::

    python -m vlm4vla.data.synthetic libero OUT_DIR [--num-tasks 2 --demos-per-task 3 --steps 20]
    python -m vlm4vla.data.synthetic calvin OUT_DIR [--num-episodes 2 --episode-length 40]
    python -m vlm4vla.data.synthetic bridge OUT_DIR [--num-episodes 8 --steps 20 --image-size 64]
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from vlm4vla.data.formats.npz_calvin import EP_START_END_PATH, LANG_ANN_PATH

MARKER_RGB = (255, 0, 0)

# The ten LIBERO-10 task files and their instructions.
LIBERO_10_TASKS = (
    ("LIVING_ROOM_SCENE2", "put both the alphabet soup and the tomato sauce in the basket"),
    ("LIVING_ROOM_SCENE2", "put both the cream cheese box and the butter in the basket"),
    ("KITCHEN_SCENE3", "turn on the stove and put the moka pot on it"),
    ("KITCHEN_SCENE4", "put the black bowl in the bottom drawer of the cabinet and close it"),
    (
        "LIVING_ROOM_SCENE5",
        "put the white mug on the left plate and put the yellow and white mug on the right plate",
    ),
    ("STUDY_SCENE1", "pick up the book and place it in the back compartment of the caddy"),
    (
        "LIVING_ROOM_SCENE6",
        "put the white mug on the plate and put the chocolate pudding to the right of the plate",
    ),
    ("LIVING_ROOM_SCENE1", "put both the alphabet soup and the cream cheese box in the basket"),
    ("KITCHEN_SCENE8", "put both moka pots on the stove"),
    ("KITCHEN_SCENE6", "put the yellow and white mug in the microwave and close it"),
)

CALVIN_TASKS = (
    ("open_drawer", "pull the handle to open the drawer"),
    ("push_red_block_left", "push the red block towards the left"),
    ("turn_on_lightbulb", "toggle the light switch to turn on the yellow light"),
    ("rotate_blue_block_right", "rotate the blue block towards the right"),
    ("lift_pink_block_table", "lift the pink block from the table"),
    ("move_slider_left", "push the sliding door to the left side"),
)


def scene_image(height: int, width: int, episode: int, step: int, channels: int = 3) -> np.ndarray:
    """A deterministic upright uint8 scene for (episode, step).

    Top-left ``height // 8`` square: the red marker. Bottom-right 2×2 pixels:
    R = episode % 256, G = step % 256, B = step // 256 % 256.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    phase = 0.15 * step + 0.7 * episode
    image = np.empty((height, width, channels), dtype=np.uint8)
    for c in range(channels):
        wave = np.sin(xx / (9.0 + 3 * c) + phase) + np.cos(yy / (11.0 + 2 * c) - phase)
        image[..., c] = (96 + 60 * wave).astype(np.uint8)
    # a block that moves with time
    by = int((0.5 + 0.3 * np.sin(phase)) * (height - height // 5))
    bx = int((0.5 + 0.3 * np.cos(phase)) * (width - width // 5))
    image[by : by + height // 5, bx : bx + width // 5, : min(3, channels)] = (40, 160, 220)[
        : min(3, channels)
    ]
    side = max(2, height // 8)
    image[:side, :side, : min(3, channels)] = MARKER_RGB[: min(3, channels)]
    image[-2:, -2:, 0] = episode % 256
    if channels > 1:
        image[-2:, -2:, 1] = step % 256
    if channels > 2:
        image[-2:, -2:, 2] = (step // 256) % 256
    return image


def decode_identity(upright: np.ndarray) -> tuple[int, int]:
    """(episode % 256, step) encoded by :func:`scene_image` in an upright image."""
    pixel = upright[-1, -1].astype(int)
    return int(pixel[0]), int(pixel[1] + 256 * pixel[2])


def has_marker_top_left(image: np.ndarray) -> bool:
    """True if the image shows the red marker in its top-left corner (i.e. is upright)."""
    return tuple(int(v) for v in image[1, 1, :3]) == MARKER_RGB


def _smooth_series(rng: np.random.Generator, steps: int, dims: int, scale: float) -> np.ndarray:
    noise = rng.normal(0.0, scale, size=(steps + 8, dims))
    kernel = np.ones(8) / 8
    return np.stack([np.convolve(noise[:, d], kernel, mode="valid")[:steps] for d in range(dims)], axis=1) * 3


def _gripper_series(rng: np.random.Generator, steps: int) -> np.ndarray:
    """±1 with a couple of switches."""
    switches = np.sort(rng.choice(np.arange(1, max(2, steps)), size=min(2, max(1, steps - 1)), replace=False))
    out = np.ones(steps)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    prev = 0
    for s in list(switches) + [steps]:
        out[prev:s] = sign
        sign, prev = -sign, s
    return out


# -- CALVIN ---------------------------------------------------------------------------------------
def write_calvin_split(
    split_dir: str | Path,
    *,
    start_index: int,
    num_episodes: int = 2,
    episode_length: int = 40,
    window_length: int = 16,
    windows_per_episode: int = 3,
    seed: int = 0,
    validation: bool = False,
    compressed: bool = True,
) -> Path:
    """One CALVIN split directory: frames, ``ep_start_end_ids.npy``, ``ep_lens.npy``,
    language annotations (and ``scene_info.npy`` for training, ``embeddings.npy`` for
    validation). Each episode gets ``windows_per_episode`` windows, the last one ending on
    the episode's last frame."""
    split_dir = Path(split_dir)
    (split_dir / LANG_ANN_PATH.parent).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save = np.savez_compressed if compressed else np.savez
    window_length = min(window_length, episode_length)
    ranges, windows, texts, tasks = [], [], [], []
    frame = int(start_index)
    for ep in range(num_episodes):
        first, last = frame, frame + episode_length - 1
        ranges.append((first, last))
        rel = np.clip(_smooth_series(rng, episode_length, 6, 0.6), -1.0, 1.0)
        gripper = _gripper_series(rng, episode_length)
        tcp = np.cumsum(rel * 0.02, axis=0) + np.array([0.05, -0.1, 0.5, np.pi, 0.0, 1.5])
        for t in range(episode_length):
            fid = first + t
            save(
                split_dir / f"episode_{fid:07d}.npz",
                rgb_static=scene_image(200, 200, ep, t),
                rgb_gripper=scene_image(84, 84, ep, t),
                rgb_tactile=scene_image(160, 120, ep, t, channels=6),
                depth_static=np.linspace(0.8, 2.5, 200 * 200, dtype=np.float32).reshape(200, 200) + 0.001 * t,
                depth_gripper=np.linspace(0.05, 1.0, 84 * 84, dtype=np.float32).reshape(84, 84),
                depth_tactile=np.zeros((160, 120, 2), dtype=np.float32) + 0.01 * t,
                actions=np.concatenate([tcp[t], [gripper[t]]]).astype(np.float64),
                rel_actions=np.concatenate([rel[t], [gripper[t]]]).astype(np.float64),
                robot_obs=np.concatenate(
                    [tcp[t], [0.08 if gripper[t] > 0 else 0.0], np.zeros(7), [gripper[t]]]
                ),
                scene_obs=np.linspace(0, 1, 24) + 0.001 * t,
            )
        starts = sorted(rng.integers(first, last - window_length + 2, size=windows_per_episode - 1).tolist())
        for s in [*starts, last - window_length + 1]:
            task, text = CALVIN_TASKS[len(windows) % len(CALVIN_TASKS)]
            windows.append((int(s), int(s) + window_length - 1))
            texts.append(text)
            tasks.append(task)
        frame = last + 1 + 7  # recorded episodes are not contiguous in real CALVIN either
    np.save(split_dir / EP_START_END_PATH, np.asarray(ranges, dtype=np.int64))
    np.save(split_dir / "ep_lens.npy", np.asarray([e - s + 1 for s, e in ranges], dtype=np.int64))
    emb = rng.normal(size=(len(texts), 1, 384)).astype(np.float32)
    ann = {"language": {"ann": texts, "task": tasks, "emb": emb}, "info": {"indx": windows, "episodes": []}}
    np.save(split_dir / LANG_ANN_PATH, ann, allow_pickle=True)
    if validation:
        table = {task: {"emb": emb[i], "ann": [texts[i]]} for i, task in enumerate(tasks)}
        np.save(split_dir / LANG_ANN_PATH.parent / "embeddings.npy", table, allow_pickle=True)
    else:
        np.save(
            split_dir / "scene_info.npy", {"calvin_scene_B": [ranges[0][0], ranges[-1][1]]}, allow_pickle=True
        )
    (split_dir / "statistics.yaml").write_text(
        "act_min_bound: [-0.432188, -0.545456, 0.293439, -3.141593, -0.811348, -3.141573, -1.0]\n"
        "act_max_bound: [0.42977, 0.139396, 0.796262, 3.141592, 0.638583, 3.141551, 1.0]\n"
    )
    return split_dir


def write_calvin_dataset(
    root: str | Path,
    *,
    num_episodes: int = 2,
    episode_length: int = 40,
    window_length: int = 16,
    windows_per_episode: int = 3,
    val_episodes: int = 1,
    train_start: int = 53_819,
    val_start: int = 611_042,
    seed: int = 0,
    compressed: bool = True,
) -> Path:
    """A ``task_ABC_D``-layout root with ``training/`` and ``validation/``."""
    root = Path(root)
    common = {
        "episode_length": episode_length,
        "window_length": window_length,
        "windows_per_episode": windows_per_episode,
        "compressed": compressed,
    }
    write_calvin_split(
        root / "training", start_index=train_start, num_episodes=num_episodes, seed=seed, **common
    )
    write_calvin_split(
        root / "validation",
        start_index=val_start,
        num_episodes=val_episodes,
        seed=seed + 1,
        validation=True,
        **common,
    )
    return root


# -- LIBERO HDF5 ----------------------------------------------------------------------------------
def libero_task_file(task: int) -> str:
    scene, text = LIBERO_10_TASKS[task % len(LIBERO_10_TASKS)]
    return f"{scene}_{text.replace(' ', '_')}_demo.hdf5"


def write_libero_hdf5(
    root: str | Path,
    num_tasks: int = 2,
    demos_per_task: int = 3,
    steps: int = 20,
    seed: int = 0,
    *,
    image_size: int = 128,
    action_dtype: np.dtype | type = np.float64,
) -> Path:
    """LIBERO original HDF5 files, one per task (``<SCENE>_<instruction>_demo.hdf5``).

    Demo ``i`` of a task has ``steps + i % 3`` frames. Images are stored upside down (as
    LIBERO records them); their upright content is :func:`scene_image` with
    ``episode = task * demos_per_task + i``. Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for task in range(num_tasks):
        scene, text = LIBERO_10_TASKS[task % len(LIBERO_10_TASKS)]
        problem = (
            "libero_kitchen_tabletop_manipulation"
            if "KITCHEN" in scene
            else "libero_living_room_tabletop_manipulation"
        )
        bddl = f"chiliocosm/bddl_files/libero_10/{libero_task_file(task)[: -len('_demo.hdf5')]}.bddl"
        with h5py.File(root / libero_task_file(task), "w") as f:
            data = f.create_group("data")
            total = 0
            for i in range(demos_per_task):
                episode = task * demos_per_task + i
                length = steps + i % 3
                total += length
                demo = data.create_group(f"demo_{i}")
                demo.attrs["num_samples"] = length
                demo.attrs["model_file"] = "<mujoco model='base'><worldbody/></mujoco>"
                demo.attrs["init_state"] = rng.normal(size=79)
                arm = np.clip(_smooth_series(rng, length, 6, 0.4), -1.0, 1.0)
                actions = np.concatenate([arm, _gripper_series(rng, length)[:, None]], axis=1)
                demo.create_dataset("actions", data=actions.astype(action_dtype))
                demo.create_dataset("states", data=rng.normal(size=(length, 79)))
                demo.create_dataset("robot_states", data=rng.normal(size=(length, 9)))
                rewards = np.zeros(length, dtype=np.uint8)
                rewards[-1] = 1
                demo.create_dataset("rewards", data=rewards)
                demo.create_dataset("dones", data=rewards.copy())
                upright = np.stack([scene_image(image_size, image_size, episode, t) for t in range(length)])
                obs = demo.create_group("obs")
                obs.create_dataset("agentview_rgb", data=upright[:, ::-1, ::-1])
                wrist = np.stack(
                    [scene_image(image_size, image_size, episode + 100, t) for t in range(length)]
                )
                obs.create_dataset("eye_in_hand_rgb", data=wrist[:, ::-1, ::-1])
                ee_pos = np.cumsum(arm[:, :3] * 0.01, axis=0)
                ee_ori = np.cumsum(arm[:, 3:] * 0.01, axis=0)
                obs.create_dataset("ee_states", data=np.concatenate([ee_pos, ee_ori], axis=1))
                obs.create_dataset("ee_pos", data=ee_pos)
                obs.create_dataset("ee_ori", data=ee_ori)
                obs.create_dataset("gripper_states", data=np.repeat(actions[:, 6:7] * 0.04, 2, axis=1))
                obs.create_dataset("joint_states", data=rng.normal(size=(length, 7)))
            data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
            data.attrs["problem_info"] = json.dumps(
                {"problem_name": problem, "domain_name": "robosuite", "language_instruction": text}
            )
            data.attrs["env_args"] = json.dumps(
                {
                    "type": 1,
                    "env_name": "Libero_Tabletop_Manipulation",
                    "problem_name": problem,
                    "bddl_file": bddl,
                    "env_kwargs": {"camera_heights": image_size, "camera_widths": image_size},
                }
            )
            data.attrs["bddl_file_name"] = bddl
            data.attrs["bddl_file_content"] = f"(define (problem {problem})\n  (:language {text})\n)"
            data.attrs["macros_image_convention"] = "opengl"
            data.attrs["num_demos"] = demos_per_task
            data.attrs["total"] = total
    return root


BRIDGE_INSTRUCTIONS = ("put carrot on plate", "put the spoon on the towel", "stack the green block on the yellow block")
BRIDGE_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def _tfds_feature(kind: str, shape: Sequence[int] = (), dtype: str = "float32") -> dict:
    cls = "tensorflow_datasets.core.features"
    if kind == "image":
        return {"pythonClassName": f"{cls}.image_feature.Image",
                "image": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": "uint8", "encodingFormat": "jpeg"}}  # fmt: skip
    if kind == "text":
        return {"pythonClassName": f"{cls}.text_feature.Text", "text": {}}
    name = "scalar.Scalar" if not shape else "tensor_feature.Tensor"
    tensor = {"shape": {"dimensions": [str(d) for d in shape]} if shape else {}, "dtype": dtype, "encoding": "none"}
    return {"pythonClassName": f"{cls}.{name}", "tensor": tensor}


def _tfds_dict(features: dict) -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": features}}  # fmt: skip


def write_bridge_rlds(
    root: str | Path,
    *,
    num_episodes: int = 8,
    steps: int = 20,
    val_episodes: int = 1,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """A small BridgeData V2 RLDS dataset as TFDS writes it: ``root/bridge_dataset/1.0.0/`` with
    ``dataset_info.json``, ``features.json`` and one TFRecord shard per split of serialized
    ``tf.train.Example`` episodes (JPEG ``image_0``, a smooth 7-d ``state`` whose deltas are the
    arm actions, a 0/1 gripper, the instruction per step). Returns the version directory."""
    from PIL import Image

    from vlm4vla.data.formats.tfrecord import BytesList, Example, Feature, FloatList, Int64List, masked_crc32c

    directory = Path(root) / "bridge_dataset" / "1.0.0"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def jpeg(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    def frame(payload: bytes) -> bytes:
        length = len(payload).to_bytes(8, "little")
        return (length + masked_crc32c(length).to_bytes(4, "little") + payload
                + masked_crc32c(payload).to_bytes(4, "little"))  # fmt: skip

    splits, episode_id = [], 0
    for split, count in (("train", num_episodes), ("val", val_episodes)):
        if count <= 0:
            continue
        records = []
        for _ in range(count):
            state = np.concatenate(
                [np.cumsum(_smooth_series(rng, steps, 6, 0.01), axis=0)[:steps], np.zeros((steps, 1))], axis=1
            ).astype(np.float32)
            gripper = (_gripper_series(rng, steps) > 0).astype(np.float32)  # 1 = open, Bridge's convention
            state[:, 6] = gripper
            action = np.zeros((steps, 7), dtype=np.float32)
            action[:-1, :6] = np.diff(state[:, :6], axis=0)
            action[:, 6] = gripper
            first = np.zeros(steps, dtype=np.int64)
            first[0] = 1
            last = np.zeros(steps, dtype=np.int64)
            last[-1] = 1
            text = BRIDGE_INSTRUCTIONS[episode_id % len(BRIDGE_INSTRUCTIONS)].encode()
            images = [jpeg(scene_image(image_size, image_size, episode_id, t)) for t in range(steps)]
            features = {
                "steps/observation/image_0": Feature(bytes_list=BytesList(value=images)),
                "steps/observation/state": Feature(float_list=FloatList(value=state.reshape(-1).tolist())),
                "steps/action": Feature(float_list=FloatList(value=action.reshape(-1).tolist())),
                "steps/language_instruction": Feature(bytes_list=BytesList(value=[text] * steps)),
                "steps/is_first": Feature(int64_list=Int64List(value=first.tolist())),
                "steps/is_last": Feature(int64_list=Int64List(value=last.tolist())),
                "steps/is_terminal": Feature(int64_list=Int64List(value=last.tolist())),
                "steps/reward": Feature(float_list=FloatList(value=last.astype(np.float32).tolist())),
                "steps/discount": Feature(float_list=FloatList(value=[1.0] * steps)),
                "episode_metadata/episode_id": Feature(int64_list=Int64List(value=[episode_id])),
                "episode_metadata/file_path": Feature(bytes_list=BytesList(value=[f"/raw/bridge/{episode_id}.npy".encode()])),
                "episode_metadata/has_image_0": Feature(int64_list=Int64List(value=[1])),
                "episode_metadata/has_language": Feature(int64_list=Int64List(value=[1])),
            }  # fmt: skip
            example = Example()
            for key, value in features.items():
                example.features.feature[key].CopyFrom(value)
            records.append(frame(example.SerializeToString()))
            episode_id += 1
        name = BRIDGE_TEMPLATE.format(DATASET="bridge_dataset", SPLIT=split, FILEFORMAT="tfrecord",
                                      SHARD_X_OF_Y="00000-of-00001")  # fmt: skip
        (directory / name).write_bytes(b"".join(records))
        splits.append({"name": split, "numBytes": str((directory / name).stat().st_size),
                       "shardLengths": [str(len(records))], "filepathTemplate": BRIDGE_TEMPLATE})  # fmt: skip
    info = {"name": "bridge_dataset", "version": "1.0.0", "fileFormat": "tfrecord",
            "moduleName": "bridge_dataset.bridge_dataset_dataset_builder",
            "description": "vlm4vla synthetic BridgeData V2 (RLDS layout)", "splits": splits}  # fmt: skip
    step = {
        "action": _tfds_feature("tensor", [7]), "discount": _tfds_feature("tensor"),
        "is_first": _tfds_feature("tensor", dtype="bool"), "is_last": _tfds_feature("tensor", dtype="bool"),
        "is_terminal": _tfds_feature("tensor", dtype="bool"), "language_instruction": _tfds_feature("text"),
        "observation": _tfds_dict({"image_0": _tfds_feature("image", [image_size, image_size, 3]),
                                   "state": _tfds_feature("tensor", [7])}),
        "reward": _tfds_feature("tensor"),
    }  # fmt: skip
    metadata = {"episode_id": _tfds_feature("tensor", dtype="int32"), "file_path": _tfds_feature("text"),
                "has_image_0": _tfds_feature("tensor", dtype="bool"), "has_language": _tfds_feature("tensor", dtype="bool")}  # fmt: skip
    features_json = _tfds_dict({
        "episode_metadata": _tfds_dict(metadata),
        "steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                  "sequence": {"feature": _tfds_dict(step), "length": "-1"}},
    })  # fmt: skip
    (directory / "dataset_info.json").write_text(json.dumps(info, indent=2))
    (directory / "features.json").write_text(json.dumps(features_json, indent=2))
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vlm4vla.data.synthetic", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="dataset", required=True)
    lib = sub.add_parser("libero", help="LIBERO original HDF5 files")
    lib.add_argument("out", type=Path)
    lib.add_argument("--num-tasks", type=int, default=2)
    lib.add_argument("--demos-per-task", type=int, default=3)
    lib.add_argument("--steps", type=int, default=20)
    lib.add_argument("--seed", type=int, default=0)
    cal = sub.add_parser("calvin", help="CALVIN task_ABC_D layout")
    cal.add_argument("out", type=Path)
    cal.add_argument("--num-episodes", type=int, default=2)
    cal.add_argument("--episode-length", type=int, default=40)
    cal.add_argument("--seed", type=int, default=0)
    bri = sub.add_parser("bridge", help="BridgeData V2 RLDS (TFDS tfrecords)")
    bri.add_argument("out", type=Path)
    bri.add_argument("--num-episodes", type=int, default=8)
    bri.add_argument("--steps", type=int, default=20)
    bri.add_argument("--image-size", type=int, default=64)
    bri.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dataset == "libero":
        out = write_libero_hdf5(args.out, args.num_tasks, args.demos_per_task, args.steps, args.seed)
    elif args.dataset == "bridge":
        out = write_bridge_rlds(
            args.out, num_episodes=args.num_episodes, steps=args.steps, image_size=args.image_size, seed=args.seed
        )
    else:
        out = write_calvin_dataset(
            args.out, num_episodes=args.num_episodes, episode_length=args.episode_length, seed=args.seed
        )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "CALVIN_TASKS",
    "LIBERO_10_TASKS",
    "MARKER_RGB",
    "decode_identity",
    "has_marker_top_left",
    "libero_task_file",
    "scene_image",
    "write_calvin_dataset",
    "write_bridge_rlds",
    "write_calvin_split",
    "write_libero_hdf5",
]

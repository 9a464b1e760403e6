"""Dataloader throughput (samples/s) of every datamodule on generated datasets, with the released
augmentation, against a loader with the released CALVIN loader's access pattern.

Writes a CALVIN (npz) dataset and LIBERO and Bridge datasets in RLDS (the released training data:
256² frames in tfrecords), then times training batches (augmentation on, raw collation) of
``CalvinDataModule``, ``LiberoDataModule`` and ``BridgeDataModule``: 224² images with the released
augmentation (CALVIN: bicubic resize + random shift pad 10; LIBERO/Bridge: Lanczos resize + crop
0.9 + brightness/contrast/saturation/hue, see ``vlm4vla.data.transforms``).

In the same run, the baseline does per sample what RoboVLMs' ``DiskCalvinDataset`` does in the
released VLM4VLA code (``vlm4vla/data/calvin_dataset.py``, read, not copied): open the 11 npz
frames ``t … t+10`` (window 1 + 10 future actions; past the window end the last valid index is
repeated), stack ``rgb_static``, ``rgb_gripper``, ``robot_obs``, ``rel_actions``, ``scene_obs``;
resize every frame of both cameras to 224² (PIL bicubic, as torchvision's ``T.Resize`` on a PIL
image) into float tensors, and apply ``RandomShiftsAug.forward_traj`` to each (replicate padding
10 / 4, ``grid_sample`` on a grid shifted by 1…2·pad pixels per frame). Same workers, batch
size and sampler as ours; both output the 224² augmented image the model sees.

    python benchmarks/dataloader.py [--workers 2] [--batches 40] [--baseline-batches 10] [--batch-size 16] [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vlm4vla.data.bridge import BridgeDataModule
from vlm4vla.data.calvin import CalvinDataModule
from vlm4vla.data.formats.npz_calvin import CalvinReader
from vlm4vla.data.libero import LiberoDataModule
from vlm4vla.data.loader import EpochDistributedSampler
from vlm4vla.data.synthetic import write_calvin_dataset
from vlm4vla.data.transforms import sample_rng
from vlm4vla.policy.action_space import calvin_normalizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fixtures (the RLDS writer), imported in main()

RELEASED_KEYS = ("rgb_static", "rgb_gripper", "robot_obs", "rel_actions", "scene_obs")
BASELINE = "released-style CALVIN loader (11 npz, 2 cameras, float)"


def shift_frames(frames: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """(T, C, H, W) float → each frame replicate-padded by ``pad`` and resampled with
    ``grid_sample`` on its pixel-centre grid translated by an integer 1…2·pad pixels (x and y),
    the work ``RandomShiftsAug.forward_traj`` does."""
    t, _, h, w = frames.shape
    padded = F.pad(frames, (pad, pad, pad, pad), mode="replicate")
    size = h + 2 * pad
    centres = (2 * torch.arange(h, dtype=frames.dtype) + 1) / size - 1  # first h pixel centres
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1).expand(t, h, w, 2)
    offsets = torch.randint(1, 2 * pad + 1, (t, 1, 1, 2), generator=generator).to(frames.dtype) * (2.0 / size)
    return F.grid_sample(padded, grid + offsets, padding_mode="zeros", align_corners=False)


def to_float_224(image: np.ndarray) -> torch.Tensor:
    """PIL bicubic resize to 224², then a float (3, 224, 224) tensor (the Qwen image function)."""
    resized = Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(resized)).permute(2, 0, 1).float()


class ReleasedStyleCalvinDataset(Dataset):
    """The released CALVIN loader's work per sample (see the module docstring)."""

    def __init__(self, split_dir: Path, chunk_size: int = 10, seed: int = 0) -> None:
        reader = CalvinReader(split_dir)
        self.root, self.chunk_size, self.seed = reader.root, chunk_size, seed
        self.windows, self.instructions = reader.windows, reader.instructions
        self.starts = np.concatenate([[0], np.cumsum(self.windows[:, 1] - self.windows[:, 0] + 1)])
        self.normalizer = calvin_normalizer()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        w = int(np.searchsorted(self.starts, index, side="right") - 1)
        start, end = (int(v) for v in self.windows[w])
        frame = start + index - int(self.starts[w])
        ids = np.arange(frame, frame + self.chunk_size + 1)  # window 1 + N future actions
        valid = ids <= end
        ids[~valid] = ids[valid][-1]  # past the window end: the last valid frame repeated
        files = [np.load(self.root / f"episode_{i:07d}.npz") for i in ids]
        episode = {k: np.stack([f[k] for f in files]) for k in RELEASED_KEYS}
        generator = torch.Generator().manual_seed(int(sample_rng(self.seed, epoch, index).integers(1 << 62)))
        static = shift_frames(torch.stack([to_float_224(im) for im in episode["rgb_static"]]), 10, generator)
        gripper = shift_frames(torch.stack([to_float_224(im) for im in episode["rgb_gripper"]]), 4, generator)
        raw = episode["rel_actions"][:-1].astype(np.float32)
        actions = self.normalizer.normalize(raw)
        actions[:, 6] = (raw[:, 6] > 0).astype(np.float32)
        return {
            "image": static[0],  # the frame the policy sees; (3, 224, 224) float
            "rgb_static": static,
            "rgb_gripper": gripper,
            "robot_obs": torch.from_numpy(episode["robot_obs"]),
            "instruction": self.instructions[w],
            "actions": torch.from_numpy(actions),
            "action_mask": torch.from_numpy(valid[:-1]),
        }


def collate_released(samples: list[dict]) -> dict:
    out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "instruction"}
    out["instructions"] = [s["instruction"] for s in samples]
    return out


def baseline_loader(split_dir: Path, args: argparse.Namespace) -> DataLoader:
    dataset = ReleasedStyleCalvinDataset(split_dir)
    sampler = EpochDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=collate_released,
        persistent_workers=args.workers > 0,
    )


def measure(make_loader: Callable[[], DataLoader], batches: int) -> tuple[float, tuple[int, ...]]:
    """(samples/s over ``batches`` batches after one warm-up batch, image batch shape)."""
    loader = make_loader()
    iterator = iter(loader)
    first = next(iterator)
    count, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        count += len(batch["actions"])
    rate = count / (time.perf_counter() - t0)
    images = first["images"] if "images" in first else first["image"]
    return rate, tuple(images.shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--baseline-batches", type=int, default=10, help="the baseline is slow")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--root", type=Path, default=None, help="where to generate (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from tests.fixtures.rlds import write_rlds_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        t0 = time.perf_counter()
        calvin = write_calvin_dataset(
            root / "calvin", num_episodes=4, episode_length=200, window_length=64, windows_per_episode=6
        )
        common_rlds = {"num_episodes": 24, "steps": 30, "val_episodes": 2, "image_size": 256}
        libero = write_rlds_dataset(root / "libero", flavour="libero", **common_rlds)
        bridge = write_rlds_dataset(root / "bridge", flavour="bridge", **common_rlds)
        print(f"generated datasets in {time.perf_counter() - t0:.1f} s under {root}")
        common = {"num_workers": args.workers, "batch_size": args.batch_size, "image_augmentation": True}
        modules = {
            "CalvinDataModule (npz)": CalvinDataModule(calvin, **common),
            "LiberoDataModule (rlds)": LiberoDataModule(libero["root"], val_fraction=0, **common),
            "BridgeDataModule (rlds)": BridgeDataModule(bridge["root"], **common),
        }
        results: dict[str, tuple[float, tuple[int, ...]]] = {}
        for name, dm in modules.items():
            dm.prepare_data()
            dm.setup("fit")
            results[name] = measure(dm.train_dataloader, args.batches)
        results[BASELINE] = measure(lambda: baseline_loader(calvin / "training", args), args.baseline_batches)
    print(f"\nworkers={args.workers} batch_size={args.batch_size} batches={args.batches} "
          f"(baseline {args.baseline_batches}), after 1 warm-up batch; released augmentation on")  # fmt: skip
    width = max(len(k) for k in results)
    for name, (rate, shape) in results.items():
        print(f"  {name:<{width}}  {rate:8.1f} samples/s   images {shape}")
    speedup = results["CalvinDataModule (npz)"][0] / results[BASELINE][0]
    print(f"\nCALVIN speed-up over the released-style loader: {speedup:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

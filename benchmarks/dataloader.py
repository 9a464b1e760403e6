"""Dataloader throughput (samples/s) of every datamodule on generated datasets.

Writes a CALVIN (npz), LIBERO (HDF5) and Bridge (RLDS tfrecord) dataset in their real
layouts, then times training batches (augmentation on, raw collation) of each datamodule, and
in the same run a naive CALVIN loader that opens every npz of the sample's window — as
RoboVLMs' ``DiskCalvinDataset`` does — with the same workers, batch size and sampler.

    python benchmarks/dataloader.py [--workers 2] [--batches 40] [--batch-size 16] [--root DIR]
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
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fixtures (the RLDS writer)

from vlm4vla.data.bridge import BridgeDataModule
from vlm4vla.data.calvin import CalvinDataModule
from vlm4vla.data.collate import VLACollator
from vlm4vla.data.datamodule import EpochDistributedSampler, chunk_rows
from vlm4vla.data.formats.npz_calvin import CalvinReader
from vlm4vla.data.libero import LiberoDataModule
from vlm4vla.data.normalization import calvin_normalizer
from vlm4vla.data.synthetic import write_calvin_dataset, write_libero_hdf5
from vlm4vla.data.transforms import RandomShift, sample_rng

NAIVE_KEYS = ("rgb_static", "rgb_gripper", "rel_actions", "robot_obs", "scene_obs")


class NaiveCalvinDataset(Dataset):
    """Per sample: ``np.load`` every frame file of [t, t+N) (clipped to the window end) and
    stack the observation/action keys, like RoboVLMs' ``DiskCalvinDataset._load_episode``."""

    def __init__(self, split_dir: Path, chunk_size: int, seed: int = 0) -> None:
        reader = CalvinReader(split_dir)
        self.root, self.chunk_size, self.seed = reader.root, chunk_size, seed
        self.windows, self.instructions = reader.windows, reader.instructions
        self.starts = np.concatenate([[0], np.cumsum(self.windows[:, 1] - self.windows[:, 0] + 1)])
        self.normalizer, self.shift = calvin_normalizer(), RandomShift(10)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        w = int(np.searchsorted(self.starts, index, side="right") - 1)
        start, end = self.windows[w]
        frame = int(start) + index - int(self.starts[w])
        last = min(frame + self.chunk_size, int(end) + 1)
        files = [np.load(self.root / f"episode_{i:07d}.npz") for i in range(frame, last)]
        episode = {k: np.stack([f[k] for f in files]) for k in NAIVE_KEYS}
        rows, mask = chunk_rows(0, last - frame, self.chunk_size)
        raw = episode["rel_actions"][rows].astype(np.float32)
        actions = self.normalizer.normalize(raw)
        actions[:, 6] = (raw[:, 6] > 0).astype(np.float32)
        image = self.shift(episode["rgb_static"][0], sample_rng(self.seed, epoch, index))
        return {
            "image": image,
            "instruction": self.instructions[w],
            "actions": torch.from_numpy(actions),
            "action_mask": torch.from_numpy(mask),
        }


def naive_loader(split_dir: Path, args: argparse.Namespace) -> DataLoader:
    dataset = NaiveCalvinDataset(split_dir, chunk_size=10)
    sampler = EpochDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=VLACollator(),
        persistent_workers=args.workers > 0,
    )


def measure(make_loader: Callable[[], DataLoader], batches: int) -> float:
    """Samples/s over ``batches`` batches after one warm-up batch (worker start-up excluded)."""
    loader = make_loader()
    iterator = iter(loader)
    next(iterator)
    count, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        count += len(batch["actions"])
    return count / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40)
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
        libero = write_libero_hdf5(root / "libero", num_tasks=4, demos_per_task=10, steps=60)
        bridge = write_rlds_dataset(
            root / "bridge", flavour="bridge", num_episodes=24, steps=30, val_episodes=2, image_size=256
        )
        print(f"generated datasets in {time.perf_counter() - t0:.1f} s under {root}")
        common = {"num_workers": args.workers, "batch_size": args.batch_size, "image_augmentation": True}
        modules = {
            "CalvinDataModule (npz)": CalvinDataModule(calvin, **common),
            "LiberoDataModule (hdf5)": LiberoDataModule(libero, **common),
            "BridgeDataModule (rlds)": BridgeDataModule(bridge["root"], **common),
        }
        results: dict[str, float] = {}
        for name, dm in modules.items():
            dm.prepare_data()
            dm.setup("fit")
            results[name] = measure(dm.train_dataloader, args.batches)
        results["naive CALVIN (opens every npz of the window)"] = measure(
            lambda: naive_loader(calvin / "training", args), args.batches
        )
    print(
        f"\nworkers={args.workers} batch_size={args.batch_size} batches={args.batches} (after 1 warm-up batch)"
    )
    width = max(len(k) for k in results)
    for name, rate in results.items():
        print(f"  {name:<{width}}  {rate:8.1f} samples/s")
    speedup = results["CalvinDataModule (npz)"] / results["naive CALVIN (opens every npz of the window)"]
    print(f"\nCALVIN speed-up over the naive loader: {speedup:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

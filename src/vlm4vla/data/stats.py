"""Action statistics: compute once, cache next to the data, print (``vlm4vla stats``).

``main(argv)`` is the body of the ``vlm4vla stats`` sub-command::

    vlm4vla stats {calvin,libero,bridge} ROOT [--format F] [--image-key K] [--action-key K]
                  [--instruction-key K] [--state-key K] [--val-fraction 0.05] [--split-seed 0]
                  [--raw-actions] [--drop-noops] [--action-clip 0.65|none]
                  [--cache-dir DIR] [--output FILE]

It builds the datamodule's cached action index and statistics (exactly what training would
compute with the same options: Bridge's ``bridge_orig`` relabelling unless ``--raw-actions``,
LIBERO's no-op filter with ``--drop-noops``) and prints the normaliser as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlm4vla.data.datamodule import VLADataModule
from vlm4vla.data.episodes import build_episode_index
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader
from vlm4vla.data.formats.npz_calvin import CalvinReader
from vlm4vla.data.formats.registry import episode_formats
from vlm4vla.policy.action_space import (
    RELEASED_ACTION_CLIP,
    ActionNormalizer,
    GripperConvention,
    QuantileNormalizer,
)

DATASETS = ("calvin", "libero", "bridge")


def compute_stats(
    source: VLADataModule | EpisodeReader | CalvinReader, *, gripper: GripperConvention | None = None
) -> ActionNormalizer:
    """The normaliser of a datamodule (built or loaded from its cache, as training would), or
    a :class:`QuantileNormalizer` over every action of a reader (all episodes; for a CALVIN
    reader, the ``rel_actions`` of every annotated frame). Non-finite actions are left out."""
    if isinstance(source, VLADataModule):
        source.prepare_data()
        return source.normalizer
    if isinstance(source, CalvinReader):
        raw = source.read_rel_actions(source.window_frames())
        gripper = gripper or GripperConvention("signed")
    elif isinstance(source, EpisodeReader):
        raw = build_episode_index(source).actions
    else:
        raise TypeError(f"compute_stats needs a datamodule or a reader, got {type(source).__name__}")
    raw = raw[np.isfinite(raw).all(axis=1)]
    if len(raw) == 0:
        raise DatasetFormatError(f"{source.root}: no finite actions to compute statistics from")
    return QuantileNormalizer.from_actions(raw, gripper=gripper)


def build_datamodule(
    dataset: str,
    root: str | Path,
    *,
    format: str | None = None,
    image_key: str | None = None,
    action_key: str | None = None,
    instruction_key: str | None = None,
    state_key: str | None = None,
    val_fraction: float = 0.05,
    split_seed: int = 0,
    cache_dir: str | Path | None = None,
    raw_actions: bool = False,
    drop_noops: bool = False,
    action_clip: float | None = RELEASED_ACTION_CLIP,
) -> VLADataModule:
    """The datamodule ``vlm4vla stats`` works on (no workers: index building is I/O bound)."""
    if dataset == "calvin":
        from vlm4vla.data.calvin import CalvinDataModule

        if action_key or instruction_key or state_key:
            raise ValueError(
                "--action-key / --instruction-key / --state-key apply to libero and bridge (CALVIN's are fixed)"
            )
        if raw_actions or drop_noops:
            raise ValueError("--raw-actions applies to bridge and --drop-noops to libero")

        return CalvinDataModule(
            root, num_workers=0, cache_dir=cache_dir, **({"image_key": image_key} if image_key else {})
        )
    extra: dict = {}
    if dataset == "libero":
        from vlm4vla.data.libero import LiberoDataModule as Module

        if raw_actions:
            raise ValueError("--raw-actions applies to bridge (LIBERO actions are used as stored)")
        extra["drop_noops"] = drop_noops
    elif dataset == "bridge":
        from vlm4vla.data.bridge import BridgeDataModule as Module  # type: ignore[assignment]

        if drop_noops:
            raise ValueError("--drop-noops applies to libero")
        extra["action_transform"] = None if raw_actions else "bridge_orig"
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return Module(
        root,
        format=format,
        image_key=image_key,
        action_key=action_key,
        instruction_key=instruction_key,
        state_key=state_key,
        val_fraction=val_fraction,
        split_seed=split_seed,
        num_workers=0,
        cache_dir=cache_dir,
        action_clip=action_clip,
        **extra,
    )


def _action_clip(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "off") else float(text)


def make_parser(prog: str = "vlm4vla stats") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Compute and cache action statistics of a dataset."
    )
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("root", type=Path, help="dataset directory")
    parser.add_argument("--format", choices=episode_formats(), default=None, help="default: detect")
    parser.add_argument("--image-key", default=None)
    parser.add_argument("--action-key", default=None, help="e.g. 'actions' (openpi's LIBERO port)")
    parser.add_argument("--instruction-key", default=None, help="RLDS only (default steps/language_instruction)")
    parser.add_argument("--state-key", default=None, help="states bridge_orig relabels from (Bridge)")
    parser.add_argument("--raw-actions", action="store_true", help="Bridge: stored actions, no bridge_orig")
    parser.add_argument("--drop-noops", action="store_true", help="LIBERO: OpenVLA's no-op filter")
    parser.add_argument(
        "--action-clip", type=_action_clip, default=RELEASED_ACTION_CLIP,
        help="second normalisation stage of libero/bridge (default 0.65; 'none' for q01/q99 only)",
    )  # fmt: skip
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: next to the data")
    parser.add_argument("--output", type=Path, default=None, help="also write the normaliser JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vlm4vla stats``; returns the exit code (0 ok, 2 bad dataset)."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        datamodule = build_datamodule(
            args.dataset,
            args.root,
            format=args.format,
            image_key=args.image_key,
            action_key=args.action_key,
            instruction_key=args.instruction_key,
            state_key=args.state_key,
            val_fraction=args.val_fraction,
            split_seed=args.split_seed,
            cache_dir=args.cache_dir,
            raw_actions=args.raw_actions,
            drop_noops=args.drop_noops,
            action_clip=args.action_clip,
        )
        normalizer = compute_stats(datamodule)
    except (DatasetFormatError, ValueError) as err:  # bad data or bad options: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(normalizer.to_dict(), indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["DATASETS", "build_datamodule", "compute_stats", "main", "make_parser"]

"""Pick an episode format by what is on disk, and open its reader (through the format registry)."""

from __future__ import annotations

from pathlib import Path

from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader
from vlm4vla.data.formats.registry import FORMATS, episode_formats, get_format


def detect_format(root: str | Path, allowed: tuple[str, ...] | None = None) -> str:
    """The one format of ``allowed`` (default: every registered format) found at ``root``."""
    root = Path(root)
    if not root.exists():
        raise DatasetFormatError(f"{root}: dataset directory not found")
    formats = [get_format(name) for name in (allowed if allowed is not None else episode_formats())]
    usable = [fmt.name for fmt in formats if fmt.detect(root)]
    if not usable:
        wanted = ", ".join(fmt.looks_for for fmt in formats)
        hint = "".join(fmt.not_found_hint(root) for fmt in formats)
        raise DatasetFormatError(f"{root}: no dataset found (looked for {wanted}){hint}")
    if len(usable) > 1:
        raise DatasetFormatError(
            f"{root}: several formats found ({', '.join(usable)}); pass format= explicitly"
        )
    return usable[0]


def open_episode_reader(
    fmt: str,
    root: str | Path,
    *,
    split: str = "train",
    image_key: str | None = None,
    action_key: str | None = None,
    instruction_key: str | None = None,
) -> EpisodeReader:
    """Open the reader of format ``fmt``; ``None`` keys take the format's defaults.

    ``instruction_key`` applies only to formats with an instruction feature (RLDS): LIBERO HDF5
    keeps the instruction in ``problem_info`` and LeRobot in ``meta/tasks`` via ``task_index``.
    """
    spec = get_format(fmt)
    if instruction_key is not None and not spec.accepts_instruction_key:
        takers = " / ".join(name for name in FORMATS.names() if FORMATS.get(name).accepts_instruction_key)
        raise ValueError(
            f"instruction_key={instruction_key!r} applies to the {takers} format only; the {fmt} format "
            "has no instruction feature to choose"
        )
    return spec.open(
        Path(root), split=split, image_key=image_key, action_key=action_key, instruction_key=instruction_key
    )


__all__ = ["detect_format", "episode_formats", "open_episode_reader"]

"""The resumable training loader: a distributed sampler that yields ``(index, epoch)`` keys and
a DataLoader that Lightning resumes mid-epoch.

The sampler is a :class:`~torch.utils.data.DistributedSampler` (replicas/rank taken from the
Lightning strategy, 1/0 without one), so Lightning recognises it as distributed, leaves it in
place and calls its ``set_epoch`` every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler


class EpochDistributedSampler(DistributedSampler):
    """A :class:`DistributedSampler` that yields ``(index, epoch)`` keys.

    Same shuffling, padding and per-rank split as its parent (so Lightning keeps it under
    DDP/FSDP); the epoch travels with each index, which seeds that sample's augmentation
    in whichever worker fetches it.
    """

    _resume: tuple[int, int] | None = None

    def resume_from(self, epoch: int, samples_done: int) -> None:
        """Skip the first ``samples_done`` samples of this rank the next time ``epoch`` is iterated."""
        self._resume = (int(epoch), int(samples_done))

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = int(self.epoch)
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip, self._resume = self._resume[1], None
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield (int(index), epoch)


class ResumableDataLoader(DataLoader):
    """A training DataLoader Lightning resumes mid-epoch (its ``state_dict`` interface).

    Lightning prefetches a batch ahead, so the loader's own count would be off by one: the
    number of batches consumed comes from the trainer's batch progress at save time. On
    restore, the sampler skips those samples of the same epoch, so an interrupted run sees
    exactly the batches an uninterrupted one would.
    """

    def __init__(self, *args: Any, batches_done: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        done = int(self._batches_done()) if self._batches_done is not None else 0
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches_done": done}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        if not isinstance(self.sampler, EpochDistributedSampler):
            return
        epoch, skip = int(state_dict["epoch"]), int(state_dict["batches_done"]) * int(self.batch_size)
        if skip >= len(self.sampler):  # saved on an epoch's last batch: the next epoch starts afresh
            epoch, skip = epoch + 1, 0
        self.sampler.resume_from(epoch, skip)
        # With worker processes, Lightning creates the iterator (which draws the first index
        # batches at once) before it sets the epoch of the resumed run: set it now.
        self.sampler.set_epoch(epoch)


__all__ = ["EpochDistributedSampler", "ResumableDataLoader"]

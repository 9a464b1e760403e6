"""The datamodules inside a real Lightning Trainer: the sampler, epochs and checkpoints."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DistributedSampler

from vlm4vla.data.libero import LiberoDataModule
from vlm4vla.data.loader import EpochDistributedSampler
from vlm4vla.policy.action_space import normalizer_from_dict


class _Recorder(pl.LightningModule):
    """A linear model on mean pixel values that records what each epoch saw."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 7)
        self.seen: dict[int, list[torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).append(batch["images"].clone())
        features = batch["images"].float().mean(dim=(1, 2)) / 255
        pred = self.layer(features)[:, None].expand_as(batch["actions"])
        return ((pred - batch["actions"]) ** 2)[batch["action_mask"]].mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_fit_keeps_sampler_advances_epochs_and_checkpoints_stats(libero_root: Path, tmp_path: Path) -> None:
    dm = LiberoDataModule(libero_root, chunk_size=4, batch_size=8, num_workers=0, val_fraction=0.34, seed=3)
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    sampler = trainer.train_dataloader.sampler
    assert isinstance(sampler, EpochDistributedSampler) and sampler.epoch == 1
    first, second = torch.cat(model.seen[0]), torch.cat(model.seen[1])
    assert first.shape == second.shape and not torch.equal(first, second)  # new order and crops
    ckpt_path = trainer.checkpoint_callback.best_model_path
    ckpt = torch.load(ckpt_path, weights_only=False)
    state = ckpt[type(dm).__qualname__]
    assert normalizer_from_dict(state["normalizer"]) == dm.normalizer


def test_sampler_shards_across_ranks_like_distributed_sampler(libero_root: Path) -> None:
    dm = LiberoDataModule(libero_root, chunk_size=4, num_workers=0, val_fraction=0.34)
    dm.setup("fit")
    n = len(dm.train_dataset)
    per_rank = []
    for rank in range(2):
        sampler = EpochDistributedSampler(dm.train_dataset, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(2)
        keys = list(sampler)
        reference = DistributedSampler(dm.train_dataset, num_replicas=2, rank=rank, shuffle=True, seed=5)
        reference.set_epoch(2)
        assert [i for i, _ in keys] == list(reference) and {e for _, e in keys} == {2}
        per_rank.append({i for i, _ in keys})
    assert per_rank[0] | per_rank[1] == set(range(n))
    assert len(per_rank[0]) + len(per_rank[1]) - len(per_rank[0] & per_rank[1]) == n


def test_train_dataloader_takes_replicas_from_the_strategy(libero_root: Path) -> None:
    dm = LiberoDataModule(libero_root, chunk_size=4, num_workers=0, val_fraction=0.34)
    dm.setup("fit")

    strategy = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 3, "rank": 2})
    dm.trainer = SimpleNamespace(strategy=strategy, world_size=3, global_rank=2)  # as attached during fit
    sampler = dm.train_dataloader().sampler
    assert (sampler.num_replicas, sampler.rank, sampler.seed) == (3, 2, 0)
    assert len(list(sampler)) == int(np.ceil(len(dm.train_dataset) / 3))

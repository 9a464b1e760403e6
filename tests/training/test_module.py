"""VLAModule under a real Lightning Trainer on CPU with a tiny backbone."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vlm4vla.data.collate import VLACollator
from vlm4vla.training.module import VLAModule, lr_lambda


class _SampleDataModule(pl.LightningDataModule):
    """Random samples in the datamodules' sample format; the model supplies the inputs function."""

    def __init__(self, chunk_size: int = 4, n: int = 8) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.chunk_size = chunk_size
        self.normalizer = None
        self.inputs_fn = None
        self.samples = []
        for i in range(n):
            actions = rng.uniform(-1, 1, (chunk_size, 7)).astype(np.float32)
            actions[:, 6] = actions[:, 6] > 0
            self.samples.append({
                "image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                "instruction": ["pick up the cube", "open the drawer"][i % 2],
                "actions": torch.from_numpy(actions),
                "action_mask": torch.ones(chunk_size, dtype=torch.bool),
            })

    def set_inputs_fn(self, inputs_fn) -> None:
        self.inputs_fn = inputs_fn

    def train_dataloader(self):
        return DataLoader(self.samples, batch_size=4, shuffle=False, collate_fn=VLACollator(self.inputs_fn))

    def val_dataloader(self):
        return DataLoader(self.samples[:4], batch_size=4, collate_fn=VLACollator(self.inputs_fn))


def _trainer(tmp_path, **kwargs):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=kwargs.pop("max_steps", 4), logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, gradient_clip_val=1.0, **kwargs,
    )


def test_fit_reduces_loss_and_logs_parts(tmp_path):
    module = VLAModule("tiny:qwen2.5-vl", chunk_size=4, lr=1e-3)
    datamodule = _SampleDataModule()
    trainer = _trainer(tmp_path, max_steps=12, limit_val_batches=1, check_val_every_n_epoch=2)
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/loss_arm", "train/loss_gripper", "train/gripper_accuracy", "train/lr",
                "train/samples_per_second", "val/loss"):
        assert key in metrics, key
    module.policy.eval()
    batch = VLACollator(module.policy.backbone.input_processor)(datamodule.samples[:4])
    fresh = VLAModule("tiny:qwen2.5-vl", chunk_size=4)
    fresh.build_policy()
    with torch.no_grad():
        assert module.policy(batch)["loss"] < fresh.policy.eval()(batch)["loss"]


def test_parameter_groups_exclude_norms_biases_and_query():
    module = VLAModule("tiny:paligemma", chunk_size=4, weight_decay=0.1)
    module.build_policy()
    decay, no_decay = module.parameter_groups()
    names = {id(p): n for n, p in module.policy.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert not any("norm" in n or n.endswith(".bias") or n.startswith("action_query") for n in decayed)
    assert "action_query.embedding" in {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == sum(1 for p in module.policy.parameters())


def test_lr_schedule_warmup_constant_and_cosine():
    constant = lr_lambda(4, "constant", 100)
    assert [constant(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert constant(99) == 1.0
    cosine = lr_lambda(0, "cosine", 100)
    assert cosine(0) == pytest.approx(1.0) and cosine(100) == pytest.approx(0.1)


def test_chunk_size_disagreement_fails_before_training(tmp_path):
    module = VLAModule("tiny:kosmos-2", chunk_size=10)
    with pytest.raises(ValueError, match="chunk_size"):
        _trainer(tmp_path).fit(module, datamodule=_SampleDataModule(chunk_size=4))


def test_unknown_backbone_fails_at_construction():
    with pytest.raises(ValueError, match="unknown preset 'qwen4-vl'"):
        VLAModule("qwen4-vl")


def test_released_switches_are_model_arguments():
    """Each switch is one ``model:`` key, mapped into the `VLAConfig` and given to the backbone."""
    module = VLAModule("tiny:qwen3-vl-moe", chunk_size=4, qwen_positions="1d", deepstack=False)
    config = module.vla_config
    assert (config.qwen_positions, config.deepstack, config.paligemma_attention, config.kosmos2_prompt) == (
        "1d", False, None, None)
    assert VLAModule.policy_config(dict(module.hparams)) == config
    policy = module.build_policy(weights="meta")
    assert policy.backbone.switches == {"qwen_positions": "1d", "deepstack": False}
    assert VLAModule("tiny:paligemma", paligemma_attention="causal").vla_config.paligemma_attention == "causal"
    assert VLAModule("tiny:kosmos-2", kosmos2_prompt="released").vla_config.kosmos2_prompt == "released"
    # Unset: the stock model; old hparams without the keys map to the same config.
    stock = VLAModule("tiny:qwen3-vl").vla_config
    assert stock.switches() == {} and VLAModule.policy_config({"backbone": "tiny:qwen3-vl"}) == stock


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "tiny:paligemma", "qwen_positions": "1d"}, r"^qwen_positions: applies to the qwen2\.5-vl, "),
        ({"backbone": "qwen2.5-vl-3b", "deepstack": False}, r"^deepstack: applies to .* not qwen2\.5-vl$"),
        ({"backbone": "tiny:qwen3-vl", "kosmos2_prompt": "released"}, r"^kosmos2_prompt: .* not qwen3-vl$"),
        ({"backbone": "kosmos-2", "paligemma_attention": "bidirectional"},
         r"^paligemma_attention: expected one of 'prefix', 'causal', got 'bidirectional'$"),
    ],
)
def test_a_switch_the_backbone_does_not_take_fails_at_construction(kwargs, message):
    from vlm4vla.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        VLAModule(**kwargs)


def test_resuming_with_another_switch_is_refused():
    saved = dict(VLAModule("tiny:qwen2.5-vl", qwen_positions="1d").hparams)
    with pytest.raises(ValueError, match="qwen_positions='1d' but this run uses qwen_positions=None"):
        VLAModule.check_compatible(saved, dict(VLAModule("tiny:qwen2.5-vl").hparams))
    saved.pop("qwen_positions")  # a checkpoint from before the switches
    VLAModule.check_compatible(saved, dict(VLAModule("tiny:qwen2.5-vl").hparams))

"""Warm-up in epochs (the released CALVIN recipe: 0.25 epoch), converted with the Trainer's epoch length."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vlm4vla.errors import ConfigError
from vlm4vla.training.module import VLAModule, _epochs_to_steps, lr_lambda


def test_warmup_epochs_become_steps_of_the_trainers_epoch():
    # 5 epochs × 1,000 optimiser steps each: a quarter epoch is 250 steps.
    trainer = SimpleNamespace(max_epochs=5, estimated_stepping_batches=5000)
    assert _epochs_to_steps(0.25, trainer) == 250
    factor = lr_lambda(250, "constant", None)
    assert [factor(s) for s in (0, 124, 249, 250, 4999)] == [1 / 250, 125 / 250, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="warmup_epochs: needs trainer.max_epochs"):
        _epochs_to_steps(0.25, SimpleNamespace(max_epochs=-1, estimated_stepping_batches=100))


def test_warmup_epochs_and_steps_are_exclusive():
    with pytest.raises(ConfigError, match="warmup_epochs: set it or warmup_steps, not both"):
        VLAModule("tiny:qwen2.5-vl", warmup_steps=10, warmup_epochs=0.25)
    module = VLAModule("tiny:qwen2.5-vl", warmup_epochs=0.5)
    module._trainer = SimpleNamespace(max_epochs=2, estimated_stepping_batches=40, max_steps=-1)
    assert module.warmup_steps_resolved() == 10

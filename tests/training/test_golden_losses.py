"""Golden losses (torchtune style): the first 10 training losses of the tiny quickstart recipe.

``recipes/quickstart.yaml`` (``tiny:qwen2.5-vl``, its seed, learning rate, warm-up, clipping,
batch size) trains on the quickstart's LIBERO-format dataset (``write_libero_hdf5`` with the
quickstart's sizes and a fixed seed), with one torch thread, ``num_workers: 0`` and no
validation, logger or checkpoints, for 10 steps. Every loss must match :data:`GOLDEN_LOSSES` to
1e-5. Any change to initialisation, data, the prompt, the loss or the optimiser shows up here.

When such a change is intentional, regenerate the values (two runs, which must agree), review
the diff and say why in the CHANGELOG::

    .venv/bin/python -m tests.training.test_golden_losses --regen

(``--check`` runs twice and prints the values without rewriting this file.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
STEPS = 10
ATOL = 1e-5
# The quickstart's dataset (see the comment at the top of recipes/quickstart.yaml).
DATASET = {"num_tasks": 2, "demos_per_task": 4, "steps": 24, "seed": 0}

# BEGIN GOLDEN LOSSES (written by `python -m tests.training.test_golden_losses --regen`)
GOLDEN_LOSSES = [
    0.22208663821220398,
    0.2102973759174347,
    0.18262942135334015,
    0.20093823969364166,
    0.20617826282978058,
    0.20250850915908813,
    0.2112290859222412,
    0.2353571355342865,
    0.20246882736682892,
    0.22722378373146057,
]
# END GOLDEN LOSSES


class LossRecorder(pl.Callback):
    """Writes the training loss of every optimisation step to ``path`` (JSON) at the end of fit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self.losses.append(float(loss.detach().double()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(self.path).write_text(json.dumps(self.losses))


def quickstart_losses(workdir: Path, steps: int = STEPS) -> list[float]:
    """Run ``vlm4vla fit`` on the quickstart recipe in ``workdir`` and return its training losses."""
    import torch

    from vlm4vla.cli.main import main
    from vlm4vla.data.synthetic import write_libero_hdf5

    torch.set_num_threads(1)
    data = write_libero_hdf5(workdir / "data" / "libero_10", **DATASET)
    losses = workdir / "losses.json"
    recipe = {
        "extends": str(QUICKSTART),
        "trainer": {
            "max_steps": steps,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "default_root_dir": str(workdir / "run"),
            "callbacks": [
                {"class_path": "tests.training.test_golden_losses.LossRecorder", "init_args": {"path": str(losses)}},
            ],
        },
        "data": {"init_args": {"root": str(data), "num_workers": 0}},
    }
    config = workdir / "golden.yaml"
    config.write_text(yaml.safe_dump(recipe))
    assert main(["fit", "--config", str(config)]) == 0
    return json.loads(losses.read_text())


def test_quickstart_golden_losses(tmp_path: Path) -> None:
    import torch

    assert torch.get_num_threads() == 1
    losses = quickstart_losses(tmp_path)
    assert len(losses) == STEPS == len(GOLDEN_LOSSES), f"got {len(losses)} losses: {losses}"
    torch.testing.assert_close(
        torch.tensor(losses, dtype=torch.float64),
        torch.tensor(GOLDEN_LOSSES, dtype=torch.float64),
        rtol=0,
        atol=ATOL,
        msg=lambda m: (
            f"{m}\nlosses {losses}\nIf the change is intentional, regenerate: "
            ".venv/bin/python -m tests.training.test_golden_losses --regen"
        ),
    )


# ---------------------------------------------------------------------------- regeneration
def _two_runs() -> list[float]:
    runs = []
    for i in range(2):
        with tempfile.TemporaryDirectory(prefix=f"golden{i}-") as tmp:
            runs.append(quickstart_losses(Path(tmp)))
    worst = max(abs(a - b) for a, b in zip(*runs, strict=True))
    print(f"run 1: {runs[0]}\nrun 2: {runs[1]}\nlargest difference between the runs: {worst:.3g}")
    if len(runs[0]) != STEPS or worst > ATOL / 10:
        raise SystemExit(f"the two runs disagree (largest difference {worst:.3g}); not writing golden values")
    return runs[0]


def _rewrite(losses: list[float]) -> None:
    path = Path(__file__)
    block = "GOLDEN_LOSSES = [\n" + "".join(f"    {value!r},\n" for value in losses) + "]\n"
    text, count = re.subn(
        r"(# BEGIN GOLDEN LOSSES[^\n]*\n).*?(# END GOLDEN LOSSES)",
        lambda m: m.group(1) + block + m.group(2),
        path.read_text(),
        flags=re.S,
    )
    assert count == 1, "golden-loss markers not found"
    path.write_text(text)
    print(f"wrote {len(losses)} golden losses to {path}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--regen", action="store_true", help="run twice and rewrite GOLDEN_LOSSES in this file")
    mode.add_argument("--check", action="store_true", help="run twice and print the losses only")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    values = _two_runs()
    if args.regen:
        _rewrite(values)

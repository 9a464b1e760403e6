"""The import rules of the README's Architecture section, each checked in a fresh interpreter.

Evaluation and the plugins never load Lightning or the data layer (4–5 s in the main process and
again in every spawned worker), nor a simulator at import time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm4vla.evaluation.testing import FORBIDDEN_IMPORTS, imports_in_fresh_interpreter, loaded_modules

SIMULATORS = (
    "libero", "robosuite", "mujoco", "calvin_env", "pybullet", "hydra", "omegaconf",
    "simpler_env", "mani_skill", "mani_skill2_real2sim", "sapien",
)  # fmt: skip
MODEL = ("torch", "transformers", "vlm4vla.policy", "vlm4vla.backbones")
# What a plugin may load of vlm4vla: the evaluation API and the light shared helpers.
PLUGIN_API = ("vlm4vla.evaluation", "vlm4vla.imaging", "vlm4vla.errors", "vlm4vla.mapping", "vlm4vla.files",
              "vlm4vla.lazy_imports")

# module → what it must not load, on top of Lightning, the data and training layers and any simulator.
RULES: dict[str, tuple[str, ...]] = {
    "vlm4vla.imaging": MODEL,
    "vlm4vla.evaluation": MODEL,
    "vlm4vla.evaluation.runner": MODEL,
    "vlm4vla.evaluation.testing": MODEL,  # tiny bundles import torch only when built
    "vlm4vla.cli.evaluate": MODEL,
    # Reads bundle files (safetensors headers, hence torch); the model is built only to run it.
    "vlm4vla.evaluation.sweep": ("transformers", "vlm4vla.backbones", "vlm4vla.policy.policy"),
    # The policy layer's light parts, which evaluation builds on, sit below data and evaluation.
    "vlm4vla.policy.bundle": ("transformers", "vlm4vla.backbones", "vlm4vla.evaluation"),
    "vlm4vla.policy.action_space": ("transformers", "vlm4vla.backbones", "vlm4vla.evaluation"),
    "vlm4vla_libero": MODEL,
    "vlm4vla_libero.evaluator": MODEL,
    "vlm4vla_calvin": MODEL,
    "vlm4vla_simpler": MODEL,
}
PLUGINS = ("vlm4vla_libero", "vlm4vla_calvin", "vlm4vla_simpler")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", sorted(RULES))
def test_import_loads_neither_lightning_nor_the_data_layer_nor_a_simulator(module: str) -> None:
    loaded = imports_in_fresh_interpreter(f"import {module}")
    assert module in loaded
    assert loaded_modules(loaded, (*FORBIDDEN_IMPORTS, *SIMULATORS, *RULES[module])) == []
    if module.split(".")[0] in PLUGINS:
        ours = [m for m in loaded if m.startswith("vlm4vla.")]
        assert [m for m in ours if not loaded_modules([m], PLUGIN_API)] == []


def test_data_layer_and_plugins_share_one_image_pipeline() -> None:
    import vlm4vla_calvin.evaluator
    import vlm4vla_libero.evaluator
    import vlm4vla_simpler.evaluator

    from vlm4vla import imaging
    from vlm4vla.backbones import base
    from vlm4vla.data import dataset, transforms

    assert dataset.rotate_180 is imaging.rotate_180  # what EpisodeDataset applies to LIBERO frames
    assert vlm4vla_libero.evaluator.libero_image_to_upright is imaging.libero_image_to_upright
    assert transforms.resize_image is imaging.resize_image  # the augmentation's first resize
    # every plugin's policy image goes through the one evaluation resize / crop
    for plugin in (vlm4vla_calvin.evaluator, vlm4vla_libero.evaluator, vlm4vla_simpler.evaluator):
        assert plugin.policy_image is imaging.policy_image, plugin.__name__
    assert base.resize_image is imaging.resize_image  # the backbones' input resize (bicubic)


def test_an_evaluation_run_loads_neither_in_the_main_process_nor_in_its_workers(run_dir: Path, tmp_path: Path) -> None:
    """The whole `vlm4vla-eval` run, bundle loading included; the workers do not even load torch."""
    out = tmp_path / "out"
    argv = ["--suite", "reach-modules", "--ckpt", str(run_dir / "checkpoints" / "step=000100"), "--out", str(out),
            "--episodes-per-task", "2", "--modes", "full", "--workers", "2", "--quiet"]  # fmt: skip
    loaded = imports_in_fresh_interpreter(
        f"""
        import tests.evaluation.doubles
        from vlm4vla.cli.evaluate import main
        assert main({argv!r}) == 0
        """,
        path=[REPO],
        timeout=300,
    )
    assert "vlm4vla.policy.policy" in loaded  # the policy was loaded and run here
    assert loaded_modules(loaded, (*FORBIDDEN_IMPORTS, *SIMULATORS)) == []
    records = [json.loads(line) for line in next(out.glob("*/*/episodes.jsonl")).read_text().splitlines()]
    assert len(records) == 4 and all(r["heavy_modules"] == [] for r in records), records

"""Every recipe parses with LightningCLI's own parser and instantiates (real-size models on meta)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

from vlm4vla.backbones.presets import list_presets
from vlm4vla.training.module import VLAModule
from vlm4vla.training.recipes import RECIPES_DIR, RecipeError, list_recipes, load_recipe

RECIPES = list_recipes()
# The released configs (released-code-parity.md "Training recipes"): length, warm-up, global batch,
# chunk, checkpoint interval; the LR depends on the family (Qwen 2e-5 on Bridge/LIBERO).
RELEASED = {
    "calvin": ({"max_epochs": 5, "max_steps": -1}, {"warmup_epochs": 0.25}, 128, 10, 5000),
    "bridge": ({"max_steps": 50_000}, {"warmup_steps": 2500}, 512, 4, 5000),
    "libero10": ({"max_steps": 50_000}, {"warmup_steps": 250}, 512, 4, 5000),
}


def _released_lr(benchmark: str, preset: str) -> float:
    return 2e-5 if benchmark == "calvin" or preset.startswith("qwen") else 5e-5


class _ParseOnlyCLI(LightningCLI):
    """Parse and instantiate model, data and the trainer's classes; no Trainer (no GPU here)."""

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.model = self.config_init["model"]
        self.datamodule = self.config_init["data"]


def _instantiate(recipe: dict, tmp_path: Path) -> _ParseOnlyCLI:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return _ParseOnlyCLI(VLAModule, pl.LightningDataModule, subclass_mode_data=True, run=False,
                         args=["--config", str(path)], save_config_callback=None)


def test_every_benchmark_has_a_recipe_per_preset():
    for benchmark in RELEASED:
        names = {p.stem for p in (RECIPES_DIR / benchmark).glob("*.yaml") if not p.name.startswith("_")}
        assert names == set(list_presets()), benchmark
    ablations = {p.stem for p in (RECIPES_DIR / "ablations").glob("*.yaml")}
    assert {"freeze-vision", "freeze-word-embeddings", "from-scratch", "qwen-short-prompt", "resolution-512",
            "resolution-768", "lr-1e-5", "lr-2e-5", "lr-5e-5", "lr-1e-4", "lora"} <= ablations
    assert (RECIPES_DIR / "quickstart.yaml").is_file()


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(RECIPES_DIR)) for p in RECIPES])
def test_recipe_parses_and_instantiates_on_meta(path, tmp_path):
    recipe = load_recipe(path, environ={})
    cli = _instantiate(recipe, tmp_path)
    module, datamodule = cli.model, cli.datamodule
    assert isinstance(module, VLAModule) and isinstance(datamodule, pl.LightningDataModule)
    assert module.hparams.chunk_size == datamodule.chunk_size
    assert os.path.isabs(datamodule.root), "data paths are resolved against the data root"
    if not module.hparams.backbone.startswith("tiny:"):
        policy = module.build_policy(weights="meta")
        assert policy.backbone.device.type == "meta"
        assert policy.num_trainable_parameters() > 0


@pytest.mark.parametrize("path", [p for p in RECIPES if p.parent.name in RELEASED],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_benchmark_recipes_follow_the_released_configs(path):
    length, warmup, global_batch, chunk, every = RELEASED[path.parent.name]
    recipe = load_recipe(path, environ={})
    trainer, model, data = recipe["trainer"], recipe["model"], recipe["data"]["init_args"]
    devices = trainer["devices"] * trainer["num_nodes"] * trainer.get("accumulate_grad_batches", 1)
    assert data["batch_size"] * devices == global_batch
    assert {k: trainer.get(k) for k in length} == length
    assert {k: model.get(k) for k in warmup} == warmup
    assert model["lr"] == _released_lr(path.parent.name, path.stem)
    assert model["chunk_size"] == chunk and "chunk_size" not in data  # linked from the model
    checkpoint = next(c for c in trainer["callbacks"] if c["class_path"].endswith("VLACheckpoint"))
    assert checkpoint["init_args"]["every_n_train_steps"] == every
    assert trainer["strategy"]["class_path"].endswith("ModelParallelStrategy")
    assert model["backbone"] == path.stem
    header = path.read_text().splitlines()[0]
    assert f"LR {model['lr']:.0e}" in header, header
    if path.parent.name == "libero10":  # openvla's no-noops RLDS, all of it for training
        assert data["format"] == "rlds" and data["val_fraction"] == 0 and data["root"].endswith("libero_10_no_noops/1.0.0")


def test_ablations_change_only_their_switch():
    base = load_recipe(RECIPES_DIR / "calvin" / "qwen2.5-vl-3b.yaml", environ={})
    frozen = load_recipe(RECIPES_DIR / "ablations" / "freeze-vision.yaml", environ={})
    assert frozen["model"].pop("freeze_vision_encoder") is True
    assert frozen["trainer"].pop("default_root_dir") == "runs/ablations/freeze-vision"
    base["trainer"].pop("default_root_dir")
    assert frozen == base


def test_every_recipe_has_its_own_run_directory():
    roots = {path: load_recipe(path, environ={})["trainer"].get("default_root_dir") for path in RECIPES}
    assert all(isinstance(root, str) and root.startswith("runs/") for root in roots.values()), roots
    assert len(set(roots.values())) == len(roots), "two recipes would share (and overwrite) one run directory"
    for recipe in RECIPES:  # checkpoints follow default_root_dir: no recipe pins a checkpoint folder
        callbacks = load_recipe(recipe, environ={})["trainer"].get("callbacks", [])
        assert all("dirpath" not in c.get("init_args", {}) for c in callbacks), recipe


def test_data_root_comes_from_one_place(tmp_path):
    recipe_path = RECIPES_DIR / "libero10" / "qwen3-vl-2b.yaml"
    default = load_recipe(recipe_path, environ={})["data"]["init_args"]["root"]
    assert default == os.path.abspath("data/libero/libero_10_no_noops/1.0.0")
    from_env = load_recipe(recipe_path, environ={"VLM4VLA_DATA_ROOT": str(tmp_path)})["data"]["init_args"]["root"]
    assert from_env == str(tmp_path / "libero" / "libero_10_no_noops" / "1.0.0")


def test_bad_recipes_are_clear_errors(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "c.yaml")

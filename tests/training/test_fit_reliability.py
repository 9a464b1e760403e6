"""Resume and checkpoint reliability of `vlm4vla fit` (issue: reliability, items 1–7)."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlm4vla.cli.main import main
from vlm4vla.data.synthetic import write_libero_hdf5
from vlm4vla.training.recipes import RECIPES_DIR

QUICKSTART = RECIPES_DIR / "quickstart.yaml"
# 1 task × 3 demos of 5, 6 and 7 frames = 18 training frames; batch 4 → 5 batches per epoch
# (4, 4, 4, 4, 2): step 5 ends epoch 0, step 7 is two batches into epoch 1.
BATCHES_PER_EPOCH = 5


@pytest.fixture(scope="module")
def small_libero(tmp_path_factory) -> Path:
    return write_libero_hdf5(tmp_path_factory.mktemp("data") / "libero", num_tasks=1, demos_per_task=3, steps=5)


def _recipe(tmp_path: Path, run: str, root: Path, *, workers: int, every: int = 100, checkpoint: dict | None = None,
            **trainer) -> Path:
    callback = {"every_n_train_steps": every, "save_top_k": -1, "save_last": True, **(checkpoint or {})}
    recipe = {
        "extends": str(QUICKSTART),
        "trainer": {
            "max_steps": 9, "val_check_interval": None, "check_val_every_n_epoch": None, "limit_val_batches": 0,
            "logger": False, "default_root_dir": str(tmp_path / run),
            "callbacks": [{"class_path": "vlm4vla.training.VLACheckpoint", "init_args": callback}],
            **trainer,
        },
        "data": {"class_path": "vlm4vla.data.LiberoDataModule",
                 "init_args": {"root": str(root), "batch_size": 4, "num_workers": workers, "val_fraction": 0.0,
                               "image_augmentation": True}},
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step={step:06d}" / "model.safetensors")


@pytest.fixture(scope="module")
def straight_weights(tmp_path_factory, small_libero) -> dict[str, torch.Tensor]:
    """9 uninterrupted steps (the oracle the resumed runs must reproduce bit for bit)."""
    tmp = tmp_path_factory.mktemp("straight")
    assert main(["fit", "--config", str(_recipe(tmp, "straight", small_libero, workers=0))]) == 0
    return _weights(tmp / "straight", 9)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_at", [7, BATCHES_PER_EPOCH], ids=["mid-epoch", "epoch-boundary"])
def test_resume_is_exact_for_any_worker_count(tmp_path, small_libero, straight_weights, workers, stop_at):
    config = str(_recipe(tmp_path, "resumed", small_libero, workers=workers))
    assert main(["fit", "--config", config, f"--trainer.max_steps={stop_at}"]) == 0
    assert main(["fit", "--config", config, "--ckpt_path", "last"]) == 0
    resumed = _weights(tmp_path / "resumed", 9)
    assert resumed.keys() == straight_weights.keys()
    for key, value in straight_weights.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("vlm4vla fit: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _quickstart_copy(tmp_path: Path, root: Path, max_steps: int = 2) -> Path:
    """The shipped quickstart recipe (its own checkpoint callback) on the small dataset."""
    recipe = {"extends": str(QUICKSTART),
              "trainer": {"max_steps": max_steps, "val_check_interval": None, "limit_val_batches": 0,
                          "logger": False},
              "data": {"init_args": {"root": str(root), "num_workers": 0, "val_fraction": 0.0, "batch_size": 4}}}
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_checkpoints_follow_default_root_dir(tmp_path, small_libero, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(_quickstart_copy(tmp_path, small_libero))
    assert main(["fit", "--config", config, "--trainer.default_root_dir=runs/a"]) == 0
    first = tmp_path / "runs/a/checkpoints/last.ckpt"
    before = _digest(first)
    assert main(["fit", "--config", config, "--trainer.default_root_dir=runs/b"]) == 0
    # The second run has its own folder and left the first run's checkpoint alone.
    assert (tmp_path / "runs/b/checkpoints/last.ckpt").is_file()
    assert (tmp_path / "runs/b/checkpoints/step=000002/model.safetensors").is_file()
    assert _digest(first) == before
    assert not (tmp_path / "runs/quickstart").exists() and not (tmp_path / "checkpoints").exists()


def test_relative_checkpoint_dirpath_is_under_default_root_dir_and_absolute_stays(tmp_path, small_libero,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = str(_recipe(tmp_path, "rel", small_libero, workers=0, checkpoint={"dirpath": "ckpts"}, max_steps=1))
    assert main(["fit", "--config", relative]) == 0
    assert (tmp_path / "rel/ckpts/last.ckpt").is_file() and not (tmp_path / "ckpts").exists()
    absolute = tmp_path / "elsewhere"
    config = str(_recipe(tmp_path, "abs", small_libero, workers=0, checkpoint={"dirpath": str(absolute)},
                         max_steps=1))
    assert main(["fit", "--config", config]) == 0
    assert (absolute / "last.ckpt").is_file() and not (tmp_path / "abs/checkpoints").exists()


def test_ckpt_path_last_without_checkpoint_is_refused(tmp_path, small_libero, capsys):
    config = str(_recipe(tmp_path, "fresh", small_libero, workers=0, max_steps=1))
    assert main(["fit", "--config", config, "--ckpt_path", "last"]) == 2
    line = _error_line(capsys)
    assert "--ckpt_path last: no last checkpoint in" in line and str(tmp_path / "fresh" / "checkpoints") in line
    assert not (tmp_path / "fresh" / "checkpoints").exists(), "nothing was trained"


@pytest.mark.parametrize("damage", ["truncated", "unsafe"])
def test_ckpt_path_last_unreadable_gets_the_one_line_check(tmp_path, small_libero, capsys, damage):
    config = str(_recipe(tmp_path, "run", small_libero, workers=0, max_steps=1))
    assert main(["fit", "--config", config]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        torch.save({"hyper_parameters": {"backbone": "tiny:qwen2.5-vl"}, "payload": pl.Trainer}, last)
    capsys.readouterr()
    assert main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps=2"]) == 2
    line = _error_line(capsys)
    assert f"{last}: not a readable Lightning checkpoint" in line
    assert "weights_only=False" not in line
    assert not (tmp_path / "run" / "checkpoints" / "step=000002").exists()


def test_unreadable_checkpoint_message_never_suggests_weights_only_false(tmp_path, capsys):
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"hyper_parameters": {"backbone": "tiny:qwen2.5-vl"}, "payload": pl.Trainer}, unsafe)
    for argv in (["fit", "--config", str(QUICKSTART), "--ckpt_path", str(unsafe)],
                 ["export", str(unsafe), str(tmp_path / "bundle")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{unsafe}: not a readable Lightning checkpoint (it holds Python objects" in err, err
        assert "weights_only" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bundle").exists()


def test_final_step_is_checkpointed_when_not_a_multiple(tmp_path, small_libero):
    config = str(_recipe(tmp_path, "run", small_libero, workers=0, every=3, max_steps=5))
    assert main(["fit", "--config", config]) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt", "step=000003.ckpt", "step=000005.ckpt"]
    assert sorted(p.name for p in checkpoints.glob("step=*[0-9]")) == ["step=000003", "step=000005"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 5


def test_disk_full_leaves_no_partial_checkpoint(tmp_path, small_libero, capsys, monkeypatch):
    config = str(_recipe(tmp_path, "run", small_libero, workers=0, every=1, max_steps=3))
    real_save = pl.Trainer.save_checkpoint
    calls = []

    def save_until_full(trainer, filepath, weights_only=False, storage_options=None):
        calls.append(filepath)
        if len(calls) <= 2:  # step 1: its checkpoint and last.ckpt
            return real_save(trainer, filepath, weights_only, storage_options)
        Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save_until_full)
    assert main(["fit", "--config", config]) == 2
    line = _error_line(capsys)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert line == f"vlm4vla fit: error: no space left on device while writing {checkpoints / 'step=000002.ckpt'}"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step=000001", "step=000001.ckpt"]
    assert torch.load(checkpoints / "step=000001.ckpt", weights_only=False)["global_step"] == 1


def test_recipe_key_typo_is_one_line_with_file_key_and_closest(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"extends": str(QUICKSTART), "data": {"init_args": {"batch_sise": 4}}}))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "base.yaml", "model": {"lr": 1e-3}}))
    assert main(["fit", "--config", str(child)]) == 2
    assert _error_line(capsys) == (f"vlm4vla fit: error: {base}: data.init_args.batch_sise: not a valid key; "
                                   "did you mean data.init_args.batch_size?")
    child.write_text(yaml.safe_dump({"extends": str(QUICKSTART), "model": {"lrr": 1e-3}}))
    assert main(["fit", "--config", str(child)]) == 2
    assert _error_line(capsys) == f"vlm4vla fit: error: {child}: model.lrr: not a valid key; did you mean model.lr?"
    assert main(["fit", "--config", str(QUICKSTART), "--trainer.max_stepz=3"]) == 2
    assert _error_line(capsys) == ("vlm4vla fit: error: command line: trainer.max_stepz: not a valid key; "
                                   "did you mean trainer.max_steps?")


def test_recipe_wrong_type_is_one_line(tmp_path, capsys):
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": str(QUICKSTART), "trainer": {"max_steps": "lots"}}))
    assert main(["fit", "--config", str(child)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"vlm4vla fit: error: {child}: trainer.max_steps: Expected a <class 'int'>"), line
    assert len(capsys.readouterr().err.strip().splitlines()) == 0

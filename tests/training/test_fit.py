"""`vlm4vla fit` end to end on fixture data: every datamodule, resume, DDP and FSDP2 on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.fixtures.rlds import write_rlds_dataset
from vlm4vla.cli.main import main
from vlm4vla.data.synthetic import write_calvin_dataset, write_libero_hdf5
from vlm4vla.policy import VLAPolicy
from vlm4vla.training.recipes import RECIPES_DIR

QUICKSTART = RECIPES_DIR / "quickstart.yaml"
IMAGES = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    write_libero_hdf5(root / "libero", num_tasks=2, demos_per_task=4, steps=16)
    write_calvin_dataset(root / "calvin" / "task_ABC_D", num_episodes=2, episode_length=30, window_length=12)
    bridge = write_rlds_dataset(root / "bridge", flavour="bridge", num_episodes=5, steps=10, val_episodes=1,
                                image_size=64)
    return {"libero": root / "libero", "calvin": root / "calvin" / "task_ABC_D", "bridge": bridge["root"]}


def _recipe(tmp_path: Path, run: str, *, data_class: str, root: Path, chunk: int = 4, **trainer) -> Path:
    recipe = {
        "extends": str(QUICKSTART),
        "trainer": {
            "max_steps": 4, "val_check_interval": 2, "limit_val_batches": 1, "logger": False,
            "default_root_dir": str(tmp_path / run),
            "callbacks": [{
                "class_path": "vlm4vla.training.VLACheckpoint",
                "init_args": {"dirpath": str(tmp_path / run / "checkpoints"), "every_n_train_steps": 2,
                              "save_top_k": -1, "save_last": True},
            }],
            **trainer,
        },
        "model": {"chunk_size": chunk},
        "data": {"class_path": data_class,
                 "init_args": {"root": str(root), "batch_size": 4, "num_workers": 0}},
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(
    ("name", "data_class"),
    [("libero", "vlm4vla.data.LiberoDataModule"), ("calvin", "vlm4vla.data.CalvinDataModule"),
     ("bridge", "vlm4vla.data.BridgeDataModule")],
)
def test_fit_each_datamodule_writes_loadable_bundles(tmp_path, datasets, name, data_class):
    config = _recipe(tmp_path, name, data_class=data_class, root=datasets[name])
    assert main(["fit", "--config", str(config)]) == 0
    checkpoints = tmp_path / name / "checkpoints"
    assert (checkpoints / "step=000002").is_dir() and (checkpoints / "step=000004").is_dir()
    policy = VLAPolicy.from_pretrained(checkpoints / "step=000004")
    assert policy.normalizer is not None and policy.chunk_size == 4
    chunk = policy.predict_chunk(IMAGES, ["pick up the bowl", "open the drawer"])
    assert chunk.shape == (2, 4, 7) and torch.isfinite(chunk).all()
    # The bundle records the training image pipeline, with the stored frame size read here from
    # the files themselves (evaluation renders LIBERO at that size and crops like training).
    pipeline = policy.config.image_pipeline
    assert pipeline == {
        "dataset": name, "source_size": _stored_frame_size(name, datasets[name]), "resize_to": 224,
        "augmentation": True, "crop_scale": None if name == "calvin" else 0.9,
    }  # fmt: skip


def _stored_frame_size(name: str, root: Path) -> list[int]:
    if name == "libero":
        import h5py

        with h5py.File(sorted(root.glob("*_demo.hdf5"))[0]) as f:
            return list(f["data/demo_0/obs/agentview_rgb"].shape[1:3])
    if name == "calvin":
        return list(np.load(sorted(root.glob("training/episode_*.npz"))[0])["rgb_static"].shape[:2])
    return [64, 64]  # the Bridge fixture's image_size


def test_resume_mid_epoch_gives_the_same_weights(tmp_path, datasets):
    libero = dict(data_class="vlm4vla.data.LiberoDataModule", root=datasets["libero"])
    straight = _recipe(tmp_path, "straight", max_steps=6, **libero)
    assert main(["fit", "--config", str(straight)]) == 0
    resumed = _recipe(tmp_path, "resumed", max_steps=6, **libero)
    assert main(["fit", "--config", str(resumed), "--trainer.max_steps=2"]) == 0
    assert main(["fit", "--config", str(resumed), "--ckpt_path", "last"]) == 0
    a = load_file(tmp_path / "straight" / "checkpoints" / "step=000006" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "step=000006" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vlm4vla.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, datasets):
    config = _recipe(tmp_path, "ddp", data_class="vlm4vla.data.LiberoDataModule", root=datasets["libero"],
                     devices=2, strategy="ddp")
    result = _cli("fit", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    assert VLAPolicy.from_pretrained(tmp_path / "ddp" / "checkpoints" / "step=000004").chunk_size == 4


@pytest.mark.slow
def test_fsdp2_trains_saves_resumes_and_exports(tmp_path, datasets):
    config = _recipe(
        tmp_path, "fsdp", data_class="vlm4vla.data.LiberoDataModule", root=datasets["libero"], devices=2,
        strategy={"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"},
    )
    common = ["--config", str(config), "--model.fsdp_param_dtype=float32"]
    first = _cli("fit", *common, "--trainer.max_steps=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = tmp_path / "fsdp" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_dir(), "FSDP2 saves a sharded (distributed) checkpoint"
    resumed = _cli("fit", *common, "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stdout + resumed.stderr

    exported = _cli("export", str(checkpoints / "last.ckpt"), str(tmp_path / "exported"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    from_training = VLAPolicy.from_pretrained(checkpoints / "step=000004")
    from_export = VLAPolicy.from_pretrained(tmp_path / "exported")
    texts = ["pick up the bowl", "open the drawer"]
    torch.testing.assert_close(from_export.predict_chunk(IMAGES, texts), from_training.predict_chunk(IMAGES, texts),
                               rtol=0, atol=0)
    a, b = from_export.state_dict(), from_training.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- bad input
def test_unknown_backbone_fails_before_training(tmp_path, datasets, capsys):
    config = _recipe(tmp_path, "bad", data_class="vlm4vla.data.LiberoDataModule", root=datasets["libero"])
    assert main(["fit", "--config", str(config), "--model.backbone=qwen9-vl"]) != 0
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_missing_data_path_is_one_clear_error(tmp_path, capsys):
    config = _recipe(tmp_path, "nodata", data_class="vlm4vla.data.LiberoDataModule", root=tmp_path / "absent")
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vlm4vla fit: error:") and "absent" in err[-1] and "not found" in err[-1]
    assert not (tmp_path / "nodata" / "checkpoints").exists()


def test_chunk_size_is_given_once_on_the_model(tmp_path, datasets, capsys):
    config = _recipe(tmp_path, "chunk", data_class="vlm4vla.data.LiberoDataModule", root=datasets["libero"])
    assert main(["fit", "--config", str(config), "--model.chunk_size=2", "--trainer.max_steps=2"]) == 0
    policy = VLAPolicy.from_pretrained(tmp_path / "chunk" / "checkpoints" / "step=000002")
    assert policy.chunk_size == 2  # the datamodule followed: its batches had chunks of 2
    capsys.readouterr()
    assert main(["fit", "--config", str(config), "--data.init_args.chunk_size=3"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "vlm4vla fit: error: recipe: data.init_args.chunk_size: set model.chunk_size only "
        "(the datamodule's follows it)"
    )


def test_checkpoint_of_another_backbone_is_refused(tmp_path, datasets, capsys):
    libero = dict(data_class="vlm4vla.data.LiberoDataModule", root=datasets["libero"])
    config = _recipe(tmp_path, "qwen", **libero)
    assert main(["fit", "--config", str(config), "--trainer.max_steps=2"]) == 0
    ckpt = tmp_path / "qwen" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    other = _recipe(tmp_path, "kosmos", **libero)
    code = main(["fit", "--config", str(other), "--model.backbone=tiny:kosmos-2", "--ckpt_path", str(ckpt)])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "backbone='tiny:qwen2.5-vl'" in last and "tiny:kosmos-2" in last
    assert ckpt.read_bytes() == before


def test_unknown_datamodule_is_one_clear_error(tmp_path, datasets, capsys):
    config = _recipe(tmp_path, "nodm", data_class="vlm4vla.data.LiberoDataModule", root=datasets["libero"])
    assert main(["fit", "--config", str(config), "--data.class_path=vlm4vla.data.NopeDataModule"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NopeDataModule" in err[0] and "vlm4vla.data.LiberoDataModule" in err[0]


def test_unknown_backbone_message_lists_presets(tmp_path, datasets, capsys):
    config = _recipe(tmp_path, "nobb", data_class="vlm4vla.data.LiberoDataModule", root=datasets["libero"])
    assert main(["fit", "--config", str(config), "--model.backbone", "qwen9-vl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qwen9-vl" in err[0] and "qwen3-vl-2b" in err[0]

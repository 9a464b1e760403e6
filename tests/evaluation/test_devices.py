"""``--device`` / ``--dtype``: resolved, reaching the model, recorded, and checked on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm4vla.cli.evaluate import main
from vlm4vla.evaluation.devices import device_type, resolve_device
from vlm4vla.evaluation.plugin import EvaluationError
from vlm4vla.evaluation.sweep import load_policy, resolve_checkpoints


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for text in ("cuda", "cuda:0"):
        with pytest.raises(EvaluationError, match="no CUDA device is visible") as err:
            resolve_device(text)
        assert "\n" not in str(err.value)
    with pytest.raises(EvaluationError, match="expected auto"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(EvaluationError, match=r"expected cuda:0 … cuda:1 \(2 visible\)"):
        resolve_device("cuda:2")
    assert device_type("cuda:1") == "cuda" and device_type("cpu") == "cpu"


def test_the_dtype_reaches_the_model_and_the_head_stays_fp32(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = resolve_checkpoints(run_dir / "checkpoints" / "step=000100")[0]
    loaded = []
    from vlm4vla.policy.policy import VLAPolicy

    original = VLAPolicy.from_pretrained.__func__

    def spy(cls, directory, *, device="cpu"):  # noqa: ANN001, ANN202
        policy = original(cls, directory, device=device)
        loaded.append(policy)
        return policy

    monkeypatch.setattr(VLAPolicy, "from_pretrained", classmethod(spy))
    images = [np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    full = load_policy(checkpoint)(images, ["reach right"])
    half = load_policy(checkpoint, dtype="bfloat16")(images, ["reach right"])
    fp32, bf16 = loaded
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.backbone.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.head.parameters()} | {bf16.action_query.embedding.dtype} == {torch.float32}
    assert half.dtype == np.float32 and half.shape == full.shape
    assert not np.array_equal(half, full)  # bf16 rounding reached the forward …
    np.testing.assert_allclose(half, full, atol=0.05)  # … and nothing else changed


def test_device_and_dtype_are_recorded_and_a_mismatched_resume_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    base = ["--suite", "reach", "--ckpt", str(run_dir / "checkpoints" / "step=000100"), "--out", str(out),
            "--episodes-per-task", "1", "--modes", "full", "--quiet"]  # fmt: skip
    assert main([*base, "--dtype", "bfloat16", "--device", "cpu"]) == 0
    meta = json.loads((out / "step=000100" / "full" / "meta.json").read_text())
    assert (meta["device"], meta["dtype"]) == ("cpu", "bfloat16")
    episodes = (out / "step=000100" / "full" / "episodes.jsonl").read_bytes()
    capsys.readouterr()
    assert main([*base, "--episodes-per-task", "2"]) == 2  # default float32 now
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dtype 'bfloat16' → 'float32'" in err, err
    assert (out / "step=000100" / "full" / "episodes.jsonl").read_bytes() == episodes


def test_cuda_without_a_gpu_is_one_line_and_writes_nothing(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    argv = ["--suite", "reach", "--ckpt", str(run_dir / "checkpoints" / "step=000100"), "--out", str(out),
            "--device", "cuda", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda: no CUDA device is visible" in err
    assert not out.exists()

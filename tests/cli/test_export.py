"""`vlm4vla export`: never writes over what is at OUTPUT unless told to, and then only a bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlm4vla.backbones import get_backbone
from vlm4vla.cli.main import main
from vlm4vla.policy import VLAPolicy
from vlm4vla.policy.bundle import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``.ckpt`` of a tiny `VLAModule`, as Lightning saves it (hyper_parameters + state_dict)."""
    from vlm4vla.training.module import VLAModule

    module = VLAModule("tiny:qwen2.5-vl", chunk_size=4)
    policy = module.build_policy()
    with torch.no_grad():
        policy.head.trunk[0].bias.add_(0.5)  # weights that differ from a fresh init
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    state = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": state}, path)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_refuses_existing_output_without_overwrite(
    tmp_path: Path, lightning_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another step's bundle at OUTPUT: kept byte-for-byte.
    other = tmp_path / "step=000100"
    VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=4).save_pretrained(other)
    before = _tree(other)
    assert main(["export", str(lightning_ckpt), str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vlm4vla export: error: {other}: already exists; pass --overwrite to replace the bundle there"]
    assert _tree(other) == before

    # A plain file at OUTPUT: kept, with or without --overwrite (that flag replaces bundles only).
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert main(["export", str(lightning_ckpt), str(notes)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vlm4vla export: error: {notes}: already exists; pass --overwrite to replace the bundle there"
    ]
    assert main(["export", str(lightning_ckpt), str(notes), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vlm4vla export: error: {notes}: exists and is not a policy bundle (no {CONFIG_NAME}); refusing to replace it"
    ]
    assert notes.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "step=000100"]  # no temp leftovers

    # --overwrite replaces an existing bundle with the checkpoint's weights; a new OUTPUT needs no flag.
    assert main(["export", str(lightning_ckpt), str(other), "--overwrite"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote policy bundle {other}"
    assert (other / WEIGHTS_NAME).read_bytes() != before[WEIGHTS_NAME]
    assert main(["export", str(lightning_ckpt), str(tmp_path / "fresh")]) == 0
    fresh, replaced = VLAPolicy.from_pretrained(tmp_path / "fresh"), VLAPolicy.from_pretrained(other)
    a, b = fresh.state_dict(), replaced.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    expected = torch.load(lightning_ckpt, weights_only=True)["state_dict"]["policy.head.trunk.0.bias"]
    assert torch.equal(fresh.head.trunk[0].bias, expected)

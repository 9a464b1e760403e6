"""The README's "Add a new VLM" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from vlm4vla.backbones import BACKBONES, get_backbone
from vlm4vla.policy import VLAPolicy

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_source() -> str:
    text = README.read_text()
    match = re.search(r"<!-- add-backbone-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its add-backbone example block"
    return match.group(1)


def test_readme_backbone_example_trains_and_predicts(monkeypatch):
    monkeypatch.setattr(BACKBONES, "_items", dict(BACKBONES._items))  # keep the registry clean
    namespace: dict = {}
    exec(compile(_example_source(), str(README), "exec"), namespace)
    cls = get_backbone("llava-1.5")
    assert cls is namespace["LlavaBackbone"]

    backbone = cls.tiny()
    policy = VLAPolicy(backbone, chunk_size=4)
    images = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    inputs = backbone.prepare_inputs(images, ["pick up the cube", "open the top drawer of the cabinet"])
    out = policy({"inputs": inputs, "actions": torch.zeros(2, 4, 7), "action_mask": torch.ones(2, 4, dtype=bool)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert policy.action_query.embedding.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.vision_encoder.parameters())
    assert len(backbone.decoder_layers) == 2 and len(backbone.vision_blocks) == 2

    # Padded batch == single samples.
    policy.eval()
    with torch.no_grad():
        batched = policy.predict(inputs)[0]
        single = policy.predict(backbone.prepare_inputs(images[1:], ["open the top drawer of the cabinet"]))[0]
    torch.testing.assert_close(batched[1], single[0], atol=1e-4, rtol=1e-4)
    assert policy.predict_chunk(images[:1], ["pick up the cube"]).shape == (1, 4, 7)

"""Policy bundles round-trip: same outputs, no pickle, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.backbones.conftest import TINY_VARIANTS, variant_id
from vlm4vla.backbones import get_backbone
from vlm4vla.policy import LoraSettings, VLAPolicy
from vlm4vla.policy.bundle import CONFIG_NAME, PROCESSOR_DIR, WEIGHTS_NAME, BundleError

IMAGES = np.random.default_rng(0).integers(0, 256, (2, 80, 80, 3), dtype=np.uint8)
TEXTS = ["pick up the cube", "open the drawer and put the bowl inside"]


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_bundle_round_trip_gives_identical_chunks(tmp_path, variant):
    name, overrides = variant
    policy = VLAPolicy(get_backbone(name).tiny(prompt_scheme=None, **overrides), chunk_size=3)
    with torch.no_grad():
        policy.head.trunk[0].bias.add_(0.1)  # weights that differ from a fresh init
        policy.action_query.embedding.add_(1.0)
    policy.save_pretrained(tmp_path / "bundle")
    loaded = VLAPolicy.from_pretrained(tmp_path / "bundle")
    assert not loaded.training
    torch.testing.assert_close(loaded.predict_chunk(IMAGES, TEXTS), policy.predict_chunk(IMAGES, TEXTS))
    policy.eval()
    with torch.no_grad():
        inputs = policy.backbone.prepare_inputs(IMAGES, TEXTS)
        torch.testing.assert_close(loaded.predict(inputs)[0], policy.predict(inputs)[0])
    assert json.loads((tmp_path / "bundle" / CONFIG_NAME).read_text())["chunk_size"] == 3


def test_bundle_keeps_prompt_scheme_and_lora(tmp_path):
    policy = VLAPolicy(get_backbone("qwen3-vl").tiny(prompt_scheme="short"), chunk_size=2)
    policy.apply_lora(LoraSettings(rank=2, alpha=4))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_()
    policy.save_pretrained(tmp_path / "b")
    loaded = VLAPolicy.from_pretrained(tmp_path / "b")
    assert loaded.backbone.prompt_scheme == "short" and loaded.lora_settings == policy.lora_settings
    torch.testing.assert_close(loaded.predict_chunk(IMAGES, TEXTS), policy.predict_chunk(IMAGES, TEXTS))


def test_resaving_replaces_atomically_with_the_new_weights(tmp_path):
    """A re-save over an existing bundle leaves exactly the second policy on disk, read back
    with ``safetensors`` itself (not through the bundle loader)."""
    first = VLAPolicy(get_backbone("kosmos-2").tiny(seed=0), chunk_size=2)
    second = VLAPolicy(get_backbone("kosmos-2").tiny(seed=1), chunk_size=3)
    with torch.no_grad():
        second.action_query.embedding.add_(1.0)
    first.save_pretrained(tmp_path / "b")
    first_on_disk = load_file(tmp_path / "b" / WEIGHTS_NAME)
    second.save_pretrained(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]

    on_disk = load_file(tmp_path / "b" / WEIGHTS_NAME)
    expected = second.state_dict()
    assert set(on_disk) <= set(expected)
    for name in set(expected) - set(on_disk):  # only tied aliases may be stored once
        tensor = expected[name]
        assert any(
            other.data_ptr() == tensor.data_ptr() and other.shape == tensor.shape
            for key, other in expected.items()
            if key in on_disk
        ), f"{name} is missing from the re-saved weights and is not tied to a stored tensor"
    stale = [name for name, tensor in on_disk.items() if not torch.equal(tensor, expected[name])]
    assert not stale, f"re-saved bundle still holds other weights for {stale[:5]}"
    # … and every tensor in which the two policies differ differs from the first bundle's file.
    old = first.state_dict()
    differing = {name for name in on_disk if not torch.equal(old[name], expected[name])}
    head_weights = {name for name in on_disk if name.startswith("head.") and name.endswith(".weight")}
    assert {"action_query.embedding", *head_weights} <= differing
    changed = {name for name in on_disk if not torch.equal(on_disk[name], first_on_disk.get(name, torch.empty(0)))}
    assert changed == differing, f"still the first bundle's weights: {sorted(differing - changed)[:5]}"
    assert json.loads((tmp_path / "b" / CONFIG_NAME).read_text())["chunk_size"] == 3
    assert VLAPolicy.from_pretrained(tmp_path / "b").chunk_size == 3


def test_bad_bundles_are_clear_errors(tmp_path):
    with pytest.raises(BundleError, match="no such policy bundle"):
        VLAPolicy.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=CONFIG_NAME):
        VLAPolicy.from_pretrained(tmp_path / "empty")

    policy = VLAPolicy(get_backbone("kosmos-2").tiny(), chunk_size=2)
    policy.save_pretrained(tmp_path / "b")
    (tmp_path / "b" / WEIGHTS_NAME).unlink()
    with pytest.raises(BundleError, match="no weights"):
        VLAPolicy.from_pretrained(tmp_path / "b")

    policy.save_pretrained(tmp_path / "c")
    config = json.loads((tmp_path / "c" / CONFIG_NAME).read_text())
    config["backbone_config"]["text_config"]["embed_dim"] = 32
    config["backbone_config"]["text_config"]["ffn_dim"] = 64
    (tmp_path / "c" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(BundleError, match="do not match the kosmos-2 architecture"):
        VLAPolicy.from_pretrained(tmp_path / "c")

    (tmp_path / "c" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        VLAPolicy.from_pretrained(tmp_path / "c")


def test_truncated_or_corrupt_safetensors_is_one_line_naming_the_file(tmp_path):
    policy = VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=2)
    policy.save_pretrained(tmp_path / "b")
    weights = tmp_path / "b" / WEIGHTS_NAME
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # an interrupted copy
        f.truncate(size // 2)
    with pytest.raises(BundleError) as info:
        VLAPolicy.from_pretrained(tmp_path / "b")
    assert str(info.value) == (
        f"{weights}: truncated or corrupt safetensors file "
        "(Error while deserializing header: incomplete metadata, file not fully covered)"
    )
    weights.write_bytes(b"\xff" * 64)  # not a safetensors file at all
    with pytest.raises(BundleError) as info:
        VLAPolicy.from_pretrained(tmp_path / "b")
    message = str(info.value)
    assert message.startswith(f"{weights}: truncated or corrupt safetensors file (") and "\n" not in message


def test_bundle_without_processor_never_reaches_the_hub(tmp_path, monkeypatch):
    import huggingface_hub
    import transformers.utils.hub

    def no_hub(*args, **kwargs):
        raise AssertionError(f"a bundle load asked the hub for {args} {kwargs}")

    # Every transformers file lookup that is not a local directory goes through these.
    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    policy = VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=2)
    policy.save_pretrained(tmp_path / "b_noproc")
    shutil.rmtree(tmp_path / "b_noproc" / PROCESSOR_DIR)
    monkeypatch.chdir(tmp_path)  # a relative path, which transformers would take for a repo id
    with pytest.raises(BundleError) as info:
        VLAPolicy.from_pretrained("b_noproc")
    assert str(info.value) == (
        "b_noproc/processor: missing; the bundle has no processor (tokenizer and image processor) files"
    )
    (tmp_path / "b_noproc" / PROCESSOR_DIR).mkdir()  # present but empty: still local, still one line
    with pytest.raises(BundleError) as info:
        VLAPolicy.from_pretrained("b_noproc")
    assert str(info.value).startswith("b_noproc/processor: unreadable processor files (")
    assert "\n" not in str(info.value)

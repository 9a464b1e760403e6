"""FSDP2 start-up without a full model copy per rank (issue 18), on 2 gloo ranks on the CPU.

The model is ``tiny:qwen2.5-vl/sharding`` (~370 MB in fp32, untied LM head). Each rank runs in
its own spawned process and reports its figures through a JSON file. The oracle is the path
every rank took before: build the whole policy, then ``fully_shard``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
BACKBONE = "tiny:qwen2.5-vl/sharding"


def _status_kb(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _batch(policy: Any, rank: int, step: int) -> dict[str, Any]:
    rng = np.random.default_rng(1000 * rank + step + 1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    inputs = policy.backbone.prepare_inputs(images, ["pick up the cup", "open the drawer"])
    actions = torch.from_numpy(rng.uniform(-1, 1, (2, policy.chunk_size, 7)).astype(np.float32))
    actions[..., -1] = (actions[..., -1] > 0).float()
    return {
        "inputs": dict(inputs),
        "actions": actions,
        "action_mask": torch.ones(2, policy.chunk_size, dtype=torch.bool),
    }


def _worker(rank: int, world: int, port: int, out: str, path: str, backbone: str, backbone_path: str | None) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    from vlm4vla.training.export import full_policy_state_dict
    from vlm4vla.training.module import VLAModule
    from vlm4vla.training.strategies import shard_policy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    module = VLAModule(
        backbone, weights="random" if backbone_path is None else "pretrained", backbone_path=backbone_path,
        chunk_size=4, fsdp_param_dtype="float32",
    )  # fmt: skip
    module._device_mesh = mesh
    torch.manual_seed(0)  # the random init (and the head's) every rank of the old path draws
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    build_mb = None
    if path == "meta":
        module.configure_model()
    else:  # the old path: the whole policy (LM head included) on every rank, then sharded
        from vlm4vla.policy import VLAPolicy

        module.policy = VLAPolicy.from_config(module.vla_config)
        build_mb = (_status_kb("VmHWM") - before) / 1024  # what building one policy takes
        shard_policy(module.policy, mesh, param_dtype="float32")
    seconds = time.perf_counter() - start
    peak_mb = (_status_kb("VmHWM") - before) / 1024
    policy = module.policy
    names = [n for n, _ in policy.named_parameters()]
    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(full, Path(out) / f"{path}-weights.pt")
    del full

    policy.train()
    captured: list[Any] = []  # the head's (arm, gripper logits), through the root FSDP unit's forward
    hook = policy.head.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        policy(_batch(policy, rank, -1))
    hook.remove()
    outputs = captured[0]
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(3):
        loss = policy(_batch(policy, rank, step))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    optimizer_params = sum(len(group["params"]) for group in optimizer.param_groups)
    optimizer_state_names = [n for n, p in policy.named_parameters() if p in optimizer.state]
    state = full_policy_state_dict(policy)
    if rank == 0 and path == "meta":
        policy.save_pretrained(Path(out) / "bundle", state_dict=state)
    dist.barrier()
    result = {
        "seconds": seconds, "peak_mb": peak_mb, "build_mb": build_mb, "names": names, "losses": losses,
        "arm": outputs[0].detach().double().sum().item(), "gripper": outputs[1].detach().double().sum().item(),
        "optimizer_params": optimizer_params, "optimizer_state_names": optimizer_state_names,
        "fsdp_units": sum(type(m).__name__.startswith("FSDP") for m in policy.modules()),
    }  # fmt: skip
    Path(out, f"{path}-rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp: Path, path: str, backbone: str = BACKBONE, backbone_path: str | None = None) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp), path, backbone, backbone_path), nprocs=2, start_method="spawn"
    )
    return [json.loads((tmp / f"{path}-rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("sharded")
    from vlm4vla.backbones.factory import create_backbone

    torch.manual_seed(0)
    from vlm4vla.policy import VLAConfig, VLAPolicy

    full_bytes = 4 * sum(
        p.numel() for p in VLAPolicy.from_config(VLAConfig(backbone=BACKBONE, chunk_size=4)).parameters()
    )
    layer_bytes = 4 * max(
        sum(p.numel() for p in layer.parameters()) for layer in create_backbone(BACKBONE).decoder_layers
    )
    return {"tmp": tmp, "old": _launch(tmp, "old"), "meta": _launch(tmp, "meta"), "full_mb": full_bytes / 2**20,
            "layer_mb": layer_bytes / 2**20}  # fmt: skip


def test_start_up_memory_per_rank(runs: dict[str, Any]) -> None:
    full, layer = runs["full_mb"], runs["layer_mb"]
    old, meta = runs["old"], runs["meta"]
    copy = old[1]["build_mb"]  # one full copy as a process really holds it (weights + build overhead)
    print(
        f"\nfull fp32 weights {full:.0f} MB (built: {copy:.0f} MB), largest layer {layer:.0f} MB; "
        "peak RSS growth during configure_model "
        f"(rank 0 / rank 1): old {old[0]['peak_mb']:.0f} / {old[1]['peak_mb']:.0f} MB in "
        f"{old[0]['seconds']:.1f} / {old[1]['seconds']:.1f} s, meta {meta[0]['peak_mb']:.0f} / "
        f"{meta[1]['peak_mb']:.0f} MB in {meta[0]['seconds']:.1f} / {meta[1]['seconds']:.1f} s"
    )
    assert full > 300 and copy >= full
    assert min(old[0]["peak_mb"], old[1]["peak_mb"]) >= full  # every rank built the whole policy
    assert meta[1]["peak_mb"] < 0.75 * full
    assert meta[0]["peak_mb"] <= copy + layer


def test_the_meta_path_gives_the_old_paths_weights_outputs_and_losses(runs: dict[str, Any]) -> None:
    old, meta = runs["old"], runs["meta"]
    tmp = runs["tmp"]
    old_weights = torch.load(tmp / "old-weights.pt", weights_only=True)
    meta_weights = torch.load(tmp / "meta-weights.pt", weights_only=True)
    lm_head = {k for k in old_weights if ".lm_head." in k}
    assert lm_head and set(meta_weights) == set(old_weights) - lm_head
    for name, value in meta_weights.items():
        assert torch.equal(value, old_weights[name]), name
    for rank in (0, 1):
        assert meta[rank]["losses"] == old[rank]["losses"]  # atol = 0, fp32
        assert (meta[rank]["arm"], meta[rank]["gripper"]) == (old[rank]["arm"], old[rank]["gripper"])
    assert old[0]["losses"] != old[1]["losses"]  # each rank trained on its own batches


def test_the_lm_head_is_not_sharded_optimised_or_kept(runs: dict[str, Any]) -> None:
    old, meta = runs["old"], runs["meta"]
    assert any(".lm_head." in n for n in old[0]["names"])
    for rank in (0, 1):
        assert not any("lm_head" in n for n in meta[rank]["names"])
        assert not any("lm_head" in n for n in meta[rank]["optimizer_state_names"])
        assert meta[rank]["optimizer_state_names"] and meta[rank]["fsdp_units"] == old[rank]["fsdp_units"]


def test_a_bundle_written_under_fsdp2_loads(runs: dict[str, Any]) -> None:
    from vlm4vla.policy import VLAPolicy

    policy = VLAPolicy.from_pretrained(runs["tmp"] / "bundle")
    final = {n: float(p.double().sum()) for n, p in policy.state_dict().items()}
    assert not any("lm_head" in n for n in final) and len(final) > 100
    images = [np.zeros((64, 64, 3), dtype=np.uint8)]
    assert policy.predict_chunk(images, ["pick up the cup"]).shape == (1, 4, 7)


def test_a_local_pretrained_directory_loads_identically(tmp_path: Path) -> None:
    """``backbone_path`` = a ``save_pretrained`` directory: rank 0 reads it once and the gathered
    weights equal a single process's ``from_pretrained``."""
    from vlm4vla.backbones import get_backbone
    from vlm4vla.policy import VLAConfig, VLAPolicy

    source = get_backbone("qwen2.5-vl").tiny(tie_word_embeddings=False)
    vlm = tmp_path / "vlm"
    source.model.save_pretrained(vlm)
    source.processor.save_pretrained(vlm)
    results = _launch(tmp_path, "meta", backbone="qwen2.5-vl-3b", backbone_path=str(vlm))
    torch.manual_seed(0)
    single = VLAPolicy.from_config(VLAConfig(backbone="qwen2.5-vl-3b", backbone_path=str(vlm), chunk_size=4))
    gathered = torch.load(tmp_path / "meta-weights.pt", weights_only=True)
    expected = single.state_dict()
    assert set(gathered) == set(expected) - {k for k in expected if ".lm_head." in k}
    for name, value in gathered.items():
        assert torch.equal(value, expected[name]), name
    assert results[0]["losses"] != results[1]["losses"]  # both ranks trained (on their own batches)

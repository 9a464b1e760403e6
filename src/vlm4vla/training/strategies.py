"""FSDP2 sharding of a `VLAPolicy` (used from `VLAModule.configure_model`).

Every decoder layer and every vision block becomes its own FSDP2 unit (``fully_shard``), so
only one layer's full parameters are materialised at a time; the root call shards what is
left (embeddings, projector, ActionQuery, head). MoE expert weights live inside the decoder
layers and are sharded with them (along the expert dimension).

`build_sharded_policy` builds a sharded policy without a full copy per rank: rank 0 alone
builds the policy as a single process would (pretrained weights read once, or the seeded random
init), every rank builds the same architecture on the meta device, shards it and materialises
only its shards, and rank 0 streams each tensor to the others, freeing its copy as it goes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from vlm4vla.errors import ConfigError
from vlm4vla.policy import VLAPolicy

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, None: None}


def shard_policy(policy: VLAPolicy, device_mesh, *, param_dtype: str | None = "bfloat16") -> VLAPolicy:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = _data_parallel(device_mesh)
    if param_dtype not in _DTYPES:
        raise ConfigError(f"fsdp_param_dtype: expected 'bfloat16', 'float32' or None, got {param_dtype!r}")
    mp_policy = MixedPrecisionPolicy(param_dtype=_DTYPES[param_dtype], reduce_dtype=torch.float32)
    units = [*policy.backbone.vision_blocks, *policy.backbone.decoder_layers]
    if not units:
        raise ValueError(f"{policy.backbone.name}: no decoder layers or vision blocks found to shard")
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp_policy)
    fully_shard(policy, mesh=mesh, mp_policy=mp_policy)
    return policy


def build_sharded_policy(
    build_source: Callable[[], VLAPolicy],
    device_mesh,
    *,
    device: torch.device | str,
    param_dtype: str | None = "bfloat16",
    activation_checkpointing: bool = False,
) -> VLAPolicy:
    """A FSDP2-sharded policy on ``device`` with rank 0's weights, built without a full copy on
    any other rank.

    * rank 0 calls ``build_source()`` (on the CPU) and sends the others the result's
      `VLAConfig` (with the backbone's architecture) and processor;
    * every rank builds that architecture on the meta device, drops the unused LM head
      (`VLAPolicy.drop_unused_lm_head`), enables activation checkpointing, shards it
      (`shard_policy`);
    * every parameter and buffer (non-persistent ones too: rotary tables) is then sent from rank 0
      one tensor at a time, each rank creating its shard on ``device``, and rank 0 freeing each
      full tensor once sent; the shards are assigned to the meta parameters at the end.

    Peak host memory: one full copy plus one tensor on rank 0, one tensor on the others (plus
    their shards when ``device`` is the CPU).
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, distribute_tensor

    from vlm4vla.policy.config import VLAConfig

    mesh = _data_parallel(device_mesh)
    group = mesh.get_group()
    rank = dist.get_rank(group)
    src = dist.get_global_rank(group, 0)
    source: VLAPolicy | None = None
    payload: list = [None, None]
    if rank == 0:
        with torch.device("cpu"):
            source = build_source()
        source.drop_unused_lm_head()  # freed before the copy is streamed
        payload = [source.config.to_dict(), source.backbone.processor]
    dist.broadcast_object_list(payload, src=src, group=group)
    config = VLAConfig.from_dict(payload[0])
    with torch.device("meta"):
        policy = VLAPolicy.from_config(config.replace(weights="meta"))
    policy.spec = config
    policy.backbone.processor = payload[1]
    policy.drop_unused_lm_head()
    if activation_checkpointing:
        policy.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    shard_policy(policy, device_mesh, param_dtype=param_dtype)

    tensors: dict[str, torch.Tensor] = {}
    if source is not None:
        tensors = {**dict(source.named_buffers()), **source.state_dict()}
        # The dict must hold the only references, so that popping a tensor frees it: the module
        # sits in reference cycles (its hooks), so it is collected now rather than at some point.
        source = None
        gc.collect()

    def receive(name: str, like: torch.Tensor) -> torch.Tensor:
        """The full tensor ``name`` on every rank (rank 0's, freed from its dict)."""
        if rank == 0:
            return tensors.pop(name).detach().to(device=device, dtype=like.dtype)
        return torch.empty(like.shape, dtype=like.dtype, device=device)

    # Shards are created one tensor at a time, so that rank 0 holds at most its remaining full
    # tensors plus the shards made so far (never more than one full copy), then assigned.
    sharded: dict[str, torch.Tensor] = {}
    sharded_names = [name for name, _ in policy.named_parameters()]
    with torch.no_grad():
        for name, target in policy.named_parameters():
            full = receive(name, target)
            if isinstance(target, DTensor):
                local = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=0).to_local()
                if local.untyped_storage().data_ptr() == full.untyped_storage().data_ptr():
                    local = local.clone()  # a view of rank 0's full tensor would keep it alive
                sharded[name] = DTensor.from_local(
                    local, target.device_mesh, target.placements,
                    run_check=False, shape=target.shape, stride=target.stride(),
                )  # fmt: skip
                del local
            else:
                dist.broadcast(full, src=src, group=group)
                sharded[name] = full
            del full
        tied: dict[int, list[str]] = {}
        for name, param in policy.named_parameters(remove_duplicate=False):
            tied.setdefault(id(param), []).append(name)
        missing, unexpected = policy.load_state_dict(sharded, strict=False, assign=True)
        sharded.clear()
        for primary, *others in (names for names in tied.values() if len(names) > 1):
            # ``assign`` replaced the primary's Parameter only: point its aliases at it again
            for name in others:
                owner, _, leaf = name.rpartition(".")
                policy.get_submodule(owner)._parameters[leaf] = policy.get_parameter(primary)
        for name, target in list(policy.named_buffers()):  # non-persistent ones too (rotary tables)
            full = receive(name, target)
            dist.broadcast(full, src=src, group=group)
            owner, _, leaf = name.rpartition(".")
            policy.get_submodule(owner)._buffers[leaf] = full
    # Tied weights (an LM head sharing the embedding table) appear once in named_parameters.
    aliases = {name for name, _ in policy.named_parameters(remove_duplicate=False)} - set(sharded_names)
    buffers = {name for name, _ in policy.named_buffers()}
    if unexpected or set(missing) - buffers - aliases:
        raise RuntimeError(
            f"sharded build: state mismatch (missing {sorted(set(missing) - buffers)[:3]}, unexpected {unexpected[:3]})"
        )
    tensors.clear()
    return policy


def _data_parallel(device_mesh):
    return device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh

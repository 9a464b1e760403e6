"""FSDP2 sharding of a `VLAPolicy` (used from `VLAModule.configure_model`).

Every decoder layer and every vision block becomes its own FSDP2 unit (``fully_shard``), so
only one layer's full parameters are materialised at a time; the root call shards what is
left (embeddings, projector, ActionQuery, head). MoE expert weights live inside the decoder
layers and are sharded with them (along the expert dimension).
"""

from __future__ import annotations

import torch

from vlm4vla.errors import ConfigError
from vlm4vla.policy import VLAPolicy

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, None: None}


def shard_policy(policy: VLAPolicy, device_mesh, *, param_dtype: str | None = "bfloat16") -> VLAPolicy:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
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

"""Policy bundles from training: on every checkpoint save, and from an existing checkpoint.

`VLACheckpoint` is a `ModelCheckpoint` that, whenever it saves, also writes
``<dirpath>/step=NNNNNN/`` — a policy bundle `vlm4vla-eval` and `VLAPolicy.from_pretrained`
read directly. Under FSDP2 the full weights are gathered from the shards (a collective every
rank joins) and rank 0 writes them.

`export_checkpoint` does the same for a Lightning checkpoint already on disk (a ``.ckpt`` file
or a distributed-checkpoint directory).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from vlm4vla.policy import VLAPolicy
from vlm4vla.policy.bundle import save_bundle


def bundle_name(step: int) -> str:
    return f"step={step:06d}"


def full_policy_state_dict(policy: VLAPolicy) -> dict[str, torch.Tensor] | None:
    """All weights of ``policy`` on CPU; gathered from FSDP2 shards when sharded.

    Every rank must call it; only rank 0 gets the dict (others ``None``).
    """
    import torch.distributed as dist

    sharded = any(type(p).__name__ == "DTensor" for p in policy.parameters())
    if not sharded:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return None
        return {k: v.detach().cpu() for k, v in policy.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else None


class VLACheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also writes a policy bundle ``step=NNNNNN/`` beside each checkpoint."""

    def __init__(self, *args: Any, write_bundles: bool = True, **kwargs: Any) -> None:
        if kwargs.get("filename") is None:
            kwargs["filename"] = "{step:06d}"
        super().__init__(*args, **kwargs)
        self.write_bundles = write_bundles

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self.write_bundles:
            self.write_bundle(trainer)

    def write_bundle(self, trainer: pl.Trainer) -> Path | None:
        # A step saved twice (periodic + last) gets one bundle.
        if getattr(self, "_last_bundle_step", None) == trainer.global_step:
            return None
        self._last_bundle_step = trainer.global_step
        module = trainer.lightning_module
        policy: VLAPolicy = module.policy
        directory = Path(self.dirpath) / bundle_name(trainer.global_step)
        state = full_policy_state_dict(policy)
        written = None
        if trainer.is_global_zero and state is not None:
            written = save_bundle(policy, directory, state_dict=state)
        trainer.strategy.barrier("vlm4vla-bundle")
        return written


def _load_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, without unpickling arbitrary objects.

    ``path`` is a ``.ckpt`` file or a distributed-checkpoint directory (FSDP2 shards + ``meta.pt``),
    which is consolidated in memory.
    """
    from lightning.fabric.utilities.data import AttributeDict

    with torch.serialization.safe_globals([AttributeDict]):
        if not path.is_dir():
            return torch.load(path, map_location="cpu", weights_only=True)
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        meta = path / "meta.pt"
        if not meta.is_file():
            raise ValueError(f"{meta}: missing; {path} is not a Lightning distributed checkpoint")
        checkpoint = torch.load(meta, map_location="cpu", weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "consolidated.pt"
            dcp_to_torch_save(path, target)
            checkpoint.update(torch.load(target, map_location="cpu", weights_only=True))
        return checkpoint


def checkpoint_hyperparameters(path: Path) -> dict[str, Any]:
    """The saved ``hyper_parameters`` of a checkpoint file or distributed-checkpoint directory."""
    from lightning.fabric.utilities.data import AttributeDict

    source = path / "meta.pt" if path.is_dir() else path
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint")
    with torch.serialization.safe_globals([AttributeDict]):
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=not path.is_dir())
        except Exception as err:  # torch raises many types for a corrupt file
            raise ValueError(f"{source}: not a readable Lightning checkpoint ({type(err).__name__})") from None
    return dict(checkpoint.get("hyper_parameters") or {})


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write the policy bundle of a Lightning checkpoint of a `VLAModule`."""
    from vlm4vla.training.module import VLAModule

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = _load_lightning_checkpoint(path)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ValueError(f"{path}: not a readable Lightning checkpoint ({type(err).__name__}: {err})") from None
    hparams = ckpt.get("hyper_parameters")
    state = ckpt.get("state_dict")
    if not isinstance(hparams, dict) or state is None:
        raise ValueError(f"{path}: missing 'hyper_parameters' or 'state_dict'; not a VLAModule checkpoint")
    accepted = inspect.signature(VLAModule.__init__).parameters
    # LightningCLI adds bookkeeping keys (``_instantiator``, ``_class_path``) to the hparams.
    module = VLAModule(**{k: v for k, v in hparams.items() if k in accepted})
    policy = module.build_policy()
    prefix = "policy."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if unexpected or any(not _tied_elsewhere(policy, name) for name in missing):
        raise ValueError(
            f"{path}: weights do not match backbone {hparams.get('backbone')!r} "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    for value in ckpt.values():
        if isinstance(value, dict) and "normalizer" in value:
            from vlm4vla.data.normalization import normalizer_from_dict

            policy.normalizer = normalizer_from_dict(value["normalizer"])
    return save_bundle(policy, output)


def _tied_elsewhere(policy: VLAPolicy, name: str) -> bool:
    params = dict(policy.named_parameters(remove_duplicate=False))
    return name in params and any(p is params[name] and n != name for n, p in params.items())

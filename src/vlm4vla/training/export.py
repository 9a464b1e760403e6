"""Policy bundles from training: on every checkpoint save, and from an existing checkpoint.

`VLACheckpoint` is a `ModelCheckpoint` that, whenever it saves, also writes
``<dirpath>/step=NNNNNN/`` — a policy bundle `vlm4vla-eval` and `VLAPolicy.from_pretrained`
read directly. Under FSDP2 the full weights are gathered from the shards (a collective every
rank joins) and rank 0 writes them.

`export_checkpoint` does the same for a Lightning checkpoint already on disk (a ``.ckpt`` file
or a distributed-checkpoint directory).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from vlm4vla.errors import ConfigError, MissingFileError, VLM4VLAError
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


class CheckpointWriteError(VLM4VLAError, OSError):
    """A checkpoint or bundle could not be written; the message names the file."""


class VLACheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also writes a policy bundle ``step=NNNNNN/`` beside each checkpoint.

    Differences from the stock callback, each so a run never loses or overwrites work:

    * a relative (or absent) ``dirpath`` lives under the Trainer's ``default_root_dir``
      (``checkpoints/`` by default), never under the working directory or a logger's
      ``version_N`` folder, so ``--ckpt_path last`` finds the same run's checkpoints;
    * the final step is always checkpointed (with its bundle), also when ``max_steps`` is not
      a multiple of ``every_n_train_steps``;
    * checkpoints are written under a temporary name and renamed, so a full disk or a crash
      never leaves a partial file under a final name.
    """

    def __init__(self, *args: Any, write_bundles: bool = True, **kwargs: Any) -> None:
        if kwargs.get("filename") is None:
            kwargs["filename"] = "{step:06d}"
        # As given: the parent makes a relative path absolute against the working directory.
        self._configured_dirpath = kwargs.get("dirpath", args[0] if args else None)
        super().__init__(*args, **kwargs)
        self.write_bundles = write_bundles

    # ModelCheckpoint resolves its folder with this (name-mangled) method, also when
    # ``--ckpt_path last`` looks for ``last.ckpt`` before ``setup``.
    def _ModelCheckpoint__resolve_ckpt_dir(self, trainer: pl.Trainer) -> str:  # noqa: N802
        configured = self._configured_dirpath
        if configured is not None and os.path.isabs(configured):
            return str(configured)
        return os.path.join(os.path.abspath(trainer.default_root_dir), str(configured or "checkpoints"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # The final step is saved here, not in ``on_train_end``: by then Lightning has marked
        # the epoch finished, and a run resumed from that state would skip the rest of it.
        if 0 < trainer.max_steps <= trainer.global_step:
            self._save_final(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_final(trainer)  # runs that end on max_epochs or max_time
        super().on_train_end(trainer, pl_module)

    def _save_final(self, trainer: pl.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer) and trainer.global_step > 0:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # Write under a temporary name, then rename: a partial file never carries a final name.
        # The name is the same on every rank (a distributed checkpoint is one folder of shards).
        partial = f"{filepath}.partial"
        try:
            _remove_path(partial, trainer)
            trainer.save_checkpoint(partial, self.save_weights_only)
            if trainer.is_global_zero:
                _replace_path(partial, filepath)
            trainer.strategy.barrier("vlm4vla-checkpoint-rename")
        except OSError as err:
            _remove_path(partial, trainer)
            raise _write_error(err, filepath) from None
        except RuntimeError as err:  # torch's zip writer reports a full disk as a RuntimeError
            _remove_path(partial, trainer)
            if "write" in str(err).lower():
                raise _write_error(err, filepath) from None
            raise
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
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
            try:
                written = save_bundle(policy, directory, state_dict=state)
            except OSError as err:
                raise _write_error(err, str(directory)) from None
        trainer.strategy.barrier("vlm4vla-bundle")
        return written


def _write_error(err: BaseException, target: str) -> CheckpointWriteError:
    if getattr(err, "errno", None) == errno.ENOSPC or "no space left" in str(err).lower():
        error = CheckpointWriteError(f"no space left on device while writing {target}")
        error.errno = errno.ENOSPC
        return error
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
    error = CheckpointWriteError(f"could not write {target}: {reason}")
    error.errno = getattr(err, "errno", None)
    return error


def _remove_path(path: str, trainer: pl.Trainer | None = None) -> None:
    if trainer is None or trainer.is_global_zero:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def _replace_path(source: str, target: str) -> None:
    """Atomically put ``source`` (a file or a distributed-checkpoint folder) at ``target``."""
    if os.path.isdir(source) and os.path.isdir(target):
        # A folder cannot replace a non-empty folder in one rename: move the old one aside first.
        previous = f"{target}.previous"
        _remove_path(previous)
        os.replace(target, previous)
        os.replace(source, target)
        _remove_path(previous)
    else:
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(source, target)


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
            raise ConfigError(f"{meta}: missing; {path} is not a Lightning distributed checkpoint")
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
        raise MissingFileError(f"{source}: no such checkpoint")
    with torch.serialization.safe_globals([AttributeDict]):
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=not path.is_dir())
        except Exception as err:  # torch raises many types for a corrupt file
            raise unreadable_checkpoint(source, err) from None
    return dict(checkpoint.get("hyper_parameters") or {})


def unreadable_checkpoint(path: Path, err: BaseException) -> ConfigError:
    """One line for a checkpoint torch cannot load with ``weights_only=True``.

    torch's own message advises retrying with ``weights_only=False``, which runs arbitrary
    code from the file: it is never quoted.
    """
    import pickle

    if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
        reason = "it holds Python objects a checkpoint does not need, which are not loaded (unsafe to unpickle)"
    elif isinstance(err, (RuntimeError, EOFError)) and ("zip" in str(err) or isinstance(err, EOFError)):
        reason = "truncated or corrupt file"
    else:
        reason = type(err).__name__
    return ConfigError(f"{path}: not a readable Lightning checkpoint ({reason})")


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the policy bundle of a Lightning checkpoint of a `VLAModule`.

    An existing ``output`` is refused; with ``overwrite`` an existing policy bundle is
    replaced (atomically, once the new one is complete), but never a file or another folder.
    """
    from vlm4vla.training.module import VLAModule

    path = Path(checkpoint)
    _check_export_target(Path(output), overwrite)
    if not path.exists():
        raise MissingFileError(f"{path}: no such checkpoint")
    try:
        ckpt = _load_lightning_checkpoint(path)
    except Exception as err:  # torch raises many types for a corrupt file
        raise unreadable_checkpoint(path, err) from None
    hparams = ckpt.get("hyper_parameters")
    state = ckpt.get("state_dict")
    if not isinstance(hparams, dict) or state is None:
        raise ConfigError(f"{path}: missing 'hyper_parameters' or 'state_dict'; not a VLAModule checkpoint")
    # LightningCLI adds bookkeeping keys (``_instantiator``, ``_class_path``) to the hparams.
    module = VLAModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    policy = module.build_policy()  # without the never-run LM head; older checkpoints' copy is skipped
    prefix = "policy."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if unexpected or any(not _tied_elsewhere(policy, name) for name in missing):
        raise ValueError(
            f"{path}: weights do not match backbone {hparams.get('backbone')!r} "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    for value in ckpt.values():
        if isinstance(value, dict) and "normalizer" in value:
            from vlm4vla.policy.action_space import normalizer_from_dict

            policy.normalizer = normalizer_from_dict(value["normalizer"])
            if value.get("image_pipeline") is not None:
                policy.image_pipeline = dict(value["image_pipeline"])
    return save_bundle(policy, output)


def _check_export_target(output: Path, overwrite: bool) -> None:
    """Refuse to write over anything at ``output`` (checked before the slow checkpoint load)."""
    from vlm4vla.policy.bundle import CONFIG_NAME, BundleError

    if not os.path.lexists(output):
        return
    if not overwrite:
        raise BundleError(f"{output}: already exists; pass --overwrite to replace the bundle there")
    # --overwrite is for re-exporting a bundle, not for deleting an unrelated file or folder.
    if output.is_symlink() or not (output / CONFIG_NAME).is_file():
        raise BundleError(f"{output}: exists and is not a policy bundle (no {CONFIG_NAME}); refusing to replace it")


def _tied_elsewhere(policy: VLAPolicy, name: str) -> bool:
    params = dict(policy.named_parameters(remove_duplicate=False))
    return name in params and any(p is params[name] and n != name for n, p in params.items())

"""Where and in what precision ``vlm4vla-eval`` runs the policy: ``--device`` and ``--dtype``.

Both change outcomes (CUDA kernels and bf16 round differently from CPU fp32), so the resolved
device *type* and the dtype are recorded in every cell's ``meta.json`` and a resume with others
is refused. torch is imported only when a device or dtype is resolved.
"""

from __future__ import annotations

from vlm4vla.evaluation.plugin import EvaluationError

DEVICES_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def resolve_device(text: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` / ``cuda:N`` checked against
    the visible GPUs. One line when the device cannot be used."""
    import torch

    text = (text or "auto").strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EvaluationError(
                f"--device {text}: no CUDA device is visible (torch {torch.__version__}); use --device cpu"
            )
        if text.startswith("cuda:"):
            index = text.partition(":")[2]
            if not index.isdigit() or int(index) >= count:
                raise EvaluationError(f"--device {text}: expected cuda:0 … cuda:{count - 1} ({count} visible)")
        return text
    raise EvaluationError(f"--device {text!r}: expected {DEVICES_HELP}")


def resolve_devices(text: str = "auto", *, local_rank: int | None = None) -> list[str]:
    """The devices of the policy replicas, one replica each.

    ``auto`` / ``cuda``: every visible GPU, or under torchrun / srun (``local_rank`` given) the
    local rank's GPU only (``cuda:0`` when the launcher shows each rank one GPU); ``auto``
    without a GPU: the CPU. A comma-separated list names the
    replicas' devices (a device may repeat: ``cpu,cpu`` runs two CPU replicas). One device type
    per run: it is what the results record.
    """
    import torch

    text = (text or "auto").strip().lower()
    if "," in text:
        devices = [resolve_device(part) for part in text.split(",") if part.strip()]
    elif text in ("auto", "cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return [resolve_device(text)]  # cpu for auto; the one-line refusal for cuda
        if local_rank is not None:
            if count == 1:  # the launcher gave each rank its own GPU (srun --gpus-per-task=1)
                return ["cuda:0"]
            if local_rank >= count:
                raise EvaluationError(
                    f"--device {text}: local rank {local_rank} has no GPU of its own ({count} visible); "
                    "start at most one rank per GPU"
                )
            return [f"cuda:{local_rank}"]
        devices = [f"cuda:{i}" for i in range(count)]
    else:
        devices = [resolve_device(text)]
    types = sorted({device_type(d) for d in devices})
    if len(types) > 1:
        raise EvaluationError(f"--device {text}: one device type per run, got {' and '.join(types)}")
    return devices


def device_type(device: str) -> str:
    """``cuda:3`` → ``cuda``: what is recorded (which GPU does not change a result)."""
    return device.partition(":")[0]


def check_dtype(text: str) -> str:
    if text not in DTYPES:
        raise EvaluationError(f"--dtype {text!r}: expected one of {', '.join(DTYPES)}")
    return text


__all__ = ["DTYPES", "check_dtype", "device_type", "resolve_device", "resolve_devices"]

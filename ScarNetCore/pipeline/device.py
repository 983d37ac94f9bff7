"""Where and in what precision the networks run: one vocabulary for inference, training and the run
record (auto, fp32, bf16, fp16)."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        found = available_devices()
        return torch.device("cuda" if "cuda" in found else "mps" if "mps" in found else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: choose auto, cpu, cuda or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda requested but PyTorch sees no CUDA GPU; use --device auto or cpu")
    if name == "mps" and "mps" not in available_devices():
        raise ValueError("device mps requested but Apple MPS is not available; use --device auto or cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Reduced precision where the hardware runs it natively (None: plain fp32).

    bf16 on CPUs with native bf16 (AVX512-BF16/AMX) and on CUDA GPUs that support it, else fp16 on
    CUDA. Documented tolerance: ≥ 99.9 % of all voxels equal to fp32. Measured with the bundled model
    on the two EMIDEC volumes: 99.95 % of all voxels, 97.8–97.9 % of the voxels either run labels as
    LV (the differences are boundary voxels); benchmarks/benchmark_inference.py re-measures it.
    Use precision="fp32" for bit-stable results across machines.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """An autocast dtype (None = fp32) as its precision word: the inverse of autocast_dtype."""
    return next(name for name, value in _DTYPES.items() if value == dtype)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for `dtype` on `device` (none for fp32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

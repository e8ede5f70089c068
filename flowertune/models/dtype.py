"""The dtype of a model's frozen base weights on a device: what ``model.dtype=auto`` means here.

Measured on the project's 2-core CPUs: with native bf16 matmul (AVX512-BF16 or AMX) bf16 beats fp32 by
~6x; without it (AVX2 only) bf16 is emulated (matmul ~1 GFLOP/s against fp32's ~91), so ``auto`` picks fp32
there. Both the model loader and the training preparation ask this module.
"""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 beats fp32 by ~6x."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def training_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The dtype for the frozen base weights: ``requested`` unless it is ``auto``.

    ``auto`` is bf16 on CUDA with bf16 support and on CPUs with native bf16 matmul, else fp32.
    """
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested != "auto":
        return names[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32

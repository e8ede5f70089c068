"""Prepare a (PEFT-wrapped) model for fast local training: weight dtypes, attention, threads.

Measured on the project's 2-core CPU (benchmarks/train_speed.py): a frozen base model held in bf16 with the
trainable LoRA parameters in fp32 is much faster than fp32 weights or fp32 weights under bf16 autocast, and
the fp32 adapter keeps AdamW updates and the wire format (fp32 arrays) exact.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from flowertune.models.dtype import training_dtype

log = logging.getLogger(__name__)


def training_attn_implementation(name: str | None) -> str | None:
    """The attention used for training: ``auto``/``segments`` give the segment attention, others as named."""
    if name in ("auto", "segments"):
        from flowertune.train.attention import register

        return register()
    return name


def prepare_for_training(model: Any, dtype: str = "auto", attn_implementation: str | None = "auto") -> Any:
    """Cast frozen weights to the training dtype and trainable ones to fp32; switch off the KV cache.

    Call it after wrapping the model with PEFT and before building the optimizer (the optimizer must see
    the fp32 trainable parameters). Quantized (bitsandbytes) models are left to PEFT's own preparation.
    Returns ``model`` (modified in place).
    """
    device = next(model.parameters()).device
    target = training_dtype(dtype, device)
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if not quantized:
        for p in model.parameters():
            want = torch.float32 if p.requires_grad else target
            if p.dtype != want and p.is_floating_point():
                p.data = p.data.to(want)
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False
    attn_implementation = training_attn_implementation(attn_implementation)
    if attn_implementation is not None and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attn_implementation)
    log.info("prepared for training: base %s, trainable fp32, attention %s", target, attn_implementation)
    return model

"""Padding-free attention for packed rows: plain causal SDPA on each example ("segment") of a row.

With ``sdpa`` and restarting ``position_ids``, transformers builds a block-diagonal ``[L, L]`` mask per row,
and the CPU attention kernels then compute every block, cross-example ones included, and cannot use their
causal fast path. Measured on the project's 2-core CPU (benchmarks/train_speed.py), that masked attention
was a third of a training step. This implementation cuts each row at its position restarts and runs
``scaled_dot_product_attention(is_causal=True)`` per segment, so the cost is Σ segment² instead of row²;
rows can therefore be as long as a whole batch, and packing leaves no padding at all.

It is registered with transformers' ``AttentionInterface`` as ``flowertune_segments``. transformers builds
no mask for implementations it does not know, so the model must only see batches where plain causal
attention per segment is right: packed rows (segments from ``position_ids``) or right-padded rows
(padding comes after the real tokens and is never attended to by them). :func:`segment_kwargs` checks this
and computes the segments once per forward pass; they reach every layer as the ``flowertune_segments``
keyword (transformers passes extra model keywords down to the attention function).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "flowertune_segments"
"""The ``attn_implementation`` name under which the segment attention is registered."""

_registered = False


def register() -> str:
    """Register the segment attention with transformers (idempotent); returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, segment_attention)
        _registered = True
    return NAME


def uses_segments(model: Any) -> bool:
    """True when ``model`` (plain or PEFT-wrapped) runs the segment attention."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_attn_implementation", None) == NAME


def segment_lengths(position_ids: torch.Tensor) -> list[list[int]]:
    """Per row, the lengths of the runs that start where ``position_ids`` is 0 (a row starts a run too)."""
    rows = []
    for row in position_ids.tolist():
        starts = [0] + [i for i in range(1, len(row)) if row[i] == 0]
        rows.append([b - a for a, b in zip(starts, starts[1:] + [len(row)])])
    return rows


def segment_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The extra model keywords for a batch run with the segment attention.

    Packed batches (``position_ids``) get their segments; padded batches must be right-padded (a left-padded
    row would let real tokens attend to padding, since no mask is applied) and need nothing extra.
    """
    if "position_ids" in batch:
        return {NAME: segment_lengths(batch["position_ids"])}
    mask = batch.get("attention_mask")
    # right padding: once a row's mask drops to 0 it never comes back to 1
    if mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError(f"{NAME} attention needs right-padded (or packed) batches; got left padding. "
                             "Use model.attn-implementation=sdpa for left-padded inputs.")
    return {}


def segment_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each segment. ``query`` is ``[B, H, L, D]``; returns ``[B, L, H, D]``."""
    if attention_mask is not None:
        raise ValueError(f"{NAME} attention got an explicit attention mask; it supports packed or "
                         "right-padded training batches only (use sdpa otherwise)")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # repeat KV heads once: measured faster than enable_gqa on the CPU kernels
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    segments = kwargs.get(NAME)
    length = query.shape[2]

    # CPU: the fp32 flash kernel is ~1.7x faster than the bf16 one on short segments (fwd + bwd, measured
    # on the project's AVX512-BF16 CPU), and the casts are cheap; other devices keep their dtype
    work = torch.float32 if query.device.type == "cpu" else query.dtype

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q.to(work), k.to(work), v.to(work), dropout_p=dropout, scale=scaling,
                                             is_causal=q.shape[2] > 1)
        return out.to(query.dtype)

    if segments is None:  # one segment per row (right-padded or unpacked rows): one batched call
        return attend(query, key, value).transpose(1, 2).contiguous(), None
    rows = []
    for b, lengths in enumerate(segments):
        if sum(lengths) != length:
            raise ValueError(f"segments of row {b} cover {sum(lengths)} tokens, the row has {length}")
        parts, at = [], 0
        for n in lengths:
            s = slice(at, at + n)
            parts.append(attend(query[b : b + 1, :, s], key[b : b + 1, :, s], value[b : b + 1, :, s]))
            at += n
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None

"""Padding-free attention for packed rows: plain causal SDPA on each example ("segment") of a row.

With ``sdpa`` and restarting ``position_ids``, transformers builds a block-diagonal ``[L, L]`` mask per row,
and the CPU attention kernels then compute every block, cross-example ones included, and cannot use their
causal fast path. Measured on the project's 2-core CPU (benchmarks/train_speed.py), that masked attention
was a third of a training step. This implementation cuts each row at its position restarts and runs
``scaled_dot_product_attention(is_causal=True)`` per segment, so the cost is Σ segment² instead of row²;
rows can therefore be as long as a whole batch, and packing leaves no padding at all. Segments of similar
length can be gathered into one block and attended in one batched call (:class:`SegmentPlan`). All
segments are gathered with one index per layer and scattered back with another: slicing each segment out
of the row and concatenating the results (autograd then zero-fills a full-row gradient per slice) cost
more than the attention itself with short examples (the medical flashcards, ~65 tokens); the gather made
such a step 12% shorter (2.74 s -> 2.40 s for 16 examples, 1,040 tokens). Any padding exists only inside attention; the linear layers, i.e. almost all of the FLOPs,
run on the packed row.

It is registered with transformers' ``AttentionInterface`` as ``flowertune_segments``. transformers builds
no mask for implementations it does not know, so the model must only see batches where plain causal
attention per segment is right: packed rows (segments from ``position_ids``) or right-padded rows
(padding comes after the real tokens and is never attended to by them). :func:`segment_kwargs` checks this
and computes the segment plan once per forward pass; it reaches every layer as the ``flowertune_segments``
keyword (transformers passes extra model keywords down to the attention function).
"""

from __future__ import annotations

from dataclasses import dataclass
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


SLACK = 1.0
"""A group of segments is padded to its longest one while its padded attention cost stays within this factor
of the segments' own (Σ length²). 1.0 groups equal lengths only: on the project's CPU, padding similar
lengths into fewer, larger calls (1.5) measured no faster on short examples and 6% slower at 4 × ≤256
(``benchmarks/train_speed.py``, lever "grouped"); on GPUs, where each call costs a kernel launch, a larger
value may pay."""


@dataclass(frozen=True)
class SegmentPlan:
    """Where each segment of a ``[B, L]`` batch goes in the padded ``[G, Lg]`` blocks attention runs on.

    Segments are sorted by length and grouped (:data:`SLACK`); one group is one batched causal SDPA call. ``groups`` holds, per group, the flat token index (into ``B * L``) of
    every block position (positions past a segment's end repeat its last token: causal attention never lets
    a real query see them, and their outputs are dropped) and the block shape; ``back`` maps every flat
    token to its row in the concatenated group outputs.
    """

    lengths: list[list[int]]
    groups: list[tuple[torch.Tensor, int, int]]
    back: torch.Tensor
    tokens: int


def group_segments(sizes: list[int], slack: float) -> list[list[int]]:
    """Indices of ``sizes`` grouped longest first; a group's count × longest² stays ≤ slack × its Σ size²."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * sizes[groups[-1][0]] ** 2 <= slack * (real + sizes[i] ** 2):
            groups[-1].append(i)
            real += sizes[i] ** 2
        else:
            groups.append([i])
            real = sizes[i] ** 2
    return groups


def segment_plan(lengths: list[list[int]], width: int, device: torch.device | str = "cpu",
                 slack: float | None = None) -> SegmentPlan:
    """The :class:`SegmentPlan` of rows of ``width`` tokens cut into ``lengths`` (``slack``: :data:`SLACK`)."""
    slack = SLACK if slack is None else slack
    segs = []  # (flat start, length)
    for b, row in enumerate(lengths):
        if sum(row) != width:
            raise ValueError(f"segments of row {b} cover {sum(row)} tokens, the row has {width}")
        at = b * width
        for n in row:
            segs.append((at, n))
            at += n
    back = [0] * (len(lengths) * width)
    groups, offset = [], 0
    for members in group_segments([n for _, n in segs], slack):
        block = segs[members[0]][1]
        index = []
        for k, m in enumerate(members):
            start, n = segs[m]
            index.extend(start + min(j, n - 1) for j in range(block))
            for j in range(n):
                back[start + j] = offset + k * block + j
        groups.append((torch.tensor(index, device=device), len(members), block))
        offset += len(members) * block
    return SegmentPlan(lengths, groups, torch.tensor(back, device=device), len(back))


def segment_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The extra model keywords for a batch run with the segment attention.

    Packed batches (``position_ids``) get their :class:`SegmentPlan`, built once per forward pass; padded
    batches must be right-padded (a left-padded row would let real tokens attend to padding, since no mask
    is applied) and need nothing extra.
    """
    if "position_ids" in batch:
        pos = batch["position_ids"]
        return {NAME: segment_plan(segment_lengths(pos), pos.shape[1], pos.device)}
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
    # CPU: the fp32 flash kernel is ~1.7x faster than the bf16 one on short segments (fwd + bwd, measured
    # on the project's AVX512-BF16 CPU), and the casts are cheap; other devices keep their dtype
    work = torch.float32 if query.device.type == "cpu" else query.dtype
    batch, heads, length, dim = query.shape

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=q.shape[2] > 1)

    plan = kwargs.get(NAME)
    if plan is None:  # one segment per row (right-padded or unpacked): one call
        out = attend(query.to(work), key.to(work), value.to(work))
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    if plan.tokens != batch * length:
        raise ValueError(f"the segment plan covers {plan.tokens} tokens, the batch has {batch * length}")
    # [B, H, L, D] -> [B*L, H, D] once per tensor, then each group is gathered as [G, H, Lg, D]
    flat = [t.to(work).transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value)]
    outs = []
    for index, count, block in plan.groups:
        q, k, v = (t.index_select(0, index).view(count, block, heads, dim).transpose(1, 2) for t in flat)
        outs.append(attend(q, k, v).transpose(1, 2).reshape(count * block, heads, dim))
    out = (outs[0] if len(outs) == 1 else torch.cat(outs)).index_select(0, plan.back)
    return out.to(query.dtype).view(batch, length, heads, dim), None

"""Turn tokenized examples into model batches: right-padded rows, or padding-free packed rows.

Two layouts, both consumed by :func:`flowertune.train.loss.causal_lm_loss`:

``pad``
    One example per row, right-padded to the longest example of the batch; ``attention_mask`` marks real
    tokens.
``pack`` (default)
    Several examples per row, concatenated, with ``position_ids`` restarting at 0 at every example and no
    ``attention_mask``. transformers (``masking_utils.find_packed_sequence_indices``) turns restarting
    positions into a block-diagonal causal mask, so attention never crosses examples (tests/train_fast
    checks this against each example run alone). The label of each example's first token is ``IGNORE``, so
    an example's last token never learns to predict the next example. ``real_mask`` marks real tokens
    (rows are padded to the longest row; the padding forms its own segment and carries no loss).
"""

from __future__ import annotations

from typing import Literal

import torch

from flowertune.data.example import IGNORE, Example

PACK_LENGTH = 512
"""Row capacity of packed batches (tokens) for masked attention kernels (sdpa, eager). Attention with a
packed (block-diagonal) mask costs row_length² per row whatever the segments, so rows are bounded there.
The segment attention (:mod:`flowertune.train.attention`, the training default) costs Σ segment², so the
training loop packs a whole micro-batch into one row (``pack_length=None``): no padding at all."""


def collate(
    examples: list[Example],
    pad_id: int,
    mode: Literal["pack", "pad"] = "pack",
    pack_length: int | None = PACK_LENGTH,
) -> dict[str, torch.Tensor]:
    """Build one model batch from ``examples``.

    ``mode="pack"`` (default) packs examples into rows of at most ``max(pack_length, longest example)``
    tokens (first-fit decreasing), or all into one row when ``pack_length`` is None; ``mode="pad"`` right-pads one example per row to the longest example of
    this batch (never to a fixed max length). Both give the same summed loss and the same target count.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    if mode == "pad":
        return _pad(examples, pad_id)
    if mode == "pack":
        return _pack(examples, pad_id, pack_length)
    raise ValueError(f"unknown collate mode {mode!r}; valid: 'pack', 'pad'")


def _pad(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of total length <= ``capacity`` (first-fit decreasing).

    An item longer than ``capacity`` gets a row of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def _pack(examples: list[Example], pad_id: int, pack_length: int | None) -> dict[str, torch.Tensor]:
    lengths = [len(e.input_ids) for e in examples]
    rows = pack_rows(lengths, sum(lengths) if pack_length is None else max(pack_length, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    # padding gets positions 0.. of its own, so it forms a separate segment nobody attends to
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            ids[r, at : at + n] = torch.tensor(examples[i].input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(examples[i].labels[1:])
            pos[r, at : at + n] = torch.arange(n)
            real[r, at : at + n] = 1
            at += n
        pos[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "real_mask": real}


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Number of tokens that carry a loss (next-token targets) in ``batch``."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def count_real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Number of non-padding tokens processed in ``batch`` (padded or packed layout)."""
    for name in ("attention_mask", "real_mask"):
        if name in batch:
            return int(batch[name].sum())
    return int(batch["input_ids"].numel())

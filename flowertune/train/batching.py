"""Turn tokenized examples into model batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One tokenized example; ``labels`` is ``IGNORE`` on prompt tokens, token ids on the response."""

    input_ids: list[int]
    labels: list[int]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of this batch (never to a fixed max length)."""
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


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Number of tokens that carry a loss (next-token targets) in ``batch``."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def count_real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Number of non-padding tokens processed in ``batch``."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())

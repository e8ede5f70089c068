"""The causal-LM loss on response tokens only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from flowertune.train.batching import IGNORE


def causal_lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and the number of target tokens.

    Returning the sum (not the mean) lets the caller weight micro-batches by their token counts.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1, :]
    targets = batch["labels"][:, 1:]
    n = int((targets != IGNORE).sum())
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, n

"""Learning-rate schedules: cosine over rounds (as the FlowerTune apps), linear warmup within a round."""

from __future__ import annotations

import math


def cosine_annealing(server_round: int, total_rounds: int, lr_max: float, lr_min: float) -> float:
    """FlowerTune's per-round learning rate: ``lr_min + (lr_max - lr_min) * (1 + cos(pi * r / R)) / 2``."""
    cos_inner = math.pi * server_round / total_rounds
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(cos_inner))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup multiplier for optimizer step ``step`` (0-based)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)

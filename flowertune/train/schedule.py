"""Learning-rate schedules and the length of a local round.

Over rounds: cosine annealing (as the FlowerTune apps), giving each round's peak learning rate. Within a
round: linear warmup, then constant, cosine or linear decay (transformers' ``lr_scheduler_type`` of the same
name, which is what the FlowerTune apps' ``train.training-arguments.lr-scheduler-type`` selects).
"""

from __future__ import annotations

import math

from flowertune.config import IN_ROUND_SCHEDULES, TrainConfig


def cosine_annealing(server_round: int, total_rounds: int, lr_max: float, lr_min: float) -> float:
    """FlowerTune's per-round learning rate: ``lr_min + (lr_max - lr_min) * (1 + cos(pi * r / R)) / 2``."""
    cos_inner = math.pi * server_round / total_rounds
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(cos_inner))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup multiplier for optimizer step ``step`` (0-based)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def in_round_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the round's learning rate at optimizer step ``step`` (0-based) of ``total_steps``.

    The first ``warmup_steps`` steps warm up linearly (:func:`warmup_factor`); after them ``constant`` keeps 1,
    and ``cosine`` / ``linear`` decay from 1 at step ``warmup_steps`` towards 0 at step ``total_steps``, with
    transformers' formulas (``get_cosine_schedule_with_warmup`` / ``get_linear_schedule_with_warmup``), so no
    trained step gets a zero learning rate.
    """
    if schedule not in IN_ROUND_SCHEDULES:
        raise ValueError(f"unknown in-round schedule {schedule!r}; valid: {', '.join(IN_ROUND_SCHEDULES)}")
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    if schedule == "constant":
        return 1.0
    # max(1, ...): a warmup as long as the round leaves no decay phase, not a division by zero
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


def round_steps(cfg: TrainConfig, n_examples: int) -> int:
    """Optimizer steps of one client's local round on ``n_examples`` training examples.

    ``max-steps``, or with ``num-train-epochs`` > 0 the steps that many whole passes take:
    ``ceil(n_examples * epochs / (batch_size * grad_accum))`` (the last step may hold fewer examples).
    """
    if cfg.num_train_epochs <= 0:
        return cfg.max_steps
    return math.ceil(n_examples * cfg.num_train_epochs / (cfg.batch_size * cfg.grad_accum))

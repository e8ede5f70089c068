"""One round of local training, read top to bottom (nanoGPT style).

AdamW (or paged 8-bit AdamW on CUDA) over the adapter parameters, gradient accumulation weighted by
target-token counts, linear warmup then a constant/cosine/linear learning rate within the round, gradient
clipping, and the FedProx proximal term when mu > 0. A round is ``max-steps`` optimizer steps, or
``num-train-epochs`` whole passes over the client's training examples.
The optimizer is created per round: the global adapter changes between rounds, so stale moments
from the previous round would point the wrong way.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flowertune.config import ConfigError, TrainConfig
from flowertune.train.attention import uses_segments
from flowertune.train.batching import PACK_LENGTH, Example, collate, count_real_tokens
from flowertune.train.loss import causal_lm_loss
from flowertune.train.schedule import in_round_factor, round_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundResult:
    """What one client's local round produced (besides the new adapter weights)."""

    loss: float  # mean target-token loss over the round
    steps: int
    examples: int  # examples consumed (with repetition)
    real_tokens: int  # non-padding tokens processed
    seconds: float


def pack_length_for(model: Any) -> int | None:
    """Row capacity of packed batches: one row per micro-batch with the segment attention, else bounded."""
    return None if uses_segments(model) else PACK_LENGTH


_SAID_8BIT_ON_CPU = False


def make_optimizer(params: Sequence[torch.nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW: paged on CUDA (the leaderboard recipe), plain on CPU.

    Paging moves optimizer state between GPU and host memory; on a CPU there is nothing to page to, so
    ``paged_adamw_8bit`` there is bitsandbytes' ``AdamW8bit`` (the same update), said once in the log.
    """
    global _SAID_8BIT_ON_CPU
    if cfg.optim == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optim in ("paged_adamw_8bit", "adamw_8bit"):
        import bitsandbytes as bnb

        on_cuda = any(p.is_cuda for p in params)
        if cfg.optim == "paged_adamw_8bit" and on_cuda:
            return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=cfg.weight_decay)
        if cfg.optim == "paged_adamw_8bit" and not _SAID_8BIT_ON_CPU:
            log.info("optim=paged_adamw_8bit on CPU: using bitsandbytes AdamW8bit (paging is CUDA-only)")
            _SAID_8BIT_ON_CPU = True
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optim!r}; valid: adamw_torch, adamw_8bit, paged_adamw_8bit")


def batch_order(n_examples: int, batch_size: int, n_batches: int, seed: int,
                n_draws: int | None = None) -> list[list[int]]:
    """Example indices for ``n_batches`` micro-batches: seeded shuffled epochs, repeated as needed.

    ``n_draws`` caps the examples drawn (``epochs * n_examples`` for whole passes, each example exactly
    ``epochs`` times): the last micro-batch is then partial and micro-batches past the cap are left out. The
    draws are a prefix of the uncapped order for the same seed.
    """
    total = n_batches * batch_size if n_draws is None else min(n_draws, n_batches * batch_size)
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < total:
        epoch = list(range(n_examples))
        rng.shuffle(epoch)
        order.extend(epoch)
    return [order[i:min(i + batch_size, total)] for i in range(0, total, batch_size)]


def proximal_term(params: Sequence[torch.nn.Parameter], anchors: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx: ``mu / 2 * ||w - w_global||^2`` over the trainable parameters."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))


StepCallback = Callable[[int, int, float, int, float], None]


def train_round(model: Any, examples: Sequence[Example], cfg: TrainConfig, lr: float, pad_id: int,
                seed: int, proximal_mu: float = 0.0, on_step: StepCallback | None = None) -> RoundResult:
    """Run one local round on ``examples`` (:func:`round_steps` optimizer steps); the model is updated in place.

    ``lr`` is the round's peak learning rate (cosine over rounds); within the round it follows
    ``cfg.lr_scheduler_type`` after ``cfg.warmup_steps`` of linear warmup. ``on_step(step, steps, step loss,
    real tokens so far, seconds so far)`` is called after every optimizer step (progress lines).
    """
    if not examples:
        raise ConfigError("this client has no training examples; give it more data or fewer partitions (or a "
                          "larger train.seq-length)")
    torch.manual_seed(seed)  # dropout draws: the same round on the same partition is the same computation
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    optimizer = make_optimizer(params, cfg, lr)
    steps = round_steps(cfg, len(examples))
    # epochs: exactly that many passes, so the last step may be short; max-steps: full steps, repeating examples
    n_draws = len(examples) * cfg.num_train_epochs if cfg.num_train_epochs > 0 else None
    batches = batch_order(len(examples), cfg.batch_size, steps * cfg.grad_accum, seed, n_draws)

    model.train()
    t0 = time.perf_counter()
    total_loss, total_targets, real_tokens = 0.0, 0, 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * in_round_factor(cfg.lr_scheduler_type, step, steps, cfg.warmup_steps)
        micro = [collate([examples[i] for i in idx], pad_id, pack_length=pack_length_for(model)) for idx in
                 batches[step * cfg.grad_accum:(step + 1) * cfg.grad_accum]]
        micro = [{k: v.to(device) for k, v in b.items()} for b in micro]
        n_step = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        step_loss = 0.0
        for batch in micro:
            loss_sum, n = causal_lm_loss(model, batch)
            (loss_sum / max(n_step, 1)).backward()
            step_loss += float(loss_sum.detach())
            total_loss += float(loss_sum.detach())
            total_targets += n
            real_tokens += count_real_tokens(batch)
        if proximal_mu > 0:
            proximal_term(params, anchors, proximal_mu).backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step + 1, steps, step_loss / max(n_step, 1), real_tokens, time.perf_counter() - t0)
    model.eval()
    loss = total_loss / max(total_targets, 1)
    if not math.isfinite(loss):
        log.warning("local training produced a non-finite loss (%s)", loss)
    return RoundResult(loss=loss, steps=steps, examples=sum(len(b) for b in batches),
                       real_tokens=real_tokens, seconds=time.perf_counter() - t0)


@torch.no_grad()
def evaluate_loss(model: Any, examples: Sequence[Example], batch_size: int, pad_id: int) -> tuple[float, int]:
    """Mean target-token loss of ``model`` on ``examples`` and the number of target tokens."""
    if not examples:
        return float("nan"), 0
    device = next(model.parameters()).device
    model.eval()
    total, n_total = 0.0, 0
    for i in range(0, len(examples), batch_size):
        rows = collate(list(examples[i:i + batch_size]), pad_id, pack_length=pack_length_for(model))
        batch = {k: v.to(device) for k, v in rows.items()}
        loss_sum, n = causal_lm_loss(model, batch)
        total += float(loss_sum)
        n_total += n
    return total / max(n_total, 1), n_total

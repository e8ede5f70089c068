"""Record-level differential privacy: one local round of DP-SGD (Abadi et al. 2016) on the adapter parameters.

Each of the round's ``max-steps`` optimizer steps:

1. takes every training example independently with probability ``q`` (``train.dp-sgd.sample-rate``;
   Poisson sampling, what :mod:`flowertune.train.accounting` accounts);
2. computes each sampled example's gradient of its mean target-token loss on its own (one forward and backward
   per example) and clips it to L2 norm ``C`` (``train.dp-sgd.clipping-norm``) over all trainable parameters;
3. adds Gaussian noise of standard deviation ``sigma * C`` to the sum of the clipped gradients, divides by the
   expected batch ``q * n`` (not the drawn one, which would depend on who was drawn), and lets the optimizer
   (AdamW, the proximal term of FedProx) take its step on that: post-processing of the noised sum.

Why not Opacus: its per-sample gradients are per *row* of a batch, and flowertune packs several examples into
one row (segment attention, :mod:`flowertune.train.batching`), so Opacus would clip per pack, not per record;
it also hooks ``nn.Linear`` modules only, and DoRA's magnitude vector and flowertune's fused LM-head loss
(:mod:`flowertune.train.loss`) are not among them. Per-example backward passes ("microbatches of one", as TF
Privacy's ``num_microbatches``) give exact per-example gradients for any model and adapter type, with the
same loss code, at the same FLOPs as packed training (packing only removes padding) but without batching's
speed-up on the matrix units.

The sampling and the noise come from the operating system's random source, never from the run's seeds: a
party that knows the config could otherwise subtract the noise. A DP-SGD run therefore does not repeat
byte for byte (a resume continues correctly; it does not redo the same draws).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any

import torch

from flowertune.config import ConfigError, TrainConfig
from flowertune.train.batching import Example, collate, count_real_tokens
from flowertune.train.loop import RoundResult, StepCallback, make_optimizer, pack_length_for, proximal_term
from flowertune.train.loss import causal_lm_loss
from flowertune.train.schedule import in_round_factor

log = logging.getLogger(__name__)


def secret_generator() -> torch.Generator:
    """A CPU generator seeded from the OS's random source (the draws of DP must not be replayable)."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def poisson_sample(n: int, rate: float, gen: torch.Generator) -> list[int]:
    """Indices of ``range(n)``, each taken independently with probability ``rate``."""
    return torch.nonzero(torch.rand(n, generator=gen) < rate).flatten().tolist()


def clipped_gradient_sum(model: Any, examples: Sequence[Example], chosen: Sequence[int],
                         params: Sequence[torch.nn.Parameter], clip: float, pad_id: int,
                         ) -> tuple[list[torch.Tensor], float, int, int]:
    """``sum_i clip_C(grad mean-token-loss(example_i))`` over ``chosen`` (fp32, on the parameters' devices); and
    the summed mean losses, the examples clipped and the real tokens processed (for the node's own log).

    An example whose gradient is not finite contributes nothing (a NaN would otherwise spoil the whole update,
    and the server's rejection of it would tell whether that record was drawn)."""
    device = next(model.parameters()).device
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    losses, clipped, tokens = 0.0, 0, 0
    for i in chosen:
        batch = {k: v.to(device) for k, v in collate([examples[i]], pad_id,
                                                       pack_length=pack_length_for(model)).items()}
        for p in params:
            p.grad = None
        loss_sum, n = causal_lm_loss(model, batch)
        (loss_sum / max(n, 1)).backward()
        grads = [p.grad.float() if p.grad is not None else torch.zeros_like(t) for p, t in zip(params, total)]
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        if not math.isfinite(norm):
            log.debug("DP-SGD: an example's gradient is not finite; it contributes nothing")
            factor = 0.0
        else:
            factor = min(1.0, clip / norm) if norm > 0 else 1.0
        clipped += factor < 1.0
        if factor > 0:
            for t, g in zip(total, grads):
                t.add_(g, alpha=factor)
        losses += float(loss_sum.detach()) / max(n, 1)
        tokens += count_real_tokens(batch)
    for p in params:
        p.grad = None
    return total, losses, clipped, tokens


def add_noise(total: Sequence[torch.Tensor], std: float, gen: torch.Generator) -> list[torch.Tensor]:
    """``total + N(0, std^2)`` entry-wise (drawn on the CPU from ``gen``, then moved)."""
    return [t + torch.normal(0.0, std, size=t.shape, generator=gen).to(t.device) for t in total]


def dp_sgd_round(model: Any, examples: Sequence[Example], cfg: TrainConfig, lr: float, pad_id: int,
                 seed: int, proximal_mu: float = 0.0, on_step: StepCallback | None = None,
                 gen: torch.Generator | None = None) -> RoundResult:
    """One local round of DP-SGD (``cfg.max_steps`` steps); the model is updated in place. ``seed`` only seeds
    dropout; ``gen`` (tests) replaces the secret generator of the sampling and the noise."""
    if not examples:
        raise ConfigError("this client has no training examples; give it more data or fewer partitions (or a "
                          "larger train.seq-length)")
    torch.manual_seed(seed)
    gen = gen if gen is not None else secret_generator()
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    optimizer = make_optimizer(params, cfg, lr)
    q, clip, sigma, steps = cfg.dp_sgd_sample_rate, cfg.dp_sgd_clipping_norm, cfg.dp_sgd_noise_multiplier, cfg.max_steps
    expected = q * len(examples)
    model.train()
    t0 = time.perf_counter()
    losses, drawn, clipped, tokens = 0.0, 0, 0, 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * in_round_factor(cfg.lr_scheduler_type, step, steps, cfg.warmup_steps)
        chosen = poisson_sample(len(examples), q, gen)
        total, step_losses, step_clipped, step_tokens = clipped_gradient_sum(model, examples, chosen, params,
                                                                             clip, pad_id)
        for p, g in zip(params, add_noise(total, sigma * clip, gen)):
            p.grad = (g / expected).to(p.dtype)
        if proximal_mu > 0:
            proximal_term(params, anchors, proximal_mu).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses, drawn, clipped, tokens = losses + step_losses, drawn + len(chosen), clipped + step_clipped, \
            tokens + step_tokens
        if on_step is not None:  # progress only: no loss, no token count (in simulation it reaches the server's log)
            on_step(step + 1, steps, math.nan, 0, time.perf_counter() - t0)
    model.eval()
    log.debug("DP-SGD round: %d steps, %d examples drawn (expected %.1f a step), %d clipped to %g, noise %g x %g",
             steps, drawn, expected, clipped, clip, sigma, clip)
    return RoundResult(loss=losses / max(drawn, 1), steps=steps, examples=drawn, real_tokens=tokens,
                       seconds=time.perf_counter() - t0)

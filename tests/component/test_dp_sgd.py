"""DP-SGD inside a node (``train.dp-sgd.*``) on a tiny random-init Llama with LoRA: each example's share of a
step is bounded by the clipping norm (attacked with an outlier example), the unclipped sum equals per-example
gradients computed here by a different path, the noise has the configured standard deviation, the Poisson
sampling its rate, and the draws do not come from the run's seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowertune.config import TrainConfig
from flowertune.models.adapter import get_arrays
from flowertune.train.batching import collate
from flowertune.train.dpsgd import add_noise, clipped_gradient_sum, dp_sgd_round, poisson_sample
from flowertune.train.loss import causal_lm_loss
from tests.component.conftest import make_examples


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def norm(tensors):
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def test_each_example_moves_the_sum_by_at_most_the_clipping_norm_even_an_outlier(tiny_llama, examples):
    """Leave-one-out: the clipped sum with and without example i differ by at most C, for every i, also for an
    outlier example (long, its response the same token over and over, trained by nobody) whose raw gradient is
    many times the others'."""
    outlier = make_examples([120], seed=9)[0]
    outlier = type(outlier)(outlier.input_ids[:10] + [7] * 110, [-100] * 10 + [7] * 110)
    data = [*examples, outlier]
    params, clip, pad = trainable(tiny_llama), 0.05, 0
    tiny_llama.train()
    full, _, clipped, _ = clipped_gradient_sum(tiny_llama, data, range(len(data)), params, clip, pad)
    assert clipped >= 1
    raw = [norm(clipped_gradient_sum(tiny_llama, data, [i], params, 1e9, pad)[0]) for i in range(len(data))]
    assert raw[-1] > 2 * clip  # the outlier would move the step far more than C without clipping
    for i in range(len(data)):
        rest, *_ = clipped_gradient_sum(tiny_llama, data, [j for j in range(len(data)) if j != i], params, clip, pad)
        share = norm([a - b for a, b in zip(full, rest)])
        assert share <= clip * (1 + 1e-4), (i, share)
        assert share == pytest.approx(min(raw[i], clip), rel=1e-3)


def test_the_unclipped_sum_is_the_sum_of_per_example_gradients_computed_another_way(tiny_llama, examples):
    """With a norm no gradient reaches, the sum is Σ_i ∇ mean-token-loss_i, computed here with full logits and
    padded rows (not the fused head, not packing) and torch.autograd.grad."""
    params = trainable(tiny_llama)
    tiny_llama.train()
    got, *_ = clipped_gradient_sum(tiny_llama, examples, range(len(examples)), params, 1e9, 0)
    want = [torch.zeros_like(p) for p in params]
    for e in examples:
        batch = collate([e], 0, mode="pad")
        loss, n = causal_lm_loss(tiny_llama, batch, fused=False)
        for w, g in zip(want, torch.autograd.grad(loss / max(n, 1), params, allow_unused=True)):
            if g is not None:
                w.add_(g)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_the_noise_has_the_configured_standard_deviation():
    gen = torch.Generator().manual_seed(0)
    sigma, clip = 1.3, 0.2
    noised = add_noise([torch.zeros(200, 100), torch.zeros(50_000)], sigma * clip, gen)
    flat = torch.cat([t.flatten() for t in noised]).double()
    n = flat.numel()
    assert abs(float(flat.mean())) < 5 * sigma * clip / math.sqrt(n)
    assert abs(float(flat.std()) / (sigma * clip) - 1) < 5 / math.sqrt(2 * n)


def test_poisson_sampling_takes_each_example_at_the_rate():
    gen = torch.Generator().manual_seed(1)
    n, q, draws = 50, 0.1, 4000
    counts = np.zeros(n)
    sizes = []
    for _ in range(draws):
        chosen = poisson_sample(n, q, gen)
        counts[chosen] += 1
        sizes.append(len(chosen))
    assert abs(np.mean(sizes) - n * q) < 5 * math.sqrt(n * q * (1 - q) / draws)
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.15)  # binomial, not a fixed batch
    assert np.all(np.abs(counts / draws - q) < 5 * math.sqrt(q * (1 - q) / draws))


def test_the_draws_do_not_come_from_the_runs_seeds(tiny_llama, examples):
    """Two rounds from the same adapter with the same seed give different adapters (the noise and the sample
    are secret); with one given generator they are the same (nothing else varies)."""
    cfg = TrainConfig(max_steps=2, dp_sgd_noise_multiplier=1.0, dp_sgd_clipping_norm=0.1, dp_sgd_sample_rate=0.5)
    start = {n: p.detach().clone() for n, p in tiny_llama.named_parameters() if p.requires_grad}

    def once(gen=None):
        with torch.no_grad():
            for n, p in tiny_llama.named_parameters():
                if n in start:
                    p.copy_(start[n])
        result = dp_sgd_round(tiny_llama, examples, cfg, 1e-2, 0, seed=3, gen=gen)
        assert result.steps == 2
        return get_arrays(tiny_llama)

    a, b = once(), once()
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    c, d = once(torch.Generator().manual_seed(5)), once(torch.Generator().manual_seed(5))
    assert all(np.array_equal(c[k], d[k]) for k in c)


def test_an_example_whose_gradient_is_not_finite_contributes_nothing(tiny_llama, examples, monkeypatch):
    """A record that makes the loss NaN (here: the example of length 40) must not spoil the step: the sum is
    that of the other examples, finite (else the server would reject the update, telling it the record was
    drawn)."""
    from flowertune.train import dpsgd

    real = dpsgd.causal_lm_loss

    def poisoned(model, batch, **kw):
        loss, n = real(model, batch, **kw)
        return (loss * float("nan"), n) if batch["input_ids"].shape[1] == 40 else (loss, n)

    params = trainable(tiny_llama)
    tiny_llama.train()
    bad = [i for i, e in enumerate(examples) if len(e.input_ids) == 40]
    assert len(bad) == 1
    clean, *_ = clipped_gradient_sum(tiny_llama, examples, [i for i in range(len(examples)) if i not in bad], params,
                                     0.05, 0)
    monkeypatch.setattr(dpsgd, "causal_lm_loss", poisoned)
    got, *_ = clipped_gradient_sum(tiny_llama, examples, range(len(examples)), params, 0.05, 0)
    for g, c in zip(got, clean):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, c)

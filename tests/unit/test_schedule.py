import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from flowertune.config import ConfigError, TrainConfig, from_flat
from flowertune.data.example import IGNORE, Example
from flowertune.train import loop
from flowertune.train.loop import batch_order
from flowertune.train.schedule import cosine_annealing, in_round_factor, round_steps, warmup_factor


def test_cosine_over_rounds_matches_flowertune_formula():
    assert cosine_annealing(200, 200, 5e-5, 1e-6) == 1e-6
    assert math.isclose(cosine_annealing(100, 200, 5e-5, 1e-6), (5e-5 + 1e-6) / 2)
    lrs = [cosine_annealing(r, 10, 1.0, 0.1) for r in range(1, 11)]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 1.0


def test_warmup():
    assert [warmup_factor(s, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


# --- within a round: warmup then constant / cosine / linear (train.training-arguments.lr-scheduler-type) ---

def factors(schedule: str, total: int, warmup: int) -> list[float]:
    return [in_round_factor(schedule, s, total, warmup) for s in range(total)]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=0, abs_tol=1e-12) for x, y in zip(a, b))


def test_in_round_constant_is_warmup_then_flat():
    assert factors("constant", 6, 2) == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert factors("constant", 3, 0) == [1.0, 1.0, 1.0]
    # today's behaviour: the constant schedule is exactly the old warmup factor
    assert factors("constant", 10, 4) == [warmup_factor(s, 4) for s in range(10)]


def test_in_round_linear_decays_after_warmup_as_transformers():
    # decay from step 2 (= warmup): (6 - s) / (6 - 2)
    assert close(factors("linear", 6, 2), [0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert close(factors("linear", 4, 0), [1.0, 0.75, 0.5, 0.25])


def test_in_round_cosine_decays_after_warmup_as_transformers():
    # 0.5 * (1 + cos(pi * (s - 2) / 4)) from step 2
    assert close(factors("cosine", 6, 2), [0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627])
    assert close(factors("cosine", 2, 0), [1.0, 0.5])


def test_in_round_warmup_longer_than_the_round_never_decays():
    assert factors("cosine", 3, 4) == [0.25, 0.5, 0.75]
    assert factors("linear", 4, 4) == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="constant, cosine, linear"):
        in_round_factor("constant_with_warmup", 0, 4, 1)


# --- the length of a round: max-steps, or whole local epochs (train.training-arguments.num-train-epochs) ---

def test_round_steps_from_epochs():
    assert round_steps(TrainConfig(max_steps=7), 1000) == 7  # epochs 0: max-steps, whatever the data
    cfg = TrainConfig(max_steps=7, num_train_epochs=3, batch_size=16, grad_accum=2)
    assert round_steps(cfg, 100) == 10  # ceil(300 / 32)
    assert round_steps(cfg, 32) == 3  # 96 / 32 exactly
    assert round_steps(replace(cfg, num_train_epochs=1), 33) == 2  # a last short step
    assert round_steps(replace(cfg, num_train_epochs=1), 1) == 1


def test_epoch_batches_are_whole_seeded_passes():
    n, batch, accum, epochs, seed = 10, 3, 2, 2, 5
    steps = round_steps(TrainConfig(batch_size=batch, grad_accum=accum, num_train_epochs=epochs), n)
    assert steps == 4  # ceil(20 / 6)
    batches = batch_order(n, batch, steps * accum, seed, n_draws=n * epochs)
    assert [len(b) for b in batches] == [3, 3, 3, 3, 3, 3, 2]  # 7 micro-batches; the 8th would be empty
    drawn = [i for b in batches for i in b]
    assert sorted(drawn) == sorted(list(range(n)) * epochs)  # each example exactly `epochs` times
    assert sorted(drawn[:n]) == list(range(n))  # pass 1 is a permutation, then pass 2
    assert batch_order(n, batch, steps * accum, seed, n_draws=n * epochs) == batches  # seeded
    assert batch_order(n, batch, steps * accum, seed + 1, n_draws=n * epochs) != batches
    # the same draws as the max-steps order of that seed, cut where the passes end
    full = [i for b in batch_order(n, batch, steps * accum, seed) for i in b]
    assert drawn == full[:n * epochs]


class TinyLM(torch.nn.Module):
    """Embedding + linear head: enough of a causal LM for train_round's full-logits path."""

    def __init__(self, vocab: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 4)
        self.head = torch.nn.Linear(4, vocab)

    def forward(self, input_ids, position_ids=None, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.head(self.emb(input_ids)))


def run_round(monkeypatch, cfg: TrainConfig, n: int, lr: float) -> tuple[object, list[float]]:
    lrs: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(loop, "make_optimizer", lambda params, _cfg, lr: Recording(params, lr=lr))
    examples = [Example(input_ids=[1, 2 + i % 5, 3, 4], labels=[IGNORE, 2 + i % 5, 3, 4]) for i in range(n)]
    result = loop.train_round(TinyLM(), examples, cfg, lr=lr, pad_id=0, seed=3)
    return result, lrs


def test_train_round_runs_epochs_with_the_in_round_schedule(monkeypatch):
    cfg = TrainConfig(batch_size=3, grad_accum=2, num_train_epochs=2, warmup_steps=1, lr_scheduler_type="cosine",
                      max_grad_norm=0.0)
    result, lrs = run_round(monkeypatch, cfg, n=10, lr=0.1)
    assert (result.steps, result.examples) == (4, 20)
    # warmup 1 step, then 0.5 * (1 + cos(pi * (s - 1) / 3))
    assert close(lrs, [0.1, 0.1, 0.075, 0.025])


def test_train_round_default_is_max_steps_constant(monkeypatch):
    cfg = TrainConfig(batch_size=2, grad_accum=1, max_steps=5, warmup_steps=2, max_grad_norm=0.0)
    result, lrs = run_round(monkeypatch, cfg, n=3, lr=0.2)
    assert (result.steps, result.examples) == (5, 10)  # repeats the 3 examples to fill 5 full steps
    assert close(lrs, [0.1, 0.2, 0.2, 0.2, 0.2])


# --- the keys' validation: one line naming the key and the fix ---

def test_schedule_and_epoch_keys_are_validated_with_the_fix():
    with pytest.raises(ConfigError) as exc:
        from_flat({"train.training-arguments.lr-scheduler-type": "constant_with_warmup"})
    msg = str(exc.value)
    assert "\n" not in msg and "lr-scheduler-type='constant_with_warmup'" in msg
    assert "choose constant, cosine, linear" in msg and "warmup-steps applies to each" in msg
    with pytest.raises(ConfigError, match="num-train-epochs must be >= 0"):
        from_flat({"train.training-arguments.num-train-epochs": -1})
    with pytest.raises(ConfigError, match=r"max-steps must be >= 1 \(or set train.training-arguments.num-train-epochs"):
        from_flat({"train.training-arguments.max-steps": 0})
    with pytest.raises(ConfigError, match="expects int"):
        from_flat({"train.training-arguments.num-train-epochs": 0.5})
    cfg = from_flat({"train.training-arguments.max-steps": 0, "train.training-arguments.num-train-epochs": 2})
    assert cfg.train.num_train_epochs == 2

"""Record-level DP (``train.dp-sgd.*``): ε of DP-SGD against a computation made here from the sampled
Gaussian's RDP (not the library's code), the ledger that counts each node's local rounds and stops the run
before a node could pass the target, the gate's schema under DP-SGD, config values just past each bound, and
the dry run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.supercore.task_identity import TaskIdentity
from scipy.special import gammaln, logsumexp

from flowertune.config import ConfigError, StrategyConfig, TrainConfig, from_flat
from flowertune.federation.records import to_array_record
from flowertune.federation.stack.base import find_layer
from flowertune.federation.stack.privacy import PrivacyBudgetReached, RecordLedger
from flowertune.federation.strategies import describe, export_state, import_state, make_strategy
from flowertune.train.accounting import record_epsilon, rounds_within
from tests.unit.test_privacy import analytic_gaussian_epsilon, closed_form_rdp_epsilon
from tests.unit.test_strategies import FakeGrid
from tests.unit.test_trust import NODES, arrays, reply


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def sampled_gaussian_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian steps, from the RDP at integer orders α (Mironov, Talwar &
    Zhang 2019, Sec. 3.3: A_α = Σ_k C(α,k) (1-q)^(α-k) q^k exp((k²-k)/(2z²)), RDP = log A_α / (α-1)), composed
    by adding, converted with Canonne-Kamath-Steinke's bound, minimised over α = 2..511."""
    best = math.inf
    for a in range(2, 512):
        k = np.arange(a + 1)
        terms = gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1) + (k * k - k) / (2 * z * z)
        if q < 1:
            terms = terms + (a - k) * math.log1p(-q) + k * math.log(q)
        else:
            terms = np.where(k == a, terms, -np.inf)
        rdp = steps * float(logsumexp(terms)) / (a - 1)
        best = min(best, rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return best


@pytest.mark.parametrize("z,q,steps,delta", [(1.0, 0.01, 1000, 1e-5), (1.1, 0.05, 50, 1e-5),
                                             (1.0, 0.02, 200, 1e-6), (0.8, 0.1, 10, 1e-5)])
def test_record_epsilon_matches_the_sampled_gaussian_computed_here(z, q, steps, delta):
    eps, here = record_epsilon(z, q, steps, delta), sampled_gaussian_epsilon(z, q, steps, delta)
    # the library also uses fractional orders, so it can only be lower, and not by much
    assert 0.93 * here <= eps <= here + 1e-9, (eps, here)


def test_without_sampling_the_steps_compose_to_one_gaussian():
    """q = 1: k steps at multiplier z are one Gaussian release at z / sqrt(k); RDP is above its exact ε (Balle &
    Wang) and equal to the closed form k α / (2 z²)."""
    z, k, delta = 4.0, 9, 1e-5
    eps = record_epsilon(z, 1.0, k, delta)
    here = closed_form_rdp_epsilon(z, k, delta)  # fine grid of orders, k α / (2 z²)
    assert here - 1e-9 <= eps <= here * 1.02, (eps, here)
    exact = analytic_gaussian_epsilon(z / math.sqrt(k), delta)
    assert exact <= eps <= 1.5 * exact
    assert record_epsilon(z, 0.1, k, delta) < eps / 3  # sampling amplifies


def ledger_stack(z=1.0, q=0.1, steps=10, delta=1e-5, target=0.0, **strategy):
    train = TrainConfig(max_steps=steps, dp_sgd_noise_multiplier=z, dp_sgd_sample_rate=q, dp_sgd_delta=delta,
                        dp_sgd_target_epsilon=target)
    s = make_strategy(StrategyConfig(**{"fraction_train": 0.5, "min_train_nodes": 1, **strategy}), train=train)
    s.ctx.partition_of = lambda node: node % 100
    return s


def configure(s, rnd, nodes=NODES):
    return list(s.configure_train(rnd, to_array_record(arrays(0.0)), ConfigRecord({"lr": 0.1}), FakeGrid(nodes)))


def test_the_ledger_counts_the_local_rounds_of_each_partition_and_reports_the_most():
    s = ledger_stack()
    saved = []
    s.ctx.save_spent = lambda spent: saved.append(spent)
    ledger = find_layer(s, RecordLedger)
    assert "dp-sgd(z=1, q=0.1, 10 steps a round" in describe(s)
    counts: dict[int, int] = {}
    for r in range(1, 6):
        msgs = configure(s, r)
        for m in msgs:
            counts[m.metadata.dst_node_id % 100] = counts.get(m.metadata.dst_node_id % 100, 0) + 1
        assert saved[-1] == {"dp-sgd-rounds": {f"partition-{p}": n for p, n in counts.items()}}  # before they go out
        s.aggregate_train(r, [reply(m, metrics={"num-examples": 10}) for m in msgs])  # no train_loss: accepted
        assert s.traffic.rejected == [] and s.traffic.accepted == len(msgs) and s.traffic.notes == []
        most = max(counts.values())
        assert ledger.last["dp_record_local_rounds"] == most
        assert ledger.last["dp_record_epsilon"] == pytest.approx(sampled_gaussian_epsilon(1.0, 0.1, most * 10, 1e-5),
                                                                 rel=0.07)
    # a node that sends its loss anyway: accepted, the loss dropped with a note
    msgs = configure(s, 6)
    s.aggregate_train(6, [reply(m, metrics={"num-examples": 10, "train_loss": 0.5}) for m in msgs])
    assert s.traffic.accepted == len(msgs) and "dropped unknown metrics ['train_loss']" in s.traffic.notes[0]
    # resume: the counts of the last completed round come back from the state file ...
    meta, arrs = export_state(s)
    fresh = ledger_stack()
    import_state(fresh, meta, arrs)
    assert find_layer(fresh, RecordLedger).rounds == ledger.rounds
    assert find_layer(fresh, RecordLedger).last == ledger.last
    # ... and a try of a round that never completed (saved before its tasks went out) counts too
    msgs = configure(s, 7)
    resumed = find_layer(fresh, RecordLedger)
    assert sum(resumed.rounds.values()) == sum(ledger.rounds.values()) - len(msgs)  # the state file lacks round 7
    resumed.merge(saved[-1])
    assert resumed.rounds == ledger.rounds and resumed.last == ledger.last


def test_without_dp_sgd_a_reply_without_train_loss_is_still_rejected():
    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1), train=TrainConfig())
    msgs = configure(s, 1, NODES[:2])
    s.aggregate_train(1, [reply(m, metrics={"num-examples": 10}) for m in msgs])
    assert len(s.traffic.rejected) == 2 and "train_loss" in s.traffic.rejected[0]


def test_the_target_stops_the_run_before_a_node_could_pass_it():
    z, q, steps, delta = 1.0, 0.2, 10, 1e-5
    k = 3  # a target between what 3 and 4 local rounds spend
    target = (record_epsilon(z, q, k * steps, delta) + record_epsilon(z, q, (k + 1) * steps, delta)) / 2
    assert rounds_within(z, q, steps, delta, target, 100) == k
    s = ledger_stack(z=z, q=q, steps=steps, delta=delta, target=target, fraction_train=1.0)
    ledger = find_layer(s, RecordLedger)
    for r in range(1, k + 1):  # every node every round
        ledger.check_budget(r)
        configure(s, r, NODES[:3])
    assert ledger.last["dp_record_epsilon"] <= target
    with pytest.raises(PrivacyBudgetReached, match="round 4 would take a node's record-level ε past"):
        ledger.check_budget(k + 1)
    with pytest.raises(PrivacyBudgetReached):
        configure(s, k + 1, NODES[:3])
    assert max(ledger.rounds.values()) == k  # nothing was counted for the round that did not go out
    # a node that has trained less may still be asked, through configure_train's own check
    fresh = ledger_stack(z=z, q=q, steps=steps, delta=delta, target=target, fraction_train=1.0)
    fl = find_layer(fresh, RecordLedger)
    fl.rounds = {"partition-1": k}
    configure(fresh, 1, [2, 3])  # partitions 2 and 3: fine
    with pytest.raises(PrivacyBudgetReached):
        configure(fresh, 2, [1])


@pytest.mark.parametrize("flat,problem", [
    ({"train.dp-sgd.noise-multiplier": -0.1}, "noise-multiplier must be a finite number >= 0"),
    ({"train.dp-sgd.noise-multiplier": math.inf}, "noise-multiplier must be a finite number >= 0"),
    ({"train.dp-sgd.clipping-norm": 0.0}, "train.dp-sgd.clipping-norm must be a finite number > 0"),
    ({"train.dp-sgd.sample-rate": 0.0}, "train.dp-sgd.sample-rate must be in (0, 1]"),
    ({"train.dp-sgd.sample-rate": 1.0001}, "train.dp-sgd.sample-rate must be in (0, 1]"),
    ({"train.dp-sgd.delta": 1.0}, "train.dp-sgd.delta must be in (0, 1)"),
    ({"train.dp-sgd.target-epsilon": -1.0}, "target-epsilon must be a finite number >= 0"),
    ({"train.training-arguments.num-train-epochs": 1}, "train.dp-sgd needs train.training-arguments.num-train-epochs=0"),
])
def test_dp_sgd_config_values_past_each_bound_are_refused(flat, problem):
    with pytest.raises(ConfigError) as exc:
        from_flat({"train.dp-sgd.noise-multiplier": 1.0, **flat})
    assert problem in str(exc.value)


def test_dp_sgd_config_values_at_each_bound_are_taken():
    cfg = from_flat({"train.dp-sgd.noise-multiplier": 1e-6, "train.dp-sgd.sample-rate": 1.0,
                     "train.dp-sgd.delta": 1e-12, "train.dp-sgd.target-epsilon": 0.0})
    assert cfg.train.dp_sgd_sample_rate == 1.0
    assert from_flat({"train.training-arguments.num-train-epochs": 1}).train.dp_sgd_noise_multiplier == 0.0


def test_dry_run_prints_the_record_level_epsilon_and_where_the_target_stops_a_node(capsys):
    from flowertune.cli import main

    flat = ["num-server-rounds=20", "train.dp-sgd.noise-multiplier=1.0", "train.dp-sgd.sample-rate=0.05",
            "train.training-arguments.max-steps=10", "train.dp-sgd.target-epsilon=4.0"]
    assert main(["run", "--dry-run", *flat]) == 0
    out = capsys.readouterr().out
    eps, k = record_epsilon(1.0, 0.05, 200, 1e-5), rounds_within(1.0, 0.05, 10, 1e-5, 4.0, 20)
    assert 0 < k < 20 and f"ε = {eps:.4g} at δ = 1e-05 for a node that trains all 20 rounds once" in out
    assert f"a node can train {k} of the 20 rounds" in out


def test_the_progress_line_of_a_dp_sgd_step_has_no_statistic_of_the_records(caplog):
    import logging

    from flowertune.federation.client_tasks import StepLog

    with caplog.at_level(logging.INFO, logger="flowertune.federation.client_tasks"):
        StepLog(3, 2, every_s=1e-9, private=True)(4, 10, 1.2345, 678, 12.0)
        StepLog(3, 2, every_s=1e-9)(5, 10, 1.2345, 678, 12.0)
    private, plain = [r.getMessage() for r in caplog.records]
    assert private == "partition 3, round 2: step 4/10 (DP-SGD), 12 s"
    assert "1.2345" in plain and "tokens/s" in plain

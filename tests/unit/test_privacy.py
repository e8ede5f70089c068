"""Client-level DP (``strategy.dp.mode=server-fixed``): the clipping bound on every update the aggregator
sees, the noise's standard deviation, equal weights, ε against numbers computed here independently of the
library (the analytic Gaussian mechanism and the closed-form RDP of the Gaussian), the budget stop, resume
state, and config values just past each bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st

from flowertune.config import ConfigError, StrategyConfig, from_flat
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.stack.base import find_layer
from flowertune.federation.stack.normbound import NormBound
from flowertune.federation.stack.privacy import PrivacyBudgetReached, PrivacyLedger, planned_epsilon, rounds_within
from flowertune.federation.strategies import describe, export_state, import_state, make_strategy
from tests.unit.test_strategies import FakeGrid
from tests.unit.test_trust import NODES, reply

BIG = {"a.lora_A.weight": (8, 512), "a.lora_B.weight": (512, 8)}  # 8192 entries: enough for a std estimate


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def dp_stack(z=1.0, clip=0.5, delta=1e-5, target=0.0, **extra):
    return make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1, dp_mode="server-fixed",
                                        dp_noise_multiplier=z, dp_clipping_norm=clip, dp_delta=delta,
                                        dp_target_epsilon=target, **extra))


def zeros(shapes=BIG):
    return {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}


def l2(a):
    return math.sqrt(sum(float(np.sum(np.square(v.astype(np.float64)))) for v in a.values()))


def configure(s, glob, nodes=NODES, rnd=1):
    return list(s.configure_train(rnd, to_array_record(glob), ConfigRecord({"lr": 0.1}), FakeGrid(nodes)))


class Spy:
    """Stands under Flower's DP wrapper and records what reaches the aggregation."""

    def __init__(self, inner):
        self.strategy, self.seen = inner, []

    def configure_train(self, *a):
        return self.strategy.configure_train(*a)

    def aggregate_train(self, r, replies):
        replies = list(replies)
        self.seen += [(from_array_record(m.content["arrays"]), dict(m.content["metrics"])) for m in replies]
        return self.strategy.aggregate_train(r, replies)


def spy_under_the_wrapper(s) -> Spy:
    wrapper = find_layer(s, PrivacyLedger).strategy
    wrapper.strategy = Spy(wrapper.strategy)
    return wrapper.strategy


@settings(max_examples=20, deadline=None)
@given(scales=st.lists(st.floats(1e-4, 1e4), min_size=1, max_size=8), clip=st.sampled_from([0.01, 0.5, 3.0]))
def test_every_update_that_reaches_the_aggregator_is_clipped(scales, clip):
    rng = np.random.default_rng(0)
    s = dp_stack(clip=clip)
    spy = spy_under_the_wrapper(s)
    glob = {k: rng.standard_normal(v).astype(np.float32) for k, v in BIG.items()}
    msgs = configure(s, glob, NODES[:len(scales)])
    s.aggregate_train(1, [reply(m, {k: glob[k] + sc * rng.standard_normal(glob[k].shape).astype(np.float32)
                                    for k in BIG}) for m, sc in zip(msgs, scales)])
    assert len(spy.seen) == len(scales)
    for arrays, metrics in spy.seen:
        assert l2({k: arrays[k].astype(np.float64) - glob[k] for k in BIG}) <= clip * (1 + 1e-4)
        assert metrics["num-examples"] == 1  # equal weights


def test_the_noise_has_the_configured_standard_deviation():
    z, clip, n = 2.0, 0.5, 4
    s = dp_stack(z=z, clip=clip)
    glob = zeros()
    msgs = configure(s, glob, NODES[:n])
    # every update is zero (unchanged adapters, on which Flower 1.42 clipping alone divides by 0): the result is noise
    agg, _ = s.aggregate_train(1, [reply(m, zeros()) for m in msgs])
    noise = np.concatenate([v.ravel() for v in from_array_record(agg).values()]).astype(np.float64)
    want, count = z * clip / n, noise.size
    # the sample std of N normal draws has a relative standard error of 1/sqrt(2N) (0.78% here): 5 of them
    assert abs(noise.std() / want - 1) < 5 / math.sqrt(2 * count), (noise.std(), want)
    assert abs(noise.mean()) < 5 * want / math.sqrt(count)


def test_declared_sizes_do_not_weight_the_private_mean():
    s = dp_stack(z=1e-6, clip=100.0)  # noise negligible, nothing clipped
    glob = zeros()
    msgs = configure(s, glob, NODES[:2])
    big, small = dict(zeros()), dict(zeros())
    big = {k: np.full(v.shape, 1.0, np.float32) for k, v in big.items()}
    agg, _ = s.aggregate_train(1, [reply(msgs[0], big, {"num-examples": 10_000, "train_loss": 1.0}),
                                   reply(msgs[1], small, {"num-examples": 1, "train_loss": 1.0})])
    got = from_array_record(agg)
    assert all(np.allclose(v, 0.5, atol=1e-3) for v in got.values())  # the plain mean, not 10000:1


def analytic_gaussian_epsilon(z: float, delta: float) -> float:
    """The exact ε of one Gaussian release with sensitivity 1 and std ``z`` at ``delta`` (Balle & Wang 2018,
    Theorem 8): δ(ε) = Φ(1/(2z) - εz) - e^ε Φ(-1/(2z) - εz), solved for ε by bisection."""
    def phi(x):
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def d(eps):
        return phi(1 / (2 * z) - eps * z) - math.exp(eps) * phi(-1 / (2 * z) - eps * z)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


def closed_form_rdp_epsilon(z: float, rounds: int, delta: float) -> float:
    """ε from the Gaussian's RDP, ``rounds * α / (2 z²)``, converted with Canonne-Kamath-Steinke's bound
    (ε = RDP(α) + log1p(-1/α) - (log δ + log α) / (α - 1)), minimised over a fine grid of orders."""
    alphas = np.concatenate([np.arange(1.01, 20, 0.001), np.arange(20, 1000, 0.05)])
    eps = rounds * alphas / (2 * z * z) + np.log1p(-1 / alphas) - (math.log(delta) + np.log(alphas)) / (alphas - 1)
    return float(eps.min())


@pytest.mark.parametrize("z,rounds,delta", [(1.0, 1, 1e-5), (2.0, 1, 1e-5), (1.1, 30, 1e-5), (4.0, 200, 1e-6)])
def test_epsilon_matches_numbers_computed_here(z, rounds, delta):
    eps = planned_epsilon(z, rounds, delta)
    rdp = closed_form_rdp_epsilon(z, rounds, delta)
    # the library minimises over its own list of orders; the finer grid here can only be a little lower
    assert rdp - 1e-9 <= eps <= rdp * 1.02, (eps, rdp)
    if rounds == 1:  # RDP is an upper bound of the exact ε, and not a loose one for a single release
        exact = analytic_gaussian_epsilon(z, delta)
        assert exact <= eps <= 1.5 * exact, (exact, eps)


def test_the_ledger_accounts_each_release_and_a_short_round_at_the_smaller_multiplier():
    z, delta = 2.0, 1e-5
    s = dp_stack(z=z, delta=delta)
    ledger = find_layer(s, PrivacyLedger)
    glob = zeros(BIG)
    for r in (1, 2):
        msgs = configure(s, glob, NODES[:4], rnd=r)
        s.aggregate_train(r, [reply(m, zeros()) for m in msgs])
    assert ledger.last["dp_releases"] == 2 and ledger.last["dp_epsilon"] == pytest.approx(planned_epsilon(z, 2, delta))
    # round 3: 4 sampled, 2 replies: the average moves by C/2 under noise z*C/4, i.e. multiplier z/2
    msgs = configure(s, glob, NODES[:4], rnd=3)
    s.aggregate_train(3, [reply(m, zeros()) for m in msgs[:2]])
    assert ledger.last["dp_noise_multiplier"] == pytest.approx(z / 2)
    assert ledger.last["dp_epsilon_round"] == pytest.approx(closed_form_rdp_epsilon(z / 2, 1, delta), rel=0.02)
    rdp3 = 2 / (2 * z * z) + 1 / (2 * (z / 2) ** 2)  # RDP per unit order of the three releases
    assert ledger.last["dp_epsilon"] == pytest.approx(closed_form_rdp_epsilon(1 / math.sqrt(2 * rdp3), 1, delta),
                                                      rel=0.02)
    # resume: the accountant's state comes back
    meta, arrays = export_state(s)
    fresh = dp_stack(z=z, delta=delta)
    import_state(fresh, meta, arrays)
    assert find_layer(fresh, PrivacyLedger).epsilon() == pytest.approx(ledger.epsilon())


def test_target_epsilon_stops_before_the_round_that_would_exceed_it():
    z, delta, target = 3.0, 1e-5, 2.0
    k = rounds_within(z, delta, target, 100)
    assert planned_epsilon(z, k, delta) <= target < planned_epsilon(z, k + 1, delta)
    assert closed_form_rdp_epsilon(z, k, delta) <= target * 1.02  # the count agrees with the closed form
    s = dp_stack(z=z, delta=delta, target=target)
    glob = zeros()
    for r in range(1, k + 1):
        msgs = configure(s, glob, NODES[:3], rnd=r)
        s.aggregate_train(r, [reply(m, zeros()) for m in msgs])
    with pytest.raises(PrivacyBudgetReached, match=f"round {k + 1} would take ε past"):
        configure(s, glob, NODES[:3], rnd=k + 1)


def test_the_dp_stack_has_no_data_dependent_bound_and_says_what_it_is():
    text = describe(dp_stack(z=1.5, clip=0.2, target=8.0))
    assert "dp(server-fixed, z=1.5, C=0.2, δ=1e-05, target ε 8)" in text
    assert "DifferentialPrivacyServerSideFixedClipping" in text and "norm-bound" not in text
    assert "guard(finite)" in text  # the noise may be many times the adapter's norm: no growth bound
    with pytest.raises(LookupError):
        find_layer(dp_stack(), NormBound)
    assert "norm-bound(fixed 5)" in describe(dp_stack(norm_bound=5.0))  # a fixed bound is data-independent


@pytest.mark.parametrize("flat,problem", [
    ({"strategy.dp.mode": "server"}, "strategy.dp.mode='server' is not valid"),
    ({"strategy.dp.noise-multiplier": 0.0}, "noise-multiplier must be a finite number > 0"),
    ({"strategy.dp.noise-multiplier": float("nan")}, "noise-multiplier must be a finite number > 0"),
    ({"strategy.dp.noise-multiplier": float("inf")}, "noise-multiplier must be a finite number > 0"),
    ({"strategy.dp.clipping-norm": -0.1}, "clipping-norm must be a finite number > 0"),
    ({"strategy.dp.delta": 0.0}, "strategy.dp.delta must be in (0, 1)"),
    ({"strategy.dp.delta": 1.0}, "strategy.dp.delta must be in (0, 1)"),
    ({"strategy.dp.target-epsilon": -1.0}, "target-epsilon must be a finite number >= 0"),
    ({"strategy.name": "fedadam"}, "needs strategy.name=fedavg or fedprox"),
    ({"strategy.name": "fedmedian"}, "needs strategy.name=fedavg or fedprox"),
    ({"strategy.norm-bound": 1.0, "strategy.norm-bound-adaptive": True}, "norm-bound-adaptive moves with the updates"),
])
def test_dp_config_values_past_each_bound_are_refused(flat, problem):
    with pytest.raises(ConfigError) as exc:
        from_flat({"strategy.dp.mode": "server-fixed", **flat})
    assert problem in str(exc.value)


def test_dp_config_values_at_each_bound_are_taken():
    cfg = from_flat({"strategy.dp.mode": "server-fixed", "strategy.name": "fedprox", "strategy.proximal-mu": 0.1,
                     "strategy.dp.delta": 1e-9, "strategy.dp.target-epsilon": 0.0, "strategy.dp.noise-multiplier": 1e-3})
    assert cfg.strategy.dp_mode == "server-fixed"
    assert from_flat({"strategy.dp.mode": "client-fixed"}).strategy.dp_mode == "client-fixed"
    assert from_flat({"strategy.dp.mode": "off", "strategy.name": "fedadam"}).strategy.name == "fedadam"


def test_dry_run_prints_the_epsilon_the_planned_run_reaches_and_where_the_target_stops_it(capsys):
    from flowertune.cli import main

    assert main(["run", "--dry-run", "num-server-rounds=20", "strategy.dp.mode=server-fixed",
                 "strategy.dp.noise-multiplier=3.0", "strategy.dp.target-epsilon=4.0"]) == 0
    out = capsys.readouterr().out
    eps, k = planned_epsilon(3.0, 20, 1e-5), rounds_within(3.0, 1e-5, 4.0, 20)
    assert 0 < k < 20 and f"ε = {eps:.4g} at δ = 1e-05 after 20 rounds" in out
    assert f"the run stops after round {k} of 20" in out
    assert main(["run", "--dry-run", "strategy.dp.mode=server-fixed", "strategy.name=fedadam"]) == 2
    assert "needs strategy.name=fedavg or fedprox" in capsys.readouterr().err


# -- client-side clipping (strategy.dp.mode=client-fixed) ------------------------------------------------------
def test_client_fixed_sends_the_norm_and_rejects_an_update_that_skipped_the_clip():
    rng = np.random.default_rng(3)
    clip = 0.5
    s = make_strategy(StrategyConfig(
        fraction_train=1.0, min_train_nodes=1, dp_mode="client-fixed", dp_noise_multiplier=1e-6, dp_clipping_norm=clip))
    assert "dp(client-fixed" in describe(s) and "DifferentialPrivacyClientSideFixedClipping" in describe(s)
    glob = zeros()
    msgs = configure(s, glob, NODES[:4])
    assert all(m.content["config"]["clipping_norm"] == clip for m in msgs)  # what fixedclipping_mod reads

    def update(norm):
        u = {k: rng.standard_normal(v).astype(np.float32) for k, v in BIG.items()}
        return {k: v * np.float32(norm / l2(u)) for k, v in u.items()}

    good = [update(clip * 0.99) for _ in range(3)]
    agg, _ = s.aggregate_train(1, [reply(m, u) for m, u in zip(msgs, [update(clip * 1.01), *good])])
    assert len(s.traffic.rejected) == 1 and "is over strategy.dp.clipping-norm 0.5" in s.traffic.rejected[0]
    assert s.traffic.rejected[0].startswith(f"node {msgs[0].metadata.dst_node_id}:")
    mean = {k: np.mean([u[k] for u in good], axis=0) for k in BIG}
    got = from_array_record(agg)
    assert all(np.allclose(got[k], mean[k], atol=1e-5) for k in BIG)  # the three within the norm, equal weights
    assert find_layer(s, PrivacyLedger).last["dp_noise_multiplier"] == pytest.approx(1e-6 * 3 / 4)


def _train_message(arrays, config):
    from flwr.app import Message, RecordDict

    from flowertune.federation.records import to_array_record as rec

    return Message(RecordDict({"arrays": rec(arrays), "config": ConfigRecord(config)}), dst_node_id=3,
                   message_type="train")


@pytest.mark.parametrize("norm", [0.0, 0.3, 40.0])
def test_the_client_mod_clips_the_fp32_update_when_the_server_asks(norm):
    from flwr.app import Context, Message, MetricRecord, RecordDict

    from flowertune.client_app import dp_clip_mod

    rng = np.random.default_rng(4)
    glob = {k: rng.standard_normal(v).astype(np.float32) for k, v in BIG.items()}
    step = {k: rng.standard_normal(v).astype(np.float32) for k, v in BIG.items()}
    step = {k: v * np.float32(norm / l2(step)) for k, v in step.items()}
    trained = {k: glob[k] + step[k] for k in BIG}

    def handler(msg, ctx):
        return Message(RecordDict({"arrays": to_array_record(trained),
                                   "metrics": MetricRecord({"num-examples": 4, "train_loss": 1.0})}), reply_to=msg)

    ctx = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})
    out = dp_clip_mod(_train_message(glob, {"lr": 0.1, "clipping_norm": 1.0}), ctx, handler)
    assert not out.has_error(), out.error if out.has_error() else None
    sent = from_array_record(out.content["arrays"])
    sent_norm = l2({k: sent[k].astype(np.float64) - glob[k] for k in BIG})
    assert sent_norm <= 1.0 * (1 + 1e-5) and (norm > 1.0 or sent_norm == pytest.approx(norm, abs=1e-4))
    # without the server's norm (DP off): the reply passes untouched
    out = dp_clip_mod(_train_message(glob, {"lr": 0.1}), ctx, handler)
    assert all(np.array_equal(from_array_record(out.content["arrays"])[k], trained[k]) for k in BIG)


def test_client_fixed_needs_the_lossless_codec():
    with pytest.raises(ConfigError, match="client-fixed needs wire.codec=fp32"):
        from_flat({"strategy.dp.mode": "client-fixed", "wire.codec": "delta-int8"})
    with pytest.raises(ConfigError, match="client-fixed needs wire.codec=fp32"):
        from_flat({"strategy.dp.mode": "client-fixed", "wire.codec": "fp16"})
    assert from_flat({"strategy.dp.mode": "server-fixed", "wire.codec": "delta-int8"}).run.wire_codec == "delta-int8"


def test_a_short_round_that_would_pass_the_target_stops_before_its_aggregate_is_noised():
    z, delta = 3.0, 1e-5
    # the target fits two full rounds, but not one full round and one with half the sampled nodes (z/2)
    target = (planned_epsilon(z, 2, delta) + closed_form_rdp_epsilon(1 / math.sqrt(1 / z**2 + 4 / z**2), 1, delta)) / 2
    full_then_short = closed_form_rdp_epsilon(1 / math.sqrt(1 / z**2 + 4 / z**2), 1, delta)
    assert planned_epsilon(z, 2, delta) <= target < full_then_short  # (RDP of z then z/2: 1/z² + 4/z² per α/2)
    s = dp_stack(z=z, delta=delta, target=target)
    glob = zeros()
    msgs = configure(s, glob, NODES[:4], rnd=1)
    s.aggregate_train(1, [reply(m, zeros()) for m in msgs])
    msgs = configure(s, glob, NODES[:4], rnd=2)  # a full round would still fit
    with pytest.raises(PrivacyBudgetReached, match="round 2 would take ε past"):
        s.aggregate_train(2, [reply(m, zeros()) for m in msgs[:2]])  # two of four reply: z/2
    assert find_layer(s, PrivacyLedger).acc.num_releases == 1  # nothing released for round 2


def test_a_resumed_ledger_reports_what_was_spent_before_its_next_release():
    s = dp_stack(z=2.0)
    glob = zeros()
    s.aggregate_train(1, [reply(m, zeros()) for m in configure(s, glob, NODES[:3])])
    meta, arrays = export_state(s)
    fresh = dp_stack(z=2.0)
    import_state(fresh, meta, arrays)
    last = find_layer(fresh, PrivacyLedger).last
    assert last["dp_releases"] == 1 and last["dp_epsilon"] == pytest.approx(planned_epsilon(2.0, 1, 1e-5))


# -- server-side adaptive clipping (Andrew et al. 2021; flowertune's layer over Flower's fixed wrapper) ---------
def adaptive_stack(z=1.0, clip=0.5, quantile=0.5, lr=0.2, count_noise=5.0, delta=1e-5):
    return make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1, dp_mode="server-adaptive",
                                        dp_noise_multiplier=z, dp_clipping_norm=clip, dp_delta=delta,
                                        dp_target_quantile=quantile, dp_clip_learning_rate=lr,
                                        dp_count_noise=count_noise))


def updates_of_norm(glob, norms, rng):
    out = []
    for n in norms:
        d = {k: rng.standard_normal(v.shape) for k, v in glob.items()}
        scale = n / l2(d)
        out.append({k: (glob[k] + scale * d[k]).astype(np.float32) for k in glob})
    return out


def test_the_adaptive_norm_rises_toward_the_quantile_of_the_update_norms_where_flowers_falls():
    """Four updates of norm 1.0, a start at 0.5, target quantile 0.5, almost no noise: the norm climbs to 1.0 and
    stays around it (Flower 1.42's adaptive wrapper took it to 0.30 in five rounds: README, Privacy)."""
    from flowertune.federation.stack.privacy import AdaptiveClipping

    rng = np.random.default_rng(0)
    s = adaptive_stack(z=0.01, clip=0.5, count_noise=0.01)
    layer, ledger = find_layer(s, AdaptiveClipping), find_layer(s, PrivacyLedger)
    glob, norms = zeros(), []
    for r in range(1, 16):
        msgs = configure(s, glob, NODES[:4], rnd=r)
        s.aggregate_train(r, [reply(m, u) for m, u in zip(msgs, updates_of_norm(glob, [1.0] * 4, rng))])
        norms.append(layer.clipping_norm)
        assert ledger.last["dp_clipping_norm"] == pytest.approx(([0.5] + norms)[r - 1])  # the norm the round used
    assert norms[:5] == sorted(norms[:5]) and norms[4] > 0.8  # rising while every update is clipped
    assert 0.85 < norms[-1] < 1.2, norms  # then around the updates' norm
    # a resumed stack continues from the saved norm
    meta, arrays = export_state(s)
    fresh = adaptive_stack(z=0.01, clip=0.5, count_noise=0.01)
    import_state(fresh, meta, arrays)
    assert find_layer(fresh, AdaptiveClipping).clipping_norm == pytest.approx(norms[-1])


def test_the_count_noise_takes_its_share_of_the_budget_and_the_ledger_accounts_the_total():
    """z_update = (z^-2 - (2 sigma_b)^-2)^-1/2 (Andrew et al., Theorem 1), computed here; ε is the one release
    at z per round, as for fixed clipping; the updates are clipped to the round's norm and noised at z_update."""
    from flowertune.federation.stack.privacy import AdaptiveClipping

    z, count_noise, clip = 1.0, 2.0, 0.5
    s = adaptive_stack(z=z, clip=clip, count_noise=count_noise)
    wrapper = find_layer(s, AdaptiveClipping).strategy
    assert wrapper.noise_multiplier == pytest.approx(1 / math.sqrt(1 / z**2 - 1 / (2 * count_noise) ** 2))
    assert "adaptive-clip(quantile 0.5, lr 0.2, count noise 2" in describe(s)
    glob = zeros()
    msgs = configure(s, glob, NODES[:4])
    agg, _ = s.aggregate_train(1, [reply(m, zeros()) for m in msgs])
    noise = np.concatenate([v.ravel() for v in from_array_record(agg).values()]).astype(np.float64)
    want = wrapper.noise_multiplier * clip / 4
    assert abs(noise.std() / want - 1) < 5 / math.sqrt(2 * noise.size)
    ledger = find_layer(s, PrivacyLedger)
    assert ledger.last["dp_epsilon"] == pytest.approx(planned_epsilon(z, 1, 1e-5))
    spy = wrapper.strategy = Spy(wrapper.strategy)  # under Flower's wrapper: what reaches the aggregation
    rng = np.random.default_rng(1)
    msgs = configure(s, glob, NODES[:4], rnd=2)
    s.aggregate_train(2, [reply(m, u) for m, u in zip(msgs, updates_of_norm(glob, [0.1, 1.0, 5.0, 50.0], rng))])
    used = ledger.last["dp_clipping_norm"]
    assert all(l2({k: a[k].astype(np.float64) - glob[k] for k in glob}) <= used * (1 + 1e-4) for a, _ in spy.seen)


def test_client_adaptive_moves_the_norm_it_sends_from_the_clipped_updates_that_come_back():
    """Each node's true update has norm 1.0 (two nodes) or 0.2 (two); each clips it with Flower's
    fixedclipping_mod (flowertune's dp_clip_mod) to the norm the server sent. From a start at 2.0 every update
    comes back shorter than the norm (0 of 4 clipped): the norm falls; once it is under 1.0, two come back at
    its length: counted clipped, and with target quantile 0.5 the norm settles between 0.2 and 1.0. A node that
    sends an update longer than the norm it was sent is rejected, as under client-fixed."""
    from flwr.app import Context, Message, MetricRecord, RecordDict

    from flowertune.client_app import dp_clip_mod
    from flowertune.federation.stack.privacy import AdaptiveClipping

    rng = np.random.default_rng(5)
    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1, dp_mode="client-adaptive",
                                     dp_noise_multiplier=0.01, dp_clipping_norm=2.0, dp_count_noise=0.01,
                                     dp_clip_learning_rate=0.5))
    assert "dp(client-adaptive" in describe(s) and "DifferentialPrivacyClientSideFixedClipping" in describe(s)
    layer, ledger = find_layer(s, AdaptiveClipping), find_layer(s, PrivacyLedger)
    glob, sent_norms = zeros(), []
    ctx = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})
    for r in range(1, 21):
        msgs = configure(s, glob, NODES[:4], rnd=r)
        sent = msgs[0].content["config"]["clipping_norm"]
        assert all(m.content["config"]["clipping_norm"] == sent for m in msgs)
        sent_norms.append(sent)
        replies = []
        for m, u in zip(msgs, updates_of_norm(glob, [1.0, 1.0, 0.2, 0.2], rng)):
            def handler(msg, _ctx, u=u):
                return Message(RecordDict({"arrays": to_array_record(u),
                                           "metrics": MetricRecord({"num-examples": 4, "train_loss": 1.0})}),
                               reply_to=msg)
            out = dp_clip_mod(m, ctx, handler)
            replies.append(out)
        s.aggregate_train(r, replies)
        assert s.traffic.rejected == []
        expected = 0 if sent >= 1.0 * (1 + 1e-3) else 2  # the clipped ones: the two of norm 1.0 once under it
        assert layer.last_unclipped == pytest.approx((4 - expected) / 4, abs=0.05), (r, sent)
    assert sent_norms[:4] == sorted(sent_norms[:4], reverse=True) and sent_norms[3] < 2.0  # falling from 2.0
    assert 0.2 < sent_norms[-1] < 1.05, sent_norms  # settled where half the updates are clipped
    assert ledger.last["dp_clipping_norm"] == pytest.approx(sent_norms[-1])
    # a node that skips the clip: rejected with the reason
    msgs = configure(s, glob, NODES[:4], rnd=21)
    norm = msgs[0].content["config"]["clipping_norm"]
    long = updates_of_norm(glob, [norm * 1.5], rng)[0]
    s.aggregate_train(21, [reply(msgs[0], long), *[reply(m, glob) for m in msgs[1:]]])
    assert len(s.traffic.rejected) == 1 and "client-side clipping skipped" in s.traffic.rejected[0]


@pytest.mark.parametrize("flat,problem", [
    ({"strategy.dp.count-noise": 0.5}, "count-noise must be over strategy.dp.noise-multiplier / 2 = 0.5"),
    ({"strategy.dp.target-quantile": 1.0}, "target-quantile must be in (0, 1)"),
    ({"strategy.dp.target-quantile": 0.0}, "target-quantile must be in (0, 1)"),
    ({"strategy.dp.clip-learning-rate": 0.0}, "clip-learning-rate must be a finite number > 0"),
    ({"strategy.secagg.mode": "secagg+"}, "use strategy.dp.mode=client-fixed"),
])
def test_adaptive_config_values_past_each_bound_are_refused(flat, problem):
    with pytest.raises(ConfigError) as exc:
        from_flat({"strategy.dp.mode": "server-adaptive", **flat})
    assert problem in str(exc.value)
    assert from_flat({"strategy.dp.mode": "server-adaptive", "strategy.dp.count-noise": 0.5001}).strategy.dp_mode


def test_client_adaptive_is_refused_where_the_server_cannot_see_the_clipped_updates():
    with pytest.raises(ConfigError, match="client-adaptive needs wire.codec=fp32"):
        from_flat({"strategy.dp.mode": "client-adaptive", "wire.codec": "delta-int8"})
    with pytest.raises(ConfigError, match="cannot count the clipped ones: use strategy.dp.mode=client-fixed"):
        from_flat({"strategy.dp.mode": "client-adaptive", "wire.codec": "fp32", "strategy.secagg.mode": "secagg+"})
    with pytest.raises(ConfigError, match="count-noise must be over"):
        from_flat({"strategy.dp.mode": "client-adaptive", "wire.codec": "fp32", "strategy.dp.count-noise": 0.4})
    assert from_flat({"strategy.dp.mode": "client-adaptive", "wire.codec": "fp32"}).strategy.dp_mode == "client-adaptive"

"""One participant cannot stop, capture or poison a round: each protection attacked at the strategy level.

The reply gate (any metric record, any payload: accepted or rejected, never an exception), the payload bound
before decoding, the num-examples cap, the global guard, update-norm bounding, Flower's robust aggregators,
check-in and initial-adapter validation, error replies without tracebacks, and the node bookkeeping that
forgets nodes that are gone. The same attacks through Flower's runtime: ``tests/e2e`` and
``benchmarks/attacks.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowertune.config import Config, ConfigError, StrategyConfig, from_flat
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.server_loop import NodeDirectory, RunStopped, check_in, check_initial_adapter, forget_gone
from flowertune.federation.stack.base import aggregator, export_aggregator, find_layer
from flowertune.federation.stack.codec import WireCodec
from flowertune.federation.stack.direction import DirectionCheck
from flowertune.federation.stack.normbound import NormBound
from flowertune.federation.strategies import describe, make_strategy
from flowertune.wire import get_codec
from tests.unit.test_strategies import SHAPES, FakeGrid, arrays

NODES = list(range(11, 19))  # 8 nodes


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def stack(codec: str = "fp32", rows: int | None = None, **strategy):
    s = make_strategy(StrategyConfig(**{"fraction_train": 1.0, "min_train_nodes": 1, **strategy}), codec)
    if rows is not None:
        s.ctx.rows_of = lambda node: rows
    return s


def configure(s, glob=None, nodes=NODES, rnd=1):
    glob = arrays(0.0) if glob is None else glob
    return list(s.configure_train(rnd, to_array_record(glob), ConfigRecord({"lr": 0.1}), FakeGrid(nodes)))


def honest(rng: np.random.Generator, scale: float = 0.01, base: float = 0.0) -> dict[str, np.ndarray]:
    return {k: (base + scale * rng.standard_normal(shape)).astype(np.float32) for k, shape in SHAPES.items()}


def reply(to: Message, arrs: dict | None = None, metrics: dict | None = None, **extra) -> Message:
    content = RecordDict({"arrays": to_array_record(arrs if arrs is not None else arrays(0.1)),
                          "metrics": MetricRecord(metrics if metrics is not None
                                                  else {"num-examples": 10, "train_loss": 1.0})})
    for k, v in extra.items():
        content[k] = v
    return Message(content=content, reply_to=to)


def l2(a: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in a.values())))


# -- the gate, attacked -------------------------------------------------------------------------------------
ATTACKS = {
    "list num-examples": {"metrics": {"num-examples": [10, 10], "train_loss": 1.0}},
    "list train_loss": {"metrics": {"num-examples": 10, "train_loss": [1.0]}},
    "inf num-examples": {"metrics": {"num-examples": float("inf"), "train_loss": 1.0}},
    "nan train_loss": {"metrics": {"num-examples": 10, "train_loss": float("nan")}},
    "zero num-examples": {"metrics": {"num-examples": 0, "train_loss": 1.0}},
    "no num-examples": {"metrics": {"train_loss": 1.0}},
    "second metric record": {"other": MetricRecord({"x": 1.0})},
    "second array record": {"other": ArrayRecord({"x": Array(np.zeros(3, np.float32))})},
    "config record": {"other": ConfigRecord({"x": "y"})},
    "empty payload": {"arrs": {}},
    "NaN update": {"arrs": {**arrays(0.1), "a.lora_A.weight": np.full((2, 3), np.nan, np.float32)}},
    "wrong shape": {"arrs": {**arrays(0.1), "a.lora_A.weight": np.zeros((3, 3), np.float32)}},
    "unknown tensor": {"arrs": {**arrays(0.1), "z.lora_A.weight": np.zeros((2, 3), np.float32)}},
    "fp64 payload": {"arrs": {k: v.astype(np.float64) for k, v in arrays(0.1).items()}},
    "oversize payload": {"arrs": {**arrays(0.1), "pad": np.zeros(10_000, np.float32)}},
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_malformed_reply_is_rejected_with_its_reason_and_the_round_goes_on(attack):
    s = stack()
    msgs = configure(s)
    spec = dict(ATTACKS[attack])
    replies = [reply(msgs[0], **spec)] + [reply(m, arrays(1.0)) for m in msgs[1:]]
    agg, metrics = s.aggregate_train(1, replies)
    assert s.traffic.accepted == 7 and len(s.traffic.rejected) == 1, (s.traffic.rejected, s.traffic.notes)
    assert s.traffic.rejected[0].startswith(f"node {NODES[0]}: ")
    np.testing.assert_allclose(from_array_record(agg)["a.lora_A.weight"], 1.0)  # the honest ones only
    assert metrics["train_loss"] == pytest.approx(1.0)


def test_gpu_and_cpu_nodes_aggregate_together_and_unknown_metrics_are_dropped_and_noted():
    """Honest nodes with different metric keys (a CUDA node reports peak_cuda_mb) used to stop the round."""
    s = stack()
    msgs = configure(s)
    base = {"num-examples": 10, "train_loss": 1.0}
    replies = [reply(msgs[0], metrics={**base, "peak_cuda_mb": 1234.0}),
               reply(msgs[1], metrics={**base, "something_new": 3.0})] + [reply(m) for m in msgs[2:]]
    agg, metrics = s.aggregate_train(1, replies)
    assert agg is not None and s.traffic.accepted == 8 and not s.traffic.rejected
    assert s.traffic.notes == [f"node {msgs[1].metadata.dst_node_id}: dropped unknown metrics ['something_new']"]
    cuda_node = msgs[0].metadata.dst_node_id
    assert "something_new" not in metrics and s.traffic.client_metrics[cuda_node]["peak_cuda_mb"] == 1234.0


@pytest.mark.parametrize("claimed", [1e9, 2**40])
def test_num_examples_is_capped_at_the_declared_rows_so_one_node_cannot_capture_the_global(claimed):
    s = stack(rows=100, norm_bound_median=0.0)  # the cap alone (the median norm bound would also scale it)
    msgs = configure(s)
    replies = [reply(msgs[0], arrays(9.0), {"num-examples": claimed, "train_loss": 1.0})]
    replies += [reply(m, arrays(1.0), {"num-examples": 100, "train_loss": 1.0}) for m in msgs[1:]]
    agg, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(from_array_record(agg)["a.lora_A.weight"], (9.0 + 7 * 1.0) / 8, rtol=1e-6)
    assert s.traffic.notes == [f"node {NODES[0]}: num-examples {claimed:.0f} capped at 100"]
    # and strategy.max-examples-per-node caps below what a node declares
    s = stack(rows=10**6, max_examples_per_node=50)
    msgs = configure(s)
    s.aggregate_train(1, [reply(m, metrics={"num-examples": 10**6, "train_loss": 1.0}) for m in msgs])
    assert all(m["num-examples"] == 50 for m in s.traffic.client_metrics.values())


def test_a_payload_over_the_adapter_size_is_refused_before_it_is_decoded(monkeypatch):
    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1), "delta-topk-int8", fraction=0.1)
    msgs = configure(s)
    decoded = []
    wire = find_layer(s, WireCodec)
    monkeypatch.setattr(wire.codec, "decode", lambda *a: decoded.append(1) or (_ for _ in ()).throw(AssertionError))
    n = 10**6  # entries aimed at a 6-element tensor
    bomb = {"a.lora_A.weight::q": np.ones(n, np.int8), "a.lora_A.weight::idx": np.zeros(n, np.uint8),
            "a.lora_A.weight::scale": np.ones(1, np.float32)}
    s.aggregate_train(1, [reply(msgs[0], bomb)])
    assert not decoded and "more than the" in s.traffic.rejected[0]


def test_topk_refuses_repeated_positions_and_too_many_entries():
    codec = get_codec("delta-topk-int8", fraction=0.5)
    ref = {"t": np.zeros(6, np.float32)}
    base = {"t::scale": np.ones(1, np.float32)}
    with pytest.raises(ValueError, match="repeats a position"):
        codec.decode({**base, "t::q": np.ones(3, np.int8), "t::idx": np.array([1, 0, 0], np.uint8)}, ref)
    with pytest.raises(ValueError, match="entries for the 6"):
        codec.decode({**base, "t::q": np.ones(9, np.int8), "t::idx": np.ones(9, np.uint8)}, ref)


_metric_values = st.one_of(st.integers(-2**62, 2**62), st.floats(allow_nan=True, allow_infinity=True),
                           st.lists(st.integers(-5, 5), max_size=3), st.lists(st.floats(-1, 1), max_size=3))
_metric_keys = st.sampled_from(["num-examples", "train_loss", "tokens_per_s", "peak_cuda_mb", "x", "partition-id"])
_dtypes = st.sampled_from([np.float32, np.float16, np.float64, np.int8, np.uint8])
_payload = st.dictionaries(
    st.sampled_from([*SHAPES, "z", "a.lora_A.weight::q", "a.lora_A.weight::scale", "a.lora_A.weight::idx"]),
    st.tuples(st.lists(st.integers(0, 7), min_size=0, max_size=2), _dtypes,
              st.floats(allow_nan=True, allow_infinity=True, width=32)),
    max_size=4)


def _array(spec):
    shape, dtype, value = spec
    with np.errstate(invalid="ignore", over="ignore"):
        return np.full(tuple(shape), value, dtype=np.float64).astype(dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metrics=st.dictionaries(_metric_keys, _metric_values, max_size=5), payload=_payload,
       codec=st.sampled_from(["fp32", "delta-int8", "delta-topk-int8"]), extra=st.booleans())
def test_the_gate_never_raises_whatever_a_reply_holds(metrics, payload, codec, extra):
    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1), codec)
    msgs = configure(s, nodes=NODES[:3])
    content = RecordDict({"arrays": to_array_record({k: _array(v) for k, v in payload.items()}),
                          "metrics": MetricRecord(metrics)})
    if extra:
        content["more"] = MetricRecord({"x": 1.0})
    hostile = Message(content=content, reply_to=msgs[0])
    c = get_codec(codec, **({"fraction": 0.5} if codec == "delta-topk-int8" else {}))
    good = [reply(m, c.encode(arrays(1.0), arrays(0.0), None)[0]) for m in msgs[1:]]
    agg, _ = s.aggregate_train(1, [hostile, *good])  # never raises
    assert s.traffic.accepted + len(s.traffic.rejected) == 3
    assert agg is not None and all(np.isfinite(v).all() for v in from_array_record(agg).values())


# -- the global guard, norm bounding, robust aggregation ------------------------------------------------------
@pytest.mark.parametrize(("name", "growth"), [("fedavg", 10.0), ("fedadam", 2.0)])
def test_the_global_guard_drops_a_blown_up_round_and_puts_the_optimizer_state_back(name, growth):
    """FedAvg takes a x1e6 update as it is; FedAdam's step is bounded by eta, so a tighter growth limit shows it."""
    s = stack(name=name, eta=1.0, max_global_growth=growth)
    rng = np.random.default_rng(0)
    glob = honest(rng, 0.1)
    s.aggregate_train(1, [reply(m, {k: v + 0.01 for k, v in glob.items()}) for m in configure(s, glob)])
    kept_state = export_aggregator(aggregator(s))
    msgs = configure(s, glob, rnd=2)
    agg, metrics = s.aggregate_train(2, [reply(m, {k: v * 1e6 for k, v in glob.items()}) for m in msgs])
    assert "norm" in s.traffic.dropped and metrics is None
    assert all(np.array_equal(v, glob[k]) for k, v in from_array_record(agg).items())  # the last good global
    after = export_aggregator(aggregator(s))
    assert after[0] == kept_state[0] and all(np.array_equal(after[1][k], kept_state[1][k]) for k in kept_state[1])


@settings(max_examples=25, deadline=None)
@given(scales=st.lists(st.floats(1e-4, 1e4), min_size=2, max_size=6), adaptive=st.booleans(),
       name=st.sampled_from(["fedavg", "fedadam", "fedmedian"]))
def test_norm_bounding_holds_on_every_update_the_aggregator_sees(scales, adaptive, name):
    bound = 0.5
    s = stack(name=name, norm_bound=bound, norm_bound_adaptive=adaptive, min_cosine_to_median=-1.0)  # the bound alone
    layer = find_layer(s, NormBound)
    seen = []
    inner = layer.strategy
    layer.strategy = type("Spy", (), {
        "aggregate_train": lambda self, r, rs: (seen.extend(from_array_record(m.content["arrays"]) for m in rs)
                                                or inner.aggregate_train(r, rs)),
        "configure_train": lambda self, *a: inner.configure_train(*a),
        "strategy": inner})()
    rng = np.random.default_rng(1)
    msgs = configure(s, nodes=NODES[:len(scales)])
    s.aggregate_train(1, [reply(m, honest(rng, sc)) for m, sc in zip(msgs, scales)])
    assert len(seen) == len(scales)
    assert all(l2(a) <= bound * (1 + 1e-5) for a in seen)  # the global was 0: the update is the reply
    assert "norm-bound" in describe(s)


@pytest.mark.parametrize("nodes", [3, 8])
def test_the_default_median_norm_bound_cuts_a_scaled_update_to_twice_the_median(nodes):
    rng = np.random.default_rng(4)
    updates = [honest(rng, 0.01) for _ in range(nodes)]
    attacker = {k: 100 * v for k, v in updates[0].items()}
    s = stack()  # the defaults
    layer = find_layer(s, NormBound)
    assert layer.median == 2.0 and layer.bound == 0.0
    msgs = configure(s, nodes=NODES[:nodes])
    agg, _ = s.aggregate_train(1, [reply(m, u) for m, u in zip(msgs, [attacker, *updates[1:]])])
    median = float(np.median([l2(u) for u in [attacker, *updates[1:]]]))
    assert max(layer.last_norms) == pytest.approx(l2(attacker), rel=1e-5)
    want = f"node {msgs[0].metadata.dst_node_id}: update norm {l2(attacker):.4g} scaled to the bound {2 * median:.4g}"
    assert s.traffic.notes == [want]
    # FedAvg of the bounded updates: the attacker counts as an update of norm 2 x median in its own direction
    bounded = {k: attacker[k] * (2 * median / l2(attacker)) for k in SHAPES}
    expect = {k: np.mean([bounded[k], *[u[k] for u in updates[1:]]], axis=0) for k in SHAPES}
    got = from_array_record(agg)
    assert all(np.allclose(got[k], expect[k], atol=1e-6) for k in SHAPES)
    # honest updates of similar size are left as they are (the default costs nothing there)
    s = stack()
    s.aggregate_train(1, [reply(m, u) for m, u in zip(configure(s, nodes=NODES[:nodes]), updates)])
    assert s.traffic.notes == []


def correlated(rng: np.random.Generator, n: int, spread: float = 0.5) -> list[dict[str, np.ndarray]]:
    """``n`` honest updates: one shared direction (similar data) plus each node's own noise."""
    common = honest(rng, 0.01)
    return [{k: (common[k] + spread * honest(rng, 0.01)[k]).astype(np.float32) for k in SHAPES} for _ in range(n)]


def test_a_sign_flipped_update_is_rejected_by_the_direction_check_and_honest_ones_pass():
    rng = np.random.default_rng(6)
    updates = correlated(rng, 8)
    flipped = {k: -3 * v for k, v in updates[0].items()}  # flipped (and scaled, to also pull on the mean)
    s = stack()  # the defaults
    layer = find_layer(s, DirectionCheck)
    msgs = configure(s)
    agg, _ = s.aggregate_train(1, [reply(m, u) for m, u in zip(msgs, [flipped, *updates[1:]])])
    attacker = msgs[0].metadata.dst_node_id
    assert len(s.traffic.rejected) == 1 and s.traffic.rejected[0].startswith(f"node {attacker}: update points away")
    assert s.traffic.accepted == 7 and attacker not in s.traffic.accepted_nodes
    honest_mean = {k: np.mean([u[k] for u in updates[1:]], axis=0) for k in SHAPES}
    got = from_array_record(agg)
    assert all(np.allclose(got[k], honest_mean[k], atol=1e-7) for k in SHAPES)  # exactly the other seven
    # the cosines, computed here on the flattened updates
    flat = [np.concatenate([u[k].ravel() for k in SHAPES]).astype(np.float64) for u in [flipped, *updates[1:]]]
    med = np.median(np.stack(flat), axis=0)
    want = [float(f @ med / np.linalg.norm(f) / np.linalg.norm(med)) for f in flat]
    assert sorted(layer.last_cosines) == pytest.approx(sorted(want), abs=1e-9)
    # honest updates of similar data: none is rejected
    s = stack()
    s.aggregate_train(1, [reply(m, u) for m, u in zip(configure(s), updates)])
    assert s.traffic.rejected == [] and s.traffic.accepted == 8


def test_the_direction_check_needs_three_replies_and_its_bound_is_checked():
    rng = np.random.default_rng(7)
    a = honest(rng, 0.01)
    s = stack()
    msgs = configure(s, nodes=NODES[:2])
    s.aggregate_train(1, [reply(msgs[0], a), reply(msgs[1], {k: -v for k, v in a.items()})])
    assert s.traffic.rejected == []  # two replies: either one would set the median
    for bad in (1.0, -1.01, float("nan")):
        with pytest.raises(ConfigError, match="strategy.min-cosine-to-median"):
            from_flat({"strategy.min-cosine-to-median": bad})
    # a zero median update (here u, -u and no change): no direction to compare with, nobody rejected
    s = stack()
    msgs = configure(s, nodes=NODES[:3])
    s.aggregate_train(1, [reply(msgs[0], a), reply(msgs[1], {k: -v for k, v in a.items()}),
                          reply(msgs[2], arrays(0.0))])
    assert s.traffic.rejected == [] and s.traffic.accepted == 3
    with pytest.raises(LookupError):  # -1: off
        find_layer(stack(min_cosine_to_median=-1.0), DirectionCheck)
    assert find_layer(stack(min_cosine_to_median=0.5), DirectionCheck).min_cosine == 0.5


def test_the_median_norm_bound_needs_three_replies_and_a_multiple_of_at_least_one():
    rng = np.random.default_rng(5)
    a, b = honest(rng, 0.01), honest(rng, 0.01)
    s = stack()
    msgs = configure(s, nodes=NODES[:2])
    s.aggregate_train(1, [reply(msgs[0], {k: 100 * v for k, v in a.items()}), reply(msgs[1], b)])
    assert s.traffic.notes == []  # with two replies the attacker would set the median itself: not applied
    for bad in (0.99, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="strategy.norm-bound-median"):
            from_flat({"strategy.norm-bound-median": bad})
    assert from_flat({"strategy.norm-bound-median": 1.0}).strategy.norm_bound_median == 1.0
    with pytest.raises(LookupError):  # off: no layer
        find_layer(stack(norm_bound_median=0.0), NormBound)


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_without_an_attacker_median_and_trimmed_mean_stay_close_to_fedavg(name):
    rng = np.random.default_rng(2)
    updates = [honest(rng, 0.01, base=1.0) for _ in NODES]
    out = {}
    for strategy in ("fedavg", name):
        s = stack(name=strategy)
        agg, _ = s.aggregate_train(1, [reply(m, u) for m, u in zip(configure(s), updates)])
        out[strategy] = from_array_record(agg)
    diff = l2({k: out[name][k] - out["fedavg"][k] for k in SHAPES})
    spread = l2({k: updates[0][k] - out["fedavg"][k] for k in SHAPES})
    assert diff < 0.5 * spread


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"])
def test_a_scaled_or_sign_flipped_update_moves_robust_aggregators_far_less_than_fedavg(name):
    rng = np.random.default_rng(3)
    updates = [honest(rng, 0.01, base=1.0) for _ in NODES]
    honest_mean = {k: np.mean([u[k] for u in updates[1:]], axis=0) for k in SHAPES}
    for attack in ({k: 100 * v for k, v in updates[0].items()}, {k: -v for k, v in updates[0].items()}):
        err = {}
        for strategy in ("fedavg", name):
            s = stack(name=strategy, num_malicious_nodes=1, norm_bound_median=0.0,
                      min_cosine_to_median=-1.0)  # the aggregators alone
            agg, _ = s.aggregate_train(1, [reply(m, u) for m, u in zip(configure(s), [attack, *updates[1:]])])
            err[strategy] = l2({k: from_array_record(agg)[k] - honest_mean[k] for k in SHAPES})
        assert err[name] < 0.2 * err["fedavg"], err


# -- check-in and the initial adapter --------------------------------------------------------------------------
def _info(**values) -> Message:
    msg = Message(RecordDict({"config": ConfigRecord({"want": "node-info"})}), dst_node_id=5,
                  message_type="query")
    return Message(RecordDict({"info": ConfigRecord(values)}), reply_to=msg)


def test_check_in_refuses_garbage_and_duplicates_with_a_reason():
    assert check_in(_info(**{"partition-id": 3, "rows": 40}), set()) == (3, 40, None)
    assert "no reply" in check_in(None, set())
    assert "duplicate" in check_in(_info(**{"partition-id": 3, "rows": 40}), {3})
    assert "not a non-negative integer" in check_in(_info(**{"partition-id": "x", "rows": 4}), set())
    assert "not a non-negative integer" in check_in(_info(**{"partition-id": -1, "rows": 4}), set())
    assert "not a positive integer" in check_in(_info(**{"partition-id": 1, "rows": "many"}), set())
    assert "not a positive integer" in check_in(_info(**{"partition-id": 1, "rows": 0}), set())  # no escape from the cap
    assert "without its 'info'" in check_in(_info(**{"partition-id": 1}), set())  # rows are part of the check-in
    bare = Message(RecordDict({"config": ConfigRecord({"want": "node-info"})}), dst_node_id=5, message_type="query")
    assert "without its 'info'" in check_in(Message(RecordDict({}), reply_to=bare), set())


def test_a_node_refused_as_a_duplicate_checks_in_again_once_the_holder_is_gone():
    class Grid:
        def __init__(self):
            self.nodes, self.asked = [1, 2], []

        def get_node_ids(self):
            return list(self.nodes)

        def send_and_receive(self, msgs, timeout):
            self.asked += [m.metadata.dst_node_id for m in msgs]
            return [Message(RecordDict({"info": ConfigRecord({"partition-id": 0, "rows": 9})}), reply_to=m)
                    for m in msgs]

    grid, directory = Grid(), NodeDirectory(timeout=1.0)
    directory.refresh(grid)
    assert directory.partition == {1: 0} and 2 in directory.duplicate and "duplicate" in directory.take_errors()[0]
    directory.refresh(grid)
    assert grid.asked == [1, 2]  # not asked again while node 1 holds partition 0
    grid.nodes = [2]
    s = stack("delta-int8")
    find_layer(s, WireCodec).downlink.copies[1] = object()
    forget_gone(s, directory, grid)
    assert 1 not in find_layer(s, WireCodec).downlink.copies  # the mirror does not keep gone nodes
    directory.refresh(grid)
    assert directory.partition == {2: 0}


def test_the_initial_adapter_is_checked_against_the_configured_rank():
    cfg = from_flat({**Config().to_flat(), "model.lora.peft-lora-r": 2})
    good = to_array_record(arrays(0.1))
    assert check_initial_adapter(good, {"r": 2}, cfg) is None
    assert "r=8" in check_initial_adapter(good, {"r": 8}, cfg)
    assert "finite" in check_initial_adapter(to_array_record({**arrays(0.1), "a.lora_A.weight": np.full(
        (2, 3), np.inf, np.float32)}), {"r": 2}, cfg)
    cfg3 = from_flat({**Config().to_flat(), "model.lora.peft-lora-r": 3})
    assert "rank 3" in check_initial_adapter(good, {"r": 3}, cfg3)
    assert "no adapter arrays" in check_initial_adapter(ArrayRecord(), {"r": 2}, cfg)
    with pytest.raises(RunStopped):
        from flowertune.federation.server_loop import initial_adapter

        class Grid:
            def send_and_receive(self, msgs, timeout):
                return [Message(RecordDict({"arrays": good}), reply_to=msgs[0])]  # no adapter config

        initial_adapter(Grid(), 1, cfg)


# -- error replies ------------------------------------------------------------------------------------------
def test_an_error_reply_carries_the_type_and_a_fixed_line_never_the_traceback_or_data(caplog):
    from flowertune.client_app import error_mod

    train = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=5, message_type="train")
    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})

    def leaky(msg, context):
        raise ValueError("could not parse row 17 of /home/alice/patients.csv: 'Jane Doe, 1970-01-01'")

    with caplog.at_level(logging.ERROR):
        out = error_mod(train, ctx, leaky)
    assert out.has_error() and out.error.reason == "ValueError in the train handler (details in this node's log)"
    assert "alice" in caplog.text and "Traceback" in caplog.text  # the node's own log has it all

    def curated(msg, context):
        raise ConfigError("partition 2 of 3 of 'sample:medical' has no rows; lower num-supernodes\nsecond line")

    assert error_mod(train, ctx, curated).error.reason == ("ConfigError: partition 2 of 3 of 'sample:medical' has "
                                                           "no rows; lower num-supernodes")

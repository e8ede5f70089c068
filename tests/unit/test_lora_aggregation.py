"""LoRA-aware aggregation (``strategy.aggregation``): the algebra against dense numpy, and the layers through the
server's real strategy stack with the clients' own wire functions.

* ``exact``: the aggregate's product ``B A`` is the weighted mean of the nodes' products when that fits the
  rank, else its best rank-r approximation (Eckart–Young, checked against numpy's SVD of the dense mean).
* ``freeze-a``: ``A`` never leaves the global (a node that changes it is overruled and noted), ``B`` is
  averaged, and with a delta codec no ``A`` travels either way after a node's first round.
* Combinations that cannot work are refused when the config is resolved.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flowertune.config import ConfigError, StrategyConfig, resolve
from flowertune.federation import wire_client
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.strategies import describe, make_strategy
from flowertune.models.lora_algebra import exact_mean, fp16_exact, lora_pairs
from tests.unit.test_strategy_parity import NODES, SHAPES, FakeGrid, task_identity  # noqa: F401  (fixture)

A0, B0 = "m.0.q_proj.lora_A.weight", "m.0.q_proj.lora_B.weight"


def dense_mean(factors, weights) -> np.ndarray:
    w = np.asarray(weights, np.float64) / np.sum(weights)
    return sum(wi * np.asarray(b, np.float64) @ np.asarray(a, np.float64) for wi, (b, a) in zip(w, factors))


def truncated(m: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


@st.composite
def nodes_factors(draw, same_rank: bool = False):
    out_dim, in_dim = draw(st.integers(6, 24)), draw(st.integers(6, 24))
    k = draw(st.integers(1, 4))
    r = draw(st.integers(1, 4))
    ranks = [r] * k if same_rank else [draw(st.integers(1, 4)) for _ in range(k)]
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    factors = [(rng.standard_normal((out_dim, ri)).astype(np.float32),
                rng.standard_normal((ri, in_dim)).astype(np.float32)) for ri in ranks]
    weights = [draw(st.integers(1, 100)) for _ in range(k)]
    return factors, weights


@settings(max_examples=60, deadline=None)
@given(nodes_factors())
def test_exact_reproduces_the_weighted_mean_of_the_products_when_it_fits_the_rank(case):
    factors, weights = case
    total = sum(a.shape[0] for _, a in factors)
    out_dim, in_dim = factors[0][0].shape[0], factors[0][1].shape[1]
    rank = min(total, out_dim, in_dim)
    assume(total <= min(out_dim, in_dim))
    b, a = exact_mean(factors, weights, rank)
    want = dense_mean(factors, weights)
    assert b.shape == (out_dim, rank) and a.shape == (rank, in_dim) and b.dtype == a.dtype == np.float32
    np.testing.assert_allclose(b.astype(np.float64) @ a, want, atol=1e-4 * max(1.0, np.abs(want).max()))


@settings(max_examples=60, deadline=None)
@given(nodes_factors(same_rank=True), st.integers(1, 4))
def test_the_svd_reprojection_is_the_best_rank_r_approximation(case, rank):
    """Eckart–Young: ``B A`` equals numpy's truncated SVD of the dense mean (unique when the singular values at
    the cut differ), and no rank-r matrix is closer; ``A``'s rows are orthonormal."""
    factors, weights = case
    m = dense_mean(factors, weights)
    s = np.linalg.svd(m, compute_uv=False)
    rank = min(rank, *m.shape)
    assume(rank >= len(s) or s[rank - 1] - s[rank] > 1e-3 * s[0])
    b, a = exact_mean(factors, weights, rank)
    got = b.astype(np.float64) @ a
    np.testing.assert_allclose(got, truncated(m, rank), atol=1e-4 * max(1.0, s[0]))
    assert np.linalg.norm(m - got) == pytest.approx(np.sqrt(np.sum(s[rank:] ** 2)), rel=1e-3, abs=1e-4)
    k = min(rank, np.linalg.matrix_rank(m))
    np.testing.assert_allclose(a[:k] @ a[:k].T, np.eye(k), atol=1e-5)


def test_sign_follows_the_previous_a_and_a_short_stack_is_completed_with_trainable_directions():
    rng = np.random.default_rng(1)
    b, a = rng.standard_normal((8, 2)), rng.standard_normal((2, 10))
    prev = rng.standard_normal((4, 10))
    b_new, a_new = exact_mean([(b, a)], [1.0], 4, previous_a=prev)
    assert np.all(np.einsum("ij,ij->i", a_new, prev) >= 0)
    np.testing.assert_allclose(b_new.astype(np.float64) @ a_new, b @ a, atol=1e-5)
    # the stack has rank 2 < 4: rows 3-4 of A are orthonormal completions (not zero: they can still train)
    np.testing.assert_allclose(a_new @ a_new.T, np.eye(4), atol=1e-5)
    assert np.all(b_new[:, 2:] == 0)


@pytest.mark.parametrize("weights", [[1, -1], [0, 0], [1, float("nan")], [1]])
def test_bad_weights_are_refused(weights):
    f = (np.ones((4, 1)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="weights"):
        exact_mean([f, f], weights, 1)


def test_pairs_need_both_factors():
    assert lora_pairs(SHAPES) == [(A0, B0), ("m.0.v_proj.lora_A.weight", "m.0.v_proj.lora_B.weight")]
    with pytest.raises(ValueError, match="no lora_B partner"):
        lora_pairs([A0])
    with pytest.raises(ValueError, match="exceeds"):
        exact_mean([(np.ones((3, 1)), np.ones((1, 40)))], [1], 4)


# -- the layers in the server's stack ------------------------------------------------------------------------
def initial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: fp16_exact(rng.standard_normal(s) * 0.1) if "lora_A" in k else np.zeros(s, np.float32)
            for k, s in SHAPES.items()}


def contexts() -> dict[int, Context]:
    return {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES}


def reply(msg: Message, context: Context, rnd: int, train_a: bool, log: list) -> Message:
    """A node with its own wire functions: decodes, moves B (and A if ``train_a``), encodes; the payload it sent
    and what it trained are logged."""
    codec = wire_client.codec_of(msg)
    got = wire_client.receive(msg, context, codec)
    rng = np.random.default_rng(100 * context.node_id + rnd)
    trained = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
               if ("lora_B" in k or train_a) else v for k, v in got.items()}
    payload = wire_client.send(codec, trained, got, context)
    n = int(rng.integers(5, 50))
    log.append({"node": context.node_id, "down": list(msg.content["arrays"].keys()), "up": list(payload.keys()),
                "trained": trained, "n": n})
    return Message(RecordDict({"arrays": payload, "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0})}),
                   reply_to=msg)


def quiet(**kw) -> StrategyConfig:
    """All 4 nodes every round; no data-dependent rejection (random updates may point anywhere)."""
    return StrategyConfig(fraction_train=1.0, min_train_nodes=2, min_cosine_to_median=-1, norm_bound_median=0,
                          seed=3, **kw)


def test_freeze_a_keeps_a_sends_no_a_after_first_contact_and_averages_b():
    s = make_strategy(quiet(name="fedavg", aggregation="freeze-a"), "delta-int8", rank=4)
    assert "freeze-a" in describe(s)
    ctx = contexts()
    hostile = NODES[0]  # it changes its A too
    g0 = initial()
    arrays = g0
    for rnd in (1, 2, 3):
        log: list = []
        msgs = list(s.configure_train(rnd, to_array_record(arrays), ConfigRecord({"server-round": rnd}), FakeGrid()))
        replies = [reply(m, ctx[m.metadata.dst_node_id], rnd, m.metadata.dst_node_id == hostile, log) for m in msgs]
        agg, _ = s.aggregate_train(rnd, replies)
        out = from_array_record(agg)
        for k in SHAPES:
            if "lora_A" in k:
                assert np.array_equal(out[k], g0[k]), (rnd, k)  # bit for bit the initial A
            else:
                w = np.array([e["n"] for e in log], np.float64)
                want = sum(wi * e["trained"][k].astype(np.float64) for wi, e in zip(w / w.sum(), log))
                assert np.abs(out[k] - want).max() < 0.02 * np.abs(want).max()  # int8 uplink of B
        assert s.traffic.accepted == 4
        assert [n for n in s.traffic.notes if "frozen lora_A" in n] == [(f"node {hostile}: 2 frozen lora_A array(s) "
                                                                        "changed; the global A kept")]
        honest = [e for e in log if e["node"] != hostile]
        assert all(not any("lora_A" in k for k in e["up"]) for e in honest), rnd
        has_a_down = [any("lora_A" in k for k in e["down"]) for e in honest]
        assert has_a_down == ([True] * 3 if rnd == 1 else [False] * 3), rnd  # the full adapter once, then B only
        arrays = out


def test_exact_aggregates_the_products_and_averages_the_rest():
    """One extra array that is not a LoRA factor (a trained bias, say) is FedAvg's weighted mean."""
    s = make_strategy(quiet(name="fedprox", aggregation="exact"), "fp32", rank=4)
    assert "exact(mean of B·A, SVD to r=4)" in describe(s)
    g = {**initial(), "m.0.bias": np.zeros(3, np.float32)}
    ctx, log = contexts(), []
    msgs = list(s.configure_train(1, to_array_record(g), ConfigRecord({"server-round": 1}), FakeGrid()))
    replies = [reply(m, ctx[m.metadata.dst_node_id], 1, True, log) for m in msgs]
    agg, _ = s.aggregate_train(1, replies)
    out = from_array_record(agg)
    w = [e["n"] for e in log]
    for a_key, b_key in lora_pairs(SHAPES):
        m = dense_mean([(e["trained"][b_key], e["trained"][a_key]) for e in log], w)
        got = out[b_key].astype(np.float64) @ out[a_key]
        np.testing.assert_allclose(got, truncated(m, 4), atol=1e-5)
        assert np.all(np.einsum("ij,ij->i", out[a_key], g[a_key]) >= 0)  # signs follow the previous A
    want_bias = sum(wi * e["trained"]["m.0.bias"] for wi, e in zip(np.array(w) / sum(w), log))
    np.testing.assert_allclose(out["m.0.bias"], want_bias, atol=1e-6)


@pytest.mark.parametrize("overrides, problem", [
    ({"strategy.aggregation": "stacking"}, ("strategy.aggregation='stacking' is not valid; choose one of: exact, "
                                           "freeze-a, separate")),
    ({"strategy.aggregation": "exact", "strategy.name": "fedadam"}, "use strategy.name=fedavg or fedprox"),
    ({"strategy.aggregation": "exact", "strategy.name": "krum"}, "use strategy.name=fedavg or fedprox"),
    ({"strategy.aggregation": "exact", "strategy.dp.mode": "server-fixed"}, "not a mean of clipped updates"),
    ({"strategy.aggregation": "exact", "strategy.secagg.mode": "secagg+", "wire.codec": "fp32"},
     "which secure aggregation hides"),
    ({"strategy.aggregation": "exact", "model.lora.use-dora": True}, "DoRA's magnitude"),
])
def test_combinations_that_cannot_work_are_refused_at_resolution(overrides, problem):
    with pytest.raises(ConfigError) as exc:
        resolve(overrides)
    assert problem in str(exc.value)


@pytest.mark.parametrize("overrides", [
    {"strategy.aggregation": "freeze-a", "strategy.name": "fedadam"},
    {"strategy.aggregation": "freeze-a", "strategy.dp.mode": "server-fixed"},
    {"strategy.aggregation": "freeze-a", "model.lora.use-dora": True},
    {"strategy.aggregation": "exact", "strategy.name": "fedprox", "strategy.proximal-mu": 0.1},
])
def test_combinations_that_work_resolve(overrides):
    assert resolve(overrides).strategy.aggregation == overrides["strategy.aggregation"]

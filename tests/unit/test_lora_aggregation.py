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
from flowertune.models.lora_algebra import exact_mean, fp16_exact, lora_pairs, pad, truncate
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
    # the stack has rank 2 < 4: rows 3-4 of A are orthogonal completions (not zero: they can still train); all
    # rows have the previous A's root-mean-square row norm (A keeps its scale)
    c2 = np.mean(np.sum(prev**2, axis=1))
    np.testing.assert_allclose(a_new @ a_new.T, c2 * np.eye(4), rtol=1e-5, atol=1e-5)
    assert np.all(b_new[:, 2:] == 0)


@pytest.mark.parametrize("weights", [[1, -1], [0, 0], [1, float("nan")], [1]])
def test_bad_weights_are_refused(weights):
    f = (np.ones((4, 1)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="weights"):
        exact_mean([f, f], weights, 1)


def test_pairs_need_both_factors():
    assert lora_pairs(SHAPES) == [(A0, B0), ("m.0.v_proj.lora_A.weight", "m.0.v_proj.lora_B.weight")]
    emb = ["m.embed_tokens.lora_embedding_A", "m.embed_tokens.lora_embedding_B"]
    assert lora_pairs(emb) == [tuple(emb)]  # LoRA on an embedding pairs up too
    with pytest.raises(ValueError, match="has no B partner"):
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


# -- heterogeneous ranks ------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 6), st.integers(0, 2**31))
def test_truncate_then_pad_round_trips_and_pads_with_the_global_tail(r, extra, seed):
    rng = np.random.default_rng(seed)
    big = r + extra
    g = {A0: rng.standard_normal((big, 9)).astype(np.float32), B0: rng.standard_normal((7, big)).astype(np.float32),
         "m.0.bias": rng.standard_normal(7).astype(np.float32)}
    t = truncate(g, r)
    assert t[A0].shape == (r, 9) and t[B0].shape == (7, r) and np.array_equal(t["m.0.bias"], g["m.0.bias"])
    assert all(np.array_equal(pad(t, g)[k], g[k]) for k in g)
    trained = {k: v + 1.0 for k, v in t.items()}
    p = pad(trained, g)
    assert np.array_equal(p[A0][:r], trained[A0]) and np.array_equal(p[A0][r:], g[A0][r:])
    assert np.array_equal(p[B0][:, :r], trained[B0]) and np.array_equal(p[B0][:, r:], g[B0][:, r:])


def test_a_node_rank_comes_from_its_node_config_else_its_partition_and_is_bounded():
    from flowertune.config import AdapterConfig, at_rank, node_rank

    a = AdapterConfig(r=16, alpha=32, node_ranks="4,8,16")
    assert [node_rank(a, p, {}) for p in range(5)] == [4, 8, 16, 4, 8]
    assert node_rank(a, 0, {"lora-rank": 12}) == 12 and node_rank(AdapterConfig(r=8), 3, {}) == 8
    for bad in (0, 17, "4", True):
        with pytest.raises(ConfigError, match="lora-rank|must be in"):
            node_rank(a, 0, {"lora-rank": bad})
    cfg = resolve({"model.lora.peft-lora-r": 16, "model.lora.peft-lora-alpha": 32, "model.lora.node-ranks": "4,8,16"})
    small = at_rank(cfg, 4)
    assert small.adapter.r == 4 and small.adapter.alpha / small.adapter.r == 32 / 16  # the same scaling
    assert at_rank(cfg, 16) is cfg


@pytest.mark.parametrize("overrides, problem", [
    ({"model.lora.node-ranks": "4,x"}, "must be comma-separated integers"),
    ({"model.lora.node-ranks": "4,16"}, "every rank must be in [1, model.lora.peft-lora-r=8]"),
    ({"model.lora.node-ranks": "0,8"}, "every rank must be in [1, model.lora.peft-lora-r=8]"),
    ({"model.lora.node-ranks": "4,8", "model.lora.use-dora": True}, "use plain LoRA"),
    ({"model.lora.node-ranks": "4,8", "strategy.secagg.mode": "secagg+", "wire.codec": "fp32"},
     "SecAgg+ sums vectors of one length"),
])
def test_heterogeneous_ranks_that_cannot_work_are_refused(overrides, problem):
    with pytest.raises(ConfigError) as exc:
        resolve(overrides)
    assert problem in str(exc.value)


def test_check_in_takes_a_rank_up_to_the_global_and_refuses_others():
    from flowertune.federation.server_loop import check_in
    from tests.unit.test_trust import _info

    info = {"partition-id": 1, "rows": 40}
    assert check_in(_info(**info, **{"lora-rank": 4}), set(), 8) == (1, 40, 4)
    assert "not an integer in [1, model.lora.peft-lora-r=8]" in check_in(_info(**info, **{"lora-rank": 9}), set(), 8)
    assert "needs every node at model.lora.peft-lora-r=8" in check_in(_info(**info, **{"lora-rank": 4}), set(), 8,
                                                                      "strategy.secagg.mode=secagg+")


RANKS = dict(zip(NODES, (2, 4, 8, 8)))


def het_reply(msg: Message, context: Context, rnd: int, log: list, answer_rank: int = 0) -> Message:
    codec = wire_client.codec_of(msg)
    got = wire_client.receive(msg, context, codec)
    rng = np.random.default_rng(100 * context.node_id + rnd)
    trained = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in got.items()}
    if answer_rank:  # a node answering at another rank than it was sent
        trained = truncate({k: np.zeros((8, s[1]) if "lora_A" in k else (s[0], 8), np.float32)
                            for k, s in SHAPES.items()}, answer_rank)
        payload = to_array_record(trained)
    else:
        payload = wire_client.send(codec, trained, got, context)
    n = int(rng.integers(5, 50))
    log.append({"node": context.node_id, "got": got, "trained": trained, "n": n, "payload": from_array_record(payload)})
    return Message(RecordDict({"arrays": payload, "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0})}),
                   reply_to=msg)


@pytest.mark.parametrize("codec", ["fp32", "delta-int8"])
def test_each_node_gets_the_global_at_its_rank_and_exact_aggregates_the_padded_products(codec):
    """Ranks 2/4/8/8 under a global of rank 8 (SHAPES' rank is 4: the global here is built at 8)."""
    rng = np.random.default_rng(5)
    g = {k: (rng.standard_normal((8, s[1])) if "lora_A" in k else rng.standard_normal((s[0], 8)) * 0.1)
         .astype(np.float32) for k, s in SHAPES.items()}
    s = make_strategy(quiet(name="fedavg", aggregation="exact"), codec, rank=8, heterogeneous=True)
    s.ctx.rank_of = RANKS.get
    assert "ranks(<= 8: truncated down, padded up)" in describe(s)
    ctx = contexts()
    for rnd in (1, 2):
        log: list = []
        msgs = list(s.configure_train(rnd, to_array_record(g), ConfigRecord({"server-round": rnd}), FakeGrid()))
        replies = [het_reply(m, ctx[m.metadata.dst_node_id], rnd, log) for m in msgs]
        for e in log:  # the node decoded the global truncated to its rank (fp16 first contact with delta-int8)
            want = truncate(g, RANKS[e["node"]])
            assert {k: v.shape for k, v in e["got"].items()} == {k: v.shape for k, v in want.items()}
            tol = 0 if codec == "fp32" else 2e-2
            assert all(np.abs(e["got"][k] - want[k]).max() <= tol * max(1, np.abs(want[k]).max()) for k in want)
        agg, _ = s.aggregate_train(rnd, replies)
        assert s.traffic.accepted == 4 and s.traffic.rejected == []
        out = from_array_record(agg)
        w = [e["n"] for e in log]
        # what the server must have aggregated: each uplink decoded against exactly what that node was sent (the
        # global truncated to its rank), padded with the global's tail (fp32: the trained arrays themselves)
        from flowertune.wire import get_codec

        decoded = [get_codec(codec).decode(e["payload"], truncate(g, RANKS[e["node"]])) for e in log]
        if codec == "fp32":
            assert all(np.array_equal(d[k], e["trained"][k]) for d, e in zip(decoded, log) for k in d)
        padded = [pad(d, g) for d in decoded]
        for a_key, b_key in lora_pairs(SHAPES):
            m = dense_mean([(p[b_key], p[a_key]) for p in padded], w)
            np.testing.assert_allclose(out[b_key].astype(np.float64) @ out[a_key], truncated(m, 8), atol=1e-5)
            assert out[a_key].shape == (8, SHAPES[a_key][1]) and out[b_key].shape == (SHAPES[b_key][0], 8)
        g = out


def test_a_reply_at_another_rank_than_the_node_was_sent_is_rejected():
    """Node 101 is sent rank 2: its rank-4 answer is over the payload it can take (wire layer), its rank-1 answer
    has the wrong shapes (the decoder; the gate checks them again); the others' rounds go on."""
    for answer, why in ((4, "payload of 4704 bytes, more than the 4064 the adapter can take"),
                        (1, "has shape (1, 64), the reference has (2, 64)")):
        s = make_strategy(quiet(name="fedavg"), "fp32", rank=4, heterogeneous=True)
        s.ctx.rank_of = {NODES[0]: 2}.get
        ctx, log = contexts(), []
        msgs = list(s.configure_train(1, to_array_record(initial()), ConfigRecord({"server-round": 1}), FakeGrid()))
        replies = [het_reply(m, ctx[m.metadata.dst_node_id], 1, log,
                             answer_rank=answer if m.metadata.dst_node_id == NODES[0] else 0) for m in msgs]
        s.aggregate_train(1, replies)
        assert s.traffic.accepted == 3 and len(s.traffic.rejected) == 1
        assert s.traffic.rejected[0].startswith(f"node {NODES[0]}: ") and why in s.traffic.rejected[0], answer


def test_evaluation_messages_are_truncated_to_each_nodes_rank_too():
    s = make_strategy(quiet(name="fedavg"), "fp32", rank=4, heterogeneous=True)
    s.ctx.rank_of = {NODES[0]: 2, NODES[1]: 4}.get
    g = initial()
    msgs = list(s.configure_evaluate(1, to_array_record(g), ConfigRecord({"server-round": 1}), FakeGrid()))
    assert msgs
    for m in msgs:
        got = from_array_record(m.content["arrays"])
        want = truncate(g, 2) if m.metadata.dst_node_id == NODES[0] else g
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_dry_run_says_how_factors_are_combined_and_each_partitions_rank(capsys):
    from flowertune.commands.run import lora_plan
    from flowertune.config import from_flat

    cfg = resolve({"strategy.aggregation": "exact", "model.lora.peft-lora-r": 16, "model.lora.node-ranks": "4,8,16",
                   "num-supernodes": 4})
    plan = lora_plan(cfg).splitlines()
    assert plan[0] == "LoRA aggregation (exact): the weighted mean of the nodes' products B·A, re-projected onto rank 16 by SVD"
    assert "partition 0: r=4, 1: r=8, 2: r=16, 3: r=4 (" in plan[1]
    assert lora_plan(from_flat({**cfg.to_flat(), "model.lora.node-ranks": ""})).count("\n") == 0

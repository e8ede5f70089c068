"""The server's strategy stack as layers: what it is built of, that a Flower DP wrapper in its slot sees
decoded fp32 updates, that one bad participant is left out by the gate (not the whole round), that each
layer's state resumes under its own name — also from a state file written before the stack existed — and
that on the client the wire mod hands fp32 arrays to the handler and to Flower's ``fixedclipping_mod``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
)
from flwr.supercore.task_identity import TaskIdentity

from flowertune.config import StrategyConfig
from flowertune.federation import wire_client
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.server_loop import NodeDirectory, Progress
from flowertune.federation.stack.base import Layer, aggregator, find_layer
from flowertune.federation.stack.codec import WireCodec
from flowertune.federation.stack.gate import ReplyGate
from flowertune.federation.state import load_state
from flowertune.federation.strategies import describe, export_state, make_strategy
from tests.unit.test_strategy_parity import NODES, SHAPES, FakeGrid, client_reply, digest, initial

LEGACY = Path(__file__).parent / "golden" / "legacy_state_fedadam_delta_int8.safetensors"


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def contexts() -> dict[int, Context]:
    return {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES}


class Spy(Layer):
    """Records the replies that reach it (just above Flower's aggregator)."""

    name = "spy"

    def __init__(self, strategy):
        super().__init__(strategy, None)
        self.seen: list[dict[str, np.ndarray]] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen += [from_array_record(m.content["arrays"]) for m in replies]
        return self.strategy.aggregate_train(server_round, replies)


def norm(update: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in update.values())))


def big_reply(msg: Message, context: Context, scale: float) -> Message:
    """A client whose update is far larger than the clipping bound (a real client's wire functions)."""
    codec = wire_client.codec_of(msg)
    got = wire_client.receive(msg, context, codec)
    rng = np.random.default_rng(context.node_id)
    trained = {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in got.items()}
    metrics = MetricRecord({"num-examples": 10, "train_loss": 1.0})
    return Message(RecordDict({"arrays": wire_client.send(codec, trained, got, context), "metrics": metrics}),
                   reply_to=msg)


def error_reply(msg: Message) -> Message:
    return Message(Error(code=0, reason="Exception ClientAppException occurred. Message: out of memory'>"), reply_to=msg)


def test_the_default_stack_is_described_from_the_outside_in():
    s = make_strategy(StrategyConfig(name="fedadam", seed=3), "delta-topk-int8", fraction=0.2)
    assert describe(s) == ("meter -> guard(growth <= 10x) -> wire(delta-topk-int8, fraction=0.2) -> gate "
                           "-> direction(cos to median > 0) -> norm-bound(median x2) -> sampling(seed 3) -> FedAdam")
    assert type(aggregator(s)) is FedAdam  # Flower's own class, not a subclass


def test_a_dp_wrapper_in_the_slot_clips_decoded_fp32_updates_and_an_error_reply_does_not_drop_the_round():
    bound, spies = 0.5, []

    def dp(inner):
        spies.append(Spy(inner))
        return DifferentialPrivacyServerSideFixedClipping(spies[-1], noise_multiplier=0.0, clipping_norm=bound,
                                                          num_sampled_clients=4)

    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1, seed=7), "delta-int8", slot=[dp])
    assert "DifferentialPrivacyServerSideFixedClipping" in describe(s)
    ctxs, glob = contexts(), to_array_record(initial())
    msgs = list(s.configure_train(1, glob, ConfigRecord({"lr": 0.1}), FakeGrid()))
    assert len(msgs) == 4
    replies = [error_reply(m) if m.metadata.dst_node_id == NODES[0] else big_reply(m, ctxs[m.metadata.dst_node_id], 1.0)
               for m in msgs]
    agg, _ = s.aggregate_train(1, replies)
    assert agg is not None, "the round went on without the failed node"
    assert s.traffic.errors == [f"node {NODES[0]}: out of memory"] and s.traffic.accepted == 3
    seen, g = spies[0].seen, from_array_record(glob)
    assert len(seen) == 3
    for arrays in seen:
        assert sorted(arrays) == sorted(SHAPES) and all(v.dtype == np.float32 for v in arrays.values())  # decoded
        assert norm({k: arrays[k] - g[k] for k in g}) <= bound * (1 + 1e-5)  # clipped on the decoded update
    # the attack without the gate: Flower's DP wrapper straight over FedAvg drops the whole round on one error
    bare = DifferentialPrivacyServerSideFixedClipping(FedAvg(fraction_train=1.0), 0.0, bound, 4)
    bare_msgs = list(bare.configure_train(1, glob, ConfigRecord({"lr": 0.1}), FakeGrid()))
    bare_replies = [error_reply(m) if i == 0 else big_reply(m, contexts()[m.metadata.dst_node_id], 1.0)
                    for i, m in enumerate(bare_msgs)]
    assert bare.aggregate_train(1, bare_replies) == (None, None)


def test_the_clipped_update_is_the_decoded_one_scaled_not_the_encoded_payload():
    """Clipping the encoded int8 payload instead would change its direction; the decoded update keeps it."""
    bound, spies = 0.05, []

    def dp(inner):
        spies.append(Spy(inner))
        return DifferentialPrivacyServerSideFixedClipping(spies[-1], 0.0, bound, 2)

    plain = make_strategy(StrategyConfig(fraction_train=0.5, min_train_nodes=1, seed=7), "delta-int8")
    clipped = make_strategy(StrategyConfig(fraction_train=0.5, min_train_nodes=1, seed=7), "delta-int8", slot=[dp])
    gate = find_layer(plain, ReplyGate)
    plain_spy = gate.strategy = Spy(gate.strategy)  # above the sampling: what FedAvg would get unclipped
    for s in (plain, clipped):
        ctxs = contexts()
        msgs = list(s.configure_train(1, to_array_record(initial()), ConfigRecord({"lr": 0.1}), FakeGrid()))
        s.aggregate_train(1, [big_reply(m, ctxs[m.metadata.dst_node_id], 0.5) for m in msgs])
    g = initial()
    for raw, cut in zip(plain_spy.seen, spies[0].seen):
        u = {k: raw[k] - g[k] for k in g}
        v = {k: cut[k] - g[k] for k in g}
        assert norm(u) > 10 * bound and norm(v) == pytest.approx(bound, rel=1e-4)
        for k in g:
            np.testing.assert_allclose(v[k], u[k] * (bound / norm(u)), rtol=1e-3, atol=1e-7)


def test_an_undecodable_reply_is_rejected_with_its_reason_and_that_node_gets_the_full_adapter_next():
    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1, seed=7), "delta-int8")
    ctxs, glob = contexts(), to_array_record(initial())
    msgs = list(s.configure_train(1, glob, ConfigRecord({"lr": 0.1, "server-round": 1}), FakeGrid()))
    replies = [client_reply(m, ctxs[m.metadata.dst_node_id], 1) for m in msgs]
    hostile = replies[1]
    bad = dict(from_array_record(hostile.content["arrays"]))
    key = next(k for k in bad if k.endswith("::scale"))
    bad[key] = bad[key][:-1]  # one scale short: cannot be decoded
    hostile.content = RecordDict({"arrays": to_array_record(bad), "metrics": hostile.content["metrics"]})
    agg, _ = s.aggregate_train(1, replies)
    node = hostile.metadata.src_node_id
    assert agg is not None and s.traffic.accepted == 3
    assert len(s.traffic.rejected) == 1 and s.traffic.rejected[0].startswith(f"node {node}: cannot decode")
    msgs2 = {m.metadata.dst_node_id: m for m in s.configure_train(2, agg, ConfigRecord({"lr": 0.1}), FakeGrid())}
    bases = {n: int(m.content["config"]["wire-base"]) for n, m in msgs2.items()}
    assert bases[node] == -1 and all(b == 1 for n, b in bases.items() if n != node)


def test_an_error_reply_leaves_no_mirrored_copy_for_that_node():
    """A node that failed may not hold what it was sent: it gets the full adapter next time, not a delta."""
    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1, seed=7), "delta-int8")
    ctxs = contexts()
    msgs = list(s.configure_train(1, to_array_record(initial()), ConfigRecord({"lr": 0.1, "server-round": 1}),
                                  FakeGrid()))
    replies = [error_reply(m) if i == 0 else client_reply(m, ctxs[m.metadata.dst_node_id], 1) for i, m in enumerate(msgs)]
    _agg, _ = s.aggregate_train(1, replies)
    failed = msgs[0].metadata.dst_node_id
    copies = find_layer(s, WireCodec).downlink.copies
    assert failed not in copies and len(copies) == 3


def test_each_layer_exports_its_state_under_its_own_name():
    s = make_strategy(StrategyConfig(name="fedadam", fraction_train=0.5, min_train_nodes=1, seed=7), "delta-int8")
    s.ctx.partition_of = {n: i for i, n in enumerate(NODES)}.get
    ctxs = contexts()
    msgs = list(s.configure_train(1, to_array_record(initial()), ConfigRecord({"lr": 0.1, "server-round": 1}),
                                  FakeGrid()))
    s.aggregate_train(1, [client_reply(m, ctxs[m.metadata.dst_node_id], 1) for m in msgs])
    meta, arrays = export_state(s)
    assert set(meta) == {"strategy", "downlink", "norm-bound"}  # Flower's aggregator, the wire mirror, the bound
    assert set(meta["strategy"]) >= {"m_t", "v_t"} and len(meta["downlink"]) == 2
    assert all(k.split("/")[0] in meta for k in arrays)


def test_a_state_file_written_before_the_stack_resumes_to_the_same_next_round():
    """golden/legacy_state_...: FedAdam x delta-int8 after round 2, saved by the code before the redesign, with
    its round 3 (sampled partitions, bytes, aggregate). Today's stack, restored from it, computes that round 3."""
    meta, arrays = load_state(LEGACY)
    expect = meta.pop("expected_round_3")
    assert meta["strategy_name"] == "FedAdamFT"  # the old class name
    cfg = StrategyConfig(name="fedadam", fraction_train=0.5, min_train_nodes=2, seed=7)
    directory = NodeDirectory(timeout=1.0, partition={n: i for i, n in enumerate(NODES)})
    ctxs = contexts()
    warm = make_strategy(cfg, "delta-int8")  # rounds 1-2 once more, so the clients hold what they held then
    warm.ctx.order = directory.order
    glob = to_array_record(initial())
    for rnd in (1, 2):
        msgs = list(warm.configure_train(rnd, glob, ConfigRecord({"lr": 0.1, "server-round": rnd}), FakeGrid()))
        glob, _ = warm.aggregate_train(rnd, [client_reply(m, ctxs[m.metadata.dst_node_id], rnd) for m in msgs])
    s = make_strategy(cfg, "delta-int8")
    s.ctx.order, s.ctx.partition_of = directory.order, directory.partition.get
    progress = Progress.from_state(meta, arrays, s, "legacy")
    assert progress.round == 2 and progress.cumulative == 123
    assert digest(from_array_record(progress.arrays)) == digest(from_array_record(glob))
    msgs = list(s.configure_train(3, progress.arrays, ConfigRecord({"lr": 0.1, "server-round": 3}), FakeGrid()))
    agg, _ = s.aggregate_train(3, [client_reply(m, ctxs[m.metadata.dst_node_id], 3) for m in msgs])
    got = {"sampled_partitions": [directory.partition[m.metadata.dst_node_id] for m in msgs],
           "bytes_down": s.traffic.down, "bytes_up": s.traffic.up, "aggregate_sha256": digest(from_array_record(agg))}
    assert got == expect
    mirrored = {int(p) for p in meta["downlink"]}  # nodes whose copy the old file mirrored get deltas against it
    bases = {directory.partition[m.metadata.dst_node_id]: int(m.content["config"]["wire-base"]) for m in msgs}
    assert any(p in mirrored for p in bases) and all((b >= 1) == (p in mirrored) for p, b in bases.items())
    # and the saved state matters: a fresh stack (no FedAdam moments, no mirror) computes another round 3
    fresh = make_strategy(cfg, "delta-int8")
    fresh.ctx.order = directory.order
    msgs = list(fresh.configure_train(3, progress.arrays, ConfigRecord({"lr": 0.1, "server-round": 3}), FakeGrid()))
    other, _ = fresh.aggregate_train(3, [client_reply(m, contexts()[m.metadata.dst_node_id], 3) for m in msgs])
    assert digest(from_array_record(other)) != expect["aggregate_sha256"]


def test_the_wire_mod_hands_fp32_to_fixedclipping_mod_and_the_handler_and_encodes_the_reply():
    """Client-side DP: Flower's wrapper sends the clipping norm, our wire mod decodes the delta broadcast,
    ``fixedclipping_mod`` clips the fp32 update, the wire mod encodes it; the server decodes a clipped update."""
    from flwr.client.mod.utils import make_ffn

    from flowertune.client_app import app

    assert app._mods[2] is wire_client.wire_mod  # the real ClientApp runs it after error_mod and secagg_mod (a pass-through here)

    bound, seen = 0.05, []
    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1, seed=7), "delta-int8",
                      slot=[lambda inner: DifferentialPrivacyClientSideFixedClipping(inner, 0.0, bound, 4)])
    glob = initial()

    def handler(msg: Message, context: Context) -> Message:
        got = from_array_record(msg.content["arrays"])
        seen.append(got)
        rng = np.random.default_rng(context.node_id)
        trained = {k: (v + 0.5 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in got.items()}
        return Message(RecordDict({"arrays": to_array_record(trained),
                                   "metrics": MetricRecord({"num-examples": 10, "train_loss": 1.0})}), reply_to=msg)

    client = make_ffn(handler, [wire_client.wire_mod, fixedclipping_mod])
    ctxs = contexts()
    for rnd in (1, 2):  # round 1: full fp16 broadcast; round 2: int8 deltas against each node's copy
        msgs = list(s.configure_train(rnd, to_array_record(glob), ConfigRecord({"lr": 0.1}), FakeGrid()))
        if rnd == 2:
            assert all(int(m.content["config"]["wire-base"]) == 1 for m in msgs)
            assert all(k.endswith(("::q", "::scale")) for m in msgs for k in m.content["arrays"])
        replies = [client(m, ctxs[m.metadata.dst_node_id]) for m in msgs]
        assert not any(r.has_error() for r in replies), [r.error for r in replies if r.has_error()]
        assert all(k.endswith(("::q", "::scale")) for r in replies for k in r.content["arrays"])  # encoded
        gate = find_layer(s, ReplyGate)
        spy = gate.strategy = Spy(gate.strategy)
        new, _ = s.aggregate_train(rnd, replies)
        gate.strategy = spy.strategy
        for arrays in spy.seen:
            # the server decodes the clipped update (int8 adds at most a small error on top of the bound)
            assert norm({k: arrays[k] - glob[k] for k in glob}) <= bound * 1.02
        glob = from_array_record(new)
    assert all(sorted(a) == sorted(SHAPES) and all(v.dtype == np.float32 for v in a.values()) for a in seen)

"""The downlink (server mirror of each node's copy) and the client's decode, run as plain functions."""

from __future__ import annotations

import numpy as np
import pytest

from flowertune.wire import CODECS, Downlink, decode_broadcast, get_codec, payload_bytes


def globals_over_rounds(rounds: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    g = {"a": rng.normal(scale=0.02, size=(8, 64)).astype(np.float32), "b": np.zeros((64, 8), np.float32),
         "m": np.ones(64, np.float32)}
    out = [g]
    for _ in range(rounds - 1):
        g = {k: (v + rng.normal(scale=1e-3, size=v.shape)).astype(np.float32) for k, v in g.items()}
        out.append(g)
    return out


class Node:
    """A client's wire state: the version and arrays it holds."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.arrays: dict[str, np.ndarray] | None = None

    def receive(self, codec, payload, base, version):
        self.arrays = decode_broadcast(codec, payload, base, self.version, self.arrays)
        self.version = version
        return self.arrays


@pytest.mark.parametrize("name", CODECS.names())
def test_server_mirror_equals_what_each_node_decodes(name):
    """Nodes sampled in different rounds: every decode matches the server's mirror bit for bit."""
    codec = get_codec(name)
    down, nodes = Downlink(codec), {n: Node() for n in range(4)}
    sampled = [[0, 1], [2, 3], [0, 2], [1, 3], [0, 1], [1, 2]]
    for version, (g, chosen) in enumerate(zip(globals_over_rounds(6), sampled), start=1):
        for n in chosen:
            payload, base = down.payload_for(n, g, version)
            assert (base is None) == (codec.is_delta is False or nodes[n].version is None)
            got = nodes[n].receive(codec, payload, base, version)
            if codec.is_delta:
                assert all(got[k].tobytes() == down.held_by(n)[k].tobytes() for k in g)
            if name == "fp32":
                assert all(got[k].tobytes() == g[k].tobytes() for k in g)
        down.settle(set(chosen))


@pytest.mark.parametrize(("name", "smaller"), [("delta-int8", 1.5), ("delta-int4", 3), ("delta-int3", 3)])
def test_a_node_sampled_rarely_still_gets_a_compact_delta(name, smaller):
    codec = get_codec(name)
    down, node = Downlink(codec), Node()
    gs = globals_over_rounds(10)
    full, base = down.payload_for(7, gs[0], 1)
    node.receive(codec, full, base, 1)
    down.settle({7})
    delta, base = down.payload_for(7, gs[9], 10)  # nine rounds later
    assert base == 1
    got = node.receive(codec, delta, base, 10)
    assert payload_bytes(delta) * smaller < sum(v.nbytes for v in gs[9].values())  # vs fp32 (small tensors)
    for k in gs[9]:  # the stale copy is brought to the new global within the codec's error
        assert np.abs(got[k] - gs[9][k]).max() <= np.abs(gs[9][k] - gs[0][k]).max() / 2


def test_lost_reply_means_full_payload_next_time_and_a_wrong_base_is_refused():
    codec = get_codec("delta-int8")
    down, node = Downlink(codec), Node()
    gs = globals_over_rounds(3)
    node.receive(codec, *down.payload_for(1, gs[0], 1), 1)
    down.settle({1})
    payload, base = down.payload_for(1, gs[1], 2)
    node.receive(codec, payload, base, 2)
    down.settle(set())  # the node decoded round 2, but its reply never came back
    full, base = down.payload_for(1, gs[2], 3)
    assert base is None and all(v.dtype == np.float16 for v in full.values())
    with pytest.raises(ValueError, match="version 1, this node holds 2"):
        decode_broadcast(codec, payload, 1, 2, node.arrays)


def test_full_payload_is_fp32_only_for_the_lossless_codec():
    g = globals_over_rounds(1)[0]
    assert all(v.dtype == np.float32 for v in Downlink(get_codec("fp32")).payload_for(0, g, 1)[0].values())
    for name in ["fp16", "delta-int8", "delta-int4"]:
        assert all(v.dtype == np.float16 for v in Downlink(get_codec(name)).payload_for(0, g, 1)[0].values())
    assert not Downlink(get_codec("fp16")).pending  # non-delta codecs keep no copies


def test_full_payload_falls_back_to_fp32_when_fp16_overflows():
    g = {"a": np.full((4, 4), 1e6, np.float32)}
    down = Downlink(get_codec("delta-int4"))
    payload, base = down.payload_for(0, g, 1)
    assert base is None and payload["a"].dtype == np.float32
    assert decode_broadcast(get_codec("delta-int4"), payload, None, None, None)["a"].tobytes() == g["a"].tobytes()


@pytest.mark.parametrize("name", ["delta-int8", "delta-int4", "delta-int3", "delta-topk-int8"])
def test_downlink_error_never_enters_the_global(name):
    """Server: G in fp32, uplinks decoded against G. Clients: start from their copy, keep a residual."""
    codec = get_codec(name)
    rng = np.random.default_rng(3)
    G = globals_over_rounds(1)[0]
    start = {k: v.astype(np.float64) for k, v in G.items()}
    down, residuals = Downlink(codec), {0: None, 1: None, 2: None}
    for version in range(1, 101):
        chosen = [version % 3, (version + 1) % 3]
        updates = []
        for c in chosen:
            down.payload_for(c, G, version)
            held = down.held_by(c)  # what the client decoded
            trained = {k: v + rng.normal(1e-4, 3e-4, size=v.shape).astype(np.float32) for k, v in held.items()}
            up, residuals[c] = codec.encode(trained, held, residuals[c])
            updates.append(codec.decode(up, G))  # server decodes against its exact global
        down.settle(set(chosen))
        G = {k: np.mean([u[k] for u in updates], axis=0).astype(np.float32) for k in G}
    for k in G:
        # every copy stays close to the exact global
        for c in range(3):
            assert np.abs(G[k] - down.copies[c].arrays[k]).max() <= 5e-3
        # and the global moved by the mean client update (1e-4 per round), not less
        np.testing.assert_allclose((G[k] - start[k]).mean(), 100 * 1e-4, rtol=0.1)

"""Downlink helpers and the client/server wiring they are meant for, run as plain functions."""

from __future__ import annotations

import numpy as np
import pytest

from flowertune.wire import CODECS, Broadcast, decode_broadcast, encode_broadcast, get_codec, payload_bytes


def globals_over_rounds(rounds: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    g = {"a": rng.normal(scale=0.02, size=(8, 64)).astype(np.float32), "b": np.zeros((64, 8), np.float32),
         "m": np.ones(64, np.float32)}
    out = [g]
    for _ in range(rounds - 1):
        g = {k: (v + rng.normal(scale=1e-3, size=v.shape)).astype(np.float32) for k, v in g.items()}
        out.append(g)
    return out


@pytest.mark.parametrize("name", CODECS.names())
def test_delta_and_full_receivers_hold_the_same_arrays(name):
    codec = get_codec(name)
    held = None  # (version, arrays) of a node that is sampled every round
    b: Broadcast | None = None
    for g in globals_over_rounds(5):
        b = encode_broadcast(codec, g, b)
        payload, base = b.payload_for(held[0] if held else None)
        assert (base is None) == (held is None)  # first contact gets the full payload
        mine = decode_broadcast(codec, payload, base, *(held or (None, None)))
        newcomer = decode_broadcast(codec, *b.payload_for(None), None, None)
        for k in g:
            assert mine[k].tobytes() == newcomer[k].tobytes() == b.arrays[k].tobytes()
        held = (b.version, mine)
    assert b.delta is not None and payload_bytes(b.delta) <= payload_bytes(b.full)
    if name == "fp32":
        assert all(b.arrays[k].tobytes() == g[k].tobytes() for k in g)


def test_full_fallback_is_fp32_for_delta_codecs_and_fp16_for_fp16():
    g = globals_over_rounds(1)[0]
    assert all(v.dtype == np.float32 for v in encode_broadcast(get_codec("delta-int8"), g, None).full.values())
    assert all(v.dtype == np.float16 for v in encode_broadcast(get_codec("fp16"), g, None).full.values())


def test_stale_node_gets_full_and_a_wrong_base_is_refused():
    codec = get_codec("delta-int8")
    gs = globals_over_rounds(3)
    b0 = encode_broadcast(codec, gs[0], None)
    b1 = encode_broadcast(codec, gs[1], b0)
    b2 = encode_broadcast(codec, gs[2], b1)
    assert b2.payload_for(b0.version) == (b2.full, None)  # missed a round: full payload
    with pytest.raises(ValueError, match="version 1, this node holds 0"):
        decode_broadcast(codec, b2.delta, b2.base_version, b0.version, b0.arrays)


@pytest.mark.parametrize("name", ["delta-int8", "delta-topk-int8"])
def test_downlink_error_is_fed_back_through_the_exact_global(name):
    """Server: G in fp32, uplinks decoded against G. Clients: start from the broadcast, keep a residual."""
    codec = get_codec(name)
    rng = np.random.default_rng(3)
    G = globals_over_rounds(1)[0]
    b, residuals, applied = None, [None, None], {k: np.zeros_like(v, dtype=np.float64) for k, v in G.items()}
    start = {k: v.astype(np.float64) for k, v in G.items()}
    for _ in range(100):
        b = encode_broadcast(codec, G, b)
        updates = []
        for c in range(2):
            held = b.arrays  # what the client decoded
            trained = {k: v + rng.normal(1e-4, 3e-4, size=v.shape).astype(np.float32) for k, v in held.items()}
            payload, residuals[c] = codec.encode(trained, held, residuals[c])
            updates.append(codec.decode(payload, G))  # server decodes against its exact global
        G = {k: np.mean([u[k] for u in updates], axis=0).astype(np.float32) for k in G}
        for k in G:
            applied[k] = G[k] - start[k]
    for k in G:
        # the broadcast copy stays within one round's quantization error of the exact global
        assert np.abs(G[k] - b.arrays[k]).max() <= 5e-3
        # and the global moved by the sum of the client updates' mean (1e-4 per round), not less
        np.testing.assert_allclose(applied[k].mean(), 100 * 1e-4, rtol=0.1)

"""Wire codecs: round trips within their error bounds, error feedback, skipping, byte counting, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord

from flowertune.federation.records import from_array_record, to_array_record
from flowertune.wire import CODECS, DEFAULT_CODEC, SEP, get_codec, payload_bytes

Q = "base_model.model.model.layers.0.self_attn.q_proj"
V = "base_model.model.model.layers.0.self_attn.v_proj"
EPS16 = 2.0**-11  # fp16 relative rounding error (half an ulp)


def adapter(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """LoRA A (r x d), B (d x r) and a DoRA magnitude vector, shaped like SmolLM2-135M with r=32."""
    shapes = {f"{Q}.lora_A.weight": (32, 576), f"{Q}.lora_B.weight": (576, 32),
              f"{V}.lora_A.weight": (32, 576), f"{V}.lora_B.weight": (192, 32),
              f"{Q}.lora_magnitude_vector": (576,)}
    return {k: rng.normal(scale=0.02, size=s).astype(np.float32) for k, s in shapes.items()}


def step(rng: np.random.Generator, ref: dict[str, np.ndarray], scale: float = 1e-3) -> dict[str, np.ndarray]:
    return {k: (v + rng.normal(scale=scale, size=v.shape)).astype(np.float32) for k, v in ref.items()}


@pytest.fixture
def pair() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ref = adapter(rng)
    return ref, step(rng, ref)


def roundtrip(name: str, ref: dict, new: dict, **options) -> tuple[dict, dict, dict | None]:
    codec = get_codec(name, **options)
    payload, residual = codec.encode(new, ref, None)
    return payload, codec.decode(payload, ref), residual


def test_registry_lists_the_codecs():
    assert CODECS.names() == ["delta-fp16", "delta-int2", "delta-int3", "delta-int4", "delta-int8", "delta-topk-int8",
                              "fp16", "fp32"]
    assert get_codec(DEFAULT_CODEC).lossless
    with pytest.raises(KeyError, match="fp32"):
        get_codec("gzip")
    with pytest.raises(ValueError, match="does not take options"):
        get_codec("fp32", fraction=0.1)
    with pytest.raises(ValueError, match="fraction"):
        get_codec("delta-topk-int8", fraction=0.0)


@pytest.mark.parametrize("reference", [False, True])
def test_fp32_is_bitwise_lossless_and_keeps_keys(pair, reference):
    ref, new = pair
    codec = get_codec("fp32")
    assert codec.lossless and not codec.is_delta
    payload, residual = codec.encode(new, ref if reference else None, None)
    assert residual is None and list(payload) == list(new)  # today's payload: same keys, fp32
    out = codec.decode(payload, ref if reference else None)
    assert all(out[k].dtype == np.float32 and out[k].tobytes() == new[k].tobytes() for k in new)


def test_fp16_within_half_ulp(pair):
    ref, new = pair
    payload, out, _ = roundtrip("fp16", ref, new)
    assert all(v.dtype == np.float16 for v in payload.values())
    for k in new:
        assert np.all(np.abs(out[k] - new[k]) <= np.abs(new[k]) * EPS16 + 2.0**-24)


def test_delta_fp16_error_scales_with_the_update_not_the_weights(pair):
    ref, new = pair
    payload, out, residual = roundtrip("delta-fp16", ref, new)
    assert residual is None and all(k.endswith(f"{SEP}delta") for k in payload)
    for k in new:
        delta = new[k] - ref[k]
        bound = np.abs(delta) * EPS16 + 2.0**-24 + 2 * np.spacing(np.abs(new[k]))
        assert np.all(np.abs(out[k] - new[k]) <= bound)


def test_delta_int8_within_half_step_per_row(pair):
    ref, new = pair
    payload, out, residual = roundtrip("delta-int8", ref, new)
    for k in new:
        assert payload[f"{k}{SEP}q"].dtype == np.int8 and payload[f"{k}{SEP}q"].shape == new[k].shape
        delta = new[k] - ref[k]
        rows = delta.reshape(delta.shape[0] if delta.ndim > 1 else 1, -1)
        assert payload[f"{k}{SEP}scale"].shape == (rows.shape[0],)  # per output channel; one for a vector
        half_step = np.abs(rows).max(axis=1, keepdims=True) / 254
        err = np.abs(out[k] - new[k]).reshape(rows.shape)
        assert np.all(err <= half_step * (1 + 1e-5) + 2 * np.spacing(np.abs(new[k])).reshape(rows.shape))
        np.testing.assert_allclose(residual[k], new[k] - out[k], atol=1e-7)  # the residual is the error


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_low_bit_within_half_step_per_slice(pair, bits):
    ref, new = pair
    payload, out, residual = roundtrip(f"delta-int{bits}", ref, new)
    level = 2 ** (bits - 1) - 1
    for k in new:
        delta = (new[k] - ref[k]).reshape(new[k].shape[0] if new[k].ndim > 1 else 1, -1)
        slices = delta.T if delta.shape[0] > delta.shape[1] else delta  # along the longer axis
        assert payload[f"{k}{SEP}scale"].shape == (slices.shape[0],)
        assert payload[f"{k}{SEP}q"].dtype == np.uint8
        assert payload[f"{k}{SEP}q"].size == -(-new[k].size * bits // 8)  # really bits per entry
        half_step = np.abs(slices).max(axis=1, keepdims=True) / (2 * level)
        err = np.abs(out[k] - new[k]).reshape(delta.shape)
        err = err.T if delta.shape[0] > delta.shape[1] else err
        assert np.all(err <= half_step * (1 + 1e-5) + 2 * np.spacing(np.abs(new[k]).max()))
        np.testing.assert_allclose(residual[k], new[k] - out[k], atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_bit_packing_round_trips(bits):
    from flowertune.wire import pack_bits, unpack_bits

    codes = np.random.default_rng(bits).integers(0, 2**bits, size=1001).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.size == -(-1001 * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, 1001), codes)


def test_low_bit_rejects_bad_payloads(pair):
    ref, new = pair
    codec = get_codec("delta-int3")
    payload, _ = codec.encode(new, ref, None)
    k = next(iter(payload)).rpartition(SEP)[0]
    short = dict(payload, **{f"{k}{SEP}q": payload[f"{k}{SEP}q"][:-1]})
    with pytest.raises(ValueError, match=k):
        codec.decode(short, ref)
    bad = dict(payload, **{f"{k}{SEP}q": np.full_like(payload[f"{k}{SEP}q"], 0xFF)})  # code 7 > 2 * 3
    with pytest.raises(ValueError, match="outside"):
        codec.decode(bad, ref)


def test_delta_int8_all_zero_rows(pair):
    ref, _ = pair
    k = f"{Q}.lora_B.weight"
    new = dict(ref)
    new[k] = ref[k].copy()
    new[k][::2] += 0.01  # odd rows unchanged
    payload, out, _ = roundtrip("delta-int8", ref, new)
    assert list(payload) == [f"{k}{SEP}q", f"{k}{SEP}scale"]  # other tensors unchanged: nothing sent
    assert np.all(payload[f"{k}{SEP}scale"][1::2] == 0) and np.all(payload[f"{k}{SEP}q"][1::2] == 0)
    assert np.all(np.isfinite(out[k])) and np.array_equal(out[k][1::2], ref[k][1::2])
    assert np.abs(out[k] - new[k]).max() <= 0.01 / 254 * 1.01


@pytest.mark.parametrize("fraction", [0.1, 0.01, 1.0])
def test_topk_keeps_the_largest_entries(pair, fraction):
    ref, new = pair
    payload, out, residual = roundtrip("delta-topk-int8", ref, new, fraction=fraction)
    for k in new:
        delta = (new[k] - ref[k]).ravel()
        sent = (out[k] - ref[k]).ravel()
        nonzero = np.flatnonzero(np.abs(sent) > 1e-12)
        assert len(nonzero) <= math.ceil(fraction * delta.size)
        threshold = np.sort(np.abs(delta))[-math.ceil(fraction * delta.size)]
        assert np.all(np.abs(delta[nonzero]) >= threshold * (1 - 1e-6))  # only top-k entries are sent
        scale = payload[f"{k}{SEP}scale"][0]
        assert np.abs(sent[nonzero] - delta[nonzero]).max() <= scale / 2 * 1.001 + 1e-7
        np.testing.assert_allclose(residual[k].ravel() + sent, delta, atol=1e-7)


def test_topk_index_gaps_bridge_long_runs_of_zeros():
    ref = {"w": np.zeros((1000, 300), np.float32)}
    new = {"w": ref["w"].copy()}
    new["w"][0, 3], new["w"][500, 7], new["w"][-1, -1] = 1.0, -0.5, 0.25  # gaps far over 255
    payload, out, residual = roundtrip("delta-topk-int8", ref, new, fraction=1e-5)
    assert payload["w::idx"].dtype == np.uint8 and payload["w::q"].size > 3  # fillers carry q = 0
    assert np.count_nonzero(payload["w::q"]) == 3
    np.testing.assert_allclose(out["w"], new["w"], atol=1 / 254)
    assert not residual or np.abs(residual["w"]).max() <= 1 / 254


@pytest.mark.parametrize("name", ["fp32", "fp16", "delta-fp16", "delta-int8", "delta-int4", "delta-int3", "delta-topk-int8"])
def test_unchanged_tensors_are_not_sent(pair, name):
    ref, new = pair
    same = f"{V}.lora_B.weight"
    new = {**new, same: ref[same].copy()}
    payload, out, _ = roundtrip(name, ref, new)
    assert not any(k == same or k.startswith(same + SEP) for k in payload)
    assert np.array_equal(out[same], ref[same])
    assert get_codec(name).encode(ref, ref, None)[0] == {}  # nothing changed: an empty payload


@pytest.mark.parametrize("name", ["fp32", "fp16", "delta-fp16", "delta-int8", "delta-int4", "delta-int3", "delta-topk-int8"])
def test_payload_bytes_is_what_flower_counts_and_survives_an_array_record(pair, name):
    ref, new = pair
    codec = get_codec(name)
    payload, _ = codec.encode(new, ref, None)
    record = ArrayRecord({k: v for k, v in to_array_record(payload).items()})
    assert payload_bytes(payload) == record.count_bytes()
    received = from_array_record(record)
    assert {k: (v.dtype, v.shape) for k, v in received.items()} == {k: (v.dtype, v.shape) for k, v in payload.items()}
    a, b = codec.decode(payload, ref), codec.decode(received, ref)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_compressed_payloads_are_smaller(pair):
    ref, new = pair
    sizes = {name: payload_bytes(get_codec(name).encode(new, ref, None)[0]) for name in CODECS}
    assert sizes["fp32"] / sizes["fp16"] > 1.95
    assert sizes["fp32"] / sizes["delta-int8"] > 3.3
    assert sizes["fp32"] / sizes["delta-topk-int8"] > 12


@pytest.mark.parametrize("name", ["fp32", "fp16", "delta-fp16", "delta-int8", "delta-int4", "delta-int3", "delta-topk-int8"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_rejected_naming_the_key(pair, name, bad):
    ref, new = pair
    k = f"{V}.lora_A.weight"
    new[k][3, 4] = bad
    with pytest.raises(ValueError, match=k):
        get_codec(name).encode(new, ref, None)


@pytest.mark.parametrize("name", ["fp32", "fp16", "delta-fp16", "delta-int8", "delta-int4", "delta-int3", "delta-topk-int8"])
def test_non_finite_payload_is_rejected_by_the_server(pair, name):
    ref, new = pair
    codec = get_codec(name)
    payload, _ = codec.encode(new, ref, None)
    victim = next(k for k, v in payload.items() if v.dtype.kind == "f")
    payload[victim] = payload[victim].copy()
    payload[victim].flat[0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        codec.decode(payload, ref)


@pytest.mark.parametrize("name", ["fp16", "delta-fp16"])
def test_fp16_overflow_is_rejected(pair, name):
    ref, new = pair
    new[f"{Q}.lora_magnitude_vector"][0] = 1e6
    with pytest.raises(ValueError, match="lora_magnitude_vector.*fp16"):
        get_codec(name).encode(new, ref, None)


def test_malformed_payloads_are_rejected(pair):
    ref, new = pair
    codec = get_codec("delta-topk-int8")
    payload, _ = codec.encode(new, ref, None)
    k = f"{Q}.lora_A.weight"
    with pytest.raises(ValueError, match="not in the reference"):
        codec.decode({**payload, **{f"extra{SEP}{part}": payload[f"{k}{SEP}{part}"] for part in codec.parts}}, ref)
    with pytest.raises(ValueError, match="parts"):
        codec.decode({n: v for n, v in payload.items() if n != f"{k}{SEP}idx"}, ref)
    with pytest.raises(ValueError, match="past"):
        codec.decode({**payload, f"{k}{SEP}idx": np.full_like(payload[f"{k}{SEP}idx"], 255)}, ref)
    with pytest.raises(ValueError, match="expected int8"):
        get_codec("delta-int8").decode({f"{k}{SEP}q": np.zeros((32, 576), np.int16),
                                       f"{k}{SEP}scale": np.ones(32, np.float32)}, ref)
    with pytest.raises(ValueError, match="reference"):
        codec.encode(new, None, None)


@pytest.mark.parametrize(("name", "options"), [("delta-int8", {}), ("delta-int4", {}), ("delta-int3", {}),
                                               ("delta-topk-int8", {"fraction": 0.1}),
                                               ("delta-topk-int8", {"fraction": 0.02})])
def test_error_feedback_tracks_the_sum_of_updates(name, options):
    """Over many rounds the decoded updates add up to the true ones; the gap is the (bounded) residual."""
    rng = np.random.default_rng(1)
    weights = adapter(rng)
    drift = {k: rng.normal(scale=1e-4, size=v.shape).astype(np.float32) for k, v in weights.items()}
    codec = get_codec(name, **options)
    sums = {k: np.zeros_like(v, dtype=np.float64) for k, v in weights.items()}
    true = {k: np.zeros_like(v, dtype=np.float64) for k, v in weights.items()}
    residual, peaks = None, []
    for t in range(300):
        # a persistent direction plus round-to-round noise, like successive local training updates
        new = {k: v + drift[k] + rng.normal(scale=3e-4, size=v.shape).astype(np.float32) for k, v in weights.items()}
        payload, residual = codec.encode(new, weights, residual)
        decoded = codec.decode(payload, weights)
        for k in weights:
            sums[k] += decoded[k] - weights[k]
            true[k] += new[k] - weights[k]
        weights = decoded  # the next round starts from what the receiver holds
        peaks.append(max(np.abs(r).max() for r in residual.values()))
    for k in weights:
        gap = true[k] - sums[k]
        np.testing.assert_allclose(gap, residual.get(k, 0), atol=1e-5)
        assert np.linalg.norm(gap) <= 0.1 * np.linalg.norm(true[k])
    assert max(peaks[200:]) <= 1.5 * max(peaks[50:150])  # bounded: no drift after the warm-up


@pytest.mark.parametrize(("name", "options"), [("fp32", {}), ("delta-int3", {}), ("delta-topk-int8", {"fraction": 0.05})])
def test_the_header_carries_the_codec_and_its_own_options(name, options):
    from flowertune.wire import WireHeader, options_from

    codec = get_codec(name, **options)
    header = WireHeader.of(codec, version=4, base=3)
    back = WireHeader.from_config(dict(header.to_config()))
    assert back == header and back.build_codec().options() == options and back.build_codec().name == name
    assert WireHeader.from_config({**header.to_config(), "wire-base": -1}).base is None  # a full payload
    # a codec declares which config field sets each of its options
    settings = type("RunSettings", (), {"wire_topk_fraction": 0.3})()
    assert options_from(name, settings) == ({"fraction": 0.3} if options else {})


def test_a_header_with_an_option_its_codec_does_not_take_is_refused():
    from flowertune.wire import WireHeader

    with pytest.raises(ValueError, match="does not take options"):
        WireHeader.from_config({"wire-codec": "delta-int8", "wire-option-fraction": 0.1}).build_codec()

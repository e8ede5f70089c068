"""Wire formats for adapter updates: adapter arrays <-> the numpy arrays put into a Flower ``ArrayRecord``.

A codec turns ``{tensor key: fp32 array}`` into a *payload* (``{payload key: array}``, which the federation
puts into an ``ArrayRecord``) and back::

    codec = get_codec("delta-topk-int8", fraction=0.1)
    payload, residual = codec.encode(arrays, reference, residual)   # residual: kept by the encoder
    arrays = codec.decode(payload, reference)                       # full fp32 arrays

========================  =========  =========================================================================
codec                     lossless   payload for one tensor ``k``
========================  =========  =========================================================================
``fp32`` (default)        yes        ``k``: the weights in fp32 (exactly what was sent before codecs existed)
``fp16``                  no         ``k``: the weights in fp16
``delta-fp16``            no         ``k::delta``: ``new - reference`` in fp16
``delta-int8``            no         ``k::q`` int8 of the shape of ``k`` + ``k::scale`` fp32 per row (output
                                     channel; one scale for a 1-D tensor such as a DoRA magnitude vector)
``delta-int4/3/2``        no         ``k::q`` the update quantized to 4/3/2 bits (levels -L..L), bit-packed into
                                     uint8, + ``k::scale`` fp32 per slice along the longer axis (rank rows of
                                     LoRA A, rank columns of LoRA B); error feedback
``delta-topk-int8``       no         top ``fraction`` of ``|update|`` per tensor: ``k::q`` int8 values,
                                     ``k::idx`` uint8 gaps between flat positions (a gap over 255 is
                                     bridged by zero-valued filler entries), ``k::scale`` one fp32 scale
========================  =========  =========================================================================

Rules shared by every codec:

* A key missing from a payload is unchanged: ``decode`` takes it from ``reference``. Encoders leave out
  a tensor whose update is all zero (delta codecs) or whose wire value equals the reference bit for bit.
* Delta codecs need a reference and decode to ``reference + update``. ``delta-int8``, ``delta-int4/3/2``
  and ``delta-topk-int8`` do error feedback: the quantization error is returned as the new ``residual``,
  which the caller keeps and passes to the next ``encode`` (added to that round's update).
* Non-finite values are rejected with a ``ValueError`` naming the tensor, on encode (client) and on
  decode (server: a NaN/inf update is never aggregated). So is a value that does not fit fp16.
* Scales are fp32 because LoRA updates (~1e-6..1e-3) divided by 127 underflow fp16.

Count bytes with :func:`payload_bytes`, which equals ``ArrayRecord.count_bytes()`` of the payload.
"""

from __future__ import annotations

import io
import math
from typing import Any, ClassVar, Protocol

import numpy as np

from flowertune.catalog import CODECS
from flowertune.wire.bits import pack_bits, unpack_bits

Arrays = dict[str, np.ndarray]
SEP = "::"
_F32 = np.float32


class Codec(Protocol):
    """The shape every codec has (see the module docstring)."""

    name: str
    lossless: bool
    is_delta: bool
    # the codec's own options: {option of __init__: the RunConfig field that sets it}
    OPTIONS: ClassVar[dict[str, str]]

    def options(self) -> dict[str, Any]: ...

    def encode(
        self, arrays: Arrays, reference: Arrays | None, residual: Arrays | None
    ) -> tuple[Arrays, Arrays | None]: ...

    def decode(self, payload: Arrays, reference: Arrays | None) -> Arrays: ...


# the codec classes below are the catalog entries (flowertune/catalog.py); options go to their __init__
DEFAULT_CODEC = "fp32"  # lossless: what was sent before codecs existed


def get_codec(name: str, **options: Any) -> Codec:
    """The codec called ``name`` built with ``options`` (e.g. ``fraction=0.05`` for top-k)."""
    cls = CODECS.get(name)
    try:
        return cls(**options)
    except TypeError:
        raise ValueError(f"wire codec {name!r} does not take options {sorted(options)}") from None


def options_from(name: str, settings: Any) -> dict[str, Any]:
    """The options codec ``name`` declares, read from ``settings`` (a ``RunConfig``: ``wire.topk-fraction``...)."""
    return {opt: getattr(settings, field) for opt, field in CODECS.get(name).OPTIONS.items()}


def npy_bytes(value: np.ndarray) -> int:
    """Size of ``value`` serialized as ``.npy`` (how Flower puts an array on the wire)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
    return buf.tell()


def payload_bytes(payload: Arrays) -> int:
    """Bytes Flower counts for this payload (``ArrayRecord.count_bytes``): ``.npy`` size plus key length per entry."""
    return sum(npy_bytes(v) + len(k) for k, v in payload.items())


def _check_finite(key: str, value: np.ndarray, what: str = "non-finite values (NaN/inf)") -> None:
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError(f"tensor {key!r} has {what}")


def _fp32(key: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if SEP in key:
        raise ValueError(f"tensor key {key!r} contains the payload separator {SEP!r}")
    _check_finite(key, value)
    return value.astype(_F32, copy=False)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _reference(key: str, reference: Arrays, shape: tuple[int, ...]) -> np.ndarray:
    if key not in reference:
        raise ValueError(f"tensor {key!r} is not in the reference adapter")
    ref = np.asarray(reference[key], dtype=_F32)
    if ref.shape != shape:
        raise ValueError(f"tensor {key!r} has shape {shape}, the reference has {ref.shape}")
    return ref


def _expect(key: str, array: np.ndarray, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if array.dtype != np.dtype(dtype) or array.shape != shape:
        raise ValueError(f"payload {key!r} is {array.dtype}{array.shape}, expected {np.dtype(dtype)}{shape}")
    _check_finite(key, array)
    return array


class FullCodec:
    """Whole weights cast to ``dtype``; lossless for fp32."""

    is_delta = False
    OPTIONS: ClassVar[dict[str, str]] = {}

    def options(self) -> dict[str, Any]:
        return {}

    def __init__(self, name: str, dtype: Any) -> None:
        self.name, self.dtype = name, np.dtype(dtype)
        self.lossless = self.dtype == np.dtype(_F32)

    def encode(
        self, arrays: Arrays, reference: Arrays | None = None, residual: Arrays | None = None
    ) -> tuple[Arrays, Arrays | None]:
        payload = {}
        for key, value in arrays.items():
            value = _fp32(key, value)
            with np.errstate(over="ignore"):  # overflow becomes inf, rejected just below
                wire = value.astype(self.dtype)
            _check_finite(key, wire, f"values that do not fit {self.name}")
            ref = None if reference is None else reference.get(key)
            if ref is not None and (_same_bits(value, ref) or _same_bits(wire.astype(_F32), ref)):
                continue
            payload[key] = wire
        return payload, None

    def decode(self, payload: Arrays, reference: Arrays | None = None) -> Arrays:
        out = dict(reference or {})
        for key, wire in payload.items():
            shape = wire.shape if reference is None else _reference(key, reference, wire.shape).shape
            out[key] = _expect(key, wire, self.dtype, shape).astype(_F32)
        return out


class FP32(FullCodec):
    def __init__(self) -> None:
        super().__init__("fp32", np.float32)


class FP16(FullCodec):
    def __init__(self) -> None:
        super().__init__("fp16", np.float16)


class DeltaCodec:
    """Base of the codecs that send ``new - reference``; subclasses pack/unpack one tensor's update."""

    name = "delta"
    lossless = False
    is_delta = True
    error_feedback = False
    parts: tuple[str, ...] = ()
    OPTIONS: ClassVar[dict[str, str]] = {}

    def options(self) -> dict[str, Any]:
        return {opt: getattr(self, opt) for opt in self.OPTIONS}

    def pack(self, key: str, update: np.ndarray) -> tuple[Arrays, np.ndarray | None]:
        """``({part: array}, quantization error)`` for one non-zero fp32 update."""
        raise NotImplementedError

    def unpack(self, key: str, parts: Arrays, shape: tuple[int, ...]) -> np.ndarray:
        """The fp32 update of ``shape`` from its validated parts."""
        raise NotImplementedError

    def encode(
        self, arrays: Arrays, reference: Arrays | None, residual: Arrays | None = None
    ) -> tuple[Arrays, Arrays | None]:
        if reference is None:
            raise ValueError(f"wire codec {self.name!r} encodes against a reference; send full fp32 first")
        payload: Arrays = {}
        new_residual: Arrays = {}
        for key, value in arrays.items():
            value = _fp32(key, value)
            update = value - _reference(key, reference, value.shape)
            if self.error_feedback and residual is not None and key in residual:
                update = update + residual[key]
            if not update.any():
                continue
            parts, error = self.pack(key, update)
            payload.update({f"{key}{SEP}{part}": array for part, array in parts.items()})
            if error is not None and error.any():
                new_residual[key] = error
        return payload, (new_residual if self.error_feedback else None)

    def decode(self, payload: Arrays, reference: Arrays | None) -> Arrays:
        if reference is None:
            raise ValueError(f"wire codec {self.name!r} decodes against a reference")
        grouped: dict[str, Arrays] = {}
        for name, array in payload.items():
            key, sep, part = name.rpartition(SEP)
            if not sep or part not in self.parts:
                raise ValueError(f"payload key {name!r} is not <tensor>{SEP}<{'|'.join(self.parts)}>")
            grouped.setdefault(key, {})[part] = array
        out = dict(reference)
        for key, parts in grouped.items():
            if set(parts) != set(self.parts):
                raise ValueError(f"tensor {key!r} has payload parts {sorted(parts)}, expected {list(self.parts)}")
            if key not in reference:
                raise ValueError(f"tensor {key!r} is not in the reference adapter")
            ref = np.asarray(reference[key], dtype=_F32)
            new = ref + self.unpack(key, parts, ref.shape)
            _check_finite(key, new)
            out[key] = new
        return out


class DeltaFP16(DeltaCodec):
    name, parts = "delta-fp16", ("delta",)

    def pack(self, key: str, update: np.ndarray) -> tuple[Arrays, np.ndarray | None]:
        with np.errstate(over="ignore"):
            wire = update.astype(np.float16)
        _check_finite(key, wire, "an update that does not fit fp16")
        return {"delta": wire}, None

    def unpack(self, key: str, parts: Arrays, shape: tuple[int, ...]) -> np.ndarray:
        return _expect(f"{key}{SEP}delta", parts["delta"], np.float16, shape).astype(_F32)


def _rows(update: np.ndarray) -> np.ndarray:
    """Per output channel: matrices by first axis; a vector (DoRA magnitude) is one row."""
    return update.reshape(update.shape[0] if update.ndim >= 2 else 1, -1)


def _quantize(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    safe = np.where(scale > 0, scale, 1).astype(_F32)
    return np.clip(np.rint(values / safe), -127, 127).astype(np.int8)


class DeltaInt8(DeltaCodec):
    name, parts, error_feedback = "delta-int8", ("q", "scale"), True

    def pack(self, key: str, update: np.ndarray) -> tuple[Arrays, np.ndarray | None]:
        rows = _rows(update)
        scale = (np.abs(rows).max(axis=1) / 127).astype(_F32)
        q = _quantize(rows, scale[:, None])
        error = rows - q.astype(_F32) * scale[:, None]
        return {"q": q.reshape(update.shape), "scale": scale}, error.reshape(update.shape)

    def unpack(self, key: str, parts: Arrays, shape: tuple[int, ...]) -> np.ndarray:
        q = _rows(_expect(f"{key}{SEP}q", parts["q"], np.int8, shape))
        scale = _expect(f"{key}{SEP}scale", parts["scale"], _F32, (q.shape[0],))
        return (q.astype(_F32) * scale[:, None]).reshape(shape)


def _slices(update: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(2-D view with one slice per row, transposed?)``: slices run along the longer axis of a matrix.

    A LoRA A (``[r, in]``) gets one scale per rank row, a LoRA B (``[out, r]``) one per rank column, so
    each scale covers hundreds of entries and costs under 2% of the payload even at 3 bits.
    """
    if update.ndim < 2:
        return update.reshape(1, -1), False
    rows = update.reshape(update.shape[0], -1)
    return (rows.T, True) if rows.shape[0] > rows.shape[1] else (rows, False)


class DeltaLowBit(DeltaCodec):
    """Symmetric ``bits``-bit quantization of the update (levels -L..L, L = 2**(bits-1) - 1), bit-packed.

    One fp32 scale (``absmax / L``) per slice along the longer axis; error feedback like ``delta-int8``.
    Payload: ``k::q`` uint8 bit-packed codes, ``k::scale`` fp32 per slice.
    """

    parts, error_feedback, bits = ("q", "scale"), True, 4

    def pack(self, key: str, update: np.ndarray) -> tuple[Arrays, np.ndarray | None]:
        level = 2 ** (self.bits - 1) - 1
        view, transposed = _slices(update)
        scale = (np.abs(view).max(axis=1) / level).astype(_F32)
        safe = np.where(scale > 0, scale, 1).astype(_F32)[:, None]
        q = np.clip(np.rint(view / safe), -level, level)
        error = view - q.astype(_F32) * scale[:, None]
        error = error.T if transposed else error
        return ({"q": pack_bits((q + level).astype(np.uint8), self.bits), "scale": scale},
                error.reshape(update.shape))

    def unpack(self, key: str, parts: Arrays, shape: tuple[int, ...]) -> np.ndarray:
        level = 2 ** (self.bits - 1) - 1
        view, transposed = _slices(np.empty(shape, dtype=np.uint8))
        n = math.prod(shape)
        q = _expect(f"{key}{SEP}q", parts["q"], np.uint8, (math.ceil(n * self.bits / 8),))
        scale = _expect(f"{key}{SEP}scale", parts["scale"], _F32, (view.shape[0],))
        codes = unpack_bits(q, self.bits, n).astype(_F32) - level
        if (codes > level).any():
            raise ValueError(f"payload {key}{SEP}q has codes outside -{level}..{level}")
        values = codes.reshape(view.shape) * scale[:, None]
        return (values.T if transposed else values).reshape(shape)


class DeltaInt4(DeltaLowBit):
    name, bits = "delta-int4", 4


class DeltaInt3(DeltaLowBit):
    name, bits = "delta-int3", 3


class DeltaInt2(DeltaLowBit):
    name, bits = "delta-int2", 2


class DeltaTopKInt8(DeltaCodec):
    name, parts, error_feedback = "delta-topk-int8", ("q", "idx", "scale"), True
    OPTIONS: ClassVar[dict[str, str]] = {"fraction": "wire_topk_fraction"}

    def __init__(self, fraction: float = 0.1) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"delta-topk-int8 fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def pack(self, key: str, update: np.ndarray) -> tuple[Arrays, np.ndarray | None]:
        flat = update.ravel()
        n = flat.size
        k = max(1, math.ceil(self.fraction * n))
        idx = np.sort(np.argpartition(np.abs(flat), n - k)[n - k:]) if k < n else np.arange(n)
        scale = np.float32(np.abs(flat[idx]).max() / 127)
        q = _quantize(flat[idx], scale)
        keep = q != 0  # entries that round to zero stay in the residual instead of costing bytes
        idx, q = idx[keep], q[keep]
        error = flat.copy()
        if not idx.size:  # update so small its scale underflowed: send nothing, keep it all
            return {}, update
        error[idx] -= q.astype(_F32) * scale
        # positions as uint8 gaps; a gap g > 255 becomes (g - 1) // 255 filler entries (q = 0) of gap 255
        steps = np.diff(idx, prepend=0)
        fillers = np.maximum(0, (steps - 1) // 255)
        ends = np.cumsum(fillers + 1) - 1
        gaps = np.full(ends[-1] + 1, 255, dtype=np.uint8)
        gaps[ends] = steps - 255 * fillers
        q_out = np.zeros(ends[-1] + 1, dtype=np.int8)
        q_out[ends] = q
        return {"q": q_out, "idx": gaps, "scale": np.array([scale], dtype=_F32)}, error.reshape(update.shape)

    def unpack(self, key: str, parts: Arrays, shape: tuple[int, ...]) -> np.ndarray:
        q = parts["q"]
        _expect(f"{key}{SEP}q", q, np.int8, (q.size,))
        gaps = _expect(f"{key}{SEP}idx", parts["idx"], np.uint8, q.shape)
        scale = _expect(f"{key}{SEP}scale", parts["scale"], _F32, (1,))
        n = math.prod(shape)
        if q.size > n + n // 255 + 1:  # every entry once, plus the filler entries that bridge long gaps
            raise ValueError(f"payload {key}{SEP}q has {q.size} entries for the {n} of {key!r}")
        if q.size > 1 and not gaps[1:].all():
            raise ValueError(f"payload {key}{SEP}idx repeats a position (a gap of 0 after the first entry)")
        positions = np.cumsum(gaps, dtype=np.int64)
        flat = np.zeros(n, dtype=_F32)
        if positions.size and positions[-1] >= flat.size:
            raise ValueError(f"payload {key}{SEP}idx points past the {flat.size} entries of {key!r}")
        flat[positions] = q.astype(_F32) * scale[0]
        return flat.reshape(shape)

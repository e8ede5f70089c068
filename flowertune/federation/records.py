"""Flower's ``ArrayRecord`` <-> ``{name: numpy array}`` (the wire package itself is numpy only)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message

Arrays = dict[str, np.ndarray]


def to_array_record(payload: Arrays) -> ArrayRecord:
    """The payload as a Flower ``ArrayRecord`` (which does not take a dict of numpy arrays directly)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in payload.items()})


def from_array_record(record: ArrayRecord) -> Arrays:
    """The payload stored in ``record``, keys and dtypes as encoded."""
    return {k: v.numpy() for k, v in record.items()}


def message_bytes(messages: Iterable[Message]) -> int:
    """Bytes of all ArrayRecords in ``messages`` (``ArrayRecord.count_bytes``, as FlowerTune counts)."""
    return sum(rec.count_bytes() for m in messages if m.has_content() for rec in m.content.array_records.values())


def nudge_if_unchanged(arrays: ArrayRecord, glob: Arrays) -> ArrayRecord:
    """``arrays``, or if it equals ``glob`` exactly, ``glob`` with one entry moved by one ulp (at least 1e-15, so
    that its square is not 0 in float32). Flower 1.42's DP clipping (``clip_inputs_inplace``, server wrappers and
    ``fixedclipping_mod`` alike) divides by the update's norm, so an unchanged adapter -- a node with nothing to
    train on, or one probing the server -- would raise ZeroDivisionError. The nudge moves an average by far less
    than the DP noise added to it, and stays within any clipping norm."""
    a = from_array_record(arrays)
    if any(k not in a or not np.array_equal(a[k], glob[k]) for k in glob) or not glob:
        return arrays
    k = next(iter(glob))
    moved = {**a, k: a[k].copy()}
    flat = moved[k].reshape(-1)
    flat[0] = flat[0] + max(np.spacing(np.abs(flat[0])), np.float32(1e-15))
    return to_array_record(moved)

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

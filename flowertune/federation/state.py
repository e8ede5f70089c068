"""Crash-safe state files: named arrays plus a JSON header in one safetensors file, written atomically.

A state file is written to a temporary name, fsynced and renamed (and the directory fsynced), after a check
that the disk has room for it, so a reader sees either the previous file or the complete new one. The header carries a SHA-256 over the JSON and every array's name, dtype,
shape and bytes: a file that was truncated or altered after the fact is refused (:class:`StateError`),
never half-loaded. Used for the server's per-round state (``rundir.py``) and a client's wire state.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flowertune.durable import write_bytes

FORMAT = 1
_ROUND = re.compile(r"^round-(\d+)\.safetensors$")


class StateError(ValueError):
    """A state file that cannot be trusted (truncated, altered, or of another format)."""


def _digest(meta_json: str, arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta_json.encode())
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_state(path: Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` and the JSON-able ``meta`` to ``path`` atomically."""
    from safetensors.numpy import save

    meta_json = json.dumps(dict(meta), sort_keys=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = {"format": str(FORMAT), "meta": meta_json, "sha256": _digest(meta_json, arrays)}
    data = save(arrays, metadata=header)
    return write_bytes(path, data)  # free space checked first; temp + fsync + rename + directory fsync


def load_state(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a state file; :class:`StateError` if it is incomplete or does not verify."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        raw = path.read_bytes()
        arrays = load(raw)
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])["__metadata__"]
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        raise StateError(f"state file {path} is unreadable or truncated ({type(exc).__name__}: {exc})") from exc
    if header.get("format") != str(FORMAT):
        raise StateError(f"state file {path} has format {header.get('format')!r}, this flowertune reads {FORMAT}")
    if _digest(header["meta"], arrays) != header.get("sha256"):
        raise StateError(f"state file {path} does not match its checksum (altered or partly written)")
    return json.loads(header["meta"]), arrays


def round_files(directory: Path) -> list[tuple[int, Path]]:
    """``round-N.safetensors`` files of ``directory``, newest round first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _ROUND.match(p.name))]
    return sorted(found, reverse=True)


def prune(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest round files."""
    for _, p in round_files(directory)[keep:]:
        p.unlink(missing_ok=True)


def split_prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays stored under ``prefix/``, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

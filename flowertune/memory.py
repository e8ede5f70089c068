"""Memory figures of this process for the run metrics: current and peak RSS, and CUDA peak when present."""

from __future__ import annotations

import resource


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_memory_mb() -> dict[str, float]:
    """``rss_mb`` (now) and ``peak_rss_mb`` (high-water mark) of this process; ``peak_cuda_mb`` on CUDA.

    Peak RSS comes from ``VmHWM`` (``ru_maxrss`` where /proc is missing, which on Linux would also count a
    forked parent's peak).
    """
    peak = _status_mb("VmHWM")
    out = {"rss_mb": _status_mb("VmRSS") or 0.0,
           "peak_rss_mb": peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return out

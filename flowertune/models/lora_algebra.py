"""LoRA adapters as pairs of factors: which arrays pair up, and the exact mean of their products.

A LoRA module adds ``ΔW = s · B A`` to a frozen weight (``B``: out × r, ``A``: r × in, ``s = alpha / r``).
Averaging ``A`` and ``B`` separately (FedAvg) does not give the average of the nodes' ``ΔW``:
``mean(B_i) mean(A_i) != mean(B_i A_i)``. :func:`exact_mean` computes ``M = Σ w_i B_i A_i`` without ever
forming an out × in matrix (the nodes' factors are stacked, ``M = [w_1 B_1 … w_k B_k] [A_1; …; A_k]``,
and a QR of each side leaves an SVD of a (Σr_i) × (Σr_i) core), and re-projects it onto rank ``r``: the
best rank-``r`` approximation of ``M`` (Eckart–Young), exact when ``M`` has rank ``r`` or less.

Numpy only: the server's strategy stack and the tests use it without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

A_PART, B_PART = ".lora_A.", ".lora_B."
EMB_A, EMB_B = ".lora_embedding_A", ".lora_embedding_B"  # LoRA on an embedding: A is r x vocab, B is dim x r


def is_lora_a(key: str) -> bool:
    return A_PART in key or key.endswith(EMB_A)


def is_lora_b(key: str) -> bool:
    return B_PART in key or key.endswith(EMB_B)


def partner(a_key: str) -> str:
    """The ``B`` key of an ``A`` key."""
    return a_key.replace(A_PART, B_PART) if A_PART in a_key else a_key[: -len(EMB_A)] + EMB_B


def lora_pairs(keys: Iterable[str]) -> list[tuple[str, str]]:
    """``(A key, B key)`` of every LoRA module among ``keys`` (PEFT's state-dict names), in key order."""
    keys = list(keys)
    present = set(keys)
    pairs = []
    for k in keys:
        if is_lora_a(k):
            b = partner(k)
            if b not in present:
                raise ValueError(f"adapter array {k!r} has no B partner {b!r}")
            pairs.append((k, b))
    return pairs


def rank_of(arrays: dict[str, np.ndarray]) -> int | None:
    """The LoRA rank of an adapter (rows of its first ``A``), None if it has no LoRA factors."""
    return next((int(v.shape[0]) for k, v in arrays.items() if is_lora_a(k)), None)


def truncate(arrays: dict[str, np.ndarray], rank: int) -> dict[str, np.ndarray]:
    """The adapter restricted to its first ``rank`` components (``A[:rank]``, ``B[:, :rank]``); other arrays as they
    are. With ``alpha`` scaled as the rank (``config.at_rank``), the product of each module is the sum of those
    components of the full one."""
    out = {}
    for k, v in arrays.items():
        out[k] = v[:rank] if is_lora_a(k) else v[:, :rank] if is_lora_b(k) else v
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def pad(node: dict[str, np.ndarray], glob: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A node's lower-rank adapter at the global's rank: its own components first, then the global's remaining
    ones unchanged, so its *update* is zero in the components it did not train (zero-padding of the update)."""
    out = {}
    for k, g in glob.items():
        v = node[k]
        if is_lora_a(k) and v.shape[0] < g.shape[0]:
            v = np.concatenate([v, g[v.shape[0]:]], axis=0)
        elif is_lora_b(k) and v.shape[1] < g.shape[1]:
            v = np.concatenate([v, g[:, v.shape[1]:]], axis=1)
        out[k] = np.ascontiguousarray(v, dtype=np.float32)
    return out


def fp16_exact(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to the nearest fp16 value, kept as fp32: a frozen ``A`` the lossy codecs' first (fp16)
    downlink reproduces bit for bit, so no node ever holds a different copy of it."""
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def exact_mean(factors: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float], rank: int,
               previous_a: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(B, A)`` of rank ``rank`` whose product is the best rank-``rank`` approximation of the weighted mean
    of the products ``B_i A_i`` (``factors``: ``(B_i, A_i)``, any ranks; ``weights`` normalised here).

    The singular values go into ``B`` (``B = U S / c``, ``A = c Vᵀ``: ``A``'s rows are orthogonal, of norm
    ``c`` = the root-mean-square row norm of ``previous_a`` (the global before the round; 1 without it), so
    ``A`` keeps the scale it had -- a freshly initialised LoRA ``A`` included -- and the next round's gradients
    theirs). Each component's sign is chosen so that its ``A`` row points the way of ``previous_a``'s: the
    adapter moves no more between rounds than its product does, and delta codecs send small deltas.
    If the stacked rank is below ``rank``, the missing rows of ``A`` are orthonormal completions with zero
    ``B`` columns (a product of zero, and a direction the next round can still train).
    """
    if not factors:
        raise ValueError("exact_mean needs at least one (B, A) pair")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(factors),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(factors)} finite numbers >= 0 with a positive sum, got {weights}")
    w = w / w.sum()
    b_stack = np.concatenate([wi * np.asarray(b, np.float64) for wi, (b, _) in zip(w, factors)], axis=1)
    a_stack = np.concatenate([np.asarray(a, np.float64) for _, a in factors], axis=0)
    out_dim, in_dim = b_stack.shape[0], a_stack.shape[1]
    if rank > min(out_dim, in_dim):
        raise ValueError(f"rank {rank} exceeds the module's {out_dim} x {in_dim} shape")
    qb, rb = np.linalg.qr(b_stack)  # out x k, k x Σr
    qa, ra = np.linalg.qr(a_stack.T)  # in x k', k' x Σr
    u_c, s, vt_c = np.linalg.svd(rb @ ra.T)  # the core: M = qb (rb raᵀ) qaᵀ
    u, vt = qb @ u_c, vt_c @ qa.T
    k = min(rank, s.size)
    b_new = np.zeros((out_dim, rank))
    a_new = np.zeros((rank, in_dim))
    b_new[:, :k] = u[:, :k] * s[:k]
    a_new[:k] = vt[:k]
    if k < rank:  # complete A's rows to an orthonormal set (their B columns stay zero)
        basis = np.linalg.qr(np.concatenate([a_new[:k].T, np.eye(in_dim)], axis=1))[0]
        a_new[k:] = basis[:, k:rank].T
    if previous_a is not None:
        prev = np.asarray(previous_a, np.float64)
        if prev.shape == a_new.shape:
            flip = np.einsum("ij,ij->i", a_new, prev) < 0
            a_new[flip] *= -1
            b_new[:, flip] *= -1
        c = float(np.sqrt(np.mean(np.sum(prev * prev, axis=1))))
        if np.isfinite(c) and c > 0:
            a_new *= c
            b_new /= c
    return b_new.astype(np.float32), a_new.astype(np.float32)


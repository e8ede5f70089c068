"""Update-norm bounding: every decoded update ``reply - global`` is scaled down to an L2 norm of at most the
bound, before any aggregator sees it, so it composes with FedAvg, FedAdam or a robust rule alike.

``fixed``: the bound is ``strategy.norm-bound``. ``adaptive``: the bound follows a quantile of the honest
updates' norms, as in Andrew et al. 2021 (and Flower's adaptive clipping, without noise): after each round
``C <- C * exp(-lr * (b - q))`` where ``b`` is the share of updates whose norm was at most ``C`` and ``q`` is
``strategy.norm-bound-quantile``; ``strategy.norm-bound`` is where ``C`` starts. The bound is resume state.
``median`` (on by default, ``strategy.norm-bound-median``): each round, every update is also scaled to at most
that multiple of the median norm of the round's updates. It needs no tuning to the model's scale and, with
three or more replies, one attacker cannot move the median past the honest norms; with fewer it is skipped.
Each update scaled is noted in the round's ``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.stack.base import StackContext, UpdateLayer


def update_norm(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """L2 norm of ``arrays - reference`` over the reference's keys (in float64)."""
    return math.sqrt(sum(float(np.sum(np.square(arrays[k].astype(np.float64) - reference[k]))) for k in reference))


def bound_update(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                 bound: float) -> tuple[dict[str, np.ndarray], float]:
    """``arrays`` with its update from ``reference`` scaled to norm <= ``bound``; and the update's norm before."""
    update = {k: arrays[k].astype(np.float64) - reference[k] for k in reference}
    norm = math.sqrt(sum(float(np.sum(np.square(u))) for u in update.values()))
    if norm <= bound:
        return arrays, norm
    scale = bound / norm
    return {k: (reference[k] + update[k] * scale).astype(np.float32) for k in reference}, norm


class NormBound(UpdateLayer):
    """Scales each decoded update to the bound; with ``adaptive``, moves the bound toward a norm quantile."""

    name = "norm-bound"
    state_name = "norm-bound"

    def __init__(self, strategy: Any, ctx: StackContext, bound: float = 0.0, adaptive: bool = False,
                 quantile: float = 0.5, lr: float = 0.2, median: float = 0.0) -> None:
        super().__init__(strategy, ctx)
        self.bound, self.adaptive, self.quantile, self.lr, self.median = bound, adaptive, quantile, lr, median
        self.last_norms: list[float] = []

    def describe(self) -> str:
        parts = [] if self.bound <= 0 else [f"adaptive q={self.quantile:g} {self.bound:.4g}" if self.adaptive
                                            else f"fixed {self.bound:.4g}"]
        return f"norm-bound({', '.join(parts + ([f'median x{self.median:g}'] if self.median > 0 else []))})"

    def round_bound(self, norms: list[float]) -> float:
        """The bound this round's updates get: the fixed/adaptive one and ``median`` x their median norm."""
        limits = [self.bound] if self.bound > 0 else []
        if self.median > 0 and len(norms) >= 3:
            limits.append(self.median * float(np.median(norms)))
        return min(limits, default=math.inf)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        decoded = [from_array_record(msg.content["arrays"]) for msg in replies]
        norms = [update_norm(a, self._global) for a in decoded]
        bound = self.round_bound(norms)
        for msg, arrays, norm in zip(replies, decoded, norms):
            if norm > bound:
                bounded, _ = bound_update(arrays, self._global, bound)
                msg.content = RecordDict({**msg.content.metric_records, "arrays": to_array_record(bounded)})
                self.ctx.traffic.notes.append(
                    f"node {msg.metadata.src_node_id}: update norm {norm:.4g} scaled to the bound {bound:.4g}")
        self.last_norms = norms
        result = self.strategy.aggregate_train(server_round, replies)
        if self.adaptive and self.bound > 0 and norms:
            below = sum(n <= self.bound for n in norms) / len(norms)
            self.bound *= math.exp(-self.lr * (below - self.quantile))
        return result

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"bound": self.bound}, {}

    def import_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.bound = float(meta["bound"])

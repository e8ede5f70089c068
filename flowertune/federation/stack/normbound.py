"""Update-norm bounding: every decoded update ``reply - global`` is scaled down to an L2 norm of at most the
bound, before any aggregator sees it, so it composes with FedAvg, FedAdam or a robust rule alike.

``fixed``: the bound is ``strategy.norm-bound``. ``adaptive``: the bound follows a quantile of the honest
updates' norms, as in Andrew et al. 2021 (and Flower's adaptive clipping, without noise): after each round
``C <- C * exp(-lr * (b - q))`` where ``b`` is the share of updates whose norm was at most ``C`` and ``q`` is
``strategy.norm-bound-quantile``; ``strategy.norm-bound`` is where ``C`` starts. The bound is resume state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.stack.base import Layer, StackContext


def bound_update(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                 bound: float) -> tuple[dict[str, np.ndarray], float]:
    """``arrays`` with its update from ``reference`` scaled to norm <= ``bound``; and the update's norm before."""
    update = {k: arrays[k].astype(np.float64) - reference[k] for k in reference}
    norm = math.sqrt(sum(float(np.sum(np.square(u))) for u in update.values()))
    if norm <= bound:
        return arrays, norm
    scale = bound / norm
    return {k: (reference[k] + update[k] * scale).astype(np.float32) for k in reference}, norm


class NormBound(Layer):
    """Scales each decoded update to the bound; with ``adaptive``, moves the bound toward a norm quantile."""

    name = "norm-bound"
    state_name = "norm-bound"

    def __init__(self, strategy: Any, ctx: StackContext, bound: float, adaptive: bool = False,
                 quantile: float = 0.5, lr: float = 0.2) -> None:
        super().__init__(strategy, ctx)
        self.bound, self.adaptive, self.quantile, self.lr = bound, adaptive, quantile, lr
        self._global: dict[str, np.ndarray] = {}
        self.last_norms: list[float] = []

    def describe(self) -> str:
        kind = f"adaptive q={self.quantile:g}" if self.adaptive else "fixed"
        return f"norm-bound({kind}, {self.bound:.4g})"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = {k: v.astype(np.float64) for k, v in from_array_record(arrays).items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, norms = list(replies), []
        for msg in replies:
            bounded, norm = bound_update(from_array_record(msg.content["arrays"]), self._global, self.bound)
            norms.append(norm)
            msg.content = RecordDict({**msg.content.metric_records, "arrays": to_array_record(bounded)})
        self.last_norms = norms
        result = self.strategy.aggregate_train(server_round, replies)
        if self.adaptive and norms:
            below = sum(n <= self.bound for n in norms) / len(norms)
            self.bound *= math.exp(-self.lr * (below - self.quantile))
        return result

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"bound": self.bound}, {}

    def import_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.bound = float(meta["bound"])

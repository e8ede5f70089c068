"""The global guard: an aggregate that is not finite, or whose norm grew past ``strategy.max-global-growth``
times the previous global's, is not kept — the round is dropped with its reason and the run goes on from the
last good global (the aggregator's own state, e.g. FedAdam's moments, is put back as it was)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from flowertune.federation.stack.base import Layer, StackContext, aggregator, export_aggregator, import_aggregator


def global_norm(arrays: ArrayRecord) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(a.numpy(), dtype=np.float64))) for a in arrays.values())))


class GlobalGuard(Layer):
    """Checks the new global adapter before anything saves it."""

    name = "guard"

    def __init__(self, strategy: Any, ctx: StackContext, max_growth: float = 10.0) -> None:
        super().__init__(strategy, ctx)
        self.max_growth = max_growth  # 0: only finiteness is checked
        self._previous: ArrayRecord | None = None

    def describe(self) -> str:
        return f"guard(growth <= {self.max_growth:g}x)" if self.max_growth else "guard(finite)"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._previous = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def problem(self, new: ArrayRecord) -> str | None:
        """Why ``new`` cannot be the global adapter, or None."""
        if self._previous is not None and sorted(new.keys()) != sorted(self._previous.keys()):
            return "the aggregate has other arrays than the global adapter"
        norm = global_norm(new)
        if not np.isfinite(norm):
            return "the aggregate has NaN or inf values"
        before = global_norm(self._previous) if self._previous is not None else 0.0
        if self.max_growth and before > 0 and norm > self.max_growth * before:
            return (f"the aggregate's norm {norm:.4g} is {norm / before:.1f}x the previous global's "
                    f"(strategy.max-global-growth={self.max_growth:g})")
        return None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        inner = aggregator(self.strategy)
        saved = export_aggregator(inner)
        saved = ({k: dict(v) for k, v in saved[0].items()}, {k: v.copy() for k, v in saved[1].items()})
        new, metrics = self.strategy.aggregate_train(server_round, replies)
        reason = None if new is None else self.problem(new)
        if reason is None:
            return new, metrics
        import_aggregator(inner, *saved)  # FedAdam's moments, FedAvgM's momentum... as before this round
        self.ctx.traffic.dropped = reason
        return self._previous, None

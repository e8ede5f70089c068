"""Seeded sampling: Flower's own sampling, made reproducible (same seed, same partitions) and time-bounded."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from flowertune.federation.stack.base import Layer, StackContext

_RANDOM_LOCK = threading.Lock()  # Flower samples with the global `random`; we seed it per call


class NodeWaitTimeout(RuntimeError):
    """Flower's sampling waited longer than ``strategy.node-wait-timeout`` for enough nodes."""


class SortedGrid:
    """A Grid view listing only usable nodes, in a stable order, so that seeded sampling is reproducible.

    ``order`` maps the connected node ids to the usable ones in sampling order: by partition id (node
    ids are random per run, partitions are not), so the same seed samples the same partitions. Flower's
    ``sample_nodes`` polls ``get_node_ids`` without end while too few nodes are connected; this view
    raises :class:`NodeWaitTimeout` once that has gone on for ``deadline_s`` seconds.
    """

    def __init__(self, grid: Grid, order: Callable[[Iterable[int]], list[int]] = sorted,
                 deadline_s: float = float("inf")) -> None:
        self._grid = grid
        self._order = order
        self._deadline = time.monotonic() + deadline_s

    def get_node_ids(self) -> list[int]:
        nodes = self._order(self._grid.get_node_ids())
        if time.monotonic() > self._deadline:
            raise NodeWaitTimeout(f"only {len(nodes)} usable SuperNodes connected (strategy.node-wait-timeout)")
        return nodes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class SeededSampling(Layer):
    """Runs the wrapped strategy's sampling with ``random`` seeded by (seed, round, try) over a sorted grid."""

    name = "sampling"

    def __init__(self, strategy: Any, ctx: StackContext) -> None:
        super().__init__(strategy, ctx)

    def describe(self) -> str:
        return f"sampling(seed {self.ctx.seed})"

    def _seeded(self, salt: int, fn: Callable[[], Any]) -> Any:
        with _RANDOM_LOCK:
            state = random.getstate()
            random.seed(self.ctx.seed * 1_000_003 + salt)
            try:
                return fn()
            finally:
                random.setstate(state)

    def _grid(self, grid: Grid) -> SortedGrid:
        return SortedGrid(grid, self.ctx.order, self.ctx.node_wait_s)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        salt = 2 * server_round + 1_000_033 * self.ctx.attempt
        return list(self._seeded(salt, lambda: self.strategy.configure_train(server_round, arrays, config,
                                                                             self._grid(grid))))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return list(self._seeded(2 * server_round + 1, lambda: self.strategy.configure_evaluate(
            server_round, arrays, config, self._grid(grid))))

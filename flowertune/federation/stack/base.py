"""What every layer of the server's strategy stack shares: Flower's wrapper convention and the round ledger.

A layer is a Flower ``Strategy`` that holds the next one as ``self.strategy`` (as Flower's own DP wrappers
do), forwards every call it does not change, and adds one concern. The flowertune layers also share a
:class:`StackContext`: the node order and the sampling deadline the server loop sets, the retry count, and
the round's :class:`RoundTraffic` ledger that each layer writes its part of.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


@dataclass
class RoundTraffic:
    """The current round's bytes (meter) and verdicts on the replies (wire layer and gate)."""

    down: int = 0
    up: int = 0
    eval_down: int = 0
    accepted: int = 0
    accepted_nodes: set[int] = field(default_factory=set)
    rejected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def reset(self, down: int) -> None:
        self.__init__(down=down)  # type: ignore[misc]


def _partition_order(node_ids: Iterable[int]) -> list[int]:
    return sorted(node_ids)


@dataclass
class StackContext:
    """Set once by the server loop (``order``, ``partition_of``, ``node_wait_s``), per try (``attempt``)."""

    seed: int = 0
    order: Callable[[Iterable[int]], list[int]] = _partition_order  # usable nodes in sampling order
    partition_of: Callable[[int], int | None] = lambda node: None  # a node's partition (resume state key)
    node_wait_s: float = float("inf")  # how long Flower's sampling may wait for nodes
    attempt: int = 0  # > 0 when a round is resampled after too few usable updates
    traffic: RoundTraffic = field(default_factory=RoundTraffic)


class Layer(Strategy):
    """Forwards everything to ``self.strategy``; a subclass overrides what its one concern changes.

    ``state_name`` (if set) names the resume state the layer exports with :meth:`export_state` and takes
    back with :meth:`import_state`: a JSON-able header and named arrays, stored under that name.
    """

    name = "layer"
    state_name: str | None = None

    def __init__(self, strategy: Strategy, ctx: StackContext) -> None:
        super().__init__()
        self.strategy = strategy
        self.ctx = ctx

    def describe(self) -> str:
        return self.name

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {}

    def import_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`export_state`."""

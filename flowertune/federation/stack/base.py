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

from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.state import split_prefixed


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
    notes: list[str] = field(default_factory=list)  # what the gate changed in accepted replies (capped, dropped)
    client_metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # accepted replies' checked metrics
    dropped: str | None = None  # why the round's aggregate was not kept (the global guard)

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
    rows_of: Callable[[int], int | None] = lambda node: None  # training rows a node declared at check-in
    rank_of: Callable[[int], int | None] = lambda node: None  # LoRA rank a node declared (None: the global's)
    node_wait_s: float = float("inf")  # how long Flower's sampling may wait for nodes
    attempt: int = 0  # > 0 when a round is resampled after too few usable updates
    traffic: RoundTraffic = field(default_factory=RoundTraffic)
    save_spent: Callable[[dict[str, Any]], None] = lambda spent: None  # durable, before a round's tasks go out


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


class UpdateLayer(Layer):
    """A layer that judges the updates ``reply - global``: it keeps the round's global (float64) as it goes out."""

    def __init__(self, strategy: Strategy, ctx: StackContext) -> None:
        super().__init__(strategy, ctx)
        self._global: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = {k: v.astype(np.float64) for k, v in from_array_record(arrays).items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)


def layers(top: Strategy) -> list[Strategy]:
    """The stack from ``top`` down to Flower's aggregator (every wrapper holds the next as ``.strategy``)."""
    out = [top]
    while hasattr(out[-1], "strategy"):
        out.append(out[-1].strategy)
    return out


def find_layer(top: Strategy, kind: type) -> Any:
    """The layer of type ``kind`` in the stack under ``top`` (``LookupError`` if there is none)."""
    for s in layers(top):
        if isinstance(s, kind):
            return s
    raise LookupError(f"no {kind.__name__} layer in the stack")


def aggregator(top: Strategy) -> Strategy:
    """Flower's aggregator at the bottom of the stack."""
    return layers(top)[-1]


# -- resume state of Flower's aggregator -------------------------------------------------------------------
def export_aggregator(strategy: Strategy) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What a Flower strategy carries between rounds: every attribute holding arrays (an ``ArrayRecord``, a
    dict of arrays or a list of arrays); the rest is rebuilt from the config."""
    kinds: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, value in vars(strategy).items():
        if isinstance(value, ArrayRecord):
            value, kind = {k: v.numpy() for k, v in value.items()}, "arrayrecord"
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            kind = "dict"
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            value, kind = {str(i): v for i, v in enumerate(value)}, "list"
        else:
            continue
        kinds[name] = {"kind": kind, "keys": list(value)}  # key order kept: safetensors sorts names
        arrays.update({f"{name}/{k}": v for k, v in value.items()})
    return kinds, arrays


def import_aggregator(strategy: Strategy, kinds: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Inverse of :func:`export_aggregator`."""
    for name, spec in kinds.items():
        part = split_prefixed(arrays, name)
        ordered = {k: part[k] for k in spec["keys"]}
        if spec["kind"] == "arrayrecord":
            setattr(strategy, name, to_array_record(ordered))
        elif spec["kind"] == "dict":
            setattr(strategy, name, ordered)
        else:
            setattr(strategy, name, list(ordered.values()))

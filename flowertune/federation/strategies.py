"""Flower strategies with what an LLM federation needs on top, one mixin for all of them.

The mixin overrides only the hooks it needs: seeded client sampling, exact byte accounting on the
actual ArrayRecords (per destination node, the leaderboard convention), and rejection of client
replies whose adapter has the wrong keys, wrong shapes or non-finite values (the round goes on with
the rest). Aggregation itself is Flower's (``FedAvg`` weighted mean, ``FedAdam``'s server optimizer...).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from flowertune.catalog import STRATEGIES
from flowertune.config import StrategyConfig
from flowertune.models.adapter import AdapterUpdateError, check_arrays
from flowertune.wire import Downlink, from_array_record, get_codec, to_array_record

log = logging.getLogger(__name__)
_RANDOM_LOCK = threading.Lock()  # Flower samples with the global `random`; we seed it per call


def message_bytes(messages: Iterable[Message]) -> int:
    """Bytes of all ArrayRecords in ``messages`` (``ArrayRecord.count_bytes``, as FlowerTune counts)."""
    return sum(rec.count_bytes() for m in messages if m.has_content() for rec in m.content.array_records.values())


@dataclass
class RoundTraffic:
    """Bytes and reply bookkeeping of the current round."""

    down: int = 0
    up: int = 0
    eval_down: int = 0
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class NodeWaitTimeout(RuntimeError):
    """Flower's sampling waited longer than ``strategy.node-wait-timeout`` for enough nodes."""


class _SortedGrid:
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


class FlowerTuneMixin:
    """Seeded sampling, byte accounting and reply validation for any ``flwr.serverapp.strategy``."""

    seed: int
    traffic: RoundTraffic

    def setup(self, seed: int, codec: str = "fp32", **codec_options: Any) -> None:
        self.seed = seed
        self.traffic = RoundTraffic()
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.codec = get_codec(codec, **codec_options)
        self.downlink = Downlink(self.codec)  # per node: the adapter copy it holds (delta codecs)
        self._global: dict[str, np.ndarray] = {}
        self.node_order: Callable[[Iterable[int]], list[int]] = sorted  # set by the server loop (partition order)
        self.attempt = 0  # > 0 when a round is resampled after too few usable updates
        self.node_wait_s = float("inf")  # how long Flower's sampling may wait for nodes (set by the server loop)

    def _seeded(self, salt: int, fn: Callable[[], Any]) -> Any:
        with _RANDOM_LOCK:
            state = random.getstate()
            random.seed(self.seed * 1_000_003 + salt)
            try:
                return fn()
            finally:
                random.setstate(state)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._shapes = {k: tuple(a.shape) for k, a in arrays.items()}
        salt = 2 * server_round + 1_000_033 * self.attempt
        msgs = list(self._seeded(salt, lambda: super(FlowerTuneMixin, self).configure_train(
            server_round, arrays, config, _SortedGrid(grid, self.node_order, self.node_wait_s))))
        msgs = self._encode_downlink(server_round, arrays, msgs)
        self.traffic = RoundTraffic(down=message_bytes(msgs))
        return msgs

    def _encode_downlink(self, server_round: int, arrays: ArrayRecord, msgs: list[Message]) -> list[Message]:
        """Give every sampled node the global adapter in the wire codec: a delta from its own copy if known."""
        self._global = from_array_record(arrays)
        out = []
        for m in msgs:
            node = m.metadata.dst_node_id
            payload, base = self.downlink.payload_for(node, self._global, server_round)
            config = ConfigRecord(dict(m.content["config"]))
            config.update({"wire-codec": self.codec.name, "wire-version": server_round,
                           "wire-topk-fraction": float(getattr(self.codec, "fraction", 0.0)),
                           "wire-base": -1 if base is None else base})
            out.append(Message(RecordDict({"arrays": to_array_record(payload), "config": config}), dst_node_id=node,
                               message_type=MessageType.TRAIN))
        return out

    def _decode_uplink(self, msg: Message) -> Message | str:
        """A reply with its payload decoded to full fp32 arrays against the exact global adapter."""
        if msg.has_error() or "arrays" not in msg.content.array_records:
            return msg
        try:
            arrays = self.codec.decode(from_array_record(msg.content.array_records["arrays"]), self._global)
        except (ValueError, KeyError) as exc:
            return f"cannot decode the {self.codec.name} update: {exc}"
        # the aggregation sees full fp32 arrays; the bytes were already counted on the encoded reply
        msg.content = RecordDict({**msg.content.metric_records, "arrays": to_array_record(arrays)})
        return msg

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        msgs = list(self._seeded(2 * server_round + 1, lambda: super(FlowerTuneMixin, self).configure_evaluate(
            server_round, arrays, config, _SortedGrid(grid, self.node_order, self.node_wait_s))))
        self.traffic.eval_down += message_bytes(msgs)
        return msgs

    def check_reply(self, msg: Message) -> str | None:
        """Why ``msg`` cannot be aggregated, or None if it can."""
        if msg.has_error():
            return None  # Flower's own error handling logs and drops it
        content = msg.content
        if "arrays" not in content.array_records:
            return "no 'arrays' record"
        metrics = content.metric_records.get("metrics")
        if metrics is None or "num-examples" not in metrics or not metrics["num-examples"] > 0:
            return "missing or non-positive 'num-examples'"
        arrays = {k: v.numpy() for k, v in content.array_records["arrays"].items()}
        try:
            check_arrays(arrays, self._shapes)
        except AdapterUpdateError as exc:
            return str(exc)
        loss = metrics.get("train_loss", 0.0)
        if not np.isfinite(loss):
            return f"non-finite train_loss {loss}"
        return None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self.in_node_order(replies)  # aggregation order fixed: reproducible sums
        self.traffic.up = message_bytes(replies)
        good, accepted = [], set()
        for msg in replies:
            if msg.has_error():
                self.traffic.errors.append(f"node {msg.metadata.src_node_id}: {error_line(msg)}")
            decoded = self._decode_uplink(msg)
            reason = decoded if isinstance(decoded, str) else self.check_reply(decoded)
            msg = decoded if not isinstance(decoded, str) else msg
            if reason is None:
                good.append(msg)
                accepted.add(msg.metadata.src_node_id)
            else:
                node = msg.metadata.src_node_id
                self.traffic.rejected.append(f"node {node}: {reason}")
                log.warning("round %d: rejected the update of node %s: %s", server_round, node, reason)
        self.downlink.settle(accepted)  # a node whose reply did not make it gets the full adapter next time
        self.traffic.accepted = sum(1 for m in good if not m.has_error())  # Flower drops the error replies
        return super().aggregate_train(server_round, good)  # type: ignore[misc]

    def in_node_order(self, replies: Iterable[Message]) -> list[Message]:
        """``replies`` sorted as the nodes are sampled (arrival order varies between runs)."""
        replies = list(replies)
        rank = {n: i for i, n in enumerate(self.node_order(m.metadata.src_node_id for m in replies))}
        return sorted(replies, key=lambda m: (rank.get(m.metadata.src_node_id, len(rank)), m.metadata.src_node_id))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower's weighted mean over the replies that evaluated something (a node without validation
        examples reports 0 of them), in node order; None when none did."""
        usable = [m for m in self.in_node_order(replies) if not m.has_error()
                  and float(m.content.metric_records.get("metrics", {}).get("num-examples", 0)) > 0]
        return super().aggregate_evaluate(server_round, usable) if usable else None  # type: ignore[misc]

    # -- state for resume ------------------------------------------------------------------------------
    _OWN = frozenset({"traffic", "codec", "downlink", "_global", "_shapes", "seed", "node_order", "attempt",
                      "node_wait_s"})

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What the wrapped strategy carries between rounds (FedAdam's moments, FedAvgM's momentum...).

        Every attribute holding arrays is saved, whatever the strategy: an ``ArrayRecord``, a dict of
        arrays or a list of arrays; the rest is rebuilt from the config.
        """
        kinds: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for name, value in vars(self).items():
            if name in self._OWN:
                continue
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

    def import_state(self, kinds: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`export_state`."""
        from flowertune.federation.state import split_prefixed

        for name, spec in kinds.items():
            part = split_prefixed(arrays, name)
            ordered = {k: part[k] for k in spec["keys"]}
            if spec["kind"] == "arrayrecord":
                setattr(self, name, to_array_record(ordered))
            elif spec["kind"] == "dict":
                setattr(self, name, ordered)
            else:
                setattr(self, name, list(ordered.values()))


def error_line(msg: Message) -> str:
    """The last line of a client error reply (the exception's message, not its traceback)."""
    import re

    reason = str(msg.error.reason).strip() if msg.has_error() else ""
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
    if not lines:
        return f"error code {msg.error.code}"
    # the simulation wraps it as "Exception ClientAppException occurred. Message: <the message>'>"
    line = re.sub(r"^Exception \w+ occurred\. Message: ", "", lines[-1])
    return re.sub(r"'>$", "", line)[:500]


def _tracked(base: type) -> type:
    return type(f"{base.__name__}FT", (FlowerTuneMixin, base), {})


FedAvgFT, FedProxFT, FedAvgMFT, FedAdamFT, FedYogiFT = map(_tracked, (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi))

def _common(cfg: StrategyConfig) -> dict[str, Any]:
    # strategy.min-available-nodes is waited for by the server loop, with a deadline and before training
    # only: Flower's strategies would wait for it without end, before the evaluation too
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }


# the strategies by name (catalog entries: flowertune/catalog.py)
def fedavg(c: StrategyConfig) -> Any:
    return FedAvgFT(**_common(c))


def fedprox(c: StrategyConfig) -> Any:
    return FedProxFT(**_common(c), proximal_mu=c.proximal_mu)


def fedavgm(c: StrategyConfig) -> Any:
    return FedAvgMFT(**_common(c), server_learning_rate=c.server_learning_rate, server_momentum=c.server_momentum)


def fedadam(c: StrategyConfig) -> Any:
    return FedAdamFT(**_common(c), eta=c.eta, eta_l=c.eta_l, beta_1=c.beta_1, beta_2=c.beta_2, tau=c.tau)


def fedyogi(c: StrategyConfig) -> Any:
    return FedYogiFT(**_common(c), eta=c.eta, eta_l=c.eta_l, beta_1=c.beta_1, beta_2=c.beta_2, tau=c.tau)


def make_strategy(cfg: StrategyConfig, codec: str = "fp32", **codec_options: Any) -> Any:
    """The configured strategy, seeded, speaking wire codec ``codec``."""
    strategy = STRATEGIES.get(cfg.name)(cfg)
    strategy.setup(cfg.seed, codec, **codec_options)
    return strategy

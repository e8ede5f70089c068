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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from flowertune.config import StrategyConfig
from flowertune.models.adapter import AdapterUpdateError, check_arrays
from flowertune.registry import Registry
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
    rejected: list[str] = field(default_factory=list)


class _SortedGrid:
    """A Grid view whose node ids come sorted, so that seeded sampling does not depend on set order."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids())

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
        msgs = list(self._seeded(2 * server_round, lambda: super(FlowerTuneMixin, self).configure_train(
            server_round, arrays, config, _SortedGrid(grid))))
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
            server_round, arrays, config, _SortedGrid(grid))))
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
        replies = list(replies)
        self.traffic.up = message_bytes(replies)
        good, accepted = [], set()
        for msg in replies:
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
        return super().aggregate_train(server_round, good)  # type: ignore[misc]


def _tracked(base: type) -> type:
    return type(f"{base.__name__}FT", (FlowerTuneMixin, base), {})


FedAvgFT, FedProxFT, FedAvgMFT, FedAdamFT, FedYogiFT = map(_tracked, (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi))

STRATEGIES: Registry[Callable[[StrategyConfig], Any]] = Registry("strategy")


def _common(cfg: StrategyConfig) -> dict[str, Any]:
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.min_available_nodes,
    }


STRATEGIES.add("fedavg", lambda c: FedAvgFT(**_common(c)))
STRATEGIES.add("fedprox", lambda c: FedProxFT(**_common(c), proximal_mu=c.proximal_mu))
STRATEGIES.add("fedavgm", lambda c: FedAvgMFT(**_common(c), server_learning_rate=c.server_learning_rate,
                                              server_momentum=c.server_momentum))
STRATEGIES.add("fedadam", lambda c: FedAdamFT(**_common(c), eta=c.eta, eta_l=c.eta_l, beta_1=c.beta_1,
                                              beta_2=c.beta_2, tau=c.tau))
STRATEGIES.add("fedyogi", lambda c: FedYogiFT(**_common(c), eta=c.eta, eta_l=c.eta_l, beta_1=c.beta_1,
                                              beta_2=c.beta_2, tau=c.tau))


def make_strategy(cfg: StrategyConfig, codec: str = "fp32", **codec_options: Any) -> Any:
    """The configured strategy, seeded, speaking wire codec ``codec``."""
    strategy = STRATEGIES.get(cfg.name)(cfg)
    strategy.setup(cfg.seed, codec, **codec_options)
    return strategy

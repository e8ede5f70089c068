"""The reply gate: only well-formed updates reach aggregation, in a fixed order; the round goes on without the rest.

A reply is aggregated when it carries an ``arrays`` record with exactly the global adapter's keys and
shapes and finite values, a positive ``num-examples`` and a finite ``train_loss``. An error reply, or one
that fails a check, is left out with its reason in the round's ledger (``errors`` / ``rejected``), so one
participant cannot stop the round — nor a DP wrapper below, which would drop a whole round on one error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from flowertune.federation.stack.base import Layer
from flowertune.models.adapter import AdapterUpdateError, check_arrays

log = logging.getLogger(__name__)


def error_line(msg: Message) -> str:
    """The last line of a client error reply (the exception's message, not its traceback)."""
    reason = str(msg.error.reason).strip() if msg.has_error() else ""
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
    if not lines:
        return f"error code {msg.error.code}"
    # the simulation wraps it as "Exception ClientAppException occurred. Message: <the message>'>"
    line = re.sub(r"^Exception \w+ occurred\. Message: ", "", lines[-1])
    return re.sub(r"'>$", "", line)[:500]


def in_node_order(replies: Iterable[Message], order: Callable[[Iterable[int]], list[int]]) -> list[Message]:
    """``replies`` sorted as the nodes are sampled (arrival order varies between runs)."""
    replies = list(replies)
    rank = {n: i for i, n in enumerate(order(m.metadata.src_node_id for m in replies))}
    return sorted(replies, key=lambda m: (rank.get(m.metadata.src_node_id, len(rank)), m.metadata.src_node_id))


class ReplyGate(Layer):
    """Validates replies against the adapter it sent, records why one is left out, orders the rest."""

    name = "gate"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._shapes = {k: tuple(a.shape) for k, a in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def check_reply(self, msg: Message) -> str | None:
        """Why ``msg`` (not an error reply) cannot be aggregated, or None if it can."""
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
        traffic, good = self.ctx.traffic, []
        for msg in in_node_order(replies, self.ctx.order):  # aggregation order fixed: reproducible sums
            node = msg.metadata.src_node_id
            if msg.has_error():
                traffic.errors.append(f"node {node}: {error_line(msg)}")
                continue
            reason = self.check_reply(msg)
            if reason is None:
                good.append(msg)
            else:
                traffic.rejected.append(f"node {node}: {reason}")
                log.warning("round %d: rejected the update of node %s: %s", server_round, node, reason)
        traffic.accepted = len(good)
        traffic.accepted_nodes = {m.metadata.src_node_id for m in good}
        return self.strategy.aggregate_train(server_round, good)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The replies that evaluated something (a node without validation examples reports 0 of them), in node
        order; None when none did."""
        usable = [m for m in in_node_order(replies, self.ctx.order) if not m.has_error()
                  and float(m.content.metric_records.get("metrics", {}).get("num-examples", 0)) > 0]
        return self.strategy.aggregate_evaluate(server_round, usable) if usable else None

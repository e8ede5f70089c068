"""The reply gate: only well-formed updates reach aggregation, in a fixed order; the round goes on without the rest.

It never raises. A reply is aggregated when it carries exactly one ``arrays`` record with the keys and shapes
the node was sent (the global adapter's, or its truncation for a node at a lower LoRA rank) and finite values (not empty), and exactly one ``metrics`` record whose values are finite
numbers: ``num-examples`` (> 0, capped at the rows the node declared at check-in and at
``strategy.max-examples-per-node``) and ``train_loss`` are required (under DP-SGD the schema is
:data:`DP_SGD_METRICS`: the nodes keep their loss, speed and memory); the optional keys of :data:`TRAIN_METRICS`
that a node does not send are filled with 0 and unknown keys are dropped (noted), so Flower's aggregation
always sees the same schema. Anything else — an error reply, a list or a string where a number belongs,
NaN/inf, a second record — is left out with a one-line reason in the round's ledger (``errors`` /
``rejected`` / ``notes``), so one participant cannot stop the round, nor a DP wrapper below (which would drop
a whole round on one error reply).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from flowertune.federation.stack.base import Layer, StackContext
from flowertune.models.adapter import AdapterUpdateError, check_arrays

log = logging.getLogger(__name__)

REQUIRED = ("num-examples", "train_loss")
# what flowertune clients send after training (client_tasks.train); optional keys default to 0
TRAIN_METRICS = (*REQUIRED, "tokens_per_s", "train_s", "model_loads", "partition-id", "rss_mb", "peak_rss_mb",
                 "peak_cuda_mb")
# what a node running DP-SGD sends (client_tasks.train): the rest are statistics of the records it drew
DP_SGD_METRICS = ("num-examples", "model_loads", "partition-id")
EVAL_METRICS = ("num-examples", "eval_loss")


def train_schema(dp_sgd: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(schema, required keys) of a train reply's metrics: smaller when the nodes run DP-SGD."""
    return (DP_SGD_METRICS, ("num-examples",)) if dp_sgd else (TRAIN_METRICS, REQUIRED)


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


class Rejected(ValueError):
    """Why a reply cannot be aggregated (one line)."""


def number(name: str, value: Any) -> float:
    """``value`` as a finite float; :class:`Rejected` naming the metric otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(f"metric {name!r} is a {type(value).__name__}, expected a number")
    if not math.isfinite(value):
        raise Rejected(f"metric {name!r} is {value}, expected a finite number")
    return float(value)


def clean_metrics(content: RecordDict, schema: tuple[str, ...], required: tuple[str, ...],
                  cap: float | None) -> tuple[dict[str, float], list[str]]:
    """The reply's one ``metrics`` record checked and rebuilt to ``schema``; and notes on what was changed."""
    names = list(content.metric_records.keys())
    if names != ["metrics"]:
        raise Rejected(f"metric records {names[:4]}, expected exactly one named 'metrics'")
    raw = content.metric_records["metrics"]
    notes = []
    unknown = sorted(k for k in raw if k not in schema)
    if unknown:
        notes.append(f"dropped unknown metrics {[k[:40] for k in unknown[:5]]}")
    for k in required:
        if k not in raw:
            raise Rejected(f"missing metric {k!r}")
    out = {k: number(k, raw[k]) if k in raw else 0.0 for k in schema}
    if not out["num-examples"] > 0:
        raise Rejected(f"num-examples is {out['num-examples']}, expected > 0")
    if cap is not None and out["num-examples"] > cap:
        notes.append(f"num-examples {out['num-examples']:.0f} capped at {cap:.0f}")
        out["num-examples"] = float(cap)
    out["num-examples"] = float(int(out["num-examples"])) or 1.0
    return out, notes


class ReplyGate(Layer):
    """Validates replies against the adapter it sent, records why one is left out, orders the rest."""

    name = "gate"

    def __init__(self, strategy: Any, ctx: StackContext, max_examples: int = 0, dp_sgd: bool = False) -> None:
        super().__init__(strategy, ctx)
        self.max_examples = max_examples  # 0: no cap beyond the rows a node declared at check-in
        # under DP-SGD the schema leaves out what the nodes keep (a node that sends it gets a note)
        self.schema, self.required = train_schema(dp_sgd)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._node_shapes: dict[int, dict[str, tuple[int, ...]]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._shapes = {k: tuple(a.shape) for k, a in arrays.items()}
        msgs = list(self.strategy.configure_train(server_round, arrays, config, grid))
        # a node at a lower LoRA rank (stack/lora.py:NodeRanks) was sent, and must return, its own shapes
        self._node_shapes = {m.metadata.dst_node_id: {k: tuple(a.shape) for k, a in m.content["arrays"].items()}
                             for m in msgs if m.has_content() and m.content.array_records.get("arrays") is not arrays
                             and "arrays" in m.content.array_records}
        return msgs

    def cap(self, node: int) -> float | None:
        caps = [c for c in (self.ctx.rows_of(node), self.max_examples or None) if c is not None]
        return float(min(caps)) if caps else None

    def check_reply(self, msg: Message) -> tuple[RecordDict, list[str]]:
        """The reply's content rebuilt to the schema, and notes; :class:`Rejected` with the reason otherwise."""
        content = msg.content
        names = list(content.array_records.keys())
        if names != ["arrays"]:
            raise Rejected(f"array records {names[:4]}, expected exactly one named 'arrays'")
        if list(content.config_records.keys()):
            raise Rejected(f"unexpected config records {list(content.config_records.keys())[:4]}")
        metrics, notes = clean_metrics(content, self.schema, self.required, self.cap(msg.metadata.src_node_id))
        record = content.array_records["arrays"]
        if not len(record):
            raise Rejected("empty payload (no adapter arrays)")
        arrays = {k: v.numpy() for k, v in record.items()}
        try:
            check_arrays(arrays, self._node_shapes.get(msg.metadata.src_node_id, self._shapes))
        except AdapterUpdateError as exc:
            raise Rejected(str(exc)) from None
        if any(a.dtype != np.float32 for a in arrays.values()):
            raise Rejected("adapter arrays are not fp32")
        return RecordDict({"arrays": record, "metrics": MetricRecord(metrics)}), notes

    def verdict(self, msg: Message) -> str | None:
        """Check ``msg`` and rebuild its content in place; the reason when it is left out. Never raises."""
        try:
            content, notes = self.check_reply(msg)
        except Rejected as exc:
            return str(exc)[:300]
        except Exception as exc:  # noqa: BLE001  (a hostile reply must not stop the round, whatever it holds)
            return f"malformed reply ({type(exc).__name__})"
        msg.content = content
        self.ctx.traffic.notes += [f"node {msg.metadata.src_node_id}: {n}" for n in notes]
        return None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic, good = self.ctx.traffic, []
        for msg in in_node_order(replies, self.ctx.order):  # aggregation order fixed: reproducible sums
            node = msg.metadata.src_node_id
            if msg.has_error():
                traffic.errors.append(f"node {node}: {error_line(msg)}")
                continue
            reason = self.verdict(msg)
            if reason is None:
                good.append(msg)
                traffic.client_metrics[node] = dict(msg.content["metrics"])
            else:
                traffic.rejected.append(f"node {node}: {reason}")
                log.warning("round %d: rejected the update of node %s: %s", server_round, node, reason)
        traffic.accepted = len(good)
        traffic.accepted_nodes = {m.metadata.src_node_id for m in good}
        return self.strategy.aggregate_train(server_round, good)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The replies that evaluated something (a node without validation examples reports 0 of them), checked
        like training replies, in node order; None when none did."""
        usable = []
        for m in in_node_order(replies, self.ctx.order):
            if m.has_error():
                continue
            try:
                metrics, _ = clean_metrics(m.content, EVAL_METRICS, EVAL_METRICS, None)
            except Exception:  # noqa: BLE001, S112  (a node with no validation rows reports 0 examples: not usable)
                continue
            m.content = RecordDict({"metrics": MetricRecord(metrics)})
            usable.append(m)
        return self.strategy.aggregate_evaluate(server_round, usable) if usable else None

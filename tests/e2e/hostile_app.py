"""A ClientApp for the attack tests only — copied into a generated Flower app next to a pyproject naming it;
nothing hostile ships in the flowertune package. Every node runs the honest flowertune client; the nodes whose
partition is in ``ATTACKS`` then corrupt what they send, one attack each."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowertune.client_app import app as honest

ATTACKS: dict[int, str] = {}  # partition id -> attack; written when the app is generated

app = ClientApp()


def attack_of(context: Context) -> str | None:
    return ATTACKS.get(int(context.node_config.get("partition-id", -1)))


@app.query()
def query(msg: Message, context: Context) -> Message:
    kind = attack_of(context)
    if str(msg.content["config"].get("want", "")) == "node-info":
        if kind == "check-in-garbage":
            return Message(RecordDict({"info": ConfigRecord({"partition-id": "x"})}), reply_to=msg)
        if kind == "duplicate-partition":  # claims the partition another node holds
            return Message(RecordDict({"info": ConfigRecord({"partition-id": 0, "rows": 10})}), reply_to=msg)
    return honest(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest(msg, context)
    kind = attack_of(context)
    if kind is None or reply.has_error():
        return reply
    metrics = dict(reply.content["metrics"])
    arrays = reply.content["arrays"]
    content = RecordDict({"arrays": arrays})
    if kind == "metrics-list":
        metrics["num-examples"] = [1, 2]
    elif kind == "metrics-extra-key":
        metrics["surprise"] = 1.0
    elif kind == "second-record":
        content["more"] = MetricRecord({"x": 1.0})
    elif kind == "oversize":
        arrays["padding"] = Array(np.zeros(2_000_000, dtype=np.float32))
    elif kind == "gpu-metrics":  # an honest CUDA node: one key the CPU nodes do not send
        metrics["peak_cuda_mb"] = 2048.0
    content["metrics"] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return honest(msg, context)

"""A ClientApp for attack runs only (``benchmarks/attacks.py``, ``tests/e2e/test_attacks_runtime.py``): copied
into a generated Flower app next to a pyproject naming it; nothing hostile ships in the flowertune package.

It is flowertune's own client (the same handlers and mods) with one more mod inside the wire codec, so that it
sees fp32 adapters both ways, and outside flowertune's DP clipping mod (a hostile node does not clip); and one
outside the wire codec for NaN, which flowertune's encoder refuses to send. The nodes whose partition is in
``ATTACKS`` corrupt what they send, one attack each.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from flowertune import client_app as ft

ATTACKS: dict[int, str] = {}  # partition id -> attack; written when the app is generated
RECORD_DIR = ""  # where "secagg-record" / "secagg-drop" nodes write what they trained (benchmarks/privacy.py)
UPDATE_ATTACKS = {"scale100": 100.0, "sign-flip": -1.0}


def hostile_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    kind = ATTACKS.get(int(context.node_config.get("partition-id", -1)))
    if kind is None:
        return call_next(msg, context)
    if msg.metadata.message_type == MessageType.QUERY:
        if str(msg.content["config"].get("want", "")) == "node-info":
            if kind == "check-in-garbage":
                return Message(RecordDict({"info": ConfigRecord({"partition-id": "x", "rows": 10})}), reply_to=msg)
            if kind == "duplicate-partition":  # claims the partition another node holds
                return Message(RecordDict({"info": ConfigRecord({"partition-id": 0, "rows": 10})}), reply_to=msg)
        return call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    if kind == "absent":  # the honest baseline without this node's update: it evaluates, but sits training out
        raise RuntimeError("this node sits the training out")
    glob = {k: v.numpy().copy() for k, v in msg.content["arrays"].items()}
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    if kind in ("secagg-record", "secagg-drop"):  # the plaintext a SecAgg+ node masks: kept for the check
        pid, rnd = int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"])
        trained = {f"trained/{k}": v.numpy() for k, v in reply.content["arrays"].items()}
        np.savez(f"{RECORD_DIR}/{kind}-p{pid}-r{rnd}.npz", **{f"global/{k}": v for k, v in glob.items()}, **trained)
        if kind == "secagg-drop":
            raise RuntimeError("this node drops out after training, before it sends its masked update")
        return reply
    metrics = dict(reply.content["metrics"])
    trained = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    content = RecordDict()
    if kind in UPDATE_ATTACKS:
        trained = {k: (glob[k] + UPDATE_ATTACKS[kind] * (v - glob[k])).astype(np.float32) for k, v in trained.items()}
    elif kind == "num-examples-1e9":
        metrics["num-examples"] = 10**9
    elif kind == "num-examples-inf":
        metrics["num-examples"] = float("inf")
    elif kind == "metrics-list":
        metrics["num-examples"] = [1, 2]
    elif kind == "metrics-extra-key":
        metrics["surprise"] = 1.0
    elif kind == "second-record":
        content["more"] = MetricRecord({"x": 1.0})
    elif kind == "oversize":
        trained["padding"] = np.zeros(2_000_000, dtype=np.float32)
    elif kind == "gpu-metrics":  # an honest CUDA node: one key the CPU nodes do not send
        metrics["peak_cuda_mb"] = 2048.0
    content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in trained.items()})
    content["metrics"] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


def on_the_wire_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Attacks on the encoded reply, after flowertune's encoder (which refuses to encode NaN)."""
    reply = call_next(msg, context)
    kind = ATTACKS.get(int(context.node_config.get("partition-id", -1)))
    if kind == "nan" and msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
        payload = reply.content["arrays"]
        reply.content["arrays"] = ArrayRecord({k: Array(np.full_like(v.numpy(), np.nan)) for k, v in payload.items()})
    return reply


app = ClientApp(mods=[ft.error_mod, on_the_wire_mod, ft.secagg_mod, ft.wire_mod, hostile_mod, ft.dp_clip_mod])
app.query()(ft.query)
app.train()(ft.train)
app.evaluate()(ft.evaluate)

"""ClientApp: translate Flower messages to the client tasks and back."""

from __future__ import annotations

import os
import sys
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowertune.config import Config, resolve
from flowertune.federation import wire_client, worker
from flowertune.logs import setup_logging
from flowertune.wire import from_array_record, to_array_record

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise KeyError("this SuperNode has no partition-id/num-partitions; start it with "
                       "--node-config \"partition-id=0 num-partitions=N\"")
    return int(nc["partition-id"]), int(nc["num-partitions"])


def _fresh_process_per_message() -> bool:
    """Flower's deployment runtime starts one ``flwr-clientapp`` process per message."""
    return os.path.basename(sys.argv[0]) == "flwr-clientapp"


def _run(cfg: Config, context: Context, task: str, *args: Any) -> Any:
    mode = cfg.run.client_worker
    if mode == "on" or (mode == "auto" and _fresh_process_per_message()):
        return worker.call(f"node-{context.node_id}", task, *args)
    # imported here, not at the top: a deployment ClientApp process lives for one message and only forwards
    # to the resident worker, so it must not pay for torch/transformers/datasets (~7 s on 2 cores) each time
    from flowertune.federation.client_tasks import TASKS

    return TASKS[task](*args)


_RESOLVED: dict[tuple[tuple[str, Any], ...], Config] = {}


def _setup(context: Context) -> Config:
    """The run's config, resolved once per process (every message of a run carries the same run_config)."""
    key = tuple(sorted(context.run_config.items()))
    if key not in _RESOLVED:
        setup_logging()
        _RESOLVED.clear()
        _RESOLVED[key] = resolve(dict(context.run_config))
    return _RESOLVED[key]


@app.query()
def query(msg: Message, context: Context) -> Message:
    """``node-info``: check in (partition id, after this node's own checks); ``initial-adapter``: the freshly
    initialised adapter and its PEFT config (the server never loads the model)."""
    cfg = _setup(context)
    want = str(msg.content["config"].get("want", ""))
    if want == "node-info":
        info = _run(cfg, context, "node_info", cfg, *_partition(context))
        return Message(content=RecordDict({"info": ConfigRecord(info)}), reply_to=msg)
    if want != "initial-adapter":
        raise ValueError(f"unknown query {want!r}; this flowertune client answers node-info and initial-adapter")
    arrays, adapter_json = _run(cfg, context, "initial_adapter", cfg)
    content = RecordDict({"arrays": to_array_record(arrays), "adapter": ConfigRecord({"json": adapter_json})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round on this node's partition, starting from the global adapter."""
    cfg = _setup(context)
    pid, n = _partition(context)
    config = msg.content["config"]
    mu = float(config.get("proximal-mu", cfg.strategy.proximal_mu))
    codec = wire_client.codec_of(msg)
    store = wire_client.store_for(msg, codec, pid)
    global_arrays = wire_client.receive(msg, context, codec, store)
    server_round = int(config["server-round"])
    arrays, metrics = _run(cfg, context, "train", cfg, pid, n, global_arrays, float(config["lr"]), server_round, mu)
    payload = wire_client.send(codec, arrays, global_arrays, context, store, server_round)
    return Message(content=RecordDict({"arrays": payload, "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Held-out loss of the global adapter on this node's validation split."""
    cfg = _setup(context)
    pid, n = _partition(context)
    metrics = _run(cfg, context, "evaluate", cfg, pid, n, from_array_record(msg.content["arrays"]))
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

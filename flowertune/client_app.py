"""ClientApp: translate Flower messages to the pure training/eval functions and back."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowertune.config import resolve
from flowertune.federation import client_runtime as rt_mod
from flowertune.logs import setup_logging
from flowertune.models.adapter import adapter_config_dict, from_record, get_arrays, set_arrays, to_record
from flowertune.train.loop import evaluate_loss, train_round

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise KeyError("this SuperNode has no partition-id/num-partitions; start it with "
                       "--node-config \"partition-id=0 num-partitions=N\"")
    return int(nc["partition-id"]), int(nc["num-partitions"])


@app.query()
def initial_adapter(msg: Message, context: Context) -> Message:
    """Return the freshly initialised adapter and its PEFT config (the server never loads the model)."""
    setup_logging()
    cfg = resolve(dict(context.run_config))
    rt = rt_mod.runtime(cfg)
    content = RecordDict({
        "arrays": to_record(get_arrays(rt.model)),
        "adapter": ConfigRecord({"json": json.dumps(adapter_config_dict(rt.model))}),
    })
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round on this node's partition, starting from the global adapter."""
    setup_logging()
    cfg = resolve(dict(context.run_config))
    pid, n = _partition(context)
    rt = rt_mod.runtime(cfg)
    data = rt_mod.client_data(cfg, rt, pid, n)
    set_arrays(rt.model, from_record(msg.content["arrays"]))
    config = msg.content["config"]
    server_round = int(config["server-round"])
    mu = float(config.get("proximal-mu", cfg.strategy.proximal_mu))
    seed = cfg.train.seed + (server_round if cfg.train.dynamic_data_seed else 0) + 7919 * pid
    result = train_round(rt.model, data.train, cfg.train, float(config["lr"]), rt.pad_id, seed, mu)
    metrics = MetricRecord({
        "train_loss": result.loss,
        "num-examples": len(data.train),
        "tokens_per_s": result.real_tokens / max(result.seconds, 1e-9),
        "train_s": result.seconds,
        "model_loads": rt_mod.MODEL_LOADS,
        "partition-id": pid,
    })
    return Message(content=RecordDict({"arrays": to_record(get_arrays(rt.model)), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Held-out loss of the global adapter on this node's validation split."""
    setup_logging()
    cfg = resolve(dict(context.run_config))
    pid, n = _partition(context)
    rt = rt_mod.runtime(cfg)
    data = rt_mod.client_data(cfg, rt, pid, n)
    set_arrays(rt.model, from_record(msg.content["arrays"]))
    loss, n_tokens = evaluate_loss(rt.model, data.validation, cfg.train.batch_size, rt.pad_id)
    metrics = MetricRecord({"eval_loss": loss if n_tokens else 0.0, "num-examples": max(len(data.validation), 0)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

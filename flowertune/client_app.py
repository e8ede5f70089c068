"""ClientApp: translate Flower messages to the client tasks and back.

Client-side concerns are Flower mods around the handlers: ``error_mod`` (outermost) turns any exception into
an error reply that carries no traceback or data; ``secagg_mod`` runs Flower's ``secaggplus_mod`` for the
messages of a SecAgg+ round (masking this node's update); ``wire_mod`` decodes the server's payload to
fp32 before a handler (or a later mod) sees it and encodes the reply on the way out, so the handlers only ever
see full fp32 adapters; ``dp_clip_mod`` runs Flower's ``fixedclipping_mod`` on the fp32 update when the
server asks for client-side DP clipping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from flowertune.config import Config, ConfigError, at_rank, node_rank, node_refusal, resolve
from flowertune.federation import worker
from flowertune.federation.records import from_array_record, nudge_if_unchanged, to_array_record
from flowertune.federation.secagg_client import secagg_mod
from flowertune.federation.wire_client import wire_mod
from flowertune.federation.worker import WorkerTaskError
from flowertune.logs import setup_logging

log = logging.getLogger(__name__)


def public_reason(exc: BaseException, handler: str) -> str:
    """What an error reply tells the server: the exception's type, with its message only when flowertune wrote it
    for a user (a ``ConfigError``, e.g. a failed check-in); never a traceback or the data an exception carries."""
    if isinstance(exc, WorkerTaskError):
        kind, public = exc.kind, exc.public
    else:
        kind, public = type(exc).__name__, str(exc) if isinstance(exc, ConfigError) else ""
    public = public.strip().splitlines()[0][:300] if public.strip() else ""
    return f"{kind}: {public}" if public else f"{kind} in the {handler} handler (details in this node's log)"


def error_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod, outermost: an exception becomes an error reply with :func:`public_reason`; the full traceback
    goes to this node's own log only."""
    try:
        return call_next(msg, context)
    except Exception as exc:
        handler = str(msg.metadata.message_type)
        log.exception("node %s: the %s handler failed", context.node_id, handler)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=public_reason(exc, handler)),
                       reply_to=msg)


def dp_clip_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` when the server asks for client-side clipping (``strategy.dp.mode=
    client-fixed``: the train config carries the clipping norm), inside ``wire_mod`` so that it clips the fp32
    update; a pass-through otherwise. An unchanged adapter is nudged first (Flower's clip divides by the norm)."""
    if (msg.metadata.message_type != MessageType.TRAIN or not msg.has_content()
            or KEY_CLIPPING_NORM not in msg.content.config_records.get("config", {})):
        return call_next(msg, context)
    glob = from_array_record(msg.content["arrays"])

    def train(m: Message, c: Context) -> Message:
        reply = call_next(m, c)
        if not reply.has_error() and "arrays" in reply.content.array_records:
            reply.content["arrays"] = nudge_if_unchanged(reply.content["arrays"], glob)
        return reply

    return fixedclipping_mod(msg, context, train)


app = ClientApp(mods=[error_mod, secagg_mod, wire_mod, dp_clip_mod])


def _partition(context: Context) -> tuple[int, int]:
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise KeyError("this SuperNode has no partition-id/num-partitions; start it with "
                       "--node-config \"partition-id=0 num-partitions=N\"")
    return int(nc["partition-id"]), int(nc["num-partitions"])


def uses_worker(cfg: Config, node_config: Mapping[str, Any]) -> bool:
    """Whether this node keeps its model in a resident worker: the SuperNode's ``--node-config client-worker=on|off``
    if given, else ``run.client-worker`` (which ``flowertune run`` resolves: on in deployment, where Flower runs
    each message in a fresh process, off in simulation; ``auto`` left unresolved means off)."""
    mode = str(node_config.get("client-worker", cfg.run.client_worker))
    if mode not in ("on", "off", "auto"):
        raise ConfigError(f"node config client-worker={mode!r}: give on or off")
    return mode == "on"


def _run(cfg: Config, context: Context, task: str, *args: Any) -> Any:
    if uses_worker(cfg, context.node_config):
        return worker.call(f"node-{context.node_id}", task, *args)
    # imported here, not at the top: a deployment ClientApp process lives for one message and only forwards
    # to the resident worker, so it must not pay for torch/transformers/datasets (~7 s on 2 cores) each time
    from flowertune.federation.client_tasks import TASKS

    return TASKS[task](*args)


_RESOLVED: dict[tuple[tuple[str, Any], ...], Config] = {}


def _setup(context: Context) -> Config:
    """The run's config, resolved once per process (every message of a run carries the same run_config); a
    ``ConfigError`` for every message of a run this node's owner does not allow (``config.NODE_PINS``)."""
    key = tuple(sorted(context.run_config.items()))
    if key not in _RESOLVED:
        setup_logging()
        _RESOLVED.clear()
        _RESOLVED[key] = resolve(dict(context.run_config))
    refusal = node_refusal(_RESOLVED[key], context.node_config)
    if refusal:
        raise ConfigError(refusal)
    return _RESOLVED[key]


def _node_setup(context: Context) -> tuple[Config, int, int, int]:
    """``(the config at this node's LoRA rank, partition id, partitions, rank)``: the rank is checked before
    anything loads."""
    cfg = _setup(context)
    pid, n = _partition(context)
    rank = node_rank(cfg.adapter, pid, context.node_config)
    return at_rank(cfg, rank), pid, n, rank


@app.query()
def query(msg: Message, context: Context) -> Message:
    """``node-info``: check in (partition id, after this node's own checks); ``initial-adapter``: the freshly
    initialised adapter and its PEFT config (the server never loads the model)."""
    cfg = _setup(context)
    want = str(msg.content["config"].get("want", ""))
    if want == "node-info":
        node_cfg, pid, n, rank = _node_setup(context)
        info = {**_run(cfg, context, "node_info", node_cfg, pid, n), "lora-rank": rank}
        return Message(content=RecordDict({"info": ConfigRecord(info)}), reply_to=msg)
    if want != "initial-adapter":
        raise ValueError(f"unknown query {want!r}; this flowertune client answers node-info and initial-adapter")
    arrays, adapter_json = _run(cfg, context, "initial_adapter", cfg)
    content = RecordDict({"arrays": to_array_record(arrays), "adapter": ConfigRecord({"json": adapter_json})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round on this node's partition, starting from the global adapter."""
    cfg, pid, n, _ = _node_setup(context)
    config = msg.content["config"]
    mu = float(config.get("proximal-mu", cfg.strategy.proximal_mu))
    global_arrays = from_array_record(msg.content["arrays"])  # fp32: wire_mod decoded it
    server_round = int(config["server-round"])
    arrays, metrics = _run(cfg, context, "train", cfg, pid, n, global_arrays, float(config["lr"]), server_round, mu)
    content = RecordDict({"arrays": to_array_record(arrays), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Held-out loss of the global adapter (truncated to this node's rank) on this node's validation split."""
    cfg, pid, n, _ = _node_setup(context)
    metrics = _run(cfg, context, "evaluate", cfg, pid, n, from_array_record(msg.content["arrays"]))
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

"""The client's half of the wire codec, as a Flower mod: decode the broadcast, encode the update, keep the state.

What a node keeps between rounds lives in Flower's ``context.state`` (per node, in simulation and
deployment): the broadcast it decoded last (the reference of delta broadcasts) and the codec's
error-feedback residual. For delta codecs it is also written to disk after every round
(:class:`WireStore`), so that a resumed run — a new Flower run, with empty contexts — continues with
exactly what each node held, and a resumed run computes what the uninterrupted one would have.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.state import StateError, load_state, prune, round_files, save_state, split_prefixed
from flowertune.home import flowertune_home
from flowertune.wire import Codec, WireHeader, decode_broadcast

HELD, META, RESIDUAL = "wire-held", "wire-meta", "wire-residual"
Arrays = dict[str, np.ndarray]


def codec_of(msg: Message) -> Codec:
    """The codec the server used for this message, with its options (``fp32`` when it says none)."""
    return WireHeader.from_config(msg.content["config"]).build_codec()


class WireStore:
    """A node's wire state on its own disk, one file per round it took part in (the last two kept).

    Keyed by the run's key (kept across resumes, new for every new run) and the partition id (node ids
    change when a run restarts): ``$FLOWERTUNE_HOME/client-state/<run key>/partition-<id>/round-N``.
    """

    def __init__(self, run_key: str, partition_id: int) -> None:
        home = flowertune_home()
        safe = hashlib.sha256(run_key.encode()).hexdigest()[:16]
        self.dir = home / "client-state" / safe / f"partition-{partition_id}"

    def save(self, server_round: int, context: Context) -> None:
        arrays = {f"{name}/{k}": v for name in (HELD, RESIDUAL) if name in context.state.array_records
                  for k, v in from_array_record(context.state.array_records[name]).items()}
        keys = {name: list(context.state.array_records[name].keys()) for name in (HELD, RESIDUAL)
                if name in context.state.array_records}
        meta = {"version": int(context.state.config_records[META]["version"]), "keys": keys}
        save_state(self.dir / f"round-{server_round}.safetensors", meta, arrays)
        prune(self.dir, 2)

    def restore(self, server_round: int, context: Context) -> None:
        """Put into ``context.state`` what this node held before ``server_round`` (if a file says so)."""
        for r, path in round_files(self.dir):
            if r >= server_round:
                continue  # written by a round that a resumed run redoes
            try:
                meta, arrays = load_state(path)
            except StateError:
                continue
            for name, keys in meta["keys"].items():
                part = split_prefixed(arrays, name)
                context.state[name] = to_array_record({k: part[k] for k in keys})
            context.state[META] = ConfigRecord({"version": int(meta["version"])})
            return


def receive(msg: Message, context: Context, codec: Codec, store: WireStore | None = None) -> Arrays:
    """The global adapter this message carries, decoded against what this node holds; remembered."""
    config = msg.content["config"]
    if store is not None and HELD not in context.state.array_records:
        store.restore(int(config["server-round"]), context)
    header = WireHeader.from_config(config)
    held = from_array_record(context.state.array_records[HELD]) if HELD in context.state.array_records else None
    held_version = int(context.state.config_records[META]["version"]) if META in context.state.config_records else None
    arrays = decode_broadcast(codec, from_array_record(msg.content["arrays"]), header.base, held_version, held)
    if RESIDUAL in context.state.array_records:  # a node whose LoRA rank changed: its old residual does not fit
        residual = from_array_record(context.state.array_records[RESIDUAL])
        fits = {k: v for k, v in residual.items() if k in arrays and v.shape == arrays[k].shape}
        if len(fits) != len(residual):
            context.state[RESIDUAL] = to_array_record(fits)
    context.state[HELD] = to_array_record(arrays)
    context.state[META] = ConfigRecord({"version": header.version})
    return arrays


def send(codec: Codec, arrays: Arrays, reference: Arrays, context: Context, store: WireStore | None = None,
         server_round: int = 0) -> ArrayRecord:
    """The trained adapter encoded against ``reference``, carrying the residual to the next round."""
    residual = (from_array_record(context.state.array_records[RESIDUAL])
                if RESIDUAL in context.state.array_records else None)
    payload, residual = codec.encode(arrays, reference, residual)
    if residual is not None:
        context.state[RESIDUAL] = to_array_record(residual)
    if store is not None:
        store.save(server_round, context)
    return to_array_record(payload)


def store_for(msg: Message, codec: Codec, partition_id: int) -> WireStore | None:
    """The node's on-disk wire state for this run, for delta codecs (what a resume needs), else None."""
    run_key = str(msg.content["config"].get("run-key", ""))
    return WireStore(run_key, partition_id) if codec.is_delta and run_key else None


def wire_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: a train message's payload decoded to fp32 before the handler (and any later mod, such as
    Flower's ``fixedclipping_mod``) sees it; the reply's fp32 adapter encoded against it on the way out."""
    if (msg.metadata.message_type != MessageType.TRAIN or not msg.has_content()
            or "arrays" not in msg.content.array_records):
        return call_next(msg, context)
    codec = codec_of(msg)
    pid = context.node_config.get("partition-id")
    store = store_for(msg, codec, int(pid)) if pid is not None else None
    global_arrays = receive(msg, context, codec, store)
    msg.content["arrays"] = to_array_record(global_arrays)
    reply = call_next(msg, context)
    if reply.has_error() or "arrays" not in reply.content.array_records:
        return reply
    trained = from_array_record(reply.content["arrays"])
    server_round = int(msg.content["config"]["server-round"])
    reply.content["arrays"] = send(codec, trained, global_arrays, context, store, server_round)
    return reply

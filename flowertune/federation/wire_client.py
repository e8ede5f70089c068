"""The client's half of the wire codec: decode the broadcast, encode the update, keep the state.

What a node keeps between rounds lives in Flower's ``context.state`` (per node, in simulation and
deployment): the broadcast it decoded last (the reference of delta broadcasts) and the codec's
error-feedback residual.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from flowertune.wire import Codec, decode_broadcast, from_array_record, get_codec, to_array_record

HELD, META, RESIDUAL = "wire-held", "wire-meta", "wire-residual"
Arrays = dict[str, np.ndarray]


def codec_of(msg: Message) -> Codec:
    """The codec the server used for this message (``fp32`` when it says none)."""
    config = msg.content["config"]
    name = str(config.get("wire-codec", "fp32"))
    return get_codec(name, fraction=float(config["wire-topk-fraction"])) if name == "delta-topk-int8" else get_codec(name)


def receive(msg: Message, context: Context, codec: Codec) -> Arrays:
    """The global adapter this message carries, decoded against what this node holds; remembered."""
    config = msg.content["config"]
    base = int(config.get("wire-base", -1))
    held = from_array_record(context.state.array_records[HELD]) if HELD in context.state.array_records else None
    held_version = int(context.state.config_records[META]["version"]) if META in context.state.config_records else None
    arrays = decode_broadcast(codec, from_array_record(msg.content["arrays"]), None if base < 0 else base,
                              held_version, held)
    context.state[HELD] = to_array_record(arrays)
    context.state[META] = ConfigRecord({"version": int(config.get("wire-version", 0))})
    return arrays


def send(codec: Codec, arrays: Arrays, reference: Arrays, context: Context) -> ArrayRecord:
    """The trained adapter encoded against ``reference``, carrying the residual to the next round."""
    residual = (from_array_record(context.state.array_records[RESIDUAL])
                if RESIDUAL in context.state.array_records else None)
    payload, residual = codec.encode(arrays, reference, residual)
    if residual is not None:
        context.state[RESIDUAL] = to_array_record(residual)
    return to_array_record(payload)

"""The node's half of SecAgg+, as a Flower mod: Flower's own ``secaggplus_mod`` around flowertune's train handler.

Flower's mod speaks the legacy ``FitRes`` format; flowertune's handlers speak the Message API. ``secagg_mod``
passes everything that is not a SecAgg+ message straight on, and for SecAgg+ messages runs Flower's mod with a
``call_next`` that trains through the rest of the chain (wire codec, DP clipping, handler) and hands Flower's mod
the update to mask: ``trained - global`` (fp32; the server sent the full fp32 global, ``wire.codec=fp32``) with
weight 1 (equal weights: see ``federation/secagg.py``). The reply keeps the node's ``metrics`` record; Flower's
mod empties every array record, so the plaintext update never leaves the node.

Flower's quantization rounds stochastically with numpy's global generator; it is seeded here from the run
key, the round and the partition (and put back afterwards), so that a resumed run sums exactly what the
uninterrupted one did. The masks come from fresh keys every round and cancel in the sum.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from flowertune.config import ConfigError
from flowertune.federation.records import from_array_record
from flowertune.wire import WireHeader


def is_secagg(msg: Message) -> bool:
    return (msg.metadata.message_type == MessageType.TRAIN and msg.has_content()
            and RECORD_KEY_CONFIGS in msg.content.config_records)


def update_reply(glob: dict[str, np.ndarray], reply: Message) -> Message:
    """The handler's reply as the ``FitRes`` Flower's mod masks: ``trained - global`` of every tensor (sorted by
    name, as the server reads them), weight 1, and the node's metrics record kept beside it."""
    trained = from_array_record(reply.content["arrays"])
    if sorted(trained) != sorted(glob):
        raise ValueError("the trained adapter's tensors differ from the global's")
    update = [(trained[k].astype(np.float64) - glob[k]).astype(np.float32) for k in sorted(glob)]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), num_examples=1, metrics={})
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    content["metrics"] = reply.content["metrics"]
    reply.content = content
    return reply


def rounding_seed(msg: Message, context: Context) -> int:
    config = msg.content.config_records.get("config", {})
    text = f"{config.get('run-key', '')}/{config.get('server-round', 0)}/{context.node_config.get('partition-id', '')}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod (outside ``wire_mod``): SecAgg+ messages go through Flower's ``secaggplus_mod``; the rest on."""
    if not is_secagg(msg):
        return call_next(msg, context)
    stage = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
    if stage != Stage.COLLECT_MASKED_VECTORS:
        return secaggplus_mod(msg, context, call_next)  # key exchange and unmasking: Flower's mod answers itself

    def train(m: Message, c: Context) -> Message:
        if WireHeader.from_config(m.content["config"]).codec != "fp32":
            raise ConfigError("SecAgg+ needs wire.codec=fp32 (the server sent another codec)")
        glob = from_array_record(m.content["arrays"])  # fp32: the full global adapter
        # the rest of the chain sees a plain train message (Flower's fixedclipping_mod wants exactly one config
        # record); Flower's mod keeps its own reference to the SecAgg+ record
        m.content.config_records.pop(RECORD_KEY_CONFIGS)
        reply = call_next(m, c)
        return reply if reply.has_error() else update_reply(glob, reply)

    saved = np.random.get_state()
    np.random.seed(rounding_seed(msg, context))
    try:
        return secaggplus_mod(msg, context, train)
    finally:
        np.random.set_state(saved)

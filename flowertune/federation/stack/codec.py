"""The wire codec layer: encodes the downlink per node, decodes every reply against the exact global adapter.

Below this layer everything sees full fp32 arrays: the gate checks decoded updates, a DP wrapper clips
them, Flower's aggregator averages them. Above it, the meter counts the encoded bytes. The layer keeps the
server's mirror of what each node holds (:class:`~flowertune.wire.Downlink`) and exports it for a resume,
keyed by partition (node ids change when a run restarts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.stack.base import Layer, StackContext
from flowertune.federation.state import split_prefixed
from flowertune.wire import Codec, Downlink, NodeCopy, WireHeader

log = logging.getLogger(__name__)
_NPY_HEADER = 128  # a .npy header of a 1-3 dimensional array (numpy pads it to a multiple of 64)


class WireCodec(Layer):
    """Downlink: the global adapter in ``codec``, a delta from each node's own copy when known. Uplink: decoded."""

    name = "wire"
    state_name = "downlink"

    def __init__(self, strategy: Any, ctx: StackContext, codec: Codec) -> None:
        super().__init__(strategy, ctx)
        self.codec = codec
        self.downlink = Downlink(codec)  # per node: the adapter copy it holds (delta codecs)
        self.unclaimed: dict[int, NodeCopy] = {}  # by partition: restored copies of nodes not back yet
        self._global: dict[str, np.ndarray] = {}
        self._sent: dict[int, dict[str, np.ndarray]] = {}  # nodes sent other arrays than the global (lower ranks)

    def describe(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.codec.options().items())
        return f"wire({self.codec.name}{', ' + options if options else ''})"

    def _claim(self, node: int) -> None:
        """A node of a resumed run takes the copy the server mirrored for its partition."""
        p = self.ctx.partition_of(node)
        if p in self.unclaimed and node not in self.downlink.copies:
            self.downlink.copies[node] = self.unclaimed.pop(p)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        msgs = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._global = from_array_record(arrays)
        self._sent = {}
        out = []
        for m in msgs:
            node = m.metadata.dst_node_id
            self._claim(node)
            # what the layers below put in this node's message: the global, or its truncation to the node's rank
            own = m.content.array_records.get("arrays") if m.has_content() else None
            if own is not None and own is not arrays:
                self._sent[node] = from_array_record(own)
            payload, base = self.downlink.payload_for(node, self._sent.get(node, self._global), server_round)
            config = ConfigRecord(dict(m.content["config"]))
            config.update(WireHeader.of(self.codec, server_round, base).to_config())
            out.append(Message(RecordDict({"arrays": to_array_record(payload), "config": config}), dst_node_id=node,
                               message_type=MessageType.TRAIN))
        return out

    def max_payload_bytes(self, node: int | None = None) -> int:
        """The most bytes a well-formed reply's payload can take: the whole adapter (as sent to ``node``) in fp32,
        plus the ``.npy`` headers and names of up to three parts per tensor (every codec's payload is smaller)."""
        sent = self._sent.get(node, self._global) if node is not None else self._global
        return sum(4 * a.size + 3 * (_NPY_HEADER + len(k) + 16) for k, a in sent.items())

    def decode(self, msg: Message) -> str | None:
        """Replace the reply's payload by full fp32 arrays; the reason when it cannot be decoded. Never raises."""
        if msg.has_error() or "arrays" not in msg.content.array_records:
            return None  # the gate deals with it
        try:
            if not len(msg.content.array_records["arrays"]):
                return "empty payload (a trained adapter always changes)"
            node = msg.metadata.src_node_id
            size, most = sum(rec.count_bytes() for rec in msg.content.array_records.values()), self.max_payload_bytes(node)
            if size > most:
                return f"payload of {size} bytes, more than the {most} the adapter can take"
            arrays = self.codec.decode(from_array_record(msg.content.array_records["arrays"]),
                                       self._sent.get(node, self._global))
        except (ValueError, KeyError) as exc:
            return f"cannot decode the {self.codec.name} update: {str(exc)[:200]}"
        except Exception as exc:  # noqa: BLE001  (a hostile payload must not stop the round)
            return f"cannot decode the {self.codec.name} update ({type(exc).__name__})"
        extra = [k for k in msg.content.array_records if k != "arrays"]
        content = RecordDict({**msg.content.metric_records, **msg.content.config_records,
                              "arrays": to_array_record(arrays)})
        for k in extra:  # kept for the gate to see (and refuse)
            content[k] = msg.content.array_records[k]
        msg.content = content
        return None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = []
        for msg in replies:
            reason = self.decode(msg)
            if reason is None:
                decoded.append(msg)
            else:
                node = msg.metadata.src_node_id
                self.ctx.traffic.rejected.append(f"node {node}: {reason}")
                log.warning("round %d: rejected the update of node %s: %s", server_round, node, reason)
        result = self.strategy.aggregate_train(server_round, decoded)
        # a node whose reply was not accepted gets the full adapter next time
        self.downlink.settle(self.ctx.traffic.accepted_nodes)
        return result

    def forget(self, nodes: set[int]) -> None:
        """Nodes that are gone: their copies are dropped (the mirror does not grow with churn)."""
        for n in nodes:
            self.downlink.copies.pop(n, None)
            self.downlink.pending.pop(n, None)

    # -- resume state: the mirror by partition ------------------------------------------------------------
    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        by_partition = dict(self.unclaimed)
        for node, copy in self.downlink.copies.items():
            p = self.ctx.partition_of(node)
            if p is not None:
                by_partition[p] = copy
        meta, arrays = {}, {}
        for p, copy in sorted(by_partition.items()):
            meta[str(p)] = {"version": copy.version, "keys": list(copy.arrays)}
            arrays.update({f"{p}/{k}": v for k, v in copy.arrays.items()})
        return meta, arrays

    def import_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.unclaimed = {}
        for p, spec in meta.items():
            part = split_prefixed(arrays, p)
            self.unclaimed[int(p)] = NodeCopy(int(spec["version"]), {k: part[k] for k in spec["keys"]})

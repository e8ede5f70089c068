"""The downlink: what each node holds, and the payload that brings it to the global adapter.

Where the references come from :

* The server keeps the global adapter ``G`` in fp32 and aggregates in fp32. For delta codecs it also
  mirrors, per node, the adapter that node holds (the last downlink it decoded and answered).
* Downlink, round ``t``: a node with a known copy ``C`` gets ``encode(G, C)``, a delta from its own copy
  (however many rounds old); a node without one (first contact, lost or rejected reply) gets the full
  arrays: fp32 with the lossless ``fp32`` codec, fp16 with every lossy one. Sampled clients may start from slightly different lossy copies of
  ``G``; each copy's error is part of that node's next delta.
* Uplink: the client encodes its trained adapter against the copy it decoded, with its residual; the
  server decodes every reply against its exact ``G`` (the client's *update* is applied to ``G``), so the
  downlink's quantization error never enters the global model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowertune.wire.codecs import Arrays, Codec, get_codec


def full_codec(codec: Codec) -> Codec:
    """The codec of a full (first-contact) downlink: fp32 for the lossless codec, fp16 for lossy ones.

    For delta codecs the fp16 copy's error is part of the node's next delta (the server mirrors the copy)
    and never reaches the global model (uplinks are decoded against the exact global).
    """
    return codec if codec.lossless else get_codec("fp16")


def encode_full(codec: Codec, arrays: Arrays) -> Arrays:
    """The full payload for ``codec`` (see :func:`full_codec`); fp32 when a value does not fit fp16."""
    try:
        return full_codec(codec).encode(arrays, None, None)[0]
    except ValueError:
        return get_codec("fp32").encode(arrays, None, None)[0]


def decode_full(payload: Arrays) -> Arrays:
    """A full payload (fp16 or fp32 arrays, see :func:`encode_full`) as fp32 arrays."""
    fp16 = bool(payload) and all(np.asarray(v).dtype == np.float16 for v in payload.values())
    return get_codec("fp16" if fp16 else "fp32").decode(payload, None)


@dataclass(frozen=True)
class NodeCopy:
    """The adapter one node holds after decoding a downlink: the reference of its next delta."""

    version: int
    arrays: Arrays


class Downlink:
    """Server side of the downlink: a mirror of what every node holds, and the payload for each node.

    A node that holds a copy the server knows (it decoded an earlier downlink and its reply came back)
    gets ``codec.encode(global, its copy)``: a delta from *its own* copy, however many rounds old, so
    partial participation (a node sampled every 10th round) still gets compact deltas, and whatever the
    previous lossy deltas left out is part of this one. A node without a known copy (first contact, or
    its last reply was lost or rejected) gets the full payload (:func:`encode_full`: fp16 for lossy codecs). Non-delta codecs
    always send the full payload and keep no copies.

    The server mirrors each node's copy exactly (it decodes the payload it sends), costing one adapter of
    memory per participating node for delta codecs.
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.copies: dict[int, NodeCopy] = {}
        self.pending: dict[int, NodeCopy] = {}

    def payload_for(self, node: int, global_arrays: Arrays, version: int) -> tuple[Arrays, int | None]:
        """``(payload, version it is a delta against, or None for full)`` bringing ``node`` to ``version``."""
        copy = self.copies.get(node) if self.codec.is_delta else None
        if copy is not None and (copy.arrays.keys() != global_arrays.keys()
                                 or any(copy.arrays[k].shape != v.shape for k, v in global_arrays.items())):
            copy = None  # the node holds other shapes (its LoRA rank changed): a full payload
        if copy is None:
            payload = encode_full(self.codec, global_arrays)
            arrays, base = decode_full(payload), None
        else:
            payload, _ = self.codec.encode(global_arrays, copy.arrays, None)
            arrays, base = self.codec.decode(payload, copy.arrays), copy.version
        if self.codec.is_delta:
            self.pending[node] = NodeCopy(version, arrays)
        return payload, base

    def held_by(self, node: int) -> Arrays | None:
        """What ``node`` holds after decoding this round's payload (delta codecs only)."""
        copy = self.pending.get(node)
        return None if copy is None else copy.arrays

    def settle(self, replied: set[int]) -> None:
        """After a round: nodes whose reply was accepted hold their pending copy; the others are unknown."""
        for node, copy in self.pending.items():
            if node in replied:
                self.copies[node] = copy
            else:
                self.copies.pop(node, None)
        self.pending = {}


def decode_broadcast(
    codec: Codec, payload: Arrays, base_version: int | None, held_version: int | None, held: Arrays | None
) -> Arrays:
    """Client side of :class:`Downlink`: the adapter ``payload`` brings this node to."""
    if base_version is None:
        return decode_full(payload)
    if held is None or held_version != base_version:
        raise ValueError(f"broadcast is a delta against version {base_version}, this node holds {held_version}")
    return codec.decode(payload, held)

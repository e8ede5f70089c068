"""Wire formats for adapter updates, numpy only (no Flower import): the codecs (:mod:`.codecs`), bit packing
(:mod:`.bits`), the server's downlink mirror and the client's broadcast decoding (:mod:`.downlink`), and the
header both sides read (:mod:`.header`). Flower's ``ArrayRecord`` glue lives in ``federation/records.py``.
"""

from flowertune.wire.bits import pack_bits, unpack_bits
from flowertune.wire.codecs import (
    CODECS,
    DEFAULT_CODEC,
    SEP,
    Arrays,
    Codec,
    get_codec,
    npy_bytes,
    options_from,
    payload_bytes,
)
from flowertune.wire.downlink import Downlink, NodeCopy, decode_broadcast, decode_full, encode_full, full_codec
from flowertune.wire.header import WireHeader

__all__ = ["CODECS", "DEFAULT_CODEC", "SEP", "Arrays", "Codec", "Downlink", "NodeCopy", "WireHeader", "decode_broadcast",
           "decode_full", "encode_full", "full_codec", "get_codec", "npy_bytes", "options_from", "pack_bits",
           "payload_bytes", "unpack_bits"]

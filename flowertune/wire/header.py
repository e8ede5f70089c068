"""The wire header: what a downlink payload is, written by the server and read by the client.

It travels as plain keys of the message's ``config`` record (``wire-codec``, ``wire-version``, ``wire-base``
and one ``wire-option-<name>`` per codec option), so both sides agree on the codec, its options and the
adapter version a delta refers to without either spelling a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowertune.wire.codecs import DEFAULT_CODEC, Codec, get_codec

_OPTION = "wire-option-"


@dataclass(frozen=True)
class WireHeader:
    """``codec`` (with its ``options``) brings the node to adapter ``version``; a delta against ``base``, or full."""

    codec: str = DEFAULT_CODEC
    version: int = 0
    base: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, codec: Codec, version: int, base: int | None) -> WireHeader:
        return cls(codec.name, version, base, codec.options())

    def to_config(self) -> dict[str, Any]:
        """The header as config-record entries."""
        return {"wire-codec": self.codec, "wire-version": self.version, "wire-base": -1 if self.base is None else self.base,
                **{f"{_OPTION}{k}": v for k, v in sorted(self.options.items())}}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WireHeader:
        """The header a config record carries (a message without one is full ``fp32``, version 0)."""
        base = int(config.get("wire-base", -1))
        options = {k[len(_OPTION):]: v for k, v in config.items() if k.startswith(_OPTION)}
        return cls(str(config.get("wire-codec", DEFAULT_CODEC)), int(config.get("wire-version", 0)),
                   None if base < 0 else base, options)

    def build_codec(self) -> Codec:
        """The codec this header names, with its options (a ``ValueError`` for an unknown name or option)."""
        return get_codec(self.codec, **self.options)

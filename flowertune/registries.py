"""Name checks across registries, so a bad name fails at config time with the valid choices."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowertune.config import Config


def check_names(cfg: Config) -> None:
    """Raise ``ConfigError`` for a strategy, partitioner, data format, prompt frame or preset that does not exist."""
    from flowertune.config import ConfigError
    from flowertune.data.formats import FORMATS
    from flowertune.data.frames import FRAMES
    from flowertune.data.partition import PARTITIONERS
    from flowertune.federation.strategies import STRATEGIES
    from flowertune.presets import PRESETS
    from flowertune.wire import CODECS

    for registry, value, k in (
        (STRATEGIES, cfg.strategy.name, "strategy.name"),
        (PARTITIONERS, cfg.data.partitioner, "data.partitioner"),
        (FORMATS, cfg.data.format, "data.format"),
        (FRAMES, cfg.data.prompt_frame, "data.prompt-frame"),
        (PRESETS, cfg.run.preset, "preset"),
        (CODECS, cfg.run.wire_codec, "wire.codec"),
    ):
        if value not in registry:
            raise ConfigError(f"{k}={value!r} is not valid; choose one of: {', '.join(registry.names())}")
    from flowertune.federation.sinks import SINKS, sink_names

    for name in sink_names(cfg.run.metric_sinks):
        if name not in SINKS:
            raise ConfigError(f"run.metric-sinks: unknown sink {name!r}; choose from: {', '.join(SINKS.names())}")

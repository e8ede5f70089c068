"""A FlowerTune template's ``pyproject.toml`` taken as it is (``flowertune run -c path/to/pyproject.toml``).

The FlowerTune LLM apps (``flwr new`` and the leaderboard's challenge apps) keep their settings in
``[tool.flwr.app.config]`` (plus ``[tool.flwr.app.config.static]`` for the dataset) and, in the older apps,
the federation size in ``[tool.flwr.federations.<default>] options.num-supernodes``. Most keys are ours
already; the rest are mapped (:data:`RENAMED`) or ignored with one warning each (:data:`IGNORED`, with the
reason). The challenge preset is the one whose dataset the template names, so that the federation size and
the evaluation suite are the challenge's when the template does not say.

Steps versus epochs is not decided here: the template sets both ``max-steps`` and ``num-train-epochs`` in one
layer, and :func:`flowertune.layering.layer` resolves them as the template's trainer (transformers) does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "tool.flwr.app.config."

# template key -> ours
RENAMED = {
    "strategy.fraction-fit": "strategy.fraction-train",  # flwr < 1.20 strategies' name
    "dataset.name": "static.dataset.name",  # the intro example keeps it outside the static section
    "train.training-arguments.gradient-checkpointing": "model.gradient-checkpointing",
}
# template key -> why it is not carried over
IGNORED = {
    "train.training-arguments.output-dir": "checkpoints go to the run directory (--out)",
    "train.training-arguments.learning-rate": "the learning rate is train.learning-rate-max/min (cosine over rounds)",
    "train.training-arguments.logging-steps": "progress lines follow run.progress-every-s",
    "train.training-arguments.save-steps": "the global adapter is saved every train.save-every-round rounds",
    "train.training-arguments.save-total-limit": "every saved round is kept (the run directory's checkpoints/)",
}


def is_template(doc: Mapping[str, Any]) -> bool:
    """Whether a parsed TOML file is an app's ``pyproject.toml`` (rather than a file of our own keys)."""
    return isinstance(doc.get("tool"), Mapping) and isinstance(doc["tool"].get("flwr"), Mapping)


def template_overrides(doc: Mapping[str, Any], source: str = "pyproject.toml") -> dict[str, Any]:
    """Our flat keys from a FlowerTune app's parsed ``pyproject.toml`` (warning once per key it drops)."""
    from flowertune.config import ConfigError, flatten_toml, valid_keys
    from flowertune.presets import PRESETS

    app = doc["tool"]["flwr"].get("app", {})
    config = app.get("config") if isinstance(app, Mapping) else None
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source} has no [tool.flwr.app.config] table; give a FlowerTune app's pyproject.toml")
    keys = set(valid_keys())
    out: dict[str, Any] = {}
    for key, value in flatten_toml(config).items():
        if key in IGNORED:
            log.warning("%s: %s ignored: %s", source, key, IGNORED[key])
            continue
        ours = RENAMED.get(key, key)
        if ours not in keys:
            log.warning("%s: %s is not a flowertune key; ignored (see `flowertune keys`)", source, key)
            continue
        out[ours] = value
    federations = doc["tool"]["flwr"].get("federations")
    if isinstance(federations, Mapping):
        default = federations.get("default")
        fed = federations.get(default) if isinstance(default, str) else None
        options = fed.get("options", {}) if isinstance(fed, Mapping) else {}
        if isinstance(options, Mapping) and "num-supernodes" in options:
            out["num-supernodes"] = options["num-supernodes"]
    dataset = out.get("static.dataset.name")
    challenge = next((name for name in PRESETS.names()
                      if PRESETS.get(name).get("static.dataset.name") == dataset), None)  # fmt: skip
    if challenge is not None:
        out["preset"] = challenge  # the challenge's federation size, data format and evaluation suite
    return out

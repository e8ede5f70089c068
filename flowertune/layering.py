"""Layering a run's config: defaults < preset < recipe < the user's keys, with the source of every value.

Only the callers that know which keys the user set layer (``flowertune run``, ``flowertune presets
--run-config`` for plain ``flwr run``); the ServerApp takes the materialised result as it is
(:func:`flowertune.config.resolve`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flowertune.config import check_keys, flat_defaults, toml_value
from flowertune.presets import preset_overrides
from flowertune.recipes import get_recipe

log = logging.getLogger(__name__)


def layer(preset: str | None, user: Mapping[str, Any],
          recipe: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults < preset < recipe < every key in ``user`` (whatever its value): the materialised flat config
    and the source of each key (``default`` / ``preset`` / ``recipe`` / ``user``). Marked ``run.preset-applied``.

    ``recipe`` is a recipe name or the path of a recipe ``.toml`` file (:mod:`flowertune.recipes`); it names
    its preset, which ``preset`` (when given) replaces. Without either the preset is ``quickstart``. A
    ``preset`` or ``run.recipe`` key in ``user`` counts as the argument of that name.
    """
    check_keys(user)
    preset = preset or (str(user["preset"]) if user.get("preset") else None)
    recipe = recipe or (str(user["run.recipe"]) if user.get("run.recipe") else None)
    user = {k: v for k, v in user.items() if k not in ("preset", "run.recipe")}
    chosen = None
    if recipe:
        chosen = get_recipe(recipe)
    name = preset or (chosen.preset if chosen else str(flat_defaults()["preset"]))
    flat: dict[str, Any] = dict(flat_defaults())
    sources = dict.fromkeys(flat, "default")
    recipe_keys: Mapping[str, Any] = chosen.keys if chosen else {}
    for layer_name, values in (("preset", preset_overrides(name)), ("recipe", recipe_keys), ("user", user)):
        for k, v in values.items():
            flat[k], sources[k] = v, layer_name
    steps_or_epochs(flat, sources)
    flat["preset"], flat["run.preset-applied"] = name, True
    if preset:
        sources["preset"] = "user"
    if chosen is not None:
        if not preset:
            sources["preset"] = "recipe"
        # a recipe file is recorded by its absolute path: the run directory must say what it ran
        flat["run.recipe"] = str(chosen.path) if str(recipe).endswith(".toml") else chosen.name
        sources["run.recipe"] = "recipe"
    return flat, sources


EPOCHS, STEPS = "train.training-arguments.num-train-epochs", "train.training-arguments.max-steps"
_RANK = {"default": 0, "preset": 1, "recipe": 2, "user": 3}


def steps_or_epochs(flat: dict[str, Any], sources: dict[str, str]) -> None:
    """When both ``max-steps`` and ``num-train-epochs`` are set (> 0), the one from the later layer wins; on
    the same layer (a FlowerTune template sets both) ``max-steps`` wins, as in transformers' trainer, which
    the templates run. The loser is set to 0, with a warning. In place."""
    def as_int(v: Any) -> int | None:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            return None
        try:
            f = float(v)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None

    steps, epochs = as_int(flat.get(STEPS, 0)), as_int(flat.get(EPOCHS, 0))
    if steps is None or epochs is None:
        return  # a value of the wrong type: config validation says so in one line
    if steps <= 0 or epochs <= 0:
        return
    if _RANK.get(sources.get(STEPS, "default"), 0) >= _RANK.get(sources.get(EPOCHS, "default"), 0):
        log.warning("%s=%d and %s=%d are both set: max-steps wins (as in transformers, which FlowerTune's "
                    "templates train with): %d optimizer steps a round; set max-steps=0 for epochs",
                    STEPS, steps, EPOCHS, epochs, steps)
        flat[EPOCHS] = 0
    else:  # epochs from a later layer (e.g. a recipe's over its preset's max-steps)
        if sources.get(STEPS, "default") != "default":
            log.warning("%s=%d (%s) gives way to %s=%d (%s): whole local epochs a round", STEPS, steps,
                        sources.get(STEPS), EPOCHS, epochs, sources.get(EPOCHS))
        flat[STEPS] = 0


def preset_run_config(name: str | None, user: Mapping[str, Any] | None = None, recipe: str | None = None) -> str:
    """Preset ``name`` (or ``recipe`` on its preset) with the user's keys on top, as one ``--run-config``
    key=value text for plain ``flwr run``.

    One string with each key once: Flower merges several ``--run-config`` strings per top-level table (a
    later ``model.x=...`` drops every earlier ``model.*`` key), and TOML rejects a key given twice.
    """
    flat, sources = layer(name, dict(user or {}), recipe)
    keep = [k for k in flat if sources[k] != "default" or k in ("preset", "run.preset-applied")]
    return " ".join(f"{k}={toml_value(flat[k])}" for k in keep)

"""Recipes: a FlowerTune leaderboard submission's stated settings, reproducible by name.

A recipe is one TOML file in this directory, named after what it trains (``code-phi4-mini-dora.toml``):

``[recipe]``
    ``source`` (the submission README it reproduces), ``title``, ``preset`` (the challenge it builds on),
    ``notes`` (how ambiguities in the README were resolved, what is not reproduced), optionally ``reported``
    (the README's results) and ``models`` (other base models the submission ran with the same settings).
``[config]``
    The flat config keys the README states, written as in ``[tool.flwr.app.config]``.

Layering is defaults < preset < recipe < the user's keys (:func:`flowertune.layering.layer`), so a recipe
holds only what its README says and the preset fills in the rest of the challenge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from flowertune.config import ConfigError, Scalar, check_keys, flatten_toml, from_flat
from flowertune.registry import Registry

RECIPE_DIR = Path(__file__).resolve().parent

_META_REQUIRED = ("source", "title", "preset")
_META_OPTIONAL = ("notes", "reported", "models")
# set by layering itself: a recipe naming them would fight `flowertune run` (its preset goes in [recipe])
_RESERVED = ("preset", "run.recipe", "run.preset-applied")


@dataclass(frozen=True)
class Recipe:
    """One submission's settings: metadata plus the flat config keys its README states."""

    name: str
    path: Path
    source: str
    title: str
    preset: str
    keys: Mapping[str, Scalar]
    notes: tuple[str, ...] = ()
    reported: str = ""
    models: tuple[str, ...] = ()


def load_recipe(path: str | Path) -> Recipe:
    """Read and check one recipe file; every problem is a one-line :class:`ConfigError` naming the file."""
    import tomllib  # stdlib from Python 3.11; imported here as in commands/run.py

    path = Path(path).absolute()

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"recipe {path}: {msg}")

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"cannot be read as TOML ({' '.join(str(exc).split())})") from None
    extra = sorted(set(data) - {"recipe", "config"})
    if extra:
        raise fail(f"unknown table(s) {', '.join(extra)}; a recipe has only [recipe] and [config]")
    meta = data.get("recipe", {})
    try:
        keys = flatten_toml(data.get("config", {}))
    except ConfigError as exc:
        raise fail(f"[config] {exc}") from None
    missing = [m for m in _META_REQUIRED if not isinstance(meta.get(m), str) or not meta[m]]
    if missing:
        raise fail(f"[recipe] needs {', '.join(missing)} (strings)")
    unknown_meta = sorted(set(meta) - set(_META_REQUIRED) - set(_META_OPTIONAL))
    if unknown_meta:
        raise fail(f"unknown [recipe] field(s) {', '.join(unknown_meta)}; valid: "
                   f"{', '.join(_META_REQUIRED + _META_OPTIONAL)}")
    reserved = [k for k in _RESERVED if k in keys]
    if reserved:
        raise fail(f"[config] sets {', '.join(reserved)}; remove it (name the preset as [recipe] preset = \"...\")")
    try:
        check_keys(keys)
    except ConfigError as exc:
        # the fix before check_keys' (long) list of valid keys, so it is read
        unknown, _, valid = str(exc).partition(". Valid keys: ")
        raise fail(f"{unknown}; rename it to its current name or remove it from this file (valid keys: {valid})") from None
    from flowertune.presets import PRESETS, preset_overrides

    if meta["preset"] not in PRESETS:
        raise fail(f"[recipe] preset={meta['preset']!r} is not a preset; choose one of: {', '.join(PRESETS.names())}")
    try:  # values are checked where they are written, not on a later run
        from_flat({**preset_overrides(meta["preset"]), **keys})
    except ConfigError as exc:
        raise fail(str(exc)) from None
    return Recipe(
        name=path.stem, path=path, source=meta["source"], title=meta["title"], preset=meta["preset"],
        keys=MappingProxyType(keys), notes=tuple(meta.get("notes", ())), reported=str(meta.get("reported", "")),
        models=tuple(meta.get("models", ())),
    )


_RECIPES: Registry[Recipe] | None = None


def recipes() -> Registry[Recipe]:
    """The registry of shipped recipes (this directory's ``*.toml``), read on first use."""
    global _RECIPES
    if _RECIPES is None:
        registry: Registry[Recipe] = Registry("recipe")
        for path in sorted(RECIPE_DIR.glob("*.toml")):
            registry.add(path.stem, load_recipe(path))
        _RECIPES = registry
    return _RECIPES


def get_recipe(name: str) -> Recipe:
    """Shipped recipe ``name``, or the recipe file at path ``name`` (``*.toml``); unknown names list the valid ones."""
    if name.endswith(".toml"):
        if not Path(name).is_file():
            raise ConfigError(f"recipe file {name!r} does not exist; give an existing .toml path or one of: "
                              f"{', '.join(recipes().names())}")
        return load_recipe(name)
    registry = recipes()
    if name not in registry:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(registry.names())} "
                          "(see `flowertune recipes`), or give the path of a recipe .toml file")
    return registry.get(name)

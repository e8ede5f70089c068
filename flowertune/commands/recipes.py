"""``flowertune recipes``: the leaderboard submissions that can be reproduced by name.

Without a name: one line per recipe (name, preset, source README, title). With a name (or the path of a
recipe ``.toml``): its metadata, the notes on how the README was read, and the keys it sets.
``flowertune run --recipe NAME --dry-run`` shows the whole resolved config.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from flowertune.config import ConfigError, toml_value


def handle(args: argparse.Namespace) -> int:
    from flowertune.recipes import get_recipe, recipes

    try:
        if args.name is None:
            registry = recipes()
            width = max(len(n) for n in registry.names())
            for name in registry.names():
                r = registry.get(name)
                print(f"{name:{width}s}  {r.preset:11s}  {r.source}  {r.title}")
            return 0
        r = get_recipe(args.name)
    except ConfigError as exc:
        print(f"flowertune recipes: {exc}", file=sys.stderr)
        return 2
    print(f"{r.name}: {r.title}\n  source: {r.source}\n  preset: {r.preset}\n  file: {r.path}")
    if r.reported:
        print(f"  reported: {r.reported}")
    if r.models:
        print("  models (same settings; pick one with model.name=...):")
        for m in r.models:
            print(f"    {m}")
    if r.notes:
        print("  notes:")
        for note in r.notes:
            print(textwrap.fill(note, width=116, initial_indent="    - ", subsequent_indent="      ",
                                break_on_hyphens=False, break_long_words=False))
    print(f"  keys (over preset {r.preset}; your key=value overrides win):")
    for k, v in r.keys.items():
        print(f"    {k} = {toml_value(v)}")
    print(f"\nrun it: flowertune run --recipe {args.name}   (add --dry-run to see every resolved value)")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("recipes", help="list leaderboard-submission recipes, or show one",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="a recipe name or recipe .toml path: print its notes and keys")
    p.set_defaults(func=handle)

"""``flowertune keys`` and ``flowertune presets``: what can be configured."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flowertune.config import describe, pyproject_section
from flowertune.presets import PRESETS


def handle_keys(args: argparse.Namespace) -> int:
    if args.pyproject:
        print(pyproject_section(), end="")
        return 0
    import shutil
    import textwrap

    width = max(80, min(shutil.get_terminal_size((100, 24)).columns, 120))
    for k, default, help_ in describe():
        if k in INTERNAL and not args.all:
            continue
        print(f"{k}  (default {default!r})")
        print(textwrap.fill(help_, width=width, initial_indent="    ", subsequent_indent="    "))
    if not args.all:
        print(f"\n({len(INTERNAL)} keys that flowertune run sets itself are hidden: --all shows them)")
    return 0


# set by `flowertune run` / `--resume`, not by hand
INTERNAL = ("run.preset-applied", "run.resume", "run.resume-force")


def handle_presets(args: argparse.Namespace) -> int:
    if args.run_config or args.recipe:
        from flowertune.commands.run import parse_overrides
        from flowertune.config import ConfigError
        from flowertune.layering import preset_run_config

        try:
            print(preset_run_config(args.run_config, parse_overrides(args.overrides), args.recipe))
        except (KeyError, ConfigError) as exc:
            print(f"flowertune presets: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
            return 2
        return 0
    for name in PRESETS.names():
        print(f"[{name}]")
        for k, v in sorted(PRESETS.get(name).items()):
            print(f"  {k} = {v!r}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="list every config key with its default")
    p.add_argument("--pyproject", action="store_true", help="print the [tool.flwr.app.config] section")
    p.add_argument("--all", action="store_true", help="also the keys that flowertune run sets itself")
    p.set_defaults(func=handle_keys)
    q = sub.add_parser("presets", help="list presets and what they change")
    q.add_argument("--run-config", metavar="NAME",
                   help="print preset NAME with your key=value overrides on top as one --run-config text for plain "
                        "`flwr run` (your keys win whatever their value)")
    q.add_argument("--recipe", metavar="RECIPE",
                   help="print recipe RECIPE (on its preset, or on --run-config NAME) with your overrides on top as "
                        "one --run-config text for plain `flwr run` (see `flowertune recipes`)")
    q.add_argument("overrides", nargs="*", help="with --run-config or --recipe: your key=value overrides")
    q.set_defaults(func=handle_presets)

"""``flowertune keys`` and ``flowertune presets``: what can be configured."""

from __future__ import annotations

import argparse
from typing import Any

from flowertune.config import describe, pyproject_section
from flowertune.presets import PRESETS


def handle_keys(args: argparse.Namespace) -> int:
    if args.pyproject:
        print(pyproject_section(), end="")
        return 0
    for k, default, help_ in describe():
        print(f"{k:55s} {default!r:32s} {help_}")
    return 0


def handle_presets(args: argparse.Namespace) -> int:
    for name in PRESETS.names():
        print(f"[{name}]")
        for k, v in sorted(PRESETS.get(name).items()):
            print(f"  {k} = {v!r}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="list every config key with its default")
    p.add_argument("--pyproject", action="store_true", help="print the [tool.flwr.app.config] section")
    p.set_defaults(func=handle_keys)
    q = sub.add_parser("presets", help="list presets and what they change")
    q.set_defaults(func=handle_presets)

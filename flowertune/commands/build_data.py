"""``flowertune build-data``: write a training set built from raw files, evaluation items held out."""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any


def handle(args: argparse.Namespace) -> int:
    from flowertune.commands.eval import data_dir_from
    from flowertune.trainsets import BUILDERS, write_jsonl

    try:
        build = BUILDERS.get(args.name)
    except KeyError as exc:
        print(f"flowertune build-data: {exc.args[0]}", file=sys.stderr)
        return 2
    data_dir = data_dir_from(args.data_dir)
    if data_dir is None or not data_dir.is_dir():
        where = f"data directory {data_dir} not found" if data_dir else "no data directory"
        print(f"flowertune build-data: {where}; give --data-dir or set FLOWERTUNE_DATA_DIR", file=sys.stderr)
        return 2
    out = Path(args.out).absolute()
    if out.is_dir() or (out.exists() and not args.force):
        print(f"flowertune build-data: {out} already exists; choose another --out"
              + ("" if out.is_dir() else " or pass --force to replace it"), file=sys.stderr)
        return 2
    try:
        rows = build(data_dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"flowertune build-data: {args.name} cannot read its raw files under {data_dir}: "
              f"{str(exc).splitlines()[0][:300]} (see the data directory's README for the expected layout)",
              file=sys.stderr)
        return 2
    path = write_jsonl(rows, out)
    labels = collections.Counter(r["output"] for r in rows)
    print(f"{path}: {len(rows)} rows" + (f", labels {dict(labels)}" if len(labels) <= 10 else ""))
    return 0


def add_parser(sub: Any) -> None:
    from flowertune.trainsets import BUILDERS

    p = sub.add_parser("build-data", help="build a training set from raw files (evaluation items held out)",
                       description=__doc__)
    p.add_argument("name", help=" | ".join(BUILDERS.names()))
    p.add_argument("--data-dir", type=Path, help="raw data directory (default: $FLOWERTUNE_DATA_DIR)")
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=handle)

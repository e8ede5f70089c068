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

    data_dir = data_dir_from(args.data_dir)
    if data_dir is None or not data_dir.is_dir():
        print(f"flowertune build-data: data directory {data_dir} not found; give --data-dir or set "
              "FLOWERTUNE_DATA_DIR", file=sys.stderr)
        return 2
    try:
        build = BUILDERS.get(args.name)
    except KeyError as exc:
        print(f"flowertune build-data: {exc.args[0]}", file=sys.stderr)
        return 2
    rows = build(data_dir)
    path = write_jsonl(rows, Path(args.out).absolute())
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
    p.set_defaults(func=handle)

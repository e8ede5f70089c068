"""``flowertune submit RUN_DIR --out DIR``: the folder a FlowerTune leaderboard submission needs.

It holds the final PEFT adapter, a README in the submissions' structure (methodology, results table,
communication budget, loss plot, the exact flowertune command that reproduces the run), the resolved config
and the evaluation results with their per-item files. A run that did not finish, was not evaluated on its
challenge's full splits, or stopped early is refused with what is missing and the command that adds it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("submit", help="package a finished, evaluated run as a leaderboard submission folder",
                       description=__doc__)
    p.add_argument("run_dir", type=Path, help="a finished run directory, evaluated with `flowertune eval --run`")
    p.add_argument("--out", type=Path, required=True, help="the submission folder to create (new or empty)")
    p.add_argument("--allow-limit", action="store_true",
                   help="accept an evaluation made with --limit (the README then says it is not a leaderboard score)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from flowertune.report.submission import IncompleteRun, build_submission

    try:
        out = build_submission(args.run_dir, args.out, args.allow_limit)
    except IncompleteRun as exc:
        print(f"flowertune submit: {exc}", file=sys.stderr)
        return 2
    print(f"submission folder: {out}\n  README.md, adapter/, config.json, run-config.toml, eval/, plots/, metrics.jsonl")
    return 0

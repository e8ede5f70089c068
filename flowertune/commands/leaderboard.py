"""``flowertune leaderboard``: print a FlowerTune leaderboard row from an eval ``results.json``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flowertune.eval.benchmark import SUITES


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``leaderboard`` on the ``flowertune`` subparsers."""
    parser = subparsers.add_parser("leaderboard", help="format eval results as a leaderboard row",
                                   description=__doc__)
    configure(parser)
    parser.set_defaults(func=handler)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """The ``leaderboard`` options."""
    parser.add_argument("--results", type=Path, help="results.json of `flowertune eval` (default: <run>/eval/)")
    parser.add_argument("--run", type=Path, help="run directory: adds the communication cost of metrics.jsonl")
    parser.add_argument("--challenge", choices=sorted(SUITES), help="default: the challenge of the results")


def handler(args: argparse.Namespace) -> int:
    """Print the table; exit code 2 when no results file can be found."""
    from flowertune.eval.leaderboard import format_table
    from flowertune.federation.rundir import EVAL, communication_mb, read_eval

    if args.results is not None:
        results = json.loads(args.results.read_text()) if args.results.is_file() else None
    else:
        results = read_eval(args.run) if args.run else None
    if results is None:
        where = args.results or (args.run / EVAL / "results.json" if args.run else None)
        if where is None:
            print("flowertune leaderboard: give --run RUN_DIR (its eval/results.json) or --results FILE",
                  file=sys.stderr)
        else:
            print(f"flowertune leaderboard: no results file at {where}; run `flowertune eval` first or give "
                  "--results FILE", file=sys.stderr)
        return 2
    comm = communication_mb(args.run) if args.run is not None else None
    try:
        print(format_table(results, challenge=args.challenge, comm_mb=comm, with_comm=args.run is not None))
    except (KeyError, ValueError) as exc:
        print(f"flowertune leaderboard: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m flowertune.commands.leaderboard``."""
    parser = argparse.ArgumentParser(prog="flowertune leaderboard", description=__doc__)
    configure(parser)
    return handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

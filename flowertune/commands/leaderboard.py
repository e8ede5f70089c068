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

    path = args.results or (args.run / "eval" / "results.json" if args.run else None)
    if path is None or not Path(path).is_file():
        print(f"flowertune leaderboard: no results file ({path}); give --results or --run", file=sys.stderr)
        return 2
    results = json.loads(Path(path).read_text())
    try:
        print(format_table(results, challenge=args.challenge, run_dir=args.run))
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

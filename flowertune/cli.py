"""The ``flowertune`` command: run, eval, report, sweep, submit, leaderboard, keys, recipes, build-data, certs, register."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("run", "eval", "report", "sweep", "submit", "leaderboard", "keys", "recipes", "build_data", "certs",
            "register")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowertune", description="Federated LLM fine-tuning on Flower")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"flowertune.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"flowertune.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `flowertune keys | head`: the reader left, which is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

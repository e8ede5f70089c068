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
    p.add_argument("--push-to-hub", metavar="OWNER/NAME",
                   help="also publish the adapter (at the repository root), the README as its model card, results "
                        "and plots on the Hugging Face Hub (token from `hf auth login` or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--allow-limit", action="store_true",
                   help="accept an evaluation made with --limit (the README then says it is not a leaderboard score)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from flowertune.config import ConfigError
    from flowertune.report.submission import IncompleteRun, build_submission, missing

    if args.private and not args.push_to_hub:
        print("flowertune submit: --private only applies to --push-to-hub", file=sys.stderr)
        return 2
    if args.push_to_hub:  # everything that can refuse the upload, before anything is built
        gaps = missing(args.run_dir.absolute(), args.allow_limit)
        try:
            if gaps:
                raise ConfigError(f"{args.run_dir} cannot be submitted yet: " + "; ".join(gaps))
            from flowertune.report.hub import check_can_push

            user = check_can_push(args.push_to_hub, args.private)
        except ConfigError as exc:
            print(f"flowertune submit: {exc}", file=sys.stderr)
            return 2
        print(f"Hub: logged in as {user}")
    try:
        out = build_submission(args.run_dir, args.out, args.allow_limit)
    except IncompleteRun as exc:
        print(f"flowertune submit: {exc}", file=sys.stderr)
        return 2
    print(f"submission folder: {out}\n  README.md, adapter/, config.json, run-config.toml, eval/, plots/, metrics.jsonl")
    if args.push_to_hub:
        from flowertune.federation.rundir import read_config
        from flowertune.report.hub import push
        from flowertune.report.submission import suite_of

        try:
            url = push(out, args.push_to_hub, suite_of(read_config(args.run_dir)), args.private)
        except Exception as exc:  # noqa: BLE001 - the folder is built and kept; say why the upload failed
            print(f"flowertune submit: the folder is built ({out}), but the upload to {args.push_to_hub} failed: "
                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}", file=sys.stderr)
            return 1
        print(f"published: {url}")
    return 0

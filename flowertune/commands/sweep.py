"""``flowertune sweep``: train and evaluate several base models (or config variants), one after the other.

    flowertune sweep SWEEP.toml --out DIR
    flowertune sweep --out DIR --preset general-nlp --models Qwen/Qwen2.5-7B-Instruct,meta-llama/Llama-3.2-1B-Instruct

A sweep file names the preset (or recipe), the suite, optional ``limit`` and ``num-supernodes``, a
``[config]`` table for every member and one ``[members.<name>]`` table of config keys per member. Each member
gets its own run directory under DIR; DIR/sweep.md, sweep.csv and sweep.png compare them. Rerunning the same
command skips the finished members and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="train and evaluate several models or variants into one comparison table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_file", nargs="?", type=Path, help="a sweep .toml (see above)")
    p.add_argument("--out", type=Path, required=True, help="the sweep directory (rerun with it to continue)")
    p.add_argument("--models", help="comma-separated base models, one member each (instead of a sweep file)")
    p.add_argument("--preset", help="with --models: the preset every member starts from")
    p.add_argument("--recipe", help="with --models: the recipe every member starts from")
    p.add_argument("--suite", help="with --models: the evaluation suite (default: the preset's challenge)")
    p.add_argument("--limit", type=int, help="with --models: score the first N items of each benchmark")
    p.add_argument("--num-supernodes", type=int, help="with --models: simulated SuperNodes of every member")
    p.add_argument("--data-dir", type=Path, help="local benchmark data for the evaluations (as `flowertune eval`)")
    p.add_argument("overrides", nargs="*", default=[], help="with --models: config keys k=v for every member")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from flowertune.commands.run import parse_overrides
    from flowertune.config import ConfigError
    from flowertune.sweep import load_sweep_file, models_sweep, run_sweep

    try:
        if args.sweep_file and args.models:
            raise ConfigError("give a sweep file or --models, not both")
        if args.sweep_file:
            if not args.sweep_file.is_file():
                raise ConfigError(f"{args.sweep_file}: no such sweep file")
            sweep = load_sweep_file(args.sweep_file)
        elif args.models:
            sweep = models_sweep([m.strip() for m in args.models.split(",") if m.strip()], preset=args.preset,
                                 recipe=args.recipe, suite=args.suite, limit=args.limit,
                                 **{"num-supernodes": args.num_supernodes, "config": parse_overrides(args.overrides)})
        else:
            raise ConfigError("give a sweep file or --models a,b,c")
        status = run_sweep(sweep, args.out, args.data_dir)
    except ConfigError as exc:
        print(f"flowertune sweep: {exc}", file=sys.stderr)
        return 2
    failed = [m for m, s in status.items() if s != "done"]
    print(f"sweep table: {Path(args.out).absolute() / 'sweep.md'} (and sweep.csv, sweep.png)")
    if failed:
        print(f"flowertune sweep: not finished: {', '.join(failed)}; rerun the same command to continue",
              file=sys.stderr)
        return 1
    return 0

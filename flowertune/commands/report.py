"""``flowertune report RUN_DIR``: write report.md, report.html and plots/*.png into a run directory.

The report holds the methodology (from the run's resolved config), the leaderboard table (when the run was
evaluated), the per-round table and plots of loss, communication and client speed/memory. It is also
rewritten at the end of every run and every ``flowertune eval --run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="write a run's report (markdown, HTML, PNG plots)", description=__doc__)
    p.add_argument("run_dir", type=Path, help="a run directory (what `flowertune run` wrote)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from flowertune.federation.rundir import is_run_dir
    from flowertune.report import write_report

    if not is_run_dir(args.run_dir):
        print(f"flowertune report: {args.run_dir} is not a run directory (no config.json); give the directory "
              "`flowertune run` wrote", file=sys.stderr)
        return 2
    path = write_report(args.run_dir)
    print(f"report: {path}\n        {path.with_suffix('.html')}\n        {path.parent / 'plots'}/")
    return 0

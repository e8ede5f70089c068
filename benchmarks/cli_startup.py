"""Start-up of the commands that only read and check a config: ``flowertune run --dry-run`` and ``flowertune keys``.

Each command runs as a fresh process ``--runs`` times (after one warm-up) and the median wall time and peak
resident memory are printed, with the ratio to a bare ``python -c pass`` measured in the same run. With
``--baseline CHECKOUT`` (another flowertune source tree, e.g. a ``git worktree`` of an older commit) the
same commands also run against that tree, interleaved, and the ratio new/old is printed pair by pair.

    python benchmarks/cli_startup.py                          # this tree
    python benchmarks/cli_startup.py --baseline /tmp/before   # vs `git worktree add /tmp/before ecd6176`
    python benchmarks/cli_startup.py --quick                  # 1 run each (smoke)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {"run --dry-run": ["run", "--dry-run"], "keys": ["keys"]}


def timed(argv: list[str], pythonpath: str | None, cwd: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the child) of one fresh process."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t0 = time.perf_counter()
    pid = subprocess.Popen([sys.executable, *argv], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} exited with {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--baseline", type=Path, help="another flowertune source tree to compare against")
    ap.add_argument("--quick", action="store_true", help="1 run of each (smoke)")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    if args.baseline is not None and not (args.baseline / "flowertune" / "cli.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: not a flowertune source tree (no flowertune/cli.py)")
    with tempfile.TemporaryDirectory() as cwd:  # a neutral cwd: `-m flowertune.cli` imports the installed tree
        bare = statistics.median(timed(["-c", "pass"], None, cwd)[0] for _ in range(runs + 1))
        print(f"python -c pass: {bare:.3f} s (median of {runs + 1})")
        print(f"{'command':<16}{'wall s':>8}{'x bare':>8}{'peak MiB':>10}" +
              (f"{'old wall s':>12}{'old MiB':>9}{'new/old':>9}" if args.baseline else ""))
        for name, argv in COMMANDS.items():
            cmd = ["-m", "flowertune.cli", *argv]
            timed(cmd, None, cwd)  # warm-up (page cache)
            new, old, ratios = [], [], []
            for _ in range(runs):
                new.append(timed(cmd, None, cwd))
                if args.baseline:
                    old.append(timed(cmd, str(args.baseline.absolute()), cwd))
                    ratios.append(new[-1][0] / old[-1][0])
            wall, mib = statistics.median(w for w, _ in new), statistics.median(m for _, m in new)
            line = f"{name:<16}{wall:>8.3f}{wall / bare:>8.1f}{mib:>10.1f}"
            if args.baseline:
                line += (f"{statistics.median(w for w, _ in old):>12.3f}{statistics.median(m for _, m in old):>9.1f}"
                         f"{statistics.median(ratios):>9.3f}")
            print(line)


if __name__ == "__main__":
    main()

"""The log tee of ``flowertune run``: every line Flower and Ray print goes to ``<run>/run.log``; the terminal
gets flowertune's own lines and the errors a user must see."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from flowertune.federation.rundir import LOG

# flowertune's own log lines (server and, through Ray, clients) and the errors a user must see; the rest of
# Flower's and Ray's output goes to <run>/run.log only, unless -v
_OURS = re.compile(r"\d\d:\d\d:\d\d flowertune (INFO|WARNING|ERROR)|^flowertune|ERROR|Traceback|Error: ")
_ACTOR = re.compile(r"^(\x1b\[\d+m)?\((ClientAppActor|raylet)[^)]*\)(\x1b\[0m)?\s?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def terminal_line(line: str, verbose: bool) -> str | None:
    """What the user's terminal shows of one output line of ``flwr run`` (None: the run log only)."""
    if verbose:
        return line
    plain = _ANSI.sub("", line)
    if not _OURS.search(plain):
        return None
    return _ACTOR.sub("  client | ", line) if _ACTOR.match(line) else line


def run_logged(cmd: list[str], env: dict[str, str], run_path: Path, verbose: bool) -> int:
    """Run ``cmd``; every output line goes to ``<run>/run.log``, the terminal gets :func:`terminal_line`'s."""
    run_path.mkdir(parents=True, exist_ok=True)
    with open(run_path / LOG, "a", encoding="utf-8") as log_file:
        log_file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log_file.write(line)
                log_file.flush()
                shown = terminal_line(line, verbose)
                if shown is not None:
                    sys.stdout.write(shown)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            proc.terminate()
            raise
        return proc.wait()

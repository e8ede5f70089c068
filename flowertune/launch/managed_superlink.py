"""The managed local SuperLink that ``flwr run`` starts for simulations outlives the command, and the venv.

``flwr run`` reuses whatever SuperLink answers on its local port, and that SuperLink runs every simulation
with the Python environment it was started from. After a checkout or venv is replaced, a later ``flowertune
run`` would silently run the old environment's code, or hang when that environment is gone (seen here:
``benchmarks/quality.py --quick`` waited 15 min on a SuperLink whose venv had been deleted). Before a
simulation starts, :func:`check` stops a managed SuperLink whose environment no longer exists and refuses,
in one line, one from another live environment.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flowertune.config import ConfigError

SCRIPT = "flower-superlink"


@dataclass(frozen=True)
class Process:
    pid: int
    args: tuple[str, ...]

    def option(self, name: str) -> str | None:
        return self.args[self.args.index(name) + 1] if name in self.args[:-1] else None

    @property
    def bin_dir(self) -> Path | None:
        """The bin directory of the environment it runs from (that of its ``flower-superlink`` script)."""
        script = next((a for a in self.args if Path(a).name == SCRIPT), None)
        return Path(script).parent if script and "/" in script else None


def processes() -> list[Process]:
    """Every process of this user that ``/proc`` shows, with its argument list."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            out.append(Process(int(entry.name), tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)))
    return out


def local_superlinks(procs: Iterable[Process], port: str) -> list[Process]:
    """Simulation SuperLinks listening on the managed local port ``port``."""
    return [p for p in procs if any(Path(a).name == SCRIPT for a in p.args) and "--simulation" in p.args
            and p.option("--port") == port]


def decide(procs: Iterable[Process], port: str, bin_dir: Path,
           exists: Callable[[Path], bool] = lambda p: p.exists()) -> tuple[list[int], str | None]:
    """``(pids to stop, error)`` for the SuperLinks on ``port``: a dead environment's is stopped, another live
    environment's is an error naming it and the fix; this environment's is fine."""
    stop, error = [], None
    for p in local_superlinks(procs, port):
        theirs = p.bin_dir
        if theirs is None or theirs == bin_dir:
            continue
        if not exists(theirs / SCRIPT):
            stop.append(p.pid)
            continue
        error = (f"the managed local SuperLink on port {port} (pid {p.pid}) runs from another Python environment "
                 f"({theirs.parent}), so this simulation would run that environment's code. Stop it (`kill "
                 f"{p.pid}`) if no run of that environment is in progress, or give this one its own "
                 "FLOWERTUNE_HOME and FLWR_LOCAL_SUPERLINK_HTTP_API_PORT / FLWR_LOCAL_CONTROL_API_PORT")
    return stop, error


def check(env: Mapping[str, str], bin_dir: Path | None = None) -> list[int]:
    """Before a simulation: stop SuperLinks whose environment is gone (returns their pids); raise
    :class:`ConfigError` for one of another live environment."""
    import sys

    port = env.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091")
    stop, error = decide(processes(), port, bin_dir or Path(sys.executable).parent)
    if error:
        raise ConfigError(error)
    # SIGTERM first; a SuperLink whose environment is gone was seen to ignore it, so SIGKILL after 10 s
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        alive = [pid for pid in stop if Path(f"/proc/{pid}").exists()]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in alive):
            time.sleep(0.2)
    return stop

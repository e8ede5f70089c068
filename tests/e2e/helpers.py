"""Running flowertune through Flower's real runtimes from tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(home: Path) -> dict[str, str]:
    """A private FLOWERTUNE_HOME/FLWR_HOME and private ports for the managed local SuperLink."""
    env = dict(os.environ)
    env.update({
        "FLOWERTUNE_HOME": str(home), "FLWR_HOME": str(home / "flwr"), "HF_HUB_OFFLINE": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "RAY_DEDUP_LOGS": "0", "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    })
    return env


def kill_processes_mentioning(text: str, sig: signal.Signals | None = None) -> None:
    """Stop detached Flower processes started for one test (found by their private FLWR_HOME) and every process
    under them (``flwr-simulation``, which runs the ServerApp, does not name the home); ``sig``: send only that
    signal (SIGKILL: a crash, no cleanup), default SIGTERM then SIGKILL."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True,
                         check=False).stdout
    procs = [(int(f[0]), int(f[1]), f[2] if len(f) > 2 else "") for f in (ln.split(None, 2) for ln in out.splitlines())]
    pids = {pid for pid, _, args in procs if text in args and pid != os.getpid()}
    grown = True
    while grown:  # add descendants
        more = {pid for pid, ppid, _ in procs if ppid in pids and pid != os.getpid()}
        grown = not more <= pids
        pids |= more
    signals = (sig,) if sig else (signal.SIGTERM, signal.SIGKILL)
    for i, each in enumerate(signals):
        for pid in pids:
            try:
                os.kill(pid, each)
            except ProcessLookupError:
                pass
        # wait until they are gone (no fixed sleep: most runs leave nothing, or exit at once on SIGTERM)
        deadline = time.monotonic() + 2
        while (pids := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tiny_overrides(model_dir: Path, data: Path, **extra: object) -> list[str]:
    cfg = {
        "model.name": str(model_dir), "static.dataset.name": str(data), "num-server-rounds": 2,
        "train.training-arguments.max-steps": 2, "train.training-arguments.per-device-train-batch-size": 2,
        "train.seq-length": 96, "train.save-every-round": 1, "strategy.fraction-train": 1.0,
        "model.lora.peft-lora-r": 4, **extra,
    }
    return [f"{k}={json.dumps(v)}" for k, v in cfg.items()]


def run_quick_benchmark(script: str, root: Path, home: Path) -> subprocess.CompletedProcess:
    """``benchmarks/<script> --quick --out root`` with a private home; the Flower processes it started under
    ``root`` are stopped after."""
    from tests.conftest import REPO

    try:
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", "--out", str(root)],
                              env=isolated_env(home), capture_output=True, text=True, timeout=1200, check=False,
                              cwd=REPO)
    finally:
        kill_processes_mentioning(str(root))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_flowertune(home: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    """``flowertune ARGS`` with a private FLOWERTUNE_HOME; the Flower processes it started are stopped after."""
    try:
        return subprocess.run([str(BIN / "flowertune"), *args], env=isolated_env(home), capture_output=True,
                              text=True, timeout=timeout, check=False)
    finally:
        kill_processes_mentioning(str(home))


def assert_quickstart_loss_falls(proc: subprocess.CompletedProcess, out: Path, rounds: int = 3) -> list[dict]:
    """The run succeeded with rounds 0..``rounds`` and its held-out loss at the last round is below round 0's;
    returns the rows."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(rounds + 1))
    assert rows[rounds]["eval_loss"] < rows[0]["eval_loss"], [r["eval_loss"] for r in rows]
    return rows


class Processes:
    """Named background processes of one test, each logging to ``<dir>/<name>.log``; ``close`` stops them all
    (and whatever they started under ``dir``'s private home)."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.dir, self.env = directory, env
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "a")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text()

    def close(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self._logs:
            log.close()
        kill_processes_mentioning(str(self.dir))

"""A resident per-node worker that keeps the base model loaded across rounds in deployment mode.

Flower 1.42's SuperNode runs every message in a fresh ``flwr-clientapp`` process, which would reload
(and re-quantize) the base model every round. The ClientApp instead forwards each task to a worker
process that it starts on first use and that stays alive between rounds (it exits after
``idle_timeout`` seconds without work). The worker listens on a Unix socket private to this node,
authenticated with a key only the local user can read; only adapter arrays and metrics cross it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import secrets
import subprocess
import sys
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _home() -> Path:
    return Path(os.environ.get("FLOWERTUNE_HOME", Path.home() / ".flowertune")).absolute()


def _authkey() -> bytes:
    path = _home() / "worker.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def address(node_key: str) -> str:
    """Socket path of the worker for ``node_key`` (short enough for AF_UNIX's 107-byte limit)."""
    digest = hashlib.sha256(f"{_home()}:{node_key}".encode()).hexdigest()[:16]
    return str(Path("/tmp") / f"flowertune-worker-{os.getuid()}-{digest}.sock")


def _spawn(addr: str, idle_timeout: float) -> None:
    logs = _home() / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / (Path(addr).stem + ".log"), "ab")  # noqa: SIM115 - handed to the detached child
    subprocess.Popen([sys.executable, "-m", "flowertune.federation.worker", "--address", addr,
                      "--idle-timeout", str(idle_timeout), "--home", str(_home())],
                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def call(node_key: str, task: str, *args: Any, idle_timeout: float = 900.0, start_timeout: float = 120.0) -> Any:
    """Run ``TASKS[task](*args)`` in the node's resident worker, starting it if needed."""
    addr = address(node_key)
    key = _authkey()
    deadline = time.monotonic() + start_timeout
    spawned = False
    while True:
        try:
            conn = Client(addr, family="AF_UNIX", authkey=key)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if not spawned:
                if os.path.exists(addr):
                    os.unlink(addr)  # stale socket of a worker that is gone
                _spawn(addr, idle_timeout)
                spawned = True
            if time.monotonic() > deadline:
                raise TimeoutError(f"the flowertune worker at {addr} did not start within {start_timeout:.0f} s; "
                                   f"see {_home() / 'workers'}") from None
            time.sleep(0.2)
    with conn:
        conn.send((task, args))
        ok, value = conn.recv()
    if not ok:
        raise RuntimeError(f"flowertune worker task {task!r} failed:\n{value}")
    return value


def serve(addr: str, idle_timeout: float) -> None:
    """Accept tasks until idle for ``idle_timeout`` seconds."""
    import traceback

    from flowertune.federation.client_tasks import TASKS
    from flowertune.logs import setup_logging

    setup_logging()
    listener = Listener(addr, family="AF_UNIX", authkey=_authkey())
    os.chmod(addr, 0o600)
    listener._listener._socket.settimeout(idle_timeout)  # accept() gives up after idle_timeout
    log.info("worker %s ready (pid %d)", addr, os.getpid())
    try:
        while True:
            try:
                conn = listener.accept()
            except TimeoutError:
                log.info("worker idle for %.0f s, exiting", idle_timeout)
                return
            with conn:
                task, args = conn.recv()
                try:
                    conn.send((True, TASKS[task](*args)))
                except Exception:  # noqa: BLE001 - reported to the ClientApp; the worker keeps serving
                    conn.send((False, traceback.format_exc()))
    finally:
        listener.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--address", required=True)
    p.add_argument("--idle-timeout", type=float, default=900.0)
    p.add_argument("--home", required=True)
    a = p.parse_args()
    os.environ["FLOWERTUNE_HOME"] = a.home
    serve(a.address, a.idle_timeout)


if __name__ == "__main__":
    main()

"""A resident per-node worker that keeps the base model loaded across rounds in deployment mode.

Flower 1.42's SuperNode runs every message in a fresh ``flwr-clientapp`` process, which would reload
(and re-quantize) the base model every round. The ClientApp instead forwards each task to a worker
process that it starts on first use and that stays alive between rounds (it exits after
``idle_timeout`` seconds without work, and within seconds when the process that owns it — the
SuperNode — is gone, so a dead node does not keep a model in memory). The worker listens on a Unix socket private to this node,
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

from flowertune.config import ConfigError
from flowertune.home import flowertune_home

log = logging.getLogger(__name__)


def _authkey() -> bytes:
    """The key the ClientApp and its worker share: readable by this user only, in a home others cannot write."""
    import stat

    home = flowertune_home()
    home.mkdir(parents=True, exist_ok=True)
    if home.stat().st_mode & stat.S_IWOTH and not home.stat().st_mode & stat.S_ISVTX:
        raise PermissionError(f"{home} is world-writable, so another user could replace the worker key; "
                              f"chmod o-w {home} or set FLOWERTUNE_HOME to a private directory")
    path = home / "worker.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO) or path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} is readable by other users (mode {oct(mode & 0o777)}) or not yours; "
                              f"chmod 600 {path} (or delete it: a new key is made)")
    return path.read_text().strip().encode()


def address(node_key: str) -> str:
    """Socket path of the worker for ``node_key`` (short enough for AF_UNIX's 107-byte limit)."""
    digest = hashlib.sha256(f"{flowertune_home()}:{node_key}".encode()).hexdigest()[:16]
    return str(Path("/tmp") / f"flowertune-worker-{os.getuid()}-{digest}.sock")


def _started(pid: int) -> str | None:
    """Start time of process ``pid`` (field 22 of /proc/PID/stat), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (macOS): existence only
            return ""
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _spawn(addr: str, idle_timeout: float, owner_pid: int) -> None:
    logs = flowertune_home() / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / (Path(addr).stem + ".log"), "ab")  # noqa: SIM115 - handed to the detached child
    subprocess.Popen([sys.executable, "-m", "flowertune.federation.worker", "--address", addr,
                      "--idle-timeout", str(idle_timeout), "--home", str(flowertune_home()), "--owner-pid", str(owner_pid),
                      "--owner-started", _started(owner_pid) or ""],
                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def call(node_key: str, task: str, *args: Any, idle_timeout: float = 900.0, start_timeout: float = 120.0,
         owner_pid: int | None = None) -> Any:
    """Run ``TASKS[task](*args)`` in the node's resident worker, starting it if needed.

    ``owner_pid`` (default: this process's parent, the SuperNode that started this ``flwr-clientapp``):
    the worker exits soon after that process is gone. A worker that died is restarted on the next call.
    """
    owner_pid = os.getppid() if owner_pid is None else owner_pid
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
                _spawn(addr, idle_timeout, owner_pid)
                spawned = True
            if time.monotonic() > deadline:
                raise TimeoutError(f"the flowertune worker at {addr} did not start within {start_timeout:.0f} s; "
                                   f"see {flowertune_home() / 'workers'}") from None
            time.sleep(0.2)
    with conn:
        conn.send((task, args))
        ok, value = conn.recv()
    if not ok:
        kind, public, trace = value
        log.error("flowertune worker task %r failed:\n%s", task, trace)  # the traceback stays on this node
        raise WorkerTaskError(kind, public)
    return value


class WorkerTaskError(RuntimeError):
    """A task failed in the resident worker: the exception's type, and its message when flowertune wrote it
    (a ``ConfigError``: safe to tell the server); the traceback is logged on the node only."""

    def __init__(self, kind: str, public: str) -> None:
        super().__init__(f"{kind}: {public}" if public else kind)
        self.kind, self.public = kind, public


def serve(addr: str, idle_timeout: float, owner_pid: int = 0, owner_started: str = "", poll_s: float = 2.0) -> None:
    """Accept tasks until idle for ``idle_timeout`` seconds or until process ``owner_pid`` is gone."""
    import traceback

    from flowertune.federation.client_tasks import TASKS
    from flowertune.logs import setup_logging

    setup_logging()
    listener = Listener(addr, family="AF_UNIX", authkey=_authkey())
    os.chmod(addr, 0o600)
    listener._listener._socket.settimeout(min(poll_s, idle_timeout))  # accept() wakes up to look around
    log.info("worker %s ready (pid %d, owner %d)", addr, os.getpid(), owner_pid)
    last_work = time.monotonic()
    try:
        while True:
            try:
                conn = listener.accept()
            except TimeoutError:
                now = _started(owner_pid) if owner_pid else ""
                if now is None or (owner_started and now and now != owner_started):
                    log.info("owner process %d is gone, exiting", owner_pid)
                    return
                if time.monotonic() - last_work > idle_timeout:
                    log.info("worker idle for %.0f s, exiting", idle_timeout)
                    return
                continue
            last_work = time.monotonic()
            with conn:
                task, args = conn.recv()
                try:
                    conn.send((True, TASKS[task](*args)))
                except Exception as exc:  # noqa: BLE001 - reported to the ClientApp; the worker keeps serving
                    public = str(exc).splitlines()[0][:300] if isinstance(exc, ConfigError) and str(exc) else ""
                    conn.send((False, (type(exc).__name__, public, traceback.format_exc())))
            last_work = time.monotonic()
    finally:
        listener.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--address", required=True)
    p.add_argument("--idle-timeout", type=float, default=900.0)
    p.add_argument("--home", required=True)
    p.add_argument("--owner-pid", type=int, default=0, help="exit when this process is gone (0: never)")
    p.add_argument("--owner-started", default="", help="the owner's start time, to tell a reused pid apart")
    a = p.parse_args()
    os.environ["FLOWERTUNE_HOME"] = a.home
    serve(a.address, a.idle_timeout, a.owner_pid, a.owner_started)


if __name__ == "__main__":
    main()

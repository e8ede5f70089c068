"""A resident per-node worker that keeps the base model loaded across rounds in deployment mode.

Flower 1.42's SuperNode runs every message in a fresh ``flwr-clientapp`` process, which would reload
(and re-quantize) the base model every round. The ClientApp instead forwards each task to a worker
process that it starts on first use and that stays alive between rounds (it exits after
``idle_timeout`` seconds without work, and within seconds when the process that owns it — the
SuperNode — is gone, so a dead node does not keep a model in memory).

The channel: a Unix socket in a 0700 directory of the user's (``$XDG_RUNTIME_DIR/flowertune``, else
``$FLOWERTUNE_HOME/run``, else -- when that path is too long for AF_UNIX -- ``/tmp/flowertune-<uid>``, which is
refused if someone else made it). Before connecting, the client checks that the directory and the socket are its
own and, once connected, that the peer process runs as its uid (``SO_PEERCRED``); then both sides prove they
hold the node's key (HMAC-SHA256 over the other's fresh nonce, ``worker.key``, 0600) within a timeout.
Frames are a JSON header plus safetensors blobs — no pickle: a Config travels as its flat keys, adapter
arrays as safetensors, metrics as JSON. A busy worker sends a heartbeat frame every few seconds, so every
receive has a timeout even while a long training round runs.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flowertune.config import ConfigError
from flowertune.durable import private_dir
from flowertune.home import flowertune_home

log = logging.getLogger(__name__)


def _authkey() -> bytes:
    """The key the ClientApp and its worker share: readable by this user only, in a home others cannot write."""
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


class WorkerChannelError(ConnectionError):
    """The worker channel failed its checks: someone else's socket, a peer without the key, a timeout."""


HANDSHAKE_TIMEOUT_S = 10.0  # the whole handshake, on both sides
HEARTBEAT_S = 5.0  # a busy worker says so this often; a client waits RECEIVE_TIMEOUT_S for any frame
RECEIVE_TIMEOUT_S = 60.0
MAX_HEADER = 1 << 20  # JSON header bytes
MAX_BLOB = 1 << 34  # safetensors bytes (an 8B model's adapter at r=64 is ~0.7 GB in fp32)


SOCKET_NAME_BYTES = len("worker-0123456789abcdef.sock")
_UNIX_PATH_MAX = 107  # bytes of an AF_UNIX socket path


def socket_dir() -> Path:
    """The directory of this user's worker sockets, created 0700 and checked to be ours and private: the first of
    ``$XDG_RUNTIME_DIR/flowertune`` (when that is a private directory of ours), ``$FLOWERTUNE_HOME/run`` and
    ``/tmp/flowertune-<uid>`` in which a socket path fits AF_UNIX's 107 bytes."""
    candidates = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        try:
            st = os.lstat(runtime)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                candidates.append(Path(runtime) / "flowertune")
        except OSError:
            pass
    candidates += [flowertune_home() / "run", Path("/tmp") / f"flowertune-{os.getuid()}"]
    path = next(c for c in candidates if len(str(c).encode()) + 1 + SOCKET_NAME_BYTES <= _UNIX_PATH_MAX)
    try:
        private_dir(path)
    except OSError:
        pass  # not ours to create or tighten: the check below says so in one line
    _check_private(path)
    return path


def _check_private(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WorkerChannelError(f"{path} must be a directory of yours that only you can enter (mode 0700, uid "
                                 f"{os.getuid()}), it is uid {st.st_uid} mode {oct(st.st_mode & 0o777)}; remove it "
                                 "or set FLOWERTUNE_HOME to a private directory")


def address(node_key: str) -> str:
    """Socket path of the worker for ``node_key``, in :func:`socket_dir` (AF_UNIX allows 107 bytes)."""
    digest = hashlib.sha256(f"{flowertune_home()}:{node_key}".encode()).hexdigest()[:16]
    return str(socket_dir() / f"worker-{digest}.sock")


# ---------------------------------------------------------------------------------------------------------------
# frames: a 4-byte length and a JSON header, then the safetensors blobs the header announces (8-byte length
# each). No pickle: a Config travels as its flat keys, arrays as safetensors, the rest as JSON.


def _encode(value: Any, blobs: list[bytes]) -> Any:
    import numpy as np

    from flowertune.config import Config

    if isinstance(value, Config):
        return {"__config__": value.to_flat()}
    if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
        from safetensors.numpy import save

        blobs.append(save({k: np.require(v, requirements="C") for k, v in value.items()}))  # keeps 0-d shapes
        return {"__arrays__": len(blobs) - 1}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("worker frames carry string-keyed dicts only")
        return {k: _encode(v, blobs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, blobs) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"worker frames cannot carry {type(value).__name__}")


def _decode(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__config__"}:
            from flowertune.config import from_trusted_flat

            return from_trusted_flat(value["__config__"])  # built and checked by the authenticated peer
        if set(value) == {"__arrays__"}:
            from safetensors.numpy import load

            return load(blobs[int(value["__arrays__"])])
        return {k: _decode(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, blobs) for v in value]
    return value


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 22))
        if not chunk:
            raise WorkerChannelError("the peer closed the worker channel")
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, header: dict[str, Any], payload: Any = None) -> None:
    blobs: list[bytes] = []
    body = json.dumps({**header, "payload": _encode(payload, blobs), "blobs": len(blobs)}).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)
    for blob in blobs:
        sock.sendall(struct.pack(">Q", len(blob)))
        sock.sendall(blob)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], Any]:
    """One frame: (header, decoded payload). Anything that is not our JSON framing is refused."""
    (size,) = struct.unpack(">I", _recv_exact(sock, 4))
    if size > MAX_HEADER:
        raise WorkerChannelError(f"worker frame header of {size} bytes refused (not a flowertune frame?)")
    try:
        header = json.loads(_recv_exact(sock, size))
    except (UnicodeDecodeError, ValueError):
        raise WorkerChannelError("worker frame refused: its header is not JSON (pickle is not accepted)") from None
    if not isinstance(header, dict) or not isinstance(header.get("blobs"), int) or not 0 <= header["blobs"] <= 64:
        raise WorkerChannelError("worker frame refused: malformed header")
    blobs = []
    for _ in range(header["blobs"]):
        (n,) = struct.unpack(">Q", _recv_exact(sock, 8))
        if n > MAX_BLOB:
            raise WorkerChannelError(f"worker frame blob of {n} bytes refused")
        blobs.append(_recv_exact(sock, n))
    try:
        return header, _decode(header.get("payload"), blobs)
    except Exception as e:  # noqa: BLE001 - a malformed payload is the peer's fault, said in one line
        raise WorkerChannelError(f"worker frame refused: {type(e).__name__}: {str(e)[:200]}") from None


# ---------------------------------------------------------------------------------------------------------------
# the handshake: each side proves it holds the key (HMAC over the other's fresh nonce); the client also checks
# that the socket file and the peer process are its own user's


def _proof(key: bytes, role: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, role + nonce, hashlib.sha256).digest()


def _peer_uid(sock: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _client_handshake(sock: socket.socket, key: bytes, addr: str) -> None:
    peer = _peer_uid(sock)
    if peer is not None and peer != os.getuid():
        raise WorkerChannelError(f"the process listening on {addr} runs as uid {peer}, not you; refusing it")
    nonce = secrets.token_bytes(32)
    sock.sendall(b"FTW1" + nonce)
    reply = _recv_exact(sock, 4 + 32 + 32)
    if reply[:4] != b"FTW1":
        raise WorkerChannelError(f"{addr} does not speak the flowertune worker protocol")
    server_nonce, proof = reply[4:36], reply[36:]
    if not hmac.compare_digest(proof, _proof(key, b"worker", nonce)):
        raise WorkerChannelError(f"the worker at {addr} does not hold this node's worker key "
                                 f"({flowertune_home() / 'worker.key'}); stop it or remove the socket")
    sock.sendall(_proof(key, b"client", server_nonce))
    if _recv_exact(sock, 2) != b"OK":
        raise WorkerChannelError(f"the worker at {addr} refused the handshake")


def _server_handshake(sock: socket.socket, key: bytes) -> None:
    hello = _recv_exact(sock, 4 + 32)
    if hello[:4] != b"FTW1":
        raise WorkerChannelError("a peer that does not speak the worker protocol")
    server_nonce = secrets.token_bytes(32)
    sock.sendall(b"FTW1" + server_nonce + _proof(key, b"worker", hello[4:]))
    if not hmac.compare_digest(_recv_exact(sock, 32), _proof(key, b"client", server_nonce)):
        sock.sendall(b"NO")
        raise WorkerChannelError("a peer without the worker key")
    sock.sendall(b"OK")


def connect(addr: str, key: bytes, handshake_timeout: float = HANDSHAKE_TIMEOUT_S) -> socket.socket:
    """A checked, authenticated connection to the worker at ``addr``.

    Raises FileNotFoundError/ConnectionRefusedError when nobody listens (the caller starts a worker), and
    :class:`WorkerChannelError` for a socket or peer that is not ours, a wrong key or a handshake that stalls.
    """
    _check_private(Path(addr).parent)
    st = os.lstat(addr)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        raise WorkerChannelError(f"{addr} is not a socket of yours (uid {st.st_uid}): another user may be "
                                 "squatting it; remove it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(handshake_timeout)
        sock.connect(addr)
        try:
            _client_handshake(sock, key, addr)
        except TimeoutError:
            raise WorkerChannelError(f"the worker at {addr} did not complete the handshake within "
                                     f"{handshake_timeout:.0f} s; stop the process holding it or remove the socket") from None
        return sock
    except BaseException:
        sock.close()
        raise


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
         owner_pid: int | None = None, receive_timeout: float = RECEIVE_TIMEOUT_S) -> Any:
    """Run ``TASKS[task](*args)`` in the node's resident worker, starting it if needed.

    ``owner_pid`` (default: this process's parent, the SuperNode that started this ``flwr-clientapp``):
    the worker exits soon after that process is gone. A worker that died is restarted on the next call.
    A worker that sends nothing (not even its heartbeat) for ``receive_timeout`` seconds is given up on.
    """
    owner_pid = os.getppid() if owner_pid is None else owner_pid
    addr = address(node_key)
    key = _authkey()
    deadline = time.monotonic() + start_timeout
    spawned = False
    while True:
        try:
            sock = connect(addr, key)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if not spawned:
                if os.path.lexists(addr):
                    os.unlink(addr)  # stale socket of a worker that is gone (our private directory)
                _spawn(addr, idle_timeout, owner_pid)
                spawned = True
            if time.monotonic() > deadline:
                raise TimeoutError(f"the flowertune worker at {addr} did not start within {start_timeout:.0f} s; "
                                   f"see {flowertune_home() / 'workers'}") from None
            time.sleep(0.2)
    with sock:
        sock.settimeout(receive_timeout)
        send_frame(sock, {"task": task}, list(args))
        while True:
            try:
                header, payload = recv_frame(sock)
            except TimeoutError:
                raise WorkerChannelError(f"the worker at {addr} sent nothing for {receive_timeout:.0f} s while "
                                         f"running {task!r}; see {flowertune_home() / 'workers'}") from None
            if header.get("busy"):
                continue
            break
    if not header.get("ok"):
        kind, public, trace = payload
        log.error("flowertune worker task %r failed:\n%s", task, trace)  # the traceback stays on this node
        raise WorkerTaskError(kind, public)
    return payload


class WorkerTaskError(RuntimeError):
    """A task failed in the resident worker: the exception's type, and its message when flowertune wrote it
    (a ``ConfigError``: safe to tell the server); the traceback is logged on the node only."""

    def __init__(self, kind: str, public: str) -> None:
        super().__init__(f"{kind}: {public}" if public else kind)
        self.kind, self.public = kind, public


def _run_task(sock: socket.socket, tasks: dict[str, Any], request: dict[str, Any], args: Any) -> None:
    """Run one task in a thread, sending a heartbeat frame every HEARTBEAT_S until the result goes out.

    Returns only when the task has finished, also when the client went away meanwhile: the worker never runs
    two tasks on its one model at once.
    """
    import threading
    import traceback

    task = request.get("task")
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            if task not in tasks or not isinstance(args, list):
                raise ValueError(f"unknown worker task {task!r}")
            outcome["ok"] = (True, tasks[task](*args))
        except BaseException as exc:  # noqa: BLE001 - reported to the ClientApp; the worker keeps serving
            public = str(exc).splitlines()[0][:300] if isinstance(exc, ConfigError) and str(exc) else ""
            outcome["ok"] = (False, [type(exc).__name__, public, traceback.format_exc()])

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(HEARTBEAT_S)
            if thread.is_alive():
                send_frame(sock, {"busy": True})
    except OSError:
        thread.join()  # the client is gone: finish the task before serving anyone else
        raise
    ok, value = outcome["ok"]
    try:
        send_frame(sock, {"ok": ok}, value)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a result the frames cannot carry: our bug, said plainly
        send_frame(sock, {"ok": False}, [type(exc).__name__, "", traceback.format_exc()])


def serve(addr: str, idle_timeout: float, owner_pid: int = 0, owner_started: str = "", poll_s: float = 2.0,
          tasks: dict[str, Any] | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Accept tasks until idle for ``idle_timeout`` seconds or until process ``owner_pid`` is gone.

    A peer that does not complete the handshake within ``handshake_timeout``, lacks the key, is another user
    or sends anything but our frames is dropped with a log line; the worker keeps serving.
    """
    from flowertune.logs import setup_logging

    if tasks is None:
        from flowertune.federation.client_tasks import TASKS as tasks
    setup_logging()
    key = _authkey()
    _check_private(Path(addr).parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(addr)
    os.chmod(addr, 0o600)
    listener.listen(8)
    listener.settimeout(min(poll_s, idle_timeout))  # accept() wakes up to look around
    log.info("worker %s ready (pid %d, owner %d)", addr, os.getpid(), owner_pid)
    last_work = time.monotonic()
    try:
        while True:
            try:
                conn, _ = listener.accept()
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
                try:
                    peer = _peer_uid(conn)
                    if peer is not None and peer != os.getuid():
                        raise WorkerChannelError(f"a peer running as uid {peer}")
                    conn.settimeout(handshake_timeout)
                    _server_handshake(conn, key)
                    request, args = recv_frame(conn)
                    conn.settimeout(None)
                    _run_task(conn, tasks, request, args)
                except Exception as e:  # noqa: BLE001 - one peer's trouble never takes the worker down
                    log.warning("worker: dropped a connection: %s: %s", type(e).__name__, e)
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

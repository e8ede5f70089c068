"""The resident worker: restarted transparently when it died, gone when its owner is, and a private key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from flowertune.config import Config, from_flat
from flowertune.federation import worker


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWERTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def worker_pid(addr: str) -> int:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    pids = [int(line.split()[0]) for line in out.splitlines() if "flowertune.federation.worker" in line and addr in line]
    assert len(pids) == 1, pids
    return pids[0]


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of ours counts as gone
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.2)
    return False


def cfg_for(data) -> Config:
    return from_flat({**Config().to_flat(), "static.dataset.name": str(data), "data.format": "medical"})


def test_a_killed_worker_is_restarted_on_the_next_call_and_exits_with_its_owner(home, tiny_data_file):
    cfg = cfg_for(tiny_data_file)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        info = worker.call("node-test", "node_info", cfg, 1, 2, owner_pid=owner.pid)
        assert info["partition-id"] == 1 and info["rows"] == 40
        addr = worker.address("node-test")
        first = worker_pid(addr)
        os.kill(first, signal.SIGKILL)
        assert gone(first, 10)
        # the socket file of the dead worker is still there: the next call starts a new worker transparently
        assert os.path.exists(addr)
        assert worker.call("node-test", "node_info", cfg, 0, 2, owner_pid=owner.pid)["partition-id"] == 0
        second = worker_pid(addr)
        assert second != first
        owner.kill()
        owner.wait()
        assert gone(second, 15), "the worker outlived the process that owns it"
    finally:
        owner.kill()


def test_a_worker_task_error_comes_back_and_the_worker_keeps_serving(home, tiny_data_file, tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        bad = cfg_for(tmp_path / "missing.jsonl")
        with pytest.raises(RuntimeError, match="missing.jsonl' does not exist"):
            worker.call("node-err", "node_info", bad, 0, 1, owner_pid=owner.pid)
        assert worker.call("node-err", "node_info", cfg_for(tiny_data_file), 0, 1, owner_pid=owner.pid)["rows"] == 80
    finally:
        owner.kill()
        owner.wait()


def test_the_worker_key_must_be_private(home):
    key = worker._authkey()
    path = home / "worker.key"
    assert len(key) == 64 and (path.stat().st_mode & 0o777) == 0o600
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="readable by other users.*chmod 600"):
        worker._authkey()
    path.chmod(0o600)
    home.chmod(0o777)
    try:
        with pytest.raises(PermissionError, match="world-writable"):
            worker._authkey()
    finally:
        home.chmod(0o700)


# ---------------------------------------------------------------------------------------------------------------
# the channel, attacked: a squatted socket, a peer that stalls, a wrong key, a pickle


def _serve_in_thread(addr: str, tasks: dict, **kw):
    import threading

    thread = threading.Thread(target=worker.serve, args=(addr, 30.0), kwargs={"tasks": tasks, "poll_s": 0.2, **kw},
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not os.path.exists(addr) and time.monotonic() < deadline:
        time.sleep(0.02)
    return thread


def test_frames_carry_configs_arrays_and_json_and_the_socket_is_private(home):
    import numpy as np

    addr = worker.address("node-frames")
    assert (os.stat(os.path.dirname(addr)).st_mode & 0o777) == 0o700
    arrays = {"a.lora_A.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float16)}
    tasks = {"echo": lambda cfg, arrs, n: (arrs, {"rank": cfg.adapter.r, "n": n, "x": np.float32(1.5)})}
    _serve_in_thread(addr, tasks)
    assert (os.stat(addr).st_mode & 0o777) == 0o600
    back, metrics = worker.call("node-frames", "echo", Config(), arrays, 3, owner_pid=os.getpid())
    assert set(back) == set(arrays) and all(np.array_equal(back[k], arrays[k]) and back[k].dtype == arrays[k].dtype
                                            for k in arrays)
    assert metrics == {"rank": Config().adapter.r, "n": 3, "x": 1.5}
    with pytest.raises(worker.WorkerTaskError, match="ValueError"):
        worker.call("node-frames", "no-such-task", owner_pid=os.getpid())


def test_a_socket_of_another_user_is_refused_before_connecting(home):
    import socket

    if os.geteuid() != 0:
        pytest.skip("making a socket owned by another uid needs root")
    addr = worker.address("node-squat")
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(addr)
    squatter.listen(1)
    os.chown(addr, 65533, 65533)
    start = time.monotonic()
    with pytest.raises(worker.WorkerChannelError, match="not a socket of yours.*squatting"):
        worker.call("node-squat", "node_info", owner_pid=os.getpid())
    assert time.monotonic() - start < 5
    squatter.close()
    # a directory that others can enter is refused as well
    os.chmod(os.path.dirname(addr), 0o755)
    try:
        with pytest.raises(worker.WorkerChannelError, match="only you can enter"):
            worker.connect(addr, b"k")
    finally:
        os.chmod(os.path.dirname(addr), 0o700)


def test_a_peer_that_never_completes_the_handshake_fails_fast(home):
    import socket

    addr = worker.address("node-stall")
    stall = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stall.bind(addr)
    stall.listen(1)  # accepts in the kernel's backlog and then never answers
    start = time.monotonic()
    with pytest.raises(worker.WorkerChannelError, match="did not complete the handshake within 1 s"):
        worker.connect(addr, worker._authkey(), handshake_timeout=1.0)
    assert time.monotonic() - start < 3
    stall.close()
    # the worker's side: a client that connects and says nothing is dropped, and the worker keeps serving
    os.unlink(addr)
    _serve_in_thread(addr, {"ping": lambda: "pong"}, handshake_timeout=0.5)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(addr)
    time.sleep(0.1)
    assert worker.call("node-stall", "ping", owner_pid=os.getpid()) == "pong"
    assert silent.recv(1) == b""  # dropped after the handshake timeout
    silent.close()


def test_a_wrong_key_fails_fast_on_both_sides(home, tmp_path, monkeypatch):
    addr = worker.address("node-key")
    _serve_in_thread(addr, {"ping": lambda: "pong"})
    good = worker._authkey()
    start = time.monotonic()
    with pytest.raises(worker.WorkerChannelError, match="does not hold this node's worker key"):
        worker.connect(addr, b"0" * 64)
    assert time.monotonic() - start < 3
    with worker.connect(addr, good) as sock:  # and the worker still serves the right key
        worker.send_frame(sock, {"task": "ping"}, [])
        assert worker.recv_frame(sock) == ({"ok": True, "payload": "pong", "blobs": 0}, "pong")


def test_a_pickled_payload_is_refused(home, tmp_path):
    import pickle
    import socket
    import struct

    addr = worker.address("node-pickle")
    _serve_in_thread(addr, {"ping": lambda: "pong"})
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(("node_info", (Exploit(),)))
    # after a valid handshake, a pickle where the JSON header should be
    with worker.connect(addr, worker._authkey()) as sock:
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        assert sock.recv(1) == b""  # dropped
    # and instead of the handshake (what multiprocessing.connection would have sent)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(addr)
    raw.sendall(payload)
    raw.settimeout(5)
    try:
        answer = raw.recv(64)
    except ConnectionResetError:
        answer = b""
    assert answer == b""  # dropped, nothing unpickled
    raw.close()
    time.sleep(0.3)
    assert not marker.exists()
    with pytest.raises(worker.WorkerChannelError, match="not JSON.*pickle"):  # the client refuses one too
        a, b = socket.socketpair()
        a.sendall(struct.pack(">I", len(payload)) + payload)
        worker.recv_frame(b)


def test_the_worker_refuses_a_client_without_the_key(home):
    import socket

    addr = worker.address("node-proof")
    _serve_in_thread(addr, {"ping": lambda: "pong"})
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(5)
    raw.connect(addr)
    raw.sendall(b"FTW1" + os.urandom(32))
    reply = worker._recv_exact(raw, 4 + 32 + 32)
    assert reply[:4] == b"FTW1"
    raw.sendall(b"\0" * 32)  # not HMAC(key, "client" + its nonce)
    assert raw.recv(2) == b"NO"
    raw.close()


def test_a_peer_of_another_uid_is_refused_by_the_client(home, monkeypatch):
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    monkeypatch.setattr(worker.os, "getuid", lambda: 4242)  # we pretend to be uid 4242; the peer is not
    with pytest.raises(worker.WorkerChannelError, match=f"runs as uid {os.geteuid()}, not you"):
        worker._client_handshake(a, b"k", "addr")
    a.close()
    b.close()


def test_heartbeats_keep_a_long_task_alive_past_the_receive_timeout(home, monkeypatch):
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.1)
    addr = worker.address("node-beat")
    _serve_in_thread(addr, {"slow": lambda: time.sleep(1.0) or "done"})
    assert worker.call("node-beat", "slow", owner_pid=os.getpid(), receive_timeout=0.4) == "done"
    monkeypatch.setattr(worker, "HEARTBEAT_S", 5.0)  # a worker that goes quiet is given up on
    with pytest.raises(worker.WorkerChannelError, match="sent nothing for 0 s"):
        worker.call("node-beat", "slow", owner_pid=os.getpid(), receive_timeout=0.4)


def test_a_dropped_client_does_not_get_a_second_task_running_beside_the_first(home, monkeypatch):
    import threading

    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.05)
    running, most = [0], [0]
    lock = threading.Lock()

    def task():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.6)
        with lock:
            running[0] -= 1
        return "ok"

    addr = worker.address("node-drop")
    _serve_in_thread(addr, {"task": task})
    sock = worker.connect(addr, worker._authkey())
    worker.send_frame(sock, {"task": "task"}, [])
    sock.close()  # the ClientApp dies mid-task
    assert worker.call("node-drop", "task", owner_pid=os.getpid()) == "ok"
    assert most[0] == 1


def test_a_node_config_at_another_rank_and_zero_d_arrays_cross_the_channel(home):
    import numpy as np

    from flowertune.config import at_rank

    cfg = at_rank(from_flat({**Config().to_flat(), "model.lora.peft-lora-r": 8, "model.lora.peft-lora-alpha": 10}), 3)
    assert cfg.adapter.alpha == 3.75
    addr = worker.address("node-rank")
    _serve_in_thread(addr, {"echo": lambda c, arrs: (c.adapter.alpha, c.adapter.r, arrs)})
    alpha, r, arrs = worker.call("node-rank", "echo", cfg, {"s": np.array(2.0, dtype=np.float32)},
                                 owner_pid=os.getpid())
    assert (alpha, r) == (3.75, 3) and arrs["s"].shape == () and float(arrs["s"]) == 2.0


def test_a_home_too_long_for_af_unix_falls_back_to_a_private_tmp_dir(tmp_path, monkeypatch):
    long_home = tmp_path / ("h" * 60) / ("o" * 40)
    monkeypatch.setenv("FLOWERTUNE_HOME", str(long_home))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    addr = worker.address("node-long")
    assert os.path.dirname(addr) == f"/tmp/flowertune-{os.getuid()}" and len(addr.encode()) <= 107
    assert (os.stat(os.path.dirname(addr)).st_mode & 0o777) == 0o700
    _serve_in_thread(addr, {"ping": lambda: "pong"})
    assert worker.call("node-long", "ping", owner_pid=os.getpid()) == "pong"
    os.unlink(addr)
    if os.geteuid() == 0:  # someone else's directory there is refused, not used
        d = f"/tmp/flowertune-{os.getuid()}"
        os.chown(d, 65533, 65533)
        try:
            with pytest.raises(worker.WorkerChannelError, match="only you can enter"):
                worker.address("node-long")
        finally:
            os.chown(d, 0, 0)

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

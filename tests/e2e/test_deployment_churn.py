"""Nodes come and go, on loopback deployment: ``benchmarks/soak.py --quick`` (a real flower-superlink and three
flower-supernode processes, resident workers; it is also that script's smoke run).

SuperNode 2 is SIGKILLed while round 2 runs: the round completes with the other replies and counts the
failure; the dead node's resident worker exits (its owner is gone) instead of idling with the model loaded
(soak.py fails otherwise); round 3 waits (with a deadline) for three nodes; the restarted SuperNode checks in
under a new node id, gets a full adapter (delta codec: the server holds no copy for it) and trains again.
(That a node's copy is known again after its accepted reply is checked in tests/wire/test_wire_broadcast.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.e2e.helpers import isolated_env, kill_processes_mentioning, read_jsonl

pytestmark = pytest.mark.slow  # a minute or more of Flower runs


def test_a_node_killed_mid_round_is_counted_its_worker_exits_and_it_rejoins(tmp_path):
    out, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    # soak.py's Flower processes live in its own session (killed as a group if it times out); its temporary
    # root, and so its workers' home, under tmp_path
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--quick", "--out", str(out)],
                            env={**isolated_env(tmp_path / "home"), "TMPDIR": str(tmp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        kill_processes_mentioning(str(tmp))
    assert proc.returncode == 0, stdout[-3000:] + stderr[-4000:]
    assert "churn: 1 SuperNodes killed and restarted (rounds 2); each killed node's worker exited" in stdout
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    r1, r2, r3 = rows[1:]
    assert r1["clients"] == 3 and r1["failures"] == 0
    assert r2["clients"] == 3 and r2["failures"] == 1 and r2["errors"], r2  # the kill, counted and said
    assert r3["clients"] == 3 and r3["failures"] == 0, r3  # the restarted node trained again
    # round 1 sent three full adapters and round 2 three int8 deltas (all three held round 1's copy; fixed
    # sizes); round 3 two deltas and a full adapter for the new node id, of which the server holds no copy
    full, delta = r1["bytes_down"] // 3, r2["bytes_down"] // 3
    assert full != delta and r3["bytes_down"] == 2 * delta + full, (r1["bytes_down"], r2["bytes_down"], r3["bytes_down"])
    assert (out / "final_adapter/adapter_model.safetensors").is_file()

"""Nodes come and go, on loopback deployment: a real flower-superlink and three flower-supernode processes.

SuperNode 2 is SIGKILLed while round 2 runs: the round completes with the other replies and counts the
failure, the dead node's resident worker exits (its owner is gone) instead of idling with the model
loaded, round 3 waits (with a deadline) for three nodes, the restarted SuperNode checks in under a new
node id, gets a full adapter (delta codec: the server holds no copy for it) and trains again. (That a node's
copy is known again after its accepted reply is checked in tests/wire/test_wire_broadcast.py.)
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.helpers import BIN, Processes, free_port, isolated_env, read_jsonl, tiny_overrides

pytestmark = pytest.mark.slow  # a minute or more of Flower runs


def worker_pids(home) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if "flowertune.federation.worker" in line and str(home) in line]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_a_node_killed_mid_round_is_counted_its_worker_exits_and_it_rejoins(tmp_path, tiny_model_dir, tiny_data_file):
    port = free_port()
    group = Processes(tmp_path, isolated_env(tmp_path))
    start, procs = group.start, group.procs

    def supernode(pid):
        start(f"supernode{pid}", [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                  "--node-config", f"partition-id={pid} num-partitions=3", "--port", str(free_port())])

    out = tmp_path / "run"
    try:
        start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                            "--port", str(port)])
        time.sleep(3)
        for pid in (0, 1, 2):
            supernode(pid)
        overrides = tiny_overrides(tiny_model_dir, tiny_data_file, **{
            "num-server-rounds": 3, "train.training-arguments.max-steps": 10, "wire.codec": "delta-int8",
            "strategy.fraction-train": 1.0, "strategy.min-train-nodes": 2, "strategy.min-available-nodes": 3,
            "strategy.node-wait-timeout": 300.0, "strategy.fraction-evaluate": 0.34})
        start("flowertune", [str(BIN / "flowertune"), "run", "--superlink", f"127.0.0.1:{port}", "--out", str(out),
                             *overrides])
        def rows_at_least(n):
            if procs["flowertune"].poll() is not None:
                raise AssertionError("flowertune run ended early:\n" + (tmp_path / "flowertune.log").read_text()[-3000:])
            return (out / "metrics.jsonl").exists() and len(read_jsonl(out / "metrics.jsonl")) >= n

        wait_for(lambda: rows_at_least(2), 600, "round 1 did not finish")
        assert len(worker_pids(tmp_path)) == 3
        time.sleep(1.0)  # round 2's tasks are out; SuperNode 2 is training
        procs["supernode2"].kill()
        procs["supernode2"].wait()
        wait_for(lambda: len(worker_pids(tmp_path)) == 2, 60, "the dead node's worker kept running")
        wait_for(lambda: rows_at_least(3), 600, "round 2 did not complete")
        supernode(2)  # same partition, a new node id
        procs["flowertune"].wait(timeout=600)
    finally:
        group.close()
    text = group.log("flowertune")
    assert procs["flowertune"].returncode == 0, text[-4000:]
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

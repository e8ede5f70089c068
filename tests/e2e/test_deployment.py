"""Deployment on loopback: a real flower-superlink and two flower-supernode processes."""

import json
import subprocess
import time

import pytest

from tests.e2e.helpers import BIN, Processes, free_port, isolated_env, read_jsonl, tiny_overrides


@pytest.fixture
def federation(tmp_path):
    env = isolated_env(tmp_path)
    port = free_port()
    group = Processes(tmp_path, env)
    group.start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                              "--port", str(port)])
    time.sleep(3)
    for pid in (0, 1):
        group.start(f"supernode{pid}", [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                        "--node-config", f"partition-id={pid} num-partitions=2",
                                        "--port", str(free_port())])
    yield env, port, tmp_path
    group.close()


def test_two_rounds_on_loopback_deployment(federation, tiny_model_dir, tiny_data_file):
    env, port, tmp = federation
    out = tmp / "run"
    cmd = [str(BIN / "flowertune"), "run", "--superlink", f"127.0.0.1:{port}", "--out", str(out),
           *tiny_overrides(tiny_model_dir, tiny_data_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    logs = "\n".join((tmp / f"{n}.log").read_text()[-2000:] for n in ("superlink", "supernode0", "supernode1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 2 and r["replies"] == 2 and r["rejected"] == [] for r in rows[1:])
    # one model load per node for the whole run: the resident worker kept it across rounds
    assert all(r["client_model_loads"] == 1.0 for r in rows[1:])
    assert rows[-1]["eval_loss"] > 0 and (out / "final_adapter/adapter_model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text())["rounds"] == 2

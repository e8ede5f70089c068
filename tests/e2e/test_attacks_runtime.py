"""Hostile participants through Flower's real simulation runtime (tiny model, 8 SuperNodes, one Flower run):
malformed metrics, a second record, an oversize payload, garbage and a duplicate partition id at check-in, and
an honest node with GPU-style metrics. The run completes every round, each attack is refused or bounded with
its reason in metrics.jsonl, and the final adapter is finite. (The same attacks one by one, and the ones that
need no runtime — scaled, sign-flipped, NaN updates, num-examples 1e9 — are in tests/unit/test_trust.py.)"""

from __future__ import annotations

import importlib.util
import subprocess

import numpy as np

from tests.conftest import REPO
from tests.e2e.helpers import BIN, isolated_env, kill_processes_mentioning, read_jsonl, tiny_overrides

ATTACKS = {1: "gpu-metrics", 2: "metrics-list", 3: "metrics-extra-key", 4: "second-record", 5: "oversize",
           6: "check-in-garbage", 7: "duplicate-partition"}  # partition 0 is honest (it builds the initial adapter)


def hostile_app(root):
    """The generated Flower app of benchmarks/attacks.py (flowertune's ServerApp, the hostile ClientApp)."""
    spec = importlib.util.spec_from_file_location("flowertune_attacks_bench", REPO / "benchmarks" / "attacks.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.app_dir(root, ATTACKS)


def test_hostile_nodes_cannot_stop_or_capture_the_run(tmp_path, tiny_model_dir, tiny_data_file):
    home, out = tmp_path / "home", tmp_path / "run"
    env = {**isolated_env(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    user = [*tiny_overrides(tiny_model_dir, tiny_data_file), f"run.output-dir=\"{out}\"", "num-supernodes=8",
            "data.validation-fraction=0.0", "train.eval-every-round=0", "run.client-worker=\"off\"",
            "strategy.min-available-nodes=6"]
    text = subprocess.run([str(BIN / "flowertune"), "presets", "--run-config", "quickstart", *user], env=env,
                          capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    try:
        proc = subprocess.run([str(BIN / "flwr"), "run", str(hostile_app(tmp_path)), "--run-config", text,
                               "--stream", "--federation-config", "num-supernodes=8"], env=env, capture_output=True,
                              text=True, timeout=1200, check=False)
    finally:
        kill_processes_mentioning(str(home))
    assert proc.returncode == 0 and (out / "summary.json").exists(), proc.stdout[-4000:] + proc.stderr[-3000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    check_in = " | ".join(rows[0]["errors"])
    assert "partition-id 'x' is not a non-negative integer" in check_in and "duplicate partition-id" in check_in
    assert len(rows[0]["errors"]) == 2, rows[0]["errors"]
    for r in rows[1:]:
        assert r["clients"] == 6 and r["dropped"] is None, r
        reasons = " | ".join(r["rejected"])
        assert len(r["rejected"]) == 3, r["rejected"]
        assert "metric 'num-examples' is a list" in reasons and "'more'" in reasons and "metric records" in reasons
        assert "payload of" in reasons and "more than the" in reasons
        assert any("dropped unknown metrics ['surprise']" in n for n in r["notes"]), r["notes"]
        assert r["client_peak_cuda_mb"] == 2048.0  # the honest CUDA node's reply was aggregated with the others
    from safetensors.numpy import load_file

    final = load_file(str(out / "final_adapter" / "adapter_model.safetensors"))
    assert final and all(np.isfinite(v).all() for v in final.values())
    assert "Traceback" not in (out / "metrics.jsonl").read_text()

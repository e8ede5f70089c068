"""Hostile participants through Flower's real simulation runtime: ``benchmarks/attacks.py --quick`` (tiny
random model, 8 SuperNodes, one Flower run under the default defenses; it is also that script's smoke run).
Partitions 1-7 each misbehave one way: GPU-style metrics from an honest node, a list-valued num-examples, an
extra metric key, a second metric record, an oversize payload, garbage at check-in, a duplicate partition id.
The run completes every round, each attack is refused or bounded with its reason in metrics.jsonl, and the
final adapter is finite. (The same attacks one by one, and the ones that need no runtime — scaled,
sign-flipped, NaN updates, num-examples 1e9 — are in tests/unit/test_trust.py.)"""

from __future__ import annotations

import numpy as np

from tests.e2e.helpers import read_jsonl, run_quick_benchmark


def test_hostile_nodes_cannot_stop_or_capture_the_run(tmp_path):
    root = tmp_path / "attacks"
    proc = run_quick_benchmark("attacks.py", root, tmp_path / "home")
    out = root / "defaults--mixed"
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
    assert rows[-1]["eval_loss"] is not None and np.isfinite(rows[-1]["eval_loss"])
    from safetensors.numpy import load_file

    final = load_file(str(out / "final_adapter" / "adapter_model.safetensors"))
    assert final and all(np.isfinite(v).all() for v in final.values())
    assert "Traceback" not in (out / "metrics.jsonl").read_text()
    assert "defaults          mixed" in proc.stdout  # its table

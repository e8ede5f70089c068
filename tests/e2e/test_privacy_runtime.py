"""SecAgg+ through Flower's real simulation runtime: ``benchmarks/privacy.py --quick`` (tiny random model, 4
SuperNodes, one round; it is also that script's smoke run). Partition 3 trains and then drops out before it
sends its masked update; every node wrote the plaintext it masked. The run's final adapter equals plain FedAvg
of the three that stayed (equal weights), computed from those files, within one quantization step plus
float32 rounding, and is far from the average with the dropped node; the row names the dropout and its
stage, and counts the four stages' bytes (int64 masked vectors: more than twice the fp32 update)."""

from __future__ import annotations

import json

from tests.e2e.helpers import read_jsonl, run_quick_benchmark


def test_a_secagg_round_with_a_dropout_equals_fedavg_of_the_nodes_that_stayed(tmp_path):
    root = tmp_path / "privacy"
    proc = run_quick_benchmark("privacy.py", root, tmp_path / "home")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    got = json.loads((root / "quick.json").read_text())
    assert got["survivors"] == 3 and got["dropped"] == 1 and got["keys_match"]
    assert got["max_abs_diff_to_fedavg_of_survivors"] <= got["tolerance"] < 2 * got["step"]
    assert got["max_abs_diff_to_fedavg_with_dropped"] > 100 * got["step"]
    assert got["max_abs_update_entry"] > 10 * got["step"]  # the updates are not below the quantization step
    out = root / "secagg-dropout"
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1]
    r = rows[1]
    assert r["clients"] == 4 and r["replies"] == 3 and r["failures"] == 1 and r["rejected"] == [], r
    assert len(r["errors"]) == 1 and "(SecAgg+ collect_masked_vectors)" in r["errors"][0], r["errors"]
    from safetensors.numpy import load_file

    n_params = sum(v.size for v in load_file(str(out / "final_adapter" / "adapter_model.safetensors")).values())
    assert r["bytes_up"] > 3 * 8 * n_params and r["bytes_down"] > 4 * 4 * n_params
    log = (root / "secagg-dropout.log").read_text()
    assert "uplink: SecAgg+" in log and "SecAgg+ summed 3 of 4 updates" in log

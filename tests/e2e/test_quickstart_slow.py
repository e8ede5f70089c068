"""The README's quickstart with the real embedded model: 4 SuperNodes, 2 per round, 3 rounds."""

import json
import subprocess

import pytest

from tests.e2e.helpers import BIN, isolated_env, kill_processes_mentioning, read_jsonl


@pytest.mark.slow
def test_quickstart_lowers_the_held_out_loss(tmp_path):
    home, out = tmp_path / "home", tmp_path / "quickstart"
    try:
        proc = subprocess.run([str(BIN / "flowertune"), "run", "--out", str(out)], env=isolated_env(home),
                              capture_output=True, text=True, timeout=1200, check=False)
    finally:
        kill_processes_mentioning(str(home))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[3]["eval_loss"] < rows[0]["eval_loss"], [r["eval_loss"] for r in rows]
    assert all(r["clients"] == 2 for r in rows[1:])
    rss = [round(r["client_rss_mb"]) for r in rows[1:]]  # reported (no-leak check: test_resident_memory)
    assert all(r["client_peak_rss_mb"] >= r["client_rss_mb"] > 0 for r in rows[1:])
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nquickstart: eval loss {rows[0]['eval_loss']:.4f} -> {rows[3]['eval_loss']:.4f}, "
          f"{summary['comm_cost_mb']:.2f} MB, {summary['wall_s']:.0f} s, client RSS per round {rss} MB")

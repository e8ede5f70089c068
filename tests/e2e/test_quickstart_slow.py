"""The README's quickstart with the real embedded model: 4 SuperNodes, 2 per round, 3 rounds."""

import json

import pytest

from tests.e2e.helpers import assert_quickstart_loss_falls, run_flowertune


@pytest.mark.slow
def test_quickstart_lowers_the_held_out_loss(tmp_path):
    out = tmp_path / "quickstart"
    rows = assert_quickstart_loss_falls(run_flowertune(tmp_path / "home", "run", "--out", str(out), timeout=1200), out)
    assert all(r["clients"] == 2 for r in rows[1:])
    rss = [round(r["client_rss_mb"]) for r in rows[1:]]  # reported (no-leak check: test_resident_memory)
    assert all(r["client_peak_rss_mb"] >= r["client_rss_mb"] > 0 for r in rows[1:])
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nquickstart: eval loss {rows[0]['eval_loss']:.4f} -> {rows[3]['eval_loss']:.4f}, "
          f"{summary['comm_cost_mb']:.2f} MB, {summary['wall_s']:.0f} s, client RSS per round {rss} MB")

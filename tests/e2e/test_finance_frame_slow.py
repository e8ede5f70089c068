"""Train in the frame you are scored in: ``benchmarks/quality.py`` (a real ``flowertune run`` of the embedded
model on finance sentiment rows built from the non-evaluation FPB/FiQA rows, in the finance evaluation frame,
then ``flowertune eval --run`` on the finance suite, --limit 64) must beat the constant answer on FPB and stop
at the label. This also keeps ``quality.py`` from rotting (it has no separate --quick test)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.e2e.helpers import isolated_env, kill_processes_mentioning

ROUNDS, STEPS, BATCH, LIMIT = 2, 8, 8, 64


@pytest.mark.slow
def test_finance_frame_beats_the_constant_answer_and_stops_at_the_label(tmp_path, real_data_dir):
    import flowertune.eval.benchmarks  # noqa: F401  (registers them)
    from flowertune.eval.benchmark import BENCHMARKS
    from flowertune.eval.protocol import sentiment_correct
    from flowertune.federation.rundir import read_config

    home, out = tmp_path / "home", tmp_path / "quality"
    cmd = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--challenge", "finance",
           "--variants", "constant,fed-iid", "--nodes", "2", "--per-round", "2", "--rounds", str(ROUNDS),
           "--steps", str(STEPS), "--batch", str(BATCH), "--limit", str(LIMIT), "--data-dir", str(real_data_dir),
           "--out", str(out)]
    try:
        proc = subprocess.run(cmd, env=isolated_env(home), capture_output=True, text=True, timeout=1500,
                              check=False, cwd=REPO)
    finally:
        kill_processes_mentioning(str(home))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| fed-iid |" in proc.stdout and "| constant |" in proc.stdout  # its table
    assert read_config(out / "fed-iid")["data.prompt-frame"] == "finance"
    result = json.loads((out / "fed-iid" / "eval" / "results.json").read_text())["fpb"]
    # the constant answer, computed here independently of quality.py
    items = BENCHMARKS.get("fpb").load(real_data_dir)[:LIMIT]
    constant = max(sum(sentiment_correct(label, it) for it in items) for label in ("negative", "neutral", "positive"))
    reported = json.loads((out / "quality.json").read_text())["constant"]["results"]["fpb"]["score"]
    assert reported == pytest.approx(100 * constant / LIMIT)
    assert result["n"] == LIMIT and result["score"] > 100 * constant / LIMIT, (result, constant)
    assert result["eos_after_answer_pct"] >= 90.0, result
    rows = [json.loads(line) for line in (out / "fed-iid" / "eval" / "items-fpb.jsonl").read_text().splitlines()]
    print(f"\nfinance frame, {ROUNDS} rounds x 2 clients x {STEPS} steps x {BATCH}: FPB@{LIMIT} {result['score']:.1f} "
          f"(constant {100 * constant / LIMIT:.1f}), EOS after label {result['eos_after_answer_pct']:.1f}%, "
          f"e.g. {rows[0]['generation']!r}")

"""Bad input and failing clients, through the real simulation runtime with the tiny model: checks before
start, a node that fails its check-in, and a run in which no client can train."""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import read_jsonl, run_flowertune, tiny_overrides


def test_bad_input_is_one_line_before_any_process_starts(tmp_path, tiny_model_dir, tiny_data_file):
    cases = {
        "static.dataset.name=/nonexistent.jsonl": "/nonexistent.jsonl' does not exist",
        f"model.name={tmp_path / 'no-model'}": "does not exist",
        "data.format=generic data.response-column=answer": "needs column 'answer'",
    }
    for override, expected in cases.items():
        out = tmp_path / f"run-{len(override)}"
        proc = run_flowertune(tmp_path / "home", "run", "--out", str(out),
                              *tiny_overrides(tiny_model_dir, tiny_data_file), override, timeout=120)
        assert proc.returncode == 2, (override, proc.stdout[-2000:], proc.stderr[-2000:])
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("flowertune run: "), (override, lines)
        assert "SuperLink" not in proc.stdout and not out.exists()


def test_a_node_that_fails_its_check_in_is_left_out_and_named_and_server_side_dp_runs(tmp_path, tiny_model_dir):
    """2 rows over 3 partitions: partition 2 is empty, so that node cannot train; the other two can. The same
    run is client-level DP with server-side adaptive clipping (Flower's server-side fixed-clipping wrapper
    under flowertune's adaptive layer and ledger): every round accounted at the configured multiplier, the
    clipping norm moving between rounds."""
    from flowertune.federation.stack.privacy import planned_epsilon

    rows = [{"instruction": f"What is {w}?", "input": "", "output": f"{w} is a word."} for w in ("alpha", "beta")]
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    proc = run_flowertune(tmp_path / "home", "run", "--num-supernodes", "3", "--out", str(out),
                          *tiny_overrides(tiny_model_dir, data, **{"data.validation-fraction": 0.0,
                                                                   "train.eval-every-round": 0,
                                                                   "strategy.min-available-nodes": 2,
                                                                   "strategy.dp.mode": "server-adaptive",
                                                                   "strategy.dp.noise-multiplier": 1.0,
                                                                   "strategy.dp.clipping-norm": 0.01}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert len(rows[0]["errors"]) == 1 and "partition 2 of 3" in rows[0]["errors"][0], rows[0]
    assert all(r["clients"] == 2 and r["failures"] == 0 for r in rows[1:])
    assert (out / "final_adapter/adapter_model.safetensors").is_file()
    assert [r["dp_releases"] for r in rows[1:]] == [1, 2] and all(r["dp_noise_multiplier"] == 1.0 for r in rows[1:])
    assert rows[2]["dp_epsilon"] == pytest.approx(planned_epsilon(1.0, 2, 1e-5))
    assert rows[1]["dp_clipping_norm"] == 0.01 and rows[2]["dp_clipping_norm"] != 0.01  # the norm moved


def test_a_run_where_no_client_can_train_stops_without_a_final_adapter(tmp_path, tiny_model_dir, tiny_data_file):
    out = tmp_path / "run"
    # every prompt is longer than 16 tokens: each client has no training example (one try: the retry of a
    # round is tested in tests/unit/test_round_policy.py)
    proc = run_flowertune(tmp_path / "home", "run", "--num-supernodes", "2", "--out", str(out),
                          *tiny_overrides(tiny_model_dir, tiny_data_file, **{"train.seq-length": 16,
                                                                             "strategy.round-retries": 0}))
    assert proc.returncode != 0
    assert "the run stopped: round 1: fewer than strategy.min-train-nodes=2 usable client updates in 1 tries" \
        in proc.stderr, proc.stderr[-3000:]
    assert "no training examples" in proc.stderr
    assert not (out / "final_adapter").exists() and not (out / "summary.json").exists()
    assert [r["round"] for r in read_jsonl(out / "metrics.jsonl")] == [0]
    assert "--resume" in json.loads((out / "stopped.json").read_text())["reason"]

"""The leaderboard table, communication cost, and the eval/leaderboard command plumbing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from flowertune.commands import eval as eval_cmd
from flowertune.commands import leaderboard as leaderboard_cmd
from flowertune.eval.leaderboard import format_table, guess_challenge
from flowertune.federation.rundir import communication_mb

MEDICAL = {"pubmedqa": {"score": 60.0, "n": 500}, "medmcqa": {"score": 20.0, "n": 4183},
           "medqa": {"score": 30.0, "n": 1273}, "careqa": {"score": 10.0, "n": 5621}}


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"round": 0}, {"round": 1, "bytes_cumulative": 1024**2}, {"round": 2, "bytes_cumulative": 3 * 1024**2}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / "config.json").write_text(json.dumps({"config": {"model.name": "embedded"}, "meta": {}}))
    return run


def test_communication_cost_is_last_cumulative_in_mib(tmp_path: Path) -> None:
    assert communication_mb(_run_dir(tmp_path)) == 3.0
    assert communication_mb(tmp_path) is None


def test_medical_table(tmp_path: Path) -> None:
    table = format_table(MEDICAL, comm_mb=communication_mb(_run_dir(tmp_path)), with_comm=True)
    assert "Challenge: medical" in table
    assert "| score | 60.00 | 20.00 | 30.00 | 10.00 | 30.00 | 3.00 MB |" in table
    assert "PubMedQA" in table and "Comm. Costs" in table


def test_partial_and_general_nlp_tables() -> None:
    partial = format_table({"fpb": {"score": 40.0, "n": 4}})
    assert "Challenge: finance" in partial and "40.00 (partial)" in partial
    mmlu = {"mmlu": {"score": 20.0, "n": 30, "stem": 10.0, "social_sciences": 20.0, "humanities": 30.0,
                     "n_stem": 10, "n_social_sciences": 10, "n_humanities": 10}}
    assert guess_challenge(mmlu) == "general-nlp"
    assert "| score | 10.00 | 20.00 | 30.00 | 20.00 |" in format_table(mmlu)
    with pytest.raises(KeyError, match="valid challenges"):
        format_table(mmlu, challenge="law")


def test_leaderboard_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(MEDICAL))
    assert leaderboard_cmd.main(["--results", str(results), "--run", str(_run_dir(tmp_path))]) == 0
    assert "3.00 MB" in capsys.readouterr().out
    assert leaderboard_cmd.main(["--results", str(tmp_path / "missing.json")]) == 2


def test_eval_command_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    eval_cmd.add_parser(sub)
    leaderboard_cmd.add_parser(sub)
    args = parser.parse_args(["eval", "--suite", "finance", "--benchmarks", "tfns,mmlu", "--limit", "4"])
    assert args.func is eval_cmd.handler and args.limit == 4
    assert eval_cmd.benchmark_names(args.suite, args.benchmarks) == ["fpb", "fiqa", "tfns", "mmlu"]
    assert eval_cmd.run_model_name(_run_dir(tmp_path)) == "embedded"
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "config.json").write_text(json.dumps({"model.name": "some/model"}))
    assert eval_cmd.run_model_name(flat) == "some/model"


def test_eval_data_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(eval_cmd.DATA_ENV, raising=False)
    assert eval_cmd.data_dir_from(None) is None
    monkeypatch.setenv(eval_cmd.DATA_ENV, str(tmp_path))
    assert eval_cmd.data_dir_from(None) == tmp_path
    assert eval_cmd.data_dir_from(Path("/x")) == Path("/x")


def test_eval_command_needs_benchmarks_and_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_cmd.main(["--model", "embedded", "--out", "/tmp/x"]) == 2
    assert eval_cmd.main(["--suite", "medical"]) == 2

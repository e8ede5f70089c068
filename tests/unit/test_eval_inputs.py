"""``flowertune eval`` checks every input before a model loads: exit 2, one line, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowertune.commands import eval as eval_cmd


def fake_run(tmp_path: Path, preset: str = "finance", adapter: bool = False) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"preset": preset, "model.name": "embedded"}}))
    if adapter:
        (run / "final_adapter").mkdir()
        (run / "final_adapter" / "adapter_config.json").write_text("{}")
    return run


def refused(argv: list[str], capsys) -> str:
    assert eval_cmd.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("argv", "says"), [
    (["--run", "/nonexistent", "--suite", "medical"], "not a flowertune run directory"),
    (["--run", "/nonexistent", "--model", "embedded"], "not a flowertune run directory"),
    (["--model", "embedded", "--benchmarks", "nope", "--out", "OUT"], "unknown benchmark(s) 'nope'; valid:"),
    (["--model", "embedded", "--suite", "finance", "--limit", "-1", "--out", "OUT"], "--limit must be >= 1"),
    (["--model", "embedded", "--suite", "finance", "--limit", "0", "--out", "OUT"], "--limit must be >= 1"),
    (["--model", "embedded", "--suite", "finance", "--batch-size", "0", "--out", "OUT"], "--batch-size"),
    (["--model", "", "--suite", "finance", "--out", "OUT"], "--model is empty"),
    (["--model", "/no/such/model", "--suite", "finance", "--out", "OUT"], "/no/such/model does not exist"),
    (["--model", "embedded", "--suite", "finance", "--adapter", "/tmp", "--out", "OUT"], "not a PEFT adapter"),
    (["--model", "embedded", "--suite", "finance", "--data-dir", "/no/data", "--out", "OUT"], "is not a directory"),
    (["--model", "embedded", "--suite", "finance", "--data-dir", "EMPTY", "--out", "OUT"], "fpb: cannot read its data"),
    (["--model", "embedded"], "give --suite and/or --benchmarks"),
    (["--suite", "finance"], "give --model and --out, or --run"),
])
def test_bad_input_is_refused_before_anything_loads(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLOWERTUNE_DATA_DIR", raising=False)
    (tmp_path / "EMPTY").mkdir()
    argv = [str(tmp_path / a) if a in ("OUT", "EMPTY") else a for a in argv]
    assert says in refused(argv, capsys)
    assert not (tmp_path / "OUT").exists()


def test_a_run_without_a_final_adapter_is_refused(tmp_path, capsys):
    run = fake_run(tmp_path)
    assert "no final_adapter" in refused(["--run", str(run)], capsys)
    assert not (run / "eval").exists()


def test_the_suite_comes_from_the_run(tmp_path, monkeypatch):
    run = fake_run(tmp_path, "finance", adapter=True)
    monkeypatch.delenv("FLOWERTUNE_DATA_DIR", raising=False)
    args = eval_cmd.configure.__globals__["argparse"].ArgumentParser()
    eval_cmd.configure(args)
    names, model, adapter, out = eval_cmd.check_inputs(args.parse_args(["--run", str(run)]))
    assert names == ["fpb", "fiqa", "tfns"] and model == "embedded"
    assert adapter == run / "final_adapter" and out == run / "eval"


def test_no_model_is_imported_on_the_refusal_path(tmp_path):
    code = ("import sys\nfrom flowertune.commands import eval as e\n"
            f"assert e.main(['--model', 'embedded', '--benchmarks', 'nope', '--out', {str(tmp_path / 'o')!r}]) == 2\n"
            "print(sorted(m for m in ('torch', 'transformers', 'flwr') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.stdout.strip() == "[]"


def test_a_quickstart_run_is_scored_on_the_challenge_of_its_data(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"preset": "quickstart", "data.format": "medical"}}))
    (run / "final_adapter").mkdir()
    (run / "final_adapter" / "adapter_config.json").write_text("{}")
    parser = eval_cmd.configure.__globals__["argparse"].ArgumentParser()
    eval_cmd.configure(parser)
    names, *_ = eval_cmd.check_inputs(parser.parse_args(["--run", str(run)]))
    assert names == ["pubmedqa", "medmcqa", "medqa", "careqa"]

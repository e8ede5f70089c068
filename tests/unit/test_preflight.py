"""Checks before start: each bad input is one line naming the problem and the fix."""

import json

import pytest

from flowertune.config import Config, from_flat
from flowertune.data.load import DataLoadError, load_local
from flowertune.preflight import PreflightError, check_data, check_model, check_output_dir


def cfg_of(**flat):
    return from_flat({**Config().to_flat(), **flat})


def one_line(exc):
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"instruction": f"q{i}", "input": "", "output": f"answer {i}"} for i in range(20)]


def test_missing_data_file(tmp_path):
    with pytest.raises(PreflightError) as e:
        check_data(cfg_of(**{"static.dataset.name": str(tmp_path / "nope.jsonl")}))
    assert "does not exist" in one_line(e) and "static.dataset.name" in one_line(e)


def test_wrong_columns_name_the_columns_and_the_fix(tmp_path):
    data = write_rows(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 4)
    with pytest.raises(PreflightError) as e:
        check_data(cfg_of(**{"static.dataset.name": str(data), "data.format": "medical"}))
    assert "'answer'" in one_line(e) and "'question'" in one_line(e) and "data.format" in one_line(e)


def test_good_data_passes_and_counts_rows(tmp_path):
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    assert check_data(cfg_of(**{"static.dataset.name": str(data), "data.format": "medical"}), 1, 2) == 10


def test_broken_json_line_is_named_by_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n" + '{"instruction": "q", "output": \n')
    with pytest.raises(DataLoadError, match=rf"{data}:3: not valid JSON") as e:
        load_local(str(data))
    one_line(e)


def test_non_utf8_bytes_are_named_by_file_line_and_byte(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes((json.dumps(ROWS[0]) + "\n").encode() + b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataLoadError, match=rf"{data}:2: not UTF-8 \(byte 0xe9") as e:
        load_local(str(data))
    one_line(e)


def test_output_dir_that_holds_a_run_is_refused_before_start(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(PreflightError) as e:
        check_output_dir(cfg_of(**{"run.output-dir": str(tmp_path)}))
    assert "already holds a run" in one_line(e) and "--resume" in one_line(e)


def test_output_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(PreflightError) as e:
        check_output_dir(cfg_of(**{"run.output-dir": str(tmp_path / "a-file" / "run")}))
    assert "not a writable directory" in one_line(e)


def test_offline_hub_model_not_in_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(PreflightError) as e:
        check_model(cfg_of(**{"model.name": "someone/not-downloaded-7b"}))
    assert "not in the Hugging Face cache" in one_line(e) and "hf download" in one_line(e)


def test_missing_local_model_dir(tmp_path):
    with pytest.raises(PreflightError) as e:
        check_model(cfg_of(**{"model.name": str(tmp_path / "no-model")}))
    assert "does not exist" in one_line(e)


def test_run_check_runs_the_checks_before_start_and_starts_nothing(tmp_path, capsys):
    from flowertune.cli import main

    out = tmp_path / "run"
    assert main(["run", "--check", "--out", str(out), "strategy.min-available-nodes=9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "strategy.min-available-nodes=9 is more than the 4 simulated" in err
    assert main(["run", "--check", "--out", str(out), "static.dataset.name=" + str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err
    assert main(["run", "--check", "--out", str(out)]) == 0
    assert "checks before start passed" in capsys.readouterr().out
    assert not out.exists()

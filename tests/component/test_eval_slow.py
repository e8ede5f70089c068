"""The real embedded SmolLM2-135M-Instruct through ``flowertune eval`` on every non-code benchmark, and on
HumanEval (generation, extraction and the sandbox with a real model's output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowertune.commands import eval as eval_cmd
from flowertune.eval.benchmark import SUITES


@pytest.mark.slow
def test_embedded_model_limit_4_on_three_suites(real_data_dir: Path, tmp_path: Path) -> None:
    names = [*SUITES["medical"], *SUITES["finance"], *SUITES["general-nlp"]]
    argv = ["--model", "embedded", "--benchmarks", ",".join(names), "--data-dir", str(real_data_dir),
            "--limit", "4", "--batch-size", "4", "--out", str(tmp_path), "--no-progress"]
    assert eval_cmd.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results) == sorted(names)
    for name in names:
        assert 0.0 <= results[name]["score"] <= 100.0
        assert results[name]["n"] == 4
        assert (tmp_path / f"items-{name}.jsonl").is_file()


@pytest.mark.slow
def test_embedded_model_on_humaneval(real_data_dir: Path, tmp_path: Path) -> None:
    argv = ["--model", "embedded", "--benchmarks", "humaneval", "--data-dir", str(real_data_dir), "--limit", "1",
            "--out", str(tmp_path), "--no-progress"]
    assert eval_cmd.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())["humaneval"]
    assert result["n"] == 1 and result["score"] in (0.0, 100.0)
    item = json.loads((tmp_path / "items-humaneval.jsonl").read_text().splitlines()[0])
    assert item["generation"].strip(), item  # the model wrote code, which the sandbox ran

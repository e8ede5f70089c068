"""The shipped sample dataset parses, has the expected layout, and is exactly what the generator writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "flowertune" / "samples" / "medical_qa.jsonl"
SCRIPT = ROOT / "tools" / "make_sample_data.py"
FIELDS = ("instruction", "input", "output")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_sample_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def test_rows_have_three_non_empty_fields():
    rows = _rows()
    assert len(rows) >= 300
    for i, row in enumerate(rows):
        assert set(row) == set(FIELDS), f"row {i}: {sorted(row)}"
        for field in FIELDS:
            assert isinstance(row[field], str) and row[field].strip(), f"row {i}: empty {field}"


def test_inputs_are_unique():
    inputs = [row["input"] for row in _rows()]
    assert len(inputs) == len(set(inputs))


def test_generator_reproduces_the_shipped_file(tmp_path):
    out = _load_script().generate(tmp_path / "medical_qa.jsonl")
    assert out.read_bytes() == SAMPLE.read_bytes()

"""CareQA (``CareQA_en`` test, 5621 items), FlowerTune medical protocol (same instruction as MedMCQA)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from flowertune.eval.benchmark import Item, register
from flowertune.eval.benchmarks.medmcqa import INSTRUCTION
from flowertune.eval.protocol import leaderboard_benchmark, mcq_items

HUB_ID, HUB_CONFIG = "HPAI-BSC/CareQA", "CareQA_en"


def _rows(data_dir: Path | None) -> list[tuple[str, str, list[str], str]]:
    if data_dir is None:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID, HUB_CONFIG, split="test")
        return [(r["unique_id"], r["question"], [r["op1"], r["op2"], r["op3"], r["op4"]], chr(65 + int(r["cop"]) - 1))
                for r in ds]
    # the CareQA authors' export: {unique_id: {question, options{A..D}, correct_answer letter}} in Hub order
    with gzip.open(data_dir / "careqa" / "careqa_test.json.gz", "rt", encoding="utf-8") as f:
        data = json.load(f)
    return [(key, r["question"], [r["options"][k] for k in "ABCD"], r["correct_answer"]) for key, r in data.items()]


def load(data_dir: Path | None) -> list[Item]:
    """The test questions in protocol order; gold is ``chr(65 + cop - 1)``."""
    return mcq_items(_rows(data_dir), INSTRUCTION)


BENCHMARK = register(leaderboard_benchmark("careqa", "medical", load, answer_type="mcq"))

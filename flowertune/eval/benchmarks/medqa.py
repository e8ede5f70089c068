"""MedQA (USMLE, 4 options, test split, 1273 items), FlowerTune medical protocol."""

from __future__ import annotations

import json
from pathlib import Path

from flowertune.eval.benchmark import Item, register
from flowertune.eval.protocol import leaderboard_benchmark, mcq_items

# the protocol reads bigbio/med_qa med_qa_en_4options_source (a loading script, datasets<4 only); this is the
# same US 4-option test file as plain data, with the same {options, answer} fields
HUB_ID = "GBaker/MedQA-USMLE-4-options"
# "from A to E" although there are four options: the protocol's (Meditron's) text, kept as is
INSTRUCTION = (
    "You are a medical doctor taking the US Medical Licensing Examination. You need to demonstrate your "
    "understanding of basic and clinical science, medical knowledge, and mechanisms underlying health, disease, "
    "patient care, and modes of therapy. Show your ability to apply the knowledge essential for medical practice. "
    "For the following multiple-choice question, select one correct answer from A to E. Base your answer on the "
    "current and standard practices referenced in medical guidelines."
)


def gold_letter(options: dict[str, str], answer: str) -> str:
    """The first option key whose text equals the answer text (the protocol's rule)."""
    return next((key for key, value in options.items() if value == answer), "")


def _records(data_dir: Path | None) -> list[dict]:
    if data_dir is None:
        from datasets import load_dataset

        return list(load_dataset(HUB_ID, split="test"))
    lines = (data_dir / "medqa" / "phrases_no_exclude_test.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load(data_dir: Path | None) -> list[Item]:
    """The test questions in protocol order, options in A-D order."""
    rows = ((str(i), r["question"], list(r["options"].values()), gold_letter(r["options"], r["answer"]))
            for i, r in enumerate(_records(data_dir)))
    return mcq_items(rows, INSTRUCTION)


BENCHMARK = register(leaderboard_benchmark("medqa", "medical", load, answer_type="mcq"))

"""MedMCQA (validation split, 4183 items), FlowerTune medical protocol."""

from __future__ import annotations

import json
from pathlib import Path

from flowertune.eval.benchmark import Item, register
from flowertune.eval.protocol import leaderboard_benchmark, mcq_items

HUB_ID = "openlifescienceai/medmcqa"  # the protocol's "medmcqa" id now redirects here
INSTRUCTION = (
    "You are a medical doctor answering realworld medical entrance exam questions. Based on your understanding "
    "of basic and clinical science, medical knowledge, and mechanisms underlying health, disease, patient care, "
    "and modes of therapy, answer the following multiple-choice question. Select one correct answer from A to D. "
    "Base your answer on the current and standard practices referenced in medical guidelines."
)


def _rows(data_dir: Path | None) -> list[tuple[str, str, list[str], str]]:
    if data_dir is None:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID, split="validation")
        return [(r["id"], r["question"], [r["opa"], r["opb"], r["opc"], r["opd"]], chr(65 + int(r["cop"])))
                for r in ds]
    # MIRAGE export: {id: {question, options{A..D}, answer letter}} in validation order
    data = json.loads((data_dir / "medmcqa" / "medmcqa.json").read_text())
    return [(key, r["question"], [r["options"][k] for k in "ABCD"], r["answer"]) for key, r in data.items()]


def load(data_dir: Path | None) -> list[Item]:
    """The validation questions in protocol order; gold is ``chr(65 + cop)``."""
    return mcq_items(_rows(data_dir), INSTRUCTION)


BENCHMARK = register(leaderboard_benchmark("medmcqa", "medical", load, answer_type="mcq"))

"""MMLU test set as the FlowerTune general-nlp challenge scores it: STEM, social sciences, humanities.

One benchmark, "mmlu", holds the three leaderboard categories back to back (subjects in ``MMLU_CATEGORY``
order, rows in file order); its score is the average of the three category accuracies, as the leaderboard
ranks. Budgets follow the upstream run of one category at a time (batches of 16 within a category).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowertune.eval.benchmark import Item, register
from flowertune.eval.protocol import (
    accuracy,
    format_mcq,
    leaderboard_benchmark,
    leaderboard_correct,
    leaderboard_items,
)
from flowertune.prompts import leaderboard_prompt

# the protocol reads lukaemon/mmlu (a loading script, datasets<4 only); cais/mmlu is the same test data
HUB_ID = "cais/mmlu"
INSTRUCTION = "Answer the following multiple choice question."
CATEGORIES = ("stem", "social_sciences", "humanities")  # "other" exists upstream but is not on the leaderboard
MMLU_CATEGORY: dict[str, tuple[str, ...]] = {
    "stem": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ),
    "social_sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
        "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
        "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ),
}


def _subject_rows(data_dir: Path | None, subject: str) -> list[tuple[str, list[str], int]]:
    if data_dir is None:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID, subject, split="test")
        return [(r["question"], list(r["choices"]), int(r["answer"])) for r in ds]
    # header + answer index 0-3; the csv module keeps option texts such as "None" as strings (pandas'
    # default NA parsing would turn them into "nan")
    with (data_dir / "mmlu" / "test" / f"{subject}_test.csv").open(encoding="utf-8", newline="") as f:
        return [(r["question"], [r[f"choice{i}"] for i in range(4)], int(r["answer"])) for r in csv.DictReader(f)]


def load(data_dir: Path | None) -> list[Item]:
    """STEM, then social sciences, then humanities items; ``meta`` names category and subject."""
    items: list[Item] = []
    for category in CATEGORIES:
        records = []
        for subject in MMLU_CATEGORY[category]:
            for i, (question, choices, answer) in enumerate(_subject_rows(data_dir, subject)):
                prompt = leaderboard_prompt(INSTRUCTION, format_mcq(question, choices))
                records.append((f"{subject}/{i}", prompt, "ABCD"[answer], {"category": category, "subject": subject}))
        items += leaderboard_items(records)
    return items


def score(predictions: Sequence[Any], items: Sequence[Item]) -> dict[str, float]:
    """Accuracy per category present and their mean as ``score`` (the leaderboard's average)."""
    flags: dict[str, list[bool]] = {}
    for prediction, item in zip(predictions, items):
        flags.setdefault(item.meta["category"], []).append(leaderboard_correct(prediction, item))
    result = {category: accuracy(flags[category]) for category in CATEGORIES if category in flags}
    result.update({f"n_{category}": float(len(flags[category])) for category in CATEGORIES if category in flags})
    per_category = [result[c] for c in CATEGORIES if c in result]
    result["score"] = sum(per_category) / len(per_category) if per_category else 0.0
    return result


BENCHMARK = register(leaderboard_benchmark("mmlu", "general-nlp", load, answer_type="mcq", score=score))

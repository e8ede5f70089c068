"""FiQA-2018 sentiment (train+validation+test, seeded 25% split: 304 items), FlowerTune finance protocol."""

from __future__ import annotations

import csv
from pathlib import Path

from flowertune.eval.benchmark import Item, register
from flowertune.eval.protocol import finance_benchmark, finance_items, seeded_test_indices
from flowertune.prompts import sentiment_instruction

HUB_ID = "pauri32/fiqa-2018"
SPLITS = ("train", "validation", "test")


def label(sentiment_score: float) -> str:
    """FinGPT's thresholds: below -0.1 negative, below 0.1 neutral, else positive."""
    return "negative" if sentiment_score < -0.1 else "neutral" if sentiment_score < 0.1 else "positive"


def _all_rows(data_dir: Path | None) -> list[dict]:
    if data_dir is None:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID)
        return [dict(r) for split in SPLITS for r in ds[split]]
    rows: list[dict] = []
    for split in SPLITS:  # pandas exports of the Hub splits, utf-8 with BOM
        with (data_dir / "fiqa_sa" / f"fiqa_{split}.csv").open(encoding="utf-8-sig", newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def load(data_dir: Path | None) -> list[Item]:
    """``train_test_split(0.25, seed=42)["test"]`` of the concatenated splits; "post" rows are tweets."""
    rows = _all_rows(data_dir)
    return finance_items(
        (str(i), rows[i]["sentence"], label(float(rows[i]["sentiment_score"])),
         sentiment_instruction("tweet" if rows[i]["format"] == "post" else "news"))
        for i in seeded_test_indices(len(rows))
    )


BENCHMARK = register(finance_benchmark("fiqa", load))

"""Twitter Financial News Sentiment (validation split, 2388 items), FlowerTune finance protocol."""

from __future__ import annotations

import csv
from pathlib import Path

from flowertune.eval.benchmark import Item, register
from flowertune.eval.protocol import finance_benchmark, finance_items
from flowertune.prompts import sentiment_instruction

HUB_ID = "zeroshot/twitter-financial-news-sentiment"
LABELS = {0: "negative", 1: "positive", 2: "neutral"}  # Bearish, Bullish, Neutral


def _rows(data_dir: Path | None) -> list[tuple[str, int]]:
    if data_dir is None:
        from datasets import load_dataset

        return [(r["text"], int(r["label"])) for r in load_dataset(HUB_ID, split="validation")]
    with (data_dir / "tfns" / "sent_valid.csv").open(encoding="utf-8", newline="") as f:
        return [(r["text"], int(r["label"])) for r in csv.DictReader(f)]


def load(data_dir: Path | None) -> list[Item]:
    """The whole validation split in order."""
    instruction = sentiment_instruction("tweet")
    return finance_items((str(i), text, LABELS[lab], instruction) for i, (text, lab) in enumerate(_rows(data_dir)))


BENCHMARK = register(finance_benchmark("tfns", load))

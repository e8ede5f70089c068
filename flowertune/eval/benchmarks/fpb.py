"""Financial PhraseBank (sentences_50agree, seeded 25% split: 1212 items), FlowerTune finance protocol."""

from __future__ import annotations

from pathlib import Path

from flowertune.eval.benchmark import Item, register
from flowertune.eval.protocol import finance_benchmark, finance_items, seeded_test_indices
from flowertune.prompts import sentiment_instruction

HUB_ID, HUB_CONFIG = "takala/financial_phrasebank", "sentences_50agree"
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def _all_rows(data_dir: Path | None) -> list[tuple[str, str]]:
    if data_dir is None:
        # the Hub copy is a loading script (remote code), which datasets>=4 does not run and we do not enable
        raise FileNotFoundError(
            f"fpb needs a local data directory: {HUB_ID} ({HUB_CONFIG}) on the Hub is a loading script, which "
            "datasets>=4 no longer runs; put FinancialPhraseBank-v1.0's Sentences_50Agree.txt in DATA_DIR/fpb/ and "
            "pass --data-dir DATA_DIR")
    # "sentence@label" per line, latin-1, CRLF; the label follows the last "@"
    text = (data_dir / "fpb" / "Sentences_50Agree.txt").read_text(encoding="latin-1")
    return [tuple(line.rsplit("@", 1)) for line in text.splitlines() if line.strip()]  # type: ignore[misc]


def load(data_dir: Path | None) -> list[Item]:
    """``train_test_split(0.25, seed=42)["test"]`` of all 4846 sentences, in split order."""
    rows = _all_rows(data_dir)
    instruction = sentiment_instruction("news")
    return finance_items((str(i), rows[i][0], rows[i][1].strip(), instruction) for i in seeded_test_indices(len(rows)))


BENCHMARK = register(finance_benchmark("fpb", load))

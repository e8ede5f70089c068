"""Each benchmark's loader on hand-written fixtures (exact prompts, golds, order) and on the real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowertune.eval.benchmark import BENCHMARKS, SUITES
from flowertune.eval.benchmarks import medmcqa, medqa, mmlu, pubmedqa
from flowertune.prompts import sentiment_instruction

FRAME_END = "\nThe answer is:\n<|im_end|>\n<|im_start|>answer\n"


def test_every_suite_benchmark_is_registered() -> None:
    for suite in ("medical", "finance", "general-nlp"):
        for name in SUITES[suite]:
            assert BENCHMARKS.get(name).suite == suite


def test_pubmedqa_prompt_and_order(fixture_dir: Path) -> None:
    items = BENCHMARKS.get("pubmedqa").load(fixture_dir)
    assert [(it.id, it.gold) for it in items] == [("333", "maybe"), ("111", "no")]  # test-id file order
    assert items[1].prompt == (
        f"<|im_start|>question\n{pubmedqa.INSTRUCTION}\nColds are common.\nCoffee was given to 10 people.\n"
        f"Does coffee cure colds?{FRAME_END}"
    )


def test_medmcqa_prompt(fixture_dir: Path) -> None:
    items = BENCHMARKS.get("medmcqa").load(fixture_dir)
    assert [it.gold for it in items] == ["A", "B"]
    assert items[0].prompt == (
        f"<|im_start|>question\n{medmcqa.INSTRUCTION}\nQuestion: Which nerve supplies the deltoid?\n\n"
        f"Options:\nA. Axillary\nB. Radial\nC. Ulnar\nD. Median{FRAME_END}"
    )
    assert "Question: Vitamin C deficiency causes:?\n" in items[1].prompt  # ':' is not '?' or '.'


def test_medqa_gold_from_answer_text(fixture_dir: Path) -> None:
    items = BENCHMARKS.get("medqa").load(fixture_dir)
    assert [it.gold for it in items] == ["B", "A"]
    assert items[0].prompt.startswith(f"<|im_start|>question\n{medqa.INSTRUCTION}\nQuestion: A 30-year-old")
    assert "select one correct answer from A to E." in items[0].prompt  # the protocol's text, kept
    assert medqa.gold_letter({"A": "x", "B": "y"}, "z") == ""


def test_careqa_reads_gzip(fixture_dir: Path) -> None:
    items = BENCHMARKS.get("careqa").load(fixture_dir)
    assert [(it.id, it.gold) for it in items] == [("u-1", "B"), ("u-2", "C")]
    assert "Question: Water boils at sea level at.\n\nOptions:\nA. 50 C\nB. 80 C\nC. 100 C\nD. 150 C" in items[1].prompt
    assert items[0].prompt.startswith(f"<|im_start|>question\n{medmcqa.INSTRUCTION}\n")


def test_mmlu_categories_order_and_literal_none(fixture_dir: Path, small_mmlu: None) -> None:
    items = BENCHMARKS.get("mmlu").load(fixture_dir)
    assert [(it.meta["category"], it.gold) for it in items] == [
        ("stem", "B"), ("social_sciences", "A"), ("humanities", "A"), ("humanities", "D")]
    assert items[0].prompt == (
        f"<|im_start|>question\n{mmlu.INSTRUCTION}\nQuestion: What is 2+2?\n\n"
        f"Options:\nA. 3\nB. 4\nC. 5\nD. None{FRAME_END}"
    )
    assert "C. NA\n" in items[1].prompt  # no NA parsing of option texts


def test_mmlu_score_averages_categories(fixture_dir: Path, small_mmlu: None) -> None:
    bench = BENCHMARKS.get("mmlu")
    items = bench.load(fixture_dir)
    result = bench.score(["b", "c", "a", "x"], items)  # stem 1/1, social 0/1, humanities 1/2
    assert result["stem"] == 100.0 and result["social_sciences"] == 0.0 and result["humanities"] == 50.0
    assert result["score"] == pytest.approx(50.0)
    assert result["n_humanities"] == 2
    partial = bench.score(["b"], items[:1])
    assert partial["score"] == 100.0 and "humanities" not in partial


def test_finance_loaders(fixture_dir: Path) -> None:
    fpb = BENCHMARKS.get("fpb").load(fixture_dir)
    assert len(fpb) == 1  # ceil(0.25 * 4)
    assert fpb[0].gold in {"positive", "neutral", "negative"}
    assert fpb[0].prompt.startswith(f"Instruction: {sentiment_instruction('news')}\nInput: ")
    tfns = BENCHMARKS.get("tfns").load(fixture_dir)
    assert [it.gold for it in tfns] == ["negative", "positive", "neutral"]
    assert tfns[1].prompt == (f"Instruction: {sentiment_instruction('tweet')}\nInput: $DELL $HPE - Dell, HPE beat\n"
                              "Answer: ")
    fiqa = BENCHMARKS.get("fiqa").load(fixture_dir)
    assert len(fiqa) == 1  # ceil(0.25 * 3)


def test_fiqa_labels_and_tag() -> None:
    from flowertune.eval.benchmarks.fiqa import label

    assert [label(x) for x in (-0.443, -0.1, 0.05, 0.1, 0.52)] == [
        "negative", "neutral", "neutral", "positive", "positive"]


# ---- the real files (skipped only when the data directory is absent) ----

@pytest.mark.parametrize(("name", "n"), [
    ("pubmedqa", 500), ("medmcqa", 4183), ("medqa", 1273), ("careqa", 5621),
    ("fpb", 1212), ("fiqa", 304), ("tfns", 2388),
])
def test_real_sizes(real_data_dir: Path, name: str, n: int) -> None:
    items = BENCHMARKS.get(name).load(real_data_dir)
    assert len(items) == n
    assert len({it.id for it in items}) == n


def test_real_mmlu(real_data_dir: Path) -> None:
    items = BENCHMARKS.get("mmlu").load(real_data_dir)
    counts = {c: sum(it.meta["category"] == c for it in items) for c in mmlu.CATEGORIES}
    assert counts["stem"] == 3153  # the FlowerTune STEM reference run has 3153 questions
    assert sum(counts.values()) == len(items)
    assert not any("\nA. nan\n" in it.prompt or "\nD. nan<" in it.prompt for it in items)


def test_real_finance_splits_are_the_seeded_ones(real_data_dir: Path) -> None:
    fpb = BENCHMARKS.get("fpb").load(real_data_dir)
    assert fpb[0].prompt.endswith("\nAnswer: ") and {it.gold for it in fpb} == {"positive", "neutral", "negative"}
    fiqa = BENCHMARKS.get("fiqa").load(real_data_dir)
    assert sum("this tweet?" in it.prompt for it in fiqa) + sum("this news?" in it.prompt for it in fiqa) == 304
    # the split only depends on the row count: the same seeded permutation as datasets' train_test_split
    from datasets import Dataset

    text = (real_data_dir / "fpb" / "Sentences_50Agree.txt").read_text(encoding="latin-1").splitlines()
    ds = Dataset.from_dict({"sentence": [line.rsplit("@", 1)[0] for line in text]})
    expected = ds.train_test_split(test_size=0.25, seed=42)["test"]["sentence"]
    assert [it.prompt.split("\nInput: ")[1].removesuffix("\nAnswer: ") for it in fpb] == expected

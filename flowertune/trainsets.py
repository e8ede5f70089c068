"""Training sets built from the raw files in a data directory, with every evaluation item held out.

``finance-sentiment``
    FinGPT-style sentiment rows (``instruction``/``input``/``output``, the schema of
    ``FinGPT/fingpt-sentiment-train``, which is built from the same sources) from the Financial
    PhraseBank and FiQA-2018 rows that are *not* in their FlowerTune evaluation splits, with FinGPT's
    instruction and FinGPT's label. The instruction's ``news``/``tweet`` tag is drawn per row (seeded, 50/50)
    instead of following the source: tagged by source, only 23 of 495 ``tweet`` rows (FiQA posts) are
    neutral, and a model trained so learned that a tweet is never neutral (TFNS, 66% neutral tweets: 43.7%,
    with 957 of its 1566 neutral tweets answered positive). Drawn at random, the tag carries no label.
``medmcqa``
    MedMCQA *train* questions (``medmcqa_train10k``) as multiple-choice rows: ``instruction`` is the
    MedMCQA evaluation instruction, ``input`` the ``Question:/Options:`` block, ``output`` the letter.
``medmcqa-balanced``
    The same rows with each row's options in a seeded random order, so the answer letter is uniform.

A row whose text (case- and whitespace-normalised) equals an evaluation item's text in any benchmark of
the same challenge is dropped too (FPB repeats some sentences), so the rows and the evaluation items are
disjoint by construction; ``tests/eval/test_build_data.py`` checks it on the real files.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flowertune.registry import Registry

Rows = list[dict[str, str]]
BUILDERS: Registry[Callable[[Path], Rows]] = Registry("training set")


def normalise(text: str) -> str:
    """Lower-cased text with runs of whitespace collapsed (the key of the disjointness check)."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _eval_texts(names: Iterable[str], data_dir: Path, field: Callable[[Any], str]) -> set[str]:
    import flowertune.eval.benchmarks  # noqa: F401  (registers them)
    from flowertune.eval.benchmark import BENCHMARKS

    return {normalise(field(item)) for name in names for item in BENCHMARKS.get(name).load(data_dir)}


def _sentiment_input(item: Any) -> str:
    # the finance prompt is "Instruction: ...\nInput: <text>\nAnswer: "
    return item.prompt.split("\nInput: ", 1)[1].rsplit("\nAnswer: ", 1)[0]


@BUILDERS.register("finance-sentiment")
def finance_sentiment(data_dir: Path, seed: int = 42) -> Rows:
    """Non-evaluation FPB and FiQA rows in the FinGPT sentiment schema."""
    import random

    from flowertune.eval.benchmarks import fiqa, fpb
    from flowertune.eval.protocol import seeded_test_indices
    from flowertune.prompts import sentiment_instruction

    held_out = _eval_texts(("fpb", "fiqa", "tfns"), data_dir, _sentiment_input)
    candidates: list[tuple[str, str]] = []
    fpb_rows = fpb._all_rows(data_dir)
    fpb_test = set(seeded_test_indices(len(fpb_rows)))
    candidates += [(text, gold.strip()) for i, (text, gold) in enumerate(fpb_rows) if i not in fpb_test]
    fiqa_rows = fiqa._all_rows(data_dir)
    fiqa_test = set(seeded_test_indices(len(fiqa_rows)))
    candidates += [(r["sentence"], fiqa.label(float(r["sentiment_score"])))
                   for i, r in enumerate(fiqa_rows) if i not in fiqa_test]
    rng = random.Random(seed)
    rows, seen = [], set()
    for text, label in candidates:
        key = normalise(text)
        if key in held_out or key in seen:
            continue
        seen.add(key)
        tag = rng.choice(("news", "tweet"))
        rows.append({"instruction": sentiment_instruction(tag), "input": text, "output": label})
    return rows


@BUILDERS.register("medmcqa")
def medmcqa(data_dir: Path, permute_seed: int | None = None) -> Rows:
    """MedMCQA train questions as MCQ rows in the evaluation's own instruction and option block.

    ``permute_seed``: each row's four options in a seeded random order (the letter then carries no prior:
    the train file's answers are 30% A, 21% D).
    """
    import random

    rng = random.Random(permute_seed)
    from flowertune.eval.benchmarks import medmcqa as bench
    from flowertune.eval.protocol import format_mcq
    from flowertune.prompts import leaderboard_prompt

    held_out = _eval_texts(("medmcqa", "medqa", "careqa"), data_dir, lambda item: item.prompt)
    path = data_dir / "medmcqa_train10k" / "medmcqa_val.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    rows, seen = [], set()
    for record in data.values():
        order = list("ABCD")
        if permute_seed is not None:
            rng.shuffle(order)
        body = format_mcq(record["question"], [record["options"][k] for k in order])
        key = normalise(record["question"])
        if normalise(leaderboard_prompt(bench.INSTRUCTION, body)) in held_out or key in seen:
            continue
        seen.add(key)
        answer = "ABCD"[order.index(record["correct_answer"])]
        rows.append({"instruction": bench.INSTRUCTION, "input": body, "output": answer})
    return rows


@BUILDERS.register("medmcqa-balanced")
def medmcqa_balanced(data_dir: Path, seed: int = 42) -> Rows:
    """:func:`medmcqa` with each row's options in a seeded random order: answer letters about 25% each."""
    return medmcqa(data_dir, permute_seed=seed)


def write_jsonl(rows: Rows, path: Path) -> Path:
    """Write ``rows`` as JSON lines (the form ``static.dataset.name`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return path

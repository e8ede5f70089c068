"""PubMedQA (PQA-L, BigBio fold0 test, 500 items): yes/no/maybe from an abstract, FlowerTune medical protocol."""

from __future__ import annotations

import json
from pathlib import Path

from flowertune.eval.benchmark import Item, register
from flowertune.eval.protocol import leaderboard_benchmark, leaderboard_items
from flowertune.prompts import leaderboard_prompt

HUB_ID, HUB_CONFIG = "bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source"
INSTRUCTION = (
    "As an expert doctor in clinical science and medical knowledge, can you tell me if the following "
    "statement is correct? Answer yes, no, or maybe."
)


def build_prompt(contexts: list[str], question: str) -> str:
    """All abstract sections, one per line, then the question."""
    return leaderboard_prompt(INSTRUCTION, "\n".join(contexts) + "\n" + question)


def _rows(data_dir: Path | None) -> list[tuple[str, list[str], str, str]]:
    if data_dir is None:
        # the Hub copy is a loading script (remote code), which datasets>=4 does not run and we do not enable
        raise FileNotFoundError(
            f"pubmedqa needs a local data directory: {HUB_ID} ({HUB_CONFIG}) on the Hub is a loading script, which "
            "datasets>=4 no longer runs; put pubmedqa/pubmedqa's data/ori_pqal.json and data/test_ground_truth.json "
            "in DATA_DIR/pubmedqa/ and pass --data-dir DATA_DIR")
    # pubmedqa/pubmedqa: the 500 test PMIDs (in file order) index the 1000 labelled questions
    folder = data_dir / "pubmedqa"
    questions = json.loads((folder / "ori_pqal.json").read_text())
    test_ids = json.loads((folder / "test_ground_truth.json").read_text())
    return [(pmid, questions[pmid]["CONTEXTS"], questions[pmid]["QUESTION"], questions[pmid]["final_decision"])
            for pmid in test_ids]


def load(data_dir: Path | None) -> list[Item]:
    """The 500 test questions in protocol order; gold is ``final_decision``."""
    return leaderboard_items((pmid, build_prompt(ctx, q), gold, {}) for pmid, ctx, q, gold in _rows(data_dir))


BENCHMARK = register(leaderboard_benchmark("pubmedqa", "medical", load, answer_type="boolean"))

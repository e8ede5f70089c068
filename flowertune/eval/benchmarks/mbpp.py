"""MBPP test split (task_id 11-510, 500 problems), pass@1, as bigcode-evaluation-harness task ``mbpp``.

Protocol (bigcode_eval/tasks/mbpp.py, InCoder-style prompt): prompt = ``'\"\"\"\\n{text}\\n{test_list[0]}\\n\"\"\"\\n'``
(not stripped); generation stops at the first of :data:`STOP`; the program is prompt + truncated
completion, a newline, then the three ``test_list`` asserts joined by newlines (``test_setup_code`` and
``challenge_test_list`` are not used). Budget: ``max_length_generation=2048`` tokens including the prompt.
Deviations as in :mod:`flowertune.eval.benchmarks.humaneval` (sandboxed script, 5 s wall, greedy).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowertune.eval.benchmark import Benchmark, Item, register
from flowertune.eval.benchmarks.humaneval import LIMITS, budget, find_file, pass_at_1, read_jsonl, truncate_at_stop
from flowertune.eval.sandbox import Program
from flowertune.prompts import docstring_prompt

HUB_ID = "google-research-datasets/mbpp"
STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
MAX_LENGTH = 2048
TEST_IDS = range(11, 511)


def build_prompt(text: str, first_test: str) -> str:
    """The InCoder docstring prompt: the description and one test inside triple quotes."""
    return docstring_prompt(text, first_test)


def item_from_row(row: dict[str, Any]) -> Item:
    """One MBPP problem; gold is the test asserts appended to the program."""
    return Item(
        id=str(row["task_id"]),
        prompt=build_prompt(row["text"], row["test_list"][0]),
        gold="\n".join(row["test_list"]),
        meta={"code": row["code"], "task_id": row["task_id"]},
    )


def load(data_dir: Path | None) -> list[Item]:
    """The 500 test problems from the full ``mbpp.jsonl`` (rows filtered to ids 11-510) or the Hub."""
    if data_dir is None:
        from datasets import load_dataset

        rows = list(load_dataset(HUB_ID, "full", split="test"))
    else:
        rows = read_jsonl(find_file(Path(data_dir), "mbpp", ("mbpp.jsonl",)))
        rows = [row for row in rows if row["task_id"] in TEST_IDS]
    return [item_from_row(row) for row in rows]


def extract(generation: str, item: Item) -> str:
    """Prompt plus the completion cut at the first stop sequence (``generation`` = new text only)."""
    return item.prompt + truncate_at_stop(generation, STOP)


def program(extracted: str, item: Item) -> Program:
    """Solution, newline, asserts."""
    return Program(extracted + "\n" + item.gold, "python")


def score(extracted: Sequence[str], items: Sequence[Item]) -> dict[str, float]:
    """pass@1 (percent) of the extracted programs."""
    return pass_at_1([program(e, it) for e, it in zip(extracted, items, strict=True)], LIMITS)


BENCHMARK = register(
    Benchmark(
        name="mbpp",
        suite="code",
        protocol="bigcode-evaluation-harness mbpp (InCoder prompt, test split 11-510), pass@1, greedy",
        load=load,
        max_new_tokens=budget(MAX_LENGTH),
        extract=extract,
        score=score,
        stop=STOP,
    )
)

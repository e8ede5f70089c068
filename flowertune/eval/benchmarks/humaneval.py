"""HumanEval (164 Python problems), pass@1, as bigcode-evaluation-harness task ``humaneval`` defines it.

Protocol (bigcode_eval/tasks/humaneval.py, the stripped-prompt variant the leaderboard uses):
prompt = the problem's ``prompt`` with surrounding whitespace stripped; generation stops at the first of
:data:`STOP`; the program is prompt + truncated completion, then ``"\\n" + test + "\\ncheck(entry_point)"``
appended after one more newline, and it passes if it runs without an exception. The harness's budget is
``max_length_generation=1024`` tokens *including* the prompt.

Deviations, deliberate: the program runs as a script in :mod:`flowertune.eval.sandbox` (not ``exec`` in a
guarded interpreter), with a 5 s wall limit that includes interpreter start-up (the harness: 3 s of
``exec``); decoding is greedy by default (the harness samples, temperature 0.2, top-p 0.95, n=1).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from flowertune.eval.benchmark import Benchmark, Item, register
from flowertune.eval.sandbox import Limits, Program, Result, run_programs

HUB_ID = "openai/openai_humaneval"
STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>")
MAX_LENGTH = 1024  # bigcode --max_length_generation: prompt + completion tokens
LIMITS = Limits(wall_s=5.0, memory_mb=1024)


def truncate_at_stop(completion: str, stop: Iterable[str]) -> str:
    """The prefix of ``completion`` before the earliest stop sequence (the prompt must not be included)."""
    cut = len(completion)
    for word in stop:
        at = completion.find(word)
        if at != -1:
            cut = min(cut, at)
    return completion[:cut]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz`` file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def find_file(data_dir: Path, folder: str, names: Sequence[str]) -> Path:
    """``data_dir/folder/name`` or ``data_dir/name`` for the first name that exists (shared data layout)."""
    for base in (data_dir / folder, data_dir):
        for name in names:
            if (base / name).is_file():
                return base / name
    raise FileNotFoundError(f"none of {list(names)} under {data_dir / folder} or {data_dir}")


def budget(max_length: int) -> Any:
    """bigcode counts the prompt in ``max_length_generation``; the new-token budget is what is left."""

    def max_new_tokens(item: Item, tokenizer: Any) -> int:
        if tokenizer is None:
            return max_length
        return max(1, max_length - len(tokenizer(item.prompt)["input_ids"]))

    return max_new_tokens


def pass_at_1(programs: Sequence[Program], limits: Limits, workers: int | None = None) -> dict[str, float]:
    """Run every program once; pass@1 in percent plus status counts."""
    results: list[Result] = run_programs(programs, limits, workers=workers)
    n = len(results)
    passed = sum(r.passed for r in results)
    return {
        "score": 100.0 * passed / n if n else 0.0,
        "passed": float(passed),
        "n": float(n),
        "timeouts": float(sum(r.status == "timeout" for r in results)),
        "compile_errors": float(sum(r.stage == "compile" for r in results)),
        "sandbox_errors": float(sum(r.status == "error" for r in results)),
    }


def item_from_row(row: dict[str, Any]) -> Item:
    """One HumanEval problem; gold is the test code appended to the program."""
    gold = "\n" + row["test"] + "\n" + f"check({row['entry_point']})"
    meta = {"entry_point": row["entry_point"], "canonical_solution": row.get("canonical_solution", "")}
    return Item(id=row["task_id"], prompt=row["prompt"].strip(), gold=gold, meta=meta)


def load(data_dir: Path | None) -> list[Item]:
    """The 164 problems, from ``HumanEval.jsonl(.gz)`` in ``data_dir`` or from the Hub."""
    if data_dir is None:
        from datasets import load_dataset

        rows = list(load_dataset(HUB_ID, split="test"))
    else:
        rows = read_jsonl(find_file(Path(data_dir), "humaneval", ("HumanEval.jsonl.gz", "HumanEval.jsonl")))
    return [item_from_row(row) for row in rows]


def extract(generation: str, item: Item) -> str:
    """Prompt plus the completion cut at the first stop sequence (``generation`` = new text only)."""
    return item.prompt + truncate_at_stop(generation, STOP)


def program(extracted: str, item: Item) -> Program:
    """The executable program: solution, newline, tests (bigcode code_eval's concatenation)."""
    return Program(extracted + "\n" + item.gold, "python")


def score(extracted: Sequence[str], items: Sequence[Item]) -> dict[str, float]:
    """pass@1 (percent) of the extracted programs."""
    return pass_at_1([program(e, it) for e, it in zip(extracted, items, strict=True)], LIMITS)


BENCHMARK = register(
    Benchmark(
        name="humaneval",
        suite="code",
        protocol="bigcode-evaluation-harness humaneval (stripped prompt), pass@1, greedy",
        load=load,
        max_new_tokens=budget(MAX_LENGTH),
        extract=extract,
        score=score,
        stop=STOP,
    )
)

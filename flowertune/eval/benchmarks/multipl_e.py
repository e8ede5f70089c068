"""MultiPL-E HumanEval in JavaScript and C++ (161 problems each), pass@1, as bigcode-evaluation-harness
tasks ``multiple-js`` / ``multiple-cpp``.

Protocol (bigcode_eval/tasks/multiple.py): prompt = the problem's ``prompt`` stripped; stop sequences =
the dataset's ``stop_tokens`` plus ``"<file_sep>"``; the program is prompt + truncated completion, a
newline, then the problem's ``tests``; C++ is built with ``g++ -std=c++17`` and passes when the binary
exits 0, JavaScript runs under ``node`` and passes on exit 0 (MultiPL-E's evaluators). Budget:
``max_length_generation=1024`` tokens including the prompt. Data: the HF config ``humaneval-{js,cpp}``
at the revision bigcode pins, or DeepSeek-Coder's copies ``humaneval-{js,cpp}.jsonl`` (same prompts and
tests). Deviations: runs in :mod:`flowertune.eval.sandbox` with a 15 s wall limit per run (plus a separate
compile limit), greedy decoding by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from flowertune.eval.benchmark import Benchmark, Item, register
from flowertune.eval.benchmarks.humaneval import budget, find_file, pass_at_1, read_jsonl, truncate_at_stop
from flowertune.eval.sandbox import Limits, Program

HUB_ID = "nuprl/MultiPL-E"
HUB_REVISION = "8a4cb75204eb3d5855a81778db6b95bfc80c9136"  # the revision bigcode-evaluation-harness pins
MAX_LENGTH = 1024
LIMITS = Limits(wall_s=15.0, memory_mb=2048)
# stop_tokens are the same for every problem of a language; bigcode reads them off the first problem
STOP = {"js": ("\nfunction ", "\n/*", "\n//", "\nconsole.log", "<file_sep>"), "cpp": ("\n}", "<file_sep>")}
SANDBOX_LANGUAGE = {"js": "js", "cpp": "cpp"}


def item_from_row(row: dict[str, Any]) -> Item:
    """One problem; gold is the test code appended to the program."""
    return Item(
        id=row["name"],
        prompt=row["prompt"].strip(),
        gold=row["tests"],
        meta={"language": row["language"], "stop_tokens": tuple(row["stop_tokens"])},
    )


def load(language: str, data_dir: Path | None) -> list[Item]:
    """The 161 problems of ``humaneval-{language}`` from the local jsonl or the Hub."""
    if data_dir is None:
        from datasets import load_dataset

        rows = list(load_dataset(HUB_ID, f"humaneval-{language}", split="test", revision=HUB_REVISION))
    else:
        rows = read_jsonl(find_file(Path(data_dir), "multipl_e", (f"humaneval-{language}.jsonl",)))
    items = [item_from_row(row) for row in rows]
    expected = set(STOP[language]) - {"<file_sep>"}
    if items and set(items[0].meta["stop_tokens"]) != expected:
        raise ValueError(f"humaneval-{language} stop tokens {items[0].meta['stop_tokens']} != {sorted(expected)}")
    return items


def extract(language: str, generation: str, item: Item) -> str:
    """Prompt plus the completion cut at the first stop sequence (``generation`` = new text only)."""
    return item.prompt + truncate_at_stop(generation, STOP[language])


def program(language: str, extracted: str, item: Item) -> Program:
    """Solution, newline, tests (MultiPL-E's ``completion + "\\n" + tests``)."""
    return Program(extracted + "\n" + item.gold, SANDBOX_LANGUAGE[language])


def score(language: str, extracted: Sequence[str], items: Sequence[Item]) -> dict[str, float]:
    """pass@1 (percent) of the extracted programs."""
    programs = [program(language, e, it) for e, it in zip(extracted, items, strict=True)]
    return pass_at_1(programs, LIMITS)


def make(language: str) -> Benchmark:
    """The ``multiple-{language}`` benchmark."""
    return Benchmark(
        name=f"multiple-{language}",
        suite="code",
        protocol=f"bigcode-evaluation-harness multiple-{language} (MultiPL-E humaneval-{language}), pass@1, greedy",
        load=partial(load, language),
        max_new_tokens=budget(MAX_LENGTH),
        extract=partial(extract, language),
        score=partial(score, language),
        stop=STOP[language],
    )


JS = register(make("js"))
CPP = register(make("cpp"))

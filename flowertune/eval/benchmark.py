"""What a benchmark is: a small declarative record in one registry; suites are named groups.

A benchmark module (one file under ``flowertune/eval/benchmarks/``) builds a :class:`Benchmark` and
calls :func:`register`. The harness owns batching, generation and the results files; a benchmark only
knows how to load its items, how to prompt, how to read an answer and how to score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowertune.registry import Registry


@dataclass(frozen=True)
class Item:
    """One evaluation item: a ready prompt string plus the gold answer and anything the scorer needs."""

    id: str
    prompt: str
    gold: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark exactly as the FlowerTune leaderboard protocol defines it."""

    name: str
    suite: str
    protocol: str
    # (data_dir or None for the Hub) -> items in the protocol's order
    load: Callable[[Path | None], list[Item]]
    # greedy-decoding budget for one item (tokenizer passed for "length of the gold" rules)
    max_new_tokens: Callable[[Item, Any], int]
    # generation text -> extracted answer
    extract: Callable[[str, Item], Any]
    # (extracted answers, items) -> {"score": float in [0, 100], ...extra metrics}
    score: Callable[[Sequence[Any], Sequence[Item]], dict[str, float]]
    stop: tuple[str, ...] = ()
    # whether prompts are wrapped in the tokenizer's chat template (leaderboard: no)
    chat_template: bool = False
    # per-item verdict for the items file (None: the benchmark has no per-item verdict, e.g. it is in score)
    is_correct: Callable[[Any, Item], bool] | None = None
    # (generation, item) -> index in the generation where the answer ends (None: no answer found); the
    # harness reports how many generations end at an end token right after it
    answer_end: Callable[[str, Item], int | None] | None = None


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
SUITES: dict[str, tuple[str, ...]] = {
    "medical": ("pubmedqa", "medmcqa", "medqa", "careqa"),
    "general-nlp": ("mmlu",),
    "finance": ("fpb", "fiqa", "tfns"),
    "code": ("humaneval", "mbpp", "multiple-js", "multiple-cpp"),
}


def register(benchmark: Benchmark) -> Benchmark:
    """Add a benchmark to the registry (called at import of its module)."""
    return BENCHMARKS.add(benchmark.name, benchmark)

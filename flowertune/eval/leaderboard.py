"""A FlowerTune leaderboard row from ``results.json``: per-benchmark scores, their average, comm. cost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowertune.eval.benchmark import SUITES

MB = 1024**2  # FlowerTune's CommunicationTracker reports bytes / 1024**2 as "MB"
# the leaderboard's column titles; general-nlp shows the three MMLU categories instead of "mmlu"
_TITLES = {
    "pubmedqa": "PubMedQA", "medmcqa": "MedMCQA", "medqa": "MedQA", "careqa": "CareQA",
    "fpb": "FPB", "fiqa": "FIQA", "tfns": "TFNS",
    "humaneval": "HumanEval", "mbpp": "MBPP", "multiple-js": "MultiPL-E (JS)", "multiple-cpp": "MultiPL-E (C++)",
    "stem": "STEM", "social_sciences": "SS", "humanities": "Humanities",
}
_MMLU_COLUMNS = ("stem", "social_sciences", "humanities")


def guess_challenge(results: Mapping[str, Any]) -> str | None:
    """The suite with the most benchmarks present in the results (None when no suite matches)."""
    counts = {suite: sum(name in results for name in names) for suite, names in SUITES.items()}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else None


def challenge_scores(results: Mapping[str, Any], challenge: str) -> dict[str, float | None]:
    """Leaderboard columns of ``challenge`` (None for a benchmark that was not run)."""
    if challenge not in SUITES:
        raise KeyError(f"unknown challenge {challenge!r}; valid challenges: {', '.join(sorted(SUITES))}")
    if challenge == "general-nlp":
        mmlu = results.get("mmlu", {})
        return {col: (float(mmlu[col]) if col in mmlu else None) for col in _MMLU_COLUMNS}
    return {name: (float(results[name]["score"]) if name in results else None) for name in SUITES[challenge]}


def leaderboard_rows(results: Mapping[str, Any], challenge: str | None = None, comm_mb: float | None = None,
                     with_comm: bool = False) -> tuple[str, list[str], list[str], list[str]]:
    """``(challenge, header, score row, n row)`` in the leaderboard's columns: one per benchmark, the average
    (over the benchmarks present, marked ``(partial)`` when some are missing) and, ``with_comm``, the comm. cost.
    The ``n`` row shows how many items each score rests on (a ``--limit`` run shows up there)."""
    challenge = challenge or guess_challenge(results)
    if challenge is None:
        raise ValueError("results.json holds no benchmark of any challenge; pass --challenge")
    scores = challenge_scores(results, challenge)
    present = [v for v in scores.values() if v is not None]
    average = sum(present) / len(present) if present else None
    header = [_TITLES.get(k, k) for k in scores] + ["Avg"]
    row = [f"{v:.2f}" if v is not None else "-" for v in scores.values()]
    row.append(("-" if average is None else f"{average:.2f}") + (" (partial)" if len(present) < len(scores) else ""))
    if challenge == "general-nlp":
        counts = [str(int(results.get("mmlu", {}).get(f"n_{k}", 0))) for k in scores] + [""]
    else:
        counts = [str(results[k]["n"]) if k in results else "-" for k in scores] + [""]
    if with_comm:
        header.append("Comm. Costs")
        row.append("-" if comm_mb is None else f"{comm_mb:,.2f} MB")
        counts.append("")
    return challenge, header, row, counts


def average_score(results: Mapping[str, Any], challenge: str) -> float | None:
    """The leaderboard average of ``challenge`` (None unless every benchmark of it was run)."""
    scores = challenge_scores(results, challenge)
    values = [v for v in scores.values() if v is not None]
    return sum(values) / len(values) if values and len(values) == len(scores) else None


def format_table(results: Mapping[str, Any], challenge: str | None = None, comm_mb: float | None = None,
                 with_comm: bool = False) -> str:
    """A markdown table like the leaderboard's: one column per benchmark, the average, and (``with_comm``) the
    communication cost ``comm_mb`` (of a run directory: ``rundir.communication_mb``)."""
    challenge, header, row, counts = leaderboard_rows(results, challenge, comm_mb, with_comm=with_comm)
    lines = [
        f"Challenge: {challenge}",
        "",
        "| " + " | ".join(["", *header]) + " |",
        "|" + "---|" * (len(header) + 1),
        "| " + " | ".join(["score", *row]) + " |",
        "| " + " | ".join(["n", *counts]) + " |",
    ]
    return "\n".join(lines)

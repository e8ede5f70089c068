"""Shared fixtures of the eval tests: the hand-written fixture data and the real data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

import flowertune.eval.benchmarks  # noqa: F401  (registers the benchmarks)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixture_dir() -> Path:
    """Tiny hand-written files in the shared-data layout."""
    return FIXTURES


@pytest.fixture
def small_mmlu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limit MMLU to the one subject per category that the fixtures hold."""
    from flowertune.eval.benchmarks import mmlu

    monkeypatch.setattr(mmlu, "MMLU_CATEGORY", {
        "stem": ("abstract_algebra",), "social_sciences": ("econometrics",), "humanities": ("formal_logic",),
    })

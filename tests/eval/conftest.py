"""Shared fixtures of the eval tests: the hand-written fixture data and the real data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import flowertune.eval.benchmarks  # noqa: F401  (registers the benchmarks)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def real_data_dir() -> Path:
    """``$FLOWERTUNE_DATA_DIR`` or ``<repo>/../shared/data``; the test is skipped only when it is absent."""
    path = Path(os.environ.get("FLOWERTUNE_DATA_DIR", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"no benchmark data directory at {path}")
    return path

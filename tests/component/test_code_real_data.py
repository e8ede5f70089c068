"""The real benchmark files: every reference solution passes in the sandbox (timings printed with -s)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from flowertune.eval.benchmark import BENCHMARKS
from flowertune.eval.benchmarks import humaneval, mbpp
from flowertune.eval.sandbox import run_programs

DATA_DIR = Path(os.environ.get("FLOWERTUNE_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
pytestmark = [pytest.mark.needs_data,
              pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no benchmark data at {DATA_DIR}")]


def _timed(programs: list, limits: object, label: str) -> list:
    start = time.monotonic()
    results = run_programs(programs, limits)
    elapsed = time.monotonic() - start
    print(f"\n{label}: {len(programs)} programs in {elapsed:.1f}s = {len(programs) / elapsed:.1f} items/s")
    return results


def test_humaneval_canonical_solutions_all_pass() -> None:
    items = humaneval.load(DATA_DIR)
    rows = humaneval.read_jsonl(humaneval.find_file(DATA_DIR, "humaneval", ("HumanEval.jsonl.gz",)))
    assert len(items) == 164
    # the canonical solution continues the unstripped prompt
    programs = [humaneval.program(row["prompt"] + row["canonical_solution"], it) for row, it in zip(rows, items)]
    results = _timed(programs, humaneval.LIMITS, "humaneval")
    failed = [(it.id, r.status, r.stderr_tail[-300:]) for it, r in zip(items, results) if not r.passed]
    assert failed == []


def test_mbpp_reference_code_passes_except_two_known_tasks() -> None:
    items = mbpp.load(DATA_DIR)
    assert len(items) == 500 and items[0].id == "11" and items[-1].id == "510"
    results = _timed([mbpp.program(it.meta["code"], it) for it in items], mbpp.LIMITS, "mbpp")
    failed = {it.id: r for it, r in zip(items, results) if not r.passed}
    # 123: the reference is O(n^2) and needs ~7 s of CPython here, over bigcode's 3 s (and our 5 s) limit;
    # 367: its asserts use trees built by test_setup_code, which bigcode's mbpp task does not run either.
    # Both fail under the original protocol as well, so 498/500 is the reference ceiling.
    # 123 sits near the limit: it times out on a slow or busy machine and passes on a fast one
    assert set(failed) - {"123"} == {"367"}
    assert "123" not in failed or failed["123"].status == "timeout"
    assert "NameError" in failed["367"].stderr_tail


CORRECT = {
    "js": {
        "HumanEval_23_strlen": "\n  return string.length;\n}\n",
        "HumanEval_85_add": "\n  let s = 0;\n  for (let i = 1; i < lst.length; i += 2) {\n"
        "    if (lst[i] % 2 === 0) s += lst[i];\n  }\n  return s;\n}\n",
    },
    "cpp": {
        "HumanEval_23_strlen": "\n    return string.size();\n}\n",
        "HumanEval_85_add": "\n    long s = 0;\n    for (size_t i = 1; i < lst.size(); i += 2) {\n"
        "        if (lst[i] % 2 == 0) s += lst[i];\n    }\n    return s;\n}\n",
    },
}
WRONG = {"js": "\n  return 0;\n}\n", "cpp": "\n    return 0;\n}\n"}


@pytest.mark.parametrize("language", ["js", "cpp"])
def test_multiple_hand_written_solutions(language: str) -> None:
    bench = BENCHMARKS.get(f"multiple-{language}")
    items = {it.id: it for it in bench.load(DATA_DIR)}
    assert len(items) == 161
    chosen = [items[name] for name in CORRECT[language]]
    extracted = [bench.extract(CORRECT[language][it.id], it) for it in chosen]
    extracted += [bench.extract(WRONG[language], it) for it in chosen]
    start = time.monotonic()
    result = bench.score(extracted, chosen + chosen)
    elapsed = time.monotonic() - start
    print(
        f"\nmultiple-{language}: {len(extracted)} programs in {elapsed:.1f}s = {len(extracted) / elapsed:.1f} items/s"
    )
    assert result["passed"] == 2 and result["n"] == 4 and result["compile_errors"] == 0

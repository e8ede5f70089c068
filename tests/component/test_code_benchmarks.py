"""Code benchmarks on hand-written fixtures: exact prompts, stop-sequence truncation, pass@1 scoring."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowertune.eval.benchmark import BENCHMARKS, SUITES
from flowertune.eval.benchmarks import humaneval, mbpp, multipl_e
from tests.conftest import FIXTURES


def test_code_suite_is_registered() -> None:
    for name in SUITES["code"]:
        assert BENCHMARKS.get(name).suite == "code"
    assert BENCHMARKS.get("multiple-cpp").stop == ("\n}", "<file_sep>")


# ---- HumanEval --------------------------------------------------------------------------------------------


def test_humaneval_prompt_is_stripped_and_gold_calls_check() -> None:
    items = humaneval.load(FIXTURES)
    assert [it.id for it in items] == ["Toy/0", "Toy/1"]
    assert (
        items[0].prompt == 'def add_two(x: int) -> int:\n    """ Return x plus two.\n    >>> add_two(1)\n    3\n    """'
    )
    assert (
        items[0].gold
        == "\n\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(1) == 3\n    assert candidate(-2) == 0\n\ncheck(add_two)"
    )


def test_humaneval_truncates_at_the_first_stop_sequence() -> None:
    item = humaneval.load(FIXTURES)[0]
    generation = "\n    return x + 2\n\n\ndef unused():\n    pass\nif __name__ == '__main__':\n    print(1)\n"
    assert humaneval.extract(generation, item) == item.prompt + "\n    return x + 2\n\n"
    assert humaneval.extract("\n    return x + 2<file_sep>junk", item) == item.prompt + "\n    return x + 2"
    assert humaneval.extract("\n    return x + 2\n# trailing comment", item) == item.prompt + "\n    return x + 2"
    # the earliest stop wins, whatever its order in the list
    assert humaneval.truncate_at_stop("a\nprint(1)\nclass B", humaneval.STOP) == "a"


def test_humaneval_scores_pass_at_1() -> None:
    items = humaneval.load(FIXTURES)
    good = humaneval.extract("\n    return x + 2\n", items[0])
    bad = humaneval.extract("\n    return s\n", items[1])
    assert humaneval.score([good, bad], items) == pytest.approx(
        {"score": 50.0, "passed": 1, "n": 2, "timeouts": 0, "compile_errors": 0, "sandbox_errors": 0}
    )


def test_max_new_tokens_counts_the_prompt() -> None:
    def tokenizer(text: str) -> dict[str, list[int]]:
        return {"input_ids": [0] * len(text.split())}

    item = humaneval.load(FIXTURES)[1]
    assert humaneval.BENCHMARK.max_new_tokens(item, tokenizer) == 1024 - len(item.prompt.split())
    assert BENCHMARKS.get("mbpp").max_new_tokens(item, tokenizer) == 2048 - len(item.prompt.split())
    assert humaneval.BENCHMARK.max_new_tokens(item, None) == 1024


# ---- MBPP -------------------------------------------------------------------------------------------------


def test_mbpp_keeps_only_the_test_split_and_builds_the_incoder_prompt() -> None:
    items = mbpp.load(FIXTURES)
    assert [it.id for it in items] == ["11", "510"]
    assert items[0].prompt == '"""\nWrite a function to double a number.\nassert double(2) == 4\n"""\n'
    assert items[0].gold == "assert double(2) == 4\nassert double(0) == 0\nassert double(-1) == -2"


def test_mbpp_truncation_and_scoring() -> None:
    items = mbpp.load(FIXTURES)
    generation = "def double(n):\n    return 2 * n\nassert double(2) == 4\nprint(double(3))\n"
    extracted = mbpp.extract(generation, items[0])
    assert extracted == items[0].prompt + "def double(n):\n    return 2 * n"
    assert mbpp.extract('def rev(s):\n    return s\n"""more docstring', items[1]).endswith("return s")
    wrong = mbpp.extract("def rev(s):\n    return s\n", items[1])
    result = mbpp.score([extracted, wrong], items)
    assert result["score"] == 50.0 and result["passed"] == 1


# ---- MultiPL-E --------------------------------------------------------------------------------------------


def test_multiple_prompts_and_stops() -> None:
    js = BENCHMARKS.get("multiple-js").load(FIXTURES)[0]
    assert js.id == "Toy_0_add_two"
    assert js.prompt == "//Return x plus two.\n// >>> add_two(1)\n// 3\nfunction add_two(x){"
    cpp = BENCHMARKS.get("multiple-cpp").load(FIXTURES)[0]
    assert cpp.prompt.endswith("long add_two(long x) {") and cpp.prompt.startswith("#include<assert.h>")
    extract_js = BENCHMARKS.get("multiple-js").extract
    assert extract_js("\n  return x + 2;\n}\n// junk\nfunction more(){}", js) == js.prompt + "\n  return x + 2;\n}"
    assert extract_js("\n  return x + 2;\n}\nconsole.log(1)", js) == js.prompt + "\n  return x + 2;\n}"
    extract_cpp = BENCHMARKS.get("multiple-cpp").extract
    # the C++ stop "\n}" eats the closing brace; the tests begin with "}" to close the function again
    assert extract_cpp("\n    return x + 2;\n}\nint main() {}", cpp) == cpp.prompt + "\n    return x + 2;"


@pytest.mark.parametrize(
    ("name", "right", "wrong"),
    [
        ("multiple-js", "\n  return x + 2;\n}\n", "\n  return x + 1;\n}\n"),
        ("multiple-cpp", "\n    return x + 2;\n}\n", "\n    return x + 1;\n}\n"),
    ],
)
def test_multiple_scoring(name: str, right: str, wrong: str) -> None:
    bench = BENCHMARKS.get(name)
    item = bench.load(FIXTURES)[0]
    extracted = [bench.extract(right, item), bench.extract(wrong, item), bench.extract("\n  syntax error (((", item)]
    result = bench.score(extracted, [item] * 3)
    assert result["passed"] == 1 and result["n"] == 3
    assert result["compile_errors"] == (1 if name == "multiple-cpp" else 0)


def test_multiple_rejects_unexpected_stop_tokens(tmp_path: Path) -> None:
    source = (FIXTURES / "multipl_e" / "humaneval-js.jsonl").read_text()
    (tmp_path / "humaneval-js.jsonl").write_text(source.replace("console.log", "print"))
    with pytest.raises(ValueError, match="stop tokens"):
        multipl_e.load("js", tmp_path)

"""Training sets built from the real data directory never contain an evaluation item."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from flowertune.eval.benchmark import BENCHMARKS
from flowertune.prompts import leaderboard_prompt, sentiment_instruction
from flowertune.trainsets import BUILDERS, normalise


def _sentence(prompt: str) -> str:
    return prompt.split("\nInput: ", 1)[1].rsplit("\nAnswer: ", 1)[0]


def test_finance_sentiment_rows_are_disjoint_from_every_finance_eval_item(real_data_dir: Path) -> None:
    rows = BUILDERS.get("finance-sentiment")(real_data_dir)
    evaluated = {name: [_sentence(it.prompt) for it in BENCHMARKS.get(name).load(real_data_dir)]
                 for name in ("fpb", "fiqa", "tfns")}
    assert [len(v) for v in evaluated.values()] == [1212, 304, 2388]
    held_out = {normalise(t) for texts in evaluated.values() for t in texts}
    train = [normalise(r["input"]) for r in rows]
    assert not held_out & set(train)
    assert not any(t in set(train) for t in (normalise(s) for s in evaluated["fpb"]))
    # every non-evaluation FPB + FiQA sentence is used once, except repeats of an evaluation sentence
    assert 4000 < len(rows) <= (4846 - 1212) + (1213 - 304) and len(set(train)) == len(train)
    assert {r["output"] for r in rows} == {"negative", "neutral", "positive"}
    assert {r["instruction"] for r in rows} == {sentiment_instruction("news"), sentiment_instruction("tweet")}
    # the news/tweet tag carries no label: each label has about the same share of tweets
    tweets = collections.Counter(r["output"] for r in rows if "tweet" in r["instruction"])
    labels = collections.Counter(r["output"] for r in rows)
    assert all(0.4 < tweets[k] / labels[k] < 0.6 for k in labels), (tweets, labels)


def test_medmcqa_rows_are_disjoint_from_the_medical_mcq_eval_items(real_data_dir: Path) -> None:
    rows = BUILDERS.get("medmcqa")(real_data_dir)
    assert 9900 < len(rows) <= 10000 and {r["output"] for r in rows} == set("ABCD")
    prompts = {normalise(leaderboard_prompt(r["instruction"], r["input"])) for r in rows}
    for name in ("medmcqa", "medqa", "careqa"):
        assert not prompts & {normalise(it.prompt) for it in BENCHMARKS.get(name).load(real_data_dir)}, name


def test_balanced_medmcqa_keeps_each_answer_and_spreads_the_letters(real_data_dir: Path) -> None:
    plain, balanced = BUILDERS.get("medmcqa")(real_data_dir), BUILDERS.get("medmcqa-balanced")(real_data_dir)
    assert len(plain) == len(balanced)

    def answer_text(row: dict) -> str:
        """The answer option's text: the block after "Options:" is "A. ..\nB. ..", in order (a question may hold
        "A. " lines of its own, and an option may span lines)."""
        block = row["input"].split("\n\nOptions:\n", 1)[1]
        starts = [0]
        for letter in "BCD":
            starts.append(block.index(f"\n{letter}. ", starts[-1]) + 1)
        bounds = [*starts, len(block) + 1]
        i = "ABCD".index(row["output"])
        return block[bounds[i] + 3:bounds[i + 1] - 1]

    for a, b in zip(plain, balanced):
        assert a["input"].split("\n\nOptions:")[0] == b["input"].split("\n\nOptions:")[0]
        assert answer_text(a) == answer_text(b)  # the correct option moved with its letter
    letters = collections.Counter(r["output"] for r in balanced)
    assert all(0.23 < letters[k] / len(balanced) < 0.27 for k in "ABCD"), letters
    prompts = {normalise(leaderboard_prompt(r["instruction"], r["input"])) for r in balanced}
    for name in ("medmcqa", "medqa", "careqa"):
        assert not prompts & {normalise(it.prompt) for it in BENCHMARKS.get(name).load(real_data_dir)}, name


def test_build_data_command_writes_jsonl_readable_by_a_run(real_data_dir: Path, tmp_path: Path) -> None:
    from flowertune.cli import main
    from flowertune.config import DataConfig
    from flowertune.data.load import load_partition

    out = tmp_path / "fin.jsonl"
    assert main(["build-data", "finance-sentiment", "--data-dir", str(real_data_dir), "--out", str(out)]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first) == {"instruction", "input", "output"}
    part = load_partition(DataConfig(name=str(out), format="finance"), 0, 10)
    assert 400 < len(part) < 500
    assert main(["build-data", "nope", "--data-dir", str(real_data_dir), "--out", str(out)]) == 2


def test_build_data_checks_its_inputs_and_keeps_what_exists(real_data_dir: Path, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    from flowertune.cli import main

    monkeypatch.delenv("FLOWERTUNE_DATA_DIR", raising=False)
    out = tmp_path / "fin.jsonl"

    def refused(*argv: str) -> str:
        assert main(["build-data", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    assert "unknown training set 'nope'" in refused("nope", "--out", str(out))  # the name first
    assert "no data directory; give --data-dir" in refused("finance-sentiment", "--out", str(out))
    empty = tmp_path / "empty"
    empty.mkdir()
    err = refused("finance-sentiment", "--data-dir", str(empty), "--out", str(out))
    assert "cannot read its raw files" in err and "Sentences_50Agree.txt" in err
    assert not out.exists()
    out.write_text("keep me")
    assert "already exists" in refused("finance-sentiment", "--data-dir", str(real_data_dir), "--out", str(out))
    assert out.read_text() == "keep me"
    assert main(["build-data", "finance-sentiment", "--data-dir", str(real_data_dir), "--out", str(out), "--force"]) == 0
    assert out.read_text() != "keep me"

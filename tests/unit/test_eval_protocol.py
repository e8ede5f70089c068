"""The FlowerTune rules: prompt text, answer extraction, budgets and metric arithmetic."""

from __future__ import annotations

import pytest

from flowertune.eval.benchmark import Item
from flowertune.eval.protocol import (
    accuracy,
    change_target,
    extract_sentiment,
    finance_budget,
    finance_items,
    format_answer,
    format_mcq,
    gold_token_budget,
    leaderboard_correct,
    leaderboard_items,
    leaderboard_score,
)
from flowertune.prompts import format_sentiment, leaderboard_prompt, sentiment_instruction


class CharTokenizer:
    """One token per character: makes token budgets easy to predict."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_mcq_block_appends_question_mark_only_when_needed() -> None:
    assert format_mcq("Which one", ["x", "y"]) == "Question: Which one?\n\nOptions:\nA. x\nB. y"
    assert format_mcq("Pick one.", ["x"]) == "Question: Pick one.\n\nOptions:\nA. x"
    assert format_mcq("Why?", ["x"]).startswith("Question: Why?\n")
    assert format_mcq("It is true that:", ["x"]).startswith("Question: It is true that:?\n")


def test_leaderboard_prompt_frame() -> None:
    assert leaderboard_prompt("Do it.", "BODY") == (
        "<|im_start|>question\nDo it.\nBODY\nThe answer is:\n<|im_end|>\n<|im_start|>answer\n"
    )


@pytest.mark.parametrize(("output", "expected"), [
    ("B", "b"),
    ("b", "b"),
    (" C) because", "c"),
    ("The answer is (B).", "the answer is (b)."),  # first character "t" is not an option: raw output kept
    ("(D)", "d"),
    ("\n## A\nmore", "a"),
    ("", ""),
    ("?!", "?!"),
    ("F", "f"),
])
def test_format_answer_mcq(output: str, expected: str) -> None:
    assert format_answer(output, "mcq") == expected


@pytest.mark.parametrize(("output", "expected"), [
    ("yes", "yes"),
    ("Yes", "yes"),
    ("No.", "no"),
    ("yesyes", "yes"),
    ("noyes", "no"),
    ("Yes, it is", "yes, it is"),  # not a bare yes/no: the raw (lower-cased) output is the prediction
    ("maybe", "maybe"),
    ("Maybe.", "maybe."),
])
def test_format_answer_boolean(output: str, expected: str) -> None:
    assert format_answer(output, "boolean") == expected


def test_maybe_only_counts_when_exact() -> None:
    item = Item(id="1", prompt="", gold="maybe")
    assert leaderboard_correct(format_answer("maybe", "boolean"), item)
    assert leaderboard_correct(format_answer("Maybe", "boolean"), item)  # lower-cased before comparing
    assert not leaderboard_correct(format_answer(" maybe", "boolean"), item)
    assert not leaderboard_correct(format_answer("maybe.", "boolean"), item)


def test_leaderboard_score_is_percent() -> None:
    items = [Item(id=str(i), prompt="", gold=g) for i, g in enumerate("ABCD")]
    assert leaderboard_score(["a", "b", "the answer is c", "a"], items) == {"score": 50.0}
    assert accuracy([]) == 0.0
    assert accuracy([True, False, False]) == pytest.approx(100 / 3)


def test_budget_is_first_gold_of_each_protocol_batch() -> None:
    golds = ["maybe"] + ["no"] * 16 + ["yes"]
    items = leaderboard_items((str(i), "p", g, {}) for i, g in enumerate(golds))
    tok = CharTokenizer()
    assert [gold_token_budget(it, tok) for it in items[:16]] == [5] * 16  # "maybe" starts batch 0
    assert gold_token_budget(items[16], tok) == 2  # batch 1 starts with "no"
    assert gold_token_budget(items[17], tok) == 2


def test_sentiment_prompt() -> None:
    instruction = sentiment_instruction("tweet")
    assert instruction == ("What is the sentiment of this tweet? Please choose an answer from "
                           "{negative/neutral/positive}.")
    assert format_sentiment(instruction, "Stocks up") == f"Instruction: {instruction}\nInput: Stocks up\nAnswer: "
    assert format_sentiment(instruction, "") == f"Instruction: {instruction}\nAnswer: "


@pytest.mark.parametrize(("text", "label"), [
    ("positive", "positive"),
    ("Negative, not Positive", "positive"),  # positive wins wherever it is
    ("negative", "negative"),
    ("NEGATIVE", "neutral"),  # only two spellings are recognised
    ("I cannot tell", "neutral"),  # unparseable counts as neutral
    ("", "neutral"),
])
def test_change_target(text: str, label: str) -> None:
    assert change_target(text) == label


def test_extract_sentiment_reads_only_up_to_the_next_answer() -> None:
    item = finance_items([("0", "Profit rose", "positive", sentiment_instruction("news"))])[0]
    assert extract_sentiment(" negative\n\nInstruction: x\nAnswer: positive", item) == "negative"
    assert extract_sentiment("The news is positive", item) == "positive"
    assert extract_sentiment("", item) == "neutral"


def test_finance_budget_counts_the_longest_prompt_of_the_upstream_batch() -> None:
    rows = [(str(i), "x" * i, "neutral", "I") for i in range(40)]
    items = finance_items(rows)
    tok = CharTokenizer()
    base = len(format_sentiment("I", "x"))  # prompt with one character of input
    assert finance_budget(items[0], tok) == 512 - (base + 30)  # batch 0: inputs of 0..31 characters
    assert finance_budget(items[35], tok) == 512 - (base + 38)  # batch 1: inputs of 32..39 characters

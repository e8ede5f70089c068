"""The FlowerTune leaderboard evaluation rules, shared by the benchmark modules.

Two protocols exist upstream (``benchmarks/flowertune-llm/evaluation`` in the Flower repository):

* **leaderboard QA** (medical and general-nlp): a Meditron instruction, a ``Question:/Options:`` block, the
  ``<|im_start|>question ... <|im_start|>answer`` frame, greedy decoding with ``max_new_tokens`` equal to the
  token length of the *first gold answer of each batch of 16*, and ``format_answer`` to read the output;
* **finance sentiment** (FPB, FiQA, TFNS): ``Instruction:/Input:/Answer:`` prompts, generation up to
  ``max_length=512`` tokens in batches of 32, the text after ``"Answer: "`` mapped by ``change_target``.

The functions here re-implement those rules, including their quirks, so that scores are comparable with the
leaderboard. Each quirk is named where it is reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flowertune.eval.benchmark import Benchmark, Item
from flowertune.prompts import format_sentiment, leaderboard_prompt

# batch sizes of the official eval commands: they fix how the token budgets below are computed
LEADERBOARD_BATCH_SIZE = 16
FINANCE_BATCH_SIZE = 32
FINANCE_MAX_LENGTH = 512
# format_answer keeps a cleaned answer only when it is one of these; "maybe" is missing upstream (quirk)
_ACCEPTED = ("a", "b", "c", "d", "e", "yes", "no")

# ---------------------------------------------------------------------------------------------------------
# leaderboard QA (medical, general-nlp)


def format_mcq(question: str, choices: Sequence[str]) -> str:
    """The ``Question: ...\\n\\nOptions:\\nA. ...`` block; ``?`` is appended unless the question ends in ?/."""
    if not question.endswith("?") and not question.endswith("."):
        question += "?"
    options = "\n".join(f"{chr(65 + i)}. {choice}" for i, choice in enumerate(choices))
    return f"Question: {question}\n\nOptions:\n{options}"


def _clean_ascii(text: str) -> str:
    return text.encode("ascii", "ignore").decode("ascii")


def _clean_boolean(text: str) -> str:
    # only the first matching pair is collapsed, as upstream (an if/elif chain)
    for doubled, single in (("yesyes", "yes"), ("nono", "no"), ("yesno", "yes"), ("noyes", "no")):
        if doubled in text:
            text = text.replace(doubled, single)
            break
    return _clean_ascii(text)


def _clean_mcq(text: str) -> str:
    text = _clean_ascii(text)
    return text[:1] if text else text


def format_answer(output: str, answer_type: str) -> str:
    """The prediction FlowerTune compares with the lower-cased gold (``utils.format_answer``).

    The output is lower-cased; after ``"\\n##"`` only the next line counts; non-alphanumerics become spaces;
    an MCQ answer is its first character, a boolean one has doubled words collapsed. A cleaned answer in
    ``{a,b,c,d,e,yes,no}`` is the prediction, anything else falls back to the whole lower-cased raw output
    (so "maybe" is right only when the raw output is exactly "maybe").
    """
    raw = output.lower()
    text = raw
    if "\n##" in text:
        text = text.split("\n##")[1].split("\n")[0].strip().lower()
    text = re.sub(r"[^a-zA-Z0-9]", " ", text).strip()
    text = re.sub(" +", " ", text)
    if answer_type == "boolean":
        text = _clean_boolean(text)
    elif answer_type == "mcq":
        text = _clean_mcq(text)
    return text if text in _ACCEPTED else raw


def leaderboard_items(records: Iterable[tuple[str, str, str, dict[str, Any]]],
                      batch_size: int = LEADERBOARD_BATCH_SIZE) -> list[Item]:
    """Items from ``(id, prompt, gold, meta)`` in protocol order, each told the gold that sets its budget.

    Upstream uses ``len(tokenizer(batch["gold"][0]))`` for the whole batch, i.e. the first gold of each
    consecutive batch of 16 in protocol order; ``meta["budget_gold"]`` records that gold per item.
    """
    rows = list(records)
    items = []
    for i, (item_id, prompt, gold, meta) in enumerate(rows):
        first_gold = rows[i - i % batch_size][2]
        items.append(Item(id=item_id, prompt=prompt, gold=gold, meta={**meta, "budget_gold": first_gold}))
    return items


def gold_token_budget(item: Item, tokenizer: Any) -> int:
    """``max_new_tokens``: the token length of the gold that starts the item's protocol batch."""
    gold = str(item.meta.get("budget_gold", item.gold))
    return max(1, len(tokenizer(gold, add_special_tokens=False)["input_ids"]))


def leaderboard_correct(prediction: Any, item: Item) -> bool:
    """Correct when the prediction equals the lower-cased gold (``accuracy_score(preds, golds)``)."""
    return prediction == str(item.gold).lower()


def accuracy(flags: Sequence[bool]) -> float:
    """Percentage of true flags (0 for an empty list)."""
    return 100.0 * sum(bool(f) for f in flags) / len(flags) if flags else 0.0


def leaderboard_score(predictions: Sequence[Any], items: Sequence[Item]) -> dict[str, float]:
    """Accuracy in percent."""
    return {"score": accuracy([leaderboard_correct(p, it) for p, it in zip(predictions, items)])}


def mcq_items(rows: Iterable[tuple[str, str, Sequence[str], str]], instruction: str) -> list[Item]:
    """Leaderboard MCQ items from ``(id, question, choices, gold letter)`` rows in protocol order."""
    return leaderboard_items(
        (item_id, leaderboard_prompt(instruction, format_mcq(question, choices)), gold, {})
        for item_id, question, choices, gold in rows
    )


def leaderboard_benchmark(name: str, suite: str, load: Callable[[Path | None], list[Item]],
                          answer_type: str, score: Callable[[Sequence[Any], Sequence[Item]], dict[str, float]]
                          = leaderboard_score) -> Benchmark:
    """A benchmark following the leaderboard QA protocol (greedy, gold-length budget, format_answer)."""
    return Benchmark(
        name=name,
        suite=suite,
        protocol=f"flowertune-{suite}: greedy, max_new_tokens=len(tokens(first gold of batch of "
                 f"{LEADERBOARD_BATCH_SIZE})), format_answer({answer_type}), accuracy %",
        load=load,
        max_new_tokens=gold_token_budget,
        extract=lambda text, item: format_answer(text, answer_type),
        score=score,
        is_correct=leaderboard_correct,
    )


# ---------------------------------------------------------------------------------------------------------
# finance sentiment (FPB, FiQA, TFNS)

# Generation may stop at any of these: the answer text is what follows the prompt's "Answer: " up to the next
# "Answer: " (``split("Answer: ")[1]``), and "positive" anywhere in it decides the label, so once either
# appears in the generation no later token can change the extracted answer (see ``finance_benchmark``).
FINANCE_STOP = ("Answer: ", "positive", "Positive")


def change_target(text: str) -> str:
    """"positive"/"Positive" anywhere wins, else "negative"/"Negative", else neutral (unparseable = neutral)."""
    if "positive" in text or "Positive" in text:
        return "positive"
    if "negative" in text or "Negative" in text:
        return "negative"
    return "neutral"


def extract_sentiment(generation: str, item: Item) -> str:
    """The label of the text between the prompt's ``"Answer: "`` and the next one, as upstream decodes it."""
    return change_target((item.prompt + generation).split("Answer: ")[1])


def finance_items(rows: Iterable[tuple[str, str, str, str]]) -> list[Item]:
    """Items from ``(id, text, gold label, instruction)`` rows in protocol order.

    ``meta["budget_group"]`` holds the prompts of the item's upstream batch of 32: ``max_length=512`` counts
    the left-padded prompt, so the new-token budget is 512 minus the longest prompt of that batch.
    """
    items = [(item_id, format_sentiment(instruction, text), gold) for item_id, text, gold, instruction in rows]
    groups = [tuple(p for _, p, _ in items[i:i + FINANCE_BATCH_SIZE]) for i in range(0, len(items), FINANCE_BATCH_SIZE)]
    return [Item(id=item_id, prompt=prompt, gold=gold, meta={"budget_group": groups[i // FINANCE_BATCH_SIZE]})
            for i, (item_id, prompt, gold) in enumerate(items)]


_GROUP_LENGTHS: dict[tuple[int, tuple[str, ...]], int] = {}


def finance_budget(item: Item, tokenizer: Any) -> int:
    """New tokens allowed by ``max_length=512`` for the item's upstream batch (at least one)."""
    group = item.meta.get("budget_group", (item.prompt,))
    key = (id(tokenizer), group)
    if key not in _GROUP_LENGTHS:
        _GROUP_LENGTHS[key] = max(len(tokenizer(p)["input_ids"]) for p in group)
    return max(1, FINANCE_MAX_LENGTH - _GROUP_LENGTHS[key])


def sentiment_answer_end(generation: str, item: Item) -> int | None:
    """End of the first label word (any case) in the generation, or None when it names no label."""
    found = [m.end() for m in (re.search(w, generation, re.IGNORECASE) for w in ("positive", "negative", "neutral"))
             if m]
    return min(found) if found else None


def sentiment_correct(prediction: Any, item: Item) -> bool:
    """Correct when the label equals ``change_target(gold)``."""
    return prediction == change_target(str(item.gold))


def sentiment_score(predictions: Sequence[Any], items: Sequence[Item]) -> dict[str, float]:
    """Accuracy in percent."""
    return {"score": accuracy([sentiment_correct(p, it) for p, it in zip(predictions, items)])}


def finance_benchmark(name: str, load: Callable[[Path | None], list[Item]]) -> Benchmark:
    """A benchmark following the finance protocol.

    Upstream generates until EOS or ``max_length=512``. We also stop a row at the first of ``FINANCE_STOP``
    in its generation: the extracted label depends only on the text before the next ``"Answer: "`` and on
    whether it contains "positive"/"Positive" (which wins over everything), so the label is final at that
    point; "negative" alone is not final (a later "positive" would override it) and does not stop.
    """
    return Benchmark(
        name=name,
        suite="finance",
        protocol=f"flowertune-finance: greedy, max_length={FINANCE_MAX_LENGTH} (batch {FINANCE_BATCH_SIZE}), "
                 "text after 'Answer: ' -> change_target, accuracy %; early stop once the label is final",
        load=load,
        max_new_tokens=finance_budget,
        extract=extract_sentiment,
        score=sentiment_score,
        stop=FINANCE_STOP,
        is_correct=sentiment_correct,
        answer_end=sentiment_answer_end,
    )


def seeded_test_indices(n: int, test_size: float = 0.25, seed: int = 42) -> list[int]:
    """Row indices of ``Dataset.train_test_split(test_size, seed=seed)["test"]`` for ``n`` rows, in order.

    The split only permutes row positions, so it is computed on an index column and applied to any rows.
    """
    from datasets import Dataset

    split = Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=test_size, seed=seed)
    return list(split["test"]["i"])

"""Prompt frames: how a :class:`~flowertune.data.formats.Record` becomes the text a model is trained on.

A model answers best in the frame it is scored in. The leaderboard scores each challenge in its own frame,
with no chat template: finance as ``Instruction: ... Input: ... Answer: ``, medical and general NLP in
the ``<|im_start|>question ... The answer is:`` frame, code in the benchmarks' docstring form. Those
frames are built here by the prompt builders the benchmarks use (``flowertune/prompts.py``: one source of
truth for training and evaluation), beside the tokenizer's chat template and the FlowerTune templates' Alpaca frame.

Every frame ends the response with the token that stops generation: the chat template's end-of-turn
token in the chat frame, the tokenizer's EOS elsewhere (the evaluation harness stops on both), so a
model trained in a frame learns to answer and stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowertune.data.example import Example
from flowertune.data.formats import Record
from flowertune.data.tokenize import (
    alpaca_prompt,
    build_example,
    chat_prompt,
    end_of_turn_ids,
    eos_ids,
    has_chat_template,
)
from flowertune.prompts import docstring_prompt, format_sentiment, leaderboard_prompt


@dataclass(frozen=True)
class Frame:
    """A prompt frame: the prompt text of a record, and the token ids that end its response."""

    name: str
    help: str
    prompt: Callable[[Any, Record], str]  # (tokenizer, record) -> prompt text
    stop: Callable[[Any], list[int]]  # tokenizer -> ids appended to every response (targets)
    chat: Callable[[Any], bool]  # whether the prompt is a chat-template string (holds its own BOS)

    def example(self, tokenizer: Any, record: Record, max_length: int, stop: list[int] | None = None) -> Example:
        """The tokenized, loss-masked example of ``record`` in this frame."""
        return build_example(tokenizer, self.prompt(tokenizer, record), record.response, max_length,
                             self.stop(tokenizer) if stop is None else stop,
                             special_tokens=not self.chat(tokenizer))


# the frames (catalog entries: flowertune/catalog.py, one per name below in capitals)


def _never(tokenizer: Any) -> bool:
    return False


def _chat(tokenizer: Any, record: Record) -> str:
    if not has_chat_template(tokenizer):
        raise ValueError("data.prompt-frame=chat needs a tokenizer with a chat template; "
                         "use data.prompt-frame=auto or alpaca")
    return chat_prompt(tokenizer, record.text)


def _finance(tokenizer: Any, record: Record) -> str:
    return format_sentiment(record.instruction, record.input)


def _qa(tokenizer: Any, record: Record) -> str:
    body = record.input or record.instruction
    return leaderboard_prompt(record.instruction if record.input else "", body)


def _code(tokenizer: Any, record: Record) -> str:
    return docstring_prompt(record.text)


AUTO = Frame("auto", "the tokenizer's chat template when it has one, else the Alpaca frame (the FlowerTune apps' "
             "choice)", lambda tok, r: chat_prompt(tok, r.text) if has_chat_template(tok) else alpaca_prompt(r.text),
             end_of_turn_ids, has_chat_template)
CHAT = Frame("chat", "the tokenizer's chat template (one user turn)", _chat, end_of_turn_ids, lambda tok: True)
ALPACA = Frame("alpaca", "the FlowerTune templates' Alpaca frame (### Instruction: / ### Response:)",
               lambda tok, r: alpaca_prompt(r.text), eos_ids, _never)
FINANCE = Frame("finance", "the finance evaluation frame: Instruction: ...\\nInput: ...\\nAnswer: ", _finance, eos_ids,
                _never)
QA = Frame("qa", "the medical/general-NLP evaluation frame: <|im_start|>question ... The answer is:", _qa, eos_ids,
           _never)
CODE = Frame("code", "the MBPP evaluation frame: the instruction in a docstring, the code after it", _code, eos_ids,
             _never)

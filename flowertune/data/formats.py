"""Data formats: how a dataset row becomes a :class:`Record` (instruction, input, response).

The four challenge formats reproduce the field mapping of the FlowerTune apps (``reformat`` in their
``dataset.py``): ``Record.text`` is the single user turn those apps train on. The separate
``instruction`` and ``input`` are what the evaluation frames need (finance ``Instruction:/Input:``, the
QA frame's instruction line and question block). ``generic`` takes its column names from the config.
How a record is turned into a prompt string is the prompt frame's job (``flowertune/data/frames.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flowertune.config import DataConfig

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Record:
    """One training example before framing."""

    instruction: str
    input: str
    response: str
    text: str  # the FlowerTune apps' single user turn for this row (chat and Alpaca frames)


Formatter = Callable[[Row, DataConfig], Record]

# the formats below are the catalog entries (flowertune/catalog.py)


class DataFormatError(ValueError):
    """A row lacks the columns its format needs."""


def _get(row: Row, column: str, fmt: str, key: str | None = None) -> str:
    if column not in row:
        fix = f"set {key} to one of them" if key else "pick a data.format that matches the file"
        raise DataFormatError(
            f"data.format={fmt!r} needs column {column!r}, but the dataset has columns "
            f"{sorted(row)}; {fix}"
        )
    value = row[column]
    return "" if value is None else str(value)


def _joined(instruction: str, inp: str) -> str:
    return f"{instruction} {inp}" if inp else instruction


def _record(instruction: str, inp: str, response: str) -> Record:
    return Record(instruction, inp, response, _joined(instruction, inp))


def medical(row: Row, cfg: DataConfig) -> Record:
    """Medical flashcards: the question is in ``input``; the apps drop the fixed ``instruction`` from the turn."""
    question = _get(row, "input", "medical")
    instruction = str(row.get("instruction") or "")
    return Record(instruction, question, _get(row, "output", "medical"), question)


def finance(row: Row, cfg: DataConfig) -> Record:
    """FinGPT sentiment: ``instruction + " " + input`` -> ``output``."""
    return _record(_get(row, "instruction", "finance"), _get(row, "input", "finance"), _get(row, "output", "finance"))


def code(row: Row, cfg: DataConfig) -> Record:
    """Code Alpaca: ``instruction + " " + input`` -> ``output``."""
    return _record(_get(row, "instruction", "code"), _get(row, "input", "code"), _get(row, "output", "code"))


def general_nlp(row: Row, cfg: DataConfig) -> Record:
    """Alpaca-GPT4: ``instruction`` -> ``output`` (the template ignores ``input``)."""
    instruction = _get(row, "instruction", "general-nlp")
    return Record(instruction, str(row.get("input") or ""), _get(row, "output", "general-nlp"), instruction)


def generic(row: Row, cfg: DataConfig) -> Record:
    """Any instruction/response file, columns named by ``data.*-column``."""
    instruction = _get(row, cfg.instruction_column, "generic", "data.instruction-column")
    inp = _get(row, cfg.input_column, "generic", "data.input-column") if cfg.input_column else ""
    return _record(instruction, inp, _get(row, cfg.response_column, "generic", "data.response-column"))

"""Prompt formats: how a dataset row becomes (instruction, response).

The four challenge formats reproduce the field mapping of the FlowerTune apps (``reformat`` in their
``dataset.py``); ``generic`` takes its column names from the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flowertune.config import DataConfig
from flowertune.registry import Registry

Row = Mapping[str, Any]
Formatter = Callable[[Row, DataConfig], tuple[str, str]]

FORMATS: Registry[Formatter] = Registry("data format")


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


@FORMATS.register("medical")
def medical(row: Row, cfg: DataConfig) -> tuple[str, str]:
    """Medical flashcards: the question is in ``input`` (the fixed ``instruction`` is dropped)."""
    return _get(row, "input", "medical"), _get(row, "output", "medical")


@FORMATS.register("finance")
def finance(row: Row, cfg: DataConfig) -> tuple[str, str]:
    """FinGPT sentiment: ``instruction + " " + input`` -> ``output``."""
    return _joined(_get(row, "instruction", "finance"), _get(row, "input", "finance")), _get(row, "output", "finance")


@FORMATS.register("code")
def code(row: Row, cfg: DataConfig) -> tuple[str, str]:
    """Code Alpaca: ``instruction + " " + input`` -> ``output``."""
    return _joined(_get(row, "instruction", "code"), _get(row, "input", "code")), _get(row, "output", "code")


@FORMATS.register("general-nlp")
def general_nlp(row: Row, cfg: DataConfig) -> tuple[str, str]:
    """Alpaca-GPT4: ``instruction`` -> ``output`` (the template ignores ``input``)."""
    return _get(row, "instruction", "general-nlp"), _get(row, "output", "general-nlp")


@FORMATS.register("generic")
def generic(row: Row, cfg: DataConfig) -> tuple[str, str]:
    """Any instruction/response file, columns named by ``data.*-column``."""
    instruction = _get(row, cfg.instruction_column, "generic", "data.instruction-column")
    inp = _get(row, cfg.input_column, "generic", "data.input-column") if cfg.input_column else ""
    response = _get(row, cfg.response_column, "generic", "data.response-column")
    return _joined(instruction, inp), response

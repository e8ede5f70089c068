"""A tokenized training example: the data layer's output and the training loop's input."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100
"""Label of a token that carries no loss (prompt tokens, padding)."""


@dataclass(frozen=True)
class Example:
    """One tokenized example; ``labels`` is ``IGNORE`` on prompt tokens, token ids on the response."""

    input_ids: list[int]
    labels: list[int]

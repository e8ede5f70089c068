"""Tokenization with response-only label masks that are correct for any tokenizer.

The mask is built by construction, not by searching for a response template in the token stream
(the FlowerTune ``[2:]`` slice breaks on BPE tokenizers): the prompt is tokenized on its own, exactly as
the evaluation harness tokenizes a prompt, the response tokens are appended, and the stop token is a
target so the model learns to end its answer. Which prompt string is built is the prompt frame's job
(:mod:`flowertune.data.frames`).
"""

from __future__ import annotations

from typing import Any

from flowertune.data.example import IGNORE, Example

ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer ships a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, text: str) -> str:
    """The tokenizer's chat template: one user turn and the generation prompt."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def alpaca_prompt(text: str) -> str:
    """The Alpaca frame of the FlowerTune templates (``### Instruction:`` / ``### Response:``)."""
    return f"{ALPACA_HEADER}\n### Instruction:\n{text}\n### Response: "


def render_prompt(tokenizer: Any, text: str) -> str:
    """The ``auto`` frame: the tokenizer's chat template when it has one, else the Alpaca frame."""
    return chat_prompt(tokenizer, text) if has_chat_template(tokenizer) else alpaca_prompt(text)


def eos_ids(tokenizer: Any) -> list[int]:
    """``[eos]``: what ends a generation outside a chat template (the harness stops on it)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token (or use data.prompt-frame=chat)")
    return [tokenizer.eos_token_id]


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that close an assistant turn of the chat template (``[eos]`` without a template)."""
    if has_chat_template(tokenizer):
        marker = "\x00RESPONSE\x00"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        suffix = text[text.rfind(marker) + len(marker):]
        ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids)
        for i, t in enumerate(ids):
            if t in special:
                return ids[: i + 1]
    return eos_ids(tokenizer)


def build_example(tokenizer: Any, prompt: str, response: str, max_length: int, stop: list[int],
                  special_tokens: bool = True) -> Example:
    """Tokenize one (prompt, response) pair; labels are IGNORE on every prompt token.

    ``special_tokens`` adds the tokenizer's BOS etc. to the prompt, as the evaluation harness does for a
    plain prompt string; a chat-template prompt already holds them (pass False).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=special_tokens)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    target = response_ids + list(stop)
    ids = (prompt_ids + target)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + target)[:max_length]
    return Example(input_ids=ids, labels=labels)

"""Prompt rendering and response-only label masks that are correct for any tokenizer.

The mask is built by construction, not by searching for a response template in the token stream
(the FlowerTune ``[2:]`` slice breaks on BPE tokenizers): the prompt is tokenized on its own, the
response tokens are appended, and the end-of-turn token is a target so the model learns to stop.
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


def render_prompt(tokenizer: Any, instruction: str) -> str:
    """The prompt text: the tokenizer's chat template (user turn + generation prompt) or the Alpaca frame."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
    return f"{ALPACA_HEADER}\n### Instruction:\n{instruction}\n### Response: "


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that close an assistant turn (the model must learn to produce them)."""
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
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a chat template nor an EOS token; set tokenizer.eos_token")
    return [tokenizer.eos_token_id]


def build_example(tokenizer: Any, instruction: str, response: str, max_length: int,
                  eot: list[int] | None = None) -> Example:
    """Tokenize one (instruction, response) pair; labels are IGNORE on every prompt token."""
    prompt = render_prompt(tokenizer, instruction)
    # the chat template already contains the BOS/special tokens it needs
    prompt_ids = tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    target = response_ids + (eot if eot is not None else end_of_turn_ids(tokenizer))
    ids = (prompt_ids + target)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + target)[:max_length]
    return Example(input_ids=ids, labels=labels)

"""The prompts a model is scored with, shared by the benchmarks that score it and the training frames that
teach it (``data.prompt-frame``): one definition, so a training prompt is byte for byte the prompt the
benchmark sends.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------------------
# leaderboard QA (medical, general-nlp)

CHAT_FRAME = "<|im_start|>question\n{prompt}<|im_end|>\n<|im_start|>answer\n"


def leaderboard_prompt(instruction: str, body: str) -> str:
    """The full prompt string: instruction, body and ``The answer is:`` inside the question/answer frame.

    Every benchmark has an instruction; an empty one (a training row without one) leaves its line out.
    """
    head = f"{instruction}\n" if instruction else ""
    return CHAT_FRAME.format(prompt=f"{head}{body}\nThe answer is:\n")


# ---------------------------------------------------------------------------------------------------------
# finance sentiment (FPB, FiQA, TFNS)

SENTIMENT_INSTRUCTION = "What is the sentiment of this {tag}? Please choose an answer from {{negative/neutral/positive}}."


def sentiment_instruction(tag: str) -> str:
    """The FinGPT instruction for ``tag`` = "news" or "tweet"."""
    return SENTIMENT_INSTRUCTION.format(tag=tag)


def format_sentiment(instruction: str, text: str) -> str:
    """``Instruction: ...\\nInput: ...\\nAnswer: `` (the Input line is left out for an empty input)."""
    prompt = f"Instruction: {instruction}\n"
    if text:
        prompt += f"Input: {text}\n"
    return prompt + "Answer: "


# ---------------------------------------------------------------------------------------------------------
# code (MBPP's InCoder docstring frame)

def docstring_prompt(*lines: str) -> str:
    """The InCoder docstring frame: the lines inside triple quotes, then a newline (the code follows)."""
    body = "\n".join(lines)
    return f'"""\n{body}\n"""\n'

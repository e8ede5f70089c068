"""Prompt frames: each evaluation frame is the evaluation module's own prompt, masks are right, and every
response ends with the token that stops generation, for two tokenizer families per frame."""

import copy

import pytest

from flowertune.catalog import FORMATS, FRAMES
from flowertune.config import DataConfig
from flowertune.data.example import IGNORE
from flowertune.data.formats import Record
from flowertune.data.tokenize import end_of_turn_ids
from flowertune.eval.benchmarks import mbpp, medmcqa
from flowertune.eval.harness import end_token_ids
from flowertune.eval.protocol import finance_items, format_mcq, mcq_items
from flowertune.prompts import sentiment_instruction

LLAMA2_CHAT = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content']"
    " + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
FAMILIES = ["bpe-chatml", "sentencepiece-alpaca"]
SENTENCE = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn ."
MCQ = ("Which vitamin deficiency causes scurvy", ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"], "C")


def tokenizer_for(frame: str, family: str, tokenizers):
    tok = tokenizers[family]
    if frame == "chat" and family == "sentencepiece-alpaca":  # a Llama-2-style template for the 2nd family
        tok = copy.deepcopy(tok)
        tok.chat_template = LLAMA2_CHAT
    return tok


def finance_record() -> Record:
    row = {"instruction": sentiment_instruction("news"), "input": SENTENCE, "output": "positive"}
    return FORMATS.get("finance")(row, DataConfig(format="finance"))


def mcq_record() -> Record:
    question, choices, gold = MCQ
    row = {"instruction": medmcqa.INSTRUCTION, "input": format_mcq(question, choices), "output": gold}
    return FORMATS.get("generic")(row, DataConfig(format="generic"))


def test_finance_frame_is_the_finance_evaluation_prompt(tokenizers_two_families):
    item = finance_items([("0", SENTENCE, "positive", sentiment_instruction("news"))])[0]
    tok = tokenizers_two_families["bpe-chatml"]
    assert FRAMES.get("finance").prompt(tok, finance_record()) == item.prompt
    assert item.prompt.endswith("\nAnswer: ")


def test_qa_frame_is_the_medical_evaluation_prompt(tokenizers_two_families):
    question, choices, gold = MCQ
    item = mcq_items([("q1", question, choices, gold)], medmcqa.INSTRUCTION)[0]
    tok = tokenizers_two_families["bpe-chatml"]
    prompt = FRAMES.get("qa").prompt(tok, mcq_record())
    assert prompt == item.prompt
    assert prompt.endswith("The answer is:\n<|im_end|>\n<|im_start|>answer\n")


def test_qa_frame_without_instruction_keeps_the_frame(tokenizers_two_families):
    tok = tokenizers_two_families["bpe-chatml"]
    prompt = FRAMES.get("qa").prompt(tok, Record("What causes scurvy?", "", "Vitamin C lack.", "What causes scurvy?"))
    assert prompt == "<|im_start|>question\nWhat causes scurvy?\nThe answer is:\n<|im_end|>\n<|im_start|>answer\n"


def test_code_frame_is_the_mbpp_docstring_form(tokenizers_two_families):
    tok = tokenizers_two_families["bpe-chatml"]
    text = "Write a function to add two numbers.\nassert add(1, 2) == 3"
    rec = Record(text, "", "def add(a, b):\n    return a + b", text)
    assert FRAMES.get("code").prompt(tok, rec) == mbpp.build_prompt(*text.split("\n"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("frame", ["auto", "chat", "alpaca", "finance", "qa", "code"])
def test_masks_and_stop_token_per_frame(tokenizers_two_families, frame, family):
    tok = tokenizer_for(frame, family, tokenizers_two_families)
    rec = mcq_record() if frame == "qa" else finance_record()
    f = FRAMES.get(frame)
    ex = f.example(tok, rec, max_length=1024)
    n_prompt = sum(1 for label in ex.labels if label == IGNORE)
    assert all(label == IGNORE for label in ex.labels[:n_prompt])  # prompt first, then only targets
    # the prompt tokens are exactly what the evaluation harness feeds the model for that prompt string
    prompt = f.prompt(tok, rec)
    assert ex.input_ids[:n_prompt] == tok(prompt, add_special_tokens=not f.chat(tok))["input_ids"]
    targets = ex.labels[n_prompt:]
    assert targets == ex.input_ids[n_prompt:]
    stop = end_of_turn_ids(tok) if frame == "chat" or (frame == "auto" and tok.chat_template) else [tok.eos_token_id]
    assert targets[-len(stop):] == stop
    assert stop[-1] in end_token_ids(None, tok)  # the harness ends a generation on it
    assert tok.decode(targets[:-len(stop)], skip_special_tokens=True).strip() == rec.response


def test_chat_frame_needs_a_chat_template(tokenizers_two_families):
    with pytest.raises(ValueError, match="data.prompt-frame=auto"):
        FRAMES.get("chat").example(tokenizers_two_families["sentencepiece-alpaca"], finance_record(), 512)


def test_unknown_frame_is_a_config_error_listing_the_frames():
    from flowertune.config import ConfigError, from_flat

    with pytest.raises(ConfigError, match="data.prompt-frame='chatml' is not valid; choose one of: alpaca, auto"):
        from_flat({"data.prompt-frame": "chatml"})

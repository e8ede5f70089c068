import pytest

from flowertune.catalog import FRAMES
from flowertune.data.example import IGNORE
from flowertune.data.formats import Record
from flowertune.data.tokenize import end_of_turn_ids, render_prompt

FAMILIES = ["bpe-chatml", "sentencepiece-alpaca"]


def record(text: str, response: str) -> Record:
    return Record(text, "", response, text)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_frame_loss_is_only_on_response_and_end_of_turn(tokenizers_two_families, family):
    tok = tokenizers_two_families[family]
    instruction, response = "Which vitamin deficiency causes scurvy?", "Vitamin C deficiency causes scurvy."
    ex = FRAMES.get("auto").example(tok, record(instruction, response), max_length=512)
    prompt_ids = tok(render_prompt(tok, instruction), add_special_tokens=family != "bpe-chatml")["input_ids"]
    n_prompt = len(prompt_ids)
    assert ex.input_ids[:n_prompt] == prompt_ids
    assert all(label == IGNORE for label in ex.labels[:n_prompt])
    targets = ex.labels[n_prompt:]
    assert targets == ex.input_ids[n_prompt:]
    # the model learns to stop: the last target is the end-of-turn token
    assert targets[-1] == end_of_turn_ids(tok)[-1] == tok.eos_token_id
    assert tok.decode(targets[:-1]).strip() == response


def test_auto_frame_per_family(tokenizers_two_families):
    chat = render_prompt(tokenizers_two_families["bpe-chatml"], "Q?")
    assert chat == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    alpaca = render_prompt(tokenizers_two_families["sentencepiece-alpaca"], "Q?")
    assert alpaca.startswith("Below is an instruction") and alpaca.endswith("### Instruction:\nQ?\n### Response: ")


def test_sentencepiece_prompt_starts_with_bos(tokenizers_two_families):
    tok = tokenizers_two_families["sentencepiece-alpaca"]
    ex = FRAMES.get("auto").example(tok, record("Q?", "A."), max_length=512)
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids.count(tok.bos_token_id) == 1


def test_truncation_keeps_masks_aligned(tokenizers_two_families):
    tok = tokenizers_two_families["bpe-chatml"]
    ex = FRAMES.get("auto").example(tok, record("Q?", "a long answer " * 50), max_length=40)
    assert len(ex.input_ids) == len(ex.labels) == 40

"""Shared fixtures: tiny tokenizers of two families and a tiny random-init Llama, built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "What is the first-line treatment of anaphylaxis? Intramuscular epinephrine is the first-line treatment.",
    "Metformin is a biguanide; it lowers hepatic glucose production.",
    "Which vitamin deficiency causes scurvy? Vitamin C deficiency causes scurvy.",
    "The answer is (B). Yes no maybe. def add(a, b): return a + b",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Response: What is 12 plus 30? 12 plus 30 is 42.",
] * 20


def bpe_tokenizer():
    """A GPT-2/Qwen/SmolLM-style byte-level BPE tokenizer with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    return fast


def sentencepiece_tokenizer():
    """A Llama-2/Mistral-style Metaspace Unigram tokenizer with BOS/EOS and no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def tokenizers_two_families():
    return {"bpe-chatml": bpe_tokenizer(), "sentencepiece-alpaca": sentencepiece_tokenizer()}


def build_tiny_model(path: Path, tokenizer) -> Path:
    """Save a 2-layer random-init Llama and its tokenizer to ``path`` (loadable by model.name)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), bpe_tokenizer())


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory) -> Path:
    """A small medical-flashcards-style jsonl (the shipped sample, truncated)."""
    import json

    rows = [json.loads(line) for line in (REPO / "flowertune/samples/medical_qa.jsonl").read_text().splitlines()][:80]
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FIXTURES = REPO / "tests" / "fixtures"  # tiny hand-written benchmark files in the shared-data layout


@pytest.fixture
def fixture_dir() -> Path:
    """Tiny hand-written files in the shared-data layout (with the benchmarks registered)."""
    import flowertune.eval.benchmarks  # noqa: F401  (registers the benchmarks)

    return FIXTURES


@pytest.fixture
def small_mmlu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limit MMLU to the one subject per category that the fixtures hold."""
    from flowertune.eval.benchmarks import mmlu

    monkeypatch.setattr(mmlu, "MMLU_CATEGORY", {
        "stem": ("abstract_algebra",), "social_sciences": ("econometrics",), "humanities": ("formal_logic",),
    })


@pytest.fixture
def real_data_dir() -> Path:
    """``$FLOWERTUNE_DATA_DIR`` or ``<repo>/../shared/data``; the test is skipped only when it is absent."""
    path = Path(os.environ.get("FLOWERTUNE_DATA_DIR", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"no benchmark data directory at {path}")
    return path


_SESSION_START: list[float] = []


def pytest_collection_modifyitems(items) -> None:
    """Every test that reads the real data directory carries the ``needs_data`` marker."""
    for item in items:
        if "real_data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)


def pytest_sessionstart(session) -> None:
    import time

    _SESSION_START.append(time.time())


def pytest_terminal_summary(terminalreporter) -> None:
    """The elapsed time against CI's budget (set-up included when started by scripts/test.sh)."""
    import time

    now = time.time()
    line = f"elapsed: tests {(now - _SESSION_START[0]) / 60:.1f} min"
    if start := os.environ.get("FLOWERTUNE_TEST_T0"):
        line += f", set-up and tests {(now - float(start)) / 60:.1f} min (CI budget: 30 min on the slowest machine kind)"
    terminalreporter.write_line(line)

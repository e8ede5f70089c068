"""A tiny random-init Llama with a LoRA adapter, built offline, and random instruction-like examples."""

from __future__ import annotations

import random

import pytest
import torch

from flowertune.train.batching import IGNORE, Example

VOCAB = 256


@pytest.fixture
def tiny_llama():
    """A 2-layer Llama (hidden 64, vocab 256, tied embeddings) with LoRA on q/v, dropout off, fp32."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    # LoRA B starts at zero; make the adapter non-trivial so gradients reach A too
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def make_examples(lengths: list[int], seed: int = 0) -> list[Example]:
    """Examples with a prompt (labels IGNORE) of about half their length and a response."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(3, VOCAB) for _ in range(n)]
        k = rng.randrange(0, n)
        out.append(Example(ids, [IGNORE] * k + ids[k:]))
    return out


@pytest.fixture
def examples() -> list[Example]:
    return make_examples([5, 17, 40, 9, 1, 23, 12, 33])

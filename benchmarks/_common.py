"""Pieces shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

from pathlib import Path

import torch

from flowertune.models.source import local_path


class FakeGrid:
    """The two SuperNodes a strategy samples from."""

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def tiny_model_dir(root: Path) -> str:
    """A 2-layer random-init Llama with the embedded model's tokenizer, saved as a model directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(local_path("embedded"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    path = root / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)

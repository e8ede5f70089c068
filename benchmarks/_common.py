"""Pieces shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def template_model(path: str, r: int, alpha: int, dropout: float, quantize: bool = False) -> Any:
    """The FlowerTune template's model: LoRA on q_proj,v_proj over a base loaded as the template does.

    ``quantize``: ``BitsAndBytesConfig(load_in_4bit=True)`` with the bitsandbytes defaults (fp4, fp32
    compute) and ``prepare_model_for_kbit_training`` with gradient checkpointing (CUDA only); otherwise fp32
    weights with gradient checkpointing.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if quantize else torch.float32}
    if quantize:
        kwargs.update(quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map={"": 0})
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)

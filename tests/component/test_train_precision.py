"""Training dtypes: frozen base in the training dtype, trainable adapter in fp32, cache off."""

from __future__ import annotations

import torch

from flowertune.models import dtype
from flowertune.models.dtype import training_dtype
from flowertune.train.precision import prepare_for_training


def test_auto_dtype_follows_cpu_bf16_support(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(dtype, "cpu_has_fast_bf16", lambda: True)
    assert training_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(dtype, "cpu_has_fast_bf16", lambda: False)
    assert training_dtype("auto", cpu) == torch.float32
    assert training_dtype("float32", cpu) == torch.float32  # an explicit choice wins


def test_prepare_keeps_adapter_fp32(tiny_llama):
    prepare_for_training(tiny_llama, dtype="bfloat16", attn_implementation="eager")
    trainable = [p for p in tiny_llama.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for p in tiny_llama.parameters() if not p.requires_grad)
    assert tiny_llama.config.use_cache is False
    assert tiny_llama.config._attn_implementation == "eager"
    # tied input/output embeddings stay one tensor
    base = tiny_llama.get_base_model()
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight

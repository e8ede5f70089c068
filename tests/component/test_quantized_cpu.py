"""4-bit QLoRA on the CPU (bitsandbytes' CPU backend): NF4 + double quant base, kbit preparation, 8-bit AdamW,
the same client path as a federation, and adapters that move between 4-bit and full-precision bases."""

from __future__ import annotations

import logging

import pytest
import torch

from flowertune.config import from_flat
from flowertune.federation import client_runtime
from flowertune.models.adapter import get_arrays
from flowertune.train.loop import evaluate_loss, train_round

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def config(model_dir, data, bits: int, optim: str = "paged_adamw_8bit"):
    return from_flat({"model.name": str(model_dir), "static.dataset.name": str(data), "model.quantization": bits,
                      "model.dtype": "float32", "train.training-arguments.optim": optim, "train.seq-length": 96,
                      "train.training-arguments.max-steps": 6, "model.lora.target-modules": TARGETS})


def test_4bit_qlora_trains_on_cpu_with_8bit_adamw(tiny_model_dir, tiny_data_file, caplog):
    import bitsandbytes as bnb

    cfg = config(tiny_model_dir, tiny_data_file, 4)
    rt = client_runtime.runtime(cfg)
    linear = rt.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(linear, bnb.nn.Linear4bit)
    assert linear.weight.quant_type == "nf4" and linear.weight.quant_state.nested  # double quantization
    data = client_runtime.client_data(cfg, rt, 0, 1)
    before, _ = evaluate_loss(rt.model, data.validation, 4, rt.pad_id)
    with caplog.at_level(logging.INFO, logger="flowertune.train.loop"):
        result = train_round(rt.model, data.train, cfg.train, 1e-2, rt.pad_id, 0, 0.0)
    after, _ = evaluate_loss(rt.model, data.validation, 4, rt.pad_id)
    assert after < before and torch.isfinite(torch.tensor(result.loss))
    assert any("AdamW8bit" in r.getMessage() for r in caplog.records)  # the swap is said, not silent
    assert sorted({k.split(".")[-2] for k in get_arrays(rt.model)}) == ["lora_A", "lora_B"]


@pytest.mark.parametrize("bits", [4, 8])
def test_adapter_moves_between_quantized_and_full_precision_bases(tiny_model_dir, tiny_data_file, tmp_path, bits):
    """Train on a quantized base, load the adapter on the fp32 base and back: same keys, close logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from flowertune.models.load import load_model

    cfg = config(tiny_model_dir, tiny_data_file, bits, optim="adamw_8bit")
    rt = client_runtime.runtime(cfg)
    data = client_runtime.client_data(cfg, rt, 0, 1)
    train_round(rt.model, data.train, cfg.train, 1e-2, rt.pad_id, 0, 0.0)
    rt.model.save_pretrained(tmp_path / "adapter")
    x = torch.tensor([data.validation[0].input_ids[:32]])
    full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter").eval()
    quant = PeftModel.from_pretrained(load_model(cfg.model), tmp_path / "adapter").eval()
    with torch.no_grad():
        a, b = full(input_ids=x).logits, quant(input_ids=x).logits
    diff = (a - b).abs().max().item()
    print(f"\n{bits}-bit base vs fp32 base, same adapter: max |logit diff| {diff:.4f} (logit std {a.std():.3f})")
    with torch.no_grad(), full.disable_adapter():
        plain = full(input_ids=x).logits
    effect = (a - plain).abs().max().item()  # what the trained adapter changes
    assert torch.isfinite(b).all() and 0 < diff < 0.1 * a.std().item() and diff < effect
    assert {k for k in full.state_dict() if "lora_" in k} == {k for k in quant.state_dict() if "lora_" in k}

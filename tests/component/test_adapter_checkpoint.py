"""A checkpoint written from aggregated arrays (no base model on the server) loads with PEFT."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from flowertune.config import AdapterConfig, ModelConfig
from flowertune.models.adapter import (
    ADAPTER_CONFIG,
    AdapterUpdateError,
    adapter_config_dict,
    attach_adapter,
    get_arrays,
    save_adapter,
    set_arrays,
)


def peft_model(model_dir, dora=False, seed=0):
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return attach_adapter(base, AdapterConfig(r=4, alpha=8, dropout=0.0, use_dora=dora), ModelConfig(name=str(model_dir)),
                          seed=seed)


@pytest.mark.parametrize("dora", [False, True])
def test_checkpoint_loads_with_peft_and_gives_same_logits(tiny_model_dir, tmp_path, dora):
    model = peft_model(tiny_model_dir, dora)
    arrays = get_arrays(model)
    rng = np.random.default_rng(0)
    arrays = {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) for k, v in arrays.items()}
    set_arrays(model, arrays)  # as if aggregated: every array changed
    out = save_adapter(arrays, adapter_config_dict(model), tmp_path / "round-2")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not list(tmp_path.glob(".*tmp*"))
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    x = torch.randint(0, 300, (2, 12))
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-5, atol=1e-5)
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=x).logits
    assert not torch.allclose(base_logits, model(input_ids=x).logits, atol=1e-4)  # the adapter matters
    assert json.loads((out / ADAPTER_CONFIG).read_text())["use_dora"] is dora


def test_overwrite_is_atomic_and_a_failed_write_keeps_the_old_checkpoint(tiny_model_dir, tmp_path):
    model = peft_model(tiny_model_dir)
    arrays, cfg = get_arrays(model), adapter_config_dict(model)
    target = save_adapter(arrays, cfg, tmp_path / "final_adapter")
    before = (target / "adapter_model.safetensors").read_bytes()
    bad = {**arrays, next(iter(arrays)): object()}  # not an array: serialisation fails midway
    with pytest.raises((TypeError, AttributeError, ValueError)):
        save_adapter(bad, cfg, target)
    assert (target / "adapter_model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["final_adapter"]


def test_set_arrays_rejects_wrong_shapes_and_nan(tiny_model_dir):
    model = peft_model(tiny_model_dir)
    arrays = get_arrays(model)
    k = next(iter(arrays))
    with pytest.raises(AdapterUpdateError, match="shape"):
        set_arrays(model, {**arrays, k: np.zeros((1, 1), np.float32)})
    with pytest.raises(AdapterUpdateError, match="NaN"):
        set_arrays(model, {**arrays, k: np.full(arrays[k].shape, np.nan, np.float32)})
    with pytest.raises(AdapterUpdateError, match="missing"):
        set_arrays(model, {kk: v for kk, v in arrays.items() if kk != k})


def test_adapter_init_is_seeded(tiny_model_dir):
    a, b, c = (get_arrays(peft_model(tiny_model_dir, seed=s)) for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)

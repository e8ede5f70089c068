"""The target-only loss equals the full-logits loss, in value and gradients, padded or packed."""

from __future__ import annotations

import pytest
import torch

from flowertune.train.batching import collate
from flowertune.train.loss import causal_lm_loss, linear_cross_entropy
from flowertune.train.precision import prepare_for_training


def loss_and_grads(model, batch, fused: bool):
    model.zero_grad(set_to_none=True)
    loss, n = causal_lm_loss(model, batch, fused=fused)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), n, grads


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_fused_equals_full_logits_fp32(tiny_llama, examples, mode):
    batch = collate(examples, pad_id=0, mode=mode, pack_length=48)
    ref, n_ref, g_ref = loss_and_grads(tiny_llama, batch, fused=False)
    got, n, g = loss_and_grads(tiny_llama, batch, fused=True)
    assert n == n_ref > 0
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-6)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], atol=1e-5, rtol=1e-4)


def test_packed_equals_padded(tiny_llama, examples):
    padded, n_pad, g_pad = loss_and_grads(tiny_llama, collate(examples, 0, mode="pad"), fused=True)
    packed, n_pack, g_pack = loss_and_grads(tiny_llama, collate(examples, 0, mode="pack", pack_length=48), fused=True)
    assert n_pack == n_pad
    torch.testing.assert_close(packed, padded, atol=1e-4, rtol=1e-5)
    for k in g_pad:
        torch.testing.assert_close(g_pack[k], g_pad[k], atol=1e-5, rtol=1e-4)


def test_fused_equals_full_logits_bf16(tiny_llama, examples):
    prepare_for_training(tiny_llama, dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in tiny_llama.parameters() if p.requires_grad)
    assert all(p.dtype == torch.bfloat16 for p in tiny_llama.parameters() if not p.requires_grad)
    batch = collate(examples, pad_id=0, mode="pack", pack_length=48)
    ref, _, g_ref = loss_and_grads(tiny_llama, batch, fused=False)
    got, _, g = loss_and_grads(tiny_llama, batch, fused=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.0, rtol=1e-3)
    for k in g_ref:
        assert g[k].dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(g[k].flatten(), g_ref[k].flatten(), dim=0)
        assert cos > 0.99, (k, float(cos))


def test_fused_under_autocast(tiny_llama, examples):
    batch = collate(examples, pad_id=0, mode="pack", pack_length=48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = causal_lm_loss(tiny_llama, batch, fused=False)
        got, _ = causal_lm_loss(tiny_llama, batch, fused=True)
    torch.testing.assert_close(got, ref, atol=0.0, rtol=1e-3)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_linear_cross_entropy_chunks(chunk):
    torch.manual_seed(1)
    h = torch.randn(10, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64)
    b = torch.randn(50, dtype=torch.float64)
    t = torch.randint(0, 50, (10,))
    ref = torch.nn.functional.cross_entropy(h @ w.T + b, t, reduction="sum")
    (g_ref,) = torch.autograd.grad(ref * 2.5, h)
    got = linear_cross_entropy(h, w, t, b, chunk=chunk)
    (g,) = torch.autograd.grad(got * 2.5, h)
    torch.testing.assert_close(got.double(), ref)
    torch.testing.assert_close(g, g_ref)


def test_trainable_head_falls_back_to_autograd():
    torch.manual_seed(2)
    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    t = torch.randint(0, 20, (6,))
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum")
    ref_grads = torch.autograd.grad(ref, (h, w))
    got = linear_cross_entropy(h, w, t, chunk=4)
    for a, b in zip(torch.autograd.grad(got, (h, w)), ref_grads):
        torch.testing.assert_close(a, b)


def test_plain_model_without_peft(examples):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    batch = collate(examples, pad_id=0, mode="pad")
    ref, n_ref = causal_lm_loss(model, batch, fused=False)
    got, n = causal_lm_loss(model, batch, fused=True)
    assert n == n_ref
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-6)


@torch.no_grad()
def test_fused_without_grad_for_eval(tiny_llama, examples):
    batch = collate(examples, pad_id=0, mode="pack", pack_length=48)
    ref, n_ref = causal_lm_loss(tiny_llama, batch, fused=False)
    got, n = causal_lm_loss(tiny_llama, batch, fused=True)
    assert n == n_ref and not got.requires_grad
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-6)

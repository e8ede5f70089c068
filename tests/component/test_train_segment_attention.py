"""The segment attention (training default): same logits, loss and gradients as masked sdpa, no crossing."""

from __future__ import annotations

import pytest
import torch

from flowertune.train.attention import NAME, register, segment_kwargs, segment_lengths, uses_segments
from flowertune.train.batching import collate
from flowertune.train.loop import pack_length_for
from flowertune.train.loss import causal_lm_loss
from flowertune.train.precision import prepare_for_training

from .conftest import make_examples


def grads_of(model, batch):
    model.zero_grad(set_to_none=True)
    loss, n = causal_lm_loss(model, batch)
    loss.backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def test_segment_lengths_from_restarting_positions():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    assert segment_lengths(pos) == [[3, 2, 4], [6, 3]]


def test_prepare_switches_to_segments_by_default(tiny_llama):
    prepare_for_training(tiny_llama, dtype="float32")
    assert uses_segments(tiny_llama)
    assert pack_length_for(tiny_llama) is None  # whole micro-batch in one row
    prepare_for_training(tiny_llama, dtype="float32", attn_implementation="sdpa")
    assert not uses_segments(tiny_llama) and pack_length_for(tiny_llama) == 512


@torch.no_grad()
def test_one_row_pack_never_attends_across_examples(tiny_llama):
    tiny_llama.set_attn_implementation(register())
    examples = make_examples([7, 31, 1, 19, 44, 12], seed=3)
    batch = collate(examples, pad_id=0, mode="pack", pack_length=None)
    assert batch["input_ids"].shape == (1, sum(len(e.input_ids) for e in examples))  # one row, no padding
    body = tiny_llama.get_base_model()
    packed = body(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                  **segment_kwargs(batch)).logits[0]
    tiny_llama.set_attn_implementation("sdpa")
    ids, at = batch["input_ids"][0], 0
    for n in segment_lengths(batch["position_ids"])[0]:
        alone = body(input_ids=ids[None, at : at + n], use_cache=False).logits[0]
        torch.testing.assert_close(packed[at : at + n], alone, atol=1e-5, rtol=1e-5)
        at += n
    assert at == len(ids)


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_loss_and_grads_equal_masked_sdpa(tiny_llama, examples, mode):
    tiny_llama.set_attn_implementation("sdpa")
    ref, n_ref, g_ref = grads_of(tiny_llama, collate(examples, 0, mode=mode, pack_length=48))
    tiny_llama.set_attn_implementation(register())
    got, n, g = grads_of(tiny_llama, collate(examples, 0, mode=mode, pack_length=None))
    assert n == n_ref > 0
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], atol=1e-5, rtol=1e-4)


def test_bf16_close_to_fp32_reference(tiny_llama, examples):
    ref, _, g_ref = grads_of(tiny_llama, collate(examples, 0, mode="pad"))
    prepare_for_training(tiny_llama, dtype="bfloat16")  # segments + bf16 base, the training default
    got, _, g = grads_of(tiny_llama, collate(examples, 0, mode="pack", pack_length=None))
    torch.testing.assert_close(got, ref, atol=0.0, rtol=2e-2)
    for k in g_ref:
        cos = torch.nn.functional.cosine_similarity(g[k].flatten(), g_ref[k].flatten(), dim=0)
        assert cos > 0.99, (k, float(cos))


def test_left_padding_is_refused(tiny_llama):
    tiny_llama.set_attn_implementation(register())
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "labels": torch.ones(2, 5, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])}
    with pytest.raises(ValueError, match="right-padded"):
        causal_lm_loss(tiny_llama, batch)


def test_explicit_4d_mask_is_refused(tiny_llama):
    tiny_llama.set_attn_implementation(register())
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match=NAME):
        tiny_llama(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=mask, use_cache=False)

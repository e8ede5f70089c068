"""Packed and padded batches: token counts, layout, and that attention never crosses examples."""

from __future__ import annotations

import pytest
import torch

from flowertune.train.batching import IGNORE, collate, count_real_tokens, count_targets, pack_rows

from .conftest import make_examples


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_counts_exclude_padding(examples, mode):
    batch = collate(examples, pad_id=0, mode=mode, pack_length=48)
    assert count_real_tokens(batch) == sum(len(e.input_ids) for e in examples)
    assert batch["input_ids"].numel() > count_real_tokens(batch)  # there is padding to exclude
    # a target is a labelled token that has a token before it in its own example
    want = sum(sum(label != IGNORE for label in e.labels[1:]) for e in examples)
    assert count_targets(batch) == want


def test_pack_rows_respects_capacity():
    lengths = [30, 5, 17, 40, 9, 60, 1, 23]
    rows = pack_rows(lengths, capacity=48)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        assert len(row) == 1 or sum(lengths[i] for i in row) <= 48


def test_pack_layout(examples):
    batch = collate(examples, pad_id=0, mode="pack", pack_length=48)
    assert "attention_mask" not in batch  # a 2-D mask would switch off transformers' packed-sequence masking
    pos, real, labels = batch["position_ids"], batch["real_mask"], batch["labels"]
    starts = (pos == 0) & (real == 1)
    assert int(starts.sum()) == len(examples)
    assert (labels[starts] == IGNORE).all()  # never predict the next example's first token
    assert (labels[real == 0] == IGNORE).all()


def test_unknown_mode(examples):
    with pytest.raises(ValueError, match="pack"):
        collate(examples, pad_id=0, mode="bucket")


@torch.no_grad()
def test_packing_never_attends_across_examples(tiny_llama):
    """Each packed example's logits equal those of the example run alone."""
    examples = make_examples([7, 31, 1, 19, 44, 12], seed=3)
    batch = collate(examples, pad_id=0, mode="pack", pack_length=64)
    assert batch["input_ids"].shape[0] < len(examples)  # really packed
    packed = tiny_llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    found = 0
    for r in range(batch["input_ids"].shape[0]):
        pos, ids = batch["position_ids"][r], batch["input_ids"][r]
        starts = [i for i in range(len(pos)) if pos[i] == 0 and batch["real_mask"][r, i] == 1]
        for s in starts:
            n = next(len(e.input_ids) for e in examples if e.input_ids == ids[s : s + len(e.input_ids)].tolist())
            alone = tiny_llama(input_ids=ids[None, s : s + n], use_cache=False).logits[0]
            torch.testing.assert_close(packed[r, s : s + n], alone, atol=1e-5, rtol=1e-5)
            found += 1
    assert found == len(examples)


@torch.no_grad()
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_isolated_with_both_attention_kernels(tiny_llama, attn):
    tiny_llama.set_attn_implementation(attn)
    a, b = make_examples([13, 21], seed=5)
    batch = collate([a, b], pad_id=0, mode="pack", pack_length=64)
    assert batch["input_ids"].shape == (1, 34)
    packed = tiny_llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    first = 21 if batch["input_ids"][0, :21].tolist() == b.input_ids else 0  # longest goes first
    alone = tiny_llama(input_ids=torch.tensor([a.input_ids]), use_cache=False).logits[0]
    torch.testing.assert_close(packed[first : first + 13], alone, atol=1e-5, rtol=1e-5)

"""The causal-LM loss on response tokens only, without full-vocabulary logits for prompt tokens.

The fast path runs the decoder body to get hidden states, keeps the positions whose next-token label is a
target, and applies the LM head + cross-entropy to those only, in chunks, computing the gradient with
respect to the hidden states in the same pass (:class:`_LinearCrossEntropy`). Neither the ``[tokens,
vocab]`` logits nor their softmax are ever kept for backward: for SmolLM2 (vocab 49,152) that is 200 kB per
token in fp32. Models whose head is not a plain linear layer (logit soft-capping or scaling) fall back to
full logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from flowertune.train.attention import segment_kwargs, uses_segments
from flowertune.train.batching import IGNORE

CHUNK = 1024
"""Target rows per LM-head chunk: 1024 × 49,152 fp32 logits = 200 MB transient."""

_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
_HEAD_MODIFIERS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def causal_lm_loss(
    model: Any, batch: dict[str, torch.Tensor], fused: bool = True, chunk: int = CHUNK
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and the number of target tokens.

    Returning the sum (not the mean) lets the caller weight micro-batches by their token counts. Works for
    padded and packed batches (:func:`flowertune.train.batching.collate`) and for plain or PEFT-wrapped
    causal LMs. ``fused=False`` computes full-vocabulary logits (the reference path).
    """
    inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
    if uses_segments(model):
        inputs.update(segment_kwargs(batch))
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    n = int(keep.sum())
    parts = _body_and_head(model) if fused else None
    if parts is None:
        logits = model(**inputs, use_cache=False).logits[:, :-1, :]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        return loss, n
    body, head = parts
    hidden = body(**inputs, use_cache=False).last_hidden_state[:, :-1, :]
    loss = linear_cross_entropy(hidden[keep], head.weight, targets[keep], head.bias, chunk=chunk)
    return loss, n


def _body_and_head(model: Any) -> tuple[Any, torch.nn.Linear] | None:
    """The decoder body and the linear LM head of ``model``, or None when the fast path does not apply."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    body, head = get_decoder(), get_head()
    if body is None or body is base or type(head) is not torch.nn.Linear:
        return None
    config = getattr(base, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _HEAD_MODIFIERS):
        return None
    return body, head


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")`` without keeping the logits.

    ``hidden`` is ``[n, d]``, ``targets`` ``[n]`` (no ``IGNORE`` entries). The head's logits are computed in
    the head's dtype and the softmax in fp32, like the full-logits path. A head that requires grad (e.g.
    a trained LM head) takes the plain chunked path with autograd.
    """
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        for s in range(0, hidden.size(0), chunk):
            logits = _upcast(F.linear(hidden[s : s + chunk], weight, bias))
            total = total + F.cross_entropy(logits, targets[s : s + chunk], reduction="sum")
        return total
    return _LinearCrossEntropy.apply(hidden, weight, targets, bias, chunk)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 for softmax maths (bf16/fp16 logits are upcast, fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed CE of a frozen linear head; d loss / d hidden is computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                bias: torch.Tensor | None, chunk: int) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if need_grad else None
        total = torch.zeros((), dtype=_upcast(hidden).dtype, device=hidden.device)
        for s in range(0, hidden.size(0), chunk):
            h, t = hidden[s : s + chunk], targets[s : s + chunk]
            logits = _upcast(F.linear(h, weight, bias))
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_grad:
                # softmax - onehot, in place on the chunk's logits
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(t.numel(), device=t.device), t] -= 1.0
                grad[s : s + chunk] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None
        return (grad * grad_out.to(grad.dtype)), None, None, None, None

"""Run registered benchmarks on a model: batched greedy generation, answer extraction, results files.

The harness owns everything a benchmark does not: tokenization, batching (items sorted by token budget and
prompt length, left-padded), greedy generation with the KV cache, per-row stopping (own token budget, EOS,
the benchmark's stop strings), timing, and the output files in ``out_dir``:

* ``results.json``: ``{benchmark: {score, n, protocol, seconds, items_per_s, ...extra metrics}}``, rewritten
  after each benchmark so an interrupted run keeps what finished;
* ``items-<benchmark>.jsonl``: one line per item in protocol order: id, prompt, generation, extracted, gold,
  correct.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import flowertune.eval.benchmarks  # noqa: F401  (registers the built-in benchmarks)
from flowertune.eval.benchmark import BENCHMARKS, Benchmark, Item

log = logging.getLogger(__name__)


def end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens that end a generation: the model's generation-config EOS ids, the tokenizer's EOS and pad."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return {int(i) for i in (*ids, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}


STOP_GRACE = 3
"""Tokens a row may still generate after a stop string appears, so that an end token right after the
answer is seen (and counted in ``ended_at_eos_pct``); a stop string only fires once the answer is final."""


class RowStop:
    """Why a row's generation is finished: an end token, its own token budget, or a stop string (None: not)."""

    def __init__(self, tokenizer: Any, end_ids: set[int], stop: Sequence[str] = ()) -> None:
        self.tokenizer, self.end_ids, self.stop = tokenizer, end_ids, tuple(stop)

    def __call__(self, tokens: list[int], budget: int) -> str | None:
        if tokens and tokens[-1] in self.end_ids:
            return "eos"
        if len(tokens) >= budget:
            return "budget"
        if self.stop and any(s in self.tokenizer.decode(tokens, skip_special_tokens=True) for s in self.stop):
            return "stop"
        return None


@dataclass(frozen=True)
class Generation:
    """One row's greedy continuation and why it ended (``eos``, ``budget`` or ``stop``)."""

    text: str
    end: str
    new_tokens: int


def _render(bench: Benchmark, item: Item, tokenizer: Any) -> str:
    if not bench.chat_template:
        return item.prompt
    messages = [{"role": "user", "content": item.prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[list[int]], budgets: Sequence[int],
                   stop: Sequence[str] = ()) -> list[str]:
    """Greedy continuations (texts) of token-id prompts; see :func:`generate_rows`."""
    return [g.text for g in generate_rows(model, tokenizer, prompts, budgets, stop)]


@torch.inference_mode()
def generate_rows(model: Any, tokenizer: Any, prompts: Sequence[list[int]], budgets: Sequence[int],
                  stop: Sequence[str] = ()) -> list[Generation]:
    """Greedy continuations of token-id prompts, left-padded in one batch, with the KV cache.

    Each row stops on its own (end token, own budget, or :data:`STOP_GRACE` tokens after a stop string),
    and finished rows leave the batch: the cache, mask and positions are cut to the rows still running,
    so one long answer does not make the whole batch keep decoding (with ``model.generate`` every row
    runs until the last one ends).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    done = RowStop(tokenizer, end_token_ids(model, tokenizer), stop)
    tokens: list[list[int]] = [[] for _ in prompts]
    ends = ["budget"] * len(prompts)
    stop_seen: dict[int, int] = {}  # row -> tokens generated when a stop string first appeared
    active = [row for row, budget in enumerate(budgets) if budget > 0]
    if active:
        cache = DynamicCache()
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                       cache=cache, use_cache=True).logits[:, -1]
        last = positions[:, -1]
        if len(active) < len(prompts):  # rows with a zero budget generate nothing
            index = torch.tensor(active, device=device)
            cache.batch_select_indices(index)
            logits, attention, last = logits[index], attention[index], last[index]
    while active:
        picked = logits.argmax(-1).tolist()
        keep = []
        for j, row in enumerate(active):
            tokens[row].append(picked[j])
            reason = done(tokens[row], budgets[row])
            if reason == "stop" and len(tokens[row]) - stop_seen.setdefault(row, len(tokens[row])) < STOP_GRACE:
                reason = None
            if reason is None:
                keep.append(j)
            else:
                ends[row] = reason
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            attention, last = attention[index], last[index]
        active = [active[j] for j in keep]
        step = torch.tensor([[tokens[row][-1]] for row in active], device=device)
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
        last = last + 1
        logits = model(input_ids=step, attention_mask=attention, position_ids=last[:, None],
                       cache=cache, use_cache=True).logits[:, -1]
    return [Generation(tokenizer.decode(t, skip_special_tokens=True), end, len(t)) for t, end in zip(tokens, ends)]


def run_benchmark(model: Any, tokenizer: Any, bench: Benchmark, items: Sequence[Item], batch_size: int,
                  progress: bool = True) -> list[Generation]:
    """Generations for ``items`` (returned in the items' order), batched by budget and prompt length."""
    from tqdm.auto import tqdm

    ids = [tokenizer(_render(bench, it, tokenizer))["input_ids"] for it in items]
    budgets = [int(bench.max_new_tokens(it, tokenizer)) for it in items]
    # equal budgets together, then similar lengths together: little padding and few wasted decode steps
    order = sorted(range(len(items)), key=lambda i: (budgets[i], len(ids[i])))
    generations: list[Generation] = [Generation("", "budget", 0)] * len(items)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=bench.name, unit="batch", disable=not progress):
        rows = generate_rows(model, tokenizer, [ids[i] for i in batch], [budgets[i] for i in batch], bench.stop)
        for i, gen in zip(batch, rows):
            generations[i] = gen
    return generations


def tokens_after_answer(bench: Benchmark, gen: Generation, item: Item, tokenizer: Any) -> int | None:
    """Tokens generated after the benchmark's answer span (None: no answer span found or defined)."""
    if bench.answer_end is None:
        return None
    end = bench.answer_end(gen.text, item)
    if end is None:
        return None
    return len(tokenizer(gen.text[end:], add_special_tokens=False)["input_ids"])


def stop_metrics(bench: Benchmark, generations: Sequence[Generation], items: Sequence[Item],
                 tokenizer: Any) -> dict[str, float]:
    """How generations ended: % at an end token, and % at an end token within 3 tokens of the answer."""
    if not generations:
        return {}
    out = {"ended_at_eos_pct": 100.0 * sum(g.end == "eos" for g in generations) / len(generations)}
    if bench.answer_end is not None:
        close = 0
        for gen, item in zip(generations, items):
            after = tokens_after_answer(bench, gen, item, tokenizer)
            # the end token itself is one of the generated tokens, not part of the decoded text
            close += gen.end == "eos" and after is not None and after <= STOP_GRACE
        out["eos_after_answer_pct"] = 100.0 * close / len(generations)
    return out


def _write_items(path: Path, bench: Benchmark, items: Sequence[Item], generations: Sequence[Generation],
                 extracted: Sequence[Any]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for item, gen, answer in zip(items, generations, extracted):
            correct = bench.is_correct(answer, item) if bench.is_correct else None
            row = {"id": item.id, "prompt": item.prompt, "generation": gen.text, "extracted": answer,
                   "gold": item.gold, "correct": correct, "end": gen.end, "new_tokens": gen.new_tokens}
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def evaluate(model: Any, tokenizer: Any, benchmark_names: Sequence[str], data_dir: Path | None,
             limit: int | None, batch_size: int, out_dir: Path, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run each named benchmark (first ``limit`` items in protocol order when given) and write the results.

    ``data_dir`` is a local benchmark data directory (one folder per benchmark) or None for the Hugging Face Hub.
    Returns the same mapping that is written to ``out_dir/results.json``.
    """
    benches = [BENCHMARKS.get(name) for name in benchmark_names]  # unknown names fail before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for bench in benches:
        items = bench.load(data_dir)
        n_total = len(items)
        if limit is not None:
            items = items[:limit]
        start = time.perf_counter()
        generations = run_benchmark(model, tokenizer, bench, items, batch_size, progress)
        extracted = [bench.extract(gen.text, item) for gen, item in zip(generations, items)]
        metrics = {**bench.score(extracted, items), **stop_metrics(bench, generations, items, tokenizer)}
        seconds = time.perf_counter() - start
        results[bench.name] = {
            "score": float(metrics["score"]),
            "n": len(items),
            "n_total": n_total,  # the full split: n < n_total only under --limit (then not a leaderboard score)
            "limit": limit,
            "protocol": bench.protocol,
            "seconds": round(seconds, 3),
            "items_per_s": round(len(items) / seconds, 3) if seconds > 0 else None,
            **{k: v for k, v in metrics.items() if k != "score"},
        }
        _write_items(out_dir / f"items-{bench.name}.jsonl", bench, items, generations, extracted)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        log.info("%s: score %.2f on %d items in %.1f s", bench.name, metrics["score"], len(items), seconds)
    return results

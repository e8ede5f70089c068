"""Items per second of each built-in benchmark with the embedded SmolLM2-135M-Instruct.

    python benchmarks/eval_speed.py --quick            # 2 items of each medical benchmark (CI smoke run)
    python benchmarks/eval_speed.py                    # the whole medical, finance and general-nlp suites

Reads the data from ``--data-dir`` (default ``$FLOWERTUNE_DATA_DIR``, else ``<repo>/../shared/data``),
writes the usual eval outputs to ``--out`` (a temporary directory by default) and prints one table row per
benchmark: items, seconds, items/s, score.

``--compare-generate`` runs every benchmark a second time with ``transformers``' ``model.generate`` (the
same left-padded batches and per-row stopping, but every row of a batch decodes until the last row ends)
and adds its items/s, our speed-up and how many generations are identical.

    python benchmarks/eval_speed.py --suites finance --limit 96 --compare-generate
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from flowertune.config import ModelConfig
from flowertune.eval import harness
from flowertune.eval.benchmark import SUITES
from flowertune.eval.harness import evaluate
from flowertune.models.load import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


@torch.inference_mode()
def generate_batch_hf(model: Any, tokenizer: Any, prompts: list[list[int]], budgets: list[int],
                      stop: tuple[str, ...] = ()) -> list[str]:
    """Reference: ``model.generate`` on the left-padded batch; finished rows keep decoding (padded)."""
    from transformers import StoppingCriteria

    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
    rule = harness.RowStop(tokenizer, harness.end_token_ids(model, tokenizer), stop)

    class PerRow(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            new = input_ids[:, width:].tolist()
            return torch.tensor([rule(t, b) for t, b in zip(new, budgets)])

    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(budgets), do_sample=False,
                         temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                         eos_token_id=sorted(harness.end_token_ids(model, tokenizer)), stopping_criteria=[PerRow()])
    return [tokenizer.decode(out[row, width:width + b], skip_special_tokens=True) for row, b in enumerate(budgets)]


def generations(out: Path, name: str) -> list[str]:
    return [json.loads(line)["generation"] for line in (out / f"items-{name}.jsonl").open()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 items of each medical benchmark (1-token answers; tests/component/test_eval_slow.py "
                             "scores every suite with the embedded model)")
    parser.add_argument("--limit", type=int, default=None, help="items per benchmark (default: 2 with --quick)")
    parser.add_argument("--suites", default=None, help="default: medical,finance,general-nlp (medical with --quick)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("FLOWERTUNE_DATA_DIR", REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dtype", default="auto", help="model dtype (auto: bf16 where the CPU has it)")
    parser.add_argument("--compare-generate", action="store_true", help="also time transformers' model.generate")
    args = parser.parse_args(argv)
    limit = args.limit if args.limit is not None else (2 if args.quick else None)
    suites = args.suites or ("medical" if args.quick else "medical,finance,general-nlp")
    names = [name for suite in suites.split(",") for name in SUITES[suite.strip()]]
    cfg = ModelConfig(name="embedded", dtype=args.dtype)
    model, tokenizer = load_model(cfg), load_tokenizer(cfg)
    out = args.out or Path(tempfile.mkdtemp(prefix="eval-speed-"))
    results = evaluate(model, tokenizer, names, args.data_dir, limit, args.batch_size, out, progress=not args.quick)
    ref: dict[str, Any] = {}
    if args.compare_generate:
        own = harness.generate_rows
        harness.generate_rows = lambda *a, **k: [harness.Generation(t, "n/a", 0) for t in generate_batch_hf(*a, **k)]
        try:
            ref = evaluate(model, tokenizer, names, args.data_dir, limit, args.batch_size, out / "generate",
                           progress=not args.quick)
        finally:
            harness.generate_rows = own
    extra = f" {'generate it/s':>14} {'speed-up':>9} {'same text':>10}" if ref else ""
    print(f"{'benchmark':<10} {'items':>6} {'seconds':>9} {'items/s':>8} {'score':>7}{extra}")
    for name, res in results.items():
        line = f"{name:<10} {res['n']:>6} {res['seconds']:>9.1f} {res['items_per_s']:>8.2f} {res['score']:>7.2f}"
        if ref:
            same = sum(a == b for a, b in zip(generations(out, name), generations(out / "generate", name)))
            line += (f" {ref[name]['items_per_s']:>14.2f} {res['items_per_s'] / ref[name]['items_per_s']:>8.2f}x"
                     f" {same:>5}/{res['n']:<4}")
        print(line)
    total_n = sum(r["n"] for r in results.values())
    total_s = sum(r["seconds"] for r in results.values())
    print(f"{'total':<10} {total_n:>6} {total_s:>9.1f} {total_n / total_s:>8.2f}")
    print(f"(batch size {args.batch_size}; outputs in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

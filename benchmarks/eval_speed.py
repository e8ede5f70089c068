"""Items per second of each built-in benchmark with the embedded SmolLM2-135M-Instruct.

    python benchmarks/eval_speed.py --quick            # 8 items per benchmark (CI)
    python benchmarks/eval_speed.py                    # the whole medical, finance and general-nlp suites

Reads the data from ``--data-dir`` (default ``$FLOWERTUNE_DATA_DIR``, else ``<repo>/../shared/data``),
writes the usual eval outputs to ``--out`` (a temporary directory by default) and prints one table row per
benchmark: items, seconds, items/s, score.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from flowertune.config import ModelConfig
from flowertune.eval.benchmark import SUITES
from flowertune.eval.harness import evaluate
from flowertune.models.load import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few items per benchmark")
    parser.add_argument("--limit", type=int, default=None, help="items per benchmark (default: 8 with --quick)")
    parser.add_argument("--suites", default="medical,finance,general-nlp")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("FLOWERTUNE_DATA_DIR", REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    limit = args.limit if args.limit is not None else (8 if args.quick else None)
    names = [name for suite in args.suites.split(",") for name in SUITES[suite.strip()]]
    cfg = ModelConfig(name="embedded", dtype="float32")
    model, tokenizer = load_model(cfg), load_tokenizer(cfg)
    out = args.out or Path(tempfile.mkdtemp(prefix="eval-speed-"))
    results = evaluate(model, tokenizer, names, args.data_dir, limit, args.batch_size, out, progress=not args.quick)
    print(f"{'benchmark':<10} {'items':>6} {'seconds':>9} {'items/s':>8} {'score':>7}")
    for name, res in results.items():
        print(f"{name:<10} {res['n']:>6} {res['seconds']:>9.1f} {res['items_per_s']:>8.2f} {res['score']:>7.2f}")
    total_n = sum(r["n"] for r in results.values())
    total_s = sum(r["seconds"] for r in results.values())
    print(f"{'total':<10} {total_n:>6} {total_s:>9.1f} {total_n / total_s:>8.2f}")
    print(f"(batch size {args.batch_size}; outputs in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command-line options of the finance quality setup that ``privacy.py`` and ``aggregation.py`` share
(``quality.py``'s federated variant: 10 SuperNodes, 2 a round, 10 rounds x 10 steps x batch 16, LoRA r=8 on
every linear projection, lr 1e-3 -> 1e-4); not a benchmark itself."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_finance_setup(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("FLOWERTUNE_DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--out", type=Path, default=None, help="work directory (a rerun skips finished rows)")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr-max", type=float, default=1e-3)
    ap.add_argument("--lr-min", type=float, default=1e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--frame", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N items of each benchmark (labelled)")


def finance_workdir(args: argparse.Namespace, prefix: str) -> tuple[Path, Path]:
    """``(work directory, training set)``: ``--out`` (or a new temporary one) and, built once into it, the finance
    training set of ``flowertune build-data finance-sentiment`` (no evaluation item in it)."""
    import tempfile

    from flowertune.trainsets import BUILDERS, write_jsonl

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.data_dir = args.data_dir.absolute()
    out = (args.out or Path(tempfile.mkdtemp(prefix=prefix))).absolute()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "train-finance-sentiment.jsonl"
    if not data.exists():
        write_jsonl(BUILDERS.get("finance-sentiment")(args.data_dir), data)
    return out, data

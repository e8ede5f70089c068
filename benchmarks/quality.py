"""Does federated fine-tuning raise the challenge's own score? Base model, constant answer, federated (IID and
label-skewed), centralized and local-only fine-tunes, scored with the project's own eval.

Every training variant is a real ``flowertune run`` (Flower's simulation runtime) on a training set built by
``flowertune build-data`` from the non-evaluation rows of the data directory, in the prompt frame of the
challenge's evaluation (``data.prompt-frame``), then ``flowertune eval --run`` on the challenge's suite.

* ``fed-iid`` / ``fed-noniid``: ``--nodes`` SuperNodes, ``--per-round`` sampled per round, ``--rounds`` rounds
  of ``--steps`` steps of ``--batch`` examples; non-IID is a Dirichlet(``--alpha``) split over the label.
* ``centralized``: one node holding the union, the same rounds, ``per-round x steps`` steps a round: the same
  number of optimizer steps and examples as the federation.
* ``local``: one node holding one client's IID share (partition 0 of ``--nodes``), the same steps again.
* ``base``: the base model; ``constant``: the most frequent gold answer of each evaluation split (medical:
  and chance, 25% for 4 options).

Scores are on the full evaluation splits unless ``--limit`` is given (then every row says so). Each finished
variant keeps its run directory under ``--out``; a rerun with the same ``--out`` skips it.

    python benchmarks/quality.py --challenge finance --out /abs/dir                 # ~60 min on 2 cores
    python benchmarks/quality.py --challenge medical --limit 500 --variants fed-iid,centralized --out /abs/dir
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHALLENGES: dict[str, dict[str, Any]] = {
    "finance": {"build": "finance-sentiment", "format": "finance", "frame": "finance", "suite": "finance"},
    "medical": {"build": "medmcqa", "format": "generic", "frame": "qa", "suite": "medical"},
}
TRAINED = ("fed-iid", "fed-noniid", "centralized", "local")
ALL = ("base", "constant", *TRAINED)


def flowertune(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowertune.cli", *args]


def common_overrides(args: argparse.Namespace, ch: dict[str, Any], data: Path) -> list[str]:
    return [
        "model.name=embedded", "model.quantization=0", "model.dtype=auto", "model.gradient-checkpointing=false",
        "train.training-arguments.optim=adamw_torch", f"static.dataset.name={data}",
        f"data.format={ch['format']}", f"data.prompt-frame={args.frame or ch['frame']}",
        f"num-server-rounds={args.rounds}", f"train.training-arguments.per-device-train-batch-size={args.batch}",
        f"train.learning-rate-max={args.lr_max}", f"train.learning-rate-min={args.lr_min}",
        f"model.lora.peft-lora-r={args.rank}", f"model.lora.peft-lora-alpha={2 * args.rank}",
        f"model.lora.target-modules={args.targets}", f"train.eval-every-round={args.rounds}",
        "strategy.fraction-evaluate=0.2",
    ]


def variant_overrides(name: str, args: argparse.Namespace, data: Path, local_share: Path) -> tuple[list[str], int]:
    """(extra overrides, SuperNodes) of a training variant."""
    single = ["strategy.fraction-train=1.0", "strategy.min-train-nodes=1", "strategy.min-available-nodes=1",
              "strategy.fraction-evaluate=1.0", f"train.training-arguments.max-steps={args.per_round * args.steps}"]
    if name in ("fed-iid", "fed-noniid"):
        extra = [f"strategy.fraction-train={args.per_round / args.nodes}", f"strategy.min-train-nodes={args.per_round}",
                 f"strategy.min-available-nodes={args.nodes}", f"train.training-arguments.max-steps={args.steps}"]
        if name == "fed-noniid":
            extra += ["data.partitioner=dirichlet", "data.partition-by=output", f"data.dirichlet-alpha={args.alpha}"]
        return extra, args.nodes
    if name == "centralized":
        return single, 1
    return [*single, f"static.dataset.name={local_share}"], 1


def write_local_share(train: Path, nodes: int, out: Path) -> Path:
    """Partition 0 of ``nodes`` IID partitions of the training file, exactly as a SuperNode loads it."""
    from flowertune.config import DataConfig
    from flowertune.data.load import load_partition
    from flowertune.trainsets import write_jsonl

    if not out.exists():
        part = load_partition(DataConfig(name=str(train)), 0, nodes)
        write_jsonl([dict(r) for r in part], out)
    return out


def run_and_eval(name: str, args: argparse.Namespace, ch: dict[str, Any], data: Path, local_share: Path,
                 out: Path) -> dict[str, Any]:
    run_dir = out / name
    results = run_dir / "eval" / "results.json"
    if not results.exists():
        if (run_dir / "summary.json").exists() is False:
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)  # a half-finished run from an interrupted benchmark
            extra, nodes = variant_overrides(name, args, data, local_share)
            t0 = time.perf_counter()
            cmd = flowertune("run", "--preset", ch["suite"], "--num-supernodes", str(nodes), "--out", str(run_dir),
                             *common_overrides(args, ch, data), *extra)
            with (out / f"{name}.log").open("w") as log:
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            if rc != 0:
                raise SystemExit(f"{name}: flowertune run failed (exit {rc}); see {out / (name + '.log')}")
            (run_dir / "benchmark-train-s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        t0 = time.perf_counter()
        cmd = flowertune("eval", "--run", str(run_dir), "--suite", ch["suite"], "--data-dir", str(args.data_dir),
                         "--no-progress", *(["--limit", str(args.limit)] if args.limit else []))
        with (out / f"{name}-eval.log").open("w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            raise SystemExit(f"{name}: flowertune eval failed (exit {rc}); see {out / (name + '-eval.log')}")
        (run_dir / "benchmark-eval-s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "results": json.loads(results.read_text()),
        "train_s": float((run_dir / "benchmark-train-s.txt").read_text()),
        "eval_s": float((run_dir / "benchmark-eval-s.txt").read_text()),
        "mb": summary["comm_cost_mb"],
    }


def base_eval(args: argparse.Namespace, ch: dict[str, Any], out: Path) -> dict[str, Any]:
    res_dir = out / "base"
    if not (res_dir / "results.json").exists():
        t0 = time.perf_counter()
        cmd = flowertune("eval", "--model", "embedded", "--suite", ch["suite"], "--data-dir", str(args.data_dir),
                         "--out", str(res_dir), "--no-progress", *(["--limit", str(args.limit)] if args.limit else []))
        with (out / "base-eval.log").open("w") as log:
            if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT) != 0:
                raise SystemExit(f"base: flowertune eval failed; see {out / 'base-eval.log'}")
        (res_dir / "benchmark-eval-s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return {"results": json.loads((res_dir / "results.json").read_text()), "train_s": 0.0,
            "eval_s": float((res_dir / "benchmark-eval-s.txt").read_text()), "mb": 0.0}


def constant_scores(ch: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Accuracy of always giving the most frequent gold answer of each evaluation split (an upper bound on
    any constant answer), with the protocol's own correctness rule."""
    import flowertune.eval.benchmarks  # noqa: F401  (registers them)
    from flowertune.eval.benchmark import BENCHMARKS, SUITES

    out = {}
    for name in SUITES[ch["suite"]]:
        bench = BENCHMARKS.get(name)
        items = bench.load(args.data_dir)[: args.limit or None]
        answers = collections.Counter(str(it.gold).lower() if ch["suite"] != "finance" else str(it.gold)
                                      for it in items)
        best, _ = answers.most_common(1)[0]
        flags = [bench.is_correct(best, it) for it in items]
        out[name] = {"score": 100.0 * sum(flags) / len(flags), "n": len(items), "answer": best}
    return {"results": out, "train_s": 0.0, "eval_s": 0.0, "mb": 0.0}


def average(results: dict[str, Any], names: list[str]) -> float:
    return sum(results[n]["score"] for n in names) / len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--challenge", choices=sorted(CHALLENGES), default="finance")
    parser.add_argument("--variants", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("FLOWERTUNE_DATA_DIR", REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=None, help="work directory (a rerun skips finished variants)")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr-max", type=float, default=1e-3)
    parser.add_argument("--lr-min", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration of fed-noniid")
    parser.add_argument("--frame", default=None, help="data.prompt-frame (default: the challenge's eval frame)")
    parser.add_argument("--build", default=None,
                        help="training set builder (default: the challenge's; medical: medmcqa-balanced permutes "
                             "each question's options)")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each benchmark (labelled)")
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run (not a measurement)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.batch, args.nodes, args.limit = 1, 1, 2, 4, args.limit or 2
        args.variants = args.variants if "--variants" in (argv or sys.argv) else "constant,fed-iid"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.data_dir = args.data_dir.absolute()
    ch = dict(CHALLENGES[args.challenge])
    if args.build:
        ch["build"] = args.build
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(ALL))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {','.join(ALL)}")
    import tempfile

    out = (args.out or Path(tempfile.mkdtemp(prefix=f"quality-{args.challenge}-"))).absolute()
    out.mkdir(parents=True, exist_ok=True)
    from flowertune.eval.benchmark import SUITES
    from flowertune.trainsets import BUILDERS, write_jsonl

    data = out / f"train-{ch['build']}.jsonl"
    if not data.exists():
        write_jsonl(BUILDERS.get(ch["build"])(args.data_dir), data)
    n_rows = sum(1 for _ in data.open())
    local_share = write_local_share(data, args.nodes, out / f"train-{ch['build']}-share0of{args.nodes}.jsonl")
    rows: dict[str, dict[str, Any]] = {}
    for name in variants:
        if name == "base":
            rows[name] = base_eval(args, ch, out)
        elif name == "constant":
            rows[name] = constant_scores(ch, args)
        else:
            rows[name] = run_and_eval(name, args, ch, data, local_share, out)
        print(f"[{name} done]", file=sys.stderr, flush=True)

    names = list(SUITES[ch["suite"]])
    examples = args.rounds * args.per_round * args.steps * args.batch
    label = f"first {args.limit} items of each split" if args.limit else "full evaluation splits"
    print(f"# quality: {args.challenge}, embedded model, {label}; training set {n_rows} rows "
          f"({ch['build']}, eval items held out), frame {args.frame or ch['frame']}")
    print(f"# training: {args.rounds} rounds x {args.per_round} clients x {args.steps} steps x {args.batch} = "
          f"{examples} examples, {args.rounds * args.per_round * args.steps} optimizer steps per variant; "
          f"LoRA r={args.rank} on {args.targets}; lr {args.lr_max} -> {args.lr_min}")
    head = " | ".join(n.upper() for n in names)
    print(f"| variant | {head} | avg | ended at EOS % | train min | eval min | MB |")
    print("|---" * (len(names) + 6) + "|")
    for name, row in rows.items():
        res = row["results"]
        eos = [res[n].get("ended_at_eos_pct") for n in names if res[n].get("ended_at_eos_pct") is not None]
        cells = " | ".join(f"{res[n]['score']:.2f}" for n in names)
        eos_cell = f"{sum(eos) / len(eos):.1f}" if eos else "-"
        print(f"| {name} | {cells} | {average(res, names):.2f} | {eos_cell} | {row['train_s'] / 60:.1f} | "
              f"{row['eval_s'] / 60:.1f} | {row['mb']:.1f} |")
    if {"base", "centralized"} <= set(rows):
        base = average(rows["base"]["results"], names)
        gain = average(rows["centralized"]["results"], names) - base
        for fed in ("fed-iid", "fed-noniid"):
            if fed in rows and gain > 0:
                ratio = (average(rows[fed]["results"], names) - base) / gain
                print(f"# {fed}: {100 * ratio:.1f}% of the centralized gain over the base model (avg)")
    (out / "quality.json").write_text(json.dumps({k: v for k, v in rows.items()}, indent=2, default=str) + "\n")
    print(f"# runs and items: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

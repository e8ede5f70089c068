"""LoRA-aware aggregation (``strategy.aggregation``) against FedAvg of A and B: finance scores with IID and
label-skewed nodes, and the bytes each combination of aggregation and wire codec sends per round.

Every training row is a real ``flowertune run`` (Flower's simulation runtime) on the finance training set that
``benchmarks/quality.py`` builds (``flowertune build-data finance-sentiment``: no evaluation item in it), with
that script's setup: the embedded model, ``--nodes`` SuperNodes, ``--per-round`` a round, ``--rounds`` rounds of
``--steps`` steps of ``--batch`` examples, LoRA r=``--rank`` on ``--targets``, the same seeds for every row.

``--part finance`` (rows ``<method>-iid`` / ``<method>-noniid``, ``--variants`` picks them): ``method`` is an
aggregation (``separate``: FedAvg of A and B, the baseline; ``freeze-a``; ``exact``) or a server optimizer over
``separate`` (``fedprox``: ``strategy.proximal-mu=--mu``; ``fedadam``: ``strategy.eta=--eta``; ``fedavgm``:
``strategy.server-momentum=--momentum`` with server lr ``1 - momentum``: an average over the last ~1/(1-m)
rounds' mean updates); ``noniid`` is a
Dirichlet(``--alpha``) split over the label (``data.partition-by=output``). Each row is scored by ``flowertune
eval`` on the full FPB/FiQA/TFNS splits (``--limit N``: the first N items, and the header says so). The table
gives each method's label-skewed average as a share of its IID average (the target: >= 95%).

``--part frontier``: every ``--methods`` x ``--codecs`` combination in a shorter run (``--frontier-nodes`` all
sampled every round, ``--frontier-rounds`` x ``--frontier-steps`` x ``--frontier-batch``, every node evaluating
its held-out split in the last round): bytes per round (both links, as Flower counts them; after the first
round, when each downlink is a delta from the node's own copy, and over all rounds), the last round's held-out
loss, both against ``separate`` with ``fp32``; a table and a plot (``frontier.png``). The target: >= 100x
fewer bytes per round at <= 1% more held-out loss.

``--quick`` (run by ``tests/e2e/test_benchmark_scripts.py``; no Flower run): the server's cost of the exact
aggregation and of padding heterogeneous ranks at Llama-3.1-8B's module shapes (numpy), 10 nodes.

    python benchmarks/aggregation.py --part finance --variants exact-noniid,freeze-a-noniid --out /abs/dir
    python benchmarks/aggregation.py --part frontier --out /abs/dir
    python benchmarks/aggregation.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

METHODS = ("separate", "freeze-a", "exact", "fedprox", "fedadam", "fedavgm")
FINANCE = tuple(f"{m}-{s}" for m in METHODS for s in ("iid", "noniid"))
CODECS = ("fp32", "delta-int8", "delta-int3", "delta-topk-int8:0.05", "delta-topk-int8:0.02")


def method_overrides(method: str, args: argparse.Namespace) -> list[str]:
    if method == "fedprox":
        return ["strategy.name=fedprox", f"strategy.proximal-mu={args.mu}"]
    if method == "fedadam":
        return ["strategy.name=fedadam", f"strategy.eta={args.eta}"]
    if method == "fedavgm":
        # server lr 1 - momentum: in the steady state a step the size of FedAvg's, smoothed over ~1/(1-m) rounds
        return ["strategy.name=fedavgm", f"strategy.server-momentum={args.momentum}",
                f"strategy.server-learning-rate={1 - args.momentum:g}"]
    return [f"strategy.aggregation={method}"]


def codec_overrides(codec: str) -> list[str]:
    name, _, fraction = codec.partition(":")
    return [f"wire.codec={name}", *([f"wire.topk-fraction={fraction}"] if fraction else [])]


def train(name: str, args: argparse.Namespace, data: Path, out: Path, extra: list[str]) -> Path:
    """``flowertune run`` of one row (skipped when its run directory finished before)."""
    import quality

    run_dir = out / name
    if (run_dir / "summary.json").exists():
        return run_dir
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)  # a half-finished run of an interrupted benchmark
    ch = quality.CHALLENGES["finance"]
    split = "fed-noniid" if name.endswith("-noniid") else "fed-iid"
    fed, nodes = quality.variant_overrides(split, args, data, data)
    cmd = quality.flowertune("run", "--preset", "finance", "--num-supernodes", str(nodes), "--out", str(run_dir),
                             *quality.common_overrides(args, ch, data), *fed, *extra)
    t0 = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT) != 0:
            raise SystemExit(f"{name}: flowertune run failed; see {out / (name + '.log')}")
    (run_dir / "benchmark-train-s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return run_dir


def evaluate(name: str, run_dir: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import quality

    results = run_dir / "eval" / "results.json"
    if not results.exists():
        cmd = quality.flowertune("eval", "--run", str(run_dir), "--suite", "finance", "--data-dir", str(args.data_dir),
                                 "--no-progress", *(["--limit", str(args.limit)] if args.limit else []))
        with (out / f"{name}-eval.log").open("w") as log:
            if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT) != 0:
                raise SystemExit(f"{name}: flowertune eval failed; see {out / (name + '-eval.log')}")
    return json.loads(results.read_text())


def run_facts(run_dir: Path) -> dict[str, Any]:
    from flowertune.federation.rundir import read_metrics

    rows = read_metrics(run_dir)[1:]
    summary = json.loads((run_dir / "summary.json").read_text())
    per_round = [r["bytes_down"] + r["bytes_up"] for r in rows]
    evals = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    # steady state: the rounds after the first (with every node sampled each round, the first is every node's
    # first contact: a full fp16 or fp32 downlink)
    steady = per_round[1:] or per_round
    return {"rounds": summary["rounds"], "mb": summary["comm_cost_mb"], "bytes_per_round": sum(per_round) / len(rows),
            "steady_bytes_per_round": sum(steady) / len(steady),
            "eval_loss": evals[-1] if evals else None, "round_s": sum(r["round_s"] for r in rows) / len(rows)}


def finance(args: argparse.Namespace, data: Path, out: Path) -> None:
    from flowertune.eval.benchmark import SUITES

    names = list(SUITES["finance"])
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(FINANCE))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {','.join(FINANCE)}")
    rows = {}
    for name in variants:
        run_dir = train(name, args, data, out, method_overrides(name.rsplit("-", 1)[0], args))
        rows[name] = {**run_facts(run_dir), "results": evaluate(name, run_dir, args, out)}
        print(f"[{name} done]", file=sys.stderr, flush=True)
    label = f"first {args.limit} items of each split" if args.limit else "full evaluation splits"
    print(f"# aggregation, finance: embedded model, {label}; {args.nodes} SuperNodes, {args.per_round} a round, "
          f"{args.rounds} rounds x {args.steps} steps x batch {args.batch}; LoRA r={args.rank} on {args.targets}; "
          f"non-IID: Dirichlet({args.alpha}) over the label")
    print(f"| variant | {' | '.join(n.upper() for n in names)} | avg | noniid/iid | MB | s/round |")
    print("|---" * (len(names) + 5) + "|")
    avg = {k: sum(v["results"][n]["score"] for n in names) / len(names) for k, v in rows.items()}
    for name, row in rows.items():
        iid = name.replace("-noniid", "-iid")
        ratio = f"{100 * avg[name] / avg[iid]:.1f}%" if name.endswith("-noniid") and iid in avg else "-"
        cells = " | ".join(f"{row['results'][n]['score']:.2f}" for n in names)
        print(f"| {name} | {cells} | {avg[name]:.2f} | {ratio} | {row['mb']:.1f} | {row['round_s']:.0f} |")
    (out / "finance.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")


def frontier(args: argparse.Namespace, data: Path, out: Path) -> None:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    # every node every round, so that after round 1 each downlink is a delta from the node's own copy (the
    # steady state); in a larger federation the first contacts add a full fp16 adapter per node once
    args.rounds, args.nodes, args.per_round = args.frontier_rounds, args.frontier_nodes, args.frontier_nodes
    args.steps, args.batch = args.frontier_steps, args.frontier_batch
    rows = {}
    for m in methods:
        for c in codecs:
            name = f"frontier-{m}-{c.replace(':', '-')}-iid"
            extra = [*method_overrides(m, args), *codec_overrides(c), "strategy.fraction-evaluate=1.0"]
            rows[(m, c)] = run_facts(train(name, args, data, out, extra))
            print(f"[{name} done]", file=sys.stderr, flush=True)
    base = rows.get(("separate", "fp32"))
    print(f"# aggregation x codec frontier: finance training set, embedded model, {args.nodes} SuperNodes, "
          f"{args.per_round} a round, {args.rounds} rounds x {args.steps} steps x batch {args.batch}, LoRA r={args.rank} "
          f"on {args.targets}; bytes per round = both links, as Flower counts them; held-out loss of the last round "
          f"(every node's validation split)")
    print("| aggregation | codec | MB/round, rounds 2+ | fewer than separate+fp32 | MB/round, all rounds | fewer | "
          "held-out loss | vs separate+fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for (m, c), r in rows.items():
        fewer = f"{base['steady_bytes_per_round'] / r['steady_bytes_per_round']:.1f}x" if base else "-"
        fewer_all = f"{base['bytes_per_round'] / r['bytes_per_round']:.1f}x" if base else "-"
        loss = "-" if r["eval_loss"] is None else f"{r['eval_loss']:.4f}"
        rel = (f"{100 * (r['eval_loss'] / base['eval_loss'] - 1):+.2f}%" if base and r["eval_loss"] and base["eval_loss"]
               else "-")
        print(f"| {m} | {c} | {r['steady_bytes_per_round'] / 1e6:.3f} | {fewer} | {r['bytes_per_round'] / 1e6:.3f} | "
              f"{fewer_all} | {loss} | {rel} |")
    (out / "frontier.json").write_text(json.dumps({f"{m}|{c}": r for (m, c), r in rows.items()}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        pts = [(rows[(m, c)]["steady_bytes_per_round"] / 1e6, rows[(m, c)]["eval_loss"]) for c in codecs
               if rows[(m, c)]["eval_loss"] is not None]
        ax.plot(*zip(*pts), marker="o", label=m) if pts else None
        for c in codecs:
            r = rows[(m, c)]
            if r["eval_loss"] is not None:
                ax.annotate(c, (r["steady_bytes_per_round"] / 1e6, r["eval_loss"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("MB per round after the first (both links)")
    ax.set_ylabel("held-out loss, last round")
    ax.set_title("aggregation x wire codec (finance, embedded model)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    print(f"# plot: {out / 'frontier.png'}")


def quick() -> int:
    """Server-side cost at Llama-3.1-8B shapes (4096 hidden, 14336 MLP, 1024 KV): the exact aggregation of one
    layer's 7 modules from 10 nodes at r=16, and padding 10 rank-4 replies; numpy, single process."""
    import numpy as np

    from flowertune.models.lora_algebra import exact_mean, pad, truncate

    shapes = {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096), "gate": (14336, 4096),
              "up": (14336, 4096), "down": (4096, 14336)}
    rng = np.random.default_rng(0)
    r, nodes = 16, 10
    t_exact, t_pad, err = 0.0, 0.0, 0.0
    for name, (out_dim, in_dim) in shapes.items():
        factors = [(rng.standard_normal((out_dim, r)).astype(np.float32) * 1e-3,
                    rng.standard_normal((r, in_dim)).astype(np.float32) * 1e-2) for _ in range(nodes)]
        t0 = time.perf_counter()
        b, a = exact_mean(factors, [1.0] * nodes, r)
        t_exact += time.perf_counter() - t0
        # the re-projection's error against the dense mean, on a slice (the dense matrix is 14336 x 4096)
        rows = slice(0, 256)
        dense = sum(bi[rows].astype(np.float64) @ ai for bi, ai in factors) / nodes
        err = max(err, float(np.linalg.norm(dense - b[rows].astype(np.float64) @ a) / np.linalg.norm(dense)))
        glob = {f"{name}.lora_A.weight": a, f"{name}.lora_B.weight": b}
        t0 = time.perf_counter()
        for _ in range(nodes):
            pad(truncate(glob, 4), glob)
        t_pad += time.perf_counter() - t0
    per_layer_mb = sum(4 * r * (o + i) for o, i in shapes.values()) / 1e6
    print(f"# exact aggregation at Llama-3.1-8B shapes, {nodes} nodes, r={r}: one layer (7 modules, "
          f"{per_layer_mb:.1f} MB of fp32 factors per node)")
    print(f"exact (stack, QR, SVD of the {nodes * r}x{nodes * r} core): {t_exact:.2f} s per layer, "
          f"{32 * t_exact:.0f} s for 32 layers")
    print(f"padding 10 rank-4 replies to r={r}: {t_pad:.2f} s per layer")
    print(f"relative error of the rank-{r} re-projection of a rank-{nodes * r} mean (truncation, not arithmetic): "
          f"{err:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from _setup_args import add_finance_setup, finance_workdir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("finance", "frontier"), default="finance")
    ap.add_argument("--variants", default="separate-iid,separate-noniid,freeze-a-noniid,exact-noniid,fedprox-noniid",
                    help=f"--part finance: comma-separated subset of {','.join(FINANCE)}")
    ap.add_argument("--methods", default="separate,freeze-a,exact", help="--part frontier: aggregations")
    ap.add_argument("--codecs", default=",".join(CODECS), help="--part frontier: codec[:topk fraction]")
    ap.add_argument("--frontier-rounds", type=int, default=4)
    ap.add_argument("--frontier-nodes", type=int, default=2, help="--part frontier: SuperNodes, all sampled each round")
    ap.add_argument("--frontier-steps", type=int, default=5)
    ap.add_argument("--frontier-batch", type=int, default=8)
    add_finance_setup(ap)
    ap.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration of the -noniid rows")
    ap.add_argument("--mu", type=float, default=0.01, help="strategy.proximal-mu of the fedprox rows")
    ap.add_argument("--eta", type=float, default=1e-3, help="strategy.eta of the fedadam rows")
    ap.add_argument("--momentum", type=float, default=0.9, help="strategy.server-momentum of the fedavgm rows")
    ap.add_argument("--quick", action="store_true", help="the server's cost at 8B shapes (numpy; no Flower run)")
    args = ap.parse_args(argv)
    if args.quick:
        return quick()
    out, data = finance_workdir(args, "aggregation-")
    (finance if args.part == "finance" else frontier)(args, data, out)
    print(f"# runs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

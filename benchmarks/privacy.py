"""What privacy costs: the finance quality setup (``benchmarks/quality.py``'s fed-iid variant: embedded model,
10 SuperNodes, 2 a round) under client-level DP at several ε, and under SecAgg+ — score on the full finance
splits (FPB, FiQA, TFNS, average), rounds reached, bytes and time, each row a real ``flowertune run`` (Flower's
simulation runtime) and ``flowertune eval``.

Variants:

* ``none``: no DP, no SecAgg+ (ε = ∞), the baseline of every ratio;
* ``dp-eps8`` / ``dp-eps4`` / ``dp-eps1``: ``strategy.dp.mode=client-fixed`` (each node clips its update to
  ``--clip``; the server adds Gaussian noise to the mean), the noise multiplier chosen so that the planned
  rounds spend exactly that ε at ``--delta`` (Flower's RDP accountant; no sampling amplification claimed);
* ``secagg``: ``strategy.secagg.mode=secagg+`` (the server learns only the sum of each round's updates);
* ``secagg-dp-eps8``: both (each node clips, the sum is masked, the server noises the unmasked mean);
* ``rec-eps8`` / ``rec-eps4`` / ``rec-eps1``: record-level DP (``train.dp-sgd.*``: DP-SGD inside each node,
  Poisson sampling at rate ``--batch`` / (the node's training examples), per-example clipping to
  ``--rec-clip``), the noise multiplier chosen so that a node trained in *every* round spends exactly that ε
  at ``--delta`` (its worst case; the row shows the ε the most-sampled node actually reached).

    python benchmarks/privacy.py --out /abs/dir                      # all variants, full splits
    python benchmarks/privacy.py --variants none,secagg --rounds 5 --out /abs/dir
    python benchmarks/privacy.py --quick    # tiny random model: one SecAgg+ round with a node dropping out

``--quick`` (run and checked by ``tests/e2e/test_privacy_runtime.py``) is a check, not a measurement: 4
SuperNodes of flowertune's ClientApp (plus the test-only recording mod of ``benchmarks/_hostile_app.py``),
one round under SecAgg+; the node of partition 3 trains and then drops out before sending its masked update.
Every node writes the plaintext it masked to disk, and the script compares the run's final adapter with plain
FedAvg of the nodes that stayed (equal weights), computed here from those files: the difference must be
within one quantization step (``2 x strategy.secagg.clipping-range / 2^quantization-bits``) plus float32
rounding, and far from the average that includes the node that dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

VARIANTS = ("none", "dp-eps8", "dp-eps4", "dp-eps1", "secagg", "secagg-dp-eps8", "rec-eps8", "rec-eps4", "rec-eps1")


def smallest_noise(spent: Any, epsilon: float) -> float:
    """The smallest noise multiplier (to 3 digits) for which ``spent(multiplier)`` is at most ``epsilon``."""
    lo, hi = 0.05, 200.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spent(mid) > epsilon else (lo, mid)
    return math.ceil(hi * 1000) / 1000


def noise_for(epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier whose ``rounds`` full releases spend at most ``epsilon``."""
    from flowertune.federation.stack.privacy import planned_epsilon

    return smallest_noise(lambda z: planned_epsilon(z, rounds, delta), epsilon)


def record_noise_for(epsilon: float, rate: float, steps: int, delta: float) -> float:
    """The smallest DP-SGD noise multiplier whose ``steps`` steps at ``rate`` spend at most ``epsilon``."""
    from flowertune.train.accounting import record_epsilon

    return smallest_noise(lambda z: record_epsilon(z, rate, steps, delta), epsilon)


def record_sample_rate(args: argparse.Namespace, data: Path) -> float:
    """``--batch`` over the training examples of one node (IID share, less the held-out fraction)."""
    from flowertune.config import DataConfig

    rows = sum(1 for line in data.read_text().splitlines() if line.strip())
    per_node = rows / args.nodes * (1 - DataConfig().validation_fraction)
    return round(min(1.0, args.batch / per_node), 4)


def variant_overrides(name: str, args: argparse.Namespace, data: Path | None = None) -> list[str]:
    extra: dict[str, Any] = {}
    if name.startswith("rec-eps"):
        eps, rate = float(name.split("rec-eps")[1]), record_sample_rate(args, data)
        extra.update({"train.dp-sgd.noise-multiplier": record_noise_for(eps, rate, args.rounds * args.steps,
                                                                        args.delta),
                      "train.dp-sgd.sample-rate": rate, "train.dp-sgd.clipping-norm": args.rec_clip,
                      "train.dp-sgd.delta": args.delta, "train.dp-sgd.target-epsilon": eps})
    if name.startswith("secagg"):
        extra.update({"strategy.secagg.mode": "secagg+", "wire.codec": "fp32"})
    if "dp-eps" in name:
        eps = float(name.split("dp-eps")[1])
        extra.update({"strategy.dp.mode": "client-fixed", "wire.codec": "fp32",
                      "strategy.dp.noise-multiplier": noise_for(eps, args.rounds, args.delta),
                      "strategy.dp.clipping-norm": args.clip, "strategy.dp.delta": args.delta,
                      "strategy.dp.target-epsilon": eps})
    return [f"{k}={v}" for k, v in extra.items()]


def run_variant(name: str, args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    import subprocess

    import quality

    run_dir = out / name
    results = run_dir / "eval" / "results.json"
    ch = quality.CHALLENGES["finance"]
    if not results.exists():
        if not (run_dir / "summary.json").exists():
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
            fed, nodes = quality.variant_overrides("fed-iid", args, data, data)
            cmd = quality.flowertune("run", "--preset", "finance", "--num-supernodes", str(nodes), "--out",
                                     str(run_dir), *quality.common_overrides(args, ch, data), *fed,
                                     *variant_overrides(name, args, data))
            t0 = time.perf_counter()
            with (out / f"{name}.log").open("w") as log:
                if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT) != 0:
                    raise SystemExit(f"{name}: flowertune run failed; see {out / (name + '.log')}")
            (run_dir / "benchmark-train-s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        t0 = time.perf_counter()
        cmd = quality.flowertune("eval", "--run", str(run_dir), "--suite", "finance", "--data-dir", str(args.data_dir),
                                 "--no-progress", *(["--limit", str(args.limit)] if args.limit else []))
        with (out / f"{name}-eval.log").open("w") as log:
            if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT) != 0:
                raise SystemExit(f"{name}: flowertune eval failed; see {out / (name + '-eval.log')}")
        (run_dir / "benchmark-eval-s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"results": json.loads(results.read_text()), "rounds": summary["rounds"], "mb": summary["comm_cost_mb"],
            "epsilon": rows[-1].get("dp_epsilon", rows[-1].get("dp_record_epsilon")),
            "z": rows[-1].get("dp_noise_multiplier", read_config_value(run_dir, "train.dp-sgd.noise-multiplier")),
            "train_s": float((run_dir / "benchmark-train-s.txt").read_text()),
            "round_s": sum(r["round_s"] for r in rows[1:]) / max(1, len(rows) - 1)}


def read_config_value(run_dir: Path, key: str) -> Any:
    from flowertune.federation.rundir import read_config

    value = read_config(run_dir).get(key)
    return value or None


# -- --quick: one SecAgg+ round through Flower's simulation, checked against plain FedAvg ---------------------
def quick(root: Path) -> int:

    import numpy as np
    from _common import tiny_model_dir
    from attacks import flwr_run
    from safetensors.numpy import load_file

    nodes, clip, bits = 4, 0.1, 22
    records = root / "records"
    records.mkdir(parents=True, exist_ok=True)
    out = root / "secagg-dropout"
    overrides = {"num-server-rounds": 1, "model.name": tiny_model_dir(root), "model.lora.peft-lora-r": 4,
                 "train.training-arguments.max-steps": 2, "train.training-arguments.per-device-train-batch-size": 2,
                 "train.seq-length": 128, "strategy.fraction-train": 1.0, "strategy.min-train-nodes": 2,
                 "strategy.min-available-nodes": nodes, "train.eval-every-round": 0, "run.client-worker": "off",
                 "run.progress-every-s": 0.0, "strategy.secagg.mode": "secagg+", "wire.codec": "fp32",
                 "strategy.secagg.clipping-range": clip, "strategy.secagg.quantization-bits": bits,
                 "run.output-dir": str(out)}
    t0 = time.perf_counter()
    proc = flwr_run(root, overrides, {0: "secagg-record", 1: "secagg-record", 2: "secagg-record", 3: "secagg-drop"},
                    nodes, root / "secagg-dropout.log", records, timeout=1200)
    if proc.returncode != 0 or not (out / "summary.json").exists():
        print(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"the SecAgg+ run failed; see {root / 'secagg-dropout.log'}")
    final = load_file(str(out / "final_adapter" / "adapter_model.safetensors"))

    def load(kind: str) -> list[dict[str, np.ndarray]]:
        return [dict(np.load(p)) for p in sorted(records.glob(f"{kind}-p*-r1.npz"))]

    stayed, dropped = load("secagg-record"), load("secagg-drop")
    glob = {k.split("/", 1)[1]: v for k, v in stayed[0].items() if k.startswith("global/")}

    def fedavg(recs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:  # equal weights, entries clipped
        return {k: glob[k].astype(np.float64) + np.mean(
            [np.clip(r[f"trained/{k}"].astype(np.float64) - glob[k], -clip, clip) for r in recs], axis=0) for k in glob}

    def max_diff(want: dict[str, np.ndarray]) -> float:
        return max(float(np.abs(final[k].astype(np.float64) - want[k]).max()) for k in want)

    step = 2 * clip / 2**bits
    ulp = max(float(np.spacing(np.abs(v).max().astype(np.float32))) for v in final.values())
    got = {
        "survivors": len(stayed), "dropped": len(dropped), "keys_match": sorted(final) == sorted(glob),
        "step": step, "tolerance": step + ulp, "max_abs_diff_to_fedavg_of_survivors": max_diff(fedavg(stayed)),
        "max_abs_diff_to_fedavg_with_dropped": max_diff(fedavg(stayed + dropped)),
        "max_abs_update_entry": max(float(np.abs(r[f"trained/{k}"].astype(np.float64) - glob[k]).max())
                                    for r in stayed for k in glob),
        "run_s": time.perf_counter() - t0,
    }
    (root / "quick.json").write_text(json.dumps(got, indent=1) + "\n")
    print(f"SecAgg+ round with a node dropping out: {got['survivors']} updates summed, {got['dropped']} dropped")
    print(f"max |final - FedAvg(survivors)| = {got['max_abs_diff_to_fedavg_of_survivors']:.3e} "
          f"(one quantization step {step:.3e}, + fp32 ulp {ulp:.1e})")
    print(f"max |final - FedAvg(all four)|   = {got['max_abs_diff_to_fedavg_with_dropped']:.3e}")
    ok = (got["keys_match"] and got["survivors"] == 3 and got["dropped"] == 1
          and got["max_abs_diff_to_fedavg_of_survivors"] <= got["tolerance"]
          and got["max_abs_diff_to_fedavg_with_dropped"] > 100 * step)
    if not ok:
        raise SystemExit("the SecAgg+ aggregate is not FedAvg of the nodes that stayed: " + json.dumps(got))
    return 0


def main(argv: list[str] | None = None) -> int:

    from _setup_args import add_finance_setup, finance_workdir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    add_finance_setup(ap)
    ap.add_argument("--clip", type=float, default=1.0, help="strategy.dp.clipping-norm of the DP variants")
    ap.add_argument("--delta", type=float, default=1e-5, help="strategy.dp.delta (below 1 / nodes)")
    ap.add_argument("--rec-clip", type=float, default=1.0, help="train.dp-sgd.clipping-norm of the rec-eps variants")
    ap.add_argument("--quick", action="store_true", help="tiny model: one SecAgg+ round with a dropout, checked")
    args = ap.parse_args(argv)
    if args.quick:
        return quick((args.out or Path(tempfile.mkdtemp(prefix="privacy-quick-"))).absolute())
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {','.join(VARIANTS)}")
    out, data = finance_workdir(args, "privacy-")
    from flowertune.eval.benchmark import SUITES

    rows = {}
    for name in variants:
        rows[name] = run_variant(name, args, data, out)
        print(f"[{name} done]", file=sys.stderr, flush=True)
    names = list(SUITES["finance"])
    label = f"first {args.limit} items of each split" if args.limit else "full evaluation splits"
    print(f"# privacy: finance, embedded model, {label}; {args.nodes} SuperNodes, {args.per_round} a round, "
          f"{args.rounds} rounds x {args.steps} steps x batch {args.batch}; dp-eps*: client-level, client-fixed, "
          f"C={args.clip}, δ={args.delta}, no sampling amplification; rec-eps*: record-level DP-SGD, C={args.rec_clip}, "
          f"q={record_sample_rate(args, data)}, δ={args.delta}, Poisson sampling of records (ε: the most-sampled node)")
    base = average(rows["none"]["results"], names) if "none" in rows else None
    base_s = rows["none"]["round_s"] if "none" in rows else None
    base_mb = rows["none"]["mb"] if "none" in rows else None
    print(f"| variant | ε | z | {' | '.join(n.upper() for n in names)} | avg | Δavg | rounds | MB | MB/none "
          f"| s/round | time/none |")
    print("|---" * (len(names) + 10) + "|")
    for name, row in rows.items():
        res, avg = row["results"], average(row["results"], names)
        eps = "∞" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        z = "-" if row["z"] is None else f"{row['z']:.3f}"
        delta = "-" if base is None else f"{avg - base:+.2f}"
        mb_ratio = "-" if not base_mb else f"{row['mb'] / base_mb:.2f}"
        t_ratio = "-" if not base_s else f"{row['round_s'] / base_s:.2f}"
        cells = " | ".join(f"{res[n]['score']:.2f}" for n in names)
        print(f"| {name} | {eps} | {z} | {cells} | {avg:.2f} | "
              f"{delta} | {row['rounds']}/{args.rounds} | {row['mb']:.1f} | {mb_ratio} | {row['round_s']:.0f} | "
              f"{t_ratio} |")
    (out / "privacy.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(f"# runs and items: {out}")
    return 0


def average(results: dict[str, Any], names: list[str]) -> float:
    return sum(results[n]["score"] for n in names) / len(names)


if __name__ == "__main__":
    sys.exit(main())

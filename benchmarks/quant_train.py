"""LoRA training of the embedded SmolLM2-135M on this CPU with a 4-bit, 8-bit, 16-bit and 32-bit base model.

4-bit is the QLoRA base (NF4 with double quantization), 8-bit is bitsandbytes' LLM.int8, 16-bit is bf16 weights
and 32-bit fp32 weights; the 4/8-bit bases keep their other weights (and 4-bit its compute) in bf16 where the CPU
has native bf16 matmul (``cpu_has_fast_bf16``), else in fp32. Everything else is the quickstart config (LoRA r=8
on q_proj,v_proj, AdamW, batch 4, sequences up to 512 tokens) on client 0 of 4 of the shipped ``sample:medical``
data, trained through flowertune's own client path: ``client_runtime.runtime`` + ``client_data`` +
``train.loop.train_round``, from the same seeded adapter on the same batches.

Each (configuration, repeat) runs in a fresh subprocess, and the subprocesses go round-robin over the
configurations (4, 8, 16, 32, 4, 8, ...), so background load hits them alike and every ratio is measured in
this one run. In a subprocess: load and quantize the base (not timed), reset the peak-RSS mark (Linux
``/proc/self/clear_refs``), one untimed warm-up step, then a timed round of ``--steps`` optimizer steps, then
the held-out loss. tokens/s counts real (non-padding) tokens; CPU-time tok/s divides by this process's CPU
seconds per thread instead of wall seconds (less sensitive to other load). "peak RSS" is the process's
high-water mark over the warm-up and timed round: what stays resident after loading (model, data, the Python
runtime, allocator pages kept from loading; "loaded RSS") plus activations and optimizer state. "load peak" is
the high-water mark while loading, where a quantized base briefly holds its full-precision weights too.

    python benchmarks/quant_train.py            # 3 repeats x 10 steps per configuration: 12 subprocesses
    python benchmarks/quant_train.py --quick    # CI smoke run: tiny random Llama, 4-bit and 32-bit, 1 step each
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Precision:
    """One base-model precision: ``model.quantization`` and ``model.dtype``."""

    name: str
    bits: int  # 0: not quantized
    dtype: str  # unquantized weights; for 4 bits also the compute dtype


def precisions() -> list[Precision]:
    """The four configurations, 4-bit first; the 32-bit one is the reference of the ratios."""
    from flowertune.models.dtype import cpu_has_fast_bf16

    half = "bfloat16" if cpu_has_fast_bf16() else "float32"
    return [
        Precision(f"4-bit NF4 + double quant ({'bf16' if half == 'bfloat16' else 'fp32'} compute)", 4, half),
        Precision(f"8-bit LLM.int8 ({'bf16' if half == 'bfloat16' else 'fp32'} rest)", 8, half),
        Precision("16-bit bf16" + ("" if half == "bfloat16" else " (no native bf16 on this CPU)"), 0, "bfloat16"),
        Precision("32-bit fp32", 0, "float32"),
    ]


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (VmHWM) to its current RSS; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_one(precision: Precision, steps: int, seq_length: int, batch_size: int, eval_examples: int,
                model: str = "embedded") -> dict:
    """Load, warm up and time one round of ``precision`` in this (fresh) process."""
    import dataclasses

    import torch

    from flowertune.config import from_flat
    from flowertune.federation import client_runtime
    from flowertune.memory import process_memory_mb
    from flowertune.train.loop import evaluate_loss, train_round

    cfg = from_flat({"model.name": model, "model.quantization": precision.bits, "model.dtype": precision.dtype,
                     "train.seq-length": seq_length, "train.training-arguments.per-device-train-batch-size": batch_size,
                     "train.training-arguments.max-steps": steps, "data.max-eval-examples": eval_examples})
    rt = client_runtime.runtime(cfg)
    data = client_runtime.client_data(cfg, rt, 0, cfg.run.num_supernodes)
    loaded = process_memory_mb()
    reset = reset_peak_rss()
    lr = cfg.train.learning_rate_max
    train_round(rt.model, data.train, dataclasses.replace(cfg.train, max_steps=1), lr, rt.pad_id, seed=1)
    c0 = time.process_time()
    result = train_round(rt.model, data.train, cfg.train, lr, rt.pad_id, seed=0)
    cpu_s = time.process_time() - c0
    trained = process_memory_mb()
    eval_loss, _ = evaluate_loss(rt.model, data.validation, cfg.train.batch_size, rt.pad_id)
    return {"tokens": result.real_tokens, "seconds": result.seconds, "cpu_s": cpu_s, "threads": torch.get_num_threads(),
            "loss": result.loss, "eval_loss": eval_loss, "load_peak_mb": loaded["peak_rss_mb"],
            "loaded_rss_mb": loaded["rss_mb"], "peak_rss_mb": trained["peak_rss_mb"] if reset else float("nan")}


def run_one(precision: Precision, **job: int | str) -> dict:
    """:func:`measure_one` in a fresh subprocess; ``{"error": ...}`` when it fails."""
    job = {"precision": asdict(precision), **job}
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: a tiny random Llama (not the embedded model), the 4-bit and the 32-bit "
                         "configuration, 1 repeat x 1 timed step of batch 2 x 128 tokens, 4 held-out examples; not a "
                         "measurement")
    ap.add_argument("--repeats", type=int, default=3, help="subprocesses per configuration (round-robin)")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per subprocess")
    ap.add_argument("--seq-length", type=int, default=512, help="train.seq-length")
    ap.add_argument("--batch-size", type=int, default=4, help="per-device-train-batch-size")
    ap.add_argument("--eval-examples", type=int, default=32, help="held-out examples for the eval loss")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        job = json.loads(args.one)
        print("RESULT " + json.dumps(measure_one(Precision(**job.pop("precision")), **job)))
        return
    repeats, steps, eval_examples = (1, 1, 4) if args.quick else (args.repeats, args.steps, args.eval_examples)
    model = "embedded"
    if args.quick:
        import tempfile
        from pathlib import Path

        from _common import tiny_model_dir  # benchmarks/ is the script's own directory

        model = tiny_model_dir(Path(tempfile.mkdtemp(prefix="quant-train-")))
        args.seq_length, args.batch_size = 128, 2
    configs = precisions()
    if args.quick:  # the first (4-bit) and the reference (32-bit); 8-bit and bf16 bases are tested elsewhere
        configs = [configs[0], configs[-1]]
    results: list[list[dict]] = [[] for _ in configs]
    for rep in range(repeats):
        for k, precision in enumerate(configs):
            t0 = time.perf_counter()
            r = run_one(precision, steps=steps, seq_length=args.seq_length, batch_size=args.batch_size,
                        eval_examples=eval_examples, model=model)
            results[k].append(r)
            said = r.get("error") or (f"{r['tokens'] / r['seconds']:.0f} tok/s, peak RSS {r['peak_rss_mb']:.0f} MB "
                                      f"({time.perf_counter() - t0:.0f} s with loading)")
            print(f"  repeat {rep + 1}/{repeats} {precision.name}: {said}", file=sys.stderr)

    def rate(runs: list[dict], cpu: bool = False) -> float:
        ok = [r for r in runs if "error" not in r]
        if not ok:
            return float("nan")
        seconds = sum(r["cpu_s"] / r["threads"] if cpu else r["seconds"] for r in ok)
        return sum(r["tokens"] for r in ok) / seconds

    ref, ref_cpu = rate(results[-1]), rate(results[-1], cpu=True)
    print(f"\n{'configuration':<40} {'real tok/s':>10} {'vs 32-bit':>9} {'CPU-time tok/s':>14} {'vs 32-bit':>9} "
          f"{'peak RSS MB':>11} {'loaded RSS MB':>13} {'load peak MB':>12} {'round loss':>10} {'eval loss':>9}")
    for precision, runs in zip(configs, results):
        ok = [r for r in runs if "error" not in r]
        if not ok:
            print(f"{precision.name:<40} failed: {runs[-1]['error']}")
            continue
        wall, cpu, last = rate(runs), rate(runs, cpu=True), ok[-1]
        print(f"{precision.name:<40} {wall:>10.0f} {wall / ref:>8.2f}x {cpu:>14.0f} {cpu / ref_cpu:>8.2f}x "
              f"{max(r['peak_rss_mb'] for r in ok):>11.0f} {max(r['loaded_rss_mb'] for r in ok):>13.0f} "
              f"{max(r['load_peak_mb'] for r in ok):>12.0f} "
              f"{last['loss']:>10.4f} {last['eval_loss']:>9.4f}")
    import torch

    from flowertune.models.dtype import cpu_has_fast_bf16

    print(f"\nthis machine: CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 matmul "
          f"{'yes' if cpu_has_fast_bf16() else 'no'}, {torch.get_num_threads()} threads; {repeats} subprocess(es) x "
          f"{steps} timed steps per configuration, batch {args.batch_size}, seq-length {args.seq_length}; "
          "ratios from this one run")


if __name__ == "__main__":
    main()

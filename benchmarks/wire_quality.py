"""Does a compressed wire codec cost model quality? Real federated training once per codec, same start.

In-process federation without Flower's runtime: the strategy (FedAvg + our mixin, speaking the codec) is
driven through ``configure_train`` / ``aggregate_train`` with a two-node grid; each node does what
``client_app.train`` does (``wire_client.receive`` -> ``client_tasks.train`` -> ``wire_client.send``,
its codec state in its own ``Context``). Embedded SmolLM2-135M-Instruct, LoRA on q_proj,v_proj, the shipped
medical sample split over 2 clients. Every codec run starts from the same seeded initial adapter, the
same torch RNG state and fresh client contexts, so runs differ only by what the codec did to the arrays.

Columns: bytes of the first round (full first-contact broadcast), steady-state bytes per round (rounds >= 2,
2 clients, down + up, ``ArrayRecord.count_bytes()`` of the actual messages), total, their ratios to fp32,
and the final held-out eval loss (mean of the 2 clients' validation splits) with its relative difference
to the fp32 run.

    python benchmarks/wire_quality.py                      # 6 rounds x 10 steps, batch 8
    python benchmarks/wire_quality.py --rounds 3 --steps 5 # shorter
    python benchmarks/wire_quality.py --quick              # tiny random Llama, CI smoke run (< 90 s)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import FakeGrid, tiny_model_dir  # benchmarks/ is the script's own directory
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flowertune.config import Config, from_flat
from flowertune.federation import client_runtime, client_tasks, wire_client
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.strategies import make_strategy
from flowertune.train.precision import prepare_for_training
from flowertune.train.schedule import cosine_annealing

CLIENTS = 2
MB = 1024**2
CODECS = "fp32,fp16,delta-int8,delta-int4,delta-int3,delta-int2,delta-topk-int8:0.1"
"""Default codec list; ``name:fraction`` sets the top-k fraction."""


def parse_codecs(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``"fp32,delta-topk-int8:0.1"`` -> ``[("fp32", {}), ("delta-topk-int8", {"fraction": 0.1})]`` (fp32 first)."""
    out = []
    for item in text.split(","):
        name, _, fraction = item.partition(":")
        out.append((name, {"fraction": float(fraction)} if fraction else {}))
    return [("fp32", {})] + [c for c in out if c[0] != "fp32"]


@dataclass
class Run:
    label: str
    bytes: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_loss: float = float("nan")
    seconds: float = 0.0




def make_config(model: str, rounds: int, steps: int, batch: int, seq: int) -> Config:
    return from_flat({
        "model.name": model, "model.lora.peft-lora-r": 32, "model.lora.peft-lora-alpha": 64,
        "model.lora.target-modules": "q_proj,v_proj", "num-server-rounds": rounds, "static.dataset.name": "sample:medical",
        "data.format": "medical", "train.seq-length": seq, "train.training-arguments.max-steps": steps,
        "train.training-arguments.per-device-train-batch-size": batch, "strategy.fraction-train": 1.0,
        "strategy.min-train-nodes": CLIENTS, "strategy.min-available-nodes": CLIENTS,
    })


def eval_loss(cfg: Config, arrays: dict[str, np.ndarray]) -> float:
    """Mean held-out loss of ``arrays`` over the clients' validation splits."""
    return float(np.mean([client_tasks.evaluate(cfg, pid, CLIENTS, arrays)["eval_loss"] for pid in range(CLIENTS)]))


def federate(cfg: Config, init: dict[str, np.ndarray], codec: str, options: dict[str, Any]) -> Run:
    """``num-server-rounds`` rounds with ``codec`` on both links, from ``init``; final eval loss."""
    label = codec + (f" {options['fraction']:g}" if options else "")
    run = Run(label)
    torch.manual_seed(cfg.train.seed)  # LoRA dropout draws the same masks in every codec run
    strategy = make_strategy(cfg.strategy, codec, **options)
    contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in FakeGrid().get_node_ids()}
    arrays = to_array_record(init)
    rounds = cfg.run.num_server_rounds
    t0 = time.perf_counter()
    for rnd in range(1, rounds + 1):
        lr = cosine_annealing(rnd, rounds, cfg.train.learning_rate_max, cfg.train.learning_rate_min)
        replies = []
        for msg in strategy.configure_train(rnd, arrays, ConfigRecord({"lr": lr}), FakeGrid()):
            node = msg.metadata.dst_node_id
            client_codec = wire_client.codec_of(msg)
            global_arrays = wire_client.receive(msg, contexts[node], client_codec)
            new, metrics = client_tasks.train(cfg, node - 1, CLIENTS, global_arrays, lr, rnd, 0.0)
            payload = wire_client.send(client_codec, new, global_arrays, contexts[node])
            replies.append(Message(RecordDict({"arrays": payload, "metrics": MetricRecord(metrics)}), reply_to=msg))
        arrays, metrics = strategy.aggregate_train(rnd, replies)
        if strategy.traffic.rejected:
            raise RuntimeError(f"{label}: rejected updates {strategy.traffic.rejected}")
        run.bytes.append(strategy.traffic.down + strategy.traffic.up)
        run.train_loss.append(float(metrics["train_loss"]))
    run.seconds = time.perf_counter() - t0
    run.eval_loss = eval_loss(cfg, from_array_record(arrays))
    return run


def report(runs: list[Run], cfg: Config, initial_eval: float) -> None:
    t = cfg.train
    print(f"\nWire codecs vs model quality: {CLIENTS} clients x {cfg.run.num_server_rounds} rounds x {t.max_steps} steps, "
          f"batch {t.batch_size}, seq {t.seq_length}, LoRA r={cfg.adapter.r} alpha={cfg.adapter.alpha} "
          f"{cfg.adapter.target_modules}; eval loss before training {initial_eval:.4f}")
    head = (f"{'codec':<22}{'round 1 MB':>11}{'steady MB/rnd':>14}{'total MB':>10}{'steady vs fp32':>15}"
            f"{'total vs fp32':>14}{'last train loss':>16}{'final eval loss':>16}{'vs fp32':>9}{'s':>7}")
    print(head)
    print("-" * len(head))
    ref = runs[0]
    ref_steady = np.mean(ref.bytes[1:] or ref.bytes)
    for r in runs:
        steady = np.mean(r.bytes[1:] or r.bytes)
        rel = 100 * (r.eval_loss - ref.eval_loss) / ref.eval_loss
        print(f"{r.label:<22}{r.bytes[0] / MB:>11.3f}{steady / MB:>14.3f}{sum(r.bytes) / MB:>10.3f}"
              f"{ref_steady / steady:>14.1f}x{sum(ref.bytes) / sum(r.bytes):>13.1f}x{r.train_loss[-1]:>16.4f}"
              f"{r.eval_loss:>16.4f}{rel:>+8.2f}%{r.seconds:>7.0f}")
    worst = max(abs(r.eval_loss - ref.eval_loss) / ref.eval_loss for r in runs)
    moved = (initial_eval - ref.eval_loss) / initial_eval
    print(f"\nlargest |eval loss difference| to fp32: {100 * worst:.2f}% (target within 1%); training moved the "
          f"fp32 eval loss by {100 * moved:.1f}% from the initial adapter")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, 2 rounds x 1 step, batch 2, seq 64")
    ap.add_argument("--rounds", type=int, default=None, help="federated rounds (default 6; quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="local steps per round (default 10; quick 1)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 8; quick 2)")
    ap.add_argument("--codecs", default=CODECS, help=f"comma-separated codecs (default {CODECS})")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    rounds = args.rounds or (2 if args.quick else 6)
    steps = args.steps or (1 if args.quick else 10)
    batch = args.batch or (2 if args.quick else 8)
    with tempfile.TemporaryDirectory(prefix="wire-quality-") as tmp:
        model = tiny_model_dir(Path(tmp)) if args.quick else "embedded"
        cfg = make_config(model, rounds, steps, batch, 64 if args.quick else 512)
        rt = client_runtime.runtime(cfg)
        prepare_for_training(rt.model)  # the fast defaults: bf16 frozen base where the CPU has it, fp32 adapter
        init, _ = client_tasks.initial_adapter(cfg)
        initial_eval = eval_loss(cfg, init)
        runs = []
        for codec, options in parse_codecs(args.codecs):
            runs.append(federate(cfg, init, codec, options))
            r = runs[-1]
            print(f"  {r.label}: eval loss {r.eval_loss:.4f}, {sum(r.bytes) / MB:.2f} MB, {r.seconds:.0f} s", flush=True)
    report(runs, cfg, initial_eval)


if __name__ == "__main__":
    main()

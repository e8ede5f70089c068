"""One whole federated round, in-process, two ways on the same data: the FlowerTune template's way and ours.

Both federations have 2 clients x ``--steps`` local steps (batch 16, seq 512, LoRA r=32 alpha 64 on
q_proj,v_proj, the embedded SmolLM2-135M-Instruct, the shipped medical sample) and go through real Flower
strategies driven without Flower's runtime (``configure_train`` -> client -> ``aggregate_train``).

(a) template-style, as Flower's official FlowerTune apps do it: per client and round, load the base model
    in fp32 from its safetensors directory, wrap it in PEFT (with gradient checkpointing, as the template),
    tokenize the partition again, pad each batch to its longest example (as the template's collator),
    full-logits fp32 loss, a trainer-style checkpoint (``save_pretrained`` + ``torch.save`` of the optimizer
    state), fp32 arrays on the wire; server: Flower's FedAvg, then load the base model and
    ``save_pretrained`` the adapter. Not reproduced: 4-bit re-quantization at each load (bitsandbytes needs
    CUDA), which only adds to (a)'s per-round cost.
(b) flowertune: the resident model (loaded before timing, as our workers keep it) prepared with the fast
    defaults (``train.precision.prepare_for_training``), ``client_tasks.train`` (each micro-batch packed into
    one row with segment attention, target-only loss), our strategy mixin, ``RunDir.checkpoint`` from the
    arrays; one federation per wire codec of ``--codecs`` (default fp32, the lossless default, and delta-int3).

Rounds are interleaved (a, b-fp32, b-delta-int3, ..., a) so background load hits both alike. Bytes are
``ArrayRecord.count_bytes()`` of the actual messages (2 clients, down + up). Peak RSS is sampled per phase.
Tokens/s counts real (non-padding) tokens over the local training loop only.

    python benchmarks/round_speed.py                      # full: (b) 3 rounds, (a) 2 rounds
    python benchmarks/round_speed.py --template-steps 3   # (a) trains 3 steps/client; also projects to --steps
    python benchmarks/round_speed.py --quick              # tiny random Llama, CI smoke run (< 90 s)
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from _common import FakeGrid, template_model, tiny_model_dir  # benchmarks/ is the script's own directory
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from flowertune.catalog import FORMATS
from flowertune.config import Config, from_flat
from flowertune.data.load import load_partition, split_validation
from flowertune.data.tokenize import end_of_turn_ids, render_prompt
from flowertune.federation import client_runtime, client_tasks, wire_client
from flowertune.federation.records import from_array_record, message_bytes, to_array_record
from flowertune.federation.rundir import RunDir
from flowertune.federation.strategies import make_strategy
from flowertune.models.adapter import adapter_config_dict
from flowertune.models.source import local_path
from flowertune.train.batching import IGNORE, Example, collate
from flowertune.train.loop import batch_order, pack_length_for

CLIENTS = 2
LR = 5e-4
MB = 1024**2


@dataclass(frozen=True)
class Setting:
    steps: int
    batch: int
    seq: int
    r: int = 32
    alpha: int = 64


@dataclass
class RoundStats:
    """One measured round of one variant."""

    variant: str
    round: int
    wall_s: float
    train_s: float  # sum over clients of the local training loop
    real_tokens: int
    processed_tokens: int
    bytes: int
    server_s: float
    peak_rss: int
    rss_after: int
    steps: int
    fixed_s: float = 0.0  # everything but the local training loop (loads, tokenizing, checkpoints, server)
    extra: dict[str, Any] = field(default_factory=dict)


class RssSampler:
    """Peak resident memory of this process per phase (sampled every 20 ms by a thread)."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.peak = 0
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def reset(self) -> None:
        self.peak = self.now()

    def now(self) -> int:
        return self._proc.memory_info().rss




def flowertune_config(model: str, s: Setting, out: Path) -> Config:
    return from_flat({
        "model.name": model, "model.lora.peft-lora-r": s.r, "model.lora.peft-lora-alpha": s.alpha,
        "model.lora.target-modules": "q_proj,v_proj", "static.dataset.name": "sample:medical",
        "data.format": "medical", "train.seq-length": s.seq, "train.training-arguments.max-steps": s.steps,
        "train.training-arguments.per-device-train-batch-size": s.batch, "strategy.fraction-train": 1.0,
        "strategy.min-train-nodes": CLIENTS, "strategy.min-available-nodes": CLIENTS, "run.output-dir": str(out),
    })


# ---------------------------------------------------------------- (a) the FlowerTune template's way

def template_tokenize(cfg: Config, tok: Any, partition_id: int) -> list[Example]:
    """The partition tokenized as the template does each round: truncated to ``seq`` and not padded (TRL's
    ``SFTTrainer`` tokenizes with ``padding=False``; its collator pads each batch to its longest example)."""
    part = load_partition(cfg.data, partition_id, CLIENTS)
    rows, _ = split_validation(part, cfg.data)
    fmt = FORMATS.get(cfg.data.format)
    eot = tok.decode(end_of_turn_ids(tok))
    out = []
    for row in rows:
        record = fmt(row, cfg.data)
        prompt = render_prompt(tok, record.text)
        ids = tok(prompt + record.response + eot, add_special_tokens=False, truncation=True,
                  max_length=cfg.train.seq_length)["input_ids"]
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        out.append(Example(ids, [IGNORE] * min(n, len(ids)) + ids[n:]))  # completion-only, as the template
    return out


def template_client(model_dir: str, cfg: Config, tok: Any, partition_id: int, msg: Message, steps: int,
                    ckpt_root: Path, acc: dict[str, float]) -> Message:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    model = template_model(model_dir, cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout)
    arrays = from_array_record(msg.content["arrays"])
    set_peft_model_state_dict(model, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    examples = template_tokenize(cfg, tok, partition_id)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(msg.content["config"]["lr"]))
    order = batch_order(len(examples), cfg.train.batch_size, steps, cfg.train.seed + 7919 * partition_id)
    model.train()
    t0 = time.perf_counter()
    for idx in order:
        batch = collate([examples[i] for i in idx], pad_id, mode="pad")  # padded to the batch's longest
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        acc["real"] += int(batch["attention_mask"].sum())
        acc["processed"] += batch["input_ids"].numel()
    acc["train_s"] += time.perf_counter() - t0
    ckpt = Path(tempfile.mkdtemp(prefix=f"client{partition_id}-", dir=ckpt_root))
    model.save_pretrained(ckpt)
    torch.save(optimizer.state_dict(), ckpt / "optimizer.pt")
    new = {k: v.detach().float().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}
    del model, optimizer
    gc.collect()
    metrics = MetricRecord({"num-examples": len(examples), "train_loss": float(out.loss)})
    return Message(RecordDict({"arrays": to_array_record(new), "metrics": metrics}), reply_to=msg)


def template_server_save(model_dir: str, cfg: Config, arrays: dict[str, np.ndarray], out: Path) -> None:
    """The template's evaluate_fn: load the base model, set the global adapter, ``save_pretrained``."""
    from peft import set_peft_model_state_dict

    model = template_model(model_dir, cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout)
    set_peft_model_state_dict(model, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    model.save_pretrained(out)
    del model
    gc.collect()


def template_round(model_dir: str, cfg: Config, tok: Any, arrays: Any, rnd: int, steps: int, work: Path,
                   rss: RssSampler) -> tuple[Any, RoundStats]:
    strategy = FedAvg(fraction_train=1.0, min_train_nodes=CLIENTS, min_available_nodes=CLIENTS)
    acc = {"real": 0, "processed": 0, "train_s": 0.0}
    rss.reset()
    t0 = time.perf_counter()
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": LR}), FakeGrid()))
    replies = [template_client(model_dir, cfg, tok, m.metadata.dst_node_id - 1, m, steps, work, acc) for m in msgs]
    ts = time.perf_counter()
    new, _ = strategy.aggregate_train(rnd, replies)
    template_server_save(model_dir, cfg, from_array_record(new), work / f"server-round-{rnd}")
    t1 = time.perf_counter()
    stats = RoundStats("a", rnd, t1 - t0, acc["train_s"], acc["real"], acc["processed"],
                       message_bytes(msgs) + message_bytes(replies), t1 - ts, rss.peak, rss.now(), steps)
    stats.fixed_s = stats.wall_s - stats.train_s
    return new, stats


# ---------------------------------------------------------------- (b) flowertune

def processed_tokens(cfg: Config, partition_id: int, server_round: int) -> int:
    """Tokens (real + padding) the packed batches of ``train_round`` hold: its batch order, collated again."""
    rt = client_runtime.runtime(cfg)
    data = client_runtime.client_data(cfg, rt, partition_id, CLIENTS).train
    seed = cfg.train.seed + (server_round if cfg.train.dynamic_data_seed else 0) + 7919 * partition_id
    order = batch_order(len(data), cfg.train.batch_size, cfg.train.max_steps * cfg.train.grad_accum, seed)
    pack = pack_length_for(rt.model)
    return sum(collate([data[i] for i in idx], rt.pad_id, pack_length=pack)["input_ids"].numel() for idx in order)


def flowertune_round(cfg: Config, state: dict[str, Any], rnd: int, rss: RssSampler) -> RoundStats:
    strategy, contexts, run_dir = state["strategy"], state["contexts"], state["run_dir"]
    rss.reset()
    t0 = time.perf_counter()
    msgs = list(strategy.configure_train(rnd, state["arrays"], ConfigRecord({"lr": LR}), FakeGrid()))
    replies, train_s, real = [], 0.0, 0
    for m in msgs:
        node = m.metadata.dst_node_id
        codec = wire_client.codec_of(m)
        global_arrays = wire_client.receive(m, contexts[node], codec)
        arrays, metrics = client_tasks.train(cfg, node - 1, CLIENTS, global_arrays, float(m.content["config"]["lr"]),
                                             rnd, 0.0)
        payload = wire_client.send(codec, arrays, global_arrays, contexts[node])
        train_s += metrics["train_s"]
        real += round(metrics["tokens_per_s"] * metrics["train_s"])
        replies.append(Message(RecordDict({"arrays": payload, "metrics": MetricRecord(metrics)}), reply_to=m))
    ts = time.perf_counter()
    new, _ = strategy.aggregate_train(rnd, replies)
    run_dir.checkpoint(rnd, from_array_record(new), state["adapter_config"])
    t1 = time.perf_counter()
    state["arrays"] = new
    stats = RoundStats(state["name"], rnd, t1 - t0, train_s, real, 0, strategy.traffic.down + strategy.traffic.up,
                       t1 - ts, rss.peak, rss.now(), cfg.train.max_steps,
                       extra={"model_loads": client_runtime.MODEL_LOADS})
    stats.fixed_s = stats.wall_s - stats.train_s
    return stats


# ---------------------------------------------------------------- report

def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def report(stats: list[RoundStats], s: Setting, steps_a: int, matmul: tuple[float, float] | None) -> None:
    variants = list(dict.fromkeys(x.variant for x in stats if x.variant != "a"))
    by = {v: [x for x in stats if x.variant == v] for v in ["a", *variants]}
    labels = {"a": "(a) template-style", **{v: f"(b) flowertune, {v[2:]}" for v in variants}}
    print(f"\nOne federated round: {CLIENTS} clients x {s.steps} steps, batch {s.batch}, seq {s.seq}, "
          f"LoRA r={s.r} alpha={s.alpha} q_proj,v_proj; torch threads {torch.get_num_threads()}")
    head = (f"{'variant':<28}{'rnd':>4}{'steps':>6}{'round s':>9}{'train s':>9}{'real tok/s':>11}{'pad %':>7}"
            f"{'MB/round':>10}{'server s':>9}{'server %':>9}{'peak RSS MB':>12}{'RSS after MB':>13}")
    print(head)
    print("-" * len(head))
    for v, rows in by.items():
        for x in rows:
            pad = 100 * (1 - x.real_tokens / x.processed_tokens) if x.processed_tokens else float("nan")
            print(f"{labels[v]:<28}{x.round:>4}{x.steps:>6}{x.wall_s:>9.1f}{x.train_s:>9.1f}"
                  f"{x.real_tokens / max(x.train_s, 1e-9):>11.0f}{pad:>7.1f}{x.bytes / MB:>10.3f}{x.server_s:>9.2f}"
                  f"{100 * x.server_s / x.wall_s:>9.2f}{x.peak_rss / MB:>12.0f}{x.rss_after / MB:>13.0f}")
    a = by["a"]
    if not a:
        return
    # (a) projected to s.steps local steps: its fixed costs as measured + its training time scaled per step
    a_round = mean([x.fixed_s + x.train_s * s.steps / x.steps for x in a])
    a_tps = sum(x.real_tokens for x in a) / sum(x.train_s for x in a)
    print()
    if steps_a != s.steps:
        print(f"(a) trained {steps_a} steps/client; its round time at {s.steps} steps is projected as measured "
              f"fixed costs + training time x {s.steps}/{steps_a}: {a_round:.1f} s")
    for v in variants:
        b = by[v]
        b_round = mean([x.wall_s for x in b])
        b_tps = sum(x.real_tokens for x in b) / sum(x.train_s for x in b)
        steady = [x.bytes for x in b if x.round > 1] or [x.bytes for x in b]
        print(f"{labels[v]:<28} round {b_round:.1f} s vs (a) {a_round:.1f} s: {a_round / b_round:.1f}x faster "
              f"(target >= 5x); real tokens/s {b_tps / a_tps:.1f}x; bytes/round (steady) {a[0].bytes / mean(steady):.1f}x "
              f"fewer; server {100 * mean([x.server_s / x.wall_s for x in b]):.2f}% of the round (target < 5%); "
              f"RSS after rounds {[round(x.rss_after / MB) for x in b]} MB; model loads {b[-1].extra['model_loads']}")
        if matmul:
            # (b)'s round if its training ran at the machine's matmul rate and nothing else cost time
            gflops, flops_token = matmul
            bound = mean([x.fixed_s + x.real_tokens * flops_token / (gflops * 1e9) for x in b])
            print(f"{'':<28} matmul-only bound on this machine ({gflops:.0f} GFLOP/s bf16, {flops_token / 1e6:.0f} "
                  f"MFLOP/token): round >= {bound:.1f} s, i.e. at most {a_round / bound:.1f}x faster than (a)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, 2 steps, batch 4, seq 128")
    ap.add_argument("--steps", type=int, default=None, help="local steps per client (default 10)")
    ap.add_argument("--template-steps", type=int, default=None, help="local steps of (a) (default: --steps)")
    ap.add_argument("--rounds-a", type=int, default=None, help="rounds of (a) (default 2; quick 1)")
    ap.add_argument("--rounds-b", type=int, default=3, help="rounds of (b) per codec")
    ap.add_argument("--codecs", default="fp32,delta-int3", help="wire codecs of (b), one federation each")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    s = Setting(steps=args.steps or 10, batch=16, seq=512) if not args.quick else Setting(steps=args.steps or 2,
                                                                                           batch=4, seq=128)
    steps_a = args.template_steps or s.steps
    rounds_a = args.rounds_a if args.rounds_a is not None else (1 if args.quick else 2)
    rss = RssSampler()
    with tempfile.TemporaryDirectory(prefix="round-speed-") as tmp:
        work = Path(tmp)
        model_dir = tiny_model_dir(work) if args.quick else local_path("embedded")
        model_name = model_dir if args.quick else "embedded"
        cfg = flowertune_config(model_name, s, work / "runs" / "b")
        # the resident model is loaded (and its data tokenized) before timing, as a worker holds them
        rt = client_runtime.runtime(cfg)  # loads and prepares the model (train.precision.prepare_for_training)
        for pid in range(CLIENTS):
            client_runtime.client_data(cfg, rt, pid, CLIENTS)
        init, _ = client_tasks.initial_adapter(cfg)
        adapter_config = adapter_config_dict(rt.model)
        processed = {pid: processed_tokens(cfg, pid, 1) for pid in range(CLIENTS)}  # same order every round
        states = {}
        for codec in args.codecs.split(","):
            name = f"b-{codec}"
            vcfg = flowertune_config(model_name, s, work / "runs" / name)
            states[name] = {"name": name, "strategy": make_strategy(vcfg.strategy, codec), "arrays": to_array_record(init),
                            "contexts": {n: Context(1, n, {}, RecordDict(), {}) for n in (1, 2)},
                            "run_dir": RunDir.create(vcfg), "adapter_config": adapter_config}
        tok = rt.tokenizer
        stats: list[RoundStats] = []
        a_arrays = to_array_record(init)
        a_rounds_done = 0

        def run_a() -> None:
            nonlocal a_arrays, a_rounds_done
            a_rounds_done += 1
            a_arrays, st = template_round(model_dir, cfg, tok, a_arrays, a_rounds_done, steps_a, work, rss)
            stats.append(st)
            print(f"  (a) round {st.round}: {st.wall_s:.1f} s", flush=True)

        if rounds_a > 0:
            run_a()
        for rnd in range(1, args.rounds_b + 1):
            for name, state in states.items():
                st = flowertune_round(cfg, state, rnd, rss)
                st.processed_tokens = sum(processed.values())
                stats.append(st)
                print(f"  {name} round {rnd}: {st.wall_s:.1f} s", flush=True)
        while a_rounds_done < rounds_a:
            run_a()
    matmul = None
    if not args.quick:
        from train_speed import flops_per_token, gemm_rate

        data = [e for pid in range(CLIENTS) for e in client_runtime.client_data(cfg, rt, pid, CLIENTS).train]
        share = sum(sum(1 for y in e.labels if y != IGNORE) for e in data) / sum(len(e.input_ids) for e in data)
        matmul = (gemm_rate("bfloat16"), flops_per_token(share))
    report(stats, s, steps_a, matmul)


if __name__ == "__main__":
    main()

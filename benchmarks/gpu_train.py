"""Local LoRA training on a GPU: a 0.5-1.5B model in 4 bits and in bf16, the template's way against ours.

Every configuration trains a fresh LoRA adapter (r=32, alpha 64, q_proj,v_proj) for ``--steps`` timed
steps (after ``--warmup`` untimed ones) on the same batches of the shipped medical sample (batch 16, seq
512), one configuration after the other in this process, and reports real (non-padding) tokens/s, its
ratio to the template-style configuration, peak CUDA memory of the timed steps, and the mean loss of the
timed steps (per target token for (f), the mean of the batch means for (t)). On the CPU smoke run the memory
column is the process's peak RSS so far (not per configuration).

(t) template-style, as Flower's FlowerTune apps load and train: ``BitsAndBytesConfig(load_in_4bit=True)``
    with the bitsandbytes defaults (fp4, fp32 compute), ``prepare_model_for_kbit_training`` with gradient
    checkpointing, batches right-padded to their longest example, the model's own full-logits loss.
(f) flowertune through its real client path (``client_runtime.runtime`` + ``train.loop.train_round``):
    the QLoRA recipe (NF4, double quant, bf16 compute) or plain bf16 weights (``--quantization 0`` row),
    target-only loss, batches packed into rows with masked sdpa or into one row with the segment attention.

    python benchmarks/gpu_train.py --model Qwen/Qwen2.5-0.5B-Instruct          # needs CUDA (+ bitsandbytes)
    python benchmarks/gpu_train.py --model /path/to/local/model --steps 10
    python benchmarks/gpu_train.py --quick     # tiny random Llama on the CPU (no 4-bit): CI smoke run

Without CUDA (and without ``--quick``) it stops and says so; ``benchmarks/train_speed.py`` is the CPU one.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from _common import template_model, tiny_model_dir  # benchmarks/ is the script's own directory

from flowertune.config import Config, from_flat
from flowertune.data.load import load_partition, split_validation
from flowertune.federation import client_runtime
from flowertune.models.load import load_tokenizer
from flowertune.models.source import local_path
from flowertune.train.batching import collate, count_real_tokens
from flowertune.train.loop import batch_order, train_round

MB = 1024**2
LR = 2e-4


@dataclass(frozen=True)
class Variant:
    """One training configuration."""

    name: str
    template: bool = False
    quantization: int = 4  # 0 on the CPU smoke run
    attn: str = "auto"  # flowertune's model.attn-implementation
    dtype: str = "auto"


VARIANTS = [
    Variant("(t) template: 4-bit fp4 + fp32 compute, grad ckpt, padded, full logits", template=True),
    Variant("(f) 4-bit NF4 + bf16, packed rows, masked sdpa, target-only loss", attn="sdpa"),
    Variant("(f) 4-bit NF4 + bf16, 1 row, segment attention (default)"),
    Variant("(f) bf16 weights (no quantization), 1 row, segment attention", quantization=0),
]


def config(model: str, v: Variant, batch: int, seq: int, steps: int) -> Config:
    return from_flat({
        "model.name": model, "model.quantization": v.quantization, "model.dtype": v.dtype,
        "model.attn-implementation": v.attn, "model.lora.peft-lora-r": 32, "model.lora.peft-lora-alpha": 64,
        "model.lora.target-modules": "q_proj,v_proj", "static.dataset.name": "sample:medical",
        "data.format": "medical", "train.seq-length": seq, "train.training-arguments.max-steps": steps,
        "train.training-arguments.per-device-train-batch-size": batch,
    })


def examples_for(cfg: Config) -> tuple[list, int]:
    """The medical sample's training rows of partition 0 of 1, tokenized as flowertune does."""
    tok = load_tokenizer(cfg.model)
    rt = SimpleNamespace(tokenizer=tok)
    rows, _ = split_validation(load_partition(cfg.data, 0, 1), cfg.data)
    return client_runtime.tokenize_rows(rows, cfg, rt), tok.pad_token_id


def template_train(model: Any, examples: list, batches: list[list[int]], pad_id: int) -> tuple[float, int, float]:
    """The template's steps (AdamW, clip 1.0); returns (mean loss, real tokens, seconds)."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    model.train()
    sync(device)
    t0, losses, real = time.perf_counter(), [], 0
    for idx in batches:
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id, mode="pad").items()}
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        real += count_real_tokens(batch)
    sync(device)
    return sum(losses) / len(losses), real, time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / MB
    from flowertune.memory import process_memory_mb

    return process_memory_mb()["peak_rss_mb"]


def measure(v: Variant, model_path: str, args: argparse.Namespace, examples: list, pad_id: int) -> dict[str, float]:
    cfg = config(model_path, v, args.batch, args.seq, args.steps)
    # the batches train_round draws for its warm-up round (seed 1) and its timed round (seed 0)
    warm = batch_order(len(examples), args.batch, args.warmup, seed=1)
    timed = batch_order(len(examples), args.batch, args.steps, seed=0)
    t_load = time.perf_counter()
    if v.template:
        model = template_model(model_path, 32, 64, 0.05, quantize=v.quantization > 0)
        load_s = time.perf_counter() - t_load
        if warm:
            template_train(model, examples, warm, pad_id)
        reset_peak()
        loss, real, seconds = template_train(model, examples, timed, pad_id)
    else:
        rt = client_runtime.runtime(cfg)
        model = rt.model
        load_s = time.perf_counter() - t_load
        if args.warmup:
            train_round(model, examples, replace(cfg.train, max_steps=args.warmup), LR, pad_id, seed=1)
        reset_peak()
        result = train_round(model, examples, cfg.train, LR, pad_id, seed=0)
        loss, real, seconds = result.loss, result.real_tokens, result.seconds
        client_runtime._RUNTIMES.clear()
        del rt  # the model is freed below, before the next configuration loads
    peak = peak_mb()
    del model
    gc.collect()
    reset_peak()
    return {"tok_s": real / seconds, "seconds": seconds, "real": real, "peak_mb": peak, "loss": loss,
            "load_s": load_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="hub id or local directory (0.5-1.5B)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--only", default="", help="comma-separated indices into the configuration list")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama on this machine's device, no 4-bit")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        sys.exit("gpu_train.py needs a CUDA GPU (this machine has none): run it on a GPU machine with "
                 "`pip install 'flowertune[gpu]'`, use --quick for the CPU smoke run, or "
                 "benchmarks/train_speed.py for the CPU benchmark.")
    variants = [VARIANTS[int(i)] for i in args.only.split(",")] if args.only else VARIANTS
    with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
        if args.quick:
            args.model, args.steps, args.warmup, args.batch, args.seq = tiny_model_dir(Path(tmp)), 2, 1, 4, 256
            variants = [Variant(v.name + " [quick: not quantized]" if v.quantization else v.name, v.template, 0,
                                v.attn, v.dtype) for v in variants]
        path = local_path(args.model)
        examples, pad_id = examples_for(config(path, variants[-1], args.batch, args.seq, args.steps))
        rows = []
        for v in variants:
            r = measure(v, path, args, examples, pad_id)
            print(f"  {v.name}: {r['tok_s']:.0f} real tok/s, peak {r['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
            rows.append((v, r))
    device = torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA)"
    print(f"\nLoRA r=32 q/v training of {args.model} on {device}: batch {args.batch}, seq {args.seq}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, medical sample ({len(examples)} examples)")
    mem = "peak CUDA MB" if cuda else "peak RSS MB"
    width = max(len(v.name) for v, _ in rows) + 2
    head = f"{'configuration':<{width}}{'real tok/s':>11}{'vs (t)':>8}{mem:>14}{'load s':>8}{'mean loss':>10}"
    print(head)
    print("-" * len(head))
    base = next((r["tok_s"] for v, r in rows if v.template), rows[0][1]["tok_s"])
    for v, r in rows:
        print(f"{v.name:<{width}}{r['tok_s']:>11.0f}{r['tok_s'] / base:>7.2f}x{r['peak_mb']:>14.0f}{r['load_s']:>8.1f}"
              f"{r['loss']:>10.4f}")


if __name__ == "__main__":
    main()

"""Local LoRA training speed of the embedded SmolLM2-135M-Instruct: each lever against the plain PEFT loop.

Every configuration trains a fresh LoRA adapter (r=8, q/v, AdamW) on the same batches of chat-template
instruction examples (64-512 tokens, mean ~200, response-only labels). Speed: all configurations step
round-robin in one process, so background load hits them alike; tokens/s counts real (non-padding) tokens
only. Peak RSS and the first-step loss come from a one-step subprocess per configuration.

    python benchmarks/train_speed.py            # both settings, all levers (~30 min on 2 idle cores)
    python benchmarks/train_speed.py --quick    # CI smoke run (< 2 min)
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

WORDS = (  # noqa: SIM905 - one readable word list
    "patient dose symptoms treatment clinical trial revenue margin quarter earnings function returns list "
    "value error the a of and to in is for with that on as this model data result analysis risk because "
    "increase decrease therefore however study shows significant effect market price interest rate loop "
    "variable string integer python compute answer question explain describe why how what which between"
).split()


@dataclass(frozen=True)
class Lever:
    """One training configuration."""

    name: str
    dtype: str = "float32"  # base weights: float32 | bfloat16
    autocast: bool = False  # bf16 autocast over fp32 weights
    mode: str = "pad"  # collate mode
    fused: bool = False  # hidden-states loss without full logits
    attn: str = "sdpa"
    compile: bool = False
    pack_length: int | None = 512  # None: the whole batch in one row
    large: bool = False  # also measured at batch 16 x 512


LEVERS = [
    Lever("plain PEFT loop (fp32, padded, full logits)", large=True),
    Lever("bf16 autocast", autocast=True, large=True),
    Lever("bf16 weights", dtype="bfloat16", large=True),
    Lever("bf16 weights + target-only loss", dtype="bfloat16", fused=True, large=True),
    Lever("bf16 + target-only + packed 512 rows (sdpa mask)", dtype="bfloat16", mode="pack", fused=True, large=True),
    Lever("bf16 + target-only + 1 row + segment attn (default)", dtype="bfloat16", mode="pack", fused=True,
          attn="segments", pack_length=None, large=True),
    Lever("fp32 + target-only + 1 row + segment attn", mode="pack", fused=True, attn="segments", pack_length=None),
    Lever("default + eager attention, packed 512 rows", dtype="bfloat16", mode="pack", fused=True, attn="eager"),
    # compiled with the masked kernel: the segment list is Python data, so dynamo would recompile per batch
    Lever("bf16 + target-only + packed 512 rows + torch.compile", dtype="bfloat16", mode="pack", fused=True,
          compile=True),
]
DEFAULT = 5
FP32_DEFAULT = 6  # what model.dtype=auto trains with on a CPU without native bf16 matmul (bf16 is emulated there)


def make_examples(tokenizer, n: int, max_len: int, seed: int = 0) -> list:
    """Chat-template instruction examples, 64-512 tokens before truncation to ``max_len``, mean ~200."""
    from flowertune.train.batching import IGNORE, Example

    rng = random.Random(seed)
    out = []
    while len(out) < n:
        target = min(512, max(64, int(rng.lognormvariate(5.15, 0.5))))
        q_words = max(4, int(target * rng.uniform(0.2, 0.7) * 0.8))
        a_words = max(4, int(target * 0.8) - q_words - 30)
        question = " ".join(rng.choice(WORDS) for _ in range(q_words)) + "?"
        answer = " ".join(rng.choice(WORDS) for _ in range(a_words)) + "."
        msgs = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_len]
        labels = ([IGNORE] * len(p_ids) + ids[len(p_ids):])[: len(ids)]
        out.append(Example(ids, labels))
    return out


def build(lever: Lever, tok):
    """A fresh LoRA model prepared as ``lever`` says."""
    import peft
    import torch

    from flowertune.config import ModelConfig
    from flowertune.models.load import load_model
    from flowertune.train.loss import _body_and_head
    from flowertune.train.precision import prepare_for_training

    torch.manual_seed(0)
    model = load_model(ModelConfig(name="embedded", dtype="float32"), device=torch.device("cpu"))
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    prepare_for_training(model, dtype=lever.dtype, attn_implementation=lever.attn)
    model.train()
    if lever.compile:
        body, _ = _body_and_head(model)
        body.compile(dynamic=True)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, torch.optim.AdamW(params, lr=2e-4)


def train_step(lever: Lever, model, params, opt, batch) -> float:
    """One optimizer step on ``batch``; returns the mean loss."""
    import torch

    from flowertune.train.loss import causal_lm_loss

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=lever.autocast):
        loss_sum, n = causal_lm_loss(model, batch, fused=lever.fused)
    loss = loss_sum / max(n, 1)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def batches_for(lever: Lever, examples: list, batch_size: int, pad_id: int) -> list:
    from flowertune.train.batching import collate

    return [collate(examples[i : i + batch_size], pad_id, mode=lever.mode, pack_length=lever.pack_length)
            for i in range(0, len(examples), batch_size)]


def memory_one(lever: Lever, batch_size: int, max_len: int) -> dict:
    """Peak RSS and first-step loss of ``lever`` alone (run in a subprocess)."""
    from flowertune.config import ModelConfig
    from flowertune.models.load import load_tokenizer

    tok = load_tokenizer(ModelConfig(name="embedded"))
    examples = make_examples(tok, batch_size, max_len)
    model, params, opt = build(lever, tok)
    loss = train_step(lever, model, params, opt, batches_for(lever, examples, batch_size, tok.pad_token_id)[0])
    from flowertune.memory import process_memory_mb

    return {"first_loss": loss, "peak_rss_mb": process_memory_mb()["peak_rss_mb"]}


def speed_all(levers: list[Lever], batch_size: int, max_len: int, steps: int,
              warmup: int = 1) -> list[tuple[float, float]]:
    """Real tokens/s of each lever by wall time and by CPU time, stepping all levers round-robin.

    Round-robin on the same batches puts every configuration under the same background load (shared
    CI/dev machines). Wall rate: real tokens / wall seconds over the timed steps. CPU rate: real tokens per
    CPU-second of this process times the thread count, i.e. the wall rate the machine would give if this
    process had its cores to itself (less sensitive to other load). Warm-up steps are not timed.
    """
    from flowertune.config import ModelConfig
    from flowertune.models.load import load_tokenizer
    from flowertune.train.batching import count_real_tokens

    tok = load_tokenizer(ModelConfig(name="embedded"))
    import torch

    examples = make_examples(tok, batch_size * (steps + warmup), max_len)
    runs = [(lv, *build(lv, tok), batches_for(lv, examples, batch_size, tok.pad_token_id)) for lv in levers]
    tokens, wall, cpu = [0] * len(levers), [0.0] * len(levers), [0.0] * len(levers)
    for step in range(steps + warmup):
        for k, (lever, model, params, opt, batches) in enumerate(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(lever, model, params, opt, batches[step])
            if step >= warmup:
                wall[k] += time.perf_counter() - t0
                cpu[k] += time.process_time() - c0
                tokens[k] += count_real_tokens(batches[step])
        print(f"  {batch_size}x{max_len}: step {step + 1}/{steps + warmup} done", file=sys.stderr)
    threads = torch.get_num_threads()
    return [(n / w, n / (c / threads)) for n, w, c in zip(tokens, wall, cpu)]


def gemm_rate(dtype_name: str, tokens: int = 2048, reps: int = 20) -> float:
    """Measured GFLOP/s of this machine's matmul at the model's widest layer shape ([tokens, 576] x [576, 1536])."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(tokens, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * tokens * 576 * 1536 * reps / (time.perf_counter() - t0) / 1e9


def flops_per_token(target_share: float) -> float:
    """Matmul FLOPs per real token of one LoRA training step of the embedded model.

    Forward and input-gradient of every frozen decoder linear (2 + 2 FLOPs per weight), the LM head only for
    target tokens (``target_share`` of all tokens); LoRA and attention scores are small and left out.
    """
    import torch

    from flowertune.config import ModelConfig
    from flowertune.models.load import load_model

    model = load_model(ModelConfig(name="embedded", dtype="float32"), device=torch.device("cpu"))
    body = sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}")
    head = model.get_output_embeddings().weight.numel()
    return 4 * body + 4 * head * target_share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two configurations, batch 4 x 256, 1 timed step")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    ap.add_argument("--only", default="", help="comma-separated indices into the lever list")
    ap.add_argument("--large-only", default="", help="comma-separated indices measured at 16 x 512 (default: marked)")
    ap.add_argument("--settings", default="4x256,16x512", help="batch x max tokens settings to measure")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        job = json.loads(args.one)
        print("RESULT " + json.dumps(memory_one(Lever(**job.pop("lever")), **job)))
        return
    from flowertune.models.dtype import cpu_has_fast_bf16

    # the smoke run trains the plain loop and the path the default config takes on this machine
    levers = [LEVERS[0], LEVERS[DEFAULT if cpu_has_fast_bf16() else FP32_DEFAULT]] if args.quick else LEVERS
    if args.only:
        levers = [LEVERS[int(i)] for i in args.only.split(",")]
    large = [LEVERS[int(i)] for i in args.large_only.split(",")] if args.large_only else [
        lv for lv in levers if lv.large]
    settings = []
    for setting in ["4x256"] if args.quick else args.settings.split(","):
        batch_size, max_len = (int(x) for x in setting.split("x"))
        settings.append((batch_size, max_len, levers if batch_size * max_len <= 4 * 256 else large))
    rows = []
    # quick: a small matmul, a few times (emulated bf16 runs at ~1 GFLOP/s on AVX2-only CPUs)
    bf16, fp32 = (gemm_rate(d, *((256, 3) if args.quick else ())) for d in ("bfloat16", "float32"))
    from flowertune.config import ModelConfig
    from flowertune.models.load import load_tokenizer

    sample = make_examples(load_tokenizer(ModelConfig(name="embedded")), 64, 512)
    share = sum(sum(1 for x in e.labels if x != -100) for e in sample) / sum(len(e.input_ids) for e in sample)
    per_token = flops_per_token(share)
    ceiling = bf16 * 1e9 / per_token
    for batch_size, max_len, chosen in settings:
        steps = args.steps or (1 if args.quick else 3 if batch_size * max_len <= 4 * 256 else 2)
        speeds = speed_all(chosen, batch_size, max_len, steps, args.warmup)
        for lever, (wall, cpu) in zip(chosen, speeds):  # printed early: the memory runs below can be long
            print(f"  {batch_size}x{max_len} {lever.name}: {wall:.0f} tok/s wall, {cpu:.0f} CPU-time", file=sys.stderr)
        for lever, speed in zip(chosen, speeds):
            lines = []
            # the smoke run measures the memory of the default path only (one model load less in CI)
            if not args.quick or lever is chosen[-1]:
                job = {"lever": asdict(lever), "batch_size": batch_size, "max_len": max_len}
                proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)],
                                      check=False, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            mem = json.loads(lines[-1][7:]) if lines else {"first_loss": float("nan"), "peak_rss_mb": float("nan")}
            rows.append((f"{batch_size}x{max_len}", lever.name, speed, (speed[0] / speeds[0][0],
                                                                         speed[1] / speeds[0][1]), mem))
    print(f"\n{'batch':<8} {'configuration':<52} {'real tok/s':>10} {'vs plain':>9} {'CPU-time tok/s':>15} "
          f"{'vs plain':>9} {'peak RSS MB':>12} {'loss step 1':>12}")
    for setting, name, speed, ratio, mem in rows:
        print(f"{setting:<8} {name:<52} {speed[0]:>10.0f} {ratio[0]:>8.2f}x {speed[1]:>15.0f} {ratio[1]:>8.2f}x "
              + (f"{mem['peak_rss_mb']:>12.0f} {mem['first_loss']:>12.4f}" if mem["peak_rss_mb"] == mem["peak_rss_mb"]
                 else f"{'-':>12} {'-':>12}"))  # (not measured in the smoke run)
    print(f"\nthis machine: matmul {bf16:.0f} GFLOP/s bf16, {fp32:.0f} GFLOP/s fp32 at [2048,576]x[576,1536]; "
          f"{per_token / 1e6:.0f} MFLOP of matmuls per real token -> matmul-only ceiling ~{ceiling:.0f} tok/s (bf16)")
    best = max(r[2][0] for r in rows)
    print(f"best measured: {best:.0f} tok/s = {100 * best / ceiling:.0f}% of that ceiling")


if __name__ == "__main__":
    main()

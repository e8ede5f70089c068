"""Bytes on the wire per round for each wire codec, on a real LoRA adapter trained for a few rounds.

A random-init Llama shaped like SmolLM2-135M (hidden 576, 30 layers, 9 heads, 3 kv heads, head_dim 64)
gets a PEFT LoRA adapter (r=32 on q_proj,v_proj). ``--per-round`` of ``--nodes`` nodes (seeded sampling),
each with a synthetic token stream, train it for a few AdamW steps per round; the server averages in fp32.
Every codec runs the same federation from the same start through the ``flowertune.wire`` functions
exactly as the apps use them: ``Downlink.payload_for`` / ``decode_broadcast`` down (a delta from the
node's own copy, full fp16/fp32 on first contact), ``encode`` with the client's residual up, ``decode`` against the server's fp32 global. Bytes are ``payload_bytes`` (=
``ArrayRecord.count_bytes()``), counted per destination node down and per client up.

Columns: bytes per round over rounds >= 2 (sampled clients, down + up) and its ratio to fp32; the first
round (full downlinks, first contact); mean delta-downlink and uplink message sizes; the amortized ratio
projected for ``--project`` (default 20 nodes, 2 per round, 200 rounds); the uplink reconstruction error of one round's client
*update* (max/mean absolute, relative L2; error feedback sends the rest in later rounds); the drift of
the final global adapter from the fp32 run's, relative to how far the fp32 run moved it; its held-out loss.

    python benchmarks/wire_bytes.py            # SmolLM2-135M shape, 4 rounds x 4 steps (~10 min on 2 cores)
    python benchmarks/wire_bytes.py --quick    # 2 layers, small vocab: smoke run (< 1 min)
    python benchmarks/wire_bytes.py --codecs fp32 delta-topk-int8 --fraction 0.05
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from flowertune.wire import CODECS, Downlink, decode_broadcast, get_codec, payload_bytes


@dataclass
class Result:
    codec: str
    first_round: int = 0
    steady: list[int] | None = None
    err_max: float = 0.0
    err_sum: float = 0.0
    err_n: int = 0
    err_l2: float = 0.0
    upd_l2: float = 0.0
    eval_loss: float = float("nan")
    seconds: float = 0.0
    final: dict[str, np.ndarray] | None = None
    full_sizes: list[int] = field(default_factory=list)  # full downlink payloads (first contact)
    delta_sizes: list[int] = field(default_factory=list)  # delta downlink payloads
    up_sizes: list[int] = field(default_factory=list)


def build_model(layers: int, vocab: int, rank: int) -> torch.nn.Module:
    """Random-init Llama in the SmolLM2-135M shape with a LoRA adapter on q_proj, v_proj."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=vocab, max_position_embeddings=512,
                      tie_word_embeddings=True)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    return get_peft_model(LlamaForCausalLM(cfg), lora)


def get_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def set_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()})


def client_batches(client: int, vocab: int, n: int, batch: int, seq: int) -> list[torch.Tensor]:
    """A learnable per-client token stream: a noisy affine recurrence with client-specific constants."""
    rng = np.random.default_rng(100 + client)
    a, b = 3 + 2 * client, 7 + 11 * client
    out = []
    for _ in range(n):
        x = np.empty((batch, seq), dtype=np.int64)
        x[:, 0] = rng.integers(0, vocab, batch)
        for t in range(1, seq):
            noise = rng.random(batch) < 0.1
            x[:, t] = np.where(noise, rng.integers(0, vocab, batch), (a * x[:, t - 1] + b) % vocab)
        out.append(torch.from_numpy(x))
    return out


def train(model: torch.nn.Module, batches: list[torch.Tensor], lr: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)  # a fresh optimizer per round, like the apps
    model.train()
    loss = torch.tensor(0.0)
    for x in batches:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(loss.detach())


@torch.no_grad()
def eval_loss(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    model.eval()
    return float(np.mean([float(model(input_ids=x, labels=x).loss) for x in batches]))


def run_codec(name: str, options: dict, model: torch.nn.Module, init: dict[str, np.ndarray],
              data: list[list[torch.Tensor]], held_out: list[torch.Tensor], rounds: int, steps: int,
              lr: float, per_round: int, seed: int = 0) -> Result:
    """One federation of ``rounds`` rounds; ``per_round`` of the ``len(data)`` nodes sampled each round."""
    codec = get_codec(name, **options)
    res = Result(name, steady=[])
    t0 = time.perf_counter()
    global_ = {k: v.copy() for k, v in init.items()}  # server: exact fp32 global
    downlink = Downlink(codec)  # server: each node's copy
    held = [(None, None)] * len(data)  # client state: (version, arrays) it holds
    residual: list = [None] * len(data)  # client state: error-feedback residual
    used = [0] * len(data)  # batches each node consumed
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        chosen = sorted(rng.choice(len(data), size=per_round, replace=False).tolist())
        round_bytes, decoded = 0, []
        for c in chosen:
            payload, base = downlink.payload_for(c, global_, r + 1)
            round_bytes += payload_bytes(payload)
            (res.full_sizes if base is None else res.delta_sizes).append(payload_bytes(payload))
            start = decode_broadcast(codec, payload, base, *held[c])
            held[c] = (r + 1, start)
            set_arrays(model, start)
            train(model, data[c][used[c]:used[c] + steps], lr)
            used[c] += steps
            trained = get_arrays(model)
            up, residual[c] = codec.encode(trained, start, residual[c])
            round_bytes += payload_bytes(up)
            res.up_sizes.append(payload_bytes(up))
            server_view = codec.decode(up, global_)
            decoded.append(server_view)
            for k in trained:  # error of the update the server applies vs the update the client made
                err = (server_view[k] - global_[k]) - (trained[k] - start[k])
                res.err_max = max(res.err_max, float(np.abs(err).max()))
                res.err_sum, res.err_n = res.err_sum + float(np.abs(err).sum()), res.err_n + err.size
                res.err_l2 += float((err.astype(np.float64) ** 2).sum())
                res.upd_l2 += float(((trained[k] - start[k]).astype(np.float64) ** 2).sum())
        downlink.settle(set(chosen))
        global_ = {k: np.mean([d[k] for d in decoded], axis=0, dtype=np.float64).astype(np.float32) for k in global_}
        if r == 0:
            res.first_round = round_bytes
        else:
            res.steady.append(round_bytes)
    res.final = global_
    set_arrays(model, global_)
    res.eval_loss = eval_loss(model, held_out)
    res.seconds = time.perf_counter() - t0
    return res


def amortized(r: Result, nodes: int, per_round: int, rounds: int) -> float:
    """Mean bytes per round of a ``rounds``-round federation where each node's first downlink is full.

    Arithmetic on this run's measured message sizes (mean full, delta and uplink payloads).
    """
    full = float(np.mean(r.full_sizes))
    delta = float(np.mean(r.delta_sizes)) if r.delta_sizes else full
    up = float(np.mean(r.up_sizes))
    messages = rounds * per_round
    first = min(nodes, messages)
    return (first * full + (messages - first) * delta + messages * up) / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 layers, vocab 2048, 3 rounds x 2 steps")
    ap.add_argument("--codecs", nargs="+", default=CODECS.names(), choices=CODECS.names())
    ap.add_argument("--fraction", type=float, default=0.1, help="top-k fraction for delta-topk-int8")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="local AdamW steps per client per round")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (no effect on the adapter; logits cost time)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--nodes", type=int, default=4, help="nodes in the federation")
    ap.add_argument("--per-round", type=int, default=2, help="nodes sampled per round (seeded)")
    ap.add_argument("--project", default="20,2,200",
                    help="nodes,per-round,rounds of the amortized projection (leaderboard medical: 20,2,200)")
    args = ap.parse_args()
    layers, vocab = (2, 2048) if args.quick else (30, 49152)
    vocab = args.vocab or vocab
    rounds = args.rounds or (3 if args.quick else 4)
    steps = args.steps or (2 if args.quick else 4)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model = build_model(layers, vocab, args.rank)
    init = get_arrays(model)
    n_params = sum(v.size for v in init.values())
    data = [client_batches(c % 4, vocab, rounds * steps, batch=4, seq=64) for c in range(args.nodes)]
    held_out = client_batches(0, vocab, 2, 4, 64)[:1] + client_batches(1, vocab, 2, 4, 64)[:1]
    print(f"adapter: {len(init)} tensors, {n_params:,} parameters ({n_params * 4 / 2**20:.2f} MiB fp32); "
          f"{layers} layers, r={args.rank}, {args.nodes} nodes, {args.per_round} per round, "
          f"{rounds} rounds x {steps} steps")
    fp32_full = args.per_round * 2 * payload_bytes(init)  # reference: full fp32 adapter, down + up per client
    results = []
    for name in ["fp32"] + [c for c in args.codecs if c != "fp32"]:  # fp32 first: the drift reference
        options = {"fraction": args.fraction} if name == "delta-topk-int8" else {}
        results.append(run_codec(name, options, model, init, data, held_out, rounds, steps, args.lr,
                                 args.per_round))
        print(f"  {name}: {results[-1].seconds:.0f} s", flush=True)

    p_nodes, p_per, p_rounds = (int(x) for x in args.project.split(","))
    print(f"\nfp32 full-adapter exchange: {fp32_full:,} bytes/round ({args.per_round} clients x (down + up))")
    header = (f"{'codec':<17}{'bytes/round':>13}{'vs fp32':>9}{'round 1':>13}{'delta down':>11}{'up':>10}"
              f"{'projected':>10}{'max|err|':>11}{'mean|err|':>11}{'rel L2':>9}{'drift':>9}{'eval loss':>11}")
    ref = results[0].final
    moved = sum(float(((ref[k] - init[k]).astype(np.float64) ** 2).sum()) for k in init) ** 0.5
    print(header + "\n" + "-" * len(header))
    for r in results:
        steady = float(np.mean(r.steady)) if r.steady else float(r.first_round)
        rel = (r.err_l2 / r.upd_l2) ** 0.5 if r.upd_l2 else 0.0
        drift = sum(float(((r.final[k] - ref[k]).astype(np.float64) ** 2).sum()) for k in init) ** 0.5 / moved
        proj = p_per * 2 * payload_bytes(init) / amortized(r, p_nodes, p_per, p_rounds)
        delta_down = float(np.mean(r.delta_sizes)) if r.delta_sizes else float("nan")
        print(f"{r.codec:<17}{steady:>13,.0f}{fp32_full / steady:>8.1f}x{r.first_round:>13,}{delta_down:>11,.0f}"
              f"{float(np.mean(r.up_sizes)):>10,.0f}{proj:>9.1f}x{r.err_max:>11.2e}"
              f"{r.err_sum / max(r.err_n, 1):>11.2e}{rel:>9.4f}{drift:>9.4f}{r.eval_loss:>11.4f}")
    print(f"bytes/round: mean over rounds >= 2 (first-contact full downlinks included); delta down / up: mean "
          f"payload per message; projected: fp32 / amortized bytes per round for {p_nodes} nodes, {p_per} per "
          f"round, {p_rounds} rounds (each node's first downlink full), from this run's message sizes")


if __name__ == "__main__":
    main()

"""The server's round loop: Flower strategies sample and aggregate; this loop adds what an LLM
federation needs around them (initial adapter from a client, held-out eval every K rounds,
checkpoints, per-round metrics and the communication budget).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from flowertune.config import Config
from flowertune.federation.rundir import RunDir
from flowertune.federation.strategies import make_strategy, message_bytes
from flowertune.train.schedule import cosine_annealing

log = logging.getLogger(__name__)

BUDGET_MB = 200_000  # the FlowerTune leaderboard's communication budget
MB = 1024**2


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    """Block until ``n`` nodes are connected (or raise after ``timeout`` seconds)."""
    t0 = time.monotonic()
    while len(nodes := sorted(grid.get_node_ids())) < n:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {len(nodes)} of {n} SuperNodes connected after {timeout:.0f} s")
        time.sleep(0.5)
    return nodes


def initial_adapter(grid: Grid, cfg: Config) -> tuple[ArrayRecord, dict[str, Any], int]:
    """Ask one client for its freshly initialised (seeded) adapter and its PEFT config.

    The server never loads the base model: the adapter shapes and ``adapter_config.json`` come
    from the client that built them.
    """
    node = wait_for_nodes(grid, max(cfg.strategy.min_available_nodes, 1), cfg.strategy.round_timeout)[0]
    msg = Message(RecordDict({"config": ConfigRecord({"want": "initial-adapter"})}), dst_node_id=node,
                  message_type=MessageType.QUERY)
    replies = list(grid.send_and_receive([msg], timeout=cfg.strategy.round_timeout))
    if not replies or replies[0].has_error():
        err = replies[0].error if replies else "no reply"
        raise RuntimeError(f"node {node} could not build the initial adapter: {err}")
    content = replies[0].content
    adapter_config = json.loads(str(content.config_records["adapter"]["json"]))
    return content.array_records["arrays"], adapter_config, message_bytes(replies)


def client_memory(replies: list[Message]) -> dict[str, float | None]:
    """Largest current and peak RSS (and CUDA peak) over this round's client replies, in MB."""
    out: dict[str, float | None] = {}
    for name in ("rss_mb", "peak_rss_mb", "peak_cuda_mb"):
        values = [float(m.content["metrics"][name]) for m in replies
                  if not m.has_error() and "metrics" in m.content.metric_records
                  and name in m.content["metrics"]]
        if values or name != "peak_cuda_mb":
            out[f"client_{name}"] = max(values) if values else None
    return out


def _as_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def evaluate_round(strategy: Any, grid: Grid, server_round: int, arrays: ArrayRecord, cfg: Config) -> float | None:
    """Federated held-out loss of the global adapter (weighted by the clients' example counts)."""
    msgs = strategy.configure_evaluate(server_round, arrays, ConfigRecord({}), grid)
    if not msgs:
        return None
    replies = grid.send_and_receive(msgs, timeout=cfg.strategy.round_timeout)
    metrics = strategy.aggregate_evaluate(server_round, replies)
    return float(metrics["eval_loss"]) if metrics and "eval_loss" in metrics else None


def run_federation(grid: Grid, cfg: Config, run_dir: RunDir) -> dict[str, Any]:
    """Run ``num-server-rounds`` rounds and write everything into ``run_dir``; returns the summary."""
    t_start = time.perf_counter()
    options = {"fraction": cfg.run.wire_topk_fraction} if cfg.run.wire_codec == "delta-topk-int8" else {}
    strategy = make_strategy(cfg.strategy, cfg.run.wire_codec, **options)
    arrays, adapter_config, init_bytes = initial_adapter(grid, cfg)
    n_params = int(sum(a.numpy().size for a in arrays.values()))
    log.info("run directory %s; adapter: %d arrays, %d parameters, %.2f MB fp32", run_dir.path, len(arrays),
             n_params, arrays.count_bytes() / MB)
    rounds = cfg.run.num_server_rounds
    cumulative, warned = 0, False
    eval_every = cfg.train.eval_every_round
    first_eval = evaluate_round(strategy, grid, 0, arrays, cfg) if eval_every > 0 else None
    run_dir.log({"round": 0, "eval_loss": first_eval, "bytes_init": init_bytes, "wall_s": time.perf_counter() - t_start})
    log.info("round 0: eval_loss %s", first_eval)
    last_eval = first_eval
    stalled: list[int] = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        lr = cosine_annealing(r, rounds, cfg.train.learning_rate_max, cfg.train.learning_rate_min)
        msgs = strategy.configure_train(r, arrays, ConfigRecord({"lr": lr}), grid)
        replies = list(grid.send_and_receive(msgs, timeout=cfg.strategy.round_timeout))
        new_arrays, train_metrics = strategy.aggregate_train(r, replies)
        if new_arrays is not None:
            arrays = new_arrays
        else:
            stalled.append(r)
            log.warning("round %d: no usable client update; the global adapter is unchanged", r)
        traffic = strategy.traffic
        cumulative += traffic.down + traffic.up
        if not warned and cumulative > BUDGET_MB * MB:
            warned = True
            log.warning("communication cost %.0f MB exceeds the leaderboard budget of %d MB", cumulative / MB, BUDGET_MB)
        due_eval = eval_every > 0 and (r % eval_every == 0 or r == rounds)
        eval_loss = evaluate_round(strategy, grid, r, arrays, cfg) if due_eval else None
        last_eval = eval_loss if eval_loss is not None else last_eval
        if r % cfg.train.save_every_round == 0 and r != rounds:
            run_dir.checkpoint(r, _as_numpy(arrays), adapter_config)
        tm = dict(train_metrics or {})
        row = {
            "round": r, "lr": lr, "train_loss": tm.get("train_loss"), "eval_loss": eval_loss,
            "clients": len(msgs), "replies": len(replies), "rejected": traffic.rejected,
            "failures": sum(1 for m in replies if m.has_error()),
            "bytes_down": traffic.down, "bytes_up": traffic.up, "bytes_round": traffic.down + traffic.up,
            "bytes_cumulative": cumulative, "bytes_eval_down": traffic.eval_down,
            "client_tokens_per_s": tm.get("tokens_per_s"), "client_model_loads": tm.get("model_loads"),
            **client_memory(replies),
            "round_s": time.perf_counter() - t0, "wall_s": time.perf_counter() - t_start,
        }
        run_dir.log(row)
        log.info("round %d/%d: train_loss %.4f eval_loss %s | %.2f MB this round, %.2f MB total | %.1f s",
                 r, rounds, row["train_loss"] or float("nan"), eval_loss, row["bytes_round"] / MB, cumulative / MB,
                 row["round_s"])
    summary = {
        "rounds": rounds, "eval_loss_first": first_eval, "eval_loss_last": last_eval,
        "bytes_cumulative": cumulative, "comm_cost_mb": cumulative / MB, "adapter_parameters": n_params,
        "wall_s": time.perf_counter() - t_start, "run_dir": str(run_dir.path), "rounds_without_update": stalled,
    }
    final = run_dir.finish(_as_numpy(arrays), adapter_config, summary)
    log.info("done: eval loss %s -> %s, communication %.2f MB, %.0f s; final adapter %s",
             first_eval, last_eval, cumulative / MB, summary["wall_s"], final)
    return summary

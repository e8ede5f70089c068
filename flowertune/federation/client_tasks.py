"""What a client does for each message, as plain functions of (config, partition, arrays).

``client_app.py`` calls these in-process, or through a resident worker (``worker.py``) when Flower
runs every message in a fresh process.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from flowertune.config import Config
from flowertune.federation import client_runtime as rt_mod
from flowertune.memory import process_memory_mb
from flowertune.models.adapter import adapter_config_dict, freeze_lora_a, get_arrays, set_arrays
from flowertune.models.lora_algebra import fp16_exact, is_lora_a
from flowertune.train.loop import evaluate_loss, train_round

Arrays = dict[str, np.ndarray]
log = logging.getLogger(__name__)


def initial_adapter(cfg: Config) -> tuple[Arrays, str]:
    """The freshly initialised (seeded) adapter and its ``adapter_config.json`` text."""
    rt = rt_mod.runtime(cfg)
    arrays = get_arrays(rt.model)
    if cfg.strategy.aggregation == "freeze-a":  # A never changes: make it what an fp16 first downlink carries
        arrays = {k: fp16_exact(v) if is_lora_a(k) else v for k, v in arrays.items()}
    return arrays, json.dumps(adapter_config_dict(rt.model))


def train(cfg: Config, partition_id: int, num_partitions: int, arrays: Arrays, lr: float, server_round: int,
          proximal_mu: float) -> tuple[Arrays, dict[str, Any]]:
    """One local round from the global ``arrays``; returns the new arrays and the metrics."""
    rt = rt_mod.runtime(cfg)
    data = rt_mod.client_data(cfg, rt, partition_id, num_partitions)
    set_arrays(rt.model, arrays)
    freeze_lora_a(rt.model, cfg.strategy.aggregation == "freeze-a")
    seed = cfg.train.seed + (server_round if cfg.train.dynamic_data_seed else 0) + 7919 * partition_id
    step_log = StepLog(partition_id, server_round, cfg.run.progress_every_s,
                       private=cfg.train.dp_sgd_noise_multiplier > 0)
    if cfg.train.dp_sgd_noise_multiplier > 0:  # record-level DP: the loss and the speed stay on the node
        from flowertune.train.dpsgd import dp_sgd_round

        dp_sgd_round(rt.model, data.train, cfg.train, lr, rt.pad_id, seed, proximal_mu, on_step=step_log)
        metrics: dict[str, Any] = {"num-examples": len(data.train), "model_loads": rt_mod.MODEL_LOADS,
                                   "partition-id": partition_id}  # not the loss, speed or memory: they depend on
        # the records drawn (DP_SGD_METRICS, the gate's schema under DP-SGD)
        return get_arrays(rt.model), metrics
    result = train_round(rt.model, data.train, cfg.train, lr, rt.pad_id, seed, proximal_mu, on_step=step_log)
    metrics = {
        "train_loss": result.loss,
        "num-examples": len(data.train),
        "tokens_per_s": result.real_tokens / max(result.seconds, 1e-9),
        "train_s": result.seconds,
        "model_loads": rt_mod.MODEL_LOADS,
        "partition-id": partition_id,
        **process_memory_mb(),
    }
    return get_arrays(rt.model), metrics


class StepLog:
    """``partition p, round r: step k/n, loss, tokens/s`` at most every ``every_s`` seconds (and at the last
    step); in simulation these lines reach ``flowertune run``'s terminal and ``<run>/run.log``. 0: silent."""

    def __init__(self, partition_id: int, server_round: int, every_s: float, private: bool = False) -> None:
        self.partition_id, self.server_round, self.every_s = partition_id, server_round, every_s
        self.private = private  # DP-SGD: no statistic of the records drawn in any log line
        self.last = time.monotonic()

    def __call__(self, step: int, steps: int, loss: float, real_tokens: int, seconds: float) -> None:
        now = time.monotonic()
        if self.every_s <= 0 or (now - self.last < self.every_s and step < steps):
            return
        self.last = now
        if self.private:
            log.info("partition %d, round %d: step %d/%d (DP-SGD), %.0f s", self.partition_id, self.server_round, step,
                     steps, seconds)
            return
        log.info("partition %d, round %d: step %d/%d, step loss %.4f, %.0f tokens/s, %.0f s", self.partition_id,
                 self.server_round, step, steps, loss, real_tokens / max(seconds, 1e-9), seconds)


def evaluate(cfg: Config, partition_id: int, num_partitions: int, arrays: Arrays) -> dict[str, Any]:
    """Held-out loss of ``arrays`` on this partition's validation split."""
    rt = rt_mod.runtime(cfg)
    data = rt_mod.client_data(cfg, rt, partition_id, num_partitions)
    set_arrays(rt.model, arrays)
    loss, n_tokens = evaluate_loss(rt.model, data.validation, cfg.train.batch_size, rt.pad_id)
    return {"eval_loss": loss if n_tokens else 0.0, "num-examples": len(data.validation)}


def node_info(cfg: Config, partition_id: int, num_partitions: int) -> dict[str, Any]:
    """This node's check-in: its partition, after the checks it alone can make (data, model, machine)."""
    from flowertune.preflight import client_checks

    return client_checks(cfg, partition_id, num_partitions)


TASKS = {"initial_adapter": initial_adapter, "train": train, "evaluate": evaluate, "node_info": node_info}

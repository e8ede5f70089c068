"""The server's round loop: Flower strategies sample and aggregate; this loop adds what an LLM
federation needs around them (node check-in, initial adapter from a client, held-out eval every K
rounds, checkpoints, per-round metrics, the communication budget, and a crash-safe state every round
from which ``flowertune run --resume`` continues).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from flowertune.config import Config
from flowertune.eval.leaderboard import MB
from flowertune.federation.progress import RoundTicker, send_and_receive
from flowertune.federation.records import message_bytes, to_array_record
from flowertune.federation.rundir import RunDir, read_metrics
from flowertune.federation.secagg import secure_round
from flowertune.federation.sinks import Sinks
from flowertune.federation.stack.base import aggregator, find_layer
from flowertune.federation.stack.codec import WireCodec
from flowertune.federation.stack.gate import error_line
from flowertune.federation.stack.privacy import PrivacyBudgetReached, PrivacyLedger, RecordLedger
from flowertune.federation.stack.sampling import NodeWaitTimeout
from flowertune.federation.state import split_prefixed
from flowertune.federation.strategies import describe, export_state, import_state, make_strategy
from flowertune.train.schedule import cosine_annealing
from flowertune.wire import options_from

log = logging.getLogger(__name__)

BUDGET_MB = 200_000  # the FlowerTune leaderboard's communication budget


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why and what to do (the last round's state is saved)."""


@dataclass
class NodeDirectory:
    """What the server knows of each node: its partition, learned by asking it once (``node-info``).

    The check-in doubles as the client-side preflight: the node loads its partition and checks that it
    can run the configured quantization. A node that fails is left out of sampling and its one-line
    reason is kept (logged, and written to the next metrics row).
    """

    timeout: float
    partition: dict[int, int] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)  # training rows each node declared at check-in
    ranks: dict[int, int] = field(default_factory=dict)  # the LoRA rank each node declared (model.lora.node-ranks)
    max_rank: int | None = None  # the global adapter's rank: a node's may not exceed it
    same_rank: str = ""  # why every node must train at max_rank (SecAgg+, DoRA), or ''
    failed: dict[int, str] = field(default_factory=dict)
    duplicate: dict[int, int] = field(default_factory=dict)  # refused: its partition was held; checks in again later
    new_errors: list[str] = field(default_factory=list)

    def refresh(self, grid: Grid) -> None:
        """Check in every connected node not seen before."""
        new = sorted(n for n in grid.get_node_ids()
                     if n not in self.partition and n not in self.failed and n not in self.duplicate)
        if not new:
            return
        msgs = [Message(RecordDict({"config": ConfigRecord({"want": "node-info"})}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in new]
        replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(msgs, timeout=self.timeout)}
        for n in new:
            reply = replies.get(n)
            why = check_in(reply, set(self.partition.values()), self.max_rank, self.same_rank)
            if isinstance(why, tuple):
                self.partition[n], self.rows[n], rank = why
                if rank is not None:
                    self.ranks[n] = rank
                    if rank != self.max_rank:
                        log.info("node %d (partition %d) trains at LoRA rank %d of the global's %s", n, why[0], rank,
                                 self.max_rank)
                continue
            if why.startswith("partition ") and "duplicate" in why:
                self.duplicate[n] = int(why.split()[1])
            else:
                self.failed[n] = why
            self.new_errors.append(f"node {n}: {why}")
            log.error("node %d cannot take part: %s", n, why)

    def forget(self, gone: Iterable[int]) -> None:
        """Nodes no longer connected (a node that comes back checks in again, under a new node id)."""
        for n in gone:
            freed = self.partition.pop(n, None)
            self.rows.pop(n, None)
            self.ranks.pop(n, None)
            self.failed.pop(n, None)
            self.duplicate.pop(n, None)
            # a node refused for holding the same partition checks in again (a restarted SuperNode, say)
            self.duplicate = {d: p for d, p in self.duplicate.items() if p != freed}

    def order(self, node_ids: Iterable[int]) -> list[int]:
        """The usable ones of ``node_ids`` by partition id (stable across runs; node ids are random)."""
        return sorted((n for n in node_ids if n in self.partition), key=lambda n: (self.partition[n], n))

    def wait(self, grid: Grid, n: int, deadline_s: float) -> list[int]:
        """Block until ``n`` usable nodes are connected; :class:`RunStopped` after ``deadline_s`` seconds."""
        t0 = time.monotonic()
        while True:
            self.refresh(grid)
            usable = self.order(grid.get_node_ids())
            if len(usable) >= n:
                return usable
            if time.monotonic() - t0 > deadline_s:
                failed = "; ".join(f"node {k}: {v}" for k, v in sorted(self.failed.items())[:5])
                raise RunStopped(
                    f"only {len(usable)} of the {n} SuperNodes the run needs (strategy.min-available-nodes) are "
                    f"connected and usable after {deadline_s:.0f} s (strategy.node-wait-timeout)"
                    + (f"; failed check-in: {failed}" if failed else "")
                    + ". Fix or start the missing SuperNodes and continue with `flowertune run --resume RUN_DIR`, "
                    "or lower strategy.min-available-nodes")
            time.sleep(1.0)

    def take_errors(self) -> list[str]:
        out, self.new_errors = self.new_errors, []
        return out


def check_in(reply: Message | None, taken: set[int], max_rank: int | None = None,
             same_rank: str = "") -> tuple[int, int, int | None] | str:
    """``(partition id, training rows, LoRA rank or None)`` of a node's check-in reply, or why it is refused.
    ``max_rank``: the global adapter's (a node may train at any rank up to it); ``same_rank``: why this run
    needs every node at exactly that rank (SecAgg+, DoRA), or ''. Never raises."""
    if reply is None:
        return "no reply to the check-in"
    if reply.has_error():
        return error_line(reply)
    try:
        info = reply.content.config_records["info"]
        pid, rows = info["partition-id"], info["rows"]
    except Exception:  # noqa: BLE001  (whatever a node sends, the check-in refuses it with a reason)
        return "check-in reply without its 'info' record, partition-id and rows"
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        return f"check-in partition-id {str(pid)[:40]!r} is not a non-negative integer"
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        return f"check-in rows {str(rows)[:40]!r} is not a positive integer"
    rank = info.get("lora-rank") if hasattr(info, "get") else None
    if rank is not None:
        top = max_rank if max_rank is not None else math.inf
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= top:
            return (f"check-in lora-rank {str(rank)[:40]!r} is not an integer in [1, "
                    f"model.lora.peft-lora-r={max_rank}]")
        if same_rank and rank != max_rank:
            return f"it trains at rank {rank}, and {same_rank} needs every node at model.lora.peft-lora-r={max_rank}"
    if pid in taken:
        return f"partition {pid} is already held by another connected node (a duplicate partition-id)"
    return pid, rows, rank


def check_initial_adapter(arrays: ArrayRecord, adapter_config: Any, cfg: Config) -> str | None:
    """Why the adapter a client built cannot start the run (rank, finiteness, shape), or None."""
    rank = adapter_config.get("r") if isinstance(adapter_config, dict) else None
    if rank != cfg.adapter.r:
        return f"its adapter_config has r={str(rank)[:20]}, the config asks for model.lora.peft-lora-r={cfg.adapter.r}"
    if not len(arrays):
        return "it sent no adapter arrays"
    for k, v in arrays.items():
        a = v.numpy()
        if a.dtype != np.float32 or not np.isfinite(a).all():
            return f"array {k!r} is not finite fp32"
        if ("lora_A" in k and a.shape[0] != cfg.adapter.r) or ("lora_B" in k and a.shape[-1] != cfg.adapter.r):
            return f"array {k!r} has shape {a.shape}, not of rank {cfg.adapter.r}"
    return None


def initial_adapter(grid: Grid, node: int, cfg: Config) -> tuple[ArrayRecord, dict[str, Any], int]:
    """Ask one client for its freshly initialised (seeded) adapter and its PEFT config.

    The server never loads the base model: the adapter shapes and ``adapter_config.json`` come
    from the client that built them.
    """
    msg = Message(RecordDict({"config": ConfigRecord({"want": "initial-adapter"})}), dst_node_id=node,
                  message_type=MessageType.QUERY)
    replies = list(grid.send_and_receive([msg], timeout=cfg.strategy.round_timeout))
    if not replies or replies[0].has_error():
        raise RunStopped(f"node {node} could not build the initial adapter: "
                         f"{error_line(replies[0]) if replies else 'no reply'}")
    try:
        content = replies[0].content
        adapter_config = json.loads(str(content.config_records["adapter"]["json"]))
        arrays = content.array_records["arrays"]
    except Exception as exc:  # noqa: BLE001
        raise RunStopped(f"node {node} sent a malformed initial adapter ({type(exc).__name__})") from None
    why = check_initial_adapter(arrays, adapter_config, cfg)
    if why is not None:
        raise RunStopped(f"node {node} could not build the initial adapter: {why}")
    return arrays, adapter_config, message_bytes(replies)


def client_memory(client_metrics: dict[int, dict[str, float]]) -> dict[str, float | None]:
    """Largest current and peak RSS (and CUDA peak) over this round's accepted replies (checked by the gate), MB."""
    out: dict[str, float | None] = {}
    for name in ("rss_mb", "peak_rss_mb", "peak_cuda_mb"):
        values = [m[name] for m in client_metrics.values() if m.get(name)]
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


@dataclass
class Progress:
    """Everything the loop carries from round to round (what the per-round state file holds)."""

    round: int
    arrays: ArrayRecord
    adapter_config: dict[str, Any]
    cumulative: int = 0
    warned: bool = False
    first_eval: float | None = None
    last_eval: float | None = None
    wall_s: float = 0.0
    run_key: str = ""

    def to_state(self, strategy: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The state file's header and arrays: the loop's progress and each layer's state under its name."""
        layer_meta, layer_arrays = export_state(strategy)
        arrays = {f"global/{k}": v for k, v in _as_numpy(self.arrays).items()}
        arrays.update(layer_arrays)
        meta = {
            "round": self.round, "adapter_config": self.adapter_config, "global_keys": list(self.arrays.keys()),
            "cumulative": self.cumulative, "warned": self.warned, "first_eval": self.first_eval,
            "last_eval": self.last_eval, "wall_s": self.wall_s, **layer_meta,
            "strategy_name": type(aggregator(strategy)).__name__, "codec": _codec_name(strategy),
            "stack": describe(strategy),
        }
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], strategy: Any, run_key: str) -> Progress:
        """The progress, with every layer's saved state restored into ``strategy``."""
        saved = str(meta["strategy_name"]).removesuffix("FT")  # files before the stack named FedAvgFT...
        name, codec = type(aggregator(strategy)).__name__, _codec_name(strategy)
        if saved != name or meta["codec"] != codec:
            raise RunStopped(f"the saved state is of {saved}/{meta['codec']}, the config asks for {name}/{codec}")
        glob = split_prefixed(arrays, "global")
        import_state(strategy, meta, arrays)
        return cls(round=int(meta["round"]), arrays=to_array_record({k: glob[k] for k in meta["global_keys"]}),
                   adapter_config=meta["adapter_config"], cumulative=int(meta["cumulative"]),
                   warned=bool(meta["warned"]), first_eval=meta["first_eval"], last_eval=meta["last_eval"],
                   wall_s=float(meta["wall_s"]), run_key=run_key)  # (a "stalled" key of older files: unused)


def _codec_name(strategy: Any) -> str:
    return find_layer(strategy, WireCodec).codec.name


def forget_gone(strategy: Any, directory: NodeDirectory, grid: Grid) -> None:
    """Drop what the server keeps per node (check-in, downlink copy) for nodes no longer connected: a run with
    churn keeps memory flat; a node that returns checks in again and gets the full adapter first."""
    gone = (set(directory.partition) | set(directory.failed) | set(directory.duplicate)) - set(grid.get_node_ids())
    if gone:
        directory.forget(gone)
        find_layer(strategy, WireCodec).forget(gone)


def train_round(strategy: Any, grid: Grid, r: int, progress: Progress, lr: float, cfg: Config,
                directory: NodeDirectory, past_round_s: list[float] | None = None,
                ) -> tuple[ArrayRecord | None, Any, list[Message], list[Message], list[str]]:
    """One training round, resampled up to ``strategy.round-retries`` times while fewer than
    ``strategy.min-train-nodes`` usable updates come back; :class:`RunStopped` when none of the tries has them.
    """
    need = cfg.strategy.min_train_nodes
    errors: list[str] = []
    for attempt in range(cfg.strategy.round_retries + 1):
        forget_gone(strategy, directory, grid)
        directory.wait(grid, max(cfg.strategy.min_available_nodes, need), cfg.strategy.node_wait_timeout)
        strategy.ctx.attempt = attempt
        config = ConfigRecord({"lr": lr, "run-key": progress.run_key})
        msgs = list(strategy.configure_train(r, progress.arrays, config, grid))
        ticker = RoundTicker(r, cfg.run.num_server_rounds, cfg.run.progress_every_s, list(past_round_s or []),
                             progress.cumulative + strategy.traffic.down)
        if cfg.strategy.secagg_mode == "off":
            replies = send_and_receive(grid, msgs, cfg.strategy.round_timeout, on_poll=ticker)
            new_arrays, metrics = strategy.aggregate_train(r, replies)
            lost = len(msgs) - len(replies)
            extra = [f"{lost} sampled node(s) sent no reply within strategy.round-timeout"] * (lost > 0)
        else:  # SecAgg+ (federation/secagg.py): the replies carry the unmasked average, not single updates
            secure = secure_round(grid, msgs, r, cfg.strategy, cfg.strategy.round_timeout,
                                  dp_sgd=cfg.train.dp_sgd_noise_multiplier > 0)
            replies = secure.replies
            new_arrays, metrics = strategy.aggregate_train(r, replies) if replies else (None, None)
            strategy.traffic.down, strategy.traffic.up = secure.down, secure.up  # all four stages, both ways
            extra = secure.errors + [secure.halted] * (secure.halted is not None)
        traffic = strategy.traffic
        progress.cumulative += traffic.down + traffic.up  # retried traffic was still sent
        errors += traffic.errors + extra
        if traffic.accepted >= need and new_arrays is not None:
            return new_arrays, metrics, msgs, replies, errors
        if cfg.strategy.secagg_mode != "off" and secure.revealed:
            # the nodes would train the same updates again (seeded by round and partition): a second sum over
            # other nodes would give the server the difference, i.e. single updates
            strategy.ctx.attempt = 0
            raise RunStopped(
                f"round {r}: the SecAgg+ sum of {len(replies)} updates was not usable ({'; '.join(errors[-3:])}); "
                "under SecAgg+ a round whose sum was unmasked is not resampled (a second sum over other nodes would "
                "reveal the difference). Nothing of the round was kept; fix the cause and continue with "
                "`flowertune run --resume RUN_DIR`")
        log.warning("round %d (try %d of %d): %d usable updates, strategy.min-train-nodes=%d: %s", r, attempt + 1,
                    cfg.strategy.round_retries + 1, traffic.accepted, need, "; ".join(errors[-3:]) or "-")
    strategy.ctx.attempt = 0
    raise RunStopped(
        f"round {r}: fewer than strategy.min-train-nodes={need} usable client updates in "
        f"{cfg.strategy.round_retries + 1} tries ({'; '.join(dict.fromkeys(errors))[:800] or 'no replies'}). "
        f"Nothing of round {r} was kept; fix the clients and continue with `flowertune run --resume RUN_DIR`")


def run_federation(grid: Grid, cfg: Config, run_dir: RunDir) -> dict[str, Any]:
    """Run (or, with ``run.resume``, continue) ``num-server-rounds`` rounds into ``run_dir``; returns the summary."""
    try:
        try:
            return _run(grid, cfg, run_dir)
        except NodeWaitTimeout as exc:
            raise RunStopped(f"{exc} after {cfg.strategy.node_wait_timeout:.0f} s: start the missing SuperNodes and "
                             "continue with `flowertune run --resume RUN_DIR`") from exc
    except RunStopped as exc:
        run_dir.stopped(str(exc))
        log.error("run stopped: %s", exc)
        raise
    except Exception as exc:
        run_dir.stopped(f"{type(exc).__name__}: {exc} (the last completed round is saved; after fixing the cause, "
                        "continue with `flowertune run --resume RUN_DIR`)")
        raise


def _run(grid: Grid, cfg: Config, run_dir: RunDir) -> dict[str, Any]:
    sinks = Sinks(cfg.run.metric_sinks, run_dir.path, cfg.to_flat())
    try:
        return _rounds(grid, cfg, run_dir, sinks)
    finally:
        sinks.close()


def build_stack(cfg: Config, directory: NodeDirectory) -> Any:
    """The strategy stack of the config, told the node order and the sampling deadline; logged."""
    strategy = make_strategy(cfg.strategy, cfg.run.wire_codec, train=cfg.train, rank=cfg.adapter.r,
                             heterogeneous=bool(cfg.adapter.ranks()),
                             **options_from(cfg.run.wire_codec, cfg.run))
    strategy.ctx.order = directory.order
    strategy.ctx.partition_of = directory.partition.get
    strategy.ctx.rows_of = directory.rows.get
    strategy.ctx.rank_of = directory.ranks.get
    strategy.ctx.node_wait_s = cfg.strategy.node_wait_timeout
    log.info("strategy stack: %s", describe(strategy))
    c = cfg.strategy
    if c.secagg_mode != "off":
        log.info("uplink: SecAgg+ (Flower's protocol; the server sees only the sum of each round's updates): "
                 "shares %.2g of the sampled nodes, threshold %.2g of the shares, entries clipped to +-%g, %d bits",
                 c.secagg_num_shares, c.secagg_threshold, c.secagg_clipping_range, c.secagg_quantization_bits)
    return strategy


def start(grid: Grid, cfg: Config, run_dir: RunDir, sinks: Sinks, strategy: Any, directory: NodeDirectory,
          t_start: float) -> Progress:
    """Round 0: check in, the initial adapter from a client, the first evaluation, the first state file."""
    nodes = directory.wait(grid, max(cfg.strategy.min_available_nodes, 1), cfg.strategy.node_wait_timeout)
    arrays, adapter_config, init_bytes = initial_adapter(grid, nodes[0], cfg)
    progress = Progress(round=0, arrays=arrays, adapter_config=adapter_config, run_key=run_dir.run_key())
    first_eval = evaluate_round(strategy, grid, 0, arrays, cfg) if cfg.train.eval_every_round > 0 else None
    progress.first_eval = progress.last_eval = first_eval
    progress.wall_s = time.perf_counter() - t_start
    row0 = {"round": 0, "eval_loss": first_eval, "bytes_init": init_bytes, "wall_s": progress.wall_s,
            "errors": directory.take_errors()}
    run_dir.log(row0)
    sinks.log(row0)
    run_dir.save_state(0, *progress.to_state(strategy))
    log.info("round 0: eval_loss %s", _loss(first_eval))
    return progress


def resume(cfg: Config, run_dir: RunDir, strategy: Any) -> Progress | None:
    """The progress of the saved run with every layer's state restored, or None to start afresh."""
    saved = run_dir.load_state() if cfg.run.resume else None
    if saved is None:
        return None
    progress = Progress.from_state(*saved, strategy, run_dir.run_key())
    try:  # record-level DP: what the tasks of a round that never completed spent counts too
        find_layer(strategy, RecordLedger).merge(run_dir.read_spent())
    except LookupError:
        pass
    run_dir.truncate_metrics(progress.round)
    log.info("resuming %s after round %d of %d", run_dir.path, progress.round, cfg.run.num_server_rounds)
    return progress


@dataclass
class RoundOutcome:
    """What one finished round hands to its metrics row."""

    r: int
    lr: float
    train_metrics: dict[str, Any]
    eval_loss: float | None
    msgs: list[Message]
    replies: list[Message]
    errors: list[str]
    t0: float


def one_round(strategy: Any, grid: Grid, r: int, progress: Progress, cfg: Config, directory: NodeDirectory,
              run_dir: RunDir, past_round_s: list[float]) -> RoundOutcome:
    """Train (with retries), warn once past the communication budget, evaluate when due, checkpoint when due."""
    t0, rounds = time.perf_counter(), cfg.run.num_server_rounds
    lr = cosine_annealing(r, rounds, cfg.train.learning_rate_max, cfg.train.learning_rate_min)
    new_arrays, train_metrics, msgs, replies, errors = train_round(strategy, grid, r, progress, lr, cfg, directory,
                                                                   past_round_s)
    progress.arrays = new_arrays
    if not progress.warned and progress.cumulative > BUDGET_MB * MB:
        progress.warned = True
        log.warning("communication cost %.0f MB exceeds the leaderboard budget of %d MB",
                    progress.cumulative / MB, BUDGET_MB)
    every = cfg.train.eval_every_round
    due_eval = every > 0 and (r % every == 0 or r == rounds)
    eval_loss = evaluate_round(strategy, grid, r, progress.arrays, cfg) if due_eval else None
    progress.last_eval = eval_loss if eval_loss is not None else progress.last_eval
    if r % cfg.train.save_every_round == 0 and r != rounds:
        run_dir.checkpoint(r, _as_numpy(progress.arrays), progress.adapter_config)
    return RoundOutcome(r, lr, dict(train_metrics or {}), eval_loss, msgs, replies, errors, t0)


def metrics_row(out: RoundOutcome, strategy: Any, progress: Progress, directory: NodeDirectory) -> dict[str, Any]:
    """The round's row of ``metrics.jsonl`` (and of every metric sink)."""
    traffic, tm, msgs, replies = strategy.traffic, out.train_metrics, out.msgs, out.replies
    return {
        "round": out.r, "lr": out.lr, "train_loss": tm.get("train_loss"), "eval_loss": out.eval_loss,
        "clients": len(msgs), "replies": len(replies), "rejected": traffic.rejected,
        "failures": sum(1 for m in replies if m.has_error()) + len(msgs) - len(replies),
        "errors": [*directory.take_errors(), *out.errors], "tries": strategy.ctx.attempt + 1,
        "bytes_down": traffic.down, "bytes_up": traffic.up, "bytes_round": traffic.down + traffic.up,
        "bytes_cumulative": progress.cumulative, "bytes_eval_down": traffic.eval_down,
        "client_tokens_per_s": tm.get("tokens_per_s"), "client_model_loads": tm.get("model_loads"),
        **client_memory(traffic.client_metrics), "notes": traffic.notes, "dropped": traffic.dropped,
        "round_s": time.perf_counter() - out.t0, "wall_s": progress.wall_s, **privacy_spent(strategy),
    }


def check_privacy_budget(strategy: Any, r: int) -> None:
    """:class:`PrivacyBudgetReached` if round ``r`` would pass ``strategy.dp.target-epsilon`` (DP runs only)."""
    for kind in (PrivacyLedger, RecordLedger):
        try:
            ledger = find_layer(strategy, kind)
        except LookupError:
            continue
        ledger.check_budget(r)


def privacy_spent(strategy: Any) -> dict[str, Any]:
    """``dp_epsilon`` (cumulative, at ``dp_delta``) and the round's release, for a client-level DP run;
    ``dp_record_epsilon`` (the most any node has reached) for a DP-SGD run; else nothing."""
    out: dict[str, Any] = {}
    for kind in (PrivacyLedger, RecordLedger):
        try:
            out.update(find_layer(strategy, kind).last)
        except LookupError:
            pass
    return out


def finish(progress: Progress, cfg: Config, run_dir: RunDir, n_params: int, t_start: float, strategy: Any,
           stopped: str | None = None) -> dict[str, Any]:
    """The final adapter and the run's summary; ``stopped``: why it ended before num-server-rounds (the privacy
    budget), with the last global within it as the final adapter."""
    summary = {
        "rounds": progress.round if stopped else cfg.run.num_server_rounds, "eval_loss_first": progress.first_eval,
        "eval_loss_last": progress.last_eval, "bytes_cumulative": progress.cumulative,
        "comm_cost_mb": progress.cumulative / MB, "adapter_parameters": n_params,
        "wall_s": time.perf_counter() - t_start, "run_dir": str(run_dir.path), **privacy_spent(strategy),
        **({"stopped": stopped} if stopped else {}),
    }
    final = run_dir.finish(_as_numpy(progress.arrays), progress.adapter_config, summary)
    log.info("done: eval loss %s -> %s, communication %.2f MB, %.0f s; final adapter %s",
             _loss(progress.first_eval), _loss(progress.last_eval), progress.cumulative / MB, summary["wall_s"], final)
    return summary


def _rounds(grid: Grid, cfg: Config, run_dir: RunDir, sinks: Sinks) -> dict[str, Any]:
    t_start = time.perf_counter()
    same = ("strategy.secagg.mode=secagg+" if cfg.strategy.secagg_mode != "off"
            else "model.lora.use-dora" if cfg.adapter.use_dora else "")
    directory = NodeDirectory(timeout=cfg.strategy.round_timeout, max_rank=cfg.adapter.r, same_rank=same)
    strategy = build_stack(cfg, directory)
    strategy.ctx.save_spent = run_dir.save_spent
    progress = resume(cfg, run_dir, strategy)
    if progress is not None:
        t_start -= progress.wall_s  # the wall clock goes on from the saved run's
    else:
        progress = start(grid, cfg, run_dir, sinks, strategy, directory, t_start)
    past_round_s = [float(row["round_s"]) for row in read_metrics(run_dir.path) if row.get("round_s")]  # for the ETA
    n_params = int(sum(a.numpy().size for a in progress.arrays.values()))
    log.info("run directory %s; adapter: %d arrays, %d parameters, %.2f MB fp32", run_dir.path,
             len(progress.arrays), n_params, progress.arrays.count_bytes() / MB)
    rounds = cfg.run.num_server_rounds
    for r in range(progress.round + 1, rounds + 1):
        try:
            check_privacy_budget(strategy, r)  # before waiting for nodes
            out = one_round(strategy, grid, r, progress, cfg, directory, run_dir, past_round_s)
        except PrivacyBudgetReached as exc:  # nothing of round r was noised: the last global is final
            run_dir.stopped(str(exc))
            log.warning("run ends at the privacy budget: %s", exc)
            every = cfg.train.eval_every_round
            if every > 0 and progress.round % every != 0:  # the final adapter gets its evaluation
                progress.last_eval = evaluate_round(strategy, grid, progress.round, progress.arrays, cfg)
            return finish(progress, cfg, run_dir, n_params, t_start, strategy, stopped=str(exc))
        progress.round = r
        progress.wall_s = time.perf_counter() - t_start
        row = metrics_row(out, strategy, progress, directory)
        strategy.ctx.attempt = 0
        past_round_s.append(row["round_s"])
        run_dir.log(row)
        sinks.log(row)
        run_dir.save_state(r, *progress.to_state(strategy))
        log.info("round %d/%d: train_loss %.4f eval_loss %s | %.2f MB this round, %.2f MB total | %.1f s",
                 r, rounds, row["train_loss"] or float("nan"), _loss(out.eval_loss), row["bytes_round"] / MB,
                 progress.cumulative / MB, row["round_s"])
    return finish(progress, cfg, run_dir, n_params, t_start, strategy)


def _loss(value: float | None) -> str:
    """A loss for a log line: 4 decimals, or "-" when there is none (the metrics keep full precision)."""
    return "-" if value is None else f"{value:.4f}"

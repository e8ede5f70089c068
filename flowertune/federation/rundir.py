"""A run is one self-describing directory at an absolute path.

    <run>/config.json       resolved flat config (+ versions, start time)
    <run>/metrics.jsonl     one line per round (round 0 = before training)
    <run>/checkpoints/round-N/   PEFT adapter every train.save-every-round rounds
    <run>/final_adapter/    PEFT adapter after the last round
    <run>/summary.json      what the run did, written at the end
    <run>/state/round-N.safetensors   the server's state after round N (the last two kept; for --resume)
    <run>/stopped.json      why the run stopped early, when it did (removed when a resume finishes)
    <run>/run.log           everything Flower, Ray and flowertune printed (written by `flowertune run`)
    <run>/eval/results.json, eval/items-<benchmark>.jsonl   `flowertune eval --run`
    <run>/report.md, report.html, plots/*.png              `flowertune report` (also after every run and eval)
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from flowertune.config import Config, ConfigError
from flowertune.durable import private_dir, write_text
from flowertune.eval.leaderboard import MB
from flowertune.federation.state import StateError, load_state, prune, round_files, save_state
from flowertune.models.adapter import save_adapter

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
FINAL = "final_adapter"
STATE = "state"
STOPPED = "stopped.json"
SPENT = "privacy-spent.json"  # record-level DP: local rounds asked of each partition, written before they go out
EVAL = "eval"
LOG = "run.log"
KEEP_STATES = 2
# keys that do not change what a run computes up to its last round, or that the user may change mid-run with
# --force (more rounds: the cosine schedule is recomputed over the new length from the next round on)
RESUME_SAFE = frozenset({"num-server-rounds", "strategy.round-timeout", "strategy.node-wait-timeout",
                         "strategy.round-retries", "train.save-every-round", "train.eval-every-round"})
# keys that say how the run was started, not what it computes
RESUME_IGNORED = frozenset({"run.resume", "run.resume-force", "run.preset-applied", "run.output-dir",
                            "run.progress-every-s", "run.metric-sinks", "run.client-worker"})


def default_run_path(cfg: Config) -> Path:
    """``~/flowertune-runs/<UTC time>-<recipe or preset>`` (absolute: the server's cwd is the SuperLink's)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    # a recipe given as a file path is named by its file name
    label = Path(cfg.run.recipe).stem if cfg.run.recipe else cfg.run.preset
    return Path.home() / "flowertune-runs" / f"{stamp}-{label}"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("flowertune", "flwr", "torch", "transformers", "peft", "flwr-datasets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class RunDir:
    """Writer of one run directory."""

    path: Path

    @classmethod
    def create(cls, cfg: Config) -> RunDir:
        path = Path(cfg.run.output_dir) if cfg.run.output_dir else default_run_path(cfg)
        path = path.absolute()
        if (path / METRICS).exists():
            raise FileExistsError(f"{path} already holds a run (metrics.jsonl); choose another run.output-dir, "
                                  f"or continue it with `flowertune run --resume {path}`")
        private_dir(path)
        config = {**cfg.to_flat(), "run.output-dir": str(path), "run.resume": False, "run.resume-force": False}
        meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _versions(),
                "run_key": secrets.token_hex(8)}  # names this run's client-side state; kept across resumes
        _write_json(path / CONFIG, {"config": config, "meta": meta})
        return cls(path)

    @classmethod
    def open(cls, cfg: Config) -> RunDir:
        """The run directory ``cfg`` resumes (``run.resume``), after checking that the configs agree."""
        path = Path(cfg.run.output_dir)
        check_resumable(path, cfg.to_flat(), cfg.run.resume_force)
        run = cls(path)
        doc = json.loads((path / CONFIG).read_text())
        resumes = [*doc["meta"].get("resumed", []), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
        doc["meta"]["resumed"] = resumes
        doc["config"] = {**doc["config"], **{k: v for k, v in cfg.to_flat().items() if k in RESUME_SAFE}}
        _write_json(path / CONFIG, doc)
        (path / STOPPED).unlink(missing_ok=True)
        return run

    def run_key(self) -> str:
        return str(json.loads((self.path / CONFIG).read_text())["meta"].get("run_key", ""))

    def save_state(self, server_round: int, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
        """The server's state after ``server_round``, atomically; older states beyond the last two are removed."""
        out = save_state(self.path / STATE / f"round-{server_round}.safetensors", meta, arrays)
        prune(self.path / STATE, KEEP_STATES)
        return out

    def load_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The newest state that verifies; a damaged newer one is reported and skipped."""
        return newest_state(self.path)

    def truncate_metrics(self, server_round: int) -> None:
        """Drop metrics rows after ``server_round`` (a round that ran past the saved state is redone)."""
        kept = [r for r in read_metrics(self.path) if r["round"] <= server_round]
        # rewritten even when nothing is dropped: a torn last line (read_metrics skips it) must not stay in the
        # file, or the next row would be appended to it
        write_text(self.path / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def stopped(self, reason: str) -> None:
        """Record why the run stopped early (``flowertune run`` prints it)."""
        _write_json(self.path / STOPPED, {"reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def save_spent(self, spent: Mapping[str, Any]) -> None:
        """What the nodes' records have spent so far (``RecordLedger``), durably, before its tasks go out: a round
        that never completes (a crash, a stop) has still sent them, and a resume must not forget it."""
        _write_json(self.path / SPENT, dict(spent))

    def read_spent(self) -> dict[str, Any]:
        p = self.path / SPENT
        return json.loads(p.read_text()) if p.is_file() else {}

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one metrics line (flushed to disk so a crash keeps every finished round)."""
        with open(self.path / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(row), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def checkpoint(self, server_round: int, arrays: Mapping[str, np.ndarray], adapter_config: Mapping[str, Any]) -> Path:
        return save_adapter(arrays, adapter_config, self.path / "checkpoints" / f"round-{server_round}")

    def finish(self, arrays: Mapping[str, np.ndarray], adapter_config: Mapping[str, Any],
               summary: Mapping[str, Any]) -> Path:
        final = save_adapter(arrays, adapter_config, self.path / FINAL)
        _write_json(self.path / SUMMARY, dict(summary))
        return final


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def newest_state(run: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of the newest state file of ``run`` that verifies."""
    files = round_files(Path(run) / STATE)
    if not files:
        raise ConfigError(f"{run} has no saved server state (state/round-N.safetensors) to resume from")
    for _, path in files:
        try:
            return load_state(path)
        except StateError as exc:
            log.error("%s; using the state of the round before", exc)
    raise ConfigError(f"no state file of {run} verifies (all truncated or altered); the run cannot be resumed")


def resume_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: stored -> new`` for every key whose value differs (the keys that only say how a run starts aside).

    A key the stored config lacks (a run made before the key existed) counts as its default.
    """
    from flowertune.config import flat_defaults

    defaults = flat_defaults()
    stored = {**defaults, **stored}
    out = []
    for k in sorted(set(stored) | set(new)):
        if k in RESUME_IGNORED or stored.get(k) == new.get(k):
            continue
        out.append(f"{k}: {stored.get(k)!r} -> {new.get(k)!r}")
    return out


def check_resumable(run: Path, new: Mapping[str, Any], force: bool) -> None:
    """Raise :class:`ConfigError` unless ``run`` can be resumed with the flat config ``new``."""
    run = Path(run)
    if not (run / CONFIG).is_file():
        raise ConfigError(f"{run} is not a run directory (no config.json); give the directory a run wrote")
    diffs = resume_differences(read_config(run), new)
    unsafe = [d for d in diffs if d.split(":", 1)[0] not in RESUME_SAFE]
    if unsafe or (diffs and not force):
        raise ConfigError(
            f"cannot resume {run} with a different config ({'; '.join(diffs)}). "
            + ("Only " + ", ".join(sorted(RESUME_SAFE)) + " may change, with --force" if unsafe else
               "These keys are safe to change: add --force to accept them"))
    newest_state(run)  # fails early when there is nothing to resume from


def read_config(run: Path) -> dict[str, Any]:
    """The resolved flat config of a run directory (under ``"config"``; the earliest runs wrote it flat); a key
    its run predates counts as its default."""
    from flowertune.config import flat_defaults

    data = json.loads((Path(run) / CONFIG).read_text())
    return {**flat_defaults(), **(data["config"] if isinstance(data.get("config"), dict) else data)}


def read_meta(run: Path) -> dict[str, Any]:
    """When and with which library versions a run started (and when it was resumed)."""
    return json.loads((Path(run) / CONFIG).read_text()).get("meta", {})


def read_summary(run: Path) -> dict[str, Any] | None:
    """``summary.json`` of a finished run (None while it runs or after a crash)."""
    p = Path(run) / SUMMARY
    return json.loads(p.read_text()) if p.is_file() else None


def privacy_line(run: Path) -> str | None:
    """The run's privacy in one line: its differential-privacy guarantee and whether its updates were securely
    aggregated (None for a run with neither)."""
    config = read_config(run)
    record = record_privacy(run, config)
    client = client_privacy(run, config)
    lines = [x for x in (client, record) if x]
    return "; ".join(lines) if lines else None


def record_privacy(run: Path, config: dict[str, Any]) -> str | None:
    """The record-level (DP-SGD) guarantee of the run, or None without DP-SGD."""
    if float(config.get("train.dp-sgd.noise-multiplier", 0.0) or 0.0) <= 0:
        return None
    rows = [r for r in read_metrics(run) if r.get("dp_record_epsilon") is not None]
    summary = read_summary(run) or {}  # a run stopped at its budget during a retry spent more than its last row
    if rows and "dp_record_epsilon" in summary:
        rows[-1] = {**rows[-1], **{k: v for k, v in summary.items() if k.startswith("dp_record_")}}
    head = (f"record-level DP (DP-SGD in each node: noise multiplier {config['train.dp-sgd.noise-multiplier']}, "
            f"clipping norm {config['train.dp-sgd.clipping-norm']}, sample rate {config['train.dp-sgd.sample-rate']}, "
            f"{config['train.training-arguments.max-steps']} steps a round)")
    if not rows:
        return f"{head}: no round trained yet"
    last = rows[-1]
    return (f"{head}: ε = {last['dp_record_epsilon']:.4g} at δ = {last['dp_record_delta']:g} for the node that "
            f"trained most ({last['dp_record_local_rounds']} local rounds, round {last['round']}); RDP accounting, "
            "neighbouring datasets differ by one training record (added or removed), Poisson sampling of records; "
            "the held-out split's eval loss is outside it")


def client_privacy(run: Path, config: dict[str, Any]) -> str | None:
    """The client-level guarantee and secure aggregation of the run, or None with neither."""
    secure = config.get("strategy.secagg.mode", "off") != "off"
    sa = ("secure aggregation (SecAgg+, Flower's protocol): the server saw only the sum of each round's updates"
          if secure else "")
    if config.get("strategy.dp.mode", "off") == "off":
        if not secure:
            return None
        no_dp = "no client-level DP" if float(config.get("train.dp-sgd.noise-multiplier", 0.0) or 0.0) > 0 else \
            "no differential privacy: no ε"
        return f"{sa} ({no_dp})"
    rows = [r for r in read_metrics(run) if r.get("dp_epsilon") is not None]
    if not rows:
        return f"client-level DP ({config['strategy.dp.mode']}): no private round released yet" + (
            f"; {sa}" if secure else "")
    summary = read_summary(run) or {}
    last = {**rows[-1], **{k: summary[k] for k in ("dp_epsilon", "dp_releases") if k in summary}}
    return (f"client-level DP ({config['strategy.dp.mode']}, noise multiplier {config['strategy.dp.noise-multiplier']}"
            f", clipping norm {config['strategy.dp.clipping-norm']}): ε = {last['dp_epsilon']:.4g} at δ = "
            f"{last['dp_delta']:g} after {last['dp_releases']} releases (round {last['round']}); RDP accounting, "
            "neighbouring federations differ by one node's whole data (zero-out), no amplification by sampling"
            + (f"; {sa}" if secure else ""))


def read_stopped(run: Path) -> str | None:
    """Why the run stopped early (None unless it did)."""
    p = Path(run) / STOPPED
    return str(json.loads(p.read_text())["reason"]) if p.is_file() else None


def unfinished_reason(run: Path) -> str | None:
    """Why the run stopped before it finished (``stopped.json``), or None: also for a run that ended early by
    design, at its privacy budget (it has a final adapter and its summary names the same reason)."""
    reason, summary = read_stopped(run), read_summary(run)
    return None if reason is None or (summary and summary.get("stopped") == reason) else reason


def read_eval(run: Path) -> dict[str, Any] | None:
    """``eval/results.json`` of the run (None before ``flowertune eval --run``)."""
    p = Path(run) / EVAL / "results.json"
    return json.loads(p.read_text()) if p.is_file() else None


def eval_item_files(run: Path) -> list[Path]:
    """The per-item generation files of the run's evaluation."""
    return sorted((Path(run) / EVAL).glob("items-*.jsonl"))


def final_adapter(run: Path) -> Path | None:
    """The run's final PEFT adapter directory (None unless it was written)."""
    p = Path(run) / FINAL
    return p if (p / "adapter_config.json").is_file() else None


def is_run_dir(run: Path) -> bool:
    return (Path(run) / CONFIG).is_file()


def has_state(run: Path) -> bool:
    """Whether the run saved a server state to resume from."""
    return bool(round_files(Path(run) / STATE))


def communication_mb(run: Path) -> float | None:
    """Cumulative bytes on the wire of a run, in MB: the last ``bytes_cumulative`` in ``metrics.jsonl``."""
    last = [row["bytes_cumulative"] for row in read_metrics(run) if "bytes_cumulative" in row]
    return int(last[-1]) / MB if last else None


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """All metrics lines of a run directory; a torn last line (a crash or a full disk mid-write) is left out."""
    p = Path(run) / METRICS
    if not p.exists():
        return []
    lines = [line for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ConfigError(f"{p}: line {i + 1} is not JSON (only a torn last line is expected after a "
                                  "crash); the file was altered") from None
            log.warning("%s: leaving out a torn last line (%d characters)", p, len(line))
    return rows

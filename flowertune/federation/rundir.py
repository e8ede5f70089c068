"""A run is one self-describing directory at an absolute path.

    <run>/config.json       resolved flat config (+ versions, start time)
    <run>/metrics.jsonl     one line per round (round 0 = before training)
    <run>/checkpoints/round-N/   PEFT adapter every train.save-every-round rounds
    <run>/final_adapter/    PEFT adapter after the last round
    <run>/summary.json      what the run did, written at the end
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from flowertune.config import Config
from flowertune.models.adapter import save_adapter

METRICS = "metrics.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
FINAL = "final_adapter"


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
            raise FileExistsError(f"{path} already holds a run (metrics.jsonl); choose another run.output-dir")
        path.mkdir(parents=True, exist_ok=True)
        config = {**cfg.to_flat(), "run.output-dir": str(path)}
        meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _versions()}
        _write_json(path / CONFIG, {"config": config, "meta": meta})
        return cls(path)

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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_config(run: Path) -> dict[str, Any]:
    """The resolved flat config of a run directory."""
    return json.loads((Path(run) / CONFIG).read_text())["config"]


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """All metrics lines of a run directory."""
    p = Path(run) / METRICS
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []

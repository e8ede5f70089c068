"""Optional metric sinks fed the same per-round rows as ``metrics.jsonl`` (``run.metric-sinks``).

* ``tensorboard``: event files in ``<run>/tensorboard/`` (offline; ``tensorboard --logdir <run>/tensorboard``).
* ``mlflow``: a run in the tracking store ``MLFLOW_TRACKING_URI`` points at (experiment
  ``$MLFLOW_EXPERIMENT_NAME``, default ``flowertune``), with the resolved config as its parameters.
* ``wandb``: a W&B run in ``$WANDB_PROJECT`` (default ``flowertune``); ``WANDB_MODE=offline`` keeps it local.

Each needs its own package; a sink that is configured but not installed is an error before the run starts
(:func:`check_sinks`). ``metrics.jsonl`` stays the record; a sink that fails mid-run is logged and dropped.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from flowertune.catalog import SINKS
from flowertune.config import ConfigError, sink_names

log = logging.getLogger(__name__)


class Sink(Protocol):
    def log(self, row: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric fields of a metrics row, without the round number."""
    out = {}
    for k, v in row.items():
        if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


class TensorBoardSink:
    def __init__(self, run: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(config.items())), 0)

    def log(self, row: Mapping[str, Any]) -> None:
        for k, v in scalars(row).items():
            self.writer.add_scalar(k, v, int(row["round"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    def __init__(self, run: Path, config: Mapping[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "flowertune"))
        self.run = mlflow.start_run(run_name=run.name, tags={"flowertune.run_dir": str(run)})
        mlflow.log_params({k: str(v)[:500] for k, v in config.items()})

    def log(self, row: Mapping[str, Any]) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in scalars(row).items()}, step=int(row["round"]))

    def close(self) -> None:
        self.mlflow.end_run()


class WandbSink:
    def __init__(self, run: Path, config: Mapping[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "flowertune"), name=run.name, dir=str(run),
                              config=dict(config), reinit=True)

    def log(self, row: Mapping[str, Any]) -> None:
        self.run.log(scalars(row), step=int(row["round"]))

    def close(self) -> None:
        self.run.finish()


# name -> (class, the module it imports, how to install it)
# (catalog entries: flowertune/catalog.py)
TENSORBOARD = (TensorBoardSink, "tensorboard", "pip install tensorboard")
MLFLOW = (MLflowSink, "mlflow", "pip install mlflow (and set MLFLOW_TRACKING_URI)")
WANDB = (WandbSink, "wandb", "pip install wandb (and `wandb login`, or WANDB_MODE=offline)")


def check_sinks(spec: str) -> None:
    """Unknown or not installed sinks are a :class:`ConfigError` naming the fix."""
    for name in sink_names(spec):
        if name not in SINKS:
            raise ConfigError(f"run.metric-sinks: unknown sink {name!r}; choose from {', '.join(SINKS.names())}")
        _, module, install = SINKS.get(name)
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"run.metric-sinks={name} needs the {module} package, which is not installed: "
                              f"{install}; or drop it from run.metric-sinks")


class Sinks:
    """Every configured sink behind one ``log``/``close``; a sink that raises is reported once and dropped."""

    def __init__(self, spec: str, run: Path, config: Mapping[str, Any]) -> None:
        self.sinks: dict[str, Sink] = {}
        for name in sink_names(spec):
            cls, _, install = SINKS.get(name)
            try:
                self.sinks[name] = cls(run, config)
            except Exception as exc:  # noqa: BLE001 - metrics.jsonl is the record; the run goes on
                log.error("metric sink %s could not start (%s: %s); %s", name, type(exc).__name__, exc, install)

    def log(self, row: Mapping[str, Any]) -> None:
        for name, sink in list(self.sinks.items()):
            try:
                sink.log(row)
            except Exception as exc:  # noqa: BLE001
                log.error("metric sink %s failed (%s: %s); it is dropped for the rest of the run", name,
                          type(exc).__name__, exc)
                self.sinks.pop(name)

    def close(self) -> None:
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("metric sink close failed: %s", exc)
        self.sinks = {}

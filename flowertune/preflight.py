"""Checks before anything starts: what a run would fail on, found while it is still cheap to say so.

``flowertune run`` calls :func:`server_checks` before any Flower process starts; every SuperNode runs
:func:`client_checks` when it checks in with the server (``node-info``), so a node that cannot train is
left out with its one-line reason instead of failing every round. Each check raises
:class:`PreflightError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowertune.config import Config, ConfigError


class PreflightError(ConfigError):
    """One line: what cannot work, and what to do."""


def check_output_dir(cfg: Config) -> None:
    """The run directory can be written and is not an existing run (unless resuming it)."""
    from flowertune.federation.rundir import METRICS, check_resumable

    path = Path(cfg.run.output_dir)
    if cfg.run.resume:
        check_resumable(path, cfg.to_flat(), cfg.run.resume_force)
        return
    if (path / METRICS).exists():
        raise PreflightError(f"{path} already holds a run (metrics.jsonl); choose another --out, or continue it "
                             f"with `flowertune run --resume {path}`")
    parent = next((p for p in (path, *path.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PreflightError(f"cannot create the run directory {path}: {parent} is not a writable directory; "
                             "choose another --out")


def check_model(cfg: Config) -> None:
    """The base model resolves; offline, a Hub id must already be in the Hugging Face cache."""
    from flowertune.models.source import ModelSourceError, resolve

    try:
        source = resolve(cfg.model.name)
    except ModelSourceError as exc:
        raise PreflightError(str(exc)) from exc
    if source.kind == "hub" and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source.path, "config.json"), str):
            raise PreflightError(
                f"model.name={cfg.model.name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1; download it "
                f"where there is network (`hf download {cfg.model.name}`) or give a local model directory")


def check_data(cfg: Config, partition_id: int = 0, num_partitions: int = 1) -> int:
    """The training data loads and its rows have the columns ``data.format`` needs; returns the row count."""
    from flowertune.catalog import FORMATS
    from flowertune.data.formats import DataFormatError
    from flowertune.data.load import DataLoadError, load_partition

    try:
        try:
            part = load_partition(cfg.data, partition_id, num_partitions)
        except IndexError as exc:  # flwr-datasets' partitioners on a partition with no rows
            raise PreflightError(f"partition {partition_id} of {num_partitions} of {cfg.data.name!r} has no rows "
                                 f"({exc}); use fewer SuperNodes or more data") from exc
        if len(part) == 0:
            raise PreflightError(f"partition {partition_id} of {num_partitions} of {cfg.data.name!r} has no rows; "
                                 "use fewer SuperNodes or more data")
        fmt = FORMATS.get(cfg.data.format)
        for row in part.select(range(min(len(part), 8))):
            fmt(row, cfg.data)
    except (DataLoadError, DataFormatError) as exc:
        raise PreflightError(str(exc)) from exc
    return len(part)


def check_quantization(cfg: Config) -> None:
    from flowertune.models.load import check_quantization as check

    try:
        check(cfg.model.quantization)
    except ConfigError as exc:
        raise PreflightError(str(exc)) from exc


def check_simulation_size(cfg: Config) -> None:
    """In simulation every node is one of ``num-supernodes``: a round that waits for more never starts."""
    s, n = cfg.strategy, cfg.run.num_supernodes
    for key, value in (("strategy.min-available-nodes", s.min_available_nodes),
                       ("strategy.min-train-nodes", s.min_train_nodes)):
        if value > n:
            raise ConfigError(f"{key}={value} is more than the {n} simulated SuperNodes: the run would wait "
                              f"strategy.node-wait-timeout and stop; lower it or raise --num-supernodes")


def server_checks(cfg: Config, clients_here: bool) -> None:
    """Everything the server machine can know before a run starts. ``clients_here``: simulation (the
    clients run on this machine, so their data, model and quantization are checked here too)."""
    check_output_dir(cfg)
    from flowertune.federation.sinks import check_sinks

    check_sinks(cfg.run.metric_sinks)
    if clients_here:
        check_simulation_size(cfg)
        import datasets

        datasets.disable_progress_bars()  # the user's terminal gets the verdict, not a progress bar
        check_quantization(cfg)
        check_model(cfg)
        check_data(cfg)


def client_checks(cfg: Config, partition_id: int, num_partitions: int) -> dict[str, int]:
    """What a SuperNode checks when it checks in; the node's facts for the server."""
    check_quantization(cfg)
    check_model(cfg)
    rows = check_data(cfg, partition_id, num_partitions)
    return {"partition-id": partition_id, "num-partitions": num_partitions, "rows": rows}

"""Load a client's partition: Hub ids via flwr-datasets, local files and shipped samples directly."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from datasets import Dataset

from flowertune.config import ConfigError, DataConfig
from flowertune.data.partition import make_partitioner

log = logging.getLogger(__name__)

SAMPLES = {"medical": "medical_qa.jsonl"}
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class DataLoadError(ValueError):
    """A dataset that cannot be read; the message names the file and the fix."""


def sample_path(name: str) -> Path:
    """Path of a dataset shipped in the package (``sample:<name>``)."""
    if name not in SAMPLES:
        raise ConfigError(f"unknown sample dataset 'sample:{name}'; shipped samples: {sorted(SAMPLES)}")
    return Path(__file__).resolve().parents[1] / "samples" / SAMPLES[name]


def _local_builder(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    builder = _LOCAL_BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise DataLoadError(f"{path}: unsupported file type; use .json, .jsonl, .csv or .parquet (optionally .gz)")
    return builder


def is_local(name: str) -> bool:
    """Whether ``name`` names a local file (or a shipped sample) rather than a Hub id."""
    return name.startswith(("sample:", "/", ".", "~")) or Path(name).expanduser().exists()


def load_local(name: str) -> Dataset:
    """Read a local json/jsonl/csv/parquet file (or shipped sample) into one ``Dataset``."""
    path = sample_path(name.split(":", 1)[1]) if name.startswith("sample:") else Path(name).expanduser()
    if not path.is_file():
        raise DataLoadError(f"dataset file {str(path)!r} does not exist; set static.dataset.name to a readable file")
    builder = _local_builder(path)
    where = find_bad_line(path, builder)  # datasets would decode bad bytes silently or fail without a line number
    if where:
        raise DataLoadError(where)
    try:
        ds = datasets.load_dataset(builder, data_files=str(path.absolute()), split="train")
    except Exception as exc:  # datasets raises many types for a corrupt file
        raise DataLoadError(
            f"cannot read dataset file {str(path)!r} as {builder} ({type(exc).__name__}: {str(exc)[:200]}); "
            "check that it is valid " + builder
        ) from exc
    if len(ds) == 0:
        raise DataLoadError(f"dataset file {str(path)!r} has no rows")
    return ds


def find_bad_line(path: Path, builder: str) -> str | None:
    """``file:line: what is wrong`` for the first line that is not UTF-8 (or, for JSON Lines, not JSON)."""
    import gzip
    import json

    if builder not in ("json", "csv"):
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    json_lines = builder == "json" and ".jsonl" in path.suffixes
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"{path}:{n}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                        "re-encode the file as UTF-8")
            if json_lines and line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line"
    return None


def load_partition(cfg: DataConfig, partition_id: int, num_partitions: int) -> Dataset:
    """The rows of partition ``partition_id`` out of ``num_partitions``, shuffled with ``data.seed``."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is outside [0, {num_partitions}); check --node-config")
    partitioner = make_partitioner(num_partitions, cfg)
    if is_local(cfg.name):
        partitioner.dataset = load_local(cfg.name).shuffle(seed=cfg.seed)
        return partitioner.load_partition(partition_id)
    from flwr_datasets import FederatedDataset

    try:
        fds = FederatedDataset(dataset=cfg.name, partitioners={"train": partitioner}, shuffle=True, seed=cfg.seed)
        return fds.load_partition(partition_id, "train")
    except Exception as exc:
        raise DataLoadError(
            f"cannot load Hub dataset {cfg.name!r} ({type(exc).__name__}: {str(exc)[:200]}). Offline? Use a "
            "local file path for static.dataset.name (json/jsonl/csv/parquet)."
        ) from exc


def split_validation(part: Dataset, cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """(train, validation) of one partition; validation is ``data.validation-fraction`` of it."""
    n_val = round(len(part) * cfg.validation_fraction)
    if cfg.validation_fraction == 0 or n_val == 0 or n_val >= len(part):
        return part, part.select([])
    split = part.train_test_split(test_size=n_val, seed=cfg.seed, shuffle=True)
    val = split["test"]
    if cfg.max_eval_examples > 0 and len(val) > cfg.max_eval_examples:
        val = val.select(range(cfg.max_eval_examples))
    return split["train"], val

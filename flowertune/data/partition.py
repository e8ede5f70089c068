"""Partitioners (flwr-datasets), one catalog entry each (``flowertune/catalog.py``), seeded."""

from __future__ import annotations

from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

from flowertune.catalog import PARTITIONERS  # the names: "iid" -> iid, "dirichlet" -> dirichlet
from flowertune.config import ConfigError, DataConfig


def iid(num_partitions: int, cfg: DataConfig) -> Partitioner:
    """Equal-size IID shards of the (seeded-shuffled) dataset."""
    return IidPartitioner(num_partitions=num_partitions)


def dirichlet(num_partitions: int, cfg: DataConfig) -> Partitioner:
    """Label-skewed shards: per-class proportions drawn from Dir(alpha) over ``data.partition-by``."""
    if not cfg.partition_by:
        raise ConfigError("data.partitioner='dirichlet' needs data.partition-by (a categorical column)")
    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by=cfg.partition_by,
        alpha=cfg.dirichlet_alpha,
        min_partition_size=1,
        self_balancing=True,
        seed=cfg.seed,
    )


def make_partitioner(num_partitions: int, cfg: DataConfig) -> Partitioner:
    """The configured partitioner for ``num_partitions`` nodes."""
    if num_partitions < 1:
        raise ConfigError(f"num-partitions must be >= 1 (got {num_partitions}); check the SuperNode's --node-config")
    return PARTITIONERS.get(cfg.partitioner)(num_partitions, cfg)

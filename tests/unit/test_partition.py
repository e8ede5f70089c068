import pytest
from datasets import Dataset

from flowertune.config import ConfigError, DataConfig
from flowertune.data.partition import make_partitioner


def data(n=100):
    return Dataset.from_dict({"x": list(range(n)), "label": [i % 4 for i in range(n)]})


def parts(cfg, n_parts, ds):
    p = make_partitioner(n_parts, cfg)
    p.dataset = ds
    return [list(p.load_partition(i)["x"]) for i in range(n_parts)]


def test_iid_covers_everything_once_in_equal_shards():
    shards = parts(DataConfig(), 4, data())
    assert sorted([x for s in shards for x in s]) == list(range(100))
    assert [len(s) for s in shards] == [25, 25, 25, 25]


def test_dirichlet_is_seeded_and_skewed():
    cfg = DataConfig(partitioner="dirichlet", partition_by="label", dirichlet_alpha=0.1, seed=3)
    a, b = parts(cfg, 4, data(400)), parts(cfg, 4, data(400))
    assert a == b
    assert sorted(x for s in a for x in s) == list(range(400))
    label_sets = [{x % 4 for x in s} for s in a]
    assert any(len(s) < 4 for s in label_sets)  # alpha=0.1 leaves some labels out of some shards
    c = parts(DataConfig(partitioner="dirichlet", partition_by="label", dirichlet_alpha=0.1, seed=4), 4, data(400))
    assert c != a


def test_dirichlet_needs_a_column():
    with pytest.raises(ConfigError, match="data.partition-by"):
        make_partitioner(4, DataConfig(partitioner="dirichlet"))

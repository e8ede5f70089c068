"""The resident model does not leak: repeated local rounds in one process keep RSS flat (embedded model)."""

import pytest

from flowertune.config import from_flat
from flowertune.federation import client_tasks


@pytest.mark.slow
def test_repeated_rounds_do_not_grow_memory():
    cfg = from_flat({"model.name": "embedded", "static.dataset.name": "sample:medical", "data.format": "medical",
                     "train.seq-length": 256, "train.training-arguments.max-steps": 3,
                     "train.training-arguments.per-device-train-batch-size": 4})
    arrays, _ = client_tasks.initial_adapter(cfg)
    rss = []
    for rnd in range(1, 7):
        arrays, metrics = client_tasks.train(cfg, 0, 4, arrays, 1e-4, rnd, 0.0)
        client_tasks.evaluate(cfg, 0, 4, arrays)
        rss.append(metrics["rss_mb"])
        assert metrics["model_loads"] >= 1
    # rounds 1-2 warm caches (tokenized partition, allocator pools); after that each round must not add memory
    growth = rss[-1] - rss[2]
    assert growth < 40, rss
    print(f"\nclient RSS per round (MB): {[round(x) for x in rss]}")

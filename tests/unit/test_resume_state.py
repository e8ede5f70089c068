"""Crash-safe state files, strategy state round trips, partition-ordered sampling and the resume config check."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from flowertune.config import Config, ConfigError, StrategyConfig
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.rundir import RunDir, check_resumable, newest_state, resume_differences
from flowertune.federation.server_loop import NodeDirectory
from flowertune.federation.stack.gate import in_node_order
from flowertune.federation.state import StateError, load_state, save_state
from flowertune.federation.strategies import export_state, import_state, make_strategy
from tests.unit.test_strategies import FakeGrid, arrays, reply


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def test_state_file_round_trips_and_a_truncated_one_is_refused(tmp_path):
    a = {"x/b": np.arange(6, dtype=np.float32).reshape(2, 3), "x/a": np.ones(3, dtype=np.float16)}
    path = save_state(tmp_path / "round-1.safetensors", {"round": 1, "k": [1, 2]}, a)
    meta, back = load_state(path)
    assert meta == {"round": 1, "k": [1, 2]} and set(back) == set(a)
    for k, v in a.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 5])
    with pytest.raises(StateError, match="truncated|checksum"):
        load_state(path)
    flipped = bytearray(raw)
    flipped[-1] ^= 0xFF  # one array byte changed: the file still parses, the checksum does not match
    path.write_bytes(bytes(flipped))
    with pytest.raises(StateError, match="checksum"):
        load_state(path)


def test_a_damaged_newest_state_falls_back_to_the_round_before(tmp_path, caplog):
    run = RunDir(tmp_path)
    run.save_state(1, {"round": 1}, {"a": np.zeros(2, dtype=np.float32)})
    run.save_state(2, {"round": 2}, {"a": np.ones(2, dtype=np.float32)})
    run.save_state(3, {"round": 3}, {"a": np.ones(2, dtype=np.float32)})
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["round-2.safetensors", "round-3.safetensors"]
    newest = tmp_path / "state/round-3.safetensors"
    newest.write_bytes(newest.read_bytes()[:40])
    meta, _ = newest_state(tmp_path)
    assert meta["round"] == 2 and "round-3" in caplog.text
    (tmp_path / "state/round-2.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="no state file .* verifies"):
        newest_state(tmp_path)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_server_optimizer_state_survives_export_and_import(name):
    """Two strategies fed the same rounds, one exported and re-imported in the middle, aggregate identically."""
    cfg = StrategyConfig(name=name, fraction_train=1.0, min_train_nodes=1, server_momentum=0.9)

    def one_round(s, r, value):
        msgs = list(s.configure_train(r, to_array_record(arrays(value)), ConfigRecord({"lr": 0.1}), FakeGrid([1, 2])))
        return s.aggregate_train(r, [reply(m, arrays(value + i + 1.0), 10 + i) for i, m in enumerate(msgs)])[0]

    a, b = make_strategy(cfg), make_strategy(cfg)
    for r in (1, 2):
        one_round(a, r, float(r))
        one_round(b, r, float(r))
    kinds, state = export_state(b)
    assert kinds["strategy"], "the server optimizer keeps arrays between rounds"
    fresh = make_strategy(cfg)
    import_state(fresh, json.loads(json.dumps(kinds)), state)
    out_a, out_b = one_round(a, 3, 3.0), one_round(fresh, 3, 3.0)
    for k, v in from_array_record(out_a).items():
        assert np.array_equal(v, from_array_record(out_b)[k])
    # and the state matters: without it round 3 differs
    out_c = one_round(make_strategy(cfg), 3, 3.0)
    assert any(not np.array_equal(v, from_array_record(out_c)[k]) for k, v in from_array_record(out_a).items())


def test_sampling_follows_partitions_not_random_node_ids():
    """Node ids are random per run; with the directory's order the same seed samples the same partitions."""
    picked = []
    for node_ids in ([900, 17, 4242, 55], [3, 81, 7, 1000]):
        directory = NodeDirectory(timeout=1.0, partition=dict(zip(node_ids, (2, 0, 3, 1))))
        s = make_strategy(StrategyConfig(fraction_train=0.5, seed=7))
        s.ctx.order = directory.order
        msgs = s.configure_train(1, to_array_record(arrays(0.0)), ConfigRecord({"lr": 0.1}), FakeGrid(node_ids))
        picked.append(sorted(directory.partition[m.metadata.dst_node_id] for m in msgs))
    assert picked[0] == picked[1]


def test_replies_are_aggregated_in_partition_order_whatever_the_arrival_order():
    s = make_strategy(StrategyConfig(fraction_train=1.0, min_train_nodes=1))
    directory = NodeDirectory(timeout=1.0, partition={5: 1, 9: 0, 2: 2})
    s.ctx.order = directory.order
    msgs = list(s.configure_train(1, to_array_record(arrays(0.0)), ConfigRecord({"lr": 0.1}), FakeGrid([5, 9, 2])))
    replies = [reply(m, arrays(0.1 * (i + 1)), 3) for i, m in enumerate(msgs)]
    order = [directory.partition[m.metadata.src_node_id] for m in in_node_order(replies[::-1], s.ctx.order)]
    assert order == [0, 1, 2]


def test_resume_refuses_a_changed_config_and_names_the_keys(tmp_path):
    cfg = Config().to_flat()
    run = tmp_path / "run"
    RunDir.create(_cfg(run))
    RunDir(run).save_state(0, {"round": 0}, {"a": np.zeros(1, dtype=np.float32)})
    new = {**json.loads((run / "config.json").read_text())["config"], "model.lora.peft-lora-r": 64,
           "num-server-rounds": 9}
    with pytest.raises(ConfigError, match=r"model\.lora\.peft-lora-r: 8 -> 64.*Only"):
        check_resumable(run, new, force=True)
    more_rounds = {**json.loads((run / "config.json").read_text())["config"], "num-server-rounds": 9}
    with pytest.raises(ConfigError, match="add --force"):
        check_resumable(run, more_rounds, force=False)
    check_resumable(run, more_rounds, force=True)
    assert resume_differences(cfg, {**cfg, "run.resume": True}) == []
    # a run made before a key existed: the missing key counts as its default
    older = {k: v for k, v in cfg.items() if k != "strategy.round-retries"}
    assert resume_differences(older, cfg) == []
    assert resume_differences(older, {**cfg, "strategy.round-retries": 3}) == ["strategy.round-retries: 1 -> 3"]


def _cfg(path):
    from flowertune.config import from_flat

    return from_flat({**Config().to_flat(), "run.output-dir": str(path), "model.lora.peft-lora-r": 8})

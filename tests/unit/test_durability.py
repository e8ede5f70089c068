"""Run directories survive a crash mid-write and a full disk: a torn metrics line, a failed state save, atomic
JSON and adapter writes, private directories."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections import namedtuple

import numpy as np
import pytest

from flowertune import durable
from flowertune.config import Config, ConfigError, from_flat
from flowertune.federation.rundir import RunDir, newest_state, read_metrics
from flowertune.models.adapter import save_adapter


def make_run(tmp_path):
    cfg = from_flat({**Config().to_flat(), "run.output-dir": str(tmp_path / "run")})
    return RunDir.create(cfg)


def test_a_torn_last_metrics_line_is_left_out_and_the_resumed_run_appends_cleanly(tmp_path):
    run = make_run(tmp_path)
    for r in range(3):
        run.log({"round": r, "bytes_cumulative": r})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "bytes_cum')  # power lost mid-write
    assert [row["round"] for row in read_metrics(run.path)] == [0, 1, 2]
    run.truncate_metrics(2)  # what a resume does
    run.log({"round": 3, "bytes_cumulative": 3})
    assert [row["round"] for row in read_metrics(run.path)] == [0, 1, 2, 3]
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_garbage_inside_the_metrics_file_is_an_error_not_silently_dropped(tmp_path):
    run = make_run(tmp_path)
    run.log({"round": 0})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write("not json\n")
    run.log({"round": 1})
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        read_metrics(run.path)


def test_a_full_disk_during_a_state_save_keeps_the_previous_state_and_leaves_no_temp_file(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    run.save_state(1, {"round": 1}, {"a": np.ones(4, np.float32)})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        run.save_state(2, {"round": 2}, {"a": np.full(4, 2.0, np.float32)})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in (run.path / "state").iterdir()) == ["round-1.safetensors"]
    meta, arrays = newest_state(run.path)
    assert meta["round"] == 1 and np.array_equal(arrays["a"], np.ones(4, np.float32))


def test_too_little_free_space_is_a_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(durable.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(durable.NoSpace, match="MiB free .* --resume"):
        run.save_state(1, {"round": 1}, {"a": np.ones(4, np.float32)})
    with pytest.raises(durable.NoSpace):
        save_adapter({"a": np.ones(4, np.float32)}, {"r": 1}, run.path / "final_adapter")
    assert not (run.path / "state").exists() or not list((run.path / "state").iterdir())
    assert not (run.path / "final_adapter").exists()


def test_an_adapter_is_swapped_in_whole_and_json_writes_leave_no_temp_files(tmp_path):
    d = tmp_path / "final_adapter"
    save_adapter({"a": np.ones(4, np.float32)}, {"r": 1}, d)
    save_adapter({"a": np.full(4, 2.0, np.float32)}, {"r": 2}, d)
    assert json.loads((d / "adapter_config.json").read_text())["r"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_adapter"]  # the old copy and temp dirs are gone
    a, b = tmp_path / "x", tmp_path / "y"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    assert durable._exchange(a, b) and (b / "f").read_text() == "a"  # this kernel swaps atomically
    durable.write_text(tmp_path / "c.json", "{}")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_run_directories_and_the_flowertune_home_are_private(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o700
    monkeypatch.setenv("FLOWERTUNE_HOME", str(tmp_path / "home"))
    from flowertune.home import flowertune_home

    assert stat.S_IMODE(flowertune_home().stat().st_mode) == 0o700

"""Progress lines during a round, the terminal filter of `flowertune run`, and the metric sinks."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from flowertune.config import ConfigError
from flowertune.federation.progress import RoundTicker, duration, send_and_receive
from flowertune.federation.sinks import Sinks, check_sinks
from flowertune.launch.logtee import terminal_line


class FakeGrid:
    """Push/pull like Flower's Grid: replies show up after a given number of polls."""

    def __init__(self, ready_after: dict[str, int]) -> None:
        self.ready_after, self.polls, self.pulled = ready_after, 0, set()

    def push_messages(self, messages):
        return [m for m in messages]

    def pull_messages(self, ids):
        self.polls += 1
        out = [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
               for i in ids if self.ready_after[i] <= self.polls and i not in self.pulled]
        self.pulled |= {m.metadata.reply_to_message_id for m in out}
        return out


def test_send_and_receive_reports_every_poll_and_returns_all_replies() -> None:
    grid = FakeGrid({"a": 1, "b": 3})
    seen = []
    replies = send_and_receive(grid, ["a", "b"], timeout=60, on_poll=lambda r, n: seen.append((len(r), n)),
                               poll_s=0.0)
    assert sorted(m.metadata.reply_to_message_id for m in replies) == ["a", "b"]
    assert seen == [(1, 2), (1, 2), (2, 2)]


def test_send_and_receive_gives_up_at_the_timeout() -> None:
    replies = send_and_receive(FakeGrid({"a": 1, "b": 10**9}), ["a", "b"], timeout=0.05, poll_s=0.01)
    assert [m.metadata.reply_to_message_id for m in replies] == ["a"]


def test_round_ticker_eta_and_quiet_mode(caplog: pytest.LogCaptureFixture) -> None:
    ticker = RoundTicker(server_round=3, rounds=10, every_s=30, past_round_s=[60.0, 80.0], bytes_so_far=5 * 1024**2)
    assert ticker.eta_s(10.0) == pytest.approx(70.0 * 8 - 10.0)
    line = ticker.line(1, 2)
    assert line.startswith("round 3/10: 1/2 clients done | ") and "ETA 9 min" in line and "5.0 MB so far" in line
    assert "ETA after round 1" in RoundTicker(1, 5, 30, [], 0).line(0, 2)
    assert duration(42) == "42 s" and duration(185) == "3 min 05 s" and duration(7620) == "2 h 07 min"
    reply = SimpleNamespace(has_error=lambda: False, has_content=lambda: False, metadata=SimpleNamespace(src_node_id=1),
                            content={"metrics": {"train_loss": 0.5, "partition-id": 3, "tokens_per_s": 200.0}})
    with caplog.at_level(logging.INFO, logger="flowertune"):
        RoundTicker(1, 2, 0, [], 0)([reply], 2)  # every_s 0: off
        assert not caplog.records
        RoundTicker(1, 2, 30, [], 0)([reply], 2)
    text = caplog.text
    assert "partition 3 done: round loss 0.5000, 200 tokens/s" in text and "round 1/2: 1/2 clients done" in text


def test_terminal_shows_flowertune_lines_and_errors_only_unless_verbose() -> None:
    ours = "16:23:31 flowertune INFO: round 1/15: train_loss 1.1368\n"
    client = "\x1b[36m(ClientAppActor pid=13034)\x1b[0m 16:23:31 flowertune INFO: partition 0/10: 400 train\n"
    noise = ["\x1b[92mINFO \x1b[0m:      configure_train: Sampled 2 nodes (out of 10)\n",
             "/x/ray/_private/worker.py:2051: FutureWarning: Tip: In future versions of Ray\n",
             "\x1b[36m(ClientAppActor pid=5135)\x1b[0m Loading weights: 100%|##| 272/272\n"]
    assert terminal_line(ours, verbose=False) == ours
    assert terminal_line(client, verbose=False) == "  client | 16:23:31 flowertune INFO: partition 0/10: 400 train\n"
    assert all(terminal_line(n, verbose=False) is None for n in noise)
    assert all(terminal_line(n, verbose=True) == n for n in noise)
    err = "\x1b[91mERROR \x1b[0m:     ServerApp thread raised an exception\n"
    assert terminal_line(err, verbose=False) == err


def test_tensorboard_sink_writes_the_rows_it_is_fed(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sinks = Sinks("tensorboard", tmp_path, {"num-server-rounds": 2})
    rows = [{"round": 0, "eval_loss": 3.0, "errors": []},
            {"round": 1, "train_loss": 2.5, "eval_loss": None, "bytes_round": 10, "rejected": []},
            {"round": 2, "train_loss": 1.5, "eval_loss": 2.0, "bytes_round": 10}]
    for row in rows:
        sinks.log(row)
    sinks.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train_loss")] == [(1, 2.5), (2, 1.5)]
    assert [(e.step, e.value) for e in acc.Scalars("eval_loss")] == [(0, 3.0), (2, 2.0)]
    assert "errors" not in acc.Tags()["scalars"]


def test_sinks_are_checked_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    check_sinks("tensorboard")
    with pytest.raises(ConfigError, match="unknown sink 'neptune'; choose from mlflow, tensorboard, wandb"):
        check_sinks("tensorboard,neptune")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"run.metric-sinks=mlflow needs the mlflow package.*pip install mlflow"):
        check_sinks("mlflow")

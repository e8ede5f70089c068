"""The round loop's policy on failing nodes, with a fake Grid: check-in, retries, a clear stop, deadlines."""

from uuid import uuid4

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flowertune.config import Config, from_flat
from flowertune.federation.records import to_array_record
from flowertune.federation.server_loop import NodeDirectory, Progress, RunStopped, train_round
from flowertune.federation.strategies import make_strategy
from tests.unit.test_strategies import arrays


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class ScriptedGrid:
    """Nodes 1..n (partition = id - 1); ``behaviour[node]`` per training message: 'ok', 'error' or 'silent'."""

    def __init__(self, n, behaviour=None, checkin=None):
        self.nodes = list(range(1, n + 1))
        self.behaviour = behaviour or {}
        self.checkin = checkin or {}
        self.sent = []

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):  # the training round pushes, then pulls (progress lines in between)
        self.pending = {}
        for m in messages:
            m.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do on push
            self.pending[m.metadata.message_id] = self.send_and_receive([m])
        return list(self.pending)

    def pull_messages(self, ids):
        return [r for i in ids for r in self.pending.pop(i, [])]

    def send_and_receive(self, messages, timeout=None):
        out = []
        for m in messages:
            node = m.metadata.dst_node_id
            self.sent.append((node, m.metadata.message_type))
            if m.metadata.message_type == "query":
                if self.checkin.get(node):
                    out.append(Message(Error(code=0, reason=f"Traceback...\nValueError: {self.checkin[node]}"),
                                       reply_to=m))
                else:
                    out.append(Message(RecordDict({"info": ConfigRecord({"partition-id": node - 1, "rows": 10})}), reply_to=m))
                continue
            how = self.behaviour.get(node, "ok")
            if how == "silent":
                continue
            if how == "error":
                out.append(Message(Error(code=0, reason="Exception ClientAppException occurred. Message: "
                                                      "out of memory'>"), reply_to=m))
                continue
            content = RecordDict({"arrays": to_array_record(arrays(float(node))),
                                  "metrics": MetricRecord({"num-examples": 10, "train_loss": 1.0})})
            out.append(Message(content, reply_to=m))
        return out


def setup(n, min_train, retries=1, **grid):
    cfg = from_flat({**Config().to_flat(), "strategy.fraction-train": 1.0, "strategy.min-train-nodes": min_train,
                     "strategy.min-available-nodes": 1, "strategy.round-retries": retries,
                     "strategy.node-wait-timeout": 1.0, "strategy.round-timeout": 1.5})
    strategy = make_strategy(cfg.strategy)
    directory = NodeDirectory(timeout=1.0)
    strategy.ctx.order = directory.order
    progress = Progress(round=0, arrays=to_array_record(arrays(0.0)), adapter_config={})
    return cfg, strategy, directory, progress, ScriptedGrid(n, **grid)


def test_a_failed_node_is_counted_and_named_and_the_round_goes_on():
    cfg, strategy, directory, progress, grid = setup(3, min_train=2, behaviour={2: "error", 3: "silent"})
    with pytest.raises(RunStopped):  # only 1 usable update of the 2 needed, on both tries
        train_round(strategy, grid, 1, progress, 0.1, cfg, directory)
    cfg, strategy, directory, progress, grid = setup(3, min_train=1, behaviour={2: "error", 3: "silent"})
    new, _, msgs, replies, errors = train_round(strategy, grid, 1, progress, 0.1, cfg, directory)
    assert new is not None and len(msgs) == 3 and len(replies) == 2
    assert errors == ["node 2: out of memory", "1 sampled node(s) sent no reply within strategy.round-timeout"]


def test_too_few_updates_retries_then_stops_with_the_reasons():
    cfg, strategy, directory, progress, grid = setup(2, min_train=2, retries=2, behaviour={1: "error"})
    with pytest.raises(RunStopped, match=r"round 1: fewer than strategy.min-train-nodes=2 usable client updates in "
                                         r"3 tries \(node 1: out of memory\).*--resume"):
        train_round(strategy, grid, 1, progress, 0.1, cfg, directory)
    assert sum(1 for _, t in grid.sent if t == "train") == 6  # 3 tries x 2 nodes


def test_a_node_failing_its_check_in_is_never_sampled():
    cfg, strategy, directory, progress, grid = setup(3, min_train=1, checkin={2: "partition 1 of 3 has no rows"})
    _, _, msgs, _, _ = train_round(strategy, grid, 1, progress, 0.1, cfg, directory)
    assert sorted(m.metadata.dst_node_id for m in msgs) == [1, 3]
    assert directory.take_errors() == ["node 2: ValueError: partition 1 of 3 has no rows"]


def test_waiting_for_nodes_has_a_deadline():
    cfg, strategy, directory, progress, grid = setup(1, min_train=2)
    with pytest.raises(RunStopped, match=r"only 1 of the 2 SuperNodes .* after 1 s \(strategy.node-wait-timeout\)"):
        train_round(strategy, grid, 1, progress, 0.1, cfg, directory)


def test_rows_with_an_empty_response_are_skipped_with_a_count(tiny_model_dir, caplog):
    from transformers import AutoTokenizer

    from flowertune.federation.client_runtime import Runtime, tokenize_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = from_flat({**Config().to_flat(), "data.format": "medical"})
    rows = [{"instruction": "i", "input": f"q{i}", "output": "" if i % 3 == 0 else f"a{i}"} for i in range(9)]
    examples = tokenize_rows(rows, cfg, Runtime(model=None, tokenizer=tok, pad_id=tok.pad_token_id or 0))
    assert len(examples) == 6 and "3 with an empty response" in caplog.text
    assert all(np.any(np.array(ex.labels) != -100) for ex in examples)

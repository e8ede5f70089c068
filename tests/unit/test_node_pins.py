"""The node decides what runs on it: a SuperNode's ``--node-config`` pins the base model and the data it reads and
can refuse Hub code; a run that asks for anything else gets, for every message, an error reply naming the
node-config key (attacked here with runs that ask for another model, other data and remote code)."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from flowertune import client_app
from flowertune.config import node_refusal, resolve


def run_config(**kw) -> dict:
    return {k: v for k, v in resolve(kw).to_flat().items()}


REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("run, node, why", [
    ({"model.name": "meta-llama/Llama-3.1-8B"}, {"model-name": "embedded"},
     "this node's --node-config model-name='embedded' does not allow the run's model.name='meta-llama/Llama-3.1-8B'"),
    ({"static.dataset.name": "/etc/passwd"}, {"dataset-name": "sample:medical,/data/notes.jsonl"},
     ("this node's --node-config dataset-name='sample:medical,/data/notes.jsonl' does not allow the run's "
     "static.dataset.name='/etc/passwd'")),
    ({"model.trust-remote-code": True, "model.revision": REV}, {"trust-remote-code": False},
     "this node's --node-config trust-remote-code=false refuses the run's model.trust-remote-code=true"),
    ({"model.trust-remote-code": True, "model.revision": REV}, {"trust-remote-code": "false"}, "refuses the run's model.trust-remote-code"),
])
def test_a_run_that_asks_for_what_the_node_does_not_allow_is_refused(run, node, why):
    assert why in node_refusal(resolve(run), node)


@pytest.mark.parametrize("run, node", [
    ({}, {}),
    ({}, {"model-name": "embedded", "dataset-name": "sample:medical", "trust-remote-code": False}),
    ({"model.name": "b"}, {"model-name": "a, b"}),
    ({"model.trust-remote-code": True, "model.revision": REV}, {"trust-remote-code": True}),
])
def test_what_the_node_allows_runs(run, node):
    assert node_refusal(resolve(run), node) is None


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 7


@pytest.mark.parametrize("want, mtype", [("node-info", MessageType.QUERY), ("", MessageType.TRAIN)])
def test_every_message_of_a_refused_run_gets_an_error_reply_naming_the_key(want, mtype, task_identity, monkeypatch):
    """Check-in and training alike (a server may skip the check-in): the reply is an error whose reason is the
    one line; nothing is loaded (the refusal comes before any task)."""
    context = Context(run_id=1, node_id=7, state=RecordDict(),
                      node_config={"partition-id": 0, "num-partitions": 2, "model-name": "embedded"},
                      run_config=run_config(**{"model.name": "evil/model"}))
    content = RecordDict({"config": ConfigRecord({"want": want} if want else {"server-round": 1, "lr": 0.1})})
    msg = Message(content, dst_node_id=7, message_type=mtype)
    tasks = []  # every task (check-in, training: anything that loads a model) goes through _run
    monkeypatch.setattr(client_app, "_run", lambda *a: tasks.append(a))
    reply = client_app.app(msg, context)
    assert reply.has_error(), reply
    assert "does not allow the run's model.name='evil/model'" in reply.error.reason
    assert "model-name" in reply.error.reason and "\n" not in reply.error.reason
    assert tasks == []


@pytest.mark.parametrize("revision", ["", "main", "v1.0", REV[:-1], REV.upper(), REV + "0"])
def test_remote_code_without_a_pinned_commit_is_refused(revision):
    from flowertune.config import ConfigError

    with pytest.raises(ConfigError, match="model.trust-remote-code=true runs some/model's own Python code: pin"):
        resolve({"model.name": "some/model", "model.trust-remote-code": True, "model.revision": revision})


def test_remote_code_with_a_pinned_commit_or_a_local_directory_is_allowed(tmp_path):
    assert resolve({"model.name": "some/model", "model.trust-remote-code": True, "model.revision": REV})
    assert resolve({"model.name": str(tmp_path), "model.trust-remote-code": True})  # the code is on this disk


def test_no_loader_hard_codes_remote_code():
    from tests.conftest import REPO

    files = [*(REPO / "flowertune").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]
    assert len(files) > 50
    assert [str(p) for p in files if "trust_remote_code=True" in p.read_text()] == []

"""Golden parity of the server's strategy stack: what it aggregates, counts and samples, byte for byte.

Every strategy x wire codec runs 3 rounds over 4 nodes (2 sampled per round) with deterministic client
replies: each sampled node decodes its downlink with the client's own wire functions, "trains" (adds an
update drawn from a generator seeded by its node and round), and encodes its reply as a real client does
(error-feedback residual kept in its context). Recorded per round: the sampled nodes, bytes down and up,
and the SHA-256 of the aggregated adapter (names, shapes, fp32 bytes).

The expected values in ``golden/strategy_parity.json`` were recorded from the code before the strategy
redesign (issue 18); the redesign must reproduce them exactly. Rewrite them only for an intended change of
behaviour: ``FLOWERTUNE_WRITE_GOLDEN=1 pytest tests/unit/test_strategy_parity.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flowertune.config import StrategyConfig
from flowertune.federation import wire_client
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.strategies import make_strategy

GOLDEN = Path(__file__).parent / "golden" / "strategy_parity.json"
STRATEGIES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"]
CODECS = ["fp32", "delta-int8", "delta-topk-int8"]
NODES = (101, 102, 103, 104)
SHAPES = {"m.0.q_proj.lora_A.weight": (4, 64), "m.0.q_proj.lora_B.weight": (64, 4),
          "m.0.v_proj.lora_A.weight": (4, 64), "m.0.v_proj.lora_B.weight": (64, 4)}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class FakeGrid:
    def get_node_ids(self) -> list[int]:
        return list(NODES)


def digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k], dtype=np.float32)
        h.update(k.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def initial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: (rng.standard_normal(s) * (0.1 if "lora_A" in k else 0.0)).astype(np.float32)
            for k, s in SHAPES.items()}


def client_reply(msg: Message, context: Context, server_round: int) -> Message:
    """What a client sends back: decode, add a seeded update, encode against what it decoded."""
    codec = wire_client.codec_of(msg)
    received = wire_client.receive(msg, context, codec)
    rng = np.random.default_rng(1000 * context.node_id + server_round)
    trained = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in received.items()}
    payload = wire_client.send(codec, trained, received, context)
    n = int(rng.integers(5, 50))
    metrics = MetricRecord({"num-examples": n, "train_loss": float(rng.uniform(1, 3))})
    return Message(content=RecordDict({"arrays": payload, "metrics": metrics}), reply_to=msg)


def run_rounds(strategy_name: str, codec: str, rounds: int = 3) -> list[dict]:
    cfg = StrategyConfig(name=strategy_name, fraction_train=0.5, min_train_nodes=2, proximal_mu=0.1,
                         server_momentum=0.9, seed=7)
    strategy = make_strategy(cfg, codec, **({"fraction": 0.25} if codec == "delta-topk-int8" else {}))
    contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES}
    arrays = to_array_record(initial())
    out = []
    for rnd in range(1, rounds + 1):
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": 0.1, "server-round": rnd}), FakeGrid()))
        sampled = [m.metadata.dst_node_id for m in msgs]
        replies = [client_reply(m, contexts[m.metadata.dst_node_id], rnd) for m in msgs]
        agg, _ = strategy.aggregate_train(rnd, replies)
        arrays = agg
        out.append({"sampled": sampled, "bytes_down": strategy.traffic.down, "bytes_up": strategy.traffic.up,
                    "rejected": list(strategy.traffic.rejected), "aggregate_sha256": digest(from_array_record(agg))})
    return out


def record() -> dict[str, list[dict]]:
    return {f"{s}/{c}": run_rounds(s, c) for s in STRATEGIES for c in CODECS}


def test_the_stack_reproduces_the_recorded_rounds_byte_for_byte():
    got = record()
    if os.environ.get("FLOWERTUNE_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key


def test_the_recording_is_not_trivial():
    """The rounds really differ: sampling changes between rounds, the codecs shrink the payloads (first contact:
    the full adapter in fp16), every aggregate moves, nothing is rejected."""
    fp32, int8, topk = (run_rounds("fedavg", c) for c in CODECS)
    assert len({tuple(r["sampled"]) for r in fp32}) > 1
    assert len({r["aggregate_sha256"] for r in fp32 + int8 + topk}) == 9
    assert all(r["rejected"] == [] for r in fp32 + int8 + topk)
    assert all(i["bytes_up"] < 0.7 * f["bytes_up"] and t["bytes_up"] < i["bytes_up"] for f, i, t in zip(fp32, int8, topk))
    assert 0.5 < int8[0]["bytes_down"] / fp32[0]["bytes_down"] < 0.6

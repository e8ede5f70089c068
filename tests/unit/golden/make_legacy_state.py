# Ran once with the code at 563ed7e (before the strategy stack), from a checkout of that commit:
#   PYTHONPATH=. python make_legacy_state.py tests/unit/golden/legacy_state_fedadam_delta_int8.safetensors
# It does not run against today's code (it calls the old API); the file it wrote is the fixture.
"""Writes golden/legacy_state_fedadam_delta_int8.safetensors with the code before the strategy stack (563ed7e):
FedAdam x delta-int8, 4 nodes (partitions 0..3), 2 rounds of the parity test's clients, the server's state
after round 2 as the round loop saved it, and round 3's sampled partitions, bytes and aggregate digest."""
import json
import sys
from pathlib import Path

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flowertune.config import StrategyConfig
from flowertune.federation.server_loop import NodeDirectory, Progress
from flowertune.federation.state import save_state
from flowertune.federation.strategies import make_strategy
from flowertune.wire import from_array_record, to_array_record
from tests.unit.test_strategy_parity import NODES, FakeGrid, client_reply, digest, initial

TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
out = Path(sys.argv[1])
cfg = StrategyConfig(name="fedadam", fraction_train=0.5, min_train_nodes=2, seed=7)
strategy = make_strategy(cfg, "delta-int8")
directory = NodeDirectory(timeout=1.0, partition={n: i for i, n in enumerate(NODES)})
strategy.node_order = directory.order
contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES}
arrays = to_array_record(initial())
for rnd in (1, 2, 3):
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": 0.1, "server-round": rnd}), FakeGrid()))
    replies = [client_reply(m, contexts[m.metadata.dst_node_id], rnd) for m in msgs]
    arrays, _ = strategy.aggregate_train(rnd, replies)
    if rnd == 3:
        expect = {"sampled_partitions": [directory.partition[m.metadata.dst_node_id] for m in msgs],
                  "bytes_down": strategy.traffic.down, "bytes_up": strategy.traffic.up}
    if rnd == 2:
        progress = Progress(round=2, arrays=arrays, adapter_config={"r": 4}, cumulative=123, run_key="legacy")
        meta, state = progress.to_state(strategy, directory, {})
expect["aggregate_sha256"] = digest(from_array_record(arrays))
meta["expected_round_3"] = expect
save_state(out, meta, state)
print(json.dumps(expect))

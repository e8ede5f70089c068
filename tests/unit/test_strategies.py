"""Aggregation maths, reply validation, seeded sampling and byte counting on tiny arrays."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flowertune.catalog import STRATEGIES
from flowertune.config import StrategyConfig
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.strategies import make_strategy

SHAPES = {"a.lora_A.weight": (2, 3), "a.lora_B.weight": (3, 2)}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def arrays(value, shapes=SHAPES):
    return {k: np.full(s, value, dtype=np.float32) for k, s in shapes.items()}


def reply(to, arrs, n, loss=1.0):
    content = RecordDict({"arrays": to_array_record(arrs), "metrics": MetricRecord({"num-examples": n, "train_loss": loss})})
    return Message(content=content, reply_to=to)


def round_trip(strategy, replies_spec, nodes=(11, 12, 13, 14)):
    msgs = list(strategy.configure_train(1, to_array_record(arrays(0.0)), ConfigRecord({"lr": 0.1}), FakeGrid(nodes)))
    replies = [reply(m, *spec) for m, spec in zip(msgs, replies_spec)]
    return msgs, strategy.aggregate_train(1, replies)


def test_fedavg_is_the_example_weighted_mean():
    s = make_strategy(StrategyConfig(fraction_train=0.5))
    msgs, (agg, metrics) = round_trip(s, [(arrays(1.0), 10, 2.0), (arrays(4.0), 30, 4.0)])
    assert len(msgs) == 2
    out = from_array_record(agg)
    for k in SHAPES:
        np.testing.assert_allclose(out[k], (1.0 * 10 + 4.0 * 30) / 40, rtol=1e-6)
    assert metrics["train_loss"] == pytest.approx((2.0 * 10 + 4.0 * 30) / 40)


def test_byte_counts_are_adapter_bytes_times_clients_each_way():
    s = make_strategy(StrategyConfig(fraction_train=0.5))
    round_trip(s, [(arrays(1.0), 10), (arrays(2.0), 10)])
    per_copy = to_array_record(arrays(0.0)).count_bytes()
    assert s.traffic.down == 2 * per_copy and s.traffic.up == 2 * per_copy


@pytest.mark.parametrize("bad", [
    {"a.lora_A.weight": np.zeros((2, 4), np.float32), "a.lora_B.weight": np.zeros((3, 2), np.float32)},
    {**arrays(1.0), "a.lora_A.weight": np.array([[np.nan, 0, 0], [0, 0, 0]], np.float32)},
    {**arrays(1.0), "b.lora_A.weight": np.zeros((2, 3), np.float32)},  # a tensor the adapter does not have
])
def test_bad_update_is_rejected_and_round_goes_on(bad):
    s = make_strategy(StrategyConfig(fraction_train=0.5))
    _, (agg, _) = round_trip(s, [(bad, 50), (arrays(3.0), 10)])
    np.testing.assert_allclose(from_array_record(agg)["a.lora_A.weight"], 3.0)
    assert len(s.traffic.rejected) == 1


def test_missing_tensor_means_unchanged():
    # codecs leave out tensors that did not change; the server takes them from the global adapter
    s = make_strategy(StrategyConfig(fraction_train=0.5))
    only_a = {"a.lora_A.weight": np.full((2, 3), 2.0, np.float32)}
    _, (agg, _) = round_trip(s, [(only_a, 10), (arrays(4.0), 10)])
    out = from_array_record(agg)
    np.testing.assert_allclose(out["a.lora_A.weight"], 3.0)
    np.testing.assert_allclose(out["a.lora_B.weight"], 2.0)  # (0.0 unchanged + 4.0) / 2


@pytest.mark.parametrize("codec", ["fp16", "delta-fp16", "delta-int8"])
def test_compressed_uplink_is_decoded_before_aggregation(codec):
    from flowertune.wire import get_codec

    s = make_strategy(StrategyConfig(fraction_train=0.5), codec=codec)
    msgs = list(s.configure_train(1, to_array_record(arrays(0.0)), ConfigRecord({"lr": 0.1}), FakeGrid([1, 2, 3, 4])))
    assert msgs[0].content["config"]["wire-codec"] == codec
    c = get_codec(codec)
    payloads = [c.encode(arrays(v), arrays(0.0), None)[0] for v in (1.0, 3.0)]
    replies = [Message(content=RecordDict({"arrays": to_array_record(p), "metrics": MetricRecord({"num-examples": 10, "train_loss": 1.0})}),
                       reply_to=m) for m, p in zip(msgs, payloads)]
    agg, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(from_array_record(agg)["a.lora_A.weight"], 2.0, rtol=1e-2)
    assert s.traffic.up == sum(to_array_record(p).count_bytes() for p in payloads)


def test_sampling_is_seeded_and_reproducible():
    def sample(seed, rnd):
        s = make_strategy(StrategyConfig(fraction_train=0.25, min_train_nodes=2, seed=seed))
        msgs = s.configure_train(rnd, to_array_record(arrays(0.0)), ConfigRecord({}), FakeGrid(range(100, 120)))
        return sorted(m.metadata.dst_node_id for m in msgs)

    assert sample(1, 1) == sample(1, 1)
    assert sample(1, 1) != sample(1, 2) or sample(1, 1) != sample(1, 3)
    assert sample(1, 1) != sample(2, 1) or sample(1, 2) != sample(2, 2)
    assert len(sample(1, 1)) == 5


def test_fedprox_sends_mu_and_server_optimizers_run():
    s = make_strategy(StrategyConfig(name="fedprox", proximal_mu=0.3, fraction_train=0.5))
    msgs = list(s.configure_train(1, to_array_record(arrays(0.0)), ConfigRecord({}), FakeGrid([1, 2, 3, 4])))
    assert msgs[0].content["config"]["proximal-mu"] == 0.3
    for name in ("fedadam", "fedyogi", "fedavgm"):
        s = make_strategy(StrategyConfig(name=name, fraction_train=0.5))
        _, (agg, _) = round_trip(s, [(arrays(1.0), 10), (arrays(1.0), 10)])
        out = from_array_record(agg)["a.lora_A.weight"]
        assert np.isfinite(out).all() and (out > 0).all()  # moved from 0 towards the clients' 1.0
    assert set(STRATEGIES.names()) == {"fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm", "fedmedian", "fedtrimmedavg",
                                       "krum", "multikrum", "bulyan"}

"""SecAgg+ (``strategy.secagg.mode=secagg+``): Flower's own workflow stages on the server and Flower's
``secaggplus_mod`` in flowertune's real ClientApp (its mods: error, secagg, wire), the two joined by an
in-process grid that copies every message as a transport would. Checked: the unmasked average equals plain
FedAvg of the nodes that stayed, within the quantization step, with one node dropping out mid-round; every
message the server receives is recorded, and no individual update can be found in any of them (the same
detector finds every update in a plain round); hostile replies at each stage count as dropouts; too many
dropouts halt the round with the reason; bytes of all four stages are counted; config values past each bound."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from flowertune.client_app import dp_clip_mod, error_mod
from flowertune.config import ConfigError, StrategyConfig, from_flat
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.secagg import secure_round
from flowertune.federation.secagg_client import secagg_mod
from flowertune.federation.strategies import describe, make_strategy
from flowertune.federation.wire_client import wire_mod
from flowertune.wire import WireHeader, get_codec

SHAPES = {"m.q_proj.lora_A.weight": (4, 96), "m.q_proj.lora_B.weight": (96, 4), "m.v_proj.lora_A.weight": (4, 96)}
NODES = [101, 102, 103, 104, 105]
CLIP, BITS = 0.1, 22
STEP = 2 * CLIP / 2**BITS  # one quantization step of one node's entry


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def update_of(node: int, rnd: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 * node + rnd)
    return {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


class Federation:
    """Nodes running flowertune's ClientApp mods around a handler that adds :func:`update_of`; ``misbehave``:
    node -> function(stage, reply) -> reply (or raises), applied to the node's reply outside every mod."""

    def __init__(self, nodes=NODES, misbehave=None, dp_sgd=False):
        self.dp_sgd = dp_sgd  # the nodes send DP-SGD's metrics (no train_loss)
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": i}, state=RecordDict(),
                                    run_config={}) for i, n in enumerate(nodes)}
        self.misbehave = misbehave or {}
        self.received: list[Message] = []  # everything the server side is handed
        self.pending: dict[str, Message] = {}
        self.ids = itertools.count()

        def outermost(msg, context, call_next):
            stage = (msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
                     if RECORD_KEY_CONFIGS in msg.content.config_records else "plain")
            reply = call_next(msg, context)
            bad = self.misbehave.get(context.node_id)
            return bad(stage, reply) if bad else reply

        self.app = ClientApp(mods=[outermost, error_mod, secagg_mod, wire_mod, dp_clip_mod])

        @self.app.train()
        def train(msg, context):
            glob = from_array_record(msg.content["arrays"])
            upd = update_of(context.node_id, int(msg.content["config"]["server-round"]))
            trained = {k: glob[k] + upd[k] for k in glob}
            metrics = MetricRecord({"num-examples": 10 + context.node_id % 7,
                                    **({"partition-id": 0} if self.dp_sgd else {"train_loss": 1.5})})
            return Message(RecordDict({"arrays": to_array_record(trained), "metrics": metrics}), reply_to=msg)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, msgs):
        out = []
        for m in msgs:
            m.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
            m.metadata.__dict__["_src_node_id"] = 0
            try:
                reply = self.app(copy.deepcopy(m), self.contexts[m.metadata.dst_node_id])
            except RuntimeError as exc:  # as Flower's runtime answers a ClientApp that raised
                reply = Message(Error(code=0, reason=str(exc)), reply_to=m)
            self.pending[m.metadata.message_id] = copy.deepcopy(reply)
            out.append(m.metadata.message_id)
        return out

    def pull_messages(self, ids):
        got = [self.pending.pop(i) for i in list(ids) if i in self.pending]
        self.received += copy.deepcopy(got)
        return got


def glob_arrays():
    rng = np.random.default_rng(0)
    return {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def train_messages(glob, nodes=NODES, rnd=1, codec="fp32"):
    c = get_codec(codec)
    return [Message(RecordDict({"arrays": to_array_record(glob), "config": ConfigRecord(
        {"lr": 0.1, "server-round": rnd, "run-key": "k", **WireHeader.of(c, rnd, None).to_config()})}),
        dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]


def secure(fed, glob, rnd=1, **cfg):
    c = StrategyConfig(secagg_mode="secagg+", secagg_clipping_range=CLIP, secagg_quantization_bits=BITS, **cfg)
    return secure_round(fed, train_messages(glob, list(fed.contexts), rnd), rnd, c, 30.0)


def fedavg(glob, nodes, rnd=1):
    return {k: glob[k] + np.mean([update_of(n, rnd)[k].astype(np.float64) for n in nodes], axis=0) for k in glob}


def max_diff(a, b):
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in b)


def tolerance(arrays):
    """One quantization step (the mean of stochastically rounded entries is within a step of the true mean) plus
    the float32 rounding of the result."""
    return STEP + max(float(np.spacing(np.abs(v).max().astype(np.float32))) for v in arrays.values())


def drop_at_masking(stage, reply):
    if stage == Stage.COLLECT_MASKED_VECTORS:
        raise RuntimeError("this node drops out after sharing its keys")
    return reply


def test_the_unmasked_average_is_fedavg_of_the_nodes_that_stayed_within_the_quantization_step():
    glob = glob_arrays()
    fed = Federation(misbehave={103: drop_at_masking})
    out = secure(fed, glob)
    assert out.halted is None
    assert sorted(r.metadata.src_node_id for r in out.replies) == [101, 102, 104, 105]
    assert any("node 103" in e and "collect_masked_vectors" in e for e in out.errors), out.errors
    got = from_array_record(out.replies[0].content["arrays"])
    assert all(np.array_equal(from_array_record(r.content["arrays"])[k], got[k]) for r in out.replies for k in got)
    # one step per node at most, averaged: the mean's error is below one step (float32 rounding aside)
    assert max_diff(got, fedavg(glob, [101, 102, 104, 105])) <= tolerance(got)
    # and not merely close to the global or to the average including the node that dropped
    assert max_diff(got, fedavg(glob, NODES)) > 100 * STEP
    assert [dict(r.content["metrics"])["train_loss"] for r in out.replies] == [1.5] * 4


def test_the_same_round_sums_to_the_same_bytes_again_and_another_round_differs():
    glob = glob_arrays()
    a, b = secure(Federation(), glob), secure(Federation(), glob)
    c = secure(Federation(), glob, rnd=2)
    arr = [from_array_record(x.replies[0].content["arrays"]) for x in (a, b, c)]
    assert all(np.array_equal(arr[0][k], arr[1][k]) for k in SHAPES)
    assert max_diff(arr[2], arr[0]) > 100 * STEP


def find_updates(messages, updates, tolerance):
    """(message index, node) pairs where a node's update (or its quantized form) shows in what the server got:
    as an fp32 array (plain or as bytes), or as a quantized integer vector within ``tolerance`` steps."""
    found = set()
    for i, m in enumerate(messages):
        if not m.has_content():
            continue
        arrays = [a.numpy() for rec in m.content.array_records.values() for a in rec.values()]
        for rec in m.content.config_records.values():
            for v in rec.values():
                for raw in v if isinstance(v, list) else [v]:
                    if isinstance(raw, bytes):
                        try:
                            arrays.append(bytes_to_ndarray(raw))
                        except Exception:  # noqa: BLE001, S112  (keys, ciphertexts: not arrays)
                            continue
        for node, upd in updates.items():
            flat = np.concatenate([upd[k].ravel() for k in sorted(upd)]).astype(np.float64)
            quantized = (np.clip(flat, -CLIP, CLIP) + CLIP) / STEP
            for a in arrays:
                x = a.ravel().astype(np.float64)
                for target in (flat, quantized):
                    for part in (x, x[1:]):  # a masked vector starts with the weight
                        n = min(len(part), len(target))
                        if n > 16 and np.mean(np.abs(part[:n] - target[:n]) <= tolerance * max(STEP, 1e-9)) > 0.5:
                            found.add((i, node))
    return found


def test_no_individual_update_reaches_the_server_and_the_detector_finds_every_one_in_a_plain_round():
    glob = glob_arrays()
    fed = Federation()
    out = secure(fed, glob)
    assert out.halted is None and len(out.replies) == len(NODES)
    updates = {n: update_of(n, 1) for n in NODES}
    stage2 = [m for m in fed.received if RECORD_KEY_CONFIGS in m.content.config_records
              and Key.MASKED_PARAMETERS in m.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(stage2) == len(NODES) and len(fed.received) == 4 * len(NODES)
    assert all(len(rec) == 0 for m in stage2 for rec in m.content.array_records.values())
    assert find_updates(fed.received, updates, tolerance=1000) == set()
    # the trained adapters (global + update) do not show either
    trained = {n: {k: glob[k] + v for k, v in upd.items()} for n, upd in updates.items()}
    assert find_updates(fed.received, trained, tolerance=1000) == set()
    # control: the same detector on a plain round (no SecAgg+) finds every node's adapter
    plain = Federation()
    for m in train_messages(glob):
        list(plain.pull_messages(plain.push_messages([m])))
    assert {node for _, node in find_updates(plain.received, trained, tolerance=1)} == set(NODES)


def corrupt(stage_hit, how):
    def bad(stage, reply):
        if stage != stage_hit or reply.has_error():
            return reply
        cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
        how(cfg, reply)
        return reply
    return bad


HOSTILE = {
    "public key not bytes": (Stage.SETUP, lambda cfg, r: cfg.__setitem__(Key.PUBLIC_KEY_1, "x")),
    "shares to unknown nodes": (Stage.SHARE_KEYS, lambda cfg, r: cfg.__setitem__(Key.DESTINATION_LIST, [7] * len(
        cfg[Key.DESTINATION_LIST]))),
    "masked vector truncated": (Stage.COLLECT_MASKED_VECTORS,
                                lambda cfg, r: cfg.__setitem__(Key.MASKED_PARAMETERS, cfg[Key.MASKED_PARAMETERS][:2])),
    "masked vector of floats": (Stage.COLLECT_MASKED_VECTORS, lambda cfg, r: cfg.__setitem__(
        Key.MASKED_PARAMETERS, [np.full(3, 0.5).tobytes()] * len(cfg[Key.MASKED_PARAMETERS]))),
    "metrics with NaN": (Stage.COLLECT_MASKED_VECTORS,
                         lambda cfg, r: r.content.__setitem__("metrics", MetricRecord({"num-examples": 5,
                                                                                       "train_loss": float("nan")}))),
    "metrics missing": (Stage.COLLECT_MASKED_VECTORS, lambda cfg, r: r.content.metric_records.pop("metrics")),
    "public key that does not parse": (Stage.SETUP, lambda cfg, r: cfg.__setitem__(Key.PUBLIC_KEY_1, b"not a key")),
    "the same key twice": (Stage.SETUP, lambda cfg, r: cfg.__setitem__(Key.PUBLIC_KEY_2, cfg[Key.PUBLIC_KEY_1])),
    "masked vector of uint64": (Stage.COLLECT_MASKED_VECTORS, lambda cfg, r: cfg.__setitem__(
        Key.MASKED_PARAMETERS, [ndarray_to_bytes(bytes_to_ndarray(b).astype(np.uint64))
                                for b in cfg[Key.MASKED_PARAMETERS]])),
    "a share for a node it was not asked about": (Stage.UNMASK, lambda cfg, r: (
        cfg.__setitem__(Key.NODE_ID_LIST, [*cfg[Key.NODE_ID_LIST], 999]),
        cfg.__setitem__(Key.SHARE_LIST, [*cfg[Key.SHARE_LIST], b"x" * 32]))),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_reply_at_any_stage_counts_as_a_dropout_and_the_round_goes_on(name):
    stage, how = HOSTILE[name]
    glob = glob_arrays()
    out = secure(Federation(misbehave={102: corrupt(stage, how)}), glob)
    assert out.halted is None, out.halted
    assert any(e.startswith("node 102: malformed SecAgg+ " + stage) for e in out.errors), out.errors
    # left out before its masked update (or with it): the sum of the others; at unmasking its update is already
    # in the sum, and the others' shares unmask it
    summed = NODES if stage == Stage.UNMASK else [101, 103, 104, 105]
    assert sorted(r.metadata.src_node_id for r in out.replies) == summed
    got = from_array_record(out.replies[0].content["arrays"])
    assert max_diff(got, fedavg(glob, summed)) <= tolerance(got)


def test_too_many_dropouts_halt_the_round_with_the_reason_and_one_fewer_does_not():
    glob = glob_arrays()
    nodes = [101, 102, 103]  # 3 shares, threshold max(round(0.5 * 3), 2) = 2: one node may drop
    one = secure(Federation(nodes, misbehave={103: drop_at_masking}), glob)
    assert one.halted is None and len(one.replies) == 2
    two = secure(Federation(nodes, misbehave={102: drop_at_masking, 103: drop_at_masking}), glob)
    assert two.replies == [] and "too few nodes stayed" in two.halted
    high = secure(Federation(nodes, misbehave={103: drop_at_masking}), glob, secagg_threshold=1.0)
    assert high.replies == [] and "strategy.secagg.threshold" in high.halted


def test_every_stage_is_counted_both_ways_and_the_uplink_carries_integer_vectors():
    glob = glob_arrays()
    fed = Federation()
    out = secure(fed, glob)
    n_params = sum(int(np.prod(s)) for s in SHAPES.values())
    carried = sum(len(b) for m in fed.received for rec in m.content.config_records.values() for v in rec.values()
                  for b in (v if isinstance(v, list) else [v]) if isinstance(b, bytes))
    assert carried <= out.up <= carried + 1000 * len(NODES)  # keys, shares, masked vectors; plus ids and metrics
    # the masked vectors are int64: at least 8 bytes an entry, twice what fp32 would take
    assert out.up > len(NODES) * 8 * n_params
    # down: at least the fp32 global to each node, plus the key exchange
    assert out.down > len(NODES) * 4 * n_params


def test_the_stack_under_secagg_drops_the_layers_that_judge_single_updates_and_applies_the_average():
    cfg = StrategyConfig(fraction_train=1.0, min_train_nodes=2, secagg_mode="secagg+",
                         secagg_clipping_range=CLIP, secagg_quantization_bits=BITS)
    stack = make_strategy(cfg)
    assert "direction" not in describe(stack) and "norm-bound" not in describe(stack)
    fed = Federation()
    glob = glob_arrays()
    msgs = list(stack.configure_train(1, to_array_record(glob), ConfigRecord({"lr": 0.1, "run-key": "k"}), fed))
    out = secure_round(fed, msgs, 1, cfg, 30.0)
    new, _ = stack.aggregate_train(1, out.replies)
    assert stack.traffic.accepted == len(NODES) and stack.traffic.rejected == []
    got = from_array_record(new)
    assert max_diff(got, fedavg(glob, NODES)) <= tolerance(got)


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"strategy.secagg.mode": "on"}, "choose off or secagg+"),
    ({"wire.codec": "delta-int8"}, "needs wire.codec=fp32"),
    ({"strategy.name": "fedmedian"}, "fedmedian needs each update"),
    ({"strategy.dp.mode": "server-fixed"}, "use strategy.dp.mode=client-fixed"),
    ({"strategy.norm-bound": 1.0}, "strategy.norm-bound needs each update"),
    ({"strategy.min-train-nodes": 1}, "min-train-nodes >= 2"),
    ({"strategy.secagg.threshold": 1.01}, "strategy.secagg.threshold must be in (0, 1]"),
    ({"strategy.secagg.threshold": 0.0}, "strategy.secagg.threshold must be in (0, 1]"),
    ({"strategy.secagg.num-shares": 1.01}, "num-shares must be in (0, 1]"),
    ({"strategy.secagg.clipping-range": 0.0}, "clipping-range must be a finite number > 0"),
    ({"strategy.secagg.quantization-bits": 31}, "quantization-bits must be in [8, 30]"),
    ({"strategy.secagg.quantization-bits": 7}, "quantization-bits must be in [8, 30]"),
])
def test_config_values_past_each_bound_are_refused_before_anything_starts(overrides, fragment):
    with pytest.raises(ConfigError) as exc:
        from_flat({"strategy.secagg.mode": "secagg+", "wire.codec": "fp32", **overrides})
    assert fragment in str(exc.value)


def test_the_values_at_each_bound_are_accepted():
    for extra in ({"strategy.secagg.threshold": 1.0}, {"strategy.secagg.quantization-bits": 30, "num-supernodes": 3},
                  {"strategy.secagg.quantization-bits": 8}, {"strategy.dp.mode": "client-fixed"},
                  {"strategy.name": "fedadam"}):
        from_flat({"strategy.secagg.mode": "secagg+", "wire.codec": "fp32", **extra})


def test_the_node_limit_of_the_modulus_holds_at_its_boundary():
    """At 30 bits each weight entry is 2^30: 4 nodes would wrap the weights' sum to 0 (mod 2^32), 3 do not."""
    glob = glob_arrays()
    fed = Federation(nodes=[1, 2, 3, 4])
    c = StrategyConfig(secagg_mode="secagg+", secagg_quantization_bits=30, secagg_clipping_range=CLIP)
    out = secure_round(fed, train_messages(glob, [1, 2, 3, 4]), 1, c, 30.0)
    assert "would overflow" in out.halted and "at most 3" in out.halted and fed.received == [] and out.down == 0
    three = secure_round(Federation(nodes=[1, 2, 3]), train_messages(glob, [1, 2, 3]), 1, c, 30.0)
    got = from_array_record(three.replies[0].content["arrays"])
    assert three.halted is None and max_diff(got, fedavg(glob, [1, 2, 3])) <= tolerance(got)
    with pytest.raises(ConfigError, match="sums at most 3 nodes a round"):
        from_flat({"strategy.secagg.mode": "secagg+", "strategy.secagg.quantization-bits": 30, "num-supernodes": 4})
    from_flat({"strategy.secagg.mode": "secagg+", "strategy.secagg.quantization-bits": 30, "num-supernodes": 3})


def test_two_nodes_sending_the_same_public_key_are_both_left_out():
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

    shared = public_key_to_bytes(generate_key_pairs()[1])
    same = corrupt(Stage.SETUP, lambda cfg, r: cfg.__setitem__(Key.PUBLIC_KEY_1, shared))
    glob = glob_arrays()
    out = secure(Federation(misbehave={101: same, 102: same}), glob)
    assert out.halted is None and sorted(r.metadata.src_node_id for r in out.replies) == [103, 104, 105]
    assert sum("a public key another node also sent" in e for e in out.errors) == 2, out.errors


def test_a_node_claiming_another_weight_gets_the_sum_refused():
    """The first entry of a masked vector is the node's weight (2^bits for weight 1); one node doubling its own
    would rescale the mean, unseen inside the mask: the unmasked weights' sum gives it away."""
    def heavier(cfg, r):
        vecs = [bytes_to_ndarray(b) for b in cfg[Key.MASKED_PARAMETERS]]
        vecs[0] = (vecs[0] + 2**BITS) % 2**32
        cfg[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(v) for v in vecs]

    out = secure(Federation(misbehave={102: corrupt(Stage.COLLECT_MASKED_VECTORS, heavier)}), glob_arrays())
    assert out.replies == [] and "a node claimed another weight" in out.halted and out.revealed


def round_setup(fed, min_train, retries=1):
    from flowertune.federation.server_loop import NodeDirectory, Progress

    cfg = from_flat({"strategy.secagg.mode": "secagg+", "strategy.fraction-train": 1.0,
                     "strategy.min-train-nodes": min_train, "strategy.min-available-nodes": 1,
                     "strategy.round-retries": retries, "strategy.node-wait-timeout": 1.0,
                     "strategy.round-timeout": 30.0, "strategy.secagg.clipping-range": CLIP})
    strategy = make_strategy(cfg.strategy)
    directory = NodeDirectory(timeout=1.0)
    for i, n in enumerate(fed.contexts):  # checked in already
        directory.partition[n], directory.rows[n] = i, 100
    strategy.ctx.order = directory.order
    return cfg, strategy, directory, Progress(round=0, arrays=to_array_record(glob_arrays()), adapter_config={})


def masked_rounds(fed):
    return sum(1 for m in fed.received if m.has_content() and RECORD_KEY_CONFIGS in m.content.config_records
               and Key.MASKED_PARAMETERS in m.content.config_records[RECORD_KEY_CONFIGS])


def test_a_round_whose_sum_was_unmasked_is_not_resampled_one_that_halted_before_is():
    """The nodes train the same updates on a retry (seeded by round and partition): a second sum over other nodes
    would hand the server the difference. So a try whose sum was unmasked but is not usable stops the run; a try
    that halted before unmasking revealed nothing and is resampled."""
    from flowertune.federation.server_loop import RunStopped, train_round

    fed = Federation(misbehave={103: drop_at_masking})  # 4 of the 5 needed are summed
    cfg, strategy, directory, progress = round_setup(fed, min_train=5)
    with pytest.raises(RunStopped, match="a round whose sum was unmasked is not resampled"):
        train_round(strategy, fed, 1, progress, 0.1, cfg, directory)
    assert masked_rounds(fed) == 4  # one try
    fed = Federation(misbehave={n: drop_at_masking for n in (102, 103, 104, 105)})  # nothing can be unmasked
    cfg, strategy, directory, progress = round_setup(fed, min_train=2)
    with pytest.raises(RunStopped, match="in 2 tries"):
        train_round(strategy, fed, 1, progress, 0.1, cfg, directory)
    assert masked_rounds(fed) == 2  # node 101's masked vector, on each of the two tries
    fed = Federation()
    cfg, strategy, directory, progress = round_setup(fed, min_train=5)
    new, _, _, replies, errors = train_round(strategy, fed, 1, progress, 0.1, cfg, directory)
    got = from_array_record(new)
    assert len(replies) == 5 and errors == [] and max_diff(got, fedavg(glob_arrays(), NODES)) <= tolerance(got)
    assert strategy.traffic.up > len(NODES) * 8 * sum(int(np.prod(s)) for s in SHAPES.values())


def test_client_side_dp_composes_each_node_clips_the_sum_is_masked_the_server_noises_the_mean():
    """strategy.dp.mode=client-fixed under SecAgg+: Flower's fixedclipping_mod clips each node's update inside
    the mask, and Flower's client-side DP wrapper noises the unmasked mean (standard deviation z*C/m); the
    release is accounted."""
    from flowertune.federation.stack.base import find_layer
    from flowertune.federation.stack.privacy import PrivacyLedger

    z, clip = 0.5, 0.05
    cfg = StrategyConfig(fraction_train=1.0, min_train_nodes=2, secagg_mode="secagg+", secagg_clipping_range=CLIP,
                         secagg_quantization_bits=BITS, dp_mode="client-fixed", dp_noise_multiplier=z,
                         dp_clipping_norm=clip)
    stack = make_strategy(cfg)
    fed, glob = Federation(), glob_arrays()
    msgs = list(stack.configure_train(1, to_array_record(glob), ConfigRecord({"lr": 0.1, "run-key": "k"}), fed))
    out = secure_round(fed, msgs, 1, cfg, 30.0)
    new, _ = stack.aggregate_train(1, out.replies)
    assert stack.traffic.accepted == len(NODES) and find_layer(stack, PrivacyLedger).acc.num_releases == 1

    def clipped(n):
        u = update_of(n, 1)
        norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in u.values()))
        assert norm > clip  # every update is over the norm: the clipping acts
        return {k: v * (clip / norm) for k, v in u.items()}

    mean = {k: glob[k] + np.mean([clipped(n)[k] for n in NODES], axis=0) for k in glob}
    noise = np.concatenate([(from_array_record(new)[k].astype(np.float64) - mean[k]).ravel() for k in glob])
    want = z * clip / len(NODES)
    # 1152 entries: the sample standard deviation is within 10% of the true one with overwhelming probability
    assert abs(noise.std() / want - 1) < 0.1, (noise.std(), want)


def test_dry_run_says_what_secagg_will_tolerate_and_refuses_a_robust_aggregator_in_one_line(capsys):
    from flowertune.cli import main

    assert main(["run", "--dry-run", "--num-supernodes", "10", "strategy.secagg.mode=secagg+",
                 "strategy.fraction-train=0.5"]) == 0
    out = capsys.readouterr().out
    assert "with 5 nodes a round" in out and "5 shares, 2 rebuild one: up to 3 of a node's neighbours" in out
    assert main(["run", "--dry-run", "strategy.secagg.mode=secagg+", "strategy.name=krum"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "krum needs each update" in err[0]


def test_a_node_that_adds_to_its_masked_vector_gets_the_sum_refused_a_small_shift_is_not_seen():
    """A node may put any integers in its masked vector (the server cannot check them). A sum whose mean leaves
    the +-clipping-range every honest update was clipped to is refused with the reason; a shift that keeps
    the mean inside it is not seen (the limit of secure aggregation without per-update checks)."""
    def add(k):
        def bad(stage, reply):
            if stage == Stage.COLLECT_MASKED_VECTORS and not reply.has_error():
                cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
                vecs = [bytes_to_ndarray(b) for b in cfg[Key.MASKED_PARAMETERS]]
                vecs = [vecs[0], *[(v + k) % 2**32 for v in vecs[1:]]]
                cfg[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(v) for v in vecs]
            return reply
        return bad

    glob = glob_arrays()
    big = secure(Federation(misbehave={102: add(2**30)}), glob)
    assert big.replies == [] and "outside the +-0.1 every honest update was clipped to" in big.halted
    small = secure(Federation(misbehave={102: add(1000)}), glob)  # 1000 steps: 4.8e-5 on the sum
    assert small.halted is None
    got = from_array_record(small.replies[0].content["arrays"])
    shift = 1000 * STEP / len(NODES)
    assert abs(max_diff(got, fedavg(glob, NODES)) - shift) <= tolerance(got)


def test_nodes_running_dp_sgd_send_the_smaller_schema_and_stay_in_the_sum():
    """Under DP-SGD the nodes leave their loss out; the masked-vector check takes the gate's DP-SGD schema (and
    without it, the same replies would each be a malformed reply: a dropout)."""
    glob = glob_arrays()
    c = StrategyConfig(secagg_mode="secagg+", secagg_clipping_range=CLIP, secagg_quantization_bits=BITS)
    fed = Federation(dp_sgd=True)
    out = secure_round(fed, train_messages(glob, list(fed.contexts)), 1, c, 30.0, dp_sgd=True)
    assert out.halted is None and len(out.replies) == len(NODES) and out.errors == []
    assert max_diff(from_array_record(out.replies[0].content["arrays"]), fedavg(glob, NODES)) <= tolerance(glob)
    fed = Federation(dp_sgd=True)
    out = secure_round(fed, train_messages(glob, list(fed.contexts)), 1, c, 30.0)
    assert out.replies == [] and all("train_loss" in e for e in out.errors) and out.errors

"""Secure aggregation: one training round under SecAgg+, driven from the Message-API round loop.

Flower ships SecAgg+ as a legacy-API workflow (``SecAggPlusWorkflow``: four stages over a ``Grid``) and a client
mod (``secaggplus_mod``). This module runs that workflow's own stages, unchanged, for the messages the strategy
stack prepared: setup (each node makes two key pairs), share keys (each node splits its mask seed and its
secret key among its neighbours, encrypted to each), collect masked vectors (the nodes train, and each sends
its update quantized and masked: pairwise masks that cancel in the sum plus a private mask), unmask (the live
neighbours hand in the pieces that remove the private masks of the nodes that sent an update and the pairwise
masks of the ones that dropped out). The server learns the sum of the updates and nothing else of them.

What flowertune adds around Flower's stages:

- **Each reply is checked before Flower's code (or another node) reads it** (:func:`check_reply`): a node
  whose reply is malformed at any stage is treated as dropped out (Flower's workflow, or the honest nodes,
  would raise on it). A ciphertext or share that decrypts to garbage cannot be checked and can still make
  the round fail.
- **The sum is checked**: the weights must sum to (nodes summed) x 2^bits and every entry of the mean must be
  within the clipping range; otherwise the round's sum is refused.
- **Equal weights.** Every node's update enters the sum with weight 1: a claimed example count cannot be
  checked inside a masked sum, and one inflated claim would capture the average.
- **The update, not the adapter.** Nodes mask ``trained - global`` (small numbers: ``strategy.secagg.
  clipping-range`` bounds each entry), which the server adds to the exact global it sent.
- **Bytes.** Every record of every stage, both ways, is counted into the round's traffic.

What comes back is one reply per node whose update is in the sum, each carrying that same average (the
adapter ``global + mean update``) and the node's own metrics, so that the rest of the stack (gate, guard,
Flower's DP wrapper and aggregator: an average of identical arrays is that array) runs unchanged; the layers
that judge single updates (direction check, median norm bound) are off under SecAgg+ (``make_strategy``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import FitIns, Parameters, bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation import secaggplus_workflow as _workflow_module
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_public_key

from flowertune.config import StrategyConfig
from flowertune.federation.progress import send_and_receive
from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.stack.gate import clean_metrics, error_line, train_schema

log = logging.getLogger(__name__)

MOD_BITS = 32  # the masked sum is taken modulo 2^32 (Flower's limit)
KEY_STAGE_TIMEOUT_S = 300.0  # the stages without training (keys, shares) take seconds


def _value_bytes(v: Any) -> int:
    if isinstance(v, list):
        return sum(_value_bytes(x) for x in v)
    if isinstance(v, (bytes, str)):
        return len(v.encode() if isinstance(v, str) else v)
    return 8


def record_bytes(messages: Iterable[Message]) -> int:
    """Bytes of every record of ``messages``: arrays and metrics as Flower counts them, config records value by
    value (SecAgg+'s keys, shares and masked vectors travel there as lists of bytes, which Flower 1.42's
    ``ConfigRecord.count_bytes`` refuses)."""
    total = 0
    for m in messages:
        if m.has_content():
            total += sum(r.count_bytes() for r in [*m.content.array_records.values(), *m.content.metric_records.values()])
            total += sum(len(k) + _value_bytes(v) for r in m.content.config_records.values() for k, v in r.items())
    return total


@dataclass
class SecureRound:
    """What a round under SecAgg+ gave: the replies for the stack, the bytes, and what went wrong."""

    replies: list[Message] = field(default_factory=list)
    down: int = 0
    up: int = 0
    errors: list[str] = field(default_factory=list)
    halted: str | None = None
    revealed: bool = False  # the server unmasked a sum (it must not ask for another over other nodes)


class _Proxy:  # what Flower's workflow keeps per node (it only reads node_id)
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _Nodes:  # Flower's client manager, as far as the workflow asks
    def __init__(self, n: int) -> None:
        self.n = n

    def num_available(self) -> int:
        return self.n


class _Sum:
    """The legacy strategy the workflow drives: it hands over the sampled nodes and takes the unmasked average."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes
        self.average: list[np.ndarray] | None = None
        self.summed: list[int] = []

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[tuple[Any, Any]]:
        return [(_Proxy(n), FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), {})) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, Any]], failures: list[Any]) -> tuple[None, dict]:
        if results:  # Flower's workflow gives every result the same unmasked average
            self.average = parameters_to_ndarrays(results[0][1].parameters)
            self.summed = [proxy.node_id for proxy, _ in results]
        return None, {}


class _Context:  # the LegacyContext fields the stages read
    def __init__(self, server_round: int, strategy: _Sum) -> None:
        self.state = RecordDict({"config": ConfigRecord({"current_round": server_round}),
                                 "parameters": ArrayRecord()})
        self.strategy = strategy
        self.client_manager = _Nodes(len(strategy.nodes))


def _listing(cfg: Any, key: str, kind: type) -> list:
    value = cfg.get(key)
    if not isinstance(value, list) or any(type(v) is not kind for v in value):
        raise ValueError(f"{key} is not a list of {kind.__name__}")
    return value


def check_reply(stage: str, msg: Message, sent: Message, shapes: list[tuple[int, ...]], dp_sgd: bool = False) -> None:
    """Raise ``ValueError`` naming what is wrong with a node's (non-error) reply ``msg`` to ``sent`` at ``stage``:
    everything Flower's workflow and the other nodes' ``secaggplus_mod`` will read without checking."""
    content = msg.content
    if RECORD_KEY_CONFIGS not in content.config_records:
        raise ValueError(f"no {RECORD_KEY_CONFIGS} record")
    cfg, asked = content.config_records[RECORD_KEY_CONFIGS], sent.content.config_records[RECORD_KEY_CONFIGS]
    node = msg.metadata.src_node_id
    if stage == Stage.SETUP:
        keys = [cfg.get(k) for k in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2)]
        if not all(isinstance(k, bytes) and 0 < len(k) <= 4096 for k in keys) or keys[0] == keys[1]:
            raise ValueError("the two public keys are not two different keys")
        for k in keys:  # the neighbours will parse them: a key that does not parse would stop all of them
            bytes_to_public_key(k)
    elif stage == Stage.SHARE_KEYS:
        dsts, ctxts = _listing(cfg, Key.DESTINATION_LIST, int), _listing(cfg, Key.CIPHERTEXT_LIST, bytes)
        neighbours = {int(k) for k in asked if k != Key.STAGE} - {node}
        if len(dsts) != len(ctxts) or len(set(dsts)) != len(dsts) or not set(dsts) <= neighbours:
            raise ValueError("destinations are not the node's neighbours, one ciphertext each")
    elif stage == Stage.COLLECT_MASKED_VECTORS:
        vectors = _listing(cfg, Key.MASKED_PARAMETERS, bytes)
        if len(vectors) != len(shapes) + 1:
            raise ValueError(f"{len(vectors)} masked arrays, expected {len(shapes) + 1}")
        for raw, shape in zip(vectors, [(1,), *shapes], strict=True):
            a = bytes_to_ndarray(raw)
            if a.shape != shape or a.dtype != np.int64 or a.min() < 0 or a.max() >= 2**MOD_BITS:
                raise ValueError(f"a masked array is not {shape} int64 in [0, 2^{MOD_BITS})")
        compat.recorddict_to_fitres(content, keep_input=True)  # what the workflow reads next
        if sorted(content.metric_records.keys()) != ["fitres.num_examples", "metrics"]:
            raise ValueError(f"metric records {list(content.metric_records.keys())[:4]}")
        schema, required = train_schema(dp_sgd)
        clean_metrics(RecordDict({"metrics": content.metric_records["metrics"]}), schema, required, None)
    elif stage == Stage.UNMASK:
        nids, shares = _listing(cfg, Key.NODE_ID_LIST, int), _listing(cfg, Key.SHARE_LIST, bytes)
        wanted = [*asked.get(Key.ACTIVE_NODE_ID_LIST, []), *asked.get(Key.DEAD_NODE_ID_LIST, [])]
        if len(nids) != len(shares) or sorted(nids) != sorted(wanted):
            raise ValueError("the shares are not one for each node the server asked about")


def _duplicate_keys(replies: list[Message]) -> set[int]:
    """Nodes whose public key another node also sent (every honest neighbour would refuse the set)."""
    owners: dict[bytes, set[int]] = {}
    for m in replies:
        cfg = m.content.config_records[RECORD_KEY_CONFIGS]
        for k in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2):
            owners.setdefault(cast(bytes, cfg[k]), set()).add(m.metadata.src_node_id)
    return {n for nodes in owners.values() if len(nodes) > 1 for n in nodes}


class _CheckedGrid:
    """The grid as Flower's workflow sees it: counts every byte, leaves out (and records) malformed replies (a
    dropout, as far as the protocol is concerned), waits ``timeout`` for the training stage and at most
    :data:`KEY_STAGE_TIMEOUT_S` for the others, and keeps the nodes' replies of the masked-vector stage (the
    messages the stack gets back)."""

    def __init__(self, grid: Grid, out: SecureRound, shapes: list[tuple[int, ...]], timeout: float,
                 dp_sgd: bool = False) -> None:
        self.grid, self.out, self.shapes, self.timeout, self.dp_sgd = grid, out, shapes, timeout, dp_sgd
        self.collected: dict[int, Message] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        msgs = list(messages)
        if not msgs:
            return []
        stage = str(msgs[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        self.out.down += record_bytes(msgs)
        wait = self.timeout if stage == Stage.COLLECT_MASKED_VECTORS else min(self.timeout, KEY_STAGE_TIMEOUT_S)
        replies = send_and_receive(self.grid, msgs, wait)
        self.out.up += record_bytes(replies)
        sent = {m.metadata.message_id: m for m in msgs}
        kept = []
        for m in replies:
            node = m.metadata.src_node_id
            if m.has_error():
                self.out.errors.append(f"node {node}: {error_line(m)} (SecAgg+ {stage})")
                continue
            try:
                check_reply(stage, m, sent[m.metadata.reply_to_message_id], self.shapes, self.dp_sgd)
            except Exception as exc:  # noqa: BLE001  (a hostile reply counts as a dropout)
                reason = str(exc)[:200] if isinstance(exc, ValueError) else type(exc).__name__
                self.out.errors.append(f"node {node}: malformed SecAgg+ {stage} reply, left out ({reason})")
                continue
            kept.append(m)
        if stage == Stage.SETUP and (twice := _duplicate_keys(kept)):
            self.out.errors += [f"node {n}: malformed SecAgg+ setup reply, left out (a public key another node "
                                "also sent)" for n in sorted(twice)]
            kept = [m for m in kept if m.metadata.src_node_id not in twice]
        answered = {m.metadata.src_node_id for m in replies}
        lost = [m.metadata.dst_node_id for m in msgs if m.metadata.dst_node_id not in answered]
        if lost:
            self.out.errors.append(f"{len(lost)} node(s) sent no SecAgg+ {stage} reply within {wait:.0f} s")
        if stage == Stage.COLLECT_MASKED_VECTORS:
            self.collected = {m.metadata.src_node_id: m for m in kept}
        return kept


def forget_early_dropouts(state: WorkflowState) -> None:
    """Before masking: the nodes that dropped out during key exchange are no one's neighbours.

    Flower 1.42's workflow counts every node sampled at setup as "dead" at unmasking, and asks the others for
    pieces of its secret key; a node that dropped out before sharing its keys left no pieces (and masked
    nothing with anyone), so the others' unmask step raised ``KeyError`` and the round was lost. Only the nodes
    that shared their keys take part from here on; the ones among them that drop out later are unmasked as the
    protocol says."""
    keep = set(state.active_node_ids)
    state.sampled_node_ids = set(keep)
    state.nid_to_neighbours = {n: nb & keep for n, nb in state.nid_to_neighbours.items() if n in keep}


def workflow_for(c: StrategyConfig, timeout: float) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow for the config (equal weights: ``max_weight`` 1, every node sends weight 1)."""
    return SecAggPlusWorkflow(num_shares=float(c.secagg_num_shares), reconstruction_threshold=float(c.secagg_threshold),
                              max_weight=1.0, clipping_range=float(c.secagg_clipping_range),
                              quantization_range=2 ** c.secagg_quantization_bits, modulus_range=2 ** MOD_BITS,
                              timeout=timeout)


def max_nodes(bits: int) -> int:
    """The most nodes a round may sum at ``bits``: every node's weight entry is ``2^bits`` and the sum is taken
    modulo ``2^32``, so ``2^(32 - bits)`` nodes would wrap the weights' sum to 0."""
    return 2 ** (MOD_BITS - bits) - 1


@contextmanager
def _weights_seen(box: list[int]) -> Iterator[None]:
    """Record the unmasked sum of the nodes' weight entries as Flower's unmask stage splits it off (the workflow
    has no hook for it; its module's ``factor_extract`` is wrapped for the duration of one round)."""
    original = _workflow_module.factor_extract

    def spy(parameters: list[np.ndarray]) -> tuple[int, list[np.ndarray]]:
        factor, rest = original(parameters)
        box.append(int(factor))
        return factor, rest

    _workflow_module.factor_extract = spy
    try:
        yield
    finally:
        _workflow_module.factor_extract = original


def secure_round(grid: Grid, msgs: list[Message], server_round: int, c: StrategyConfig, timeout: float,
                 dp_sgd: bool = False) -> SecureRound:
    """Run Flower's SecAgg+ stages for the stack's train messages ``msgs`` (each carrying the fp32 global);
    ``dp_sgd``: the nodes run DP-SGD and send the gate's smaller metric schema."""
    out = SecureRound()
    if not msgs:
        out.halted = "no node sampled"
        return out
    nodes = [m.metadata.dst_node_id for m in msgs]
    if len(nodes) > max_nodes(c.secagg_quantization_bits):
        out.halted = (f"{len(nodes)} nodes would overflow the 2^{MOD_BITS} masked sum at strategy.secagg."
                      f"quantization-bits={c.secagg_quantization_bits} (at most "
                      f"{max_nodes(c.secagg_quantization_bits)}); lower it")
        return out
    glob = from_array_record(msgs[0].content["arrays"])
    keys = sorted(glob)
    shapes = [tuple(glob[k].shape) for k in keys]
    workflow, state, total = workflow_for(c, timeout), WorkflowState(), _Sum(nodes)
    context = _Context(server_round, total)
    checked = _CheckedGrid(grid, out, shapes, timeout, dp_sgd)
    weights: list[int] = []
    try:
        with _weights_seen(weights):
            done = workflow.setup_stage(checked, context, state)  # type: ignore[arg-type]
            # the masked-vector stage sends each node what the stack prepared for it (plus SecAgg+'s record)
            state.nid_to_fitins = {m.metadata.dst_node_id: m.content for m in msgs}
            if done:
                forget_early_dropouts(state)
            done = done and workflow.share_keys_stage(checked, context, state)  # type: ignore[arg-type]
            if done:
                forget_early_dropouts(state)
            for stage in (workflow.collect_masked_vectors_stage, workflow.unmask_stage):
                done = done and stage(checked, context, state)  # type: ignore[arg-type]
    except Exception as exc:  # (Flower's stages raise on what they do not expect)
        log.exception("round %d: SecAgg+ failed", server_round)
        out.halted = f"SecAgg+ failed ({type(exc).__name__}: {str(exc)[:200]})"
        out.revealed = bool(weights)
        return out
    if not done or total.average is None:
        out.halted = "SecAgg+ halted: too few nodes stayed to rebuild the masks (strategy.secagg.threshold)"
        return out
    out.revealed = True  # the server now holds this round's sum: the round is not resampled (server_loop)
    # every honest node's weight entry is 2^bits: another sum is a node claiming another weight (which would
    # rescale the mean)
    want = len(total.summed) * 2 ** c.secagg_quantization_bits
    if weights != [want]:
        out.halted = (f"SecAgg+ sum refused: the nodes' weights sum to {weights[0] if weights else '?'}, not the "
                      f"{want} of {len(total.summed)} nodes of weight 1 (a node claimed another weight)")
        return out
    # every honest entry was clipped to +-c before it was quantized, so every entry of their mean is within +-c
    # (plus a step of rounding): a sum outside that was not made of quantized updates (a node added what it
    # liked to its vector, or spoiled its shares). Refused; a node can still move the mean within +-c unseen.
    bound = float(c.secagg_clipping_range)
    worst = max((float(np.abs(a).max()) for a in total.average if a.size), default=0.0)
    if not np.isfinite(worst) or worst > bound * (1 + 2 / 2 ** c.secagg_quantization_bits):
        out.halted = (f"SecAgg+ sum refused: an entry of the unmasked average is {worst:.3g}, outside the "
                      f"+-{bound:g} every honest update was clipped to (a node sent values it could not have "
                      "quantized)")
        return out
    average = dict(zip(keys, total.average, strict=True))
    # one ArrayRecord shared by the replies: the layers below replace a reply's content, never edit its arrays
    adapter = to_array_record({k: (glob[k].astype(np.float64) + average[k]).astype(np.float32) for k in keys})
    for node in total.summed:
        reply = checked.collected[node]
        reply.content = RecordDict({"arrays": adapter, "metrics": cast(MetricRecord, reply.content["metrics"])})
        out.replies.append(reply)
    log.info("round %d: SecAgg+ summed %d of %d updates", server_round, len(out.replies), len(nodes))
    return out

"""LoRA-aware aggregation (``strategy.aggregation``): layers that combine the nodes' A and B factors as the
products they are, rather than as two unrelated arrays.

``freeze-a`` (:class:`FreezeA`, FFA-LoRA): every node keeps ``A`` at its seeded initialisation and trains ``B``
only (the client sets ``A.requires_grad = False``). With one ``A`` everywhere, ``mean(B_i) A = mean(B_i A)``:
whatever aggregator averages ``B`` averages the products exactly. The layer sits right under the gate: it
puts the global ``A`` into every reply (the server never takes an ``A`` from a node, so a node that changed
its own cannot move it; the change is noted) and back into the aggregate (where a DP wrapper's noise may have
touched it). The initial ``A`` is rounded to fp16 values by the node that builds it, so the lossy codecs'
fp16 first downlink carries it exactly; after that a delta codec never sends it again, either way (a
zero update is left out of a delta payload: ``wire/codecs.py``). With ``wire.codec=fp32`` (no deltas) ``A``
still travels every round.

``exact`` (:class:`ExactProducts`): the aggregate of each module is the best rank-``r`` approximation (``r``: the
global's rank, its ``A``'s rows) of the weighted mean of the nodes' products ``B_i A_i`` (``models/lora_algebra.py:exact_mean``; the weights are the
replies' ``num-examples``, as FedAvg's). Arrays that are not LoRA factors are averaged by the aggregator
below. It sits right above the sampling, under the robust layers (which judge each reply first); the config
refuses it with a server optimizer, a robust aggregator, client-level DP, SecAgg+ and DoRA.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from flowertune.federation.records import from_array_record, to_array_record
from flowertune.federation.stack.base import Layer, StackContext
from flowertune.models.lora_algebra import exact_mean, is_lora_a, lora_pairs, pad, truncate

log = logging.getLogger(__name__)


def _with_arrays(msg: Message, arrays: dict[str, np.ndarray]) -> None:
    msg.content = RecordDict({**msg.content.metric_records, **msg.content.config_records,
                              "arrays": to_array_record(arrays)})


class _GlobalA(Layer):
    """Remembers the global's ``A`` factors as the round's tasks go out; ``rank``: the global's LoRA rank."""

    def __init__(self, strategy: object, ctx: StackContext, rank: int) -> None:
        super().__init__(strategy, ctx)
        self.rank = rank
        self._a: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._a = {k: v for k, v in from_array_record(arrays).items() if is_lora_a(k)}
        return self.strategy.configure_train(server_round, arrays, config, grid)


class FreezeA(_GlobalA):
    """``A`` is the global's, in every reply and in the aggregate; the aggregator below averages ``B``."""

    name = "freeze-a"
    place = "updates"  # right under the gate (make_strategy)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:
            arrays = from_array_record(msg.content["arrays"])
            changed = [k for k, a in self._a.items() if not np.array_equal(arrays.get(k), a)]
            if changed:
                self.ctx.traffic.notes.append(f"node {msg.metadata.src_node_id}: {len(changed)} frozen lora_A "
                                              "array(s) changed; the global A kept")
                _with_arrays(msg, {**arrays, **self._a})
        result, metrics = self.strategy.aggregate_train(server_round, replies)
        if result is None:
            return result, metrics
        out = from_array_record(result)
        out.update({k: a for k, a in self._a.items() if k in out})
        return to_array_record(out), metrics


class ExactProducts(_GlobalA):
    """Each LoRA module's aggregate: the SVD re-projection onto rank ``r`` of the weighted mean of ``B_i A_i``."""

    name = "exact"
    place = "aggregator"  # right above the sampling (make_strategy)

    def describe(self) -> str:
        return f"exact(mean of B·A, SVD to r={self.rank})"

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        result, metrics = self.strategy.aggregate_train(server_round, replies)
        if result is None or not replies:
            return result, metrics
        decoded = [from_array_record(msg.content["arrays"]) for msg in replies]
        weights = [float(msg.content["metrics"]["num-examples"]) for msg in replies]
        out = from_array_record(result)
        for a_key, b_key in lora_pairs(out):  # each module back to the global's rank (its A's rows)
            out[b_key], out[a_key] = exact_mean([(d[b_key], d[a_key]) for d in decoded], weights,
                                                out[a_key].shape[0], previous_a=self._a.get(a_key))
        return to_array_record(out), metrics


class NodeRanks(Layer):
    """Heterogeneous ranks (``model.lora.node-ranks``, or a SuperNode's ``--node-config lora-rank=N``): each node
    gets the global truncated to the rank it declared at check-in (the first components: after an ``exact``
    round these are the largest singular directions), and its reply is padded back to the global's rank with
    the global's own remaining components (its update is zero where it did not train). Everything below sees
    global-rank arrays; the wire layer and the gate above see each node's own shapes. A pass-through while
    every node trains at the global's rank. Evaluation messages are truncated too: a lower-rank node's held-out
    loss is that of the global at its rank (what it would use), not of the whole global."""

    name = "ranks"
    place = "updates"

    def __init__(self, strategy: object, ctx: StackContext, rank: int, listed: bool = True) -> None:
        super().__init__(strategy, ctx)
        self.rank, self.listed = rank, listed
        self._top = rank
        self._global: dict[str, np.ndarray] = {}

    def describe(self) -> str:
        return f"ranks(<= {self.rank}: truncated down, padded up)" if self.listed else ""

    def _lower(self, node: int) -> int | None:
        r = self.ctx.rank_of(node)
        return r if r is not None and r < self._top else None

    def _truncate(self, msgs: Iterable[Message], arrays: ArrayRecord) -> tuple[list[Message], dict[str, np.ndarray]]:
        """The messages, a lower-rank node's holding the global truncated to its rank; and the global as arrays
        ({} when no node is at a lower rank: nothing was decoded)."""
        msgs = list(msgs)
        # the global's rank, read from its arrays (the config's model.lora.peft-lora-r, which the initial check holds)
        self._top = next((int(a.shape[0]) for k, a in arrays.items() if is_lora_a(k)), self.rank)
        if not any(self._lower(m.metadata.dst_node_id) for m in msgs):
            return msgs, {}
        glob = from_array_record(arrays)
        for m in msgs:
            r = self._lower(m.metadata.dst_node_id)
            if r is not None and m.has_content() and "arrays" in m.content.array_records:
                m.content = RecordDict({**m.content.config_records, **m.content.metric_records,
                                        "arrays": to_array_record(truncate(glob, r))})
        return msgs, glob

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        msgs, self._global = self._truncate(self.strategy.configure_train(server_round, arrays, config, grid), arrays)
        return msgs

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._truncate(self.strategy.configure_evaluate(server_round, arrays, config, grid), arrays)[0]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:
            if self._global and self._lower(msg.metadata.src_node_id):
                _with_arrays(msg, pad(from_array_record(msg.content["arrays"]), self._global))
        return self.strategy.aggregate_train(server_round, replies)

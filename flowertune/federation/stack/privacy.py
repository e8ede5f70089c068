"""Client-level differential privacy with a number: Flower's server-side fixed-clipping DP wrapper under a
ledger layer that accounts ε with Flower's RDP accountant (Google's ``dp-accounting`` underneath).

The mechanism (``strategy.dp.mode=server-fixed``): every decoded update ``reply - global`` is clipped to L2 norm
``C`` (``strategy.dp.clipping-norm``), the clipped updates are averaged with equal weights (FedAvg; the ledger
sets every reply's weight to 1, so no node's declared size moves the sensitivity), and Gaussian noise of
standard deviation ``z * C / n`` is added to the average, ``z`` the noise multiplier and ``n`` the number of
nodes sampled that round (the ledger tells the wrapper each round: the sample size depends on who is
connected). When only ``m < n`` updates come back the noise stays at ``z * C / n`` while one node now moves the
average by up to ``C / m``: that round is accounted at the smaller multiplier ``z * m / n``.

``strategy.dp.mode=server-adaptive``: the same, with the clipping norm moved after every round toward a quantile
of the update norms (:class:`AdaptiveClipping`, Andrew et al. 2021; the noisy count and the noisy mean are
accounted together as one release at the configured multiplier).

``strategy.dp.mode=client-fixed``: each node clips its own update (Flower's ``fixedclipping_mod`` in
flowertune's ClientApp, told the norm by Flower's ``DifferentialPrivacyClientSideFixedClipping`` in the
train config) and the server adds the same noise. The server does not take the clipping on trust: a decoded
update whose norm is over ``C`` is rejected with the reason (a node that skipped the mod).
``strategy.dp.mode=client-adaptive``: the same, with the norm the server sends moved as for server-adaptive. The
server counts the updates that came back shorter than the norm (a clipped update has the norm's length, up to
float rounding), so the count needs no extra message and reveals nothing the clipped update does not.

Accounting: neighbouring federations differ by one node's whole contribution, in the zero-out form of add or
remove one node (Kairouz et al. 2021): its update replaced by a zero update, every count unchanged, so one node
moves the mean of ``m`` clipped updates by at most ``C / m``. Each aggregate is one Gaussian release, composed over rounds (every aggregate counts, also one the global guard
then drops or a retried try), with **no amplification by sampling** -- valid whatever the sampling, and the
conservative choice: flowertune samples nodes with a seed from the config, which whoever knows the config can
replay, so the sampling is not secret. ``strategy.dp.target-epsilon``: before each round the ledger checks
whether one more release would take ε past the target at ``strategy.dp.delta``; if so the run stops there
(:class:`PrivacyBudgetReached`) and the last global within budget is the final adapter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from flowertune.federation.records import from_array_record, nudge_if_unchanged
from flowertune.federation.stack.base import Layer, StackContext, UpdateLayer
from flowertune.federation.stack.normbound import update_norm
from flowertune.train.accounting import record_epsilon

log = logging.getLogger(__name__)

MODES = ("off", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")
NEIGHBOURING = "one node's whole contribution added or removed, as a zero update (client-level, zero-out)"
SAMPLING = "no amplification by sampling (valid for any node sampling)"


class PrivacyBudgetReached(RuntimeError):
    """One more round would take ε past ``strategy.dp.target-epsilon``: the run ends with the last global."""


def accountant(delta: float) -> RdpAccountant:
    """Flower's RDP accountant for client-level DP without sampling amplification (population size is unused
    without amplification; Flower's event still carries one, so it is 1 here)."""
    return RdpAccountant(PrivacyConfig(target_delta=delta, population_size=1,
                                       neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                       sampling_method=SamplingMethod.NO_AMPLIFICATION))


def release(noise_multiplier: float) -> GaussianPrivacyEvent:
    return GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=1, population_size=1)


def planned_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε at ``delta`` after ``rounds`` full-participation releases (what ``--dry-run`` prints)."""
    acc = accountant(delta)
    acc.compose(release(noise_multiplier), rounds)
    return acc.get_epsilon(delta)


def rounds_within(noise_multiplier: float, delta: float, target: float, limit: int) -> int:
    """How many full-participation rounds fit in ``target`` (at most ``limit``)."""
    acc, n = accountant(delta), 0
    while n < limit and not acc.would_exceed(release(noise_multiplier), target):
        acc.compose(release(noise_multiplier))
        n += 1
    return n


class PrivacyLedger(UpdateLayer):
    """Above Flower's DP wrapper: tells it the round's sample size, makes the weights equal, checks that
    client-clipped updates are within the norm, accounts each release, and stops the run before the one that
    would exceed the target ε."""

    name = "dp"
    state_name = "dp-account"

    def __init__(self, strategy: Any, ctx: StackContext, mode: str, delta: float, target_epsilon: float = 0.0) -> None:
        super().__init__(strategy, ctx)
        self.mode, self.delta, self.target = mode, delta, target_epsilon
        self.acc = accountant(delta)
        self.secure = False  # under SecAgg+ every reply carries the round's unmasked mean (make_strategy)
        self.sampled = 0
        self.last: dict[str, Any] = {}

    @property
    def z(self) -> float:
        return float(self.strategy.noise_multiplier)

    @property
    def clip(self) -> float:
        return float(self.strategy.clipping_norm)

    def describe(self) -> str:
        target = f", target ε {self.target:g}" if self.target > 0 else ""
        return f"dp({self.mode}, z={self.z:g}, C={self.clip:g}, δ={self.delta:g}{target})"

    def epsilon(self) -> float:
        return self.acc.get_epsilon(self.delta) if self.acc.num_releases else 0.0

    def check_budget(self, server_round: int, z: float | None = None) -> None:
        """:class:`PrivacyBudgetReached` if one more release at multiplier ``z`` (default: everyone replies)
        would take ε past the target; called before a round's nodes are awaited, before its tasks go out, and
        before a round's noised aggregate is made (a short round or a retry spends more than planned)."""
        if self.target > 0 and self.acc.would_exceed(release(self.z if z is None else z), self.target):
            raise PrivacyBudgetReached(
                f"round {server_round} would take ε past strategy.dp.target-epsilon={self.target:g} "
                f"(ε={self.epsilon():.4g} at δ={self.delta:g} after {self.acc.num_releases} releases): the run "
                f"ends with the global of round {server_round - 1}")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.check_budget(server_round)
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        self.sampled = len(msgs)
        self.strategy.num_sampled_clients = max(1, self.sampled)  # the noise: z * C / (nodes sampled this round)
        return msgs

    def over_the_norm(self, msg: Message) -> float | None:
        """The update's norm if a client-clipped update is over the clipping norm (it skipped the clip)."""
        if not self.mode.startswith("client-"):
            return None
        norm = update_norm(from_array_record(msg.content["arrays"]), self._global)
        return norm if norm > self.clip * (1 + 1e-4) else None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic, kept = self.ctx.traffic, []
        for msg in (r for r in replies if not r.has_error()):
            node = msg.metadata.src_node_id
            if self.secure and (norm := self.over_the_norm(msg)) is not None:  # every reply carries the same mean
                traffic.rejected.append(f"the unmasked mean of the round's updates has norm {norm:.4g}, over "
                                        f"strategy.dp.clipping-norm {self.clip:g}: a node skipped its clipping "
                                        "(under SecAgg+ the server cannot tell which)")
                traffic.accepted, traffic.accepted_nodes, kept = 0, set(), []
                traffic.client_metrics.clear()
                log.warning("round %d: %s", server_round, traffic.rejected[-1])
                break
            if (norm := self.over_the_norm(msg)) is not None:
                traffic.rejected.append(f"node {node}: update norm {norm:.4g} is over strategy.dp.clipping-norm "
                                        f"{self.clip:g} (client-side clipping skipped)")
                traffic.accepted -= 1
                traffic.accepted_nodes.discard(node)
                traffic.client_metrics.pop(node, None)
                log.warning("round %d: rejected the update of node %s: %s", server_round, node, traffic.rejected[-1])
                continue
            metrics = dict(msg.content["metrics"])
            metrics["num-examples"] = 1  # equal weights: the sensitivity of the average is C / (updates averaged)
            msg.content = RecordDict({"arrays": nudge_if_unchanged(msg.content["arrays"], self._global),
                                      "metrics": MetricRecord(metrics)})
            kept.append(msg)
        z = self.z * min(1.0, len(kept) / max(1, self.sampled))
        clip = self.clip  # the norm of this round (the adaptive layer moves it for the next one)
        if kept:
            self.check_budget(server_round, z)  # nothing noised yet: the run ends with the last global
        result = self.strategy.aggregate_train(server_round, kept)
        if result[0] is not None and kept:
            self.acc.compose(release(z))
            self.last = {"dp_epsilon": self.epsilon(), "dp_epsilon_round": planned_epsilon(z, 1, self.delta),
                         "dp_delta": self.delta, "dp_noise_multiplier": z, "dp_releases": self.acc.num_releases,
                         "dp_clipping_norm": clip}
        return result

    def export_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"accountant": self.acc.state_dict()}, {}

    def import_state(self, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
        self.acc.load_state_dict(meta["accountant"])
        if self.acc.num_releases:  # what the summary reports if the run ends before its next release
            self.last = {"dp_epsilon": self.epsilon(), "dp_delta": self.delta, "dp_releases": self.acc.num_releases}


def update_noise_multiplier(z: float, count_noise: float) -> float:
    """The noise multiplier of the averaged updates that, together with noise ``count_noise`` on the count of
    unclipped updates, makes one Gaussian release at multiplier ``z`` (Andrew et al. 2021, Theorem 1:
    ``z_update = (z^-2 - (2 count_noise)^-2)^-1/2``; each node moves the centred count by at most 1/2)."""
    if not 2 * count_noise > z:
        raise ValueError(f"the count noise {count_noise:g} must be over z / 2 = {z / 2:g}")
    return (z ** -2 - (2 * count_noise) ** -2) ** -0.5


class AdaptiveClipping(UpdateLayer):
    """Adaptive clipping (Andrew et al. 2021, "Differentially private learning with adaptive clipping") over
    Flower's server-side fixed-clipping wrapper, whose clipping norm it moves after every round.

    Each round: ``b`` = the number of decoded updates whose norm is at most the current norm ``C`` (unclipped),
    the wrapper clips and noises the mean as usual (at the update multiplier ``z_update``), then
    ``C <- C * exp(-lr * ((b + N(0, count_noise^2)) / m - quantile))``: the norm rises while fewer than
    ``quantile`` of the updates pass unclipped and falls while more do. The two noisy releases together are one
    Gaussian release at the configured multiplier ``z`` (:func:`update_noise_multiplier`), which is what the
    ledger accounts. Flower 1.42's own adaptive wrappers count the *clipped* updates in this update and so move
    the norm the wrong way (README, Privacy); this layer is the reason flowertune does not use them.
    """

    name = "adaptive-clip"
    state_name = "dp-adaptive"

    CLIPPED = 1e-4
    """Under client-side clipping an update is counted as clipped when its norm is within this share of the
    norm: the node scaled it to the norm exactly, and fp32 (global + update) - global blurs that a little."""

    def __init__(self, wrapper: Any, ctx: StackContext, z: float, quantile: float, lr: float,
                 count_noise: float, client_side: bool = False) -> None:
        super().__init__(wrapper, ctx)
        self.z_total, self.quantile, self.lr, self.count_noise = z, quantile, lr, count_noise
        self.client_side = client_side
        wrapper.noise_multiplier = update_noise_multiplier(z, count_noise)
        self.last_unclipped: float | None = None  # the noised share of the last round (what moved the norm)

    # what the ledger reads and sets, as on Flower's wrappers
    @property
    def noise_multiplier(self) -> float:
        return self.z_total

    @property
    def clipping_norm(self) -> float:
        return float(self.strategy.clipping_norm)

    @property
    def num_sampled_clients(self) -> int:
        return int(self.strategy.num_sampled_clients)

    @num_sampled_clients.setter
    def num_sampled_clients(self, n: int) -> None:
        self.strategy.num_sampled_clients = n

    def describe(self) -> str:
        return (f"adaptive-clip(quantile {self.quantile:g}, lr {self.lr:g}, count noise {self.count_noise:g}, "
                f"update z {self.strategy.noise_multiplier:.4g})")

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        c = self.clipping_norm
        norms = [update_norm(from_array_record(m.content["arrays"]), self._global) for m in replies]
        # client-side the updates come back clipped: shorter than the norm = was not clipped
        unclipped = sum(n < c * (1 - self.CLIPPED) for n in norms) if self.client_side else sum(n <= c for n in norms)
        result = self.strategy.aggregate_train(server_round, replies)
        if result[0] is not None and replies:
            share = (unclipped + float(np.random.normal(0.0, self.count_noise))) / len(replies)
            self.strategy.clipping_norm = c * math.exp(-self.lr * (share - self.quantile))
            self.last_unclipped = share
            log.info("round %d: %d of %d updates within the clipping norm %.4g (noised share %.3f): next norm %.4g",
                     server_round, unclipped, len(replies), c, share, self.clipping_norm)
        return result

    def export_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"clipping_norm": self.clipping_norm}, {}

    def import_state(self, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
        self.strategy.clipping_norm = float(meta["clipping_norm"])


def dp_layers(inner: Any, ctx: StackContext, mode: str, noise_multiplier: float, clipping_norm: float,
              delta: float, target_epsilon: float, quantile: float = 0.5, clip_lr: float = 0.2,
              count_noise: float = 5.0) -> PrivacyLedger:
    """The ledger over Flower's server-side or client-side fixed-clipping wrapper over ``inner`` (for
    ``*-adaptive``: the adaptive layer between the ledger and Flower's fixed-clipping wrapper, which it moves)."""
    wrapper = (DifferentialPrivacyClientSideFixedClipping if mode.startswith("client-")
               else DifferentialPrivacyServerSideFixedClipping)
    dp: Any = wrapper(inner, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, num_sampled_clients=1)
    if mode.endswith("-adaptive"):
        dp = AdaptiveClipping(dp, ctx, noise_multiplier, quantile, clip_lr, count_noise,
                              client_side=mode.startswith("client-"))
    return PrivacyLedger(dp, ctx, mode, delta, target_epsilon)


class RecordLedger(Layer):
    """Record-level ε of the nodes' DP-SGD (``train.dp-sgd.*``, :mod:`flowertune.train.accounting`): counts the
    local rounds each partition is asked to train (every instruction sent, a retried one too: the node may
    have trained), reports the largest ε any node has reached, and stops the run before a round in which a
    node could pass ``train.dp-sgd.target-epsilon``."""

    name = "dp-sgd"
    state_name = "dp-sgd-account"

    def __init__(self, strategy: Any, ctx: StackContext, noise_multiplier: float, sample_rate: float,
                 steps: int, delta: float, target_epsilon: float = 0.0) -> None:
        super().__init__(strategy, ctx)
        self.z, self.q, self.steps, self.delta, self.target = noise_multiplier, sample_rate, steps, delta, target_epsilon
        self.rounds: dict[str, int] = {}  # partition (or node, if it has none) -> local rounds asked of it
        self.last: dict[str, Any] = {}

    def describe(self) -> str:
        target = f", target ε {self.target:g}" if self.target > 0 else ""
        return (f"dp-sgd(z={self.z:g}, q={self.q:g}, {self.steps} steps a round, δ={self.delta:g}{target}; "
                "accounting only: the nodes clip and noise)")

    def epsilon(self, local_rounds: int) -> float:
        return record_epsilon(self.z, self.q, local_rounds * self.steps, self.delta)

    def check_budget(self, server_round: int, keys: Iterable[str] | None = None) -> None:
        """:class:`PrivacyBudgetReached` if one more local round of a node (of ``keys``; default: whichever
        has trained most) would take its ε past the target."""
        if self.target <= 0:
            return
        most = max((self.rounds.get(k, 0) for k in keys) if keys is not None else self.rounds.values(), default=0)
        if self.epsilon(most + 1) > self.target:
            raise PrivacyBudgetReached(
                f"round {server_round} would take a node's record-level ε past train.dp-sgd.target-epsilon="
                f"{self.target:g} (ε={self.epsilon(most):.4g} at δ={self.delta:g} after {most} local rounds of "
                f"{self.steps} DP-SGD steps): the run ends with the global of round {server_round - 1}")

    def key_of(self, node: int) -> str:
        partition = self.ctx.partition_of(node)
        return f"partition-{partition}" if partition is not None else f"node-{node}"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        keys = [self.key_of(m.metadata.dst_node_id) for m in msgs]
        self.check_budget(server_round, keys)  # nothing sent yet
        for k in keys:
            self.rounds[k] = self.rounds.get(k, 0) + 1
        self.record()
        self.ctx.save_spent({"dp-sgd-rounds": dict(self.rounds)})  # durable before the tasks go out
        return msgs

    def merge(self, spent: dict[str, Any]) -> None:
        """Take the larger count of each partition from ``spent`` (the run directory's record of tasks sent,
        which includes a round that never completed; the state file holds the last completed round's)."""
        for k, v in spent.get("dp-sgd-rounds", {}).items():
            self.rounds[str(k)] = max(self.rounds.get(str(k), 0), int(v))
        self.record()

    def record(self) -> None:
        most = max(self.rounds.values(), default=0)
        self.last = {"dp_record_epsilon": self.epsilon(most), "dp_record_delta": self.delta,
                     "dp_record_epsilon_round": self.epsilon(1), "dp_record_local_rounds": most}

    def export_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"rounds": dict(self.rounds)}, {}

    def import_state(self, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
        self.rounds = {str(k): int(v) for k, v in meta["rounds"].items()}
        self.record()

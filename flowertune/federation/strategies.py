"""The server's strategy stack, built from the config: flowertune's layers over Flower's own aggregator.

From the outside in (each layer holds the next as ``self.strategy``, Flower's wrapper convention)::

    Meter -> GlobalGuard -> WireCodec -> ReplyGate -> NodeRanks -> [FreezeA] -> [DirectionCheck] -> [NormBound]
          -> [slot: Flower's DP wrappers ...] -> [ExactProducts] -> SeededSampling -> FedAvg (Flower's)

The aggregators are Flower's classes, not subclassed (``FedAvg``, ``FedProx``, ``FedAvgM``, ``FedAdam``,
``FedYogi``; robust: ``FedMedian``, ``FedTrimmedAvg``, ``Krum``, ``MultiKrum``, ``Bulyan``), each one catalog entry (``flowertune/catalog.py``) pointing at a factory below. What they
carry between rounds (FedAdam's moments, FedAvgM's momentum...) is exported for a resume by
:func:`export_aggregator`: every attribute holding arrays, whatever the strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from flowertune.catalog import AGGREGATIONS, STRATEGIES
from flowertune.config import StrategyConfig, TrainConfig
from flowertune.federation.stack.base import (
    Layer,
    StackContext,
    export_aggregator,
    import_aggregator,
    layers,
)
from flowertune.federation.stack.codec import WireCodec
from flowertune.federation.stack.direction import DirectionCheck
from flowertune.federation.stack.gate import ReplyGate
from flowertune.federation.stack.guard import GlobalGuard
from flowertune.federation.stack.lora import NodeRanks
from flowertune.federation.stack.meter import Meter
from flowertune.federation.stack.normbound import NormBound
from flowertune.federation.stack.sampling import SeededSampling
from flowertune.federation.state import split_prefixed
from flowertune.wire import get_codec


def _common(cfg: StrategyConfig) -> dict[str, Any]:
    # strategy.min-available-nodes is waited for by the server loop, with a deadline and before training
    # only: Flower's strategies would wait for it without end, before the evaluation too
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }


# the aggregators by name (catalog entries: flowertune/catalog.py)
def fedavg(c: StrategyConfig) -> Strategy:
    return FedAvg(**_common(c))


def fedprox(c: StrategyConfig) -> Strategy:
    return FedProx(**_common(c), proximal_mu=c.proximal_mu)


def fedavgm(c: StrategyConfig) -> Strategy:
    return FedAvgM(**_common(c), server_learning_rate=c.server_learning_rate, server_momentum=c.server_momentum)


def fedadam(c: StrategyConfig) -> Strategy:
    return FedAdam(**_common(c), eta=c.eta, eta_l=c.eta_l, beta_1=c.beta_1, beta_2=c.beta_2, tau=c.tau)


def fedyogi(c: StrategyConfig) -> Strategy:
    return FedYogi(**_common(c), eta=c.eta, eta_l=c.eta_l, beta_1=c.beta_1, beta_2=c.beta_2, tau=c.tau)


# robust aggregators (Flower's): they tolerate strategy.num-malicious-nodes attackers per round
def fedmedian(c: StrategyConfig) -> Strategy:
    return FedMedian(**_common(c))


def fedtrimmedavg(c: StrategyConfig) -> Strategy:
    return FedTrimmedAvg(**_common(c), beta=c.trimmed_beta)


def krum(c: StrategyConfig) -> Strategy:
    return Krum(**_common(c), num_malicious_nodes=c.num_malicious_nodes)


def multikrum(c: StrategyConfig) -> Strategy:
    return MultiKrum(**_common(c), num_malicious_nodes=c.num_malicious_nodes, num_nodes_to_select=c.multikrum_select)


def bulyan(c: StrategyConfig) -> Strategy:
    return Bulyan(**_common(c), num_malicious_nodes=c.num_malicious_nodes)


Wrap = Callable[[Strategy], Strategy]


def make_strategy(cfg: StrategyConfig, codec: str = "fp32", slot: Sequence[Wrap] = (), train: TrainConfig | None = None,
                  rank: int = 8, heterogeneous: bool = False, **codec_options: Any) -> Meter:
    """The configured stack, seeded, speaking wire codec ``codec``; ``slot``: wrappers (outermost first) put
    between the gate and the sampling, where Flower's DP wrappers and robust layers go; ``train``: the nodes'
    training config, for the record-level ledger of DP-SGD; ``rank``: the global adapter's LoRA rank (the budget
    of ``strategy.aggregation=exact`` and of the nodes' ranks); ``heterogeneous``: ``model.lora.node-ranks`` is
    set (the ranks layer is listed in :func:`describe`; it is in the stack either way, for nodes that declare a
    rank in their node config)."""
    ctx = StackContext(seed=cfg.seed)
    inner: Strategy = SeededSampling(STRATEGIES.get(cfg.name)(cfg), ctx)
    lora = AGGREGATIONS.get(cfg.aggregation)  # a layer class of stack/lora.py, or None (separate)
    if lora is not None and lora.place == "aggregator":
        inner = lora(inner, ctx, rank)
    for wrap in reversed(slot):
        inner = wrap(inner)
    dp = cfg.dp_mode != "off"
    if dp:  # Flower's DP wrapper under the ledger that accounts ε (stack/privacy.py)
        from flowertune.federation.stack.privacy import dp_layers

        inner = dp_layers(inner, ctx, cfg.dp_mode, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, cfg.dp_delta,
                          cfg.dp_target_epsilon, cfg.dp_target_quantile, cfg.dp_clip_learning_rate, cfg.dp_count_noise)
        inner.secure = cfg.secagg_mode != "off"
    # under DP the median bound and the direction check are off: they depend on the other nodes' updates (the
    # clipping norm bounds each); under SecAgg+ the server sees no single update to judge
    judge = not dp and cfg.secagg_mode == "off"
    median = cfg.norm_bound_median if judge else 0.0
    if cfg.norm_bound > 0 or median > 0:
        inner = NormBound(inner, ctx, cfg.norm_bound, cfg.norm_bound_adaptive, cfg.norm_bound_quantile,
                          median=median)
    if judge and cfg.min_cosine_to_median > -1:  # (data-dependent too: off under DP)
        inner = DirectionCheck(inner, ctx, cfg.min_cosine_to_median)
    dp_sgd = train is not None and train.dp_sgd_noise_multiplier > 0
    if dp_sgd:  # the nodes run DP-SGD; this layer accounts it (stack/privacy.py)
        from flowertune.federation.stack.privacy import RecordLedger

        inner = RecordLedger(inner, ctx, train.dp_sgd_noise_multiplier, train.dp_sgd_sample_rate, train.max_steps,
                             train.dp_sgd_delta, train.dp_sgd_target_epsilon)
    if lora is not None and lora.place == "updates":
        inner = lora(inner, ctx, rank)
    # nodes at lower LoRA ranks (declared at check-in): a pass-through while there are none
    inner = NodeRanks(inner, ctx, rank, listed=heterogeneous)
    inner = ReplyGate(inner, ctx, cfg.max_examples_per_node, dp_sgd=dp_sgd)
    inner = WireCodec(inner, ctx, get_codec(codec, **codec_options))
    # under DP the guard checks finiteness only: each update is clipped, and the noise (z*C/n per entry, by
    # design) can be many times the adapter's own norm, which a growth bound would take for an attack
    return Meter(GlobalGuard(inner, ctx, 0.0 if dp else cfg.max_global_growth), ctx)


# -- the stack as a whole ----------------------------------------------------------------------------------
AGGREGATOR_STATE = "strategy"  # the aggregator's resume state name (as run directories have always stored it)


def describe(top: Strategy) -> str:
    """``meter -> wire(delta-int8) -> gate -> sampling(seed 7) -> FedAvg``: what ``flowertune run`` logs."""
    names = (s.describe() if isinstance(s, Layer) else type(s).__name__ for s in layers(top))
    return " -> ".join(n for n in names if n)


def export_state(top: Strategy) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every layer's resume state under its own name: ``{name: header}`` and ``{name/array: array}``."""
    meta: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for s in layers(top):
        if isinstance(s, Layer):
            if s.state_name is None:
                continue
            name, (m, a) = s.state_name, s.export_state()
        elif not hasattr(s, "strategy"):
            name, (m, a) = AGGREGATOR_STATE, export_aggregator(s)
        else:
            continue
        meta[name] = m
        arrays.update({f"{name}/{k}": v for k, v in a.items()})
    return meta, arrays


def import_state(top: Strategy, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Inverse of :func:`export_state`; a layer whose name the saved state lacks starts fresh."""
    for s in layers(top):
        if isinstance(s, Layer) and s.state_name in meta:
            s.import_state(meta[s.state_name], split_prefixed(arrays, s.state_name))
        elif not isinstance(s, Layer) and not hasattr(s, "strategy") and AGGREGATOR_STATE in meta:
            import_aggregator(s, meta[AGGREGATOR_STATE], split_prefixed(arrays, AGGREGATOR_STATE))

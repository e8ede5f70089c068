"""The server's strategy stack, built from the config: flowertune's layers over Flower's own aggregator.

From the outside in (each layer holds the next as ``self.strategy``, Flower's wrapper convention)::

    Meter -> WireCodec -> ReplyGate -> [slot: Flower's DP wrappers ...] -> SeededSampling -> FedAvg (Flower's)

The aggregators are Flower's classes, not subclassed (``FedAvg``, ``FedProx``, ``FedAvgM``, ``FedAdam``,
``FedYogi``), each one catalog entry (``flowertune/catalog.py``) pointing at a factory below. What they
carry between rounds (FedAdam's moments, FedAvgM's momentum...) is exported for a resume by
:func:`export_aggregator`: every attribute holding arrays, whatever the strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from flowertune.catalog import STRATEGIES
from flowertune.config import StrategyConfig
from flowertune.federation.records import to_array_record
from flowertune.federation.stack.base import Layer, StackContext
from flowertune.federation.stack.codec import WireCodec
from flowertune.federation.stack.gate import ReplyGate
from flowertune.federation.stack.meter import Meter
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


Wrap = Callable[[Strategy], Strategy]


def make_strategy(cfg: StrategyConfig, codec: str = "fp32", slot: Sequence[Wrap] = (), **codec_options: Any) -> Meter:
    """The configured stack, seeded, speaking wire codec ``codec``; ``slot``: wrappers (outermost first) put
    between the gate and the sampling, where Flower's DP wrappers and robust layers go."""
    ctx = StackContext(seed=cfg.seed)
    inner: Strategy = SeededSampling(STRATEGIES.get(cfg.name)(cfg), ctx)
    for wrap in reversed(slot):
        inner = wrap(inner)
    return Meter(WireCodec(ReplyGate(inner, ctx), ctx, get_codec(codec, **codec_options)), ctx)


# -- resume state of Flower's aggregator -------------------------------------------------------------------
def export_aggregator(strategy: Strategy) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What a Flower strategy carries between rounds: every attribute holding arrays (an ``ArrayRecord``, a
    dict of arrays or a list of arrays); the rest is rebuilt from the config."""
    kinds: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, value in vars(strategy).items():
        if isinstance(value, ArrayRecord):
            value, kind = {k: v.numpy() for k, v in value.items()}, "arrayrecord"
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            kind = "dict"
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            value, kind = {str(i): v for i, v in enumerate(value)}, "list"
        else:
            continue
        kinds[name] = {"kind": kind, "keys": list(value)}  # key order kept: safetensors sorts names
        arrays.update({f"{name}/{k}": v for k, v in value.items()})
    return kinds, arrays


def import_aggregator(strategy: Strategy, kinds: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Inverse of :func:`export_aggregator`."""
    for name, spec in kinds.items():
        part = split_prefixed(arrays, name)
        ordered = {k: part[k] for k in spec["keys"]}
        if spec["kind"] == "arrayrecord":
            setattr(strategy, name, to_array_record(ordered))
        elif spec["kind"] == "dict":
            setattr(strategy, name, ordered)
        else:
            setattr(strategy, name, list(ordered.values()))


# -- the stack as a whole ----------------------------------------------------------------------------------
AGGREGATOR_STATE = "strategy"  # the aggregator's resume state name (as run directories have always stored it)


def layers(top: Strategy) -> list[Strategy]:
    """The stack from ``top`` down to Flower's aggregator (every wrapper holds the next as ``.strategy``)."""
    out = [top]
    while hasattr(out[-1], "strategy"):
        out.append(out[-1].strategy)
    return out


def describe(top: Strategy) -> str:
    """``meter -> wire(delta-int8) -> gate -> sampling(seed 7) -> FedAvg``: what ``flowertune run`` logs."""
    return " -> ".join(s.describe() if isinstance(s, Layer) else type(s).__name__ for s in layers(top))


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


def aggregator(top: Strategy) -> Strategy:
    """Flower's aggregator at the bottom of the stack."""
    return layers(top)[-1]

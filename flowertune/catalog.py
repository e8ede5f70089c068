"""Every pluggable name the config can choose, registered lazily as ``"module:attr"``.

Validating a config (``flowertune run --dry-run``, a recipe, the ServerApp's first step) checks names
against these registries without importing what implements them (Flower, torch, datasets): an unknown
name is an error listing the valid ones. The first :meth:`~flowertune.registry.Registry.get` of a name
imports its module. Adding a strategy, LoRA aggregation, partitioner, data format, prompt frame, wire codec or metric sink
is its implementation in its own module plus one line here; ``tests/unit/test_catalog.py`` resolves every
entry.

(Presets live in ``presets.py``, which imports nothing heavy; benchmarks and training-set builders are
registered by their own modules: the config never names them.)
"""

from __future__ import annotations

from typing import Any

from flowertune.registry import Registry

STRATEGIES: Registry[Any] = Registry("strategy")  # StrategyConfig -> a Flower strategy
for _name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum", "multikrum",
              "bulyan"):
    STRATEGIES.add_lazy(_name, f"flowertune.federation.strategies:{_name}")

# strategy.aggregation: how LoRA factors are combined (a layer class of federation/stack/lora.py, or None for
# "separate": the aggregator averages A and B each)
AGGREGATIONS: Registry[Any] = Registry("aggregation")
AGGREGATIONS.add("separate", None)
AGGREGATIONS.add_lazy("freeze-a", "flowertune.federation.stack.lora:FreezeA")
AGGREGATIONS.add_lazy("exact", "flowertune.federation.stack.lora:ExactProducts")

PARTITIONERS: Registry[Any] = Registry("partitioner")  # (num_partitions, DataConfig) -> flwr-datasets Partitioner
PARTITIONERS.add_lazy("iid", "flowertune.data.partition:iid")
PARTITIONERS.add_lazy("dirichlet", "flowertune.data.partition:dirichlet")

FORMATS: Registry[Any] = Registry("data format")  # (row, DataConfig) -> Record
FORMATS.add_lazy("medical", "flowertune.data.formats:medical")
FORMATS.add_lazy("finance", "flowertune.data.formats:finance")
FORMATS.add_lazy("code", "flowertune.data.formats:code")
FORMATS.add_lazy("general-nlp", "flowertune.data.formats:general_nlp")
FORMATS.add_lazy("generic", "flowertune.data.formats:generic")

FRAMES: Registry[Any] = Registry("prompt frame")  # data.frames.Frame
for _name in ("auto", "chat", "alpaca", "finance", "qa", "code"):
    FRAMES.add_lazy(_name, f"flowertune.data.frames:{_name.upper()}")

CODECS: Registry[Any] = Registry("wire codec")  # name -> codec class; options go to its __init__
for _name, _cls in (("fp32", "FP32"), ("fp16", "FP16"), ("delta-fp16", "DeltaFP16"), ("delta-int8", "DeltaInt8"),
                    ("delta-int4", "DeltaInt4"), ("delta-int3", "DeltaInt3"), ("delta-int2", "DeltaInt2"),
                    ("delta-topk-int8", "DeltaTopKInt8")):
    CODECS.add_lazy(_name, f"flowertune.wire.codecs:{_cls}")

SINKS: Registry[Any] = Registry("metric sink")  # (sink class, the module it imports, how to install it)
for _name in ("tensorboard", "mlflow", "wandb"):
    SINKS.add_lazy(_name, f"flowertune.federation.sinks:{_name.upper()}")
del _name, _cls  # loop names, not part of the catalog

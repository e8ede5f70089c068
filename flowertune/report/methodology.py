"""The methodology of a run in the seeds' style, generated from its resolved ``config.json``.

Each line is derived from one or more flat config keys, so the report says what the run did, not what a
template intended (tests compare these lines with the resolved config).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_STRATEGIES = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedadam": "FedAdam", "fedyogi": "FedYogi",
               "fedavgm": "FedAvgM"}
_DTYPES = {"auto": "auto (bf16 where the hardware supports it, else fp32)", "bfloat16": "bf16",
           "float16": "fp16", "float32": "fp32"}
_QUANT = {0: "none (full-precision base)", 4: "4-bit NF4 with double quantization (bitsandbytes)",
          8: "8-bit (bitsandbytes LLM.int8)"}


def model_title(name: str) -> str:
    """The base model as a reader knows it."""
    return "SmolLM2-135M-Instruct (embedded)" if name == "embedded" else name


def strategy_line(c: Mapping[str, Any]) -> str:
    """The aggregation strategy with the parameters it uses."""
    name = str(c["strategy.name"])
    title = _STRATEGIES.get(name, name)
    if name == "fedprox" or float(c["strategy.proximal-mu"]) > 0:
        return f"`{title}` (proximal mu `{c['strategy.proximal-mu']}`)"
    if name in ("fedadam", "fedyogi"):
        return (f"`{title}` (server lr eta `{c['strategy.eta']}`, beta1 `{c['strategy.beta-1']}`, "
                f"beta2 `{c['strategy.beta-2']}`, tau `{c['strategy.tau']}`)")
    if name == "fedavgm":
        return (f"`{title}` (server lr `{c['strategy.server-learning-rate']}`, momentum "
                f"`{c['strategy.server-momentum']}`)")
    return f"`{title}`"


_AGGREGATIONS = {"freeze-a": "A frozen at its initialisation, only B trained and averaged (`freeze-a`)",
                 "exact": "the weighted mean of the nodes' products B·A, re-projected onto the rank by SVD (`exact`)"}


def aggregation_line(c: Mapping[str, Any]) -> str:
    """How the LoRA factors were combined ('' for FedAvg of A and B: the strategy line says it all)."""
    return _AGGREGATIONS.get(str(c.get("strategy.aggregation", "separate")), "")


def partition_line(c: Mapping[str, Any]) -> str:
    if c["data.partitioner"] == "dirichlet":
        return (f"non-IID: Dirichlet(alpha={c['data.dirichlet-alpha']}) over `{c['data.partition-by']}`")
    return "IID"


def setup_paragraph(c: Mapping[str, Any]) -> str:
    """The seeds' "Experimental Setup" paragraph."""
    return (f"The dataset `{c['static.dataset.name']}` is divided into {c['num-supernodes']} partitions "
            f"({partition_line(c)}), one per SuperNode. A fraction ({c['strategy.fraction-train']}) of the "
            f"connected nodes is sampled each round (at least {c['strategy.min-train-nodes']}), for a total of "
            f"`{c['num-server-rounds']}` rounds; {c['strategy.fraction-evaluate']} of them compute the held-out "
            f"loss every {c['train.eval-every-round']} round(s).")


def methodology(c: Mapping[str, Any]) -> list[str]:
    """Markdown bullet lines (with nesting) of the fine-tuning methodology of the flat config ``c``."""
    adapter = "DoRA" if c["model.lora.use-dora"] else "LoRA"
    targets = [t.strip() for t in str(c["model.lora.target-modules"]).split(",") if t.strip()]
    steps = (f"Local epochs per round: `{c['train.training-arguments.num-train-epochs']}`"
             if int(c["train.training-arguments.num-train-epochs"]) > 0
             else f"Maximum number of steps: `{c['train.training-arguments.max-steps']}`")
    lines = [
        f"- **Base model**: `{model_title(str(c['model.name']))}`",
        f"- **Precision**: `{_DTYPES.get(str(c['model.dtype']), c['model.dtype'])}` for model weights.",
        f"- **Quantization**: {_QUANT.get(int(c['model.quantization']), c['model.quantization'])}",
        (f"- **Optimizer**: `{c['train.training-arguments.optim']}` (weight decay "
        f"`{c['train.training-arguments.weight-decay']}`, gradient clipping "
        f"`{c['train.training-arguments.max-grad-norm']}`)"),
        f"- **{adapter} Configuration**:",
        f"  - Rank (r): `{c['model.lora.peft-lora-r']}`" + (
            f" (the global adapter's; nodes train at ranks `{c['model.lora.node-ranks']}` by partition, each "
            "getting the global truncated to its rank)" if str(c.get("model.lora.node-ranks", "")).strip() else ""),
        f"  - Alpha: `{c['model.lora.peft-lora-alpha']}`",
        f"  - Dropout: `{c['model.lora.peft-lora-dropout']}`",
        "  - Target Modules: " + (", ".join(f"`{t}`" for t in targets) if targets else "PEFT's default"),
        "- **Training Configuration**:",
        f"  - Batch size: `{c['train.training-arguments.per-device-train-batch-size']}`",
        f"  - {steps}",
        f"  - Accumulation steps: `{c['train.training-arguments.gradient-accumulation-steps']}`",
        f"  - Sequence length: `{c['train.seq-length']}`",
        f"  - Total number of rounds: `{c['num-server-rounds']}`",
        f"  - Fraction fit per round: `{c['strategy.fraction-train']}`",
        "- **Learning Rate Scheduler**:",
        "  - Cosine Annealing over rounds, where:",
        f"    - Maximum LR: `{c['train.learning-rate-max']}`",
        f"    - Minimum LR: `{c['train.learning-rate-min']}`",
        (f"  - {str(c['train.training-arguments.lr-scheduler-type']).capitalize()} learning rate scheduler over "
        f"steps (warmup `{c['train.training-arguments.warmup-steps']}` steps)"),
        f"- **Strategy**: {strategy_line(c)}" + (f"; LoRA factors: {aggregation_line(c)}" if aggregation_line(c) else ""),
        (f"- **Data**: `{c['static.dataset.name']}`, format `{c['data.format']}`, prompt frame "
        f"`{c['data.prompt-frame']}`, {partition_line(c)} over {c['num-supernodes']} SuperNodes"),
        f"- **Wire encoding**: `{c['wire.codec']}`",
    ]
    if c.get("run.recipe"):
        lines.insert(0, f"- **Recipe**: `{c['run.recipe']}` (preset `{c['preset']}`)")
    else:
        lines.insert(0, f"- **Preset**: `{c['preset']}`")
    return lines

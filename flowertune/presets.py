"""Presets: named sets of config overrides on top of the defaults (which are ``quickstart``).

A challenge is a preset plus registry entries (data format, eval suite), never a copied package. The
leaderboard presets mirror the FlowerTune templates: dataset id, number of SuperNodes, fraction of
clients per round, 4-bit base model, 200 rounds and the template's LoRA/optimizer settings, with a
modern instruct base model instead of Mistral-7B-v0.3.
"""

from __future__ import annotations

from typing import Any

from flowertune.registry import Registry

PRESETS: Registry[dict[str, Any]] = Registry("preset")

PRESETS.add("quickstart", {})  # the dataclass defaults: embedded model, shipped sample, 4 nodes

_LEADERBOARD: dict[str, Any] = {
    "model.quantization": 4,
    "model.dtype": "bfloat16",
    "model.gradient-checkpointing": True,
    "model.lora.peft-lora-r": 32,
    "model.lora.peft-lora-alpha": 64,
    "model.lora.peft-lora-dropout": 0.075,
    "model.lora.target-modules": "q_proj,v_proj",
    "num-server-rounds": 200,
    "train.seq-length": 512,
    "train.learning-rate-max": 5e-5,
    "train.learning-rate-min": 1e-6,
    "train.save-every-round": 5,
    "train.eval-every-round": 10,
    "train.training-arguments.per-device-train-batch-size": 16,
    "train.training-arguments.max-steps": 10,
    "train.training-arguments.optim": "paged_adamw_8bit",
    "strategy.fraction-train": 0.1,
    "strategy.fraction-evaluate": 0.1,
}

PRESETS.add("medical", {
    **_LEADERBOARD,
    "model.name": "Qwen/Qwen2.5-7B-Instruct",
    "static.dataset.name": "flwrlabs/medical-meadow-medical-flashcards",
    "data.format": "medical",
    "num-supernodes": 20,
})
PRESETS.add("finance", {
    **_LEADERBOARD,
    "model.name": "Qwen/Qwen2.5-7B-Instruct",
    "static.dataset.name": "flwrlabs/fingpt-sentiment-train",
    "data.format": "finance",
    "data.prompt-frame": "finance",  # train in the frame FPB/FiQA/TFNS are scored in (README: measured)
    "num-supernodes": 50,
})
PRESETS.add("code", {
    **_LEADERBOARD,
    "model.name": "Qwen/Qwen2.5-Coder-7B-Instruct",
    "static.dataset.name": "flwrlabs/code-alpaca-20k",
    "data.format": "code",
    "num-supernodes": 10,
    "strategy.fraction-train": 0.2,
})
PRESETS.add("general-nlp", {
    **_LEADERBOARD,
    "model.name": "Qwen/Qwen2.5-7B-Instruct",
    "static.dataset.name": "flwrlabs/alpaca-gpt4",
    "data.format": "general-nlp",
    "num-supernodes": 20,
})


def preset_overrides(name: str) -> dict[str, Any]:
    """The overrides of preset ``name`` (error lists the valid presets)."""
    return dict(PRESETS.get(name))

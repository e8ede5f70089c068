"""The PEFT adapter: attach it, read/write its arrays, and save it as a standard PEFT directory.

Only these arrays go on the wire. Arrays are always fp32 numpy (bf16 cannot go into an ArrayRecord);
the wire codec decides what is actually sent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flowertune.config import AdapterConfig, ModelConfig
from flowertune.durable import check_space, swap_dir_in

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterUpdateError(ValueError):
    """An adapter update whose keys, shapes or values do not fit the model."""


def lora_config(cfg: AdapterConfig, model: ModelConfig) -> Any:
    """The PEFT ``LoraConfig`` for this run (DoRA is a flag, not a second code path)."""
    from peft import LoraConfig

    targets = [t.strip() for t in cfg.target_modules.split(",") if t.strip()] or None
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_dora=cfg.use_dora,
        task_type="CAUSAL_LM",
        base_model_name_or_path=model.name,
    )


def attach_adapter(base: Any, cfg: AdapterConfig, model: ModelConfig, seed: int = 0) -> Any:
    """Wrap ``base`` in a PEFT model with a freshly initialised adapter (seeded)."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(base, lora_config(cfg, model))
    return peft_model


def freeze_lora_a(model: Any, frozen: bool) -> None:
    """``strategy.aggregation=freeze-a``: the LoRA ``A`` factors take no gradient (set per round: the resident
    model outlives a config)."""
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_embedding_A." in name:
            p.requires_grad_(not frozen)


def get_arrays(model: Any) -> dict[str, np.ndarray]:
    """The adapter state as fp32 numpy arrays, keyed like PEFT's saved adapters."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().cpu().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def check_arrays(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise :class:`AdapterUpdateError` unless keys and shapes match and every value is finite."""
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise AdapterUpdateError(f"adapter keys differ: missing {missing[:3]} extra {extra[:3]}")
    for k, v in arrays.items():
        if tuple(v.shape) != tuple(expected[k]):
            raise AdapterUpdateError(f"adapter array {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k])}")
        if not np.isfinite(v).all():
            raise AdapterUpdateError(f"adapter array {k!r} contains NaN or inf")


def set_arrays(model: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """Load adapter arrays into ``model`` after checking keys, shapes and finiteness."""
    import torch
    from peft import set_peft_model_state_dict

    expected = {k: tuple(s) for k, s in get_arrays_shapes(model).items()}
    check_arrays(arrays, expected)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterUpdateError(f"PEFT did not accept keys {unexpected[:3]}")


def get_arrays_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of the adapter state (cheap: no copies)."""
    from peft import get_peft_model_state_dict

    return {k: v.shape for k, v in get_peft_model_state_dict(model).items()}


def adapter_config_dict(model: Any) -> dict[str, Any]:
    """The ``adapter_config.json`` content of a PEFT model (what ``save_pretrained`` writes)."""
    cfg = model.peft_config["default"]
    d = cfg.to_dict()
    return json.loads(json.dumps(d, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def save_adapter(arrays: Mapping[str, np.ndarray], config: Mapping[str, Any], directory: Path) -> Path:
    """Write a standard PEFT adapter directory atomically (no half-written checkpoint after a crash).

    Written from the arrays alone: the base model is not needed. The directory appears complete or
    not at all (files go to a temp dir, fsynced, swapped into place with no gap: ``durable.swap_dir_in``).
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    check_space(directory.parent, sum(int(np.asarray(v).size) * 4 for v in arrays.values()))
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
                  str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True))
        swap_dir_in(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory

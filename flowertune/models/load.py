"""Load a base model and its tokenizer from any ``model.name`` form, with dtype and quantization."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from flowertune.config import ConfigError, ModelConfig
from flowertune.models.source import ModelSourceError, local_path

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA with bf16 support and on CPUs with native bf16 matmul (AMX/AVX512-BF16)."""
    from flowertune.models.dtype import training_dtype

    return training_dtype(name, device)


def check_quantization(bits: int, device: torch.device | None = None) -> None:
    """Fail early, naming the machine, the setting and the fix, where a 4/8-bit base cannot run here.

    bitsandbytes runs NF4 (with double quantization) and int8 on CUDA and on x86 CPUs with AVX2 or better
    (its CPU backend since 0.47; 8-bit optimizers on CPU since 0.50).
    """
    if bits == 0:
        return
    if bits not in (4, 8):
        raise ConfigError(f"model.quantization must be 0, 4 or 8 (got {bits})")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ConfigError(f"model.quantization={bits} needs bitsandbytes; pip install 'bitsandbytes==0.50.2' "
                          "(a flowertune dependency: reinstall with scripts/setup.sh)") from exc
    from packaging.version import Version

    device = device or pick_device()
    if device.type == "cpu":
        if Version(bnb.__version__) < Version("0.47"):
            raise ConfigError(f"model.quantization={bits} on a CPU needs bitsandbytes >= 0.47 (installed: "
                              f"{bnb.__version__}); pip install 'bitsandbytes==0.50.2'")
        capability = torch.backends.cpu.get_cpu_capability()
        if capability not in ("AVX2", "AVX512"):
            import platform

            raise ConfigError(f"model.quantization={bits} needs a CUDA GPU or an x86 CPU with AVX2; this machine "
                              f"({platform.machine()}, CPU capability {capability}) has neither. "
                              "Set model.quantization=0 to train the full-precision base model here.")


def quantization_config(bits: int, compute_dtype: torch.dtype, device: torch.device | None = None) -> Any:
    """The QLoRA recipe for 4 bits (NF4, double quant, compute in the training dtype); int8 for 8 bits."""
    if bits == 0:
        return None
    check_quantization(bits, device)
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _offline_hint(name: str, exc: Exception) -> ModelSourceError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelSourceError(
        f"cannot load model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        + ("HF_HUB_OFFLINE=1 is set and it is not in the local cache. " if offline else
           "It is not a local path and the Hugging Face Hub is unreachable or the id is wrong. ")
        + "Use a local directory, a .gguf file, 'embedded', or download it first with "
        "`huggingface-cli download " + name + "` on a machine with network."
    )


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer of ``cfg.name`` with a pad token that is not confused with a label."""
    from transformers import AutoTokenizer

    path = local_path(cfg.name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision or None)
    except (OSError, ValueError) as exc:
        raise _offline_hint(cfg.name, exc) from exc
    if tok.pad_token_id is None:
        # pad positions are masked out of the loss by position, so reusing EOS is safe here
        tok.pad_token = tok.eos_token
    return tok


def loading_attn_implementation(name: str) -> str:
    """The attention the model is loaded with: ``auto`` and ``segments`` load with ``sdpa``.

    The segment attention is a training-time kernel (:mod:`flowertune.train.attention`); generation and
    left-padded inputs need the masked kernels, so the model starts with ``sdpa`` and
    :func:`flowertune.train.precision.prepare_for_training` switches it.
    """
    return "sdpa" if name in ("auto", "segments") else name


def load_model(cfg: ModelConfig, device: torch.device | None = None) -> Any:
    """The base causal LM on ``device`` in the configured dtype/quantization, in eval mode."""
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    dtype = pick_dtype(cfg.dtype, device)
    qcfg = quantization_config(cfg.quantization, dtype, device)
    path = local_path(cfg.name)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": loading_attn_implementation(cfg.attn_implementation),
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.revision or None,
    }
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and "attn_implementation" in str(exc):
            raise ConfigError(f"model.attn-implementation={cfg.attn_implementation!r} is not supported "
                              f"by {cfg.name!r}: {exc}. Use 'sdpa' or 'eager'.") from exc
        raise _offline_hint(cfg.name, exc) from exc
    if qcfg is None:
        model.to(device)
    model.eval()
    compute = str(dtype).removeprefix("torch.")
    weights = (f"{cfg.quantization}-bit {'NF4' if cfg.quantization == 4 else 'int8'} base, {compute} compute"
               if cfg.quantization else compute)
    log.info("loaded %s on %s (%s)", cfg.name, device, weights)
    return model

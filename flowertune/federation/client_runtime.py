"""What a client process keeps between rounds: the base model with its adapter, and its data.

The official templates reload (and re-quantize) the base model every round; here it is loaded once
per process and only the adapter weights change between rounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flowertune.catalog import FORMATS, FRAMES
from flowertune.config import AdapterConfig, Config, DataConfig, ModelConfig
from flowertune.data.example import IGNORE, Example
from flowertune.data.load import load_partition, split_validation
from flowertune.models.adapter import attach_adapter
from flowertune.models.load import load_model, load_tokenizer
from flowertune.train.precision import prepare_for_training

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """A resident PEFT model and its tokenizer."""

    model: Any
    tokenizer: Any
    pad_id: int


@dataclass(frozen=True)
class ClientData:
    """Tokenized train and held-out examples of one partition."""

    train: list[Example]
    validation: list[Example]


_RUNTIMES: dict[tuple[ModelConfig, AdapterConfig, int], Runtime] = {}
_DATA: dict[tuple[DataConfig, str, int, int, int], ClientData] = {}
MODEL_LOADS = 0  # how many times this process loaded a base model (reported in metrics)


def runtime(cfg: Config) -> Runtime:
    """The resident model for ``cfg`` (loaded on first use in this process)."""
    global MODEL_LOADS
    key = (cfg.model, cfg.adapter, cfg.train.seed)
    if key not in _RUNTIMES:
        (old_key, old), = _RUNTIMES.items() if _RUNTIMES else ((None, None),)
        _RUNTIMES.clear()  # one model per process: a new config replaces the old one
        if old is not None and old_key[0] == cfg.model:
            # the same base, another adapter (a node at another LoRA rank served by this process: Flower's
            # simulation actors take any node): PEFT takes its LoRA layers out again, the weights stay loaded
            tokenizer, base = old.tokenizer, old.model.unload()
        else:
            tokenizer = load_tokenizer(cfg.model)
            base = load_model(cfg.model)
            if cfg.model.gradient_checkpointing:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                base.config.use_cache = False
            if cfg.model.quantization:
                from peft import prepare_model_for_kbit_training

                base = prepare_model_for_kbit_training(base,
                                                       use_gradient_checkpointing=cfg.model.gradient_checkpointing)
            MODEL_LOADS += 1
        model = prepare_for_training(attach_adapter(base, cfg.adapter, cfg.model, seed=cfg.train.seed),
                                     cfg.model.dtype, cfg.model.attn_implementation)
        _RUNTIMES[key] = Runtime(model, tokenizer, tokenizer.pad_token_id)
    return _RUNTIMES[key]


def tokenize_rows(rows: Any, cfg: Config, rt: Runtime) -> list[Example]:
    """Format, frame and tokenize dataset rows.

    Rows with an empty response (nothing to learn but the stop token) and rows whose prompt fills the
    whole window are skipped, with a count in the log.
    """
    fmt = FORMATS.get(cfg.data.format)
    frame = FRAMES.get(cfg.data.prompt_frame)
    stop = frame.stop(rt.tokenizer)
    out, empty, too_long = [], 0, 0
    for row in rows:
        record = fmt(row, cfg.data)
        if not record.response.strip():
            empty += 1
            continue
        ex = frame.example(rt.tokenizer, record, cfg.train.seq_length, stop)
        if any(t != IGNORE for t in ex.labels[1:]):
            out.append(ex)
        else:
            too_long += 1
    if empty or too_long:
        log.warning("skipped %d of %d rows: %d with an empty response, %d whose prompt fills train.seq-length=%d",
                    empty + too_long, len(rows), empty, too_long, cfg.train.seq_length)
    return out


def client_data(cfg: Config, rt: Runtime, partition_id: int, num_partitions: int) -> ClientData:
    """Tokenized partition ``partition_id`` (cached per process)."""
    key = (cfg.data, cfg.model.name, cfg.train.seq_length, partition_id, num_partitions)
    if key not in _DATA:
        part = load_partition(cfg.data, partition_id, num_partitions)
        train_rows, val_rows = split_validation(part, cfg.data)
        _DATA[key] = ClientData(tokenize_rows(train_rows, cfg, rt), tokenize_rows(val_rows, cfg, rt))
        log.info("partition %d/%d: %d train, %d validation examples", partition_id, num_partitions,
                 len(_DATA[key].train), len(_DATA[key].validation))
    return _DATA[key]

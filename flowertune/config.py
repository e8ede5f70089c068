"""The one config source: typed frozen dataclasses built from Flower's flat ``run_config``.

Every key has a flat, hyphenated name (the form used in ``pyproject.toml``, ``--run-config`` and the
``flowertune`` CLI). Defaults are the ``quickstart`` preset; other presets are named sets of overrides
(``flowertune/presets.py``). Unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

Scalar = bool | int | float | str

IN_ROUND_SCHEDULES = ("constant", "cosine", "linear")
"""Valid ``train.training-arguments.lr-scheduler-type`` values (``train/schedule.py`` implements them)."""


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the key and the fix."""


def key(name: str, default: Scalar, help: str) -> Any:
    """A dataclass field that carries its flat config key and a one-line description."""
    return field(default=default, metadata={"key": name, "help": help})


@dataclass(frozen=True)
class ModelConfig:
    name: str = key("model.name", "embedded", "Hub id, local directory, .gguf file or 'embedded' (SmolLM2-135M-Instruct)")
    quantization: int = key("model.quantization", 0, "0 (none), 4 (QLoRA NF4, double quant) or 8 bits (bitsandbytes; CUDA or AVX2 CPU)")
    dtype: str = key("model.dtype", "auto", "auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA and AMX/AVX512-BF16 CPUs, else fp32)")
    gradient_checkpointing: bool = key("model.gradient-checkpointing", False, "trade compute for activation memory")
    attn_implementation: str = key("model.attn-implementation", "auto",
                                   "auto (training: per-example causal attention on packed rows; inference: sdpa) "
                                   "| sdpa | eager | flash_attention_2 | segments")
    trust_remote_code: bool = key("model.trust-remote-code", False,
                                  "run the model repository's own Python code (needs model.revision pinned)")
    revision: str = key("model.revision", "", "Hub commit (40 hex digits) or tag/branch to load; '' = main")


@dataclass(frozen=True)
class AdapterConfig:
    r: int = key("model.lora.peft-lora-r", 8, "LoRA rank")
    alpha: int = key("model.lora.peft-lora-alpha", 16, "LoRA alpha")
    dropout: float = key("model.lora.peft-lora-dropout", 0.05, "LoRA dropout")
    target_modules: str = key("model.lora.target-modules", "q_proj,v_proj", "comma-separated module names; '' = PEFT default")
    use_dora: bool = key("model.lora.use-dora", False, "DoRA (weight-decomposed LoRA)")
    node_ranks: str = key("model.lora.node-ranks", "",
                          "heterogeneous ranks: comma-separated LoRA ranks by partition id, repeated (e.g. '4,8,16'); "
                          "each <= model.lora.peft-lora-r, the rank of the global adapter; a SuperNode's "
                          "--node-config lora-rank=N overrides its own ('' = every node at peft-lora-r)")

    def ranks(self) -> list[int]:
        """``model.lora.node-ranks`` as integers (``[]`` when every node trains at ``r``)."""
        parts = [p.strip() for p in self.node_ranks.split(",") if p.strip()]
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"model.lora.node-ranks={self.node_ranks!r} must be comma-separated integers, e.g. "
                              "'4,8,16'") from None


@dataclass(frozen=True)
class DataConfig:
    name: str = key("static.dataset.name", "sample:medical", "Hub dataset id, local json/jsonl/csv/parquet path, or sample:<name>")
    format: str = key("data.format", "medical", "row mapping: medical | finance | code | general-nlp | generic")
    prompt_frame: str = key("data.prompt-frame", "auto",
                            "prompt frame: auto (chat template, else alpaca) | chat | alpaca | finance | qa | code "
                            "(the last three are the evaluation frames)")
    instruction_column: str = key("data.instruction-column", "instruction", "generic format: instruction column")
    input_column: str = key("data.input-column", "input", "generic format: optional input column ('' = none)")
    response_column: str = key("data.response-column", "output", "generic format: response column")
    partitioner: str = key("data.partitioner", "iid", "iid | dirichlet")
    partition_by: str = key("data.partition-by", "", "column for the dirichlet partitioner")
    dirichlet_alpha: float = key("data.dirichlet-alpha", 0.5, "concentration of the dirichlet partitioner")
    seed: int = key("data.seed", 42, "seed for shuffling, partitioning and the validation split")
    validation_fraction: float = key("data.validation-fraction", 0.1, "share of each partition held out for eval loss")
    max_eval_examples: int = key("data.max-eval-examples", 32, "cap on held-out examples per client per evaluation")


@dataclass(frozen=True)
class TrainConfig:
    seq_length: int = key("train.seq-length", 512, "max tokens per example (longer ones are truncated)")
    learning_rate_max: float = key("train.learning-rate-max", 5e-4, "learning rate of round 1 (cosine over rounds)")
    learning_rate_min: float = key("train.learning-rate-min", 5e-5, "learning rate of the last round")
    save_every_round: int = key("train.save-every-round", 5, "checkpoint the global adapter every N rounds")
    eval_every_round: int = key("train.eval-every-round", 1, "held-out eval loss every K rounds (0 = off)")
    dynamic_data_seed: bool = key("train.dynamic-data-seed", False, "new sampling order each round")
    batch_size: int = key("train.training-arguments.per-device-train-batch-size", 4, "examples per micro-batch")
    grad_accum: int = key("train.training-arguments.gradient-accumulation-steps", 1, "micro-batches per optimizer step")
    max_steps: int = key("train.training-arguments.max-steps", 10, "optimizer steps per client per round")
    num_train_epochs: int = key("train.training-arguments.num-train-epochs", 0,
                                "local epochs: > 0 runs that many passes over the client's training split per round; "
                                "with max-steps also set, the later layer (preset < recipe < yours) wins, and within "
                                "one layer max-steps (as in transformers); 0 = max-steps")
    warmup_steps: int = key("train.training-arguments.warmup-steps", 0, "linear warmup steps within a round")
    lr_scheduler_type: str = key("train.training-arguments.lr-scheduler-type", "constant",
                                 "learning rate within a round after the warmup: constant | cosine | linear "
                                 "(decay towards 0 at the round's last step, as transformers' schedulers)")
    optim: str = key("train.training-arguments.optim", "adamw_torch", "adamw_torch | adamw_8bit | paged_adamw_8bit (bitsandbytes; paged on CUDA, plain 8-bit on CPU)")
    weight_decay: float = key("train.training-arguments.weight-decay", 0.0, "AdamW weight decay")
    max_grad_norm: float = key("train.training-arguments.max-grad-norm", 1.0, "gradient clipping (0 = off)")
    seed: int = key("train.training-arguments.seed", 42, "seed of local training")
    dp_sgd_noise_multiplier: float = key("train.dp-sgd.noise-multiplier", 0.0,
                                         "record-level differential privacy (DP-SGD in each node's training): "
                                         "noise standard deviation in units of train.dp-sgd.clipping-norm, added to "
                                         "every step's sum of clipped per-example gradients (0 = off)")
    dp_sgd_clipping_norm: float = key("train.dp-sgd.clipping-norm", 1.0,
                                      "DP-SGD: L2 norm each example's gradient (of its mean token loss) is clipped to")
    dp_sgd_sample_rate: float = key("train.dp-sgd.sample-rate", 0.05,
                                    "DP-SGD: probability that each training example joins a step (Poisson "
                                    "sampling; the expected batch is this share of the node's examples; "
                                    "max-steps steps a round)")
    dp_sgd_delta: float = key("train.dp-sgd.delta", 1e-5,
                              "DP-SGD: δ of the reported record-level (ε, δ); keep it below 1 / records per node")
    dp_sgd_target_epsilon: float = key("train.dp-sgd.target-epsilon", 0.0,
                                       "DP-SGD: stop before the round in which a node could pass this record-level "
                                       "ε (0 = no limit)")


@dataclass(frozen=True)
class StrategyConfig:
    name: str = key("strategy.name", "fedavg", "fedavg | fedprox | fedadam | fedyogi | fedavgm | fedmedian | "
                                                 "fedtrimmedavg | krum | multikrum | bulyan")
    aggregation: str = key("strategy.aggregation", "separate",
                           "how the nodes' LoRA factors are combined: separate (strategy.name averages A and B each, "
                           "FedAvg of A and B) | freeze-a (A stays as initialised on every node: only B trains, the mean "
                           "of B times A is the mean of the products, and with a delta wire.codec only B travels after "
                           "a node's first round) | exact (the weighted mean of the nodes' products B·A, re-projected "
                           "onto rank r by SVD)")
    fraction_train: float = key("strategy.fraction-train", 0.5, "share of connected nodes sampled per round")
    fraction_evaluate: float = key("strategy.fraction-evaluate", 1.0, "share of nodes computing the held-out eval loss")
    min_train_nodes: int = key("strategy.min-train-nodes", 2, "minimum nodes per training round")
    min_available_nodes: int = key("strategy.min-available-nodes", 2, "wait until this many nodes are connected")
    proximal_mu: float = key("strategy.proximal-mu", 0.0, "FedProx proximal term weight (> 0 adds the term)")
    server_learning_rate: float = key("strategy.server-learning-rate", 1.0, "FedAvgM server learning rate")
    server_momentum: float = key("strategy.server-momentum", 0.0, "FedAvgM server momentum")
    eta: float = key("strategy.eta", 1e-2, "FedAdam/FedYogi server learning rate")
    eta_l: float = key("strategy.eta-l", 1e-2, "FedAdam/FedYogi client learning rate (bookkeeping only)")
    beta_1: float = key("strategy.beta-1", 0.9, "FedAdam/FedYogi first moment decay")
    beta_2: float = key("strategy.beta-2", 0.99, "FedAdam/FedYogi second moment decay")
    tau: float = key("strategy.tau", 1e-3, "FedAdam/FedYogi adaptivity")
    round_timeout: float = key("strategy.round-timeout", 86400.0, "seconds to wait for replies in one round")
    seed: int = key("strategy.seed", 42, "seed of client sampling")
    node_wait_timeout: float = key("strategy.node-wait-timeout", 600.0,
                                   "seconds to wait for strategy.min-available-nodes usable SuperNodes before the run "
                                   "stops (resumable)")
    round_retries: int = key("strategy.round-retries", 1,
                             "times a round with fewer than strategy.min-train-nodes usable updates is resampled "
                             "before the run stops (resumable)")
    max_examples_per_node: int = key("strategy.max-examples-per-node", 0,
                                     "cap on the num-examples weight of one reply (0 = only the rows the node "
                                     "declared at check-in)")
    max_global_growth: float = key("strategy.max-global-growth", 10.0,
                                   "drop a round whose aggregate's norm exceeds this multiple of the previous "
                                   "global's (0 = check finiteness only)")
    norm_bound: float = key("strategy.norm-bound", 0.0,
                            "scale every client update to at most this L2 norm before aggregation (0 = off; with "
                            "norm-bound-adaptive, the starting bound)")
    norm_bound_adaptive: bool = key("strategy.norm-bound-adaptive", False,
                                    "move the norm bound toward strategy.norm-bound-quantile of the update norms")
    norm_bound_median: float = key("strategy.norm-bound-median", 2.0,
                                   "also scale every update to at most this multiple of the round's median update "
                                   "norm (0 = off; acts with 3+ replies a round)")
    min_cosine_to_median: float = key("strategy.min-cosine-to-median", 0.0,
                                      "reject an update whose cosine with the round's median update is at most this "
                                      "(-1 = off; acts with 3+ replies a round)")
    norm_bound_quantile: float = key("strategy.norm-bound-quantile", 0.5,
                                     "share of updates the adaptive norm bound aims to leave unscaled")
    num_malicious_nodes: int = key("strategy.num-malicious-nodes", 1,
                                   "attackers krum / multikrum / bulyan tolerate per round")
    trimmed_beta: float = key("strategy.trimmed-beta", 0.2, "fedtrimmedavg: share cut from each end per entry")
    multikrum_select: int = key("strategy.multikrum-select", 2, "multikrum: updates averaged after selection")
    dp_mode: str = key("strategy.dp.mode", "off",
                       "client-level differential privacy: off | server-fixed (the server clips each update) | "
                       "server-adaptive (the same, the norm moving toward strategy.dp.target-quantile of the update "
                       "norms) | client-fixed (each node clips its own; the server checks the norm) | client-adaptive "
                       "(the same, the norm moving as for server-adaptive); Gaussian noise on the average, ε "
                       "accounted")
    dp_noise_multiplier: float = key("strategy.dp.noise-multiplier", 1.0,
                                     "noise standard deviation in units of the clipping norm (per node sampled)")
    dp_clipping_norm: float = key("strategy.dp.clipping-norm", 1.0,
                                  "L2 norm every update is clipped to (the embedded model's r=8 updates measured 2-3 "
                                  "after 3 steps at lr 2e-3)")
    dp_delta: float = key("strategy.dp.delta", 1e-5, "δ of the reported (ε, δ); keep it below 1 / nodes")
    dp_target_epsilon: float = key("strategy.dp.target-epsilon", 0.0,
                                   "stop before the round that would take ε past this (0 = no limit)")
    dp_target_quantile: float = key("strategy.dp.target-quantile", 0.5,
                                    "server-/client-adaptive: share of the updates the clipping norm aims to leave "
                                    "unclipped")
    dp_clip_learning_rate: float = key("strategy.dp.clip-learning-rate", 0.2,
                                       "server-/client-adaptive: step of the norm's geometric update per round")
    dp_count_noise: float = key("strategy.dp.count-noise", 5.0,
                                "server-/client-adaptive: standard deviation of the noise on the count of unclipped "
                                "updates "
                                "(must be over strategy.dp.noise-multiplier / 2; the update noise is raised to keep "
                                "the total at the noise multiplier)")
    secagg_mode: str = key("strategy.secagg.mode", "off",
                           "secure aggregation: off | secagg+ (Flower's SecAgg+ protocol: the server learns only the "
                           "sum of the round's updates; needs wire.codec=fp32)")
    secagg_num_shares: float = key("strategy.secagg.num-shares", 1.0,
                                   "share of a round's sampled nodes that hold pieces of each node's secrets (1 = all)")
    secagg_threshold: float = key("strategy.secagg.threshold", 0.5,
                                  "share of those pieces needed to rebuild a secret: higher resists more colluding "
                                  "nodes, lower survives more nodes dropping out mid-round (at least 2 pieces)")
    secagg_clipping_range: float = key("strategy.secagg.clipping-range", 0.1,
                                       "each entry of an update (trained - global) is clipped to +-this before "
                                       "quantization")
    secagg_quantization_bits: int = key("strategy.secagg.quantization-bits", 22,
                                        "bits of each quantized entry (the sum is taken modulo 2^32: at most "
                                        "2^(32 - bits) nodes a round)")


@dataclass(frozen=True)
class RunConfig:
    num_server_rounds: int = key("num-server-rounds", 3, "federated rounds")
    preset: str = key("preset", "quickstart", "named set of defaults: quickstart | medical | finance | code | general-nlp")
    num_supernodes: int = key("num-supernodes", 4, "SuperNodes the preset expects (simulation size)")
    output_dir: str = key("run.output-dir", "", "absolute run directory ('' = ~/flowertune-runs/<time>-<preset>)")
    wire_codec: str = key("wire.codec", "fp32",
                          "adapter encoding on the wire: fp32 (lossless) | fp16 | delta-fp16 | delta-int8 | delta-int4 | "
                          "delta-int3 | delta-int2 | delta-topk-int8")
    wire_topk_fraction: float = key("wire.topk-fraction", 0.1, "share of entries delta-topk-int8 sends per tensor")
    client_worker: str = key("run.client-worker", "auto",
                             "keep the model in a resident per-node worker: on | off | auto (flowertune run "
                             "decides: on in deployment, off in simulation); a SuperNode's --node-config "
                             "client-worker=on|off overrides it")
    preset_applied: bool = key("run.preset-applied", False,
                               "the values already include the preset (set by `flowertune run`; no re-layering)")
    recipe: str = key("run.recipe", "",
                      "recipe the values were layered from ('' = none; set by `flowertune run --recipe`, "
                      "see `flowertune recipes`)")
    resume: bool = key("run.resume", False,
                       "continue the run in run.output-dir from its last completed round (`flowertune run --resume`)")
    progress_every_s: float = key("run.progress-every-s", 30.0,
                                  "progress lines while a round runs: the server's (clients done, elapsed, ETA, "
                                  "bytes) and each client's (step, loss, tokens/s), at most every N seconds "
                                  "(0 = off; `flowertune run` turns it off under CI unless set)")
    metric_sinks: str = key("run.metric-sinks", "",
                            "extra sinks fed the per-round metrics rows: comma-separated tensorboard | mlflow | "
                            "wandb ('' = only metrics.jsonl)")
    resume_force: bool = key("run.resume-force", False,
                             "with run.resume: accept changes of the keys that are safe to change mid-run "
                             "(more rounds, timeouts, checkpoint/eval cadence)")


@dataclass(frozen=True)
class Config:
    """The resolved configuration of one run."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)

    def to_flat(self) -> dict[str, Scalar]:
        """Flat ``{key: value}`` form, the inverse of :func:`from_flat`."""
        return {k: getattr(getattr(self, sec), attr) for k, (sec, attr, _t) in _KEYS.items()}


def _index() -> dict[str, tuple[str, str, type]]:
    out: dict[str, tuple[str, str, type]] = {}
    for sec in fields(Config):
        cls = sec.default_factory  # type: ignore[misc]
        assert is_dataclass(cls)
        hints = get_type_hints(cls)
        for f in fields(cls):
            out[f.metadata["key"]] = (sec.name, f.name, hints[f.name])
    return out


_KEYS = _index()


def valid_keys() -> list[str]:
    """All valid flat keys."""
    return sorted(_KEYS)


def describe() -> list[tuple[str, Scalar, str]]:
    """(key, default, help) for every key, for the README and ``flowertune keys``."""
    rows = []
    for sec in fields(Config):
        for f in fields(sec.default_factory):  # type: ignore[arg-type]
            rows.append((f.metadata["key"], f.default, f.metadata["help"]))
    return rows


def flat_defaults() -> dict[str, Scalar]:
    """The default flat config (what ``[tool.flwr.app.config]`` holds)."""
    return Config().to_flat()


def _coerce(k: str, value: Any, typ: type) -> Scalar:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        return str(value)
    raise ConfigError(f"config key {k!r} expects {typ.__name__}, got {value!r}")


def flatten_toml(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML's nested tables as flat dotted keys (``{"model": {"lora": {"peft-lora-r": 8}}}`` ->
    ``{"model.lora.peft-lora-r": 8}``); a value that is not a number, boolean or string is a ConfigError."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, Mapping):
            out.update(flatten_toml(v, f"{prefix}{k}."))
        elif isinstance(v, (bool, int, float, str)):
            out[f"{prefix}{k}"] = v
        else:
            hint = " (a list is one comma-separated string, e.g. \"q_proj,v_proj\")" if isinstance(v, list) else ""
            raise ConfigError(f"{prefix}{k}: a config value is a number, a boolean or a string, not a "
                              f"{type(v).__name__}{hint}")
    return out


def check_keys(flat: Mapping[str, Any]) -> None:
    """Reject unknown keys, suggesting the closest valid ones."""
    unknown = [k for k in flat if k not in _KEYS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, _KEYS, n=2)
            hints.append(f"{k!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise ConfigError(
            f"unknown config key(s): {', '.join(hints)}. Valid keys: {', '.join(valid_keys())}"
        )


def from_flat(flat: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from explicit flat values on top of the defaults (no presets)."""
    check_keys(flat)
    sections: dict[str, dict[str, Scalar]] = {}
    for k, v in flat.items():
        sec, attr, typ = _KEYS[k]
        sections.setdefault(sec, {})[attr] = _coerce(k, v, typ)
    cfg = Config()
    cfg = replace(cfg, **{sec: replace(getattr(cfg, sec), **vals) for sec, vals in sections.items()})
    validate(cfg)
    return cfg


def from_trusted_flat(flat: Mapping[str, Any]) -> Config:
    """A :class:`Config` from the flat keys of one that was already built and checked (``Config.to_flat()`` on
    this machine, e.g. the resident worker's frames): values as they are, no coercion or validation (a node's
    :func:`at_rank` config may hold a fractional ``alpha``). Unknown keys are still refused."""
    check_keys(flat)
    sections: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        sec, attr, _ = _KEYS[k]
        sections.setdefault(sec, {})[attr] = v
    cfg = Config()
    return replace(cfg, **{sec: replace(getattr(cfg, sec), **vals) for sec, vals in sections.items()})


def resolve(run_config: Mapping[str, Any]) -> Config:
    """Resolve Flower's ``run_config`` (pyproject defaults + overrides) into a :class:`Config`.

    Flower hands the app the merged values, so a key left at its pyproject default cannot be told from one
    the user set to the same value. Layering therefore happens only where the set keys are known:
    ``flowertune run`` (and ``flowertune presets --run-config NAME`` for plain ``flwr run``) send a fully
    materialised config marked ``run.preset-applied``, taken as it is. The defaults are the ``quickstart``
    preset, so a plain run of it needs no layering; any other preset without ``run.preset-applied`` is an
    error that says how to apply it.
    """
    check_keys(run_config)
    name = str(run_config.get("preset", "quickstart"))
    applied = run_config.get("run.preset-applied") is True
    recipe = str(run_config.get("run.recipe", ""))
    if recipe and not applied:
        raise ConfigError(
            f"run.recipe={recipe!r} under plain `flwr run` is not layered; use `flowertune run --recipe {recipe} "
            f"key=value ...`, or flwr run . --run-config \"$(flowertune presets --recipe {recipe} key=value ...)\""
        )
    if applied or name == "quickstart":
        return from_flat(run_config)
    from flowertune.presets import PRESETS

    if name not in PRESETS:
        raise ConfigError(f"preset={name!r} is not valid; choose one of: {', '.join(PRESETS.names())}")
    raise ConfigError(
        f"preset={name!r} under plain `flwr run` cannot tell the values you set from the pyproject defaults; "
        f"use `flowertune run --preset {name} key=value ...`, or let flowertune layer them: "
        f"flwr run . --run-config \"$(flowertune presets --run-config {name} key=value ...)\""
    )


def validate(cfg: Config) -> None:
    """Cross-field checks with messages that name the fix."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.run.num_server_rounds >= 1, "num-server-rounds must be >= 1")
    need(not cfg.model.trust_remote_code or re.fullmatch(r"[0-9a-f]{40}", cfg.model.revision) is not None
         or Path(cfg.model.name).is_dir(),
         f"model.trust-remote-code=true runs {cfg.model.name}'s own Python code: pin the code with "
         "model.revision=<the 40-hex commit you reviewed> (a branch or tag can change under you)")
    need(cfg.model.quantization in (0, 4, 8),
         f"model.quantization must be 0 (none), 4 (QLoRA NF4) or 8 bits (got {cfg.model.quantization})")
    need(cfg.train.optim in ("adamw_torch", "adamw_8bit", "paged_adamw_8bit"),
         f"train.training-arguments.optim={cfg.train.optim!r} is not valid; choose adamw_torch, adamw_8bit or "
         "paged_adamw_8bit")
    need(cfg.model.dtype in ("auto", "float32", "bfloat16", "float16"),
         "model.dtype must be auto, float32, bfloat16 or float16")
    need(cfg.adapter.r >= 1, "model.lora.peft-lora-r must be >= 1")
    need(0.0 <= cfg.adapter.dropout < 1.0, "model.lora.peft-lora-dropout must be in [0, 1)")
    need(0.0 < cfg.strategy.fraction_train <= 1.0, "strategy.fraction-train must be in (0, 1]")
    need(0.0 <= cfg.strategy.fraction_evaluate <= 1.0, "strategy.fraction-evaluate must be in [0, 1]")
    need(cfg.strategy.min_train_nodes >= 1, "strategy.min-train-nodes must be >= 1")
    need(cfg.strategy.min_available_nodes >= 1, "strategy.min-available-nodes must be >= 1")
    need(cfg.run.num_supernodes >= 1, f"num-supernodes must be >= 1 (got {cfg.run.num_supernodes}): the federation "
         "needs a node (--num-supernodes N)")
    need(cfg.model.name.strip() != "", "model.name is empty: give a Hub id, a local model directory, a .gguf file "
         "or 'embedded'")
    need(cfg.strategy.proximal_mu >= 0.0, "strategy.proximal-mu must be >= 0")
    need(cfg.train.num_train_epochs >= 0, "train.training-arguments.num-train-epochs must be >= 0 (0 = use max-steps)")
    need(cfg.train.max_steps >= 1 or cfg.train.num_train_epochs > 0,
         "train.training-arguments.max-steps must be >= 1 (or set train.training-arguments.num-train-epochs > 0)")
    need(cfg.train.warmup_steps >= 0, "train.training-arguments.warmup-steps must be >= 0")
    need(cfg.train.lr_scheduler_type in IN_ROUND_SCHEDULES,
         f"train.training-arguments.lr-scheduler-type={cfg.train.lr_scheduler_type!r} is not valid; choose "
         f"{', '.join(IN_ROUND_SCHEDULES)} (train.training-arguments.warmup-steps applies to each)")
    need(cfg.train.batch_size >= 1, "train.training-arguments.per-device-train-batch-size must be >= 1")
    need(cfg.train.grad_accum >= 1, "train.training-arguments.gradient-accumulation-steps must be >= 1")
    need(cfg.train.seq_length >= 16, "train.seq-length must be >= 16")
    need(cfg.train.learning_rate_max > 0 and cfg.train.learning_rate_min >= 0,
         "train.learning-rate-max must be > 0 and train.learning-rate-min >= 0")
    need(cfg.train.save_every_round >= 1, "train.save-every-round must be >= 1")
    need(0.0 <= cfg.data.validation_fraction < 1.0, "data.validation-fraction must be in [0, 1)")
    need(0.0 < cfg.run.wire_topk_fraction <= 1.0, "wire.topk-fraction must be in (0, 1]")
    need(cfg.run.client_worker in ("auto", "on", "off"), "run.client-worker must be auto, on or off")
    need(cfg.strategy.node_wait_timeout > 0, "strategy.node-wait-timeout must be > 0 seconds")
    need(cfg.strategy.round_retries >= 0, "strategy.round-retries must be >= 0")
    need(cfg.strategy.max_examples_per_node >= 0, "strategy.max-examples-per-node must be >= 0 (0 = no cap)")
    need(cfg.strategy.max_global_growth == 0 or cfg.strategy.max_global_growth > 1,
         "strategy.max-global-growth must be > 1 (or 0 to check finiteness only)")
    need(cfg.strategy.norm_bound >= 0, "strategy.norm-bound must be >= 0 (0 = off)")
    need(not cfg.strategy.norm_bound_adaptive or cfg.strategy.norm_bound > 0,
         "strategy.norm-bound-adaptive needs strategy.norm-bound > 0 (the bound it starts from)")
    need(0.0 < cfg.strategy.norm_bound_quantile < 1.0, "strategy.norm-bound-quantile must be in (0, 1)")
    need(cfg.strategy.norm_bound_median == 0 or cfg.strategy.norm_bound_median >= 1.0,
         "strategy.norm-bound-median must be 0 (off) or >= 1 (a multiple of the median update norm)")
    need(-1.0 <= cfg.strategy.min_cosine_to_median < 1.0,
         "strategy.min-cosine-to-median must be in [-1, 1) (-1 = off; 0 rejects updates opposed to the median)")
    need(cfg.strategy.num_malicious_nodes >= 0, "strategy.num-malicious-nodes must be >= 0")
    need(0.0 <= cfg.strategy.trimmed_beta < 0.5, "strategy.trimmed-beta must be in [0, 0.5)")
    need(cfg.strategy.multikrum_select >= 1, "strategy.multikrum-select must be >= 1")
    validate_dp(cfg.strategy, need)
    validate_dp_sgd(cfg.train, need)
    validate_secagg(cfg.strategy, cfg.run.wire_codec, cfg.run.num_supernodes, need)
    validate_aggregation(cfg.strategy, cfg.adapter, need)
    validate_ranks(cfg, need)
    need(not cfg.strategy.dp_mode.startswith("client-") or cfg.run.wire_codec == "fp32",
         f"strategy.dp.mode={cfg.strategy.dp_mode} needs wire.codec=fp32: the server checks each decoded update against the "
         f"clipping norm, and {cfg.run.wire_codec}'s rounding (and residual) would push clipped updates past it")
    need(cfg.run.progress_every_s >= 0, "run.progress-every-s must be >= 0 seconds (0 = no progress lines)")
    need(not cfg.run.resume or cfg.run.output_dir != "",
         "run.resume needs run.output-dir (the run directory to continue); or use `flowertune run --resume DIR`")
    need(cfg.run.output_dir == "" or cfg.run.output_dir.startswith("/"),
         f"run.output-dir must be an absolute path (got {cfg.run.output_dir!r}); the server's cwd is the SuperLink's")
    check_names(cfg)


def validate_dp(c: StrategyConfig, need: Callable[[bool, str], None]) -> None:
    """``strategy.dp.*``: the mode exists, its numbers are in range, and the rest of the stack keeps the
    mechanism's sensitivity (an equal-weight mean of clipped updates, noised before any server optimizer)."""
    need(c.dp_mode in ("off", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive"),
         f"strategy.dp.mode={c.dp_mode!r} is not valid; choose off, server-fixed, server-adaptive, client-fixed or "
         "client-adaptive")
    if c.dp_mode == "off":
        return
    need(0 < c.dp_noise_multiplier < math.inf, "strategy.dp.noise-multiplier must be a finite number > 0")
    need(0 < c.dp_clipping_norm < math.inf, "strategy.dp.clipping-norm must be a finite number > 0")
    need(0 < c.dp_delta < 1, "strategy.dp.delta must be in (0, 1), e.g. 1e-5")
    need(0 <= c.dp_target_epsilon < math.inf, "strategy.dp.target-epsilon must be a finite number >= 0 (0 = no limit)")
    if c.dp_mode.endswith("-adaptive"):
        need(0 < c.dp_target_quantile < 1, "strategy.dp.target-quantile must be in (0, 1)")
        need(0 < c.dp_clip_learning_rate < math.inf, "strategy.dp.clip-learning-rate must be a finite number > 0")
        need(c.dp_noise_multiplier / 2 < c.dp_count_noise < math.inf,
             f"strategy.dp.count-noise must be over strategy.dp.noise-multiplier / 2 = {c.dp_noise_multiplier / 2:g} "
             "(the count's noise takes that share of the budget; the update noise makes up the rest)")
    need(c.name in ("fedavg", "fedprox"),
         f"strategy.dp.mode={c.dp_mode} needs strategy.name=fedavg or fedprox (the noise is calibrated to a mean of "
         f"clipped updates; {c.name} transforms it first)")
    need(not c.norm_bound_adaptive, "strategy.norm-bound-adaptive moves with the updates and would leak them "
         "outside the accounted mechanism; with strategy.dp.mode use strategy.dp.clipping-norm (or a fixed "
         "strategy.norm-bound)")


def validate_dp_sgd(t: TrainConfig, need: Callable[[bool, str], None]) -> None:
    """``train.dp-sgd.*``: off, or numbers in range and a round of a fixed number of steps (what is accounted)."""
    need(0 <= t.dp_sgd_noise_multiplier < math.inf,
         "train.dp-sgd.noise-multiplier must be a finite number >= 0 (0 = record-level DP off)")
    if t.dp_sgd_noise_multiplier == 0:
        return
    need(0 < t.dp_sgd_clipping_norm < math.inf, "train.dp-sgd.clipping-norm must be a finite number > 0")
    need(0 < t.dp_sgd_sample_rate <= 1, "train.dp-sgd.sample-rate must be in (0, 1] (a probability per example "
         "and step)")
    need(0 < t.dp_sgd_delta < 1, "train.dp-sgd.delta must be in (0, 1), e.g. 1e-5")
    need(0 <= t.dp_sgd_target_epsilon < math.inf,
         "train.dp-sgd.target-epsilon must be a finite number >= 0 (0 = no limit)")
    need(t.num_train_epochs == 0, "train.dp-sgd needs train.training-arguments.num-train-epochs=0: a DP-SGD round is "
         "train.training-arguments.max-steps Poisson-sampled steps (what the accountant counts), not whole passes")


def node_rank(adapter: AdapterConfig, partition_id: int, node_config: Mapping[str, Any]) -> int:
    """The LoRA rank a node trains at: its ``--node-config lora-rank=N``, else ``model.lora.node-ranks`` by its
    partition, else ``model.lora.peft-lora-r``; :class:`ConfigError` when it is not in [1, peft-lora-r]."""
    if "lora-rank" in node_config:
        raw = node_config["lora-rank"]
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"node config lora-rank={str(raw)[:20]!r} must be an integer in [1, "
                              f"model.lora.peft-lora-r={adapter.r}]")
        rank, where = raw, "node config lora-rank"
    else:
        ranks = adapter.ranks()
        rank, where = (ranks[partition_id % len(ranks)] if ranks else adapter.r), "model.lora.node-ranks"
    if not 1 <= rank <= adapter.r:
        raise ConfigError(f"{where} gives rank {rank}; it must be in [1, model.lora.peft-lora-r={adapter.r}] (the "
                          "global adapter's rank, which each node's rank truncates)")
    return rank


# what a SuperNode's owner can pin with --node-config, over the run config the server sends: node-config key ->
# the run key it constrains (a comma-separated list of allowed values; trust-remote-code: false refuses true)
NODE_PINS = {"model-name": "model.name", "dataset-name": "static.dataset.name",
             "trust-remote-code": "model.trust-remote-code"}


def node_refusal(cfg: Config, node_config: Mapping[str, Any]) -> str | None:
    """Why this node refuses the run (one line naming the node-config key), or None: the organisation that owns a
    node decides which base model it loads, which data it reads and whether Hub code runs on it."""
    flat = cfg.to_flat()
    for node_key, run_key in NODE_PINS.items():
        if node_key not in node_config:
            continue
        pinned, asked = node_config[node_key], flat[run_key]
        if node_key == "trust-remote-code":
            allowed = pinned if isinstance(pinned, bool) else str(pinned).strip().lower() in ("true", "1", "yes")
            if asked and not allowed:
                return (f"this node's --node-config {node_key}=false refuses the run's {run_key}=true (Hub code would "
                        "run on it)")
            continue
        allowed_values = [v.strip() for v in str(pinned).split(",") if v.strip()]
        if str(asked) not in allowed_values:
            return (f"this node's --node-config {node_key}={str(pinned)[:120]!r} does not allow the run's "
                    f"{run_key}={str(asked)[:120]!r}")
    return None


def at_rank(cfg: Config, rank: int) -> Config:
    """``cfg`` for a node training at ``rank``: ``alpha`` scaled with it, so that ``alpha / r`` (PEFT's scaling of
    ``B A``) is the global adapter's and the node's adapter is the global truncated to its first ``rank``
    components."""
    if rank == cfg.adapter.r:
        return cfg
    return replace(cfg, adapter=replace(cfg.adapter, r=rank, alpha=cfg.adapter.alpha * rank / cfg.adapter.r,
                                        node_ranks=""))


def validate_ranks(cfg: Config, need: Callable[[bool, str], None]) -> None:
    """``model.lora.node-ranks``: integers in [1, r]; not where every node must hold the same shapes."""
    ranks = cfg.adapter.ranks()
    if not ranks:
        return
    need(all(1 <= r <= cfg.adapter.r for r in ranks), f"model.lora.node-ranks={cfg.adapter.node_ranks!r}: every "
         f"rank must be in [1, model.lora.peft-lora-r={cfg.adapter.r}] (the global adapter's rank)")
    need(cfg.strategy.secagg_mode == "off", "model.lora.node-ranks: SecAgg+ sums vectors of one length, so every "
         "node must train at model.lora.peft-lora-r; set strategy.secagg.mode=off or drop model.lora.node-ranks")
    need(not cfg.adapter.use_dora, "model.lora.node-ranks: a DoRA magnitude is learned for the node's own B·A, which "
         "truncating the global changes; use plain LoRA (model.lora.use-dora=false) with heterogeneous ranks")


def validate_aggregation(c: StrategyConfig, a: AdapterConfig, need: Callable[[bool, str], None]) -> None:
    """``strategy.aggregation``: exact re-factorises the mean of the products, which only a plain weighted mean
    of the replies may feed (not a server optimizer, a robust rule, noise calibrated to a mean, or a masked sum)."""
    if c.aggregation != "exact":
        return
    what = "strategy.aggregation=exact computes the weighted mean of the nodes' products B·A and re-projects it"
    need(c.name in ("fedavg", "fedprox"), f"{what}: use strategy.name=fedavg or fedprox ({c.name} transforms A and B "
         "each; strategy.aggregation=freeze-a composes with it)")
    need(c.dp_mode == "off", f"{what}, which is not a mean of clipped updates: strategy.dp.mode's noise would not bound "
         "it; use strategy.aggregation=freeze-a with DP (the mean of B is exact there)")
    need(c.secagg_mode == "off", f"{what} from each node's factors, which secure aggregation hides; use "
         "strategy.aggregation=freeze-a with SecAgg+")
    need(not a.use_dora, f"{what}; DoRA's magnitude rescales B·A by a norm that is not linear in it, so no mean of "
         "products is exact: use strategy.aggregation=freeze-a or separate with model.lora.use-dora")


def validate_secagg(c: StrategyConfig, codec: str, nodes: int, need: Callable[[bool, str], None]) -> None:
    """``strategy.secagg.*``: the server sees only the sum of the updates, so nothing above it may need one update."""
    need(c.secagg_mode in ("off", "secagg+"), f"strategy.secagg.mode={c.secagg_mode!r} is not valid; choose off or "
         "secagg+")
    if c.secagg_mode == "off":
        return
    need(0 < c.secagg_num_shares <= 1, "strategy.secagg.num-shares must be in (0, 1] (a share of the sampled nodes)")
    need(0 < c.secagg_threshold <= 1, "strategy.secagg.threshold must be in (0, 1] (a share of the pieces)")
    need(0 < c.secagg_clipping_range < math.inf, "strategy.secagg.clipping-range must be a finite number > 0")
    need(8 <= c.secagg_quantization_bits <= 30, "strategy.secagg.quantization-bits must be in [8, 30]")
    need(codec == "fp32", f"strategy.secagg.mode=secagg+ needs wire.codec=fp32: masked updates are summed as fixed-point "
         f"integers, which {codec}'s per-node encoding cannot be")
    need(c.name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"),
         f"strategy.secagg.mode=secagg+ needs an aggregator of the mean (fedavg, fedprox, fedavgm, fedadam, fedyogi): "
         f"{c.name} needs each update, which secure aggregation hides from the server")
    cannot = "clip it" if c.dp_mode.startswith("server-") else "count the clipped ones"
    need(c.dp_mode in ("off", "client-fixed"), f"strategy.secagg.mode=secagg+ hides each update from the server, "
         f"which therefore cannot {cannot}: use strategy.dp.mode=client-fixed (each node clips its own; the server noises the sum)")
    need(c.norm_bound == 0, "strategy.norm-bound needs each update, which secure aggregation hides from the server; "
         "set it to 0 (strategy.secagg.clipping-range bounds every entry, strategy.dp.mode=client-fixed the norm)")
    need(c.min_train_nodes >= 2, "strategy.secagg.mode=secagg+ needs strategy.min-train-nodes >= 2 (a sum of one "
         "update is that update)")
    most = 2 ** (32 - c.secagg_quantization_bits) - 1
    need(nodes <= most, f"strategy.secagg.quantization-bits={c.secagg_quantization_bits} sums at most {most} nodes a "
         f"round (modulo 2^32) and num-supernodes is {nodes}: lower the bits")


def check_names(cfg: Config) -> None:
    """Raise ``ConfigError`` for a strategy, partitioner, data format, prompt frame, preset, wire codec or metric
    sink that does not exist, listing the valid ones (names only: nothing that implements them is imported)."""
    from flowertune.catalog import AGGREGATIONS, CODECS, FORMATS, FRAMES, PARTITIONERS, SINKS, STRATEGIES
    from flowertune.presets import PRESETS

    for registry, value, k in (
        (STRATEGIES, cfg.strategy.name, "strategy.name"),
        (AGGREGATIONS, cfg.strategy.aggregation, "strategy.aggregation"),
        (PARTITIONERS, cfg.data.partitioner, "data.partitioner"),
        (FORMATS, cfg.data.format, "data.format"),
        (FRAMES, cfg.data.prompt_frame, "data.prompt-frame"),
        (PRESETS, cfg.run.preset, "preset"),
        (CODECS, cfg.run.wire_codec, "wire.codec"),
    ):
        if value not in registry:
            raise ConfigError(f"{k}={value!r} is not valid; choose one of: {', '.join(registry.names())}")
    for name in sink_names(cfg.run.metric_sinks):
        if name not in SINKS:
            raise ConfigError(f"run.metric-sinks: unknown sink {name!r}; choose from: {', '.join(SINKS.names())}")


def sink_names(spec: str) -> list[str]:
    """The sink names of a ``run.metric-sinks`` value (comma-separated, blanks ignored)."""
    return [s.strip() for s in spec.split(",") if s.strip()]


def toml_value(v: Scalar) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)


def pyproject_section() -> str:
    """The ``[tool.flwr.app.config]`` TOML text for the defaults (pyproject.toml must contain it)."""
    lines = ["[tool.flwr.app.config]"]
    static = []
    for k, v in flat_defaults().items():
        if k.startswith("static."):
            static.append(f"{k[len('static.'):]} = {toml_value(v)}")
        else:
            lines.append(f"{k} = {toml_value(v)}")
    lines += ["", "# Dataset config (static for the FlowerTune LLM Leaderboard)", "[tool.flwr.app.config.static]", *static]
    return "\n".join(lines) + "\n"

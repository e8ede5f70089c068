"""Every architecture family of the seed submissions trains in 4 bits on the CPU.

One tiny random-init model per family, built from its transformers config class so the module names are the
real ones (Phi-3/Phi-4-mini's fused ``qkv_proj``/``gate_up_proj`` included), is trained 2 rounds x 2 clients
with its seed recipe (``flowertune run --recipe`` through Flower's real simulation for one family, the same
client tasks in this process for the others; see FLOWER_FAMILY) with only the sizes scaled down: the recipe's NF4
base, LoRA/DoRA rank and targets, paged 8-bit AdamW (bitsandbytes' AdamW8bit on CPU), schedule, strategy and
local epochs stay. The final adapter must hold exactly the recipe's target modules and load onto the fp32 base.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from flowertune.config import from_flat
from flowertune.federation.rundir import read_config
from flowertune.layering import layer
from tests.conftest import REPO, bpe_tokenizer
from tests.e2e.helpers import BIN, isolated_env, kill_processes_mentioning, read_jsonl

pytestmark = pytest.mark.slow  # a minute or more of Flower runs


@dataclass(frozen=True)
class Family:
    """One architecture family: its transformers classes and the seed recipe that trains it."""

    name: str
    config_class: str
    model_class: str
    recipe: str
    extra: tuple[tuple[str, object], ...] = ()  # family-specific config fields


FAMILIES = [
    Family("llama3", "LlamaConfig", "LlamaForCausalLM", "medical-jsl-medllama3-8b-fedprox"),
    Family("mistral", "MistralConfig", "MistralForCausalLM", "general-nlp-seven-models"),
    # Qwen2.5: biased q/k/v projections; the recipe adds local epochs and gradient accumulation
    Family("qwen2.5", "Qwen2Config", "Qwen2ForCausalLM", "medical-aloe-beta-8b"),
    # Phi-4-mini: fused qkv_proj and gate_up_proj, rotary embedding on 3/4 of each head
    Family("phi3", "Phi3Config", "Phi3ForCausalLM", "code-phi4-mini-dora", (("partial_rotary_factor", 0.75),)),
]


def build_family_model(family: Family, path: Path) -> Path:
    """Save a 2-layer random-init model of ``family`` with the tiny BPE tokenizer to ``path``.

    Every linear layer's width is a multiple of 64 (bitsandbytes' 4-bit block size).
    """
    import transformers

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    cfg = getattr(transformers, family.config_class)(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
        **dict(family.extra))
    getattr(transformers, family.model_class)(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def recipe_config(recipe: str):
    """What the recipe asks for, layered over its preset (the values the run must keep)."""
    return from_flat(layer(None, {}, recipe)[0])


def scaled_down(model_dir: Path, data: Path, recipe: str) -> list[str]:
    """Overrides that shrink a recipe to 2 rounds x 2 clients on a tiny model; the training settings stay."""
    cfg: dict[str, object] = {
        "model.name": str(model_dir), "static.dataset.name": str(data), "model.dtype": "float32",
        "num-server-rounds": 2, "train.seq-length": 96, "train.training-arguments.per-device-train-batch-size": 2,
        "strategy.fraction-train": 1.0, "strategy.fraction-evaluate": 1.0, "strategy.min-train-nodes": 2,
        "strategy.min-available-nodes": 2, "train.eval-every-round": 1,
    }
    if recipe_config(recipe).train.num_train_epochs == 0:  # an epochs recipe keeps its epochs over tiny data
        cfg["train.training-arguments.max-steps"] = 2
    return [f"{k}={json.dumps(v)}" for k, v in cfg.items()]


@pytest.fixture(scope="module")
def family_data(tmp_path_factory) -> Path:
    """20 rows of the shipped medical sample: 9 training rows per client (3 epochs = 7 steps of 2 x 2)."""
    rows = (REPO / "flowertune/samples/medical_qa.jsonl").read_text().splitlines()[:20]
    path = tmp_path_factory.mktemp("family-data") / "qa.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


# Through Flower's real simulation: Phi-3/Phi-4-mini (fused projections, DoRA), the family furthest from the
# others. The rest train through the same client tasks the ClientApp runs (initial adapter, local rounds,
# FedAvg of the replies) in this process: what differs between families is the model code, which these reach
# just the same, and each Flower run costs ~40 s of fixed start-up here.
FLOWER_FAMILY = "phi3"


@dataclass
class FamilyRun:
    family: Family
    model_dir: Path
    out: Path
    config: object  # the resolved Config the clients trained with
    rows: list[dict]  # per round: round, clients, rejected, train_loss
    quantized_4bit: bool  # the clients' base model held bitsandbytes 4-bit layers
    optimizer: str  # the optimizer class the clients trained with


def _through_flower(family: Family, model_dir: Path, data: Path, home: Path, out: Path) -> FamilyRun:
    cmd = [str(BIN / "flowertune"), "run", "--recipe", family.recipe, "--num-supernodes", "2", "--out", str(out),
           *scaled_down(model_dir, data, family.recipe)]
    try:
        proc = subprocess.run(cmd, env=isolated_env(home), capture_output=True, text=True, timeout=900, check=False)
    finally:
        kill_processes_mentioning(str(home))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the clients' own log lines, streamed by `flwr run --stream`: an NF4 base and bitsandbytes' 8-bit AdamW
    log = proc.stdout
    return FamilyRun(family, model_dir, out, from_flat(read_config(out)), read_jsonl(out / "metrics.jsonl"),
                     "on cpu (4-bit NF4 base, float32 compute)" in log, "AdamW8bit" if "using bitsandbytes AdamW8bit" in log else "")


def _in_process(family: Family, model_dir: Path, data: Path, out: Path) -> FamilyRun:
    """2 rounds x 2 clients of the client tasks, FedAvg-weighted by examples, the final adapter saved as a run."""
    import numpy as np

    from flowertune.commands.run import parse_overrides, resolve_cli
    from flowertune.federation import client_runtime, client_tasks
    from flowertune.models.adapter import save_adapter
    from flowertune.train.loop import make_optimizer
    from flowertune.train.schedule import cosine_annealing

    cfg = resolve_cli(None, parse_overrides(scaled_down(model_dir, data, family.recipe)), str(out),
                      recipe=family.recipe)
    arrays, adapter_json = client_tasks.initial_adapter(cfg)
    rows = [{"round": 0}]
    for rnd in (1, 2):
        lr = cosine_annealing(rnd, cfg.run.num_server_rounds, cfg.train.learning_rate_max, cfg.train.learning_rate_min)
        replies = [client_tasks.train(cfg, pid, 2, arrays, lr, rnd, cfg.strategy.proximal_mu) for pid in (0, 1)]
        weights = np.array([m["num-examples"] for _, m in replies], dtype=np.float64)
        arrays = {k: sum(w * a[k] for w, (a, _) in zip(weights / weights.sum(), replies)).astype(np.float32)
                  for k in arrays}
        rows.append({"round": rnd, "clients": len(replies), "rejected": [],
                     "train_loss": float(np.mean([m["train_loss"] for _, m in replies]))})
    save_adapter(arrays, json.loads(adapter_json), out / "final_adapter")
    model = client_runtime.runtime(cfg).model
    import bitsandbytes as bnb

    quantized = any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = type(make_optimizer(trainable, cfg.train, 1e-4)).__name__
    return FamilyRun(family, model_dir, out, cfg, rows, quantized, optimizer)


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.name for f in FAMILIES])
def family_run(request, tmp_path_factory, family_data) -> FamilyRun:
    """A finished 4-bit training of ``family``'s seed recipe on its tiny model (see FLOWER_FAMILY)."""
    family: Family = request.param
    model_dir = build_family_model(family, tmp_path_factory.mktemp(f"tiny-{family.name}"))
    out = tmp_path_factory.mktemp("runs") / family.name
    if family.name == FLOWER_FAMILY:
        return _through_flower(family, model_dir, family_data, tmp_path_factory.mktemp(f"home-{family.name}"), out)
    return _in_process(family, model_dir, family_data, out)


def test_the_run_keeps_the_recipe_and_trains_two_clients_per_round(family_run):
    family, got = family_run.family, family_run.config
    assert family_run.quantized_4bit and family_run.optimizer == "AdamW8bit"  # NF4 base, bitsandbytes' AdamW8bit
    want = recipe_config(family.recipe)
    assert got.run.recipe == family.recipe and got.model.quantization == 4
    assert (got.model.trust_remote_code, got.model.gradient_checkpointing) == (
        want.model.trust_remote_code, want.model.gradient_checkpointing)
    assert got.adapter == want.adapter
    assert got.strategy.name == want.strategy.name and got.strategy.proximal_mu == want.strategy.proximal_mu
    for field in ("optim", "lr_scheduler_type", "warmup_steps", "grad_accum", "num_train_epochs",
                  "learning_rate_max", "learning_rate_min"):
        assert getattr(got.train, field) == getattr(want.train, field), field
    rows = family_run.rows
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["clients"] == 2 and r["rejected"] == [] and r["train_loss"] > 0, r


def test_the_final_adapter_holds_exactly_the_recipe_targets(family_run):
    """Every target module of every layer has its LoRA pair (and DoRA magnitude); nothing else is saved."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    family, model_dir, out = family_run.family, family_run.model_dir, family_run.out
    adapter = recipe_config(family.recipe).adapter
    targets = set(adapter.target_modules.split(","))
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    modules = [name for name, _ in base.named_modules() if name.rsplit(".", 1)[-1] in targets]
    assert {m.rsplit(".", 1)[-1] for m in modules} == targets  # the tiny model has every target
    parts = ["lora_A.weight", "lora_B.weight"] + (["lora_magnitude_vector"] if adapter.use_dora else [])
    expected = {f"base_model.model.{m}.{p}" for m in modules for p in parts}
    weights = load_file(out / "final_adapter" / "adapter_model.safetensors")
    assert set(weights) == expected
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at zero: it trained
    cfg = json.loads((out / "final_adapter" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_dora"]) == (adapter.r, adapter.alpha, adapter.use_dora)
    assert set(cfg["target_modules"]) == targets


def test_the_final_adapter_loads_onto_the_fp32_base(family_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir, out = family_run.model_dir, family_run.out
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / "final_adapter").eval()
    with torch.no_grad():
        logits = model(input_ids=torch.randint(0, base.config.vocab_size, (1, 12))).logits
    assert logits.shape == (1, 12, base.config.vocab_size) and torch.isfinite(logits).all()

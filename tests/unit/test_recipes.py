"""Recipes reproduce their seed READMEs, layer under the user's keys, and fail in one line naming the fix.

The expected values below are typed in from the seed READMEs (/work/shared/seeds/00N_*.txt), not read from
the recipe files, so a recipe that drifts from its README fails here.
"""

import argparse
import math
from pathlib import Path

import pytest
import tomllib

from flowertune.commands.run import parse_overrides, print_config, resolve_cli
from flowertune.config import ConfigError, flat_defaults, from_flat, resolve
from flowertune.layering import layer, preset_run_config
from flowertune.recipes import RECIPE_DIR, get_recipe, load_recipe, recipes
from flowertune.train.schedule import cosine_annealing, round_steps
from tests.conftest import REPO

OUT = "/tmp/flowertune-test-recipe-run"
TARGETS = "model.lora.target-modules"

# recipe name -> (seed file, preset, {key: value the README states})
README: dict[str, tuple[str, str, dict]] = {
    "medical-llama3.1-8b-unsloth": ("000_4e72bfae00e6f6a8.txt", "medical", {
        "model.name": "meta-llama/Llama-3.1-8B-Instruct",
        "data.format": "medical",  # "adapts the FlowerTune LLM Leaderboard for medical tasks"
    }),
    "medical-jsl-medllama3-8b-fedprox": ("001_78916c9bcb0efea4.txt", "medical", {
        "model.name": "johnsnowlabs/JSL-MedLlama-3-8B-v1.0",
        "model.dtype": "bfloat16",
        "model.quantization": 4,
        "train.training-arguments.optim": "paged_adamw_8bit",
        "model.lora.use-dora": False,
        "model.lora.peft-lora-r": 8,
        "model.lora.peft-lora-alpha": 32,
        TARGETS: {"q_proj", "v_proj"},
        "train.training-arguments.per-device-train-batch-size": 16,
        "train.training-arguments.max-steps": 6,
        "train.training-arguments.num-train-epochs": 0,
        "train.training-arguments.warmup-steps": 2,
        "num-server-rounds": 100,  # Methodology's 100, not Experimental setup's 10 (see the recipe's notes)
        "strategy.fraction-train": 0.15,
        "train.training-arguments.lr-scheduler-type": "constant",
        "train.learning-rate-max": 1e-5,
        "train.learning-rate-min": 1e-6,
        "strategy.name": "fedprox",
        "num-supernodes": 20,
        "data.partitioner": "iid",
        "train.save-every-round": 4,
    }),
    "medical-aloe-beta-8b": ("002_39891a8073e6ee33.txt", "medical", {
        "model.name": "HPAI-BSC/Llama3.1-Aloe-Beta-8B",
        "model.trust-remote-code": False,  # a plain Llama: the submission's remote-code flag is not carried over
        "static.dataset.name": "flwrlabs/medical-meadow-medical-flashcards",
        "model.quantization": 4,
        "model.lora.use-dora": False,
        "model.lora.peft-lora-r": 32,
        "model.lora.peft-lora-alpha": 128,
        TARGETS: {"q_proj", "v_proj"},
        "num-server-rounds": 10,
        "strategy.name": "fedavg",
        "strategy.fraction-train": 0.1,
        "train.training-arguments.num-train-epochs": 3,
        "train.training-arguments.optim": "paged_adamw_8bit",
        "train.learning-rate-max": 1e-4,
        "train.learning-rate-min": 1e-5,
        "train.training-arguments.per-device-train-batch-size": 16,
        "train.training-arguments.gradient-accumulation-steps": 2,
        "num-supernodes": 20,
        "data.partitioner": "iid",
        "train.save-every-round": 5,
    }),
    "general-nlp-seven-models": ("003_c9213f9c20ac31bf.txt", "general-nlp", {
        "static.dataset.name": "vicgalle/alpaca-gpt4",
        "num-supernodes": 20,
        "data.partitioner": "iid",
        "strategy.fraction-train": 0.1,
        "num-server-rounds": 10,
        "model.name": "Qwen/Qwen2.5-7B-Instruct",
        "model.dtype": "bfloat16",
        "model.quantization": 4,
        "model.lora.use-dora": False,
        "model.lora.peft-lora-r": 32,
        "model.lora.peft-lora-alpha": 64,
        "train.training-arguments.per-device-train-batch-size": 8,
        "train.training-arguments.max-steps": 10,
        "train.learning-rate-max": 5e-5,
        "train.learning-rate-min": 1e-6,
        "train.training-arguments.lr-scheduler-type": "constant",
        "strategy.name": "fedavg",
        "train.save-every-round": 5,
    }),
    "code-phi4-mini-dora": ("004_f67d138d04e0b79a.txt", "code", {
        "model.name": "microsoft/Phi-4-mini-instruct",
        "static.dataset.name": "flwrlabs/code-alpaca-20k",
        "model.lora.use-dora": True,
        "model.dtype": "bfloat16",
        "model.quantization": 4,
        "train.training-arguments.optim": "paged_adamw_8bit",
        "model.lora.peft-lora-r": 16,
        "model.lora.peft-lora-alpha": 64,
        TARGETS: {"down_proj", "gate_up_proj", "o_proj", "qkv_proj"},
        "train.training-arguments.per-device-train-batch-size": 16,
        "train.training-arguments.max-steps": 10,
        "train.training-arguments.gradient-accumulation-steps": 1,
        "num-server-rounds": 10,
        "strategy.fraction-train": 0.2,
        "train.learning-rate-max": 5e-6,  # as written: max < min
        "train.learning-rate-min": 5e-5,
        "train.training-arguments.lr-scheduler-type": "constant",
        "strategy.name": "fedavg",
        "num-supernodes": 10,
        "data.partitioner": "iid",
        "train.save-every-round": 5,
    }),
}

SEVEN_MODELS = [
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-1.5B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "meta-llama/Llama-3.1-8B-Instruct",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "meta-llama/Llama-3.2-1B-Instruct",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
]


def one_line_error(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def write_recipe(tmp_path: Path, config: str, preset: str = "medical", name: str = "stale.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[recipe]\nsource = "test"\ntitle = "test"\npreset = "{preset}"\n\n[config]\n{config}\n')
    return path


def test_every_recipe_is_one_seed_and_every_shipped_file_is_registered():
    assert recipes().names() == sorted(README)
    assert sorted(p.stem for p in RECIPE_DIR.glob("*.toml")) == sorted(README)
    for name, (seed, preset, _) in README.items():
        r = get_recipe(name)
        assert (r.source, r.preset) == (seed, preset)
        assert r.title and r.notes, f"{name}: a recipe says what it is and how its README was read"


@pytest.mark.parametrize("name", sorted(README))
def test_recipe_reproduces_what_its_readme_states(name):
    _seed, preset, stated = README[name]
    cfg = resolve_cli(None, {}, OUT, recipe=name)
    flat = cfg.to_flat()
    assert cfg.run.preset == preset and cfg.run.recipe == name and cfg.run.preset_applied
    for k, want in stated.items():
        got = set(flat[k].split(",")) if k == TARGETS else flat[k]
        assert got == want, f"{name}: {k} is {got!r}, the README states {want!r}"
    # what the ServerApp resolves from the run-config `flowertune run` writes is the same config
    assert resolve(flat) == cfg


def test_fedprox_recipe_adds_a_proximal_term():
    """Seed 001 names FedProx without its mu; mu = 0 would silently be FedAvg."""
    cfg = resolve_cli(None, {}, OUT, recipe="medical-jsl-medllama3-8b-fedprox")
    assert cfg.strategy.name == "fedprox" and cfg.strategy.proximal_mu > 0


def test_seven_models_recipe_lists_the_readme_table_and_each_runs_by_model_name():
    r = get_recipe("general-nlp-seven-models")
    assert list(r.models) == SEVEN_MODELS
    cfg = resolve_cli(None, {"model.name": SEVEN_MODELS[5]}, OUT, recipe=r.name)
    assert cfg.model.name == "meta-llama/Llama-3.2-1B-Instruct" and cfg.adapter.r == 32


def test_learning_rate_min_above_max_is_reproduced_as_written():
    cfg = resolve_cli(None, {}, OUT, recipe="code-phi4-mini-dora")
    t = cfg.train
    assert (t.learning_rate_max, t.learning_rate_min) == (5e-6, 5e-5)
    lrs = [cosine_annealing(r, cfg.run.num_server_rounds, t.learning_rate_max, t.learning_rate_min)
           for r in range(1, cfg.run.num_server_rounds + 1)]
    assert lrs == sorted(lrs) and lrs[-1] == 5e-5 and math.isclose(lrs[0], 6.1012e-6, rel_tol=1e-4)


def test_local_epochs_recipe_runs_whole_passes():
    cfg = resolve_cli(None, {}, OUT, recipe="medical-aloe-beta-8b")
    # a client with 1528 training examples, 3 epochs, 16 x 2 examples per step
    assert round_steps(cfg.train, 1528) == math.ceil(1528 * 3 / 32) == 144


def test_recipe_beats_the_preset_even_with_a_value_equal_to_the_default():
    flat, sources = layer(None, {}, "medical-jsl-medllama3-8b-fedprox")
    cfg = from_flat(flat)
    # r=8 is also the default; the medical preset's 32 must not come back
    assert cfg.adapter.r == 8 and sources["model.lora.peft-lora-r"] == "recipe"
    assert cfg.adapter.dropout == 0.075 and sources["model.lora.peft-lora-dropout"] == "preset"
    assert sources["preset"] == "recipe" and sources["run.recipe"] == "recipe"
    assert sources["strategy.eta"] == "default"


def test_user_values_equal_to_the_default_beat_recipe_and_preset():
    overrides = parse_overrides(["model.lora.peft-lora-r=8 model.quantization=0",
                                 "train.training-arguments.num-train-epochs=0"])
    sources: dict = {}
    cfg = resolve_cli(None, overrides, OUT, sources, recipe="medical-aloe-beta-8b")  # recipe: r=32, 4-bit, 3 epochs
    assert cfg.adapter.r == 8 and cfg.model.quantization == 0 and cfg.train.num_train_epochs == 0
    assert cfg.adapter.alpha == 128 and cfg.train.grad_accum == 2  # unset: the recipe's
    assert cfg.model.gradient_checkpointing is True  # unset by recipe and user: the preset's
    assert sources["model.lora.peft-lora-r"] == "user" and sources["model.quantization"] == "user"
    assert sources["model.lora.peft-lora-alpha"] == "recipe" and sources["model.dtype"] == "preset"
    assert resolve(cfg.to_flat()) == cfg


def test_recipe_named_by_a_key_and_preset_given_by_the_user():
    # run.recipe in a --run-config file works like --recipe
    assert resolve_cli(None, {"run.recipe": "code-phi4-mini-dora"}, OUT).model.name == "microsoft/Phi-4-mini-instruct"
    # --preset replaces the recipe's preset; the recipe's keys still apply on top of it
    sources: dict = {}
    cfg = resolve_cli("finance", {}, OUT, sources, recipe="medical-aloe-beta-8b")
    assert cfg.run.preset == "finance" and sources["preset"] == "user"
    assert cfg.data.prompt_frame == "finance" and cfg.model.name == "HPAI-BSC/Llama3.1-Aloe-Beta-8B"


def test_dry_run_prints_where_each_value_came_from(capsys):
    sources: dict = {}
    cfg = resolve_cli(None, {"model.quantization": 0}, OUT, sources, recipe="code-phi4-mini-dora")
    print_config(cfg, sources)
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert lines["model.lora.use-dora"][-1] == "recipe"
    assert lines["model.quantization"][-1] == "user"
    assert lines["data.format"][-1] == "preset"
    assert lines["run.recipe"][1:] == ['"code-phi4-mini-dora"', "recipe"]


def test_plain_flwr_run_gets_a_recipe_through_presets_run_config():
    from flwr.common.config import parse_config_args

    with pytest.raises(ConfigError) as exc:
        resolve({**flat_defaults(), "run.recipe": "code-phi4-mini-dora"})
    assert "flowertune presets --recipe code-phi4-mini-dora" in one_line_error(exc)
    text = preset_run_config(None, {"model.lora.peft-lora-r": 8}, recipe="code-phi4-mini-dora")
    cfg = resolve({**flat_defaults(), **parse_config_args([text])})
    want = resolve_cli(None, {"model.lora.peft-lora-r": 8}, OUT, recipe="code-phi4-mini-dora")
    assert cfg.adapter.r == 8 and cfg.adapter.use_dora and cfg.run.recipe == "code-phi4-mini-dora"
    assert cfg.to_flat() == {**want.to_flat(), "run.output-dir": ""}


def test_bad_quantization_over_a_recipe_is_one_line_naming_the_fix():
    with pytest.raises(ConfigError) as exc:
        resolve_cli(None, {"model.quantization": 3}, OUT, recipe="medical-aloe-beta-8b")
    assert "model.quantization must be 0 (none), 4 (QLoRA NF4) or 8 bits (got 3)" in one_line_error(exc)


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        resolve_cli(None, {}, OUT, recipe="medical-llama-70b")
    msg = one_line_error(exc)
    assert "unknown recipe 'medical-llama-70b'" in msg and "flowertune recipes" in msg
    assert all(name in msg for name in README)
    with pytest.raises(ConfigError, match="does not exist"):
        get_recipe("/nonexistent/recipe.toml")


def test_recipe_with_a_key_that_no_longer_exists_names_file_key_and_fix(tmp_path):
    path = write_recipe(tmp_path, 'model.name = "x"\ntrain.learning-rate = 1e-4')
    for load in (lambda: load_recipe(path), lambda: layer(None, {}, str(path))):
        with pytest.raises(ConfigError) as exc:
            load()
        msg = one_line_error(exc)
        assert str(path) in msg and "'train.learning-rate'" in msg
        assert "did you mean" in msg and "rename it to its current name or remove it" in msg
        assert msg.index("rename it") < msg.index("valid keys")  # the fix is not buried after the key list


def test_recipe_file_with_bad_contents_names_the_file(tmp_path):
    cases = {
        "model.quantization = 3": "model.quantization must be 0",
        'preset = "code"': "name the preset as [recipe] preset",
        'model.lora.target-modules = ["q_proj", "v_proj"]': "one comma-separated string",
    }
    for i, (config, fix) in enumerate(cases.items()):
        path = write_recipe(tmp_path, config, name=f"bad{i}.toml")
        with pytest.raises(ConfigError) as exc:
            load_recipe(path)
        msg = one_line_error(exc)
        assert str(path) in msg and fix in msg, msg
    with pytest.raises(ConfigError) as exc:
        load_recipe(write_recipe(tmp_path, 'model.name = "x"', preset="legal", name="legal.toml"))
    assert "preset='legal' is not a preset; choose one of:" in one_line_error(exc)
    broken = tmp_path / "broken.toml"
    broken.write_text("[recipe\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(broken)
    assert "cannot be read as TOML" in one_line_error(exc)


def test_a_recipe_file_path_runs_and_is_recorded_absolute(tmp_path):
    path = write_recipe(tmp_path, 'model.lora.peft-lora-r = 4\ntrain.training-arguments.lr-scheduler-type = "cosine"')
    cfg = resolve_cli(None, {}, OUT, recipe=str(path))
    assert cfg.adapter.r == 4 and cfg.train.lr_scheduler_type == "cosine" and cfg.run.preset == "medical"
    assert cfg.run.recipe == str(path.absolute())


def test_recipes_command_lists_and_shows(capsys):
    from flowertune.cli import COMMANDS, build_parser
    from flowertune.commands.recipes import handle

    assert "recipes" in COMMANDS
    assert build_parser().parse_args(["run", "--recipe", "code-phi4-mini-dora", "--dry-run"]).recipe == \
        "code-phi4-mini-dora"
    assert handle(argparse.Namespace(name=None)) == 0
    listing = capsys.readouterr().out
    for name, (seed, _preset, _) in README.items():
        assert any(line.startswith(name) and seed in line for line in listing.splitlines())
    assert handle(argparse.Namespace(name="general-nlp-seven-models")) == 0
    shown = capsys.readouterr().out
    assert all(m in shown for m in SEVEN_MODELS) and 'model.name = "Qwen/Qwen2.5-7B-Instruct"' in shown
    assert handle(argparse.Namespace(name="nope")) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_recipes_ship_as_package_data():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "recipes/*.toml" in data["flowertune"]

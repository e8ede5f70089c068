import re

import pytest
import tomllib
from flwr.common.config import flatten_dict

from flowertune.config import ConfigError, flat_defaults, from_flat, pyproject_section, resolve
from flowertune.layering import layer
from flowertune.presets import PRESETS
from tests.conftest import REPO


def pyproject_config() -> dict:
    return flatten_dict(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])


def test_pyproject_holds_exactly_the_defaults():
    assert pyproject_config() == flat_defaults()
    assert pyproject_section() in (REPO / "pyproject.toml").read_text()


def test_static_dataset_section_is_where_the_leaderboard_expects_it():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert cfg["static"]["dataset"]["name"] == "sample:medical"


def test_unknown_key_is_rejected_with_suggestion_and_valid_keys():
    with pytest.raises(ConfigError) as exc:
        resolve({**flat_defaults(), "train.learning-rate-mx": 1e-4})
    msg = str(exc.value)
    assert "train.learning-rate-mx" in msg and "train.learning-rate-max" in msg and "Valid keys" in msg


def test_wrong_type_and_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="num-server-rounds"):
        from_flat({"num-server-rounds": "many"})
    with pytest.raises(ConfigError, match="model.quantization"):
        from_flat({"model.quantization": 3})
    with pytest.raises(ConfigError, match="strategy.name.*fedavg"):
        from_flat({"strategy.name": "fedsgd"})
    with pytest.raises(ConfigError, match="absolute"):
        from_flat({"run.output-dir": "relative/dir"})


def test_preset_layers_under_every_user_key_whatever_its_value():
    med = from_flat(layer("medical", {})[0])
    assert med.model.quantization == 4 and med.run.num_supernodes == 20
    assert med.data.name == "flwrlabs/medical-meadow-medical-flashcards"
    assert med.strategy.fraction_train == 0.1
    # seed 001's r=8 under the medical preset; 8 is also the default and must still win over the preset's 32
    flat, sources = layer("medical", {"model.lora.peft-lora-r": 8, "model.quantization": 0})
    mine = from_flat(flat)
    assert mine.adapter.r == 8 and mine.model.quantization == 0 and mine.adapter.alpha == 64
    assert sources["model.lora.peft-lora-r"] == "user" and sources["model.lora.peft-lora-alpha"] == "preset"
    assert sources["strategy.name"] == "default"


def test_preset_applied_values_are_final():
    # what `flowertune run --preset medical model.quantization=0` sends: 0 stays although it is the default
    flat = from_flat(layer("medical", {"model.quantization": 0})[0]).to_flat()
    assert flat["run.preset-applied"] is True
    assert resolve(flat).model.quantization == 0


def test_plain_flwr_run_with_a_preset_must_apply_it_explicitly():
    """Flower merges the pyproject defaults with the overrides, so the app cannot see what the user set."""
    from flwr.common.config import parse_config_args

    from flowertune.layering import preset_run_config

    with pytest.raises(ConfigError, match="flowertune presets --run-config medical"):
        resolve({**flat_defaults(), "preset": "medical", "model.lora.peft-lora-r": 8})
    # the documented way: flowertune layers preset + user keys into one --run-config text, parsed by Flower
    text = preset_run_config("medical", {"model.lora.peft-lora-r": 8})
    merged = {**flat_defaults(), **parse_config_args([text])}
    cfg = resolve(merged)
    assert cfg.adapter.r == 8 and cfg.adapter.alpha == 64 and cfg.model.quantization == 4
    assert resolve({**flat_defaults(), "num-server-rounds": 5}).run.num_server_rounds == 5  # quickstart: as is


def test_every_preset_resolves_and_leaderboard_sizes_match():
    sizes = {"medical": 20, "finance": 50, "code": 10, "general-nlp": 20, "quickstart": 4}
    for name in PRESETS.names():
        cfg = from_flat(layer(name, {})[0])
        assert cfg.run.num_supernodes == sizes[name]
    assert from_flat(layer("code", {})[0]).strategy.fraction_train == 0.2


def test_unknown_preset_lists_presets():
    with pytest.raises(KeyError, match="quickstart"):
        layer("legal", {})
    with pytest.raises(ConfigError, match="quickstart"):
        resolve({**flat_defaults(), "preset": "legal"})


def test_flat_round_trip():
    cfg = from_flat({"model.lora.use-dora": True, "train.seq-length": 128})
    assert from_flat(cfg.to_flat()) == cfg


def test_cli_user_values_equal_to_the_default_beat_the_preset():
    """The bug of issue 11: a value the user sets wins even when it equals the default."""
    from flowertune.commands.run import parse_overrides, resolve_cli

    overrides = parse_overrides(["model.name=embedded model.quantization=0 train.training-arguments.optim=adamw_torch",
                                 "model.lora.peft-lora-r=8"])
    cfg = resolve_cli("finance", overrides, "/tmp/flowertune-test-run")
    assert (cfg.model.name, cfg.model.quantization, cfg.train.optim) == ("embedded", 0, "adamw_torch")
    assert cfg.adapter.r == 8 and cfg.run.preset == "finance"
    assert cfg.data.name == "flwrlabs/fingpt-sentiment-train" and cfg.data.prompt_frame == "finance"  # unset: preset
    assert cfg.run.output_dir == "/tmp/flowertune-test-run" and cfg.run.preset_applied
    sources: dict = {}
    resolve_cli("finance", overrides, None, sources)
    assert sources["model.quantization"] == "user" and sources["model.dtype"] == "preset"
    # what the ServerApp resolves from the run-config the CLI writes is the same config
    assert resolve(cfg.to_flat()) == cfg
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_cli("finance", {"model.nam": "x"}, None)


def test_toml_file_value_equal_to_the_default_beats_the_preset(tmp_path):
    from flowertune.commands.run import parse_overrides, resolve_cli

    path = tmp_path / "mine.toml"
    path.write_text("[model.lora]\npeft-lora-r = 8\n[model]\nquantization = 0\n")
    cfg = resolve_cli("medical", parse_overrides([str(path)]), None)
    assert cfg.adapter.r == 8 and cfg.model.quantization == 0 and cfg.adapter.alpha == 64


def test_dry_run_prints_each_value_with_its_source(capsys):
    from flowertune.cli import main

    assert main(["run", "--preset", "medical", "--dry-run", "model.lora.peft-lora-r=8"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["model.lora.peft-lora-r"][1:] == ["8", "user"]
    assert lines["model.lora.peft-lora-alpha"][1:] == ["64", "preset"]
    assert lines["strategy.name"][1:] == ['"fedavg"', "default"]  # the issue asked for a visible source for defaults


def test_a_toml_override_file_is_flattened_and_a_non_scalar_value_is_refused(tmp_path):
    from flowertune.commands.run import parse_overrides

    good = tmp_path / "good.toml"
    good.write_text('[model.lora]\npeft-lora-r = 16\n[strategy]\nname = "fedprox"\n')
    assert parse_overrides([str(good)]) == {"model.lora.peft-lora-r": 16, "strategy.name": "fedprox"}
    bad = tmp_path / "bad.toml"
    bad.write_text('[model.lora]\ntarget-modules = ["q_proj", "v_proj"]\n')
    with pytest.raises(ConfigError, match="model.lora.target-modules: a config value is a number, a boolean or a string"):
        parse_overrides([str(bad)])


def test_federation_sizes_and_an_empty_model_name_are_refused_at_resolution():
    for flat, problem in [({"num-supernodes": 0}, "num-supernodes must be >= 1 (got 0)"),
                          ({"num-supernodes": -3}, "num-supernodes must be >= 1 (got -3)"),
                          ({"strategy.min-available-nodes": 0}, "strategy.min-available-nodes must be >= 1"),
                          ({"strategy.min-train-nodes": 0}, "strategy.min-train-nodes must be >= 1"),
                          ({"model.name": " "}, "model.name is empty")]:
        with pytest.raises(ConfigError, match=re.escape(problem)):
            from_flat(flat)
    assert from_flat({"num-supernodes": 1, "strategy.min-available-nodes": 1}).run.num_supernodes == 1


def test_a_simulation_that_waits_for_more_nodes_than_it_has_is_refused_before_start(capsys, tmp_path):
    from flowertune.cli import main

    out = tmp_path / "run"
    assert main(["run", "--num-supernodes", "3", "--out", str(out), "strategy.min-available-nodes=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "strategy.min-available-nodes=4 is more than the 3 simulated SuperNodes" in err[0]
    assert main(["run", "--num-supernodes", "0", "--out", str(out)]) == 2
    assert "num-supernodes must be >= 1 (got 0)" in capsys.readouterr().err
    assert not out.exists()

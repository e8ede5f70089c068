import pytest
import tomllib
from flwr.common.config import flatten_dict

from flowertune.config import ConfigError, flat_defaults, from_flat, pyproject_section, resolve
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


def test_preset_layers_under_explicit_values():
    base = flat_defaults()
    med = resolve({**base, "preset": "medical"})
    assert med.model.quantization == 4 and med.run.num_supernodes == 20
    assert med.data.name == "flwrlabs/medical-meadow-medical-flashcards"
    assert med.strategy.fraction_train == 0.1
    mine = resolve({**base, "preset": "medical", "model.lora.peft-lora-r": 16})
    assert mine.adapter.r == 16 and mine.model.quantization == 4


def test_preset_applied_values_are_final():
    # `flowertune run --preset medical model.quantization=0` must keep 0 even though 0 is the default
    flat = resolve({**flat_defaults(), "preset": "medical"}).to_flat()
    flat.update({"model.quantization": 0, "run.preset-applied": True})
    assert resolve(flat).model.quantization == 0


def test_every_preset_resolves_and_leaderboard_sizes_match():
    sizes = {"medical": 20, "finance": 50, "code": 10, "general-nlp": 20, "quickstart": 4}
    for name in PRESETS.names():
        cfg = resolve({**flat_defaults(), "preset": name})
        assert cfg.run.num_supernodes == sizes[name]
    assert resolve({**flat_defaults(), "preset": "code"}).strategy.fraction_train == 0.2


def test_unknown_preset_lists_presets():
    with pytest.raises(KeyError, match="quickstart"):
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
    # what the ServerApp resolves from the run-config the CLI writes is the same config
    assert resolve(cfg.to_flat()) == cfg
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_cli("finance", {"model.nam": "x"}, None)

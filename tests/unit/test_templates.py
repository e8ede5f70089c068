"""A FlowerTune template's pyproject.toml as it is: ``flowertune run -c pyproject.toml`` (four challenge apps
and the older ``flwr new`` form), and steps versus epochs resolved as the template's trainer does."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from flowertune.cli import main
from flowertune.commands.run import parse_overrides, resolve_cli
from flowertune.train.schedule import round_steps

TEMPLATES = Path(__file__).parent / "templates"
CHALLENGES = {  # challenge: (dataset, nodes the leaderboard requires, fraction-train)
    "general-nlp": ("flwrlabs/alpaca-gpt4", 20, 0.1),
    "finance": ("flwrlabs/fingpt-sentiment-train", 50, 0.1),
    "medical": ("flwrlabs/medical-meadow-medical-flashcards", 20, 0.1),
    "code": ("flwrlabs/code-alpaca-20k", 10, 0.2),
}
IGNORED = ("output-dir", "learning-rate", "logging-steps", "save-steps", "save-total-limit")


def dry_run(*argv: str) -> dict[str, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["run", "--dry-run", *argv]) == 0
    return {line.split()[0]: line.split()[1] for line in buf.getvalue().splitlines() if len(line.split()) > 1}


@pytest.mark.parametrize("template", ["general-nlp", "finance", "medical", "code", "flwr-new-finance"])
def test_a_challenge_template_runs_as_it_is(template, caplog):
    challenge = template.removeprefix("flwr-new-")
    dataset, nodes, fraction = CHALLENGES[challenge]
    with caplog.at_level(logging.WARNING):
        got = dry_run("-c", str(TEMPLATES / f"{template}.toml"))
    assert got["preset"] == f'"{challenge}"' and got["static.dataset.name"] == f'"{dataset}"'
    assert got["num-supernodes"] == str(nodes) and float(got["strategy.fraction-train"]) == fraction
    assert got["model.name"] == '"mistralai/Mistral-7B-v0.3"' and got["model.quantization"] == "4"
    assert (got["model.lora.peft-lora-r"], got["model.lora.peft-lora-alpha"]) == ("32", "64")
    assert float(got["train.learning-rate-max"]) == 5e-5 and float(got["train.learning-rate-min"]) == 1e-6
    assert got["train.training-arguments.per-device-train-batch-size"] == "16"
    assert got["model.gradient-checkpointing"] == "true" and got["num-server-rounds"] == "200"
    assert float(got["strategy.fraction-evaluate"]) == 0.0
    # both set in the template: max-steps wins, as in the transformers trainer the template runs
    assert got["train.training-arguments.max-steps"] == "10" and got["train.training-arguments.num-train-epochs"] == "0"
    messages = [r.getMessage() for r in caplog.records]
    for key in IGNORED:
        assert sum(f"train.training-arguments.{key} ignored" in m for m in messages) == 1, (key, messages)
    assert sum("max-steps wins" in m for m in messages) == 1


def test_the_template_trains_max_steps_optimizer_steps_not_three_epochs(tmp_path):
    cfg = resolve_cli(None, parse_overrides([str(TEMPLATES / "medical.toml")]), str(tmp_path / "r"))
    assert round_steps(cfg.train, n_examples=3000) == 10  # three epochs of 3000 at 16 would be 563


def test_steps_versus_epochs_across_layers(tmp_path):
    def steps(recipe=None, **user) -> tuple[int, int]:
        cfg = resolve_cli(None, {k.replace("__", "."): v for k, v in user.items()}, str(tmp_path / "r"), recipe=recipe)
        return cfg.train.max_steps, round_steps(cfg.train, n_examples=320)

    # the recipe's 3 epochs over its preset's max-steps: epochs (3 * 320 / (16 * 2) = 30 steps)
    assert steps("medical-aloe-beta-8b") == (0, 30)
    # the user's max-steps over the recipe's epochs: the README's own example
    assert steps("medical-aloe-beta-8b", **{"train.training-arguments.max-steps": 20}) == (20, 20)
    # the user's epochs over the defaults' max-steps
    assert steps(**{"train.training-arguments.num-train-epochs": 2}) == (0, 2 * 320 // 4)


def test_a_missing_or_broken_file_is_one_line(tmp_path, capsys):
    assert main(["run", "--dry-run", "-c", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[tool.flwr.app]\npublisher = 'x'\n")
    assert main(["run", "--dry-run", "-c", str(bad)]) == 2
    assert "no [tool.flwr.app.config] table" in capsys.readouterr().err

"""The client mode is decided, not sniffed: ``flowertune run`` resolves ``run.client-worker=auto`` from the
runtime it launches (deployment: a resident worker; simulation: in process), and a SuperNode's node config
overrides the run's choice for that node."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

from flowertune.cli import main
from flowertune.client_app import uses_worker
from flowertune.config import Config, ConfigError, from_flat


def dry_run(*argv: str) -> dict[str, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["run", "--dry-run", *argv]) == 0
    return {line.split()[0]: line for line in buf.getvalue().splitlines() if line.strip()}


@pytest.mark.parametrize(("argv", "mode", "why"), [
    ((), '"off"', "simulation"), (("--superlink", "127.0.0.1:9093"), '"on"', "deployment")])
def test_flowertune_run_decides_auto_from_the_runtime(argv, mode, why):
    line = dry_run(*argv)["run.client-worker"]
    assert mode in line and f"flowertune run ({why})" in line


def test_an_explicit_choice_is_kept():
    assert '"off"' in dry_run("--superlink", "127.0.0.1:9093", "run.client-worker=off")["run.client-worker"]


def cfg(mode: str) -> Config:
    return from_flat({**Config().to_flat(), "run.client-worker": mode})


@pytest.mark.parametrize(("run_mode", "node_config", "worker"), [
    ("on", {}, True), ("off", {}, False), ("auto", {}, False),  # auto reaching a client (plain `flwr run`): in process
    ("off", {"client-worker": "on"}, True), ("on", {"client-worker": "off"}, False),
])
def test_the_node_config_overrides_the_run(run_mode, node_config, worker):
    assert uses_worker(cfg(run_mode), {"partition-id": 0, **node_config}) is worker


def test_a_wrong_node_config_value_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="client-worker='yes'.*on or off"):
        uses_worker(cfg("on"), {"client-worker": "yes"})

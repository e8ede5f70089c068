"""Flower's side of a launch: the app directory, the ``flwr`` environment, the run config file, the command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from flowertune.config import Config, pyproject_section, toml_value
from flowertune.home import flowertune_home


def app_dir() -> Path:
    """A Flower app directory for ``flwr run``: the source checkout, or a generated one for wheels."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and "[tool.flwr.app]" in (repo / "pyproject.toml").read_text():
        return repo
    d = flowertune_home() / "app"
    d.mkdir(parents=True, exist_ok=True)
    (d / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "flowertune-app"\nversion = "0.1.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "flowertune"\n\n[tool.flwr.app.components]\n'
        'serverapp = "flowertune.server_app:app"\nclientapp = "flowertune.client_app:app"\n\n'
        + pyproject_section()
    )
    return d


def flwr_env() -> dict[str, str]:
    """Environment for ``flwr``: our own FLWR_HOME, this Python's tools first on PATH, no runtime dependency installation."""
    env = dict(os.environ)
    # flwr starts flower-superlink/flwr-serverapp by name: find ours even when the venv is not activated
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("FLWR_HOME", str(flowertune_home() / "flwr"))
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    return env


def write_run_config(cfg: Config, directory: Path) -> Path:
    """The resolved config as a TOML file for ``flwr run --run-config``."""
    path = directory / "run-config.toml"
    path.write_text("".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in cfg.to_flat().items()))
    return path


def flwr_command(cfg: Config, run_config: Path, num_supernodes: int, superlink: str | None) -> list[str]:
    """The ``flwr run`` command line."""
    flwr = str(Path(sys.executable).with_name("flwr"))
    cmd = [flwr, "run", str(app_dir())]
    if superlink:
        cmd.append(superlink)
    cmd += ["--run-config", str(run_config), "--stream"]
    if not superlink:
        cmd += ["--federation-config", f"num-supernodes={num_supernodes}"]
    return cmd

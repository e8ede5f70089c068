"""A managed local SuperLink left by another (or a deleted) Python environment is caught before a simulation."""

from pathlib import Path

import pytest

from flowertune.config import ConfigError
from flowertune.launch import managed_superlink as ms


def superlink(pid: int, venv: str, port: str = "39091") -> ms.Process:
    return ms.Process(pid, (f"{venv}/bin/python", f"{venv}/bin/flower-superlink", "--insecure", "--simulation",
                            "--isolation", "subprocess", "--port", port, "--database", "/h/flwr/state.db"))


OTHER = (ms.Process(7, ("/usr/bin/python3", "-m", "http.server")),
         ms.Process(8, ("/x/bin/python", "/x/bin/flower-superlink", "--insecure", "--port", "9092")))  # deployment


def test_this_environments_superlink_and_other_ports_are_left_alone():
    procs = [superlink(10, "/me/.venv"), superlink(11, "/old/.venv", port="40001"), *OTHER]
    assert ms.decide(procs, "39091", Path("/me/.venv/bin"), exists=lambda p: True) == ([], None)


def test_a_superlink_whose_environment_is_gone_is_stopped():
    procs = [superlink(12, "/tmp/deleted/.venv"), *OTHER]
    assert ms.decide(procs, "39091", Path("/me/.venv/bin"), exists=lambda p: False) == ([12], None)


def test_another_live_environments_superlink_is_a_one_line_error_with_the_fix():
    stop, error = ms.decide([superlink(13, "/other/.venv")], "39091", Path("/me/.venv/bin"), exists=lambda p: True)
    assert stop == [] and "pid 13" in error and "/other/.venv" in error and "kill 13" in error
    assert "\n" not in error


def test_check_refuses_a_live_other_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    other = tmp_path / "other/.venv"
    (other / "bin").mkdir(parents=True)
    (other / "bin" / "flower-superlink").write_text("")  # that environment exists
    monkeypatch.setattr(ms, "processes", lambda: [superlink(999_999_999, str(other))])
    with pytest.raises(ConfigError, match="pid 999999999"):
        ms.check({"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39091"}, Path("/me/.venv/bin"))
    assert ms.check({"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "1"}, Path("/me/.venv/bin")) == []


def test_processes_lists_this_one():
    import os
    import sys

    me = [p for p in ms.processes() if p.pid == os.getpid()]
    assert len(me) == 1 and Path(me[0].args[0]).name == Path(sys.executable).name and "pytest" in me[0].args

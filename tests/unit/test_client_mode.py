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


# --superlink to another machine: TLS or an explicit --insecure, refused before any connection


def run_error(*argv: str, capsys) -> tuple[int, str]:
    code = main(["run", "--dry-run", *argv])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("address", ["superlink.invalid:8000", "10.0.0.7:8000", "[2001:db8::1]:8000"])
def test_a_remote_superlink_without_tls_is_refused(address, capsys, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    code, err = run_error("--superlink", address, capsys=capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert address in err and "--root-certificates" in err and "--insecure" in err
    assert '"on"' in dry_run("--superlink", address, "--insecure")["run.client-worker"]  # the explicit opt-in


@pytest.mark.parametrize("address", ["127.0.0.1:8000", "localhost:8000", "127.8.9.1:8000", "[::1]:8000"])
def test_loopback_needs_no_tls(address):
    assert '"on"' in dry_run("--superlink", address)["run.client-worker"]


def test_insecure_is_refused_where_it_means_nothing(capsys, tmp_path):
    code, err = run_error("--insecure", capsys=capsys)
    assert code == 2 and "--insecure only applies to --superlink" in err
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    code, err = run_error("--superlink", "10.0.0.7:8000", "--insecure", "--root-certificates", str(ca), capsys=capsys)
    assert code == 2 and "not both" in err


def test_register_checks_its_inputs_before_connecting(tmp_path, capsys):
    from flowertune.commands.certs import make_node_key

    key, _ = make_node_key(tmp_path / "node")
    assert main(["register", str(key.with_suffix(".pub")), "--superlink", "superlink.invalid:8000"]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert main(["register", str(key), "--superlink", "127.0.0.1:8000"]) == 2  # the private key by mistake
    assert "is a private key" in capsys.readouterr().err
    assert main(["register", str(tmp_path / "nope.pub"), "--superlink", "127.0.0.1:8000"]) == 2
    assert "certs --node" in capsys.readouterr().err
    assert not (tmp_path / "flwr").exists()


def test_certs_keeps_a_directory_others_can_enter_as_it_is(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert main(["certs", "--node", str(shared)]) == 2
    assert "can be entered by other users" in capsys.readouterr().err
    assert (shared.stat().st_mode & 0o777) == 0o755 and list(shared.iterdir()) == []
    fresh = tmp_path / "a" / "b"
    assert main(["certs", "--node", str(fresh)]) == 0
    assert (fresh.stat().st_mode & 0o777) == 0o700

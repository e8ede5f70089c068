"""flowertune's SuperLink connections in ``$FLWR_HOME/config.toml`` (insecure, or TLS with a CA certificate)."""

from __future__ import annotations

import json
from pathlib import Path

from flowertune.config import ConfigError


def connection_name(address: str, root_certificates: str | None) -> str:
    """The name of flowertune's SuperLink connection for ``address`` (TLS and insecure ones differ)."""
    return ("flowertune-tls-" if root_certificates else "flowertune-") + address.replace(":", "-").replace(".", "-")


def ensure_connection(name: str, address: str, env: dict[str, str], root_certificates: str | None = None) -> None:
    """Add a SuperLink connection ``name`` to ``$FLWR_HOME/config.toml`` if missing: TLS with the CA
    certificate ``root_certificates``, else insecure."""
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "config.toml"
    text = cfg.read_text() if cfg.exists() else '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    if f"[superlink.{name}]" not in text:
        security = (f"root-certificates = {json.dumps(str(Path(root_certificates).absolute()))}\n" if root_certificates
                    else "insecure = true\n")
        text += f'\n[superlink.{name}]\naddress = "{address}"\n{security}'
        cfg.write_text(text)


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names this machine (localhost, 127.0.0.0/8, ::1)."""
    import ipaddress

    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(superlink: str | None, root_certificates: str | None, insecure: bool) -> None:
    """Before anything connects: TLS to any SuperLink that is not on this machine, unless ``--insecure``."""
    if root_certificates and not (superlink and Path(root_certificates).is_file()):
        raise ConfigError(f"--root-certificates {root_certificates}: needs --superlink and an existing CA "
                          "certificate file (make one with `flowertune certs DIR`)")
    if insecure and not superlink:
        raise ConfigError("--insecure only applies to --superlink (deployment)")
    if insecure and root_certificates:
        raise ConfigError("give --root-certificates (TLS) or --insecure, not both")
    if superlink and not root_certificates and not insecure and not is_loopback(superlink):
        raise ConfigError(f"--superlink {superlink} is not on this machine and no --root-certificates was given: "
                          "what is sent to it (run config, adapters, metrics) would cross the network unencrypted; give the "
                          "SuperLink's CA (`flowertune certs`) or pass --insecure to accept that")

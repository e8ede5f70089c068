"""flowertune's SuperLink connections in ``$FLWR_HOME/config.toml`` (insecure, or TLS with a CA certificate)."""

from __future__ import annotations

import json
from pathlib import Path


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

"""``flowertune register``: allow SuperNodes into a SuperLink that runs with ``--enable-supernode-auth``.

Registers each public key (``flowertune certs`` makes them) through Flower's own
``flwr supernode register``, over the same connection ``flowertune run --superlink`` uses. A SuperNode
whose key is not registered is refused by the SuperLink.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from flowertune.config import ConfigError
from flowertune.launch.connections import check_transport, connection_name, ensure_connection
from flowertune.launch.flwr import flwr_env


def handle(args: argparse.Namespace) -> int:
    for key in args.public_keys:  # every input, before anything connects
        if not Path(key).is_file():
            print(f"flowertune register: {key} does not exist; a node makes its key pair with "
                  "`flowertune certs --node DIR`", file=sys.stderr)
            return 2
        if "PRIVATE KEY" in Path(key).read_text(errors="replace"):
            print(f"flowertune register: {key} is a private key; register the node's .pub file (and keep the "
                  "private key on the node)", file=sys.stderr)
            return 2
    try:
        check_transport(args.superlink, args.root_certificates, args.insecure)
    except ConfigError as e:
        print(f"flowertune register: {e}", file=sys.stderr)
        return 2
    env = flwr_env()
    name = connection_name(args.superlink, args.root_certificates)
    ensure_connection(name, args.superlink, env, args.root_certificates)
    flwr = str(Path(sys.executable).with_name("flwr"))
    for key in args.public_keys:
        proc = subprocess.run([flwr, "supernode", "register", str(Path(key).absolute()), name], env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"flowertune register: {key}: {(proc.stdout + proc.stderr).strip()[-500:]}", file=sys.stderr)
            return proc.returncode
        print(f"{key}: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else 'registered'}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("register", help="register SuperNode public keys with an authenticating SuperLink",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("public_keys", nargs="+", help="SuperNode public keys (.pub, from `flowertune certs --node`)")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink (as for `flowertune run`)")
    p.add_argument("--root-certificates", metavar="CA_CRT", help="CA certificate of a TLS SuperLink")
    p.add_argument("--insecure", action="store_true", help="a SuperLink on another machine without TLS (refused otherwise)")
    p.set_defaults(func=handle)

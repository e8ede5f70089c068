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

from flowertune.launch.connections import connection_name, ensure_connection
from flowertune.launch.flwr import flwr_env


def handle(args: argparse.Namespace) -> int:
    env = flwr_env()
    name = connection_name(args.superlink, args.root_certificates)
    ensure_connection(name, args.superlink, env, args.root_certificates)
    flwr = str(Path(sys.executable).with_name("flwr"))
    for key in args.public_keys:
        if not Path(key).is_file():
            print(f"flowertune register: {key} does not exist; make key pairs with `flowertune certs DIR`",
                  file=sys.stderr)
            return 2
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
    p.add_argument("public_keys", nargs="+", help="supernode-<i>.pub files")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink (as for `flowertune run`)")
    p.add_argument("--root-certificates", metavar="CA_CRT", help="CA certificate of a TLS SuperLink")
    p.set_defaults(func=handle)

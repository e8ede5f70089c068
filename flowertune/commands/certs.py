"""``flowertune certs DIR``: what a secure deployment needs, made with the ``cryptography`` library.

* ``ca.crt`` / ``ca.key``: a private certificate authority (keep ``ca.key`` off the nodes);
* ``superlink.crt`` / ``superlink.key``: the SuperLink's TLS certificate, valid for ``--host`` names/IPs;
* ``supernode-<i>.key`` / ``supernode-<i>.pub``: one P-384 key pair per SuperNode, for Flower's SuperNode
  authentication (``flower-supernode --auth-supernode-private-key``; the ``.pub`` is registered with
  ``flwr supernode register``).

Private keys are written 0600. Then, e.g. on loopback::

    flower-superlink --ssl-ca-certfile DIR/ca.crt --ssl-certfile DIR/superlink.crt --ssl-keyfile DIR/superlink.key \\
        --enable-supernode-auth
    flowertune run --superlink 127.0.0.1:9093 --root-certificates DIR/ca.crt --register-supernodes DIR ...
    flower-supernode --root-certificates DIR/ca.crt --superlink 127.0.0.1:9092 \\
        --auth-supernode-private-key DIR/supernode-0.key --node-config "partition-id=0 num-partitions=2"
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any


def _write(path: Path, data: bytes, private: bool) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certs(out: Path, hosts: list[str], supernodes: int, days: int = 365) -> list[Path]:
    """Write the CA, the SuperLink certificate and ``supernodes`` SuperNode key pairs into ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    pem = serialization.Encoding.PEM

    def private_bytes(key: Any) -> bytes:
        return key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowertune CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA384()))
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA384()))
    written = [out / "ca.crt", out / "ca.key", out / "superlink.crt", out / "superlink.key"]
    _write(written[0], ca.public_bytes(pem), private=False)
    _write(written[1], private_bytes(ca_key), private=True)
    _write(written[2], cert.public_bytes(pem), private=False)
    _write(written[3], private_bytes(key), private=True)
    for i in range(supernodes):
        node_key = ec.generate_private_key(ec.SECP384R1())
        # OpenSSH formats, as Flower reads them (what `ssh-keygen -t ecdsa -b 384` writes)
        ssh = serialization.Encoding.OpenSSH
        pub = node_key.public_key().public_bytes(ssh, serialization.PublicFormat.OpenSSH) + b"\n"
        private = node_key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        _write(out / f"supernode-{i}.key", private, private=True)
        _write(out / f"supernode-{i}.pub", pub, private=False)
        written += [out / f"supernode-{i}.key", out / f"supernode-{i}.pub"]
    return written


def handle(args: argparse.Namespace) -> int:
    hosts = [h for h in args.host.split(",") if h]
    files = make_certs(Path(args.out).absolute(), hosts, args.supernodes, args.days)
    for f in files:
        print(f)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("certs", help="TLS certificates and SuperNode key pairs for a secure deployment",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="directory to write into")
    p.add_argument("--host", default="127.0.0.1,localhost",
                   help="comma-separated names/IPs the SuperLink certificate is valid for")
    p.add_argument("--supernodes", type=int, default=2, help="SuperNode key pairs to make")
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=handle)

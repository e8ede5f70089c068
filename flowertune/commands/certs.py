"""``flowertune certs DIR``: what a secure deployment needs, made with the ``cryptography`` library.

* ``ca.crt`` / ``ca.key``: a private certificate authority (keep ``ca.key`` off the nodes);
* ``superlink.crt`` / ``superlink.key``: the SuperLink's TLS certificate, valid for ``--host`` names/IPs;
* ``supernode-<i>.key`` / ``supernode-<i>.pub`` (``--supernodes N``, default 0): SuperNode key pairs made
  here, for a test federation on one machine. Across organisations, each node makes its own instead:
  ``flowertune certs --node DIR`` on the node writes ``supernode.key`` there (it never leaves) and prints the
  public key, which the federation's operator registers (``flowertune register``).

The directory is made 0700 and private keys are written 0600. An existing CA (or node key) is never
replaced unless ``--force`` is given: every certificate it signed would stop working. Then, e.g. on
loopback (Flower 1.42 serves the Fleet, Control and Runtime APIs on one port, default 8000)::

    flower-superlink --ssl-ca-certfile DIR/ca.crt --ssl-certfile DIR/superlink.crt \\
        --ssl-keyfile DIR/superlink.key --enable-supernode-auth --port 8000
    flowertune register NODE_DIR/supernode.pub --superlink 127.0.0.1:8000 --root-certificates DIR/ca.crt
    flower-supernode --root-certificates DIR/ca.crt --superlink 127.0.0.1:8000 --port 9094 \\
        --auth-supernode-private-key NODE_DIR/supernode.key --node-config "partition-id=0 num-partitions=2"
    flowertune run --superlink 127.0.0.1:8000 --root-certificates DIR/ca.crt
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from flowertune.config import ConfigError


def _write(path: Path, data: bytes, private: bool) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _private_out(out: Path, keep: list[str], force: bool, what: str) -> None:
    """``out`` as a 0700 directory of ours, refusing to overwrite ``keep`` files without ``force``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory; give a directory to write into")
    existing = [name for name in keep if (out / name).exists()]
    if existing and not force:
        raise ConfigError(f"{out} already holds {what} ({', '.join(existing)}); pass --force to replace it (whatever "
                          "it signed or registered stops working) or choose another directory")
    if out.exists():
        st = out.stat()
        if st.st_uid != os.getuid():
            raise ConfigError(f"{out} belongs to another user; choose a directory of yours")
        if st.st_mode & 0o077:
            raise ConfigError(f"{out} can be entered by other users (mode {oct(st.st_mode & 0o777)}); give a new "
                              f"directory, or make this one private first (chmod 700 {out})")
        return
    out.mkdir(parents=True, mode=0o700)
    out.chmod(0o700)  # whatever the umask


def _node_pair() -> tuple[bytes, bytes]:
    """A P-384 key pair in the OpenSSH formats Flower reads (what ``ssh-keygen -t ecdsa -b 384`` writes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    ssh = serialization.Encoding.OpenSSH
    pub = key.public_key().public_bytes(ssh, serialization.PublicFormat.OpenSSH) + b"\n"
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return private, pub


def make_node_key(out: Path, force: bool = False) -> tuple[Path, str]:
    """On a SuperNode: ``out/supernode.key`` (0600, stays here) and ``.pub``; returns (key path, public key)."""
    _private_out(out, ["supernode.key"], force, "a SuperNode key")
    private, pub = _node_pair()
    _write(out / "supernode.key", private, private=True)
    _write(out / "supernode.pub", pub, private=False)
    return out / "supernode.key", pub.decode().strip()


def make_certs(out: Path, hosts: list[str], supernodes: int, days: int = 365, force: bool = False) -> list[Path]:
    """Write the CA, the SuperLink certificate and ``supernodes`` SuperNode key pairs into ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not hosts:
        raise ConfigError("--host is empty; give the names/IPs the SuperLink is reached at, e.g. --host 10.0.0.5")
    if supernodes < 0 or days < 1:
        raise ConfigError("--supernodes must be >= 0 and --days >= 1")
    _private_out(out, ["ca.key", "ca.crt"], force, "a CA")
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
        private, pub = _node_pair()
        _write(out / f"supernode-{i}.key", private, private=True)
        _write(out / f"supernode-{i}.pub", pub, private=False)
        written += [out / f"supernode-{i}.key", out / f"supernode-{i}.pub"]
    return written


def handle(args: argparse.Namespace) -> int:
    try:
        if args.node:
            key, pub = make_node_key(Path(args.out).absolute(), args.force)
            print(f"# private key (stays on this node): {key}", file=sys.stderr)
            print("# send this public key to the federation's operator, who registers it "
                  "(`flowertune register FILE.pub --superlink ...`):", file=sys.stderr)
            print(pub)
            return 0
        hosts = [h.strip() for h in args.host.split(",") if h.strip()]
        files = make_certs(Path(args.out).absolute(), hosts, args.supernodes, args.days, args.force)
    except ConfigError as e:
        print(f"flowertune certs: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("certs", help="TLS certificates and SuperNode key pairs for a secure deployment",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="directory to write into")
    p.add_argument("--host", default="127.0.0.1,localhost",
                   help="comma-separated names/IPs the SuperLink certificate is valid for")
    p.add_argument("--supernodes", type=int, default=0,
                   help="SuperNode key pairs to make here (a one-machine test federation; default 0)")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--node", action="store_true",
                   help="on a SuperNode: make only this node's key pair in OUT and print the public key to register")
    p.add_argument("--force", action="store_true", help="replace an existing CA (or, with --node, node key)")
    p.set_defaults(func=handle)

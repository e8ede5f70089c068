"""Secure deployment on loopback: TLS (certificates from `flowertune certs`) and Flower's SuperNode
authentication (keys registered with `flowertune register`), and secure aggregation (SecAgg+). Registered
SuperNodes train a round with the model resident in their workers, their updates masked; a SuperNode with an
unregistered key is refused by the SuperLink; a registered SuperNode whose owner pins another base model
(``--node-config model-name=...``) refuses the run at check-in, naming the key. (The insecure deployment path is exercised by
test_deployment_churn.py; SecAgg+'s arithmetic, dropouts and hostile replies by tests/unit/test_secagg.py and
tests/e2e/test_privacy_runtime.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from tests.e2e.helpers import BIN, Processes, free_port, isolated_env, read_jsonl, tiny_overrides

pytestmark = pytest.mark.slow  # a minute or more of Flower runs


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"nothing listens on {port}")


def test_tls_and_supernode_auth_admit_registered_nodes_only(tmp_path, tiny_model_dir, tiny_data_file):
    from safetensors.numpy import load_file

    env = isolated_env(tmp_path)
    certs = tmp_path / "certs"
    made = subprocess.run([str(BIN / "flowertune"), "certs", str(certs), "--supernodes", "4"], env=env,
                          capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    assert (certs / "supernode-0.key").stat().st_mode & 0o077 == 0 and (certs / "ca.key").stat().st_mode & 0o077 == 0
    assert certs.stat().st_mode & 0o077 == 0
    ca = (certs / "ca.key").read_bytes()
    again = subprocess.run([str(BIN / "flowertune"), "certs", str(certs)], env=env, capture_output=True, text=True,
                           check=False)
    assert again.returncode == 2 and "--force" in again.stderr and (certs / "ca.key").read_bytes() == ca
    # node 1 makes its own key pair on the node: only the public key comes out
    node1 = tmp_path / "node1"
    own = subprocess.run([str(BIN / "flowertune"), "certs", "--node", str(node1)], env=env, capture_output=True,
                         text=True, check=False)
    assert own.returncode == 0, own.stderr
    assert own.stdout.strip() == (node1 / "supernode.pub").read_text().strip() and "PRIVATE" not in own.stdout
    assert (node1 / "supernode.key").stat().st_mode & 0o077 == 0 and node1.stat().st_mode & 0o077 == 0
    port = free_port()
    group = Processes(tmp_path, env)
    start = group.start

    def supernode(name, key, pid, pins=""):
        start(name, [str(BIN / "flower-supernode"), "--root-certificates", str(certs / "ca.crt"),
                     "--superlink", f"127.0.0.1:{port}", "--auth-supernode-private-key", str(certs / key),  # absolute: node1's own
                     "--node-config", f"partition-id={pid} num-partitions=2{pins}", "--port", str(free_port())])

    out = tmp_path / "run"
    try:
        start("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
                            "--ssl-certfile", str(certs / "superlink.crt"), "--ssl-keyfile", str(certs / "superlink.key"),
                            "--enable-supernode-auth", "--disable-runtime-dependency-installation", "--port", str(port)])
        wait_port(port)
        reg = subprocess.run([str(BIN / "flowertune"), "register", str(certs / "supernode-0.pub"),
                              str(node1 / "supernode.pub"), str(certs / "supernode-3.pub"),
                              "--superlink", f"127.0.0.1:{port}",
                              "--root-certificates", str(certs / "ca.crt")],
                             env=env, capture_output=True, text=True, check=False, timeout=120)
        assert reg.returncode == 0, reg.stdout + reg.stderr
        supernode("supernode0", "supernode-0.key", 0)
        supernode("supernode1", node1 / "supernode.key", 1)
        supernode("intruder", "supernode-2.key", 0)  # a valid TLS client whose key nobody registered
        # a registered node whose owner allows another base model only: it refuses this run at check-in
        supernode("pinned", "supernode-3.key", 1, ' model-name="other/model"')
        run = subprocess.run([str(BIN / "flowertune"), "run", "--superlink", f"127.0.0.1:{port}",
                              "--root-certificates", str(certs / "ca.crt"), "--out", str(out),
                              *tiny_overrides(tiny_model_dir, tiny_data_file, **{"strategy.min-available-nodes": 2,
                                                                                 "strategy.secagg.mode": "secagg+",
                                                                                 "num-server-rounds": 1})],
                             env=env, capture_output=True, text=True, check=False, timeout=900)
    finally:
        group.close()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + group.log("superlink")[-3000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1]
    assert all(r["clients"] == 2 and r["replies"] == 2 and r["failures"] == 0 for r in rows[1:])
    # one model load per node for the whole run: the resident worker kept it across messages (check-in, the
    # four SecAgg+ stages, training; Flower starts a fresh flwr-clientapp process per message in deployment)
    assert all(r["client_model_loads"] == 1.0 for r in rows[1:])
    assert rows[-1]["eval_loss"] > 0 and json.loads((out / "summary.json").read_text())["rounds"] == 1
    # the updates were securely aggregated (SecAgg+ on the deployment runtime: each stage's message runs in a
    # fresh ClientApp process, the protocol's state kept in the node's context between them); the uplink carries
    # int64 masked vectors, more than twice the fp32 adapter a plain round sends
    text = run.stdout + run.stderr
    assert text.count("SecAgg+ summed 2 of 2 updates") == 1, text[-3000:]
    adapter = sum(v.size for v in load_file(str(out / "final_adapter" / "adapter_model.safetensors")).values())
    assert all(r["bytes_up"] > 2 * 8 * adapter for r in rows[1:])
    # the SuperLink activated the two registered keys only and refused the third; the intruder kept failing
    link = group.log("superlink")
    assert link.count("[Fleet.ActivateNode] Activated node_id") == 3, link[-3000:]
    # the pinned node refused the run (its owner's node config), with the key named; the run went on without it
    refused = [e for r in rows for e in r["errors"] if "model-name" in e]
    assert len(refused) == 1 and ("this node's --node-config model-name='other/model' does not allow the run's "
                                  "model.name=") in refused[0], [r["errors"] for r in rows]
    assert "No SuperNode found with the given public key" in link
    assert "Connection attempt failed" in group.log("intruder")

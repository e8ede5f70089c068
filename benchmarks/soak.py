"""Soak: a long deployment run on loopback, watching for leaks. Real flower-superlink and flower-supernode
processes, ``flowertune run --superlink``, a 2-layer random-init Llama (the embedded model's tokenizer) on
the shipped medical sample, one resident worker per SuperNode.

Once a second the script reads, from /proc, the resident memory (RSS) and the open file descriptors of
the server side (the SuperLink and every process under it, the ServerApp included) and of each worker,
and files each sample under the round the run is in (rows in metrics.jsonl). It prints, at the end of the
warm-up round and at the middle and last rounds, the server's total RSS and fds and the largest worker
RSS and fds, and the ratio last/warm-up: flat means ~1.00.

With ``--churn-every K`` nodes come and go: 1 s into every K-th round one SuperNode (in turn) is killed
(SIGKILL: no goodbye), the script checks that its resident worker exits (a worker left behind with the
model loaded is a leak) and, once the round has completed with the other replies, restarts it under the
same partition and a new node id (the server forgets the old one and checks the new one in). Memory
staying flat then also covers the server's per-node bookkeeping (check-in, downlink copies).

    python benchmarks/soak.py                        # 30 rounds x 6 SuperNodes (~15 min on 2 cores)
    python benchmarks/soak.py --churn-every 3        # the same with one SuperNode restarted every 3 rounds
    python benchmarks/soak.py --quick                # 3 rounds x 3 SuperNodes, SuperNode 2 killed in round 2
                                                     # and restarted (smoke run, no ratio; run by
                                                     # tests/e2e/test_deployment_churn.py, which checks the rows)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(d))
    return tree


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += tree.get(p, [])
    return out


def rss_mb_and_fds(pid: int) -> tuple[float, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kb / 1024, fds


def worker_pids(home: Path) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if "flowertune.federation.worker" in line and str(home) in line]


def wait_for_rows(out: Path, n: int, run: subprocess.Popen, timeout: float = 900) -> bool:
    """Until metrics.jsonl has ``n`` rows (rounds 0..n-1 done); False if the run ended first or timed out."""
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and run.poll() is None:
        if metrics.exists() and sum(1 for line in metrics.read_text().splitlines() if line.strip()) >= n:
            return True
        time.sleep(0.3)
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=6)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="rounds after which memory should be flat")
    p.add_argument("--steps", type=int, default=2, help="local steps a round")
    p.add_argument("--churn-every", type=int, default=0, help="kill and restart one SuperNode every K rounds")
    p.add_argument("--out", type=Path, help="keep the run directory here (default: a temporary directory)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:  # a smoke run: 3 rounds, SuperNode 2 killed 1 s into round 2 (10 steps: it is training), no ratio
        a.nodes, a.rounds, a.warmup, a.steps, a.churn_every = 3, 3, 0, 10, 2
    if a.nodes < 2 or a.rounds < 1 or not 0 <= a.warmup < a.rounds or a.churn_every < 0:
        p.error("needs --nodes >= 2, --rounds >= 1, 0 <= --warmup < --rounds, --churn-every >= 0")
    from benchmarks._common import tiny_model_dir

    with tempfile.TemporaryDirectory(prefix="flowertune-soak-") as tmp:
        root = Path(tmp)
        model = tiny_model_dir(root)
        env = {**os.environ, "FLOWERTUNE_HOME": str(root / "home"), "FLWR_HOME": str(root / "home" / "flwr"),
               "HF_HUB_OFFLINE": "1", "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
        port = free_port()
        procs, logs = [], []

        def start(name: str, args: list[str]) -> subprocess.Popen:
            log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
            procs.append(proc)
            return proc

        out = (a.out or root / "run").resolve()
        samples: dict[int, list[tuple[float, int, float, int, int]]] = {}
        churn: list[tuple[int, int, float]] = []  # (round, SuperNode killed, seconds until its worker exited)
        churn_rounds = list(range(a.churn_every, a.rounds, a.churn_every)) if a.churn_every else []
        stop = threading.Event()
        try:
            link = start("superlink", [str(BIN / "flower-superlink"), "--insecure",
                                       "--disable-runtime-dependency-installation", "--port", str(port)])
            time.sleep(3)
            nodes = {}

            def supernode(i: int) -> None:
                nodes[i] = start(f"supernode{i}", [
                    str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                    "--node-config", f"partition-id={i} num-partitions={a.nodes}", "--port", str(free_port())])

            for i in range(a.nodes):
                supernode(i)
            overrides = {
                "model.name": model, "static.dataset.name": "sample:medical", "num-server-rounds": a.rounds,
                "train.training-arguments.max-steps": a.steps,
                "train.training-arguments.per-device-train-batch-size": 2, "train.seq-length": 128,
                "model.lora.peft-lora-r": 4, "strategy.fraction-train": 1.0,
                # under churn a round completes without the killed node; the next one waits for its return
                "strategy.min-train-nodes": a.nodes - 1 if a.churn_every else a.nodes,
                "strategy.min-available-nodes": a.nodes, "strategy.node-wait-timeout": 300.0,
                "strategy.fraction-evaluate": 0.5, "train.save-every-round": 10, "wire.codec": "delta-int8",
            }
            run = start("flowertune", [str(BIN / "flowertune"), "run", "--superlink", f"127.0.0.1:{port}",
                                       "--out", str(out), *(f"{k}={json.dumps(v)}" for k, v in overrides.items())])

            def sample() -> None:
                while not stop.is_set():
                    metrics = out / "metrics.jsonl"
                    r = len(metrics.read_text().splitlines()) - 1 if metrics.exists() else -1
                    server = [x for x in map(rss_mb_and_fds, descendants(link.pid)) if x]
                    workers = [x for x in map(rss_mb_and_fds, worker_pids(root / "home")) if x]
                    if r >= 0 and server:
                        samples.setdefault(r, []).append((
                            sum(m for m, _ in server), sum(f for _, f in server),
                            max((m for m, _ in workers), default=0.0), max((f for _, f in workers), default=0),
                            len(workers)))
                    stop.wait(1.0)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            for r in churn_rounds:
                victim = a.nodes - 1 - (r // a.churn_every - 1) % a.nodes  # the last partition first
                if not wait_for_rows(out, r, run):  # rounds 0..r-1 are done: round r is running
                    break
                stop.wait(1.0)
                before = len(worker_pids(root / "home"))
                nodes[victim].kill()
                nodes[victim].wait()
                t0 = time.monotonic()
                while len(worker_pids(root / "home")) >= before and time.monotonic() - t0 < 60:
                    time.sleep(0.3)
                gone_s = time.monotonic() - t0
                churn.append((r, victim, gone_s))
                if gone_s >= 60:
                    run.terminate()
                    print(f"round {r}: the killed SuperNode {victim}'s worker still ran 60 s later (a leak)",
                          file=sys.stderr)
                    break
                if not wait_for_rows(out, r + 1, run):  # round r completed without it
                    break
                supernode(victim)  # same partition, a new node id
            rc = run.wait(timeout=3600)
            stop.set()
            sampler.join()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for log in logs:
                log.close()
            for pid in worker_pids(root / "home"):
                os.kill(pid, 9)
        if rc != 0 or len(churn) != len(churn_rounds) \
                or any(s >= 60 for *_, s in churn):
            print((root / "flowertune.log").read_text()[-3000:], file=sys.stderr)
            return 1
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        print(f"# soak: {a.rounds} rounds x {a.nodes} SuperNodes on loopback deployment, tiny Llama, delta-int8; "
              f"{rows[-1]['wall_s']:.0f} s; failures {sum(r.get('failures', 0) for r in rows[1:])}")
        if churn:
            print(f"churn: {len(churn)} SuperNodes killed and restarted (rounds {', '.join(str(r) for r, *_ in churn)}); "
                  f"each killed node's worker exited, after at most {max(s for *_, s in churn):.1f} s")
        print("| after round | server RSS MB | server fds | largest worker RSS MB | worker fds | workers |")
        print("|---|---|---|---|---|---|")
        marks = sorted({a.warmup, (a.warmup + a.rounds) // 2, a.rounds - 1})
        last = {}
        for m in marks:
            s = samples.get(m) or samples[max(k for k in samples if k <= m)]
            last[m] = s[-1]
            print(f"| {m} | {s[-1][0]:.0f} | {s[-1][1]} | {s[-1][2]:.0f} | {s[-1][3]} | {s[-1][4]} |")
        w, e = last[marks[0]], last[marks[-1]]
        print(f"last/warm-up: server RSS {e[0] / w[0]:.2f}, server fds {e[1] / max(w[1], 1):.2f}, "
              f"worker RSS {e[2] / max(w[2], 1e-9):.2f}, worker fds {e[3] / max(w[3], 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

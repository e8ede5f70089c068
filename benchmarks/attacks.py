"""The attack suite: one hostile SuperNode among honest ones, through Flower's real simulation runtime.

Each run is a real ``flwr run`` of a generated Flower app whose ClientApp is flowertune's own client plus the
test-only attack mods of ``benchmarks/_hostile_app.py`` (nothing hostile ships in the package): the node of
partition ``--hostile`` attacks, one attack per run, under one defense per run. The script prints, per defense
and attack: rounds completed, the final held-out eval loss and its ratio to the same defense's run without an
attack (and to undefended FedAvg's), and how many replies were rejected / errors / rounds dropped.

Defenses: ``fedavg-undefended`` (FedAvg with only the reply gate, which cannot be turned off: no global guard,
no median norm bound, no direction check), ``defaults`` (FedAvg + the reply gate + the direction check + the
median norm bound at 2x + the global guard at 10x), and on top of the defaults: ``norm-bound`` (adaptive
update-norm bounding, median quantile), ``fedmedian``, ``krum`` (1 attacker tolerated), ``fedtrimmedavg``.

    python benchmarks/attacks.py                                   # embedded model, shipped medical sample
    python benchmarks/attacks.py --attacks none,scale100,sign-flip --defenses fedavg-undefended,fedmedian
    python benchmarks/attacks.py --quick    # tiny random model, one run of "mixed" under the defaults

``mixed`` puts seven hostile behaviours in one run, one per partition 1-7 (8 nodes at least): GPU-style
metrics from an honest node, a list-valued num-examples, an extra metric key, a second metric record, an
oversize payload, garbage at check-in and a duplicate partition id. ``--quick`` (that run, tiny random Llama,
2 rounds) is run and checked by tests/e2e/test_attacks_runtime.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

ATTACKS = ["absent", "none", "mixed", "scale100", "sign-flip", "nan", "num-examples-1e9", "num-examples-inf", "oversize",
           "metrics-list", "metrics-extra-key", "second-record", "duplicate-partition", "check-in-garbage",
           "gpu-metrics"]
MIXED = {1: "gpu-metrics", 2: "metrics-list", 3: "metrics-extra-key", 4: "second-record", 5: "oversize",
         6: "check-in-garbage", 7: "duplicate-partition"}  # partition 0 is honest: it builds the initial adapter
DEFENSES = {
    "fedavg-undefended": {"strategy.name": "fedavg", "strategy.max-global-growth": 0.0,
                          "strategy.norm-bound-median": 0.0, "strategy.min-cosine-to-median": -1.0},
    "defaults": {},
    "norm-bound": {"strategy.norm-bound": 1.0, "strategy.norm-bound-adaptive": True},
    "fedmedian": {"strategy.name": "fedmedian"},
    "fedtrimmedavg": {"strategy.name": "fedtrimmedavg", "strategy.trimmed-beta": 0.2},
    "krum": {"strategy.name": "krum", "strategy.num-malicious-nodes": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_dir(root: Path, attacks: dict[int, str], record_dir: Path | None = None) -> Path:
    """A Flower app: flowertune's ServerApp, and the hostile ClientApp with ``attacks`` (partition -> attack);
    ``record_dir``: where the SecAgg+ check's nodes write what they trained."""
    from flowertune.config import pyproject_section

    d = root / "app"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    source = (REPO / "benchmarks" / "_hostile_app.py").read_text()
    source = source.replace("ATTACKS: dict[int, str] = {}", f"ATTACKS = {attacks!r}")
    (d / "hostile_app.py").write_text(source.replace('RECORD_DIR = ""', f"RECORD_DIR = {str(record_dir or '')!r}"))
    (d / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "flowertune-attacks"\nversion = "0.1.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "flowertune-bench"\n\n[tool.flwr.app.components]\n'
        'serverapp = "flowertune.server_app:app"\nclientapp = "hostile_app:app"\n\n' + pyproject_section())
    return d


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FLOWERTUNE_HOME": str(home), "FLWR_HOME": str(home / "flwr"), "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
                "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])})
    return env


def stop_processes(home: Path) -> None:
    """Stop the Flower processes started under ``home`` (the managed SuperLink outlives ``flwr run``)."""
    subprocess.run(["pkill", "-f", str(home)], check=False)
    time.sleep(1.0)
    subprocess.run(["pkill", "-9", "-f", str(home)], check=False)


def flwr_run(root: Path, overrides: dict, attacks: dict[int, str], nodes: int, log: Path,
             record_dir: Path | None = None, timeout: int = 3600) -> subprocess.CompletedProcess:
    """One ``flwr run`` of the hostile app (``attacks``: partition -> behaviour) with ``overrides`` layered over
    the quickstart preset, ``nodes`` simulated SuperNodes; its output written to ``log``, its processes stopped."""
    home = root / "home"
    env = env_for(home)
    user = [f"{k}={json.dumps(v)}" for k, v in {**overrides, "num-supernodes": nodes}.items()]
    text = subprocess.run([str(BIN / "flowertune"), "presets", "--run-config", "quickstart", *user], env=env,
                          capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    app = app_dir(root, attacks, record_dir)
    try:
        proc = subprocess.run([str(BIN / "flwr"), "run", str(app), "--run-config", text, "--stream",
                               "--federation-config", f"num-supernodes={nodes}"], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    finally:
        stop_processes(home)
    log.write_text(proc.stdout + proc.stderr)
    return proc


def run_one(root: Path, base: dict, defense: str, attack: str, hostile: int, nodes: int) -> dict:
    """One Flower run; its metrics rows summarised."""
    out = root / f"{defense}--{attack}"
    t0 = time.perf_counter()
    proc = flwr_run(root, {**base, **DEFENSES[defense], "run.output-dir": str(out)},
                    MIXED if attack == "mixed" else {} if attack == "none" else {hostile: attack}, nodes,
                    root / f"{defense}--{attack}.log")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "metrics.jsonl").exists() else []
    evals = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    return {
        "defense": defense, "attack": attack, "rc": proc.returncode, "finished": (out / "summary.json").exists(),
        "rounds": max((r["round"] for r in rows), default=0), "eval_loss": evals[-1] if evals else None,
        "rejected": sum(len(r.get("rejected", [])) for r in rows), "errors": sum(len(r.get("errors", [])) for r in rows),
        "dropped": sum(1 for r in rows if r.get("dropped")), "s": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", default="none,scale100,sign-flip,nan,num-examples-1e9")
    ap.add_argument("--defenses", default="fedavg-undefended,defaults,norm-bound,fedmedian")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--hostile", type=int, default=7, help="partition id of the hostile node (0 builds the adapter)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None, help="constant learning rate (default: the quickstart's cosine)")
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--quick", action="store_true", help="tiny random model, 8 nodes, 2 rounds, the mixed attacks "
                                                           "under the defaults (one Flower run)")
    args = ap.parse_args()
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    for a in attacks:
        if a not in ATTACKS:
            raise SystemExit(f"--attacks: unknown attack {a!r}; valid: {', '.join(ATTACKS)}")
    for d in defenses:
        if d not in DEFENSES:
            raise SystemExit(f"--defenses: unknown defense {d!r}; valid: {', '.join(DEFENSES)}")
    if args.quick:
        attacks, defenses, args.nodes, args.rounds = ["mixed"], ["defaults"], 8, 2
    if not 0 < args.hostile < args.nodes:
        raise SystemExit(f"--hostile must be in 1..{args.nodes - 1} (partition 0 builds the initial adapter)")
    if "mixed" in attacks and args.nodes <= max(MIXED):
        raise SystemExit(f"--attacks mixed needs --nodes {max(MIXED) + 1} or more (one partition per behaviour)")
    root = args.out or Path(tempfile.mkdtemp(prefix="flowertune-attacks-"))
    root.mkdir(parents=True, exist_ok=True)
    base = {"num-server-rounds": args.rounds, "train.training-arguments.max-steps": args.steps,
            "train.training-arguments.per-device-train-batch-size": 2, "train.seq-length": 128,
            "strategy.fraction-train": 1.0, "strategy.fraction-evaluate": 1.0, "strategy.min-train-nodes": 2,
            "strategy.min-available-nodes": args.nodes - 2, "train.eval-every-round": args.rounds,
            "train.save-every-round": args.rounds, "run.client-worker": "off", "run.progress-every-s": 0.0}
    if args.lr is not None:
        base.update({"train.learning-rate-max": args.lr, "train.learning-rate-min": args.lr})
    if args.quick:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from _common import tiny_model_dir

        base.update({"model.name": tiny_model_dir(root), "model.lora.peft-lora-r": 4})
    results = []
    print(f"{len(defenses)} defenses x {len(attacks)} attacks, {args.nodes} SuperNodes (partition {args.hostile} "
          f"hostile), {base['num-server-rounds']} rounds x {base['train.training-arguments.max-steps']} steps; "
          f"runs in {root}", flush=True)
    for d in defenses:
        for a in attacks:
            res = run_one(root, base, d, a, args.hostile, args.nodes)
            results.append(res)
            print(f"  {d:<18} {a:<20} rounds {res['rounds']}  eval {res['eval_loss']}  rejected {res['rejected']}  "
                  f"errors {res['errors']}  dropped {res['dropped']}  ({res['s']:.0f} s)", flush=True)
    honest = {r["defense"]: r["eval_loss"] for r in results if r["attack"] == "none"}
    without = {r["defense"]: r["eval_loss"] for r in results if r["attack"] == "absent"}
    undefended = honest.get("fedavg-undefended")

    def ratio(x: float | None, ref: float | None) -> str:
        return "-" if x is None or ref is None or not math.isfinite(x) else f"{x / ref:.3f}"

    print("\n/without: to the same defense's run in which the hostile node sits training out (attack 'absent');"
          " /honest: to its run with every node honest ('none'); /fedavg: to undefended FedAvg, all honest")
    print(f"{'defense':<18}{'attack':<20}{'done':>6}{'eval loss':>11}{'/without':>9}{'/honest':>9}{'/fedavg':>9}"
          f"{'rejected':>10}{'errors':>8}{'dropped':>9}")
    for r in results:
        loss = "-" if r["eval_loss"] is None else f"{r['eval_loss']:.4f}"
        done = f"{r['rounds']}/{base['num-server-rounds']}" + ("" if r["finished"] else "!")
        print(f"{r['defense']:<18}{r['attack']:<20}{done:>6}{loss:>11}{ratio(r['eval_loss'], without.get(r['defense'])):>9}"
              f"{ratio(r['eval_loss'], honest.get(r['defense'])):>9}{ratio(r['eval_loss'], undefended):>9}"
              f"{r['rejected']:>10}{r['errors']:>8}{r['dropped']:>9}")
    if not all(r["finished"] for r in results):
        raise SystemExit(f"a run did not finish: see the logs in {root}")


if __name__ == "__main__":
    main()

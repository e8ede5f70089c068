"""``flowertune run``: a real federated run through Flower's own runtime, without learning its CLI.

Simulation: ``flwr run`` against a managed local SuperLink (Ray simulation engine) that lives in a
flowertune-owned ``FLWR_HOME`` and uses this Python environment (no per-run ``uv sync``, so it works
offline). Deployment: ``--superlink HOST:PORT`` submits the same app to a running SuperLink.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from flowertune.config import Config, ConfigError, flatten_toml, from_flat, toml_value
from flowertune.federation.rundir import LOG, default_run_path, read_summary, unfinished_reason
from flowertune.launch.connections import check_transport, connection_name, ensure_connection
from flowertune.launch.flwr import flwr_command, flwr_env, write_run_config
from flowertune.launch.logtee import run_logged


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``k=v`` pairs (TOML values; bare words are strings) or paths of TOML files, in order."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        path = Path(item)
        if item.endswith(".toml") and "=" not in item:
            if not path.is_file():
                raise ConfigError(f"-c {item}: no such file")
            try:
                doc = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"-c {item}: not valid TOML ({exc})") from None
            from flowertune.template import is_template, template_overrides

            out.update(template_overrides(doc, item) if is_template(doc) else flatten_toml(doc))
            continue
        for pair in shlex.split(item):
            if "=" not in pair:
                raise ConfigError(f"override {pair!r} is not of the form key=value")
            k, v = pair.split("=", 1)
            try:
                out[k] = tomllib.loads(f"v = {v}")["v"]
            except tomllib.TOMLDecodeError:
                out[k] = v
    return out


def resolve_cli(preset: str | None, overrides: dict[str, Any], out: str | None,
                sources: dict[str, str] | None = None, recipe: str | None = None) -> Config:
    """Layer defaults < preset < recipe < every key the user set (whatever its value), and fix the run directory.

    The CLI knows which keys the user set, so it layers them itself and hands Flower a fully
    materialised config (``run.preset-applied``): nothing is compared with the defaults. ``recipe`` (or a
    ``run.recipe`` key) names a recipe, which brings its preset unless ``preset`` (or a ``preset`` key) is
    given. ``sources``, when given, is filled with where each key's value came from.
    """
    from flowertune.layering import layer

    flat, origin = layer(preset, overrides, recipe)
    cfg = from_flat(flat)
    path = Path(out).absolute() if out else default_run_path(cfg)
    if sources is not None:
        sources.update(origin)
        sources["run.preset-applied"] = "flowertune run"
        if out:
            sources["run.output-dir"] = "user"
    return from_flat({**cfg.to_flat(), "run.output-dir": str(path), "run.preset-applied": True})


def resolve_resume(run_dir: str, overrides: dict[str, Any], force: bool) -> Config:
    """The config of a resumed run: the run's own ``config.json`` with the user's overrides on top."""
    from flowertune.federation.rundir import CONFIG, read_config

    path = Path(run_dir).absolute()
    if not (path / CONFIG).is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.json); give the directory a run wrote")
    flat = {**read_config(path), **overrides, "run.output-dir": str(path), "run.resume": True,
            "run.resume-force": force, "run.preset-applied": True}
    return from_flat(flat)


def print_config(cfg: Config, sources: dict[str, str]) -> None:
    """The resolved config, one key a line, with where each non-default value came from."""
    defaults = Config().to_flat()
    for k, v in cfg.to_flat().items():
        origin = sources.get(k, "default")
        mark = origin if (origin != "default" or v != defaults[k]) else "default"
        print(f"{k:55s} {toml_value(v):40s} {mark}")


def privacy_plan(cfg: Config) -> str:
    """The ε the planned DP run reaches (every round with full participation; fewer replies cost more)."""
    from flowertune.federation.stack.privacy import NEIGHBOURING, SAMPLING, planned_epsilon, rounds_within

    c, rounds = cfg.strategy, cfg.run.num_server_rounds
    eps = planned_epsilon(c.dp_noise_multiplier, rounds, c.dp_delta)
    line = (f"\ndifferential privacy ({c.dp_mode}, z={c.dp_noise_multiplier:g}, C={c.dp_clipping_norm:g}): "
            f"ε = {eps:.4g} at δ = {c.dp_delta:g} after {rounds} rounds (RDP; neighbouring: {NEIGHBOURING}; "
            f"{SAMPLING})")
    if c.dp_target_epsilon > 0 and eps > c.dp_target_epsilon:
        k = rounds_within(c.dp_noise_multiplier, c.dp_delta, c.dp_target_epsilon, rounds)
        line += (f"\n  strategy.dp.target-epsilon={c.dp_target_epsilon:g}: the run stops after round {k} of {rounds} "
                 "(raise strategy.dp.noise-multiplier or the target to run them all)")
    return line


def record_privacy_plan(cfg: Config) -> str:
    """The record-level ε the planned DP-SGD run can reach: a node sampled every round (its worst case)."""
    from flowertune.train.accounting import NEIGHBOURING, SAMPLING, record_epsilon, rounds_within

    t, rounds = cfg.train, cfg.run.num_server_rounds
    eps = record_epsilon(t.dp_sgd_noise_multiplier, t.dp_sgd_sample_rate, rounds * t.max_steps, t.dp_sgd_delta)
    line = (f"\nrecord-level differential privacy (DP-SGD in each node: z={t.dp_sgd_noise_multiplier:g}, "
            f"C={t.dp_sgd_clipping_norm:g}, q={t.dp_sgd_sample_rate:g}, {t.max_steps} steps a round): ε = {eps:.4g} at "
            f"δ = {t.dp_sgd_delta:g} for a node that trains all {rounds} rounds once (a retried try counts again; RDP; "
            f"neighbouring: {NEIGHBOURING}; "
            f"{SAMPLING})")
    if t.dp_sgd_target_epsilon > 0 and eps > t.dp_sgd_target_epsilon:
        k = rounds_within(t.dp_sgd_noise_multiplier, t.dp_sgd_sample_rate, t.max_steps, t.dp_sgd_delta,
                          t.dp_sgd_target_epsilon, rounds)
        line += (f"\n  train.dp-sgd.target-epsilon={t.dp_sgd_target_epsilon:g}: a node can train {k} of the {rounds} "
                 "rounds; the run stops before the round in which a node sampled more often would pass it")
    return line


def lora_plan(cfg: Config) -> str:
    """How the nodes' LoRA factors will be combined, and each simulated partition's rank."""
    a, agg = cfg.adapter, cfg.strategy.aggregation
    what = {"separate": f"{cfg.strategy.name} averages A and B each",
            "freeze-a": "A stays as initialised on every node, B alone trains and is averaged (exact), and only B "
                        "goes up (down too after a node's first round, with a delta wire.codec)",
            "exact": f"the weighted mean of the nodes' products B·A, re-projected onto rank {a.r} by SVD"}[agg]
    lines = [f"LoRA aggregation ({agg}): {what}"]
    ranks = a.ranks()
    if ranks:
        shown = ", ".join(f"{p}: r={ranks[p % len(ranks)]}" for p in range(min(cfg.run.num_supernodes, 8)))
        more = ", ..." if cfg.run.num_supernodes > 8 else ""
        lines.append(f"heterogeneous ranks: the global adapter at r={a.r}; partition {shown}{more} (a SuperNode's "
                     "--node-config lora-rank=N overrides); each gets the global truncated to its rank")
    return "\n".join(lines)


def secagg_plan(cfg: Config) -> str:
    """What SecAgg+ will do with the planned rounds: sample size, dropouts tolerated, precision."""
    c = cfg.strategy
    m = max(c.min_train_nodes, int(c.fraction_train * cfg.run.num_supernodes))  # as Flower's FedAvg samples
    shares = round(c.secagg_num_shares * m)  # as Flower's SecAggPlusWorkflow sizes it
    shares += 1 if shares < m and shares % 2 == 0 else 0
    shares = m if shares <= 2 else shares
    threshold = max(2, round(c.secagg_threshold * shares))
    return (f"\nsecure aggregation (SecAgg+): the server sees only the sum of each round's updates; with {m} nodes "
            f"a round ({cfg.run.num_supernodes} SuperNodes x strategy.fraction-train), each node's secrets in "
            f"{shares} shares, {threshold} rebuild one: up to {shares - threshold} of a node's neighbours may drop "
            f"out; entries clipped to +-{c.secagg_clipping_range:g}, one step "
            f"{2 * c.secagg_clipping_range / 2 ** c.secagg_quantization_bits:.2g}")


def resolve_args(args: argparse.Namespace) -> tuple[Config, dict[str, str]]:
    """The run's config from the command line (a new run or a resume) and where each value came from;
    :class:`ConfigError` for any mistake that can be known before a process starts."""
    sources: dict[str, str] = {}
    overrides = parse_overrides(args.run_config + args.overrides)
    if args.num_supernodes is not None:  # recorded in the run's config: a resume simulates the same federation
        overrides["num-supernodes"] = args.num_supernodes
    quiet = ("--no-progress" if args.no_progress else
             "CI" if os.environ.get("CI") and "run.progress-every-s" not in overrides else None)
    if quiet:  # quiet in CI unless asked for
        overrides["run.progress-every-s"] = 0.0
    if args.resume:
        if args.preset or args.recipe or args.out:
            raise ConfigError("--resume takes the config from RUN_DIR/config.json; drop --preset/--recipe/--out "
                              "and give only the keys to change (with --force for the safe ones)")
        cfg = resolve_resume(args.resume, overrides, args.force)
        sources.update({k: "user" for k in overrides})
    else:
        if args.force:
            raise ConfigError("--force only applies to --resume")
        cfg = resolve_cli(args.preset, overrides, args.out, sources, args.recipe)
    if quiet:
        sources["run.progress-every-s"] = quiet
    if cfg.run.client_worker == "auto":  # decided here, where the runtime is known: see client_app.uses_worker
        cfg = from_flat({**cfg.to_flat(), "run.client-worker": "on" if args.superlink else "off"})
        sources["run.client-worker"] = f"flowertune run ({'deployment' if args.superlink else 'simulation'})"
    check_transport(args.superlink, args.root_certificates, args.insecure)
    return cfg, sources


def superlink_connection(args: argparse.Namespace, env: dict[str, str]) -> str | None:
    """Deployment: the named connection to ``--superlink``. Simulation: None, after stopping a managed local
    SuperLink whose Python environment is gone (:class:`ConfigError` when one cannot be stopped)."""
    if args.superlink:
        name = connection_name(args.superlink, args.root_certificates)
        ensure_connection(name, args.superlink, env, args.root_certificates)
        return name
    from flowertune.launch import managed_superlink

    for pid in managed_superlink.check(env):
        print(f"flowertune run: stopped the managed local SuperLink (pid {pid}) whose Python environment "
              "no longer exists; flwr starts a new one from this environment", file=sys.stderr)
    return None


def launch(cfg: Config, args: argparse.Namespace, env: dict[str, str], superlink: str | None) -> int:
    """``flwr run`` with the resolved config, its output teed to the run log; its exit code."""
    run_path, num = Path(cfg.run.output_dir), cfg.run.num_supernodes
    with tempfile.TemporaryDirectory() as tmp:
        cmd = flwr_command(cfg, write_run_config(cfg, Path(tmp)), num, superlink)
        what = f"recipe {cfg.run.recipe} (preset {cfg.run.preset})" if cfg.run.recipe else f"preset {cfg.run.preset}"
        what = f"resuming {what}" if cfg.run.resume else what
        print(f"flowertune run: {what}, {cfg.run.num_server_rounds} rounds, "
              f"{'deployment ' + args.superlink if superlink else f'{num} simulated SuperNodes'} -> {run_path}",
              flush=True)
        return run_logged(cmd, env, run_path, verbose=args.verbose)


def outcome(run_path: Path, rc: int) -> int:
    """Tell the user how the run ended, from its run directory; the command's exit code."""
    reason, s = unfinished_reason(run_path), read_summary(run_path)
    if reason is not None:
        print(f"flowertune run: the run stopped: {reason}", file=sys.stderr)
        return rc or 1
    if rc != 0 or s is None:
        print(f"flowertune run: the run did not finish (flwr exit code {rc}); see {run_path / LOG} (every line "
              "Flower and Ray printed)", file=sys.stderr)
        return rc or 1
    first, last = (f"{v:.4f}" if isinstance(v, (int, float)) else "-" for v in (s["eval_loss_first"], s["eval_loss_last"]))
    print(f"\nrun directory: {run_path}\n  rounds {s['rounds']}, eval loss {first} -> "
          f"{last}, communication {s['comm_cost_mb']:.2f} MB, {s['wall_s']:.0f} s\n"
          f"  final adapter: {run_path / 'final_adapter'}\n  report: {run_path / 'report.md'} (and report.html, "
          f"plots/); log: {run_path / LOG}")
    if s.get("dp_epsilon") is not None:
        print(f"  differential privacy: ε = {s['dp_epsilon']:.4g} at δ = {s['dp_delta']:g} (client-level)")
    if s.get("dp_record_epsilon") is not None:
        print(f"  differential privacy: ε = {s['dp_record_epsilon']:.4g} at δ = {s['dp_record_delta']:g} (record-level, "
              f"the most any node reached)")
    if s.get("stopped"):
        print(f"  ended before num-server-rounds: {s['stopped']}")
    # (a round never completes without strategy.min-train-nodes usable updates: it is resampled, then the run
    # stops with stopped.json, handled above)
    return 0


def handle(args: argparse.Namespace) -> int:
    from flowertune.preflight import server_checks

    try:
        cfg, sources = resolve_args(args)
        if args.dry_run:
            print_config(cfg, sources)
            if cfg.strategy.dp_mode != "off":
                print(privacy_plan(cfg))
            if cfg.train.dp_sgd_noise_multiplier > 0:
                print(record_privacy_plan(cfg))
            if cfg.strategy.secagg_mode != "off":
                print(secagg_plan(cfg))
            if cfg.strategy.aggregation != "separate" or cfg.adapter.ranks():
                print(lora_plan(cfg))
            return 0
        # before any Flower process starts: the output directory, and in simulation (the clients run on this
        # machine) their quantization, model and data
        server_checks(cfg, clients_here=not args.superlink)
        if args.check:
            where = "this machine's output directory" if args.superlink else "output directory, federation size, model and data"
            print(f"flowertune run --check: the checks before start passed ({where}); nothing was started")
            return 0
        env = flwr_env()
        superlink = superlink_connection(args, env)
    except (ConfigError, KeyError) as exc:
        print(f"flowertune run: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    return outcome(Path(cfg.run.output_dir), launch(cfg, args, env, superlink))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a federated fine-tuning (simulation or deployment)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides key=value (see `flowertune keys`)")
    p.add_argument("--preset", help="quickstart (default) | medical | finance | code | general-nlp; with --recipe, "
                                    "replaces the recipe's preset")
    p.add_argument("--recipe", help="a leaderboard submission's settings by name (see `flowertune recipes`) or the "
                                    "path of a recipe .toml; layered over its preset, under your overrides")
    p.add_argument("--run-config", "-c", action="append", default=[],
                   help="'k1=v1 k2=v2' or a TOML file; repeatable (same keys as pyproject)")
    p.add_argument("--num-supernodes", type=int, help="simulated SuperNodes (default: the preset's)")
    p.add_argument("--out", help="run directory (default ~/flowertune-runs/<time>-<recipe or preset>)")
    p.add_argument("--superlink", help="HOST:PORT of a running SuperLink (deployment mode)")
    p.add_argument("--root-certificates", metavar="CA_CRT",
                   help="with --superlink: connect over TLS, trusting this CA certificate (see `flowertune certs`)")
    p.add_argument("--insecure", action="store_true",
                   help="with --superlink to another machine: connect without TLS (refused otherwise)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a killed or stopped run from its last completed round, with its own config "
                        "(overrides that change it are refused; see --force)")
    p.add_argument("--force", action="store_true",
                   help="with --resume: accept changes of the safe keys (num-server-rounds, timeouts, "
                        "checkpoint/eval cadence)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show all of Flower's and Ray's output (it always goes to RUN_DIR/run.log)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress lines during rounds (run.progress-every-s=0; the default under CI)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and where each value came from (default/preset/recipe/user); "
                        "run nothing (the checks before start are skipped: see --check)")
    p.add_argument("--check", action="store_true",
                   help="run the checks before start (output dir, federation size, model, data; in simulation) and "
                        "stop: nothing is started or written")
    p.set_defaults(func=handle)

"""``flowertune eval``: score a base model, an adapter or a finished run on the FlowerTune benchmarks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from flowertune.eval.benchmark import SUITES

CODE_BENCHMARKS = frozenset(SUITES["code"])  # the benchmarks that run generated programs

DATA_ENV = "FLOWERTUNE_DATA_DIR"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``flowertune`` subparsers."""
    parser = subparsers.add_parser("eval", help="run FlowerTune benchmarks", description=__doc__)
    configure(parser)
    parser.set_defaults(func=handler)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` options."""
    parser.add_argument("--model", help="model.name (Hub id, local dir, .gguf, 'embedded'); default from --run")
    parser.add_argument("--adapter", type=Path, help="PEFT adapter directory to apply on the model")
    parser.add_argument("--run", type=Path, help="run directory: evaluates <run>/final_adapter on its model")
    parser.add_argument("--suite", choices=sorted(SUITES), help="all benchmarks of a challenge")
    parser.add_argument("--benchmarks", default="", help="comma-separated benchmark names (added to --suite)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"local benchmark data (default: ${DATA_ENV}, else the Hugging Face Hub)")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each benchmark")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument("--quantization", type=int, default=0, choices=(0, 4, 8),
                        help="load the base model in 4/8 bits (bitsandbytes, CUDA or CPU; the leaderboard evaluates with 4)")
    parser.add_argument("--out", type=Path, help="output directory (default with --run: <run>/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--unsafe-sandbox", action="store_true",
                        help="where bubblewrap cannot isolate generated code, run it with resource limits only")


def benchmark_names(suite: str | None, benchmarks: str) -> list[str]:
    """The suite's benchmarks then the extra names, without repeats, in order."""
    names = list(SUITES[suite]) if suite else []
    names += [b.strip() for b in benchmarks.split(",") if b.strip()]
    return list(dict.fromkeys(names))


def run_model_name(run_dir: Path) -> str:
    """``model.name`` of the run's resolved config."""
    return str(_run_config(run_dir)["model.name"])


def data_dir_from(arg: Path | None) -> Path | None:
    """``--data-dir``, else ``$FLOWERTUNE_DATA_DIR``, else None (the Hub)."""
    if arg is not None:
        return arg.absolute()
    env = os.environ.get(DATA_ENV)
    return Path(env).absolute() if env else None


def check_inputs(args: argparse.Namespace) -> tuple[list[str], str, Path | None, Path]:
    """Every input checked before anything loads: (benchmark names, model, adapter, output directory).

    Raises :class:`ConfigError` with one line that names the problem and the fix.
    """
    import flowertune.eval.benchmarks  # noqa: F401  (registers the built-in benchmarks; no torch)
    from flowertune.config import ConfigError
    from flowertune.eval.benchmark import BENCHMARKS
    from flowertune.federation.rundir import final_adapter, is_run_dir

    if args.run is not None and not is_run_dir(args.run):
        raise ConfigError(f"--run {args.run} is not a flowertune run directory (no config.json); give the directory "
                          "that `flowertune run` printed")
    suite = args.suite
    if suite is None and not args.benchmarks.strip() and args.run is not None:
        config = _run_config(args.run)
        preset, fmt = str(config.get("preset", "")), str(config.get("data.format", ""))
        # the run's challenge: its preset's, else the challenge its training data's format belongs to
        suite = preset if preset in SUITES else fmt if fmt in SUITES else None
        if suite is None:
            raise ConfigError(f"the run's preset {preset!r} and data format {fmt!r} name no challenge; give --suite "
                              "or --benchmarks")
    names = benchmark_names(suite, args.benchmarks)
    if not names:
        raise ConfigError("give --suite and/or --benchmarks (or --run of a challenge's run)")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {', '.join(map(repr, unknown))}; valid: {', '.join(BENCHMARKS.names())}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1 (got {args.limit}); leave it out for the full split")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype {args.dtype!r}: choose auto, float32, bfloat16 or float16")
    data_dir = data_dir_from(args.data_dir)
    if data_dir is not None:
        if not data_dir.is_dir():
            raise ConfigError(f"the benchmark data directory {data_dir} (--data-dir or ${DATA_ENV}) is not a directory")
        for name in names:  # local files: read them now, not after the model has loaded
            try:
                BENCHMARKS.get(name).load(data_dir)
            except (OSError, ValueError, KeyError) as e:
                raise ConfigError(f"{name}: cannot read its data under {data_dir}: {str(e).splitlines()[0][:300]}") from None
    model_name, adapter, out = args.model, args.adapter, args.out
    if args.run is not None:
        model_name = model_name or run_model_name(args.run)
        if adapter is None:
            adapter = final_adapter(args.run)
            if adapter is None:
                raise ConfigError(f"{args.run} has no final_adapter (the run did not finish): resume it with "
                                  f"`flowertune run --resume {args.run}`, or give --adapter RUN/checkpoints/...")
        out = out or args.run / "eval"
    if model_name is None or out is None:
        raise ConfigError("give --model and --out, or --run")
    if not model_name.strip():
        raise ConfigError("--model is empty: give a Hub id, a local model directory, a .gguf file or 'embedded'")
    if model_name.startswith(("/", "./", "../", "~")) and not Path(model_name).expanduser().exists():
        raise ConfigError(f"--model {model_name} does not exist")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter {adapter} is not a PEFT adapter directory (no adapter_config.json)")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    return names, model_name, adapter, Path(out)


def _run_config(run: Path) -> dict[str, Any]:
    from flowertune.federation.rundir import read_config

    return read_config(run)


def handler(args: argparse.Namespace) -> int:
    """Check every input, then load the model/adapter and run the harness."""
    from flowertune.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        names, model_name, adapter, out = check_inputs(args)
    except ConfigError as e:
        print(f"flowertune eval: {e}", file=sys.stderr)
        return 2
    if any(name in CODE_BENCHMARKS for name in names):
        from flowertune.eval import sandbox

        sandbox.allow_unsafe(args.unsafe_sandbox)
        try:
            sandbox.require()  # before any model loads
        except sandbox.SandboxUnavailable as e:
            print(f"flowertune eval: {e}", file=sys.stderr)
            return 2
    from flowertune.config import ModelConfig
    from flowertune.eval.harness import evaluate
    from flowertune.eval.leaderboard import format_table
    from flowertune.models.load import load_model, load_tokenizer

    cfg = ModelConfig(name=model_name, dtype=args.dtype, quantization=args.quantization)
    if args.run is not None and model_name == run_model_name(args.run):  # the revision the adapter was trained on
        run_cfg = _run_config(args.run)
        cfg = replace(cfg, revision=str(run_cfg.get("model.revision", "")),
                      trust_remote_code=bool(run_cfg.get("model.trust-remote-code", False)))
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        model.eval()
    results = evaluate(model, tokenizer, names, data_dir_from(args.data_dir), args.limit, args.batch_size,
                       Path(out), progress=not args.no_progress)
    print(f"results: {Path(out) / 'results.json'}")
    if args.run is not None:
        from flowertune.report import write_report_quietly

        write_report_quietly(args.run)
    try:
        from flowertune.federation.rundir import communication_mb

        comm = communication_mb(args.run) if args.run is not None else None
        print(format_table(results, comm_mb=comm, with_comm=args.run is not None))
    except ValueError:
        pass  # only benchmarks outside any challenge were run
    for name, res in results.items():
        ends = f"  ended at EOS {res['ended_at_eos_pct']:.1f}%" if "ended_at_eos_pct" in res else ""
        if "eos_after_answer_pct" in res:
            ends += f" ({res['eos_after_answer_pct']:.1f}% within 3 tokens of the answer)"
        print(f"{name}: score {res['score']:.2f}  n {res['n']}  {res['seconds']:.1f} s  {res['items_per_s']} items/s"
              + ends)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m flowertune.commands.eval``: the same command without the ``flowertune`` entry point."""
    parser = argparse.ArgumentParser(prog="flowertune eval", description=__doc__)
    configure(parser)
    return handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

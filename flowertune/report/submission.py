"""The folder a leaderboard submission needs, built from a finished and evaluated run directory.

    <out>/README.md          the seeds' structure: methodology, results, communication budget, loss plot,
                             how to reproduce with flowertune
    <out>/adapter/           the final PEFT adapter (the last global checkpoint)
    <out>/config.json        the run's resolved config and provenance
    <out>/run-config.toml    the same config for `flowertune run -c` or `flwr run --run-config`
    <out>/eval/              results.json and the per-item generation files
    <out>/metrics.jsonl, plots/*.png
"""

from __future__ import annotations

import shutil
from pathlib import Path

from flowertune.config import toml_value
from flowertune.eval.benchmark import SUITES
from flowertune.eval.leaderboard import guess_challenge, leaderboard_rows
from flowertune.federation import rundir
from flowertune.report.methodology import methodology, model_title, setup_paragraph, strategy_line
from flowertune.report.plots import save_figures
from flowertune.report.tables import markdown_table, reproduce_command, suite_of


class IncompleteRun(ValueError):
    """The run cannot be submitted; the message lists everything that is missing and how to add it."""



def missing(run: Path, allow_limit: bool = False) -> list[str]:
    """What ``run`` lacks for a submission (empty when it is complete), each with the command that adds it."""
    run = Path(run)
    if not rundir.is_run_dir(run):
        return [f"{run} is not a run directory (no config.json)"]
    out = []
    stopped = rundir.unfinished_reason(run)
    if stopped:
        out.append(f"the run stopped early ({stopped[:200]}); finish it with `flowertune run --resume {run}`")
    if rundir.final_adapter(run) is None or rundir.read_summary(run) is None:
        out.append(f"no final adapter (final_adapter/ and summary.json): the run did not finish; "
                   f"`flowertune run --resume {run}`")
    results = rundir.read_eval(run)
    challenge = suite_of(rundir.read_config(run)) or (guess_challenge(results) if results else None)
    if results is None:
        out.append(f"no evaluation (eval/results.json): `flowertune eval --run {run} --suite "
                   f"{challenge or '<challenge>'}`")
        return out
    if challenge is None:
        return [*out, "the evaluation holds no benchmark of any challenge"]
    absent = [b for b in SUITES[challenge] if b not in results]
    if absent:
        out.append(f"the {challenge} evaluation lacks {', '.join(absent)}: `flowertune eval --run {run} "
                   f"--suite {challenge}`")
    if not allow_limit:
        scored = [(b, results[b]) for b in SUITES[challenge] if b in results]
        older = [b for b, res in scored if "n_total" not in res]
        partial = [f"{b} on {res['n']} of {res['n_total']}" for b, res in scored if res.get("n_total", 0) > res["n"]]
        if older:
            out.append(f"results.json does not say whether {', '.join(older)} were scored on the full split (an "
                       f"older flowertune); rerun `flowertune eval --run {run} --suite {challenge}`")
        if partial:
            out.append(f"scored on the first items only (--limit): {', '.join(partial)} items; a leaderboard score "
                       f"needs the full splits: `flowertune eval --run {run} --suite {challenge}` (or --allow-limit "
                       "for a folder marked as not a leaderboard score)")
    return out


def readme(run: Path, challenge: str, limited: bool) -> str:
    """The submission README in the seeds' structure."""
    config = rundir.read_config(run)
    results = rundir.read_eval(run) or {}
    comm = rundir.communication_mb(run)
    _, header, row, counts = leaderboard_rows(results, challenge, comm, with_comm=True)
    adapter = "DoRA" if config["model.lora.use-dora"] else "LoRA"
    paper = "https://arxiv.org/abs/2402.09353" if adapter == "DoRA" else "https://arxiv.org/abs/2106.09685"
    model = model_title(str(config["model.name"]))
    limit_note = (["", ("> **Not a leaderboard score**: some benchmarks were scored on their first items only "
                   "(`--limit`); the `n items` row shows how many.")] if limited else [])
    lines = [
        f"# FlowerTune LLM on the {challenge} challenge: {model}", "",
        (f"This directory holds a federated instruction-tuning of `{model}` on `{config['static.dataset.name']}` "
        f"with [Flower](https://flower.ai/), run and packaged by flowertune: the final {adapter} adapter, the "
        "resolved config, the evaluation results with every generation, and the plots."), "",
        "## Methodology", "",
        f"This submission performs federated LLM fine-tuning with [{adapter}]({paper}) using the PEFT library.",
        f"The clients' adapters are aggregated with {strategy_line(config)}.", "",
        f"### {model}", "", *methodology(config), "",
        "### Training Loss Visualization", "", "![Training Loss](plots/loss.png)", "",
        "### Evaluation Results", "",
        *markdown_table(["", *header], [["score", *row], ["n items", *counts]]), *limit_note, "",
        "Per-benchmark protocols and every generation: `eval/results.json`, `eval/items-<benchmark>.jsonl`.", "",
        "### Communication Budget", "",
        "-" if comm is None else f"{comm:,.2f} MB", "",
        "![Communication](plots/communication.png)", "",
        *(["### Privacy", "", privacy, ""] if (privacy := rundir.privacy_line(run)) else []),
        "## Experimental setup", "", setup_paragraph(config), "",
        "## Environment setup", "",
        "```bash", "git clone <flowertune> && cd flowertune && bash scripts/setup.sh && . .venv/bin/activate",
        "```", "",
        "## Running the challenge", "",
        "With flowertune, the exact recipe of this run:", "",
        "```bash", reproduce_command(config), "```", "",
        "or, from the resolved config in this folder (every key, same values):", "",
        "```bash", "flowertune run -c run-config.toml", "```", "",
        "## Running the evaluation", "",
        "```bash", f"flowertune eval --run <run directory> --suite {challenge}",
        (f"# or on this folder's adapter:\nflowertune eval --model {config['model.name']} --adapter adapter "
        f"--suite {challenge} --out eval"), "```", "",
        "## Model saving", "",
        (f"The global PEFT adapter was checkpointed every {config['train.save-every-round']} rounds on the server "
        "side (`train.save-every-round`); `adapter/` is the adapter after the last round."), "",
    ]
    return "\n".join(lines)


def build_submission(run: Path, out: Path, allow_limit: bool = False) -> Path:
    """Write the submission folder of ``run`` to ``out``; :class:`IncompleteRun` names what is missing."""
    run, out = Path(run).absolute(), Path(out).absolute()
    gaps = missing(run, allow_limit)
    if gaps:
        raise IncompleteRun(f"{run} cannot be submitted yet: " + "; ".join(gaps))
    if out.exists() and any(out.iterdir()):
        raise IncompleteRun(f"{out} exists and is not empty; give a new --out directory")
    results = rundir.read_eval(run) or {}
    challenge = suite_of(rundir.read_config(run)) or guess_challenge(results)
    assert challenge is not None
    limited = any(results[b]["n"] < results[b].get("n_total", results[b]["n"]) for b in SUITES[challenge])
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(rundir.final_adapter(run), out / "adapter")  # type: ignore[arg-type]
    shutil.copy2(run / rundir.CONFIG, out / "config.json")
    shutil.copy2(run / rundir.METRICS, out / "metrics.jsonl")
    (out / "eval").mkdir()
    shutil.copy2(run / rundir.EVAL / "results.json", out / "eval" / "results.json")
    for f in rundir.eval_item_files(run):
        shutil.copy2(f, out / "eval" / f.name)
    config = rundir.read_config(run)
    run_config = {k: v for k, v in config.items() if k not in ("run.output-dir", "run.resume", "run.resume-force")}
    (out / "run-config.toml").write_text("".join(f'"{k}" = {toml_value(v)}\n' for k, v in run_config.items()))
    save_figures(rundir.read_metrics(run), out / "plots")
    (out / "README.md").write_text(readme(run, challenge, limited), encoding="utf-8")
    return out

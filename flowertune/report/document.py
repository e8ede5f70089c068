"""``report.md`` and ``report.html`` of a run directory: methodology, per-round table, plots, leaderboard table.

The markdown is the one source; the HTML page is the same markdown rendered by markdown-it-py (CommonMark
plus tables), so the two never disagree. Everything is read through :mod:`flowertune.federation.rundir`.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path

from flowertune.eval.leaderboard import leaderboard_rows
from flowertune.federation import rundir
from flowertune.report.methodology import methodology, model_title, setup_paragraph
from flowertune.report.plots import save_figures
from flowertune.report.tables import markdown_table, reproduce_command, round_table

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS = "plots"
BUDGET_MB = 200_000  # the leaderboard's communication budget
_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 .2em}pre{background:#f5f5f5;padding:.8em;overflow-x:auto;white-space:pre-wrap}
.wide{overflow-x:auto}"""


def status_line(run: Path) -> str:
    """Finished, stopped (with the reason) or unfinished, with the start time."""
    meta = rundir.read_meta(run)
    summary = rundir.read_summary(run)
    rows = rundir.read_metrics(run)
    stopped = rundir.unfinished_reason(run)
    started = meta.get("started", "?")
    privacy = rundir.privacy_line(run)
    tail = f"\n\n**Privacy**: {privacy}" if privacy else ""
    if stopped:
        return f"**Stopped** after round {rows[-1]['round'] if rows else 0}: {stopped} (started {started})" + tail
    if summary is None:
        return f"**Not finished**: {len(rows) - 1 if rows else 0} round(s) recorded so far (started {started})" + tail
    resumed = meta.get("resumed", [])
    return (f"**Finished**: {summary['rounds']} rounds in {summary['wall_s'] / 60:.1f} min (started {started}"
            + (f", resumed {len(resumed)}x" if resumed else "") + ")"
            + (f"; ended before num-server-rounds: {summary['stopped']}" if summary.get("stopped") else "") + tail)


def results_section(run: Path) -> list[str]:
    results = rundir.read_eval(run)
    if results is None:
        return ["No evaluation yet: `flowertune eval --run " + str(run) + " --suite <challenge>` adds the "
                "leaderboard table here."]
    comm = rundir.communication_mb(run)
    try:
        challenge, header, row, counts = leaderboard_rows(results, comm_mb=comm, with_comm=True)
    except ValueError:
        challenge, header, row, counts = "", [], [], []
    out = []
    if header:
        out += [(f"Challenge: **{challenge}**, scored with flowertune's own implementation of the leaderboard's "
                "protocol; communication cost in MB (1024² bytes) as the leaderboard counts it."), ""]
        out += markdown_table(["", *header], [["score", *row], ["n items", *counts]])
    limited = [k for k, v in results.items() if v.get("n_total") is not None and v["n"] < v["n_total"]]
    if limited:
        out += ["", f"**Not a leaderboard score**: {', '.join(limited)} scored on the first items only (`--limit`)."]
    out += ["", "| benchmark | score | n | of | ended at EOS % | seconds |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        eos = res.get("ended_at_eos_pct")
        out.append(f"| {name} | {res['score']:.2f} | {res['n']} | {res.get('n_total', '?')} | "
                   f"{'-' if eos is None else f'{eos:.1f}'} | {res.get('seconds', 0):.0f} |")
    protocols = dict.fromkeys(str(res.get("protocol", "")) for res in results.values())
    out += ["", "Protocol: " + "; ".join(f"`{p}`" for p in protocols if p) + "."] if any(protocols) else []
    return out


def build_markdown(run: Path, plots: dict[str, Path]) -> str:
    """The report's markdown text (image paths relative to the run directory)."""
    config = rundir.read_config(run)
    meta = rundir.read_meta(run)
    rows = rundir.read_metrics(run)
    comm = rundir.communication_mb(run)
    header, body = round_table(rows)
    rel = {k: os.path.relpath(p, run) for k, p in plots.items()}
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("versions", {}).items()))
    lines = [
        f"# Federated fine-tuning of {model_title(str(config['model.name']))}", "",
        status_line(run), "",
        f"Run directory: `{run}`", "",
        "## Experimental Setup", "", setup_paragraph(config), "",
        "## Methodology", "",
        "This run performs federated LLM fine-tuning with "
        + ("[DoRA](https://arxiv.org/abs/2402.09353)" if config["model.lora.use-dora"] else
           "[LoRA](https://arxiv.org/abs/2106.09685)")
        + " adapters (PEFT) on [Flower](https://flower.ai/), run with flowertune.", "",
        *methodology(config), "",
        "## Evaluation Results", "", *results_section(run), "",
        "## Training Loss", "", f"![Loss per round]({rel['loss']})", "",
        "## Communication Budget", "",
        ("-" if comm is None else f"{comm:,.2f} MB in total ({100 * comm / BUDGET_MB:.3f}% of the leaderboard's "
         f"{BUDGET_MB:,} MB budget)."), "",
        f"![Communication per round]({rel['communication']})", "",
        "## Clients", "", f"![Client speed and memory]({rel['clients']})", "",
        "## Per-round metrics", "", "Round 0 is the initial adapter before any training.", "",
        *markdown_table(header, body), "",
        "## How to reproduce", "", "```bash", reproduce_command(config), "```", "",
        f"The full resolved config is `{run / rundir.CONFIG}`. Versions: {versions}.", "",
    ]
    return "\n".join(lines)


def render_html(markdown_text: str, title: str) -> str:
    """The markdown as a standalone HTML page (CommonMark + tables; raw HTML in the text is escaped)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    body = body.replace("<table>", '<div class="wide"><table>').replace("</table>", "</table></div>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}</body></html>\n")


def write_report(run: Path) -> Path:
    """(Re)write ``report.md``, ``report.html`` and ``plots/*.png`` of the run directory; returns ``report.md``."""
    run = Path(run).absolute()
    if not rundir.is_run_dir(run):
        raise FileNotFoundError(f"{run} is not a run directory (no config.json)")
    plots = save_figures(rundir.read_metrics(run), run / PLOTS)
    text = build_markdown(run, plots)
    _atomic_write(run / REPORT_MD, text)
    _atomic_write(run / REPORT_HTML, render_html(text, f"flowertune report: {run.name}"))
    return run / REPORT_MD


def write_report_quietly(run: Path) -> Path | None:
    """:func:`write_report`, logging instead of raising (a report must never fail the run or eval it follows)."""
    try:
        path = write_report(run)
        log.info("report: %s (and report.html, plots/)", path)
        return path
    except Exception as exc:  # noqa: BLE001 - the run's own results are already saved
        log.warning("could not write the report of %s: %s: %s", run, type(exc).__name__, exc)
        return None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

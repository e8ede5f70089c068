"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed).

Every figure is built from the metrics rows alone, so a test can read the plotted points back from the
returned :class:`~matplotlib.figure.Figure` and compare them with ``metrics.jsonl``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flowertune.eval.leaderboard import MB

Row = Mapping[str, Any]


def series(rows: Sequence[Row], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(rounds, values) of ``key`` over the rows that have a value for it."""
    pts = [(int(r["round"]), float(r[key]) / scale) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def loss_figure(rows: Sequence[Row]) -> Figure:
    """Train loss (mean over the round's clients) and federated held-out loss per round."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    x, y = series(rows, "train_loss")
    if x:
        ax.plot(x, y, "o-", label="train loss (clients' mean)")
    x, y = series(rows, "eval_loss")
    if x:
        # joined only when evaluated every round: a line across skipped rounds would draw values never measured
        every = all(b - a == 1 for a, b in itertools.pairwise(x))
        ax.plot(x, y, "s--" if every else "s", label="held-out eval loss", markersize=7)
        if not every:
            for xi, yi in zip(x, y):
                ax.annotate(f"{yi:.3f}", (xi, yi), textcoords="offset points", xytext=(6, 6), fontsize=8)
    _integer_rounds(ax)
    ax.set_xlabel("round")
    ax.set_ylabel("loss (mean per target token)")
    ax.set_title("Loss per round")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def communication_figure(rows: Sequence[Row]) -> Figure:
    """MB on the wire per round (bars: down and up) and cumulative (line, right axis)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    x, down = series(rows, "bytes_down", MB)
    _, up = series(rows, "bytes_up", MB)
    ax.bar(x, down, label="server -> clients", color="#4c72b0")
    ax.bar(x, up, bottom=down, label="clients -> server", color="#dd8452")
    ax.set_xlabel("round")
    ax.set_ylabel("MB per round")
    ax.set_title("Communication (MB = 1024² bytes, as the leaderboard counts)")
    _integer_rounds(ax)
    right = ax.twinx()
    cx, cum = series(rows, "bytes_cumulative", MB)
    right.plot(cx, cum, "k.-", label="cumulative")
    right.set_ylabel("cumulative MB")
    right.set_ylim(bottom=0)  # from zero, like the bars: a cumulative line must not look like it starts at 0 MB
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    fig.legend(handles[0] + more[0], handles[1] + more[1], loc="outside lower center", ncols=3)
    return fig


def clients_figure(rows: Sequence[Row]) -> Figure:
    """Client training speed (tokens/s, mean of the round's clients) and memory (largest peak RSS)."""
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    speed, memory = fig.subplots(2, 1, sharex=True)
    x, y = series(rows, "client_tokens_per_s")
    speed.plot(x, y, "o-", color="#55a868")
    speed.set_ylabel("tokens / s")
    speed.set_title("Client training speed and memory")
    speed.grid(alpha=0.3)
    for key, label, style in (("client_peak_rss_mb", "peak RSS of the largest client process", "o-"),
                              ("client_peak_cuda_mb", "peak CUDA memory", "s--")):
        mx, my = series(rows, key)
        if mx:
            memory.plot(mx, my, style, label=label)
    _integer_rounds(memory)
    memory.set_xlabel("round")
    memory.set_ylabel("MB")
    memory.grid(alpha=0.3)
    memory.legend()
    return fig


def _integer_rounds(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


FIGURES = {"loss": loss_figure, "communication": communication_figure, "clients": clients_figure}


def figures(rows: Sequence[Row]) -> dict[str, Figure]:
    """Every report figure of the metrics rows, by name."""
    return {name: make(rows) for name, make in FIGURES.items()}


def save_figures(rows: Sequence[Row], out_dir: Path, dpi: int = 110) -> dict[str, Path]:
    """Write ``<out_dir>/<name>.png`` for each figure; returns the paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figures(rows).items():
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=dpi)
    return paths

"""The report's tables (per round, leaderboard) and the command that reproduces a run."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from flowertune.config import toml_value
from flowertune.eval.benchmark import SUITES
from flowertune.eval.leaderboard import MB

# keys that say where and how a run was started, not what it computes
_BOOKKEEPING = {"run.output-dir", "run.preset-applied", "run.resume", "run.resume-force", "preset", "run.recipe",
                "num-supernodes"}

# (title, metrics key, format); bytes are shown in MB
ROUND_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Round", "round", "{:d}"), ("LR", "lr", "{:.3g}"), ("Train loss", "train_loss", "{:.4f}"),
    ("Eval loss", "eval_loss", "{:.4f}"), ("Clients", "clients", "{:d}"), ("Replies", "replies", "{:d}"),
    ("Failures", "failures", "{:d}"), ("MB round", "bytes_round", "{:.2f}"), ("MB total", "bytes_cumulative", "{:.2f}"),
    ("Client tok/s", "client_tokens_per_s", "{:.0f}"), ("Client peak RSS MB", "client_peak_rss_mb", "{:.0f}"),
    ("Round s", "round_s", "{:.1f}"),
)


def cell(value: Any, fmt: str, key: str) -> str:
    if value is None:
        return "-"
    if key.startswith("bytes_"):
        value = value / MB
    return fmt.format(int(value) if fmt == "{:d}" else float(value))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def round_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, one list of cells per metrics row); a missing value is ``-``."""
    columns = ROUND_COLUMNS + ((("ε (DP)", "dp_epsilon", "{:.3g}"),) if any("dp_epsilon" in r for r in rows) else ()) \
        + ((("ε (records)", "dp_record_epsilon", "{:.3g}"),) if any("dp_record_epsilon" in r for r in rows) else ())
    header = [t for t, _, _ in columns]
    body = [[cell(r.get(k), f, k) for _, k, f in columns] for r in rows]
    return header, body


def user_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a resolved run config that differ from its preset (and recipe) layered on the defaults."""
    from flowertune.layering import layer

    base, _ = layer(str(config["preset"]), {}, str(config.get("run.recipe") or "") or None)
    return {k: v for k, v in config.items() if k not in _BOOKKEEPING and k in base and base[k] != v}


def cli_value(v: Any) -> str:
    """``v`` as ``flowertune run`` parses it back: a bare word where TOML would not read it as another type."""
    import tomllib

    if isinstance(v, str) and v and not re.search(r"[\s'\"\\]", v):  # `flowertune run` re-splits on spaces
        try:
            tomllib.loads(f"v = {v}")
        except tomllib.TOMLDecodeError:
            return v  # not a TOML value, so `flowertune run` keeps it as this string
    return toml_value(v)


def reproduce_command(config: Mapping[str, Any]) -> str:
    """The ``flowertune run`` command line that resolves to the same config (shell-quoted)."""
    from flowertune.layering import layer

    recipe = str(config.get("run.recipe") or "")
    parts = ["flowertune", "run"]
    if recipe:
        parts += ["--recipe", recipe]
        if str(config["preset"]) != layer(None, {}, recipe)[0]["preset"]:  # the recipe's preset was replaced
            parts += ["--preset", str(config["preset"])]
    else:
        parts += ["--preset", str(config["preset"])]
    base, _ = layer(str(config["preset"]), {}, recipe or None)
    if config.get("num-supernodes") != base.get("num-supernodes"):
        parts += ["--num-supernodes", str(config["num-supernodes"])]
    parts += [f"{k}={cli_value(v)}" for k, v in sorted(user_keys(config).items())]
    return " ".join(shlex.quote(p) for p in parts)


def suite_of(config: Mapping[str, Any]) -> str | None:
    """The evaluation suite of the run's preset (None for quickstart)."""
    preset = str(config.get("preset", ""))
    return preset if preset in SUITES else None

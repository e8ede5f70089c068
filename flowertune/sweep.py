"""A sweep: several base models (or any config variants) trained and evaluated one after the other, each in
its own run directory under one sweep directory, ending with one comparison table (markdown, CSV) and plot.

A sweep is resumable: a member whose run finished and whose evaluation covers the suite is skipped; a member
whose run was interrupted is continued from its last saved round (``flowertune run --resume``).

    <sweep>/sweep.json          the resolved sweep (members and their overrides)
    <sweep>/<member>/           one run directory per member (report.md inside)
    <sweep>/sweep.md, sweep.csv, sweep.png   the comparison (rewritten after every member)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from matplotlib.figure import Figure

from flowertune.config import ConfigError, check_keys, toml_value
from flowertune.eval.benchmark import SUITES
from flowertune.eval.leaderboard import _TITLES, average_score, challenge_scores
from flowertune.federation import rundir
from flowertune.report.tables import markdown_table

log = logging.getLogger(__name__)

SPEC = "sweep.json"
_SPEC_KEYS = {"preset", "recipe", "suite", "limit", "num-supernodes", "config", "members"}


@dataclass(frozen=True)
class Member:
    name: str
    overrides: dict[str, Any]

    @property
    def slug(self) -> str:
        """The member's directory name (``org/model`` -> ``org--model``)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name.replace("/", "--")).strip("-") or "member"


@dataclass(frozen=True)
class Sweep:
    members: list[Member]
    suite: str
    preset: str | None = None
    recipe: str | None = None
    limit: int | None = None
    num_supernodes: int | None = None
    common: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def from_mapping(spec: Mapping[str, Any]) -> Sweep:
    """A sweep from a sweep file's table; every problem is a :class:`ConfigError` naming the fix."""
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown sweep keys {unknown}; valid: {sorted(_SPEC_KEYS)}")
    members_spec = spec.get("members") or {}
    if not isinstance(members_spec, Mapping) or not members_spec:
        raise ConfigError("a sweep needs members: [members.<name>] tables of config keys, or --models a,b")
    common = dict(spec.get("config") or {})
    check_keys(common)
    members = []
    for name, overrides in members_spec.items():
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"member {name!r}: give a table of config keys, e.g. [members.{name}] model.name = ...")
        check_keys(overrides)
        members.append(Member(str(name), dict(overrides)))
    slugs = [m.slug for m in members]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"two members would share a directory ({slugs}); rename them")
    preset = spec.get("preset") or None
    suite = spec.get("suite") or (preset if preset in SUITES else None)
    if suite not in SUITES:
        raise ConfigError(f"sweep suite {suite!r}: give suite = one of {sorted(SUITES)} (or a challenge preset)")
    limit = int(spec["limit"]) if spec.get("limit") else None
    n = int(spec["num-supernodes"]) if spec.get("num-supernodes") else None
    return Sweep(members, str(suite), preset, spec.get("recipe") or None, limit, n, common)


def load_sweep_file(path: Path) -> Sweep:
    try:
        return from_mapping(tomllib.loads(Path(path).read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def models_sweep(models: Sequence[str], **kw: Any) -> Sweep:
    """One member per base model (``--models a,b``), named by the model."""
    return from_mapping({**kw, "members": {m: {"model.name": m} for m in models}})


def check_same_sweep(out: Path, sweep: Sweep) -> None:
    """Refuse to continue ``out`` with members whose settings changed (their finished runs would be mixed in)."""
    path = out / SPEC
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    old_members = {m["name"]: m["overrides"] for m in old["members"]}
    changed = [m.name for m in sweep.members if m.name in old_members and old_members[m.name] != m.overrides]
    other = [k for k in ("suite", "preset", "recipe", "limit", "num_supernodes", "common")
             if old.get(k) != sweep.to_json()[k]]
    if changed or other:
        raise ConfigError(f"{out} holds a sweep with other settings ({', '.join(other + changed)}); give a new --out "
                          "or the same sweep file")


def member_state(run: Path, sweep: Sweep) -> str:
    """``done`` (trained and evaluated on the suite), ``evaluate``, ``resume``, ``restart`` or ``new``."""
    if not rundir.is_run_dir(run):
        return "new"
    if rundir.read_summary(run) is None or rundir.read_stopped(run):
        return "resume" if rundir.has_state(run) else "restart"
    results = rundir.read_eval(run) or {}
    for b in SUITES[sweep.suite]:
        res = results.get(b)
        if res is None or res.get("limit") != sweep.limit:
            return "evaluate"
    return "done"


def flowertune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowertune.cli", *args]


def run_command(sweep: Sweep, member: Member, run: Path, state: str) -> list[str]:
    """The ``flowertune run`` command line of a member (new run, or resume)."""
    if state == "resume":
        return flowertune_cmd("run", "--resume", str(run))
    cmd = ["run", "--out", str(run)]
    if sweep.preset:
        cmd += ["--preset", sweep.preset]
    if sweep.recipe:
        cmd += ["--recipe", sweep.recipe]
    if sweep.num_supernodes:
        cmd += ["--num-supernodes", str(sweep.num_supernodes)]
    overrides = {**sweep.common, **member.overrides}
    cmd += [f"{k}={toml_value(v)}" for k, v in overrides.items()]
    return flowertune_cmd(*cmd)


def eval_command(sweep: Sweep, run: Path, data_dir: Path | None) -> list[str]:
    cmd = ["eval", "--run", str(run), "--suite", sweep.suite, "--no-progress"]
    if sweep.limit:
        cmd += ["--limit", str(sweep.limit)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    return flowertune_cmd(*cmd)


def check_members(sweep: Sweep, out: Path, data_dir: Path | None) -> None:
    """Before the first member trains: every member that will run is resolved and passes ``flowertune run
    --check`` (its config, federation size, model and data), so a bad value in member 3 is not found hours in."""
    if sweep.limit is not None and sweep.limit < 1:
        raise ConfigError(f"sweep limit must be >= 1 (got {sweep.limit}); leave it out for the full splits")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a directory")
    for i, member in enumerate(sweep.members, 1):
        run = out / member.slug
        state = member_state(run, sweep)
        if state not in ("new", "resume", "restart"):
            continue
        # a run that saved nothing is moved aside before it restarts: check a fresh directory beside it
        where = run if state != "restart" else run.with_name(run.name + ".check")
        cmd = run_command(sweep, member, where, "resume" if state == "resume" else "new")
        print(f"sweep [{i}/{len(sweep.members)}] {member.name}: checking", flush=True)
        done = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"exit {done.returncode}"
            raise ConfigError(f"member {member.name!r} would fail: {reason.removeprefix('flowertune run: ')}; "
                              "fix it in the sweep file (nothing has trained yet)")


def run_sweep(sweep: Sweep, out: Path, data_dir: Path | None = None) -> dict[str, str]:
    """Check every member, then train and evaluate every member not done yet, in order; returns each
    member's final status."""
    out = Path(out).absolute()
    check_same_sweep(out, sweep)
    check_members(sweep, out, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC).write_text(json.dumps(sweep.to_json(), indent=2))
    status: dict[str, str] = {}
    for i, member in enumerate(sweep.members, 1):
        run = out / member.slug
        state = member_state(run, sweep)
        tag = f"[{i}/{len(sweep.members)}] {member.name}"
        if state == "done":
            print(f"sweep {tag}: finished and evaluated already, skipped ({run})", flush=True)
            status[member.name] = "done"
            continue
        if state == "restart":  # a run that saved nothing to resume from: kept aside, never deleted
            aside = _free_name(run.with_name(run.name + ".incomplete"))
            run.rename(aside)
            print(f"sweep {tag}: an earlier attempt saved no round; moved to {aside}, starting again", flush=True)
            state = "new"
        if state in ("new", "resume"):
            print(f"sweep {tag}: {'training' if state == 'new' else 'resuming'} -> {run}", flush=True)
            if subprocess.call(run_command(sweep, member, run, state)) != 0:
                status[member.name] = "training failed"
                where = f"see {run / rundir.LOG}" if (run / rundir.LOG).exists() else "the reason is above"
                print(f"sweep {tag}: training failed ({where}); continuing with the next member (rerunning the "
                      "sweep resumes it once the cause is fixed)", file=sys.stderr, flush=True)
                write_tables(sweep, out, status)
                continue
        print(f"sweep {tag}: evaluating on {sweep.suite}" + (f" (--limit {sweep.limit})" if sweep.limit else ""),
              flush=True)
        if subprocess.call(eval_command(sweep, run, data_dir)) != 0:
            status[member.name] = "evaluation failed"
            print(f"sweep {tag}: evaluation failed; continuing with the next member", file=sys.stderr, flush=True)
        else:
            status[member.name] = "done"
        write_tables(sweep, out, status)
    write_tables(sweep, out, status)
    return status


def _free_name(path: Path) -> Path:
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def table_rows(sweep: Sweep, out: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(column titles, one dict per member): model, per-benchmark scores, average, comm. cost, status."""
    names = SUITES[sweep.suite] if sweep.suite != "general-nlp" else ("stem", "social_sciences", "humanities")
    titles = [_TITLES.get(n, n) for n in names]
    rows = []
    for m in sweep.members:
        run = out / m.slug
        results = rundir.read_eval(run) if rundir.is_run_dir(run) else None
        scores = challenge_scores(results, sweep.suite) if results else {}
        values = [scores.get(n) for n in names]
        avg = average_score(results, sweep.suite) if results else None
        model = rundir.read_config(run)["model.name"] if rundir.is_run_dir(run) else m.overrides.get("model.name", "")
        rows.append({"member": m.name, "model": model, "scores": dict(zip(titles, values)), "average": avg,
                     "comm_mb": rundir.communication_mb(run) if rundir.is_run_dir(run) else None,
                     "status": member_state(run, sweep)})
    return titles, rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def markdown(sweep: Sweep, out: Path) -> str:
    titles, rows = table_rows(sweep, out)
    header = ["**Model**", *(f"**{t}**" for t in titles), "**Average**", "**Comm. Costs**"]
    body = [[r["member"], *(_pct(r["scores"][t]) for t in titles), _pct(r["average"]),
             "-" if r["comm_mb"] is None else f"{r['comm_mb']:.2f} MB"] for r in rows]
    pending = [r["member"] for r in rows if r["status"] != "done"]
    lines = [f"# Sweep: {sweep.suite}", "", *markdown_table(header, body), ""]
    if sweep.limit:
        lines += [f"Scores on the first {sweep.limit} items of each benchmark (`--limit`): not leaderboard scores.", ""]
    if pending:
        lines += [f"Not finished: {', '.join(pending)} (rerun the sweep to continue).", ""]
    lines += ["Each member's run directory holds its report.md with the methodology and plots.", "",
              "![Comparison](sweep.png)", ""]
    return "\n".join(lines)


def csv_text(sweep: Sweep, out: Path) -> str:
    titles, rows = table_rows(sweep, out)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["member", "model", *titles, "average", "comm_mb", "status"])
    for r in rows:
        w.writerow([r["member"], r["model"], *("" if r["scores"][t] is None else f"{r['scores'][t]:.4f}" for t in titles),
                    "" if r["average"] is None else f"{r['average']:.4f}",
                    "" if r["comm_mb"] is None else f"{r['comm_mb']:.4f}", r["status"]])
    return buf.getvalue()


def comparison_figure(sweep: Sweep, out: Path) -> Figure:
    """Grouped bars: one group per benchmark (and the average), one bar per member."""
    titles, rows = table_rows(sweep, out)
    groups = [*titles, "Average"]
    fig = Figure(figsize=(max(6.0, 1.4 * len(groups) * max(1, len(rows)) / 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        values = [r["scores"][t] for t in titles] + [r["average"]]
        xs = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(groups))]
        comm = "" if r["comm_mb"] is None else f" ({r['comm_mb']:,.2f} MB)"
        bars = ax.bar(xs, [0.0 if v is None else v for v in values], width, label=r["member"] + comm)
        # a real 0 and a score not there yet look alike as bars: every bar says which it is
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.1f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 110)
    ax.set_title(f"Sweep on the {sweep.suite} suite" + (f" (first {sweep.limit} items)" if sweep.limit else ""))
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(4, max(1, len(rows))))
    return fig


def write_tables(sweep: Sweep, out: Path, status: Mapping[str, str] | None = None) -> None:
    """(Re)write ``sweep.md``, ``sweep.csv`` and ``sweep.png``."""
    (out / "sweep.md").write_text(markdown(sweep, out))
    (out / "sweep.csv").write_text(csv_text(sweep, out))
    comparison_figure(sweep, out).savefig(out / "sweep.png", dpi=110)

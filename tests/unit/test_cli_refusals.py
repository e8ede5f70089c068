"""Every command refuses bad input in one line, exit 2, no traceback, nothing written (before any model loads)."""

from __future__ import annotations

import pytest

from flowertune.cli import main


@pytest.mark.parametrize(("argv", "says"), [
    (["certs", "{file}"], "is a file, not a directory"),
    (["certs", "{new}", "--supernodes", "-1"], "--supernodes must be >= 0"),
    (["certs", "{new}", "--host", ","], "--host is empty"),
    (["certs", "{new}", "--days", "0"], "--days >= 1"),
    (["report", "{new}"], "is not a run directory"),
    (["submit", "{new}", "--out", "{out}"], "cannot be submitted yet"),
    (["submit", "{new}", "--out", "{out}", "--private"], "--private only applies to --push-to-hub"),
    (["leaderboard"], "give --run RUN_DIR"),
    (["leaderboard", "--results", "{new}"], "no results file at"),
    (["sweep", "{new}.toml", "--out", "{out}"], "no such sweep file"),
    (["run", "--dry-run", "-c", "{new}.toml"], "no such file"),
    (["run", "--dry-run", "--num-supernodes", "0"], "num-supernodes must be >= 1"),
    (["run", "--dry-run", "model.name="], "model.name is empty"),
    (["run", "--dry-run", "--superlink", "10.0.0.9:8000"], "--insecure"),
    (["register", "{file}", "--superlink", "10.0.0.9:8000"], "--insecure"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, says, tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("x")
    paths = {"file": str(file), "new": str(tmp_path / "new"), "out": str(tmp_path / "out")}
    argv = [a.format(**paths) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before

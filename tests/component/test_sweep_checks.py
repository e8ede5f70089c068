"""A sweep checks every member before the first one trains: a bad value in the last member stops it at once."""

from __future__ import annotations

import time

from flowertune.cli import main


def test_a_bad_member_fails_the_sweep_before_anything_trains(tmp_path, capsys):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'preset = "medical"\n'
        '[config]\n"num-server-rounds" = 1\n"static.dataset.name" = "sample:medical"\n'
        '[members.good]\n"model.name" = "embedded"\n'
        f'[members.bad]\n"model.name" = "embedded"\n"static.dataset.name" = "{tmp_path / "missing.jsonl"}"\n'
    )
    out = tmp_path / "out"
    start = time.monotonic()
    assert main(["sweep", str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "member 'bad' would fail" in err[0] and "missing.jsonl" in err[0], err
    assert "nothing has trained yet" in err[0]
    assert not (out / "good").exists() and not (out / "bad").exists()
    assert time.monotonic() - start < 120


def test_an_invalid_value_is_found_the_same_way(tmp_path, capsys):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('preset = "medical"\n[config]\n"model.name" = "embedded"\n"static.dataset.name" = "sample:medical"\n'
                     '[members.a]\n"train.learning-rate-max" = 1e-4\n'
                     '[members.b]\n"model.quantization" = 3\n')
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "member 'b' would fail" in err and "model.quantization must be 0" in err

"""A sweep of two tiny variants through Flower's real simulation, killed after its first member and rerun;
the members' reports, TensorBoard events, run logs and a submission folder, read back from what was written.

A member is a plain ``flowertune run`` (2 rounds x 2 clients, fp32 wire): its run directory, byte counts,
resident model, memory figures and final adapter are checked here too (one Flower run, several checks). The
other member trains three nodes at LoRA ranks 4/8/16 under a rank-16 global and aggregates the exact products
(``strategy.aggregation=exact``): its bytes and saved adapters are checked too."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowertune.federation.rundir import read_config, read_metrics
from flowertune.report.methodology import methodology
from flowertune.report.plots import figures
from tests.conftest import FIXTURES
from tests.e2e.helpers import BIN, isolated_env, kill_processes_mentioning, tiny_overrides

pytestmark = pytest.mark.slow  # a minute or more of Flower runs

MB = 1024**2


def sweep_file(path: Path, model: Path, data: Path) -> Path:
    common = dict(arg.split("=", 1) for arg in tiny_overrides(model, data))
    common.update({"run.metric-sinks": '"tensorboard"', "run.progress-every-s": "1.0",
                   "num-supernodes": "2"})
    lines = ['suite = "finance"', "limit = 2", "", "[config]", *(f'"{k}" = {v}' for k, v in common.items()), "",
             "[members.r4]", '"model.lora.peft-lora-r" = 4', "", "[members.het]", '"model.lora.peft-lora-r" = 16', '"model.lora.node-ranks" = "4,8,16"',
             '"strategy.aggregation" = "exact"', '"num-supernodes" = 3', ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir, tiny_data_file):
    root = tmp_path_factory.mktemp("sweep")
    home, out = root / "home", root / "out"
    env = isolated_env(home)
    env.pop("CI", None)  # progress lines on (they are off under CI unless asked for; the sweep asks)
    spec = sweep_file(root / "sweep.toml", tiny_model_dir, tiny_data_file)
    cmd = [str(BIN / "flowertune"), "sweep", str(spec), "--out", str(out), "--data-dir", str(FIXTURES)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not ((out / "r4/eval/results.json").is_file() and (out / "het").exists()):
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the first member did not finish in 15 min"
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)  # killed while the second member trains
    finally:
        kill_processes_mentioning(str(home), signal.SIGKILL)
        kill_processes_mentioning(str(home))
    first_out = first.stdout.read()
    first.wait()
    try:
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    finally:
        kill_processes_mentioning(str(home))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return out, first_out, again


def test_rerun_skips_the_finished_member_and_finishes_the_other(sweep) -> None:
    out, first_out, again = sweep
    assert "[1/2] r4: training" in first_out and "[2/2] het" in first_out
    assert "[1/2] r4: finished and evaluated already, skipped" in again.stdout
    assert "[1/2] r4: training" not in again.stdout
    assert (out / "het/final_adapter/adapter_config.json").is_file()
    assert [r["round"] for r in read_metrics(out / "r4")] == [0, 1, 2]  # trained once, never redone
    assert read_config(out / "het")["model.lora.peft-lora-r"] == 16


def test_one_table_with_both_members(sweep) -> None:
    out, _, _ = sweep
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["member"] for r in rows] == ["r4", "het"] and all(r["status"] == "done" for r in rows)
    md = (out / "sweep.md").read_text()
    for r in rows:
        results = json.loads((out / r["member"] / "eval/results.json").read_text())
        assert float(r["FPB"]) == pytest.approx(results["fpb"]["score"], abs=1e-4)
        avg = sum(results[b]["score"] for b in ("fpb", "fiqa", "tfns")) / 3
        assert float(r["average"]) == pytest.approx(avg, abs=1e-4)
        last = read_metrics(out / r["member"])[-1]["bytes_cumulative"]
        assert float(r["comm_mb"]) == pytest.approx(last / MB, abs=1e-3)
        assert f"| {r['member']} | {results['fpb']['score']:.2f}% |" in md
    assert "first 2 items" in md
    with Image.open(out / "sweep.png") as im:
        assert im.format == "PNG"


def test_member_report_matches_its_run(sweep) -> None:
    out, _, _ = sweep
    run = out / "r4"
    rows = read_metrics(run)
    md = (run / "report.md").read_text()  # written after the run and again after its eval
    assert "| score |" in md and "Not a leaderboard score" in md  # eval --limit 2: TFNS (3 fixture items) is cut
    results = json.loads((run / "eval/results.json").read_text())
    assert f"| score | {results['fpb']['score']:.2f} | {results['fiqa']['score']:.2f} |" in md
    for line in methodology(read_config(run)):
        assert line in md
    for r in rows[1:]:
        assert f"| {r['round']} | {r['lr']:.3g} | {r['train_loss']:.4f} | {r['eval_loss']:.4f} |" in md
    figs = figures(rows)
    train = next(ln for ln in figs["loss"].axes[0].get_lines() if ln.get_label().startswith("train"))
    assert list(train.get_xdata()) == [1, 2] and list(train.get_ydata()) == pytest.approx(
        [r["train_loss"] for r in rows[1:]])
    assert len(figs["communication"].axes[0].patches) == 4
    for name in ("loss", "communication", "clients"):
        with Image.open(run / "plots" / f"{name}.png") as im:
            im.verify()


def test_tensorboard_events_and_run_log(sweep) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, first_out, _ = sweep
    run = out / "r4"
    rows = read_metrics(run)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars("train_loss")] == [
        (r["round"], round(r["train_loss"], 5)) for r in rows[1:]]
    log = (run / "run.log").read_text()
    assert "configure_train" in log and "configure_train" not in first_out  # Flower's noise: log file only
    assert "clients done" in log and "partition 0, round 1: step" in log  # server and client progress lines
    assert "flowertune INFO: round 2/2" in first_out  # flowertune's own lines reach the terminal


def test_submit_refuses_then_packages(sweep, tmp_path) -> None:
    out, _, _ = sweep
    run = out / "r4"
    flowertune = str(BIN / "flowertune")
    refused = subprocess.run([flowertune, "submit", str(run), "--out", str(tmp_path / "a")], capture_output=True,
                             text=True, check=False)
    assert refused.returncode == 2 and "tfns on 2 of 3" in refused.stderr and "--allow-limit" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    ok = subprocess.run([flowertune, "submit", str(run), "--out", str(tmp_path / "b"), "--allow-limit"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    sub = tmp_path / "b"
    assert (sub / "adapter/adapter_model.safetensors").read_bytes() == (
        run / "final_adapter/adapter_model.safetensors").read_bytes()
    assert "Not a leaderboard score" in (sub / "README.md").read_text()
    assert json.loads((sub / "eval/results.json").read_text()) == json.loads((run / "eval/results.json").read_text())
    no_eval = tmp_path / "no-eval"
    subprocess.run(["cp", "-r", str(run), str(no_eval)], check=True)
    subprocess.run(["rm", "-r", str(no_eval / "eval")], check=True)
    refused = subprocess.run([flowertune, "submit", str(no_eval), "--out", str(tmp_path / "c")], capture_output=True,
                             text=True, check=False)
    assert refused.returncode == 2 and "no evaluation (eval/results.json)" in refused.stderr


# -- a member's run: what any `flowertune run` leaves (2 rounds x 2 clients, tiny model, fp32 wire) --------


def test_run_directory_is_complete_and_self_describing(sweep) -> None:
    out, first_out, _ = sweep
    run = out / "r4"
    assert read_config(run)["num-server-rounds"] == 2 and read_config(run)["run.output-dir"] == str(run)
    rows = read_metrics(run)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["train_loss"] > 0 and r["eval_loss"] > 0 and r["rejected"] == [] and r["wall_s"] > 0
    assert (run / "checkpoints/round-1/adapter_model.safetensors").is_file()
    assert (run / "final_adapter/adapter_config.json").is_file()
    assert json.loads((run / "summary.json").read_text())["rounds"] == 2 and str(run) in first_out


def test_byte_counts_are_two_adapter_copies_per_client(sweep) -> None:
    from safetensors.numpy import load_file

    from flowertune.federation.records import to_array_record

    run = sweep[0] / "r4"
    per_copy = to_array_record(load_file(run / "final_adapter/adapter_model.safetensors")).count_bytes()
    rows = read_metrics(run)[1:]
    for r in rows:
        assert r["clients"] == 2
        assert r["bytes_down"] == r["bytes_up"] == 2 * per_copy
        assert r["bytes_round"] == 2 * per_copy * 2
    assert rows[-1]["bytes_cumulative"] == 2 * 2 * 2 * per_copy


def test_the_base_model_stays_resident_and_memory_is_reported(sweep) -> None:
    rows = read_metrics(sweep[0] / "r4")[1:]
    assert all(r["client_model_loads"] == 1.0 for r in rows)
    for r in rows:
        assert 0 < r["client_rss_mb"] <= r["client_peak_rss_mb"], r


def test_final_adapter_loads_with_peft_and_differs_from_round_1(sweep, tiny_model_dir) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = sweep[0] / "r4"
    x = torch.randint(0, 300, (1, 10))
    logits = []
    for d in ("checkpoints/round-1", "final_adapter"):
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / d).eval()
        with torch.no_grad():
            logits.append(m(input_ids=x).logits)
    assert torch.isfinite(logits[1]).all() and not torch.allclose(logits[0], logits[1])


def test_the_heterogeneous_rank_member_trains_ranks_4_8_16_and_saves_a_rank_16_standard_adapter(sweep,
                                                                                               tiny_model_dir) -> None:
    """Three nodes at ranks 4/8/16 under a rank-16 global, ``strategy.aggregation=exact``, through Flower's
    runtime: each node's uplink is the fp32 size of the global truncated to its rank (nothing else fits); every
    saved global is the SVD re-projection at rank 16 (A's rows orthogonal and of one norm, which no average of
    seeded-init A's is) and loads with PEFT; the base model is loaded once per process."""
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from flowertune.models.lora_algebra import truncate
    from flowertune.wire import payload_bytes

    run = sweep[0] / "het"
    assert read_config(run)["strategy.aggregation"] == "exact"
    log = (run / "run.log").read_text()
    assert "ranks(<= 16: truncated down, padded up)" in log and "exact(mean of B·A, SVD to r=16)" in log
    assert "trains at LoRA rank 4 of the global's 16" in log and "trains at LoRA rank 8 of the global's 16" in log
    final = load_file(str(run / "final_adapter" / "adapter_model.safetensors"))
    rows = read_metrics(run)[1:]
    assert rows and all(r["clients"] == r["replies"] == 3 and r["rejected"] == [] for r in rows)
    # a process serving nodes of several ranks swaps the adapter, not the base model
    assert all(r["client_model_loads"] == 1.0 for r in rows)
    assert [r["bytes_up"] for r in rows] == [sum(payload_bytes(truncate(final, r)) for r in (4, 8, 16))] * len(rows)
    for d in ("checkpoints/round-1", "final_adapter"):
        arrays = load_file(str(run / d / "adapter_model.safetensors"))
        a_keys = [k for k in arrays if ".lora_A." in k]
        assert a_keys and all(arrays[k].shape[0] == 16 for k in a_keys)
        for k in a_keys:  # orthogonal rows of one norm (the previous A's root-mean-square row norm)
            a = arrays[k].astype(np.float64)
            gram = a @ a.T
            np.testing.assert_allclose(gram, np.trace(gram) / 16 * np.eye(16), atol=1e-4 * np.trace(gram),
                                       err_msg=f"{d} {k}")
        assert json.loads((run / d / "adapter_config.json").read_text())["r"] == 16
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / d).eval()
        with torch.no_grad():
            assert torch.isfinite(m(input_ids=torch.randint(0, 300, (1, 10))).logits).all()

"""Crash-safe resume and reproducible runs, through Flower's real simulation runtime with the tiny model.

Run A goes 4 rounds uninterrupted. Run B, same config and seed, has its whole server side (SuperLink,
ServerApp and the simulated clients with it) SIGKILLed once round 2 is saved, and is resumed with
``flowertune run --resume``. FedAdam (server moments), ``delta-int3`` (server-side downlink mirror,
client-side held copy and error-feedback residual) and 2-of-3 sampling (random node ids per run) are
all state a resume has to carry, and ``strategy.aggregation=freeze-a`` trains B only. A and B must agree bit for bit: the round-1/2 checkpoints (two
independent runs, i.e. determinism), the final adapter (resume) and every metrics row but timings.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.e2e.helpers import BIN, isolated_env, kill_processes_mentioning, read_jsonl, run_flowertune, tiny_overrides

pytestmark = pytest.mark.slow  # a minute or more of Flower runs

TIMING = {"wall_s", "round_s", "client_tokens_per_s", "client_rss_mb", "client_peak_rss_mb", "client_peak_cuda_mb"}


def overrides(model_dir, data):
    return tiny_overrides(model_dir, data, **{
        "num-server-rounds": 4, "strategy.name": "fedadam", "wire.codec": "delta-int3",
        "strategy.fraction-train": 0.67, "strategy.min-train-nodes": 2, "strategy.min-available-nodes": 3,
        "strategy.fraction-evaluate": 0.67, "model.lora.peft-lora-dropout": 0.1, "strategy.eta": 0.01,
        "train.training-arguments.max-steps": 6,  # rounds of a few seconds: the kill lands before the end
        "strategy.aggregation": "freeze-a",  # A never moves, so after first contact only B's deltas travel
    })


def adapter_bytes(run, sub):
    return (run / sub / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_data_file):
    base = tmp_path_factory.mktemp("resume")
    args = overrides(tiny_model_dir, tiny_data_file)
    a = base / "A"
    proc = run_flowertune(base / "home-a", "run", "--num-supernodes", "3", "--out", str(a), *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    b, home_b = base / "B", base / "home-b"
    env = isolated_env(home_b)
    first = subprocess.Popen([str(BIN / "flowertune"), "run", "--num-supernodes", "3", "--out", str(b), *args],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not (b / "state/round-2.safetensors").exists():
            assert first.poll() is None, "run B ended before round 2"
            assert time.monotonic() < deadline, "run B did not reach round 2"
            time.sleep(0.05)
        killed_after = max(r["round"] for r in read_jsonl(b / "metrics.jsonl"))
    finally:  # the whole server side at once, no chance to clean up: SuperLink, flwr-simulation (the ServerApp
        # and the Ray clients), the flwr CLI
        first.send_signal(signal.SIGKILL)
        kill_processes_mentioning(str(home_b), sig=signal.SIGKILL)
    first.wait()
    assert not (b / "final_adapter").exists() and not (b / "summary.json").exists()
    resumed = run_flowertune(home_b, "run", "--resume", str(b))
    return a, b, killed_after, resumed


def test_killed_and_resumed_run_equals_the_uninterrupted_one(runs):
    a, b, killed_after, resumed = runs
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert killed_after in (2, 3) and "resuming" in resumed.stdout
    assert adapter_bytes(a, "final_adapter") == adapter_bytes(b, "final_adapter")
    rows_a, rows_b = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["round"] for r in rows_b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}
    doc = json.loads((b / "config.json").read_text())
    assert doc["meta"]["resumed"] and doc["config"]["num-supernodes"] == 3  # the resume simulated the same 3 nodes


def test_two_runs_with_the_same_seed_are_bit_identical(runs):
    a, b, _, _ = runs
    for r in (1, 2, 3):
        assert adapter_bytes(a, f"checkpoints/round-{r}") == adapter_bytes(b, f"checkpoints/round-{r}"), r
    # the rounds really trained and the delta codec really sent deltas (otherwise the comparison is empty)
    rows = read_jsonl(a / "metrics.jsonl")[1:]
    assert adapter_bytes(a, "checkpoints/round-1") != adapter_bytes(a, "final_adapter")
    assert all(r["clients"] == 2 and r["replies"] == 2 and r["rejected"] == [] for r in rows)
    assert rows[-1]["bytes_down"] < rows[0]["bytes_down"], "later rounds send int3 deltas, not full adapters"


def test_compressed_wire_through_the_real_runtime(runs):
    """``delta-int3`` on both links of run A, against the fp32 size of one adapter copy."""
    from safetensors.numpy import load_file

    from flowertune.federation.records import to_array_record

    a, _, _, _ = runs
    per_copy = to_array_record(load_file(a / "final_adapter" / "adapter_model.safetensors")).count_bytes()
    rows = read_jsonl(a / "metrics.jsonl")[1:]
    # first contact (both sampled nodes in round 1): the full adapter in fp16, about half of fp32 (Flower counts
    # a small per-array overhead)
    assert 0.4 < rows[0]["bytes_down"] / (2 * per_copy) < 0.6, (rows[0]["bytes_down"], per_copy)
    # uplinks: 3-bit deltas and one fp32 scale per slice (on this tiny adapter the scales weigh a lot)
    assert all(r["bytes_up"] < 2 * per_copy / 2 for r in rows), [r["bytes_up"] for r in rows]


def test_resume_with_a_changed_config_is_refused_before_start(runs, tmp_path):
    _, b, _, _ = runs
    proc = run_flowertune(tmp_path, "run", "--resume", str(b), "model.lora.peft-lora-r=16", timeout=120)
    assert proc.returncode == 2
    assert "model.lora.peft-lora-r: 4 -> 16" in proc.stderr and "Starting" not in proc.stdout
    proc = run_flowertune(tmp_path, "run", "--resume", str(b), "num-server-rounds=6", timeout=120)
    assert proc.returncode == 2 and "num-server-rounds: 4 -> 6" in proc.stderr and "--force" in proc.stderr


def test_freeze_a_keeps_a_bit_for_bit_and_sends_only_b_up(runs, tiny_model_dir):
    """Every saved global holds the initial A (fp16-exact: the first downlink is fp16), B moves; each round's
    uplink is exactly two int3 payloads of B's update (an A update would add its own entries: this, not the
    saved A, which the server keeps whatever a node sends, shows that the nodes froze A); the final adapter
    loads with PEFT. (Under freeze-a, FedAdam's moments and the residuals of A stay zero: the resume carries B's.)"""
    from safetensors.numpy import load_file

    from flowertune.wire import get_codec, payload_bytes

    a, _, _, _ = runs
    saved = [load_file(str(a / d / "adapter_model.safetensors"))
             for d in ("checkpoints/round-1", "checkpoints/round-2", "final_adapter")]
    a_keys = [k for k in saved[0] if ".lora_A." in k]
    b_keys = [k for k in saved[0] if ".lora_B." in k]
    assert a_keys and len(a_keys) == len(b_keys) == len(saved[0]) // 2
    for k in a_keys:
        assert all(np.array_equal(s[k], saved[0][k]) for s in saved), k
        assert np.array_equal(saved[0][k].astype(np.float16).astype(np.float32), saved[0][k]), k
    assert all(not np.array_equal(saved[0][k], saved[-1][k]) for k in b_keys)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), a / "final_adapter").eval()
    with torch.no_grad():
        assert torch.isfinite(m(input_ids=torch.randint(0, 300, (1, 10))).logits).all()  # a standard PEFT adapter
    rng = np.random.default_rng(0)
    b_only = {k: saved[0][k] for k in b_keys}
    moved = {k: (v + rng.standard_normal(v.shape)).astype(np.float32) for k, v in b_only.items()}
    per_reply = payload_bytes(get_codec("delta-int3").encode(moved, b_only, None)[0])
    rows = read_jsonl(a / "metrics.jsonl")[1:]
    assert [r["bytes_up"] for r in rows] == [2 * per_reply] * 4

"""2 rounds x 2 clients through Flower's real simulation runtime (`flwr run`, Ray), tiny model."""

import json
import subprocess

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from flowertune.federation.rundir import read_config
from tests.e2e.helpers import BIN, isolated_env, kill_processes_mentioning, read_jsonl, tiny_overrides


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory, tiny_model_dir, tiny_data_file):
    home = tmp_path_factory.mktemp("home")
    out = tmp_path_factory.mktemp("runs") / "sim"
    env = isolated_env(home)
    cmd = [str(BIN / "flowertune"), "run", "--num-supernodes", "2", "--out", str(out),
           *tiny_overrides(tiny_model_dir, tiny_data_file)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    finally:
        kill_processes_mentioning(str(home))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_run_directory_is_complete_and_self_describing(sim_run):
    out, proc = sim_run
    assert read_config(out)["num-server-rounds"] == 2 and read_config(out)["run.output-dir"] == str(out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["train_loss"] > 0 and r["eval_loss"] > 0 and r["rejected"] == [] and r["wall_s"] > 0
    assert (out / "checkpoints/round-1/adapter_model.safetensors").is_file()
    assert (out / "final_adapter/adapter_config.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and str(out) in proc.stdout


def test_byte_counts_are_two_adapter_copies_per_client(sim_run):
    out, _ = sim_run
    final = out / "final_adapter/adapter_model.safetensors"
    from safetensors.numpy import load_file

    from flowertune.wire import to_array_record

    per_copy = to_array_record(load_file(final)).count_bytes()
    rows = read_jsonl(out / "metrics.jsonl")[1:]
    for r in rows:
        assert r["clients"] == 2
        assert r["bytes_down"] == r["bytes_up"] == 2 * per_copy
        assert r["bytes_round"] == 2 * per_copy * 2
    assert rows[-1]["bytes_cumulative"] == 2 * 2 * 2 * per_copy


def test_the_base_model_stays_resident_across_rounds(sim_run):
    out, _ = sim_run
    rows = read_jsonl(out / "metrics.jsonl")[1:]
    assert all(r["client_model_loads"] == 1.0 for r in rows)


def test_client_memory_is_reported_per_round(sim_run):
    out, _ = sim_run
    rows = read_jsonl(out / "metrics.jsonl")[1:]
    for r in rows:
        assert 0 < r["client_rss_mb"] <= r["client_peak_rss_mb"], r


def test_final_adapter_loads_with_peft_and_differs_from_round_1(sim_run, tiny_model_dir):
    out, _ = sim_run
    x = torch.randint(0, 300, (1, 10))
    logits = []
    for d in ("checkpoints/round-1", "final_adapter"):
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / d).eval()
        with torch.no_grad():
            logits.append(m(input_ids=x).logits)
    assert torch.isfinite(logits[1]).all() and not torch.allclose(logits[0], logits[1])


def test_bad_config_fails_before_anything_starts(tmp_path):
    proc = subprocess.run([str(BIN / "flowertune"), "run", "train.learning-rate=1e-4"], capture_output=True,
                          text=True, env=isolated_env(tmp_path), timeout=120, check=False)
    assert proc.returncode == 2 and "unknown config key" in proc.stderr and "train.learning-rate-max" in proc.stderr


def test_plain_flwr_run_with_a_layered_preset_keeps_a_user_value_equal_to_the_default(
        tmp_path, tiny_model_dir, tiny_data_file):
    """Entry path `flwr run . --run-config "$(flowertune presets --run-config medical k=v ...)"`: r=8 is the
    default and the medical preset says 32; the user's 8 wins, the preset's alpha 64 stays."""
    from tests.conftest import REPO

    home, out = tmp_path / "home", tmp_path / "plain"
    env = {**isolated_env(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    user = [*tiny_overrides(tiny_model_dir, tiny_data_file, **{"num-server-rounds": 1}), "model.lora.peft-lora-r=8",
            "model.quantization=0", "model.dtype=\"float32\"", "model.gradient-checkpointing=false",
            "train.training-arguments.optim=\"adamw_torch\"", f"run.output-dir=\"{out}\"", "strategy.fraction-evaluate=1.0",
            "strategy.min-train-nodes=2", "strategy.min-available-nodes=2"]
    text = subprocess.run([str(BIN / "flowertune"), "presets", "--run-config", "medical", *user], env=env,
                          capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    try:
        proc = subprocess.run([str(BIN / "flwr"), "run", str(REPO), "--run-config", text, "--stream",
                               "--federation-config", "num-supernodes=2"], env=env, capture_output=True, text=True,
                              timeout=900, check=False)
    finally:
        kill_processes_mentioning(str(home))
    assert proc.returncode == 0 and (out / "summary.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = read_config(out)
    assert cfg["preset"] == "medical" and cfg["model.lora.peft-lora-r"] == 8 and cfg["model.lora.peft-lora-alpha"] == 64
    adapter = json.loads((out / "final_adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 64

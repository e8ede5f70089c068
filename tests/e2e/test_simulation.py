"""Flower's own entry point: plain `flwr run .` with a layered preset (tiny model, Ray simulation); and a bad
config failing before anything starts. (The run directory, byte counts, the resident model and the final
adapter of a plain 2-round x 2-client `flowertune run` are checked on a sweep member's run:
tests/e2e/test_sweep_report.py.)"""

import json
import subprocess

import numpy as np
import pytest

from flowertune.federation.rundir import read_config
from tests.e2e.helpers import BIN, isolated_env, kill_processes_mentioning, tiny_overrides


def test_bad_config_fails_before_anything_starts(tmp_path):
    proc = subprocess.run([str(BIN / "flowertune"), "run", "train.learning-rate=1e-4"], capture_output=True,
                          text=True, env=isolated_env(tmp_path), timeout=120, check=False)
    assert proc.returncode == 2 and "unknown config key" in proc.stderr and "train.learning-rate-max" in proc.stderr


def test_plain_flwr_run_with_a_layered_preset_keeps_a_user_value_equal_to_the_default_and_dp_stops_at_its_budget(
        tmp_path, tiny_model_dir, tiny_data_file):
    """Entry path `flwr run . --run-config "$(flowertune presets --run-config medical k=v ...)"`: r=8 is the
    default and the medical preset says 32; the user's 8 wins, the preset's alpha 64 stays. The same run is
    client-level DP with client-side clipping (Flower's fixedclipping_mod in the real ClientApp; the server
    rejects an update over the norm, 1e-3 here, under what two Adam steps move this adapter: without the
    mod's clipping no round would have usable updates) and a target ε between what 1 and 2 rounds spend: it
    stops before round 2 with the reason, ε in metrics.jsonl, the round-1 global as final adapter. The nodes
    also train with DP-SGD (record-level): its ε is in the rows and the summary, and no training loss is."""
    from safetensors.numpy import load_file

    from flowertune.federation.stack.privacy import planned_epsilon
    from flowertune.train.accounting import record_epsilon
    from tests.conftest import REPO

    z, delta = 2.0, 1e-5
    target = (planned_epsilon(z, 1, delta) + planned_epsilon(z, 2, delta)) / 2
    home, out = tmp_path / "home", tmp_path / "plain"
    env = {**isolated_env(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    user = [*tiny_overrides(tiny_model_dir, tiny_data_file, **{
                "num-server-rounds": 2, "strategy.dp.mode": "client-fixed", "strategy.dp.noise-multiplier": z,
                "strategy.dp.clipping-norm": 1e-3, "strategy.dp.delta": delta, "strategy.dp.target-epsilon": target,
                "train.dp-sgd.noise-multiplier": 1.0, "train.dp-sgd.sample-rate": 0.5,
                "train.dp-sgd.clipping-norm": 0.5}),
            "model.lora.peft-lora-r=8",
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
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["dp_releases"] == 1 and rows[1]["rejected"] == []
    assert rows[1]["dp_epsilon"] == pytest.approx(planned_epsilon(z, 1, delta))
    # record-level: each node ran one local round of 2 DP-SGD steps and kept its training loss
    assert rows[1]["dp_record_local_rounds"] == 1 and rows[1]["train_loss"] is None
    assert rows[1]["client_tokens_per_s"] is None and rows[1]["notes"] == []  # the nodes did not send them
    assert rows[1]["dp_record_epsilon"] == pytest.approx(record_epsilon(1.0, 0.5, 2, 1e-5))
    stopped = json.loads((out / "stopped.json").read_text())["reason"]
    assert "round 2 would take ε past strategy.dp.target-epsilon" in stopped, stopped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["stopped"] == stopped and summary["dp_epsilon"] == rows[1]["dp_epsilon"]
    assert summary["dp_record_epsilon"] == rows[1]["dp_record_epsilon"]
    final = load_file(str(out / "final_adapter" / "adapter_model.safetensors"))
    kept = load_file(str(out / "checkpoints" / "round-1" / "adapter_model.safetensors"))
    assert final.keys() == kept.keys() and all(np.array_equal(final[k], kept[k]) for k in final)

"""The quickstart as 4-bit QLoRA on the CPU (NF4 + double quant base, kbit preparation, 8-bit AdamW), then
`flowertune eval --quantization 4` on the run's adapter."""

import json
import subprocess

import pytest

from tests.e2e.helpers import BIN, assert_quickstart_loss_falls, isolated_env, run_flowertune


@pytest.mark.slow
def test_4bit_quickstart_lowers_the_held_out_loss_and_evaluates_in_4bit(tmp_path, real_data_dir):
    home, out = tmp_path / "home", tmp_path / "qlora"
    env = isolated_env(home)
    # the quickstart's model, data and LoRA in 4 bits, cut to 2 rounds of 6 steps with half of the nodes
    # evaluating (a 4-bit matmul on the CPU dequantizes its weight: every forward pass costs)
    proc = run_flowertune(home, "run", "--out", str(out), "model.quantization=4",
                          "train.training-arguments.optim=paged_adamw_8bit", "num-server-rounds=2",
                          "train.training-arguments.max-steps=6", "strategy.fraction-evaluate=0.5")
    rows = assert_quickstart_loss_falls(proc, out, rounds=2)
    adapter = json.loads((out / "final_adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8
    # two 1-token MCQ benchmarks: the 4-bit base with the run's adapter through `flowertune eval`. Finance and
    # code generate until their budgets at a few tokens/s in 4 bits on this CPU (FPB 56 s, HumanEval 80 s for 2
    # items); their harness paths are checked in 16 bits (tests/component/test_eval_slow.py, tests/component/test_code_*.py)
    names = "pubmedqa,mmlu"
    proc = subprocess.run([str(BIN / "flowertune"), "eval", "--run", str(out), "--benchmarks", names, "--limit", "2",
                           "--quantization", "4", "--batch-size", "2", "--data-dir", str(real_data_dir),
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4-bit" in proc.stderr  # the base model was loaded in 4 bits
    results = json.loads((out / "eval" / "results.json").read_text())
    assert sorted(results) == sorted(names.split(",")) and all(r["n"] == 2 for r in results.values())
    print(f"\n4-bit quickstart: eval loss {rows[0]['eval_loss']:.4f} -> {rows[2]['eval_loss']:.4f}, "
          f"round {rows[1]['round_s']:.0f} s, client peak RSS {rows[2]['client_peak_rss_mb']:.0f} MB")

"""Train in the frame you are scored in: a short federated run of the embedded model on finance sentiment
rows (built from the non-evaluation FPB/FiQA rows) in the finance evaluation frame, then FPB --limit 64."""

import json
import subprocess

import pytest

from tests.e2e.helpers import BIN, isolated_env, kill_processes_mentioning

ROUNDS = 5


@pytest.mark.slow
def test_finance_frame_beats_the_constant_answer_and_stops_at_the_label(tmp_path, real_data_dir):
    import flowertune.eval.benchmarks  # noqa: F401  (registers them)
    from flowertune.eval.benchmark import BENCHMARKS
    from flowertune.eval.protocol import sentiment_correct
    from flowertune.federation.rundir import read_config

    home, out, data = tmp_path / "home", tmp_path / "run", tmp_path / "fin.jsonl"
    env = isolated_env(home)
    subprocess.run([str(BIN / "flowertune"), "build-data", "finance-sentiment", "--data-dir", str(real_data_dir),
                    "--out", str(data)], env=env, check=True, capture_output=True, timeout=300)
    overrides = [
        "model.name=embedded", "model.quantization=0", "model.dtype=auto", "model.gradient-checkpointing=false",
        "train.training-arguments.optim=adamw_torch", f"static.dataset.name={data}", f"num-server-rounds={ROUNDS}",
        "strategy.fraction-train=0.5", "train.eval-every-round=0", "train.learning-rate-max=1e-3",
        "train.learning-rate-min=1e-4", "model.lora.target-modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        "train.training-arguments.max-steps=10", "train.training-arguments.per-device-train-batch-size=16",
    ]
    try:  # the finance preset picks the finance frame; 4 nodes instead of its 50 to keep it short
        proc = subprocess.run([str(BIN / "flowertune"), "run", "--preset", "finance", "--num-supernodes", "4",
                               "--out", str(out), *overrides], env=env, capture_output=True, text=True, timeout=1500,
                              check=False)
    finally:
        kill_processes_mentioning(str(home))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert read_config(out)["data.prompt-frame"] == "finance"
    proc = subprocess.run([str(BIN / "flowertune"), "eval", "--run", str(out), "--benchmarks", "fpb", "--limit", "64",
                           "--data-dir", str(real_data_dir), "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "eval" / "results.json").read_text())["fpb"]
    items = BENCHMARKS.get("fpb").load(real_data_dir)[:64]
    constant = max(sum(sentiment_correct(label, it) for it in items) for label in ("negative", "neutral", "positive"))
    assert result["score"] > 100 * constant / 64, (result, constant)
    assert result["eos_after_answer_pct"] >= 90.0, result
    rows = [json.loads(line) for line in (out / "eval" / "items-fpb.jsonl").read_text().splitlines()]
    print(f"\nfinance frame, {ROUNDS} rounds: FPB@64 {result['score']:.1f} (constant {100 * constant / 64:.1f}), "
          f"EOS after label {result['eos_after_answer_pct']:.1f}%, e.g. {rows[0]['generation']!r}")

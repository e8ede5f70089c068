"""Every benchmarks/ script still runs (its --quick mode): the scripts never rot."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.e2e.helpers import isolated_env, kill_processes_mentioning

SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
# run for real, with its own assertions, by another test: no separate --quick run needed
RUN_ELSEWHERE = {"quality.py": "tests/e2e/test_finance_frame_slow.py", "soak.py": "tests/e2e/test_deployment_churn.py",
                 "attacks.py": "tests/e2e/test_attacks_runtime.py", "privacy.py": "tests/e2e/test_privacy_runtime.py"}


def test_there_are_benchmark_scripts():
    assert {"train_speed.py", "round_speed.py", "wire_bytes.py", "wire_quality.py", "eval_speed.py", "gpu_train.py",
            "quant_train.py"} <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in RUN_ELSEWHERE])
def test_quick_mode_runs(script, tmp_path):
    # a private FLOWERTUNE_HOME and SuperLink ports: a script's Flower processes neither meet a user's managed
    # SuperLink nor outlive the test
    try:
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick"], capture_output=True,
                              text=True, timeout=900, cwd=REPO, check=False, env=isolated_env(tmp_path / "home"))
    finally:
        kill_processes_mentioning(str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) >= 3, proc.stdout  # printed its table


def test_the_scripts_run_elsewhere_are_run_there():
    for script, test in RUN_ELSEWHERE.items():
        assert script in SCRIPTS and f'"{script}"' in (REPO / test).read_text(), (script, test)


def test_gpu_benchmark_without_cuda_says_so():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, whatever the machine has
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py")], capture_output=True,
                          text=True, timeout=300, cwd=REPO, check=False, env=env)
    assert proc.returncode != 0
    assert "needs a CUDA GPU" in proc.stderr and "--quick" in proc.stderr, proc.stderr[-2000:]

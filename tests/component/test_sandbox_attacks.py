"""The code sandbox attacked, in every mode this machine can run, with the host checked afterwards.

Modes: as the test runner (root on CI: bwrap under a throw-away uid, with a cgroup), and as an ordinary
user (uid 65533 via ``setpriv`` when the runner is root: bwrap in an unprivileged user namespace, no
cgroup). Each run is ``sandbox_attacks.py`` (stdlib only) with ``flowertune/eval/sandbox.py`` beside it.
Then: the unisolated mode is refused without ``--unsafe-sandbox``, by the module and by ``flowertune eval``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowertune.eval import sandbox

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"
TEST_UID = 65533

MODES = ["runner"]
if os.geteuid() == 0 and shutil.which("setpriv") and os.path.exists(SYSTEM_PYTHON):
    MODES.append("user")


@pytest.fixture(scope="module", params=MODES)
def attacks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not sandbox.isolation().isolated:
        pytest.fail(f"the sandbox cannot isolate here: {sandbox.isolation().reason} (CI installs bubblewrap)")
    box = tmp_path_factory.mktemp(f"attacks-{request.param}")
    for source in (HERE / "sandbox_attacks.py", Path(sandbox.__file__)):
        shutil.copy(source, box / source.name)
    out = box / "out"
    out.mkdir()
    if request.param == "runner":
        cmd = [sys.executable, str(box / "sandbox_attacks.py"), str(out / "report.json")]
    else:  # every parent must be searchable by the test uid; the output dir is its own
        for path in [box, *box.parents]:
            path.chmod(path.stat().st_mode | 0o011)
        box.chmod(0o755)
        os.chown(out, TEST_UID, TEST_UID)
        cmd = ["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups", "--",
               SYSTEM_PYTHON, str(box / "sandbox_attacks.py"), str(out / "report.json")]  # fmt: skip
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(out), "TMPDIR": "/tmp"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    expected_uid = 0 if request.param == "runner" and os.geteuid() == 0 else os.geteuid()
    assert report["uid"] == (TEST_UID if request.param == "user" else expected_uid)
    assert report["mode"] in ("root", "user")
    return report


def _lines(entry: dict) -> list[dict]:
    out = []
    for line in entry["stderr"].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _merged(entry: dict) -> dict:
    merged: dict = {}
    for line in _lines(entry):
        merged.update(line)
    return merged


def test_no_capabilities_no_umount_no_host_tmp_or_home(attacks: dict) -> None:
    entry = attacks["attacks"]["umount_and_host_tmp"]
    seen = _merged(entry)
    assert seen["umount2"] == -1 and seen["umount2_errno"] == errno.EPERM
    assert seen["umount"] != 0
    assert int(seen["capeff"], 16) == 0
    assert seen["unshare"] != 0  # no nested user namespace to regain capabilities in
    assert seen["tmp"] == ["work"]  # the private tmpfs, not the host's /tmp
    wrote = [line["wrote"] for line in _lines(entry) if "wrote" in line]
    # /tmp is the private tmpfs: writing there is allowed and lands nowhere on the host
    assert all(path.startswith("/tmp/") for path in wrote), wrote
    blocked = {line["blocked"]: line["errno"] for line in _lines(entry) if "blocked" in line}
    assert {p for p in blocked if not p.startswith("/tmp")} >= {"/usr/pwned", "/etc/pwned", "/pwned", "/dev/pwned"}
    assert not entry["host_tmp_written"] and not entry["home_written"]


def test_no_secrets_and_a_private_proc(attacks: dict) -> None:
    seen = _merged(attacks["attacks"]["read_secrets_and_proc"])
    assert "secret" not in seen and seen["secret_blocked"] == errno.ENOENT
    assert seen["saw_marker"] is False
    assert seen["processes"] <= 4  # the shell at PID 1, prlimit's python, nothing of the host
    assert set(seen["root"]) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    assert seen["home_exists"] is False and seen["cwd_project"] is False


def test_no_network_and_no_unix_sockets(attacks: dict) -> None:
    entry = attacks["attacks"]["connect"]
    lines = _lines(entry)
    assert not [line for line in lines if "connected" in line]
    assert len([line for line in lines if "refused" in line]) == 3
    assert not entry["tcp_accepted"] and not entry["unix_accepted"] and not entry["abstract_accepted"]


def test_a_setsid_child_does_not_survive(attacks: dict) -> None:
    entry = attacks["attacks"]["setsid_survivor"]
    assert entry["status"] == "passed" and _merged(entry)["parent"] == "exits"
    assert entry["survivors"] == []


def test_fork_bomb_is_contained(attacks: dict) -> None:
    entry = attacks["attacks"]["fork_bomb"]
    assert entry["status"] == "timeout" and entry["seconds"] < 3 + 5
    # nproc=32 for the whole program (PID 1's shell and prlimit's python included), plus bwrap outside
    assert 8 < entry["peak_tasks"] <= 32 + 3, entry["peak_tasks"]
    assert entry["survivors"] == []
    assert attacks["attacks"]["after_fork_bomb"]["status"] == "passed"


def test_kernel_interfaces_are_refused_by_seccomp(attacks: dict) -> None:
    if sandbox.seccomp_filter() is None:
        pytest.skip("the seccomp filter is x86-64 only")
    calls = {line["syscall"]: line for line in _lines(attacks["attacks"]["seccomp"]) if "syscall" in line}
    assert set(calls) == {"keyctl", "io_uring_setup", "bpf", "perf_event_open", "userfaultfd", "ptrace"}
    assert all(c["result"] == -1 and c["errno"] == errno.EPERM for c in calls.values()), calls


def test_memory_is_bounded_for_the_whole_program(attacks: dict) -> None:
    entry = attacks["attacks"]["memory_bomb"]
    seen = _merged(entry)
    held_mb = 150 * seen.get("held_at_once", 0)
    if attacks["cgroup"]:  # one cgroup for the whole program: 256 MB, so at most one 150 MB holder
        assert held_mb <= 256, seen
    else:  # the documented fallback: nproc=6 processes (PID 1's shell and the parent among them)
        assert seen["forked"] <= 6 - 2 and held_mb <= (6 - 2) * 150, seen
    assert entry["survivors"] == []


def test_disk_filler_hits_the_tmpfs_bound(attacks: dict) -> None:
    fills = [line for line in _lines(attacks["attacks"]["disk_filler"]) if "path" in line]
    assert [f["path"] for f in fills] == ["/tmp/work/fill", "/dev/shm/fill", "/tmp/fill2"]
    for fill in fills:
        assert fill["error"] == errno.ENOSPC and fill["mb"] <= 16, fill


# ---------------------------------------------------------------------------------------------------------------
# refused without the flag


@pytest.fixture
def no_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A machine without bubblewrap: PATH holds prlimit and setpriv only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("prlimit", "setpriv"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    sandbox.isolation.cache_clear()
    yield bin_dir
    sandbox.allow_unsafe(False)
    monkeypatch.undo()
    sandbox.isolation.cache_clear()


def test_unisolated_mode_is_refused_without_the_flag(no_bwrap: Path) -> None:
    iso = sandbox.isolation()
    assert iso.mode == "none" and "bwrap not found" in iso.reason
    with pytest.raises(sandbox.SandboxUnavailable, match="--unsafe-sandbox") as refused:
        sandbox.run_program(sandbox.Program("print(1)\n"))
    assert "\n" not in str(refused.value) and "bubblewrap" in str(refused.value)
    with pytest.raises(sandbox.SandboxUnavailable):
        sandbox.run_programs([sandbox.Program("print(1)\n")])
    sandbox.allow_unsafe(True)  # the explicit opt-in runs it with resource limits only
    result = sandbox.run_program(sandbox.Program("import sys\nsys.exit(3)\n"))
    assert result.status == "failed" and result.returncode == 3


def test_eval_refuses_before_loading_a_model(no_bwrap: Path, tmp_path: Path) -> None:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flowertune.commands.eval", "--model", "embedded", "--benchmarks", "humaneval",
         "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PATH": str(no_bwrap)})  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "--unsafe-sandbox" in last and "bwrap not found" in last
    assert "loaded embedded" not in done.stderr and not (tmp_path / "out").exists()
    assert time.monotonic() - start < 60

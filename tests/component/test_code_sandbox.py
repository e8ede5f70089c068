"""The sandbox: pass/fail in three languages, and every limit actually biting."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from flowertune.eval import sandbox
from flowertune.eval.sandbox import Limits, Program, isolation, run_program, run_programs

NAMESPACES = isolation().mode in ("root", "userns")
needs_ns = pytest.mark.skipif(not NAMESPACES, reason="no namespace isolation on this machine")
needs_root_mode = pytest.mark.skipif(isolation().mode != "root", reason="needs the root mode (uid switch)")


def _sandbox_processes() -> list[int]:
    """PIDs owned by the sandbox's throw-away uids."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid_line = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) >= sandbox._UID_BASE:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize(
    ("language", "good", "bad"),
    [
        ("python", "def f(x):\n    return x * 2\nassert f(2) == 4\n", "def f(x):\n    return x\nassert f(2) == 4\n"),
        (
            "cpp",
            "#include <cassert>\nint f(int x) { return 2 * x; }\nint main() { assert(f(2) == 4); }\n",
            "#include <cassert>\nint f(int x) { return x; }\nint main() { assert(f(2) == 4); }\n",
        ),
        (
            "js",
            "const assert = require('node:assert');\nfunction f(x) { return 2 * x; }\nassert.deepEqual(f(2), 4);\n",
            "const assert = require('node:assert');\nfunction f(x) { return x; }\nassert.deepEqual(f(2), 4);\n",
        ),
    ],
)
def test_correct_passes_and_wrong_fails(language: str, good: str, bad: str) -> None:
    ok = run_program(Program(good, language))
    assert ok.passed and ok.status == "passed", ok
    ko = run_program(Program(bad, language))
    assert not ko.passed and ko.status == "failed"
    assert "ssert" in ko.stderr_tail  # AssertionError / Assertion `...' failed


def test_cpp_compile_error_is_a_failure() -> None:
    result = run_program(Program("int main( { return 0; }\n", "cpp"))
    assert result.status == "failed" and result.stage == "compile" and "error" in result.stderr_tail


def test_unknown_language_is_rejected() -> None:
    with pytest.raises(ValueError, match="python, cpp, js"):
        run_program(Program("", "cobol"))


@pytest.mark.parametrize(
    ("language", "source"),
    [
        ("python", "while True:\n    pass\n"),
        ("cpp", "int main() { volatile long i = 0; for (;;) ++i; }\n"),
        ("js", "for (;;) {}\n"),
    ],
)
def test_infinite_loop_is_killed_by_the_time_limit(language: str, source: str) -> None:
    start = time.monotonic()
    result = run_program(Program(source, language), Limits(wall_s=1.5))
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 15  # a C++ build comes first


def test_cpu_limit_bites_before_a_long_wall_limit() -> None:
    result = run_program(Program("while True:\n    pass\n"), Limits(wall_s=30, cpu_s=1))
    assert result.status == "timeout" and result.seconds < 10


def test_sleeping_child_that_escapes_the_group_is_reaped() -> None:
    # a daemonised grandchild (own session) must not outlive the run
    source = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nelse:\n    time.sleep(60)\n"
    result = run_program(Program(source), Limits(wall_s=1))
    assert result.status == "timeout"
    if isolation().mode == "root":
        time.sleep(0.2)
        assert _sandbox_processes() == []


@needs_root_mode
def test_fork_bomb_is_contained() -> None:
    # every process keeps forking and retries on failure; RLIMIT_NPROC (per throw-away uid) caps the count,
    # the wall limit and the PID namespace take them all down
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.05)\n"
    result = run_program(Program(bomb), Limits(wall_s=2, nproc=16))
    assert not result.passed and result.status == "timeout"
    time.sleep(0.2)
    assert _sandbox_processes() == []
    assert run_program(Program("assert True\n")).passed  # the machine is fine


def test_memory_hog_is_stopped() -> None:
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 * 1024))\n"
    result = run_program(Program(hog), Limits(wall_s=10, memory_mb=256))
    assert result.status == "failed" and "MemoryError" in result.stderr_tail


def test_cpp_memory_hog_is_stopped() -> None:
    hog = "#include <vector>\n#include <cstring>\nint main() {\n  std::vector<char*> v;\n  for (;;) { char* p = new char[64 << 20]; std::memset(p, 1, 64 << 20); v.push_back(p); }\n}\n"
    result = run_program(Program(hog, "cpp"), Limits(wall_s=10, memory_mb=256))
    assert result.status == "failed"  # std::bad_alloc -> abort


@needs_ns
def test_no_network() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        source = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
        result = run_program(Program(source), Limits(wall_s=5))
        assert result.status == "failed" and "connected" not in result.stderr_tail
        assert "unreachable" in result.stderr_tail or "refused" in result.stderr_tail
        with pytest.raises(TimeoutError):
            server.accept()


@needs_ns
def test_no_writes_outside_the_work_dir(tmp_path: Path) -> None:
    host_tmp = Path(tempfile.gettempdir()) / f"flowertune-sandbox-escape-{os.getpid()}"
    source = (
        "import os\n"
        "open('inside.txt', 'w').write('ok')\n"  # the work dir is writable
        "assert open('inside.txt').read() == 'ok'\n"
        f"open('{host_tmp}', 'w').write('x')\n"  # lands in the private /tmp, not the host's
        "for path in [" + f"'{tmp_path}/escaped.txt', '{Path.cwd()}/escaped.txt'" + "]:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print('blocked', path, e)\n"
    )
    result = run_program(Program(source))
    assert result.passed, result
    assert not host_tmp.exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not (Path.cwd() / "escaped.txt").exists()


@needs_root_mode
def test_world_writable_dir_outside_is_still_protected(tmp_path: Path) -> None:
    # outside the private tmpfs mounts, the throw-away uid is kept out by ordinary permissions
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    result = run_program(Program(f"open('{private}/x', 'w').write('x')\n"))
    assert result.status == "failed" and not (private / "x").exists()


def test_work_dir_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run_program(Program("open('f.txt', 'w').write('x' * 1000)\n")).passed
    assert list(tmp_path.iterdir()) == []


def test_output_flood_is_capped() -> None:
    result = run_program(
        Program("import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n"), Limits(wall_s=5, file_mb=1)
    )
    assert not result.passed and len(result.stderr_tail) <= 2000


def test_run_programs_keeps_order_and_runs_in_parallel() -> None:
    programs = [Program(f"import time\ntime.sleep(0.5)\nassert {i} % 2 == 0\n") for i in range(4)]
    start = time.monotonic()
    results = run_programs(programs, workers=2)
    elapsed = time.monotonic() - start
    assert [r.passed for r in results] == [True, False, True, False]
    assert elapsed < 4 * 0.5 + 1.0  # two at a time, not one

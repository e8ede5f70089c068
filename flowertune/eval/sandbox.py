"""Run untrusted generated programs (Python, C++, JavaScript) in an isolated, resource-limited process.

Isolation, strongest first (probed once per process, see :func:`isolation`):

* ``"root"`` -- we are root: ``unshare`` gives the program fresh network (loopback only, down), PID and
  mount namespaces; private tmpfs mounts hide ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock``; the
  working dir is bind-mounted at ``/tmp/work``; ``setpriv`` drops to a throw-away uid (one per concurrent
  slot, so ``RLIMIT_NPROC`` counts only that program's processes) with no capabilities and
  ``no_new_privs``. Writes outside the working dir and the private tmpfs fail with ``EACCES``.
* ``"userns"`` -- not root but user namespaces work: the same namespaces inside a user namespace. The
  program keeps the caller's real uid, so files the caller owns stay writable (logged as a warning) and
  ``RLIMIT_NPROC`` counts all of the caller's processes.
* ``"rlimits"`` -- neither works: resource limits, a fresh working dir and a killed process group only;
  no network or filesystem isolation (logged as a warning).

Always: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, no core files, a wall-clock
limit enforced by killing the whole process group (and, with namespaces, the PID namespace, which takes
every descendant with it, including ones that called ``setsid``), stdout/stderr to size-capped files,
and a fresh temporary directory removed afterwards. RLIMIT_NPROC does not apply to root (the kernel
exempts uid 0 and CAP_SYS_ADMIN/CAP_SYS_RESOURCE), which is why the root mode switches uid.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

LANGUAGES = ("python", "cpp", "js")
_SETUP_FAILED = 125  # exit code of the launcher script when the namespace setup itself fails
_SETUP_MARK = "flowertune-sandbox: setup failed"
_UID_BASE = 200_000  # throw-away uids: _UID_BASE + (pid % 50_000) * _SLOTS + slot; none has a passwd entry
_SLOTS = 64


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program run."""

    wall_s: float = 10.0
    cpu_s: float | None = None  # RLIMIT_CPU; default: the wall limit rounded up, plus one second
    memory_mb: int = 1024  # RLIMIT_AS (address space, not RSS)
    nproc: int = 64  # RLIMIT_NPROC (processes *and threads* of the sandbox uid)
    file_mb: int = 32  # RLIMIT_FSIZE: largest file the program may write, stdout/stderr included
    tmpfs_mb: int = 64  # size of each private tmpfs (namespace modes)


# node/V8 reserves far more address space than it uses (pointer-compression cage, code range, wasm guard
# regions; it degrades when reservations fail, node 20 starts under 1 GiB), so JS gets a higher AS floor
# plus a heap cap that V8 itself enforces.
NODE_HEAP_MB = 512
NODE_AS_MB = 4096
COMPILE_LIMITS = Limits(wall_s=60.0, memory_mb=4096, nproc=64, file_mb=256)


@dataclass(frozen=True)
class Program:
    """A complete program (solution plus tests) in one of :data:`LANGUAGES`."""

    source: str
    language: str = "python"


@dataclass(frozen=True)
class Result:
    """What happened to one program: ``status`` is passed, failed, timeout or error (the sandbox's fault)."""

    passed: bool
    status: str
    returncode: int | None
    stderr_tail: str
    seconds: float
    stage: str = "run"  # "compile" when a C++ program failed to build


@dataclass(frozen=True)
class Isolation:
    """The isolation mode in use and the throw-away uid base (root mode only)."""

    mode: str  # "root" | "userns" | "rlimits"
    unshare: tuple[str, ...]


# --------------------------------------------------------------------------------------------------------------
# probing


def _probe(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, check=False, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe (once) which isolation this machine allows and log what is missing."""
    have = {tool: shutil.which(tool) is not None for tool in ("unshare", "setpriv", "prlimit", "mount")}
    base = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount"]
    probe_script = ["sh", "-c", "mount --make-rprivate / && mount -t tmpfs -o size=1m tmpfs /tmp"]
    if have["unshare"] and have["mount"]:
        if os.geteuid() == 0 and have["setpriv"] and _probe([*base, "--", *probe_script]):
            return Isolation("root", tuple(base))
        userns = ["unshare", "--user", "--map-root-user", *base[1:]]
        if _probe([*userns, "--", *probe_script]):
            log.warning(
                "sandbox: not root, using a user namespace; programs run with your uid and can write your files"
            )
            return Isolation("userns", tuple(userns))
    log.warning(
        "sandbox: no namespaces available (need util-linux unshare/setpriv and root or user namespaces); "
        "programs run with resource limits only, WITHOUT network or filesystem isolation"
    )
    return Isolation("rlimits", ())


def _world_usable(path: str) -> bool:
    """Whether an unprivileged uid can execute ``path`` (every parent dir searchable, file o+rx)."""
    real = Path(os.path.realpath(path))
    if not real.is_file() or real.stat().st_mode & 0o005 != 0o005:
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)


@lru_cache(maxsize=1)
def python_executable() -> str:
    """A Python interpreter the sandbox uid can run (the venv's may live under a private home)."""
    if isolation().mode != "root":
        return sys.executable
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate and _world_usable(candidate):
            return candidate
    raise RuntimeError("no python3 executable is readable by an unprivileged uid")


# --------------------------------------------------------------------------------------------------------------
# one run

# Runs as root (or userns root) inside the new namespaces: $1 = work dir, $2 = "runas" prefix length,
# then the runas prefix and the command. The shell stays PID 1 (no exec) so that it keeps the parent-death
# signal from `unshare --kill-child`, which a uid change would clear: killing unshare kills the namespace.
_NS_SCRIPT = f"""
fail() {{ echo "{_SETUP_MARK}: $1" >&2; exit {_SETUP_FAILED}; }}
work="$1"; shift
cd "$work" || fail cd
mount --make-rprivate / || fail rprivate
for d in /tmp /var/tmp /dev/shm /run/lock; do
  [ -d "$d" ] && {{ mount -t tmpfs -o "size=$TMPFS_SIZE,mode=1777,nosuid,nodev" tmpfs "$d" || fail "tmpfs $d"; }}
done
mkdir /tmp/work && mount --no-canonicalize --bind . /tmp/work && cd /tmp/work || fail bind
"$@"
"""


class _SlotPool:
    """Hands out slot numbers so that concurrent runs get distinct throw-away uids."""

    def __init__(self, n: int) -> None:
        self._free = list(range(n))
        self._cv = threading.Condition()

    def acquire(self) -> int:
        with self._cv:
            self._cv.wait_for(lambda: bool(self._free))
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._cv:
            self._free.append(slot)
            self._cv.notify()


_SLOT_POOL = _SlotPool(_SLOTS)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _prlimit(limits: Limits) -> list[str]:
    cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.wall_s) + 1
    cpu = max(1, math.ceil(cpu))
    mb = 1024 * 1024
    return [
        "prlimit",
        f"--cpu={cpu}:{cpu + 1}",
        f"--as={limits.memory_mb * mb}",
        f"--nproc={limits.nproc}",
        f"--fsize={limits.file_mb * mb}",
        "--core=0",
        "--",
    ]


def _execute(argv: list[str], box: Path, limits: Limits, uid: int) -> tuple[int | None, bool, float, str]:
    """Run ``argv`` (relative to the work dir) once; returns (returncode, timed_out, seconds, stderr tail)."""
    iso = isolation()
    work = box / "work"
    stdout, stderr = box / "stdout", box / "stderr"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    if iso.mode == "rlimits":
        cmd, cwd = [*_prlimit(limits), *argv], work
        env.update(HOME=str(work), TMPDIR=str(work))
    else:
        runas: list[str] = []
        if iso.mode == "root":
            runas = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                     "--inh-caps=-all", "--bounding-set=-all"]  # fmt: skip
        cmd = [*iso.unshare, "--", "sh", "-c", _NS_SCRIPT, "sandbox", str(work), *runas, *_prlimit(limits), *argv]
        cwd = box
        env.update(HOME="/tmp/work", TMPDIR="/tmp", TMPFS_SIZE=f"{limits.tmpfs_mb}m")
    start = time.monotonic()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)  # fmt: skip
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # the whole group: unshare and its PID-1 shell (whose death empties the PID namespace), or in
            # "rlimits" mode the program and the children that stayed in its group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return proc.returncode, timed_out, time.monotonic() - start, _tail(stderr)


def run_program(program: Program, limits: Limits | None = None) -> Result:
    """Run one program in the sandbox; passed means exit status 0 within the limits."""
    if program.language not in LANGUAGES:
        raise ValueError(f"unknown language {program.language!r}; valid: {', '.join(LANGUAGES)}")
    limits = limits or Limits()
    iso = isolation()
    slot = _SLOT_POOL.acquire()
    uid = _UID_BASE + (os.getpid() % 50_000) * _SLOTS + slot
    box = Path(tempfile.mkdtemp(prefix="flowertune-sandbox-"))
    try:
        work = box / "work"
        work.mkdir(mode=0o700)
        name = {"python": "prog.py", "cpp": "prog.cpp", "js": "prog.js"}[program.language]
        (work / name).write_text(program.source, encoding="utf-8")
        if iso.mode == "root":
            for path in (work, work / name):
                os.chown(path, uid, uid)
        elapsed = 0.0
        if program.language == "cpp":
            build = ["g++", "-std=c++17", name, "-o", "prog"]
            rc, timed_out, seconds, err = _execute(build, box, COMPILE_LIMITS, uid)
            elapsed += seconds
            if rc != 0 or timed_out:
                return _result(rc, timed_out, elapsed, err, "compile")
            argv = ["./prog"]
        elif program.language == "js":
            argv = ["node", f"--max-old-space-size={NODE_HEAP_MB}", name]
            limits = replace(limits, memory_mb=max(limits.memory_mb, NODE_AS_MB))
        else:
            argv = [python_executable(), "-I", name]
        rc, timed_out, seconds, err = _execute(argv, box, limits, uid)
        return _result(rc, timed_out, elapsed + seconds, err, "run")
    finally:
        shutil.rmtree(box, ignore_errors=True)
        _SLOT_POOL.release(slot)


def _result(rc: int | None, timed_out: bool, seconds: float, err: str, stage: str) -> Result:
    if timed_out:
        status = "timeout"
    elif rc == _SETUP_FAILED and _SETUP_MARK in err:
        status = "error"
        log.error("sandbox setup failed: %s", err.strip()[-500:])
    elif rc == 0:
        status = "passed"
    # the launcher shell reports a signalled child as 128 + signal; SIGXCPU is the soft CPU limit and
    # SIGKILL (from the hard limit one second later) the hard one
    elif rc is not None and rc in (128 + signal.SIGXCPU, -signal.SIGXCPU):
        status = "timeout"
    else:
        status = "failed"
    return Result(status == "passed", status, rc, err[-2000:], seconds, stage)


def run_programs(
    programs: Sequence[Program],
    limits: Limits | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Result]:
    """Run many programs with a bounded worker pool (default: one per CPU core); results in input order."""
    workers = max(1, min(workers or os.cpu_count() or 2, _SLOTS))
    results: list[Result | None] = [None] * len(programs)
    done = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal done
        results[i] = run_program(programs[i], limits)
        if progress is not None:
            with lock:
                done += 1
                progress(done, len(programs))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(programs))))
    return [r for r in results if r is not None]

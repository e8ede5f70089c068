"""Run untrusted generated programs (Python, C++, JavaScript) in an isolated, resource-limited process.

The isolation is bubblewrap's (``bwrap``, the sandbox Flatpak uses; Debian/Ubuntu package ``bubblewrap``)
rather than namespace code of our own: it builds the program's root file system from nothing, so there is
no host mount underneath to uncover. Each run gets:

* fresh user, PID, network (loopback only), IPC, UTS and cgroup namespaces; no capabilities; uid/gid
  65534 inside; no further user namespaces (``--disable-userns``); its own session (``--new-session``);
* a root file system that holds only a read-only view of ``/usr`` (plus the ``/bin``, ``/lib``... links,
  ``/etc/alternatives``, ``/etc/ld.so.cache`` and the interpreter's prefix when it lives elsewhere): no
  ``$HOME``, no host ``/tmp``, ``/run`` or ``/var``, no project or run directories, a private ``/proc``
  that lists only the sandbox's processes, a minimal ``/dev``;
* a size-bounded tmpfs ``/tmp`` (``Limits.tmpfs_mb``) holding the work directory ``/tmp/work`` and a
  bounded ``/dev/shm``; the program's source is copied in (a C++ build's binary comes back through a 0700
  host directory, bounded by the compile stage's file-size limit and removed after the run);
* resource limits: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no
  core files, and a wall-clock limit that kills the namespace's PID 1 (a shell running the program), whose
  death empties the PID namespace (every descendant goes with it, ``setsid`` or not);
* a seccomp filter (x86-64) that refuses with EPERM the kernel interfaces generated code has no use for
  and that kernel exploits favour (:data:`DENIED_SYSCALLS_X86_64`: keyrings, bpf, perf events, io_uring,
  userfaultfd, ptrace, mounts, namespaces, modules...), and every 32-bit or x32 syscall;
* a bound for the whole program, all its processes together: a cgroup per run with ``memory_mb`` of
  memory (tmpfs pages included, no swap) and ``nproc`` tasks, where one can be made: cgroup v1's memory
  and pids hierarchies as root, or a cgroup v2 whose ``cgroup.subtree_control`` already enables memory
  and pids for our children (a delegated subtree; on most v2 hosts our own cgroup holds processes and
  cannot, so there the fallback applies). The fallback (``isolation().cgroup`` is None) is the per-process
  limits: RLIMIT_NPROC counts only the sandbox's own processes and threads (per user namespace since Linux
  5.14), so the program's memory is at most ``nproc × memory_mb`` of address space (``nproc × 4096`` MB for
  JavaScript, whose V8 reserves address space it does not use) plus the tmpfs.

Two ways to get there (probed once per process, see :func:`isolation`):

* ``"root"``: we are root; ``setpriv`` first switches to a throw-away uid (one per concurrent slot, no
  passwd entry, no capabilities, ``no_new_privs``), which then runs bwrap unprivileged. The throw-away uid
  keeps the program out of root's files even if a kernel bug let it out of the namespaces, and makes
  RLIMIT_NPROC apply (the kernel exempts uid 0 from it).
* ``"user"``: not root; bwrap runs as the invoking user (unprivileged user namespaces must be allowed).

Otherwise generated code is refused (:class:`SandboxUnavailable`, naming the fix) unless the caller
allowed the ``"unsafe"`` mode (``flowertune eval --unsafe-sandbox``: resource limits, a fresh directory
and a killed process group only -- no file system, process or network isolation).
"""

from __future__ import annotations

import errno
import json
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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

LANGUAGES = ("python", "cpp", "js")
_UID_BASE = 200_000  # throw-away uids: _UID_BASE + (pid % 50_000) * _SLOTS + slot; none has a passwd entry
_SLOTS = 64
NOFILE = 256  # open files per process
SANDBOX_WORK = "/tmp/work"  # the work directory as the program sees it, inside its own tmpfs (not a host path)
OUT_DIR = "/tmp/out"  # where the C++ build stage sees its bound host output directory
INSIDE_UID = 65534  # the program's uid and gid inside the user namespace ("nobody")
UNSAFE_FLAG = "--unsafe-sandbox"
# read-only system paths the programs need; /bin, /lib... are links into /usr on merged-/usr systems
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")


class SandboxUnavailable(RuntimeError):
    """Generated code cannot be isolated on this machine and the unsafe mode was not allowed."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program run."""

    wall_s: float = 10.0
    cpu_s: float | None = None  # RLIMIT_CPU; default: the wall limit rounded up, plus one second
    memory_mb: int = 1024  # whole program (cgroup, tmpfs included) and RLIMIT_AS of each process
    nproc: int = 64  # processes *and threads* of the whole program (cgroup pids.max and RLIMIT_NPROC)
    file_mb: int = 32  # RLIMIT_FSIZE: largest file the program may write, stdout/stderr included
    tmpfs_mb: int = 64  # size of the private /tmp (work dir included) and of /dev/shm


# node/V8 reserves far more address space than it uses (pointer-compression cage, code range, wasm guard
# regions; it degrades when reservations fail, node 20 starts under 1 GiB), so JS gets a higher address
# space limit per process (its memory stays bound by the cgroup) plus a heap cap that V8 itself enforces.
NODE_HEAP_MB = 512
NODE_AS_MB = 4096
COMPILE_LIMITS = Limits(wall_s=60.0, memory_mb=4096, nproc=64, file_mb=256, tmpfs_mb=512)


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
    """How programs are isolated here: ``mode`` root | user (bwrap) | none (refused; ``reason`` says why).

    ``cgroup`` is "v2", "v1" or None (then the whole-program bound is the documented per-process fallback).
    """

    mode: str
    cgroup: str | None = None
    reason: str = ""

    @property
    def isolated(self) -> bool:
        return self.mode in ("root", "user")

    def describe(self) -> str:
        if not self.isolated:
            return f"no isolation ({self.reason})"
        bound = f"cgroup {self.cgroup}" if self.cgroup else "per-process limits (no cgroup can be made here)"
        who = "a throw-away uid" if self.mode == "root" else "your uid"
        seccomp = "a seccomp filter" if seccomp_filter() is not None else "no seccomp filter (not x86-64)"
        return f"bubblewrap as {who}, {seccomp}, whole-program memory/tasks bound: {bound}"


# --------------------------------------------------------------------------------------------------------------
# policy: refuse, or run unisolated only when the caller said so

_UNSAFE = {"allowed": False, "warned": False}


def allow_unsafe(allowed: bool = True) -> None:
    """Let :func:`run_program` fall back to resource limits only where bwrap cannot run (``--unsafe-sandbox``)."""
    _UNSAFE["allowed"], _UNSAFE["warned"] = allowed, False


def require() -> Isolation:
    """The isolation in use; raises :class:`SandboxUnavailable` (one line, with the fix) when there is none.

    Call it before loading a model for a code benchmark, so that the refusal comes first.
    """
    iso = isolation()
    if iso.isolated:
        python_executable()  # raises SandboxUnavailable now rather than after a model has generated
        return iso
    if _UNSAFE["allowed"]:
        if not _UNSAFE.get("warned"):
            log.warning("sandbox: %s; running generated code WITHOUT isolation (%s)", iso.reason, UNSAFE_FLAG)
            _UNSAFE["warned"] = True
        return iso
    raise SandboxUnavailable(
        f"the code sandbox cannot isolate generated programs here ({iso.reason}): install bubblewrap "
        f"(apt-get install bubblewrap) and allow unprivileged user namespaces, or pass {UNSAFE_FLAG} to run "
        "them with resource limits only"
    )


# --------------------------------------------------------------------------------------------------------------
# probing


def _root_uid(slot: int) -> int:
    return _UID_BASE + (os.getpid() % 50_000) * _SLOTS + slot


def _runas(uid: int) -> list[str]:
    """Root mode: become the throw-away uid (no groups, no capabilities, no_new_privs) before bwrap."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--"]  # fmt: skip


@lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe (once) whether bwrap can isolate a program here, and which cgroup bound is available."""
    missing = [tool for tool in ("bwrap", "prlimit") if shutil.which(tool) is None]
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        missing.append("setpriv")
    if missing:
        return Isolation("none", reason=f"{' and '.join(missing)} not found")
    mode = "root" if root else "user"
    argv = [*(_runas(_root_uid(_SLOTS - 1)) if root else []), *_bwrap_args(None, Limits()), "--", "true"]
    try:
        probe = subprocess.run(argv, check=False, capture_output=True, timeout=20, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as e:
        return Isolation("none", reason=f"bwrap did not start: {e}")
    if probe.returncode != 0:
        err = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        last = err[-1] if err else str(probe.returncode)
        if "Unknown option" in last or "unrecognized option" in last:
            version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False).stdout
            return Isolation("none", reason=f"bubblewrap 0.8 or newer is needed ({version.strip() or 'older'} "
                                            f"found: {last})")
        return Isolation("none", reason=f"bwrap failed: {last}")
    return Isolation(mode, cgroup=_Cgroup.kind())


def _world_usable(path: str) -> bool:
    """Whether an unprivileged uid can execute ``path`` (every parent dir searchable, file o+rx)."""
    real = Path(os.path.realpath(path))
    if not real.is_file() or real.stat().st_mode & 0o005 != 0o005:
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)


@lru_cache(maxsize=1)
def python_executable() -> tuple[str, str]:
    """A Python interpreter the sandbox can run, and its prefix (bound read-only when outside ``/usr``).

    The system's python3 comes first (the results do not depend on the venv's version), then our own base
    interpreter (not the venv: generated code gets the interpreter's standard library and the system
    site-packages under ``/usr``, never flowertune's environment).
    """
    root = os.geteuid() == 0
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", getattr(sys, "_base_executable", None),
                      sys.executable):  # fmt: skip
        if not candidate or not os.path.isfile(candidate):
            continue
        if root and not _world_usable(candidate):
            continue
        real = os.path.realpath(candidate)
        try:
            prefix = subprocess.run([real, "-I", "-c", "import sys; print(sys.base_prefix)"], check=True,
                                    capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        return real, prefix
    raise SandboxUnavailable("no python3 interpreter that an unprivileged uid can run was found")


# --------------------------------------------------------------------------------------------------------------
# the bwrap command line


def _under_system(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS)


def _bwrap_args(prefix: str | None, limits: Limits) -> list[str]:
    """bwrap's options for one run (no command): namespaces, the read-only system view, private tmpfs."""
    args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(INSIDE_UID),
            "--gid", str(INSIDE_UID), "--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL"]  # fmt: skip
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in _SYSTEM_FILES:
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    if prefix and not _under_system(prefix):
        args += ["--ro-bind", prefix, prefix]
    size = str(limits.tmpfs_mb * 1024 * 1024)
    args += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm",
             "--size", size, "--tmpfs", "/tmp", "--dir", SANDBOX_WORK, "--chdir", SANDBOX_WORK]  # fmt: skip
    return args


def _prlimit(limits: Limits, as_mb: int) -> list[str]:
    cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.wall_s) + 1
    cpu = max(1, math.ceil(cpu))
    mb = 1024 * 1024
    return ["prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={as_mb * mb}", f"--nproc={limits.nproc}",
            f"--fsize={limits.file_mb * mb}", "--core=0", f"--nofile={NOFILE}", "--"]  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# seccomp: the kernel interfaces generated code has no use for, refused with EPERM (x86-64)

# Linux x86-64 syscall numbers: kernel keyrings, bpf, perf events, userfaultfd, io_uring, ptrace and
# cross-process memory, modules and kexec, mounts and namespaces, handle-based opens, clock and system setters
DENIED_SYSCALLS_X86_64 = {
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "mount": 165, "umount2": 166,
    "pivot_root": 155, "swapon": 167, "swapoff": 168, "reboot": 169, "unshare": 272, "setns": 308,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "fanotify_init": 300, "acct": 163, "quotactl": 179,
    "syslog": 103, "personality": 135, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "iopl": 172, "ioperm": 173, "lookup_dcookie": 212, "vhangup": 153,
}


def seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program for bwrap's ``--seccomp``: deny :data:`DENIED_SYSCALLS_X86_64` (and every
    32-bit or x32 syscall) with EPERM, allow the rest. None off x86-64 (no filter; the namespaces still apply)."""
    import platform
    import struct as st

    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    errno_eperm, allow, arch_x86_64, x32_bit = 0x00050000 | 1, 0x7FFF0000, 0xC000003E, 0x40000000
    nrs = sorted(set(DENIED_SYSCALLS_X86_64.values()))
    n = len(nrs)

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return st.pack("<HBBI", code, jt, jf, k)

    prog = [op(ld_abs, 0, 0, 4), op(jeq, 1, 0, arch_x86_64), op(ret, 0, 0, errno_eperm),  # arch: x86-64 only
            op(ld_abs, 0, 0, 0), op(jge, n + 1, 0, x32_bit)]  # the syscall number; x32 numbers denied
    prog += [op(jeq, n - i, 0, nr) for i, nr in enumerate(nrs)]
    prog += [op(ret, 0, 0, allow), op(ret, 0, 0, errno_eperm)]
    return b"".join(prog)


# --------------------------------------------------------------------------------------------------------------
# cgroups: one per run, for the whole program


class _Cgroup:
    """A per-run cgroup bounding memory (no swap) and tasks; v2 where delegated, else v1 (root)."""

    V1 = Path("/sys/fs/cgroup")

    @staticmethod
    def _own() -> dict[str, str]:
        """Controller (or "" for v2) -> our cgroup path, from /proc/self/cgroup."""
        out = {}
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                for c in controllers.split(",") if controllers else [""]:
                    out[c] = path
        except OSError:
            pass
        return out

    @classmethod
    def _parents(cls) -> dict[str, Path] | None:
        """Where per-run cgroups go: {"memory": dir, "pids": dir} (v1) or {"": dir} (v2); None if nowhere."""
        own = cls._own()
        if "" in own and not ("memory" in own and "pids" in own):  # v2 only (unified hierarchy)
            base = cls.V1 / own[""].lstrip("/")
            enabled = (base / "cgroup.subtree_control")
            try:
                if {"memory", "pids"} <= set(enabled.read_text().split()) and os.access(base, os.W_OK):
                    return {"": base}
            except OSError:
                return None
            return None
        dirs = {}
        for c in ("memory", "pids"):
            if c not in own:
                return None
            base = cls.V1 / c / own[c].lstrip("/")
            if not base.is_dir():  # a container that shows the host's hierarchy at the mount's root
                base = cls.V1 / c
            if not os.access(base, os.W_OK):
                return None
            dirs[c] = base
        return dirs

    @classmethod
    def kind(cls) -> str | None:
        parents = cls._parents()
        if parents is None:
            return None
        try:  # make one to be sure
            group = cls(parents, f"flowertune-probe-{os.getpid()}", Limits())
        except OSError:
            return None
        group.remove()
        return "v2" if "" in parents else "v1"

    def __init__(self, parents: dict[str, Path], name: str, limits: Limits) -> None:
        self.dirs = [p / name for p in parents.values()]
        mem = str(limits.memory_mb * 1024 * 1024)
        tasks = str(limits.nproc + 4)  # + bwrap's launcher and PID-1 reaper, setpriv/sh before exec
        if "" in parents:
            settings = {"memory.max": mem, "memory.swap.max": "0", "pids.max": tasks}
        else:
            settings = {"memory.limit_in_bytes": mem, "memory.memsw.limit_in_bytes": mem, "pids.max": tasks}
        try:
            for d in self.dirs:
                d.mkdir(exist_ok=True)
                for key, value in settings.items():
                    if (d / key).exists():
                        (d / key).write_text(value)
        except OSError:
            self.remove()  # nothing half-made is left behind
            raise

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):
                try:
                    for pid in (d / "cgroup.procs").read_text().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        log.warning("sandbox: could not remove cgroup %s: %s", d, e)
                        break
                    time.sleep(0.02)
            else:
                log.warning("sandbox: cgroup %s still busy after 1 s; left in place", d)


# PID 1 of the namespace: a shell that runs the program as its child and exits with its status (128 + signal
# when killed), which tears the namespace down, survivors included. The program is not PID 1 itself because
# the kernel does not deliver default-action signals such as RLIMIT_CPU's SIGXCPU to a namespace's init.
STARTED = "flowertune-sandbox: started"  # PID 1's first line on stderr: the namespaces and mounts are in place
_PID1 = f'echo "{STARTED}" >&2; "$@"; exit $?'
_JOIN = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"'


# --------------------------------------------------------------------------------------------------------------
# one run


class _SlotPool:
    """Hands out slot numbers so that concurrent runs get distinct throw-away uids and cgroups."""

    def __init__(self, n: int) -> None:
        self._free = list(range(n - 1))  # the last slot's uid is the probe's
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


def _head(path: Path, n: int) -> str:
    try:
        with path.open("rb") as f:
            return f.read(n).decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path: Path, n: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class _Run:
    returncode: int | None
    timed_out: bool
    seconds: float
    stderr: str
    setup_failed: bool


def _execute(argv: list[str], box: Path, limits: Limits, slot: int, files: dict[str, tuple[Path, int]],
             out_dir: Path | None = None, as_mb: int | None = None, prefix: str | None = None) -> _Run:
    """Run ``argv`` once in /tmp/work with ``files`` (name -> (host path, mode)) copied in.

    ``out_dir`` (a host directory) is bound writable at /tmp/out: the C++ build stage's way out.
    ``prefix``: the Python interpreter's installation, bound read-only when it is outside /usr.
    """
    iso = isolation()
    as_mb = as_mb or limits.memory_mb
    stdout, stderr, status = box / "stdout", box / "stderr", box / "status"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    fds: list[int] = []
    group: _Cgroup | None = None
    try:
        if iso.isolated:
            cmd = _bwrap_args(prefix, limits)
            for name, (path, mode) in files.items():
                fd = os.open(path, os.O_RDONLY)
                fds.append(fd)
                cmd += ["--perms", f"{mode:o}", "--file", str(fd), f"{SANDBOX_WORK}/{name}"]
            if out_dir is not None:
                cmd += ["--bind", str(out_dir), OUT_DIR]
            status_fd = os.open(status, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            fds.append(status_fd)
            bpf = seccomp_filter()
            if bpf is not None:
                (box / "seccomp.bpf").write_bytes(bpf)
                seccomp_fd = os.open(box / "seccomp.bpf", os.O_RDONLY)
                fds.append(seccomp_fd)
                cmd += ["--seccomp", str(seccomp_fd)]
            cmd += ["--remount-ro", "/", "--remount-ro", "/dev", "--json-status-fd", str(status_fd),
                    "--setenv", "HOME", SANDBOX_WORK, "--setenv", "TMPDIR", "/tmp",
                    "--", "sh", "-c", _PID1, "sandbox", *_prlimit(limits, as_mb), *argv]  # fmt: skip
            if iso.mode == "root":
                cmd = [*_runas(_root_uid(slot)), *cmd]
            if iso.cgroup:
                parents = _Cgroup._parents()
                if parents is not None:
                    try:
                        group = _Cgroup(parents, f"flowertune-sandbox-{os.getpid()}-{slot}", limits)
                    except OSError as e:  # the bound this machine promised cannot be set: do not run unbounded
                        return _Run(None, False, 0.0, f"sandbox: cannot make the run's cgroup: {e}", True)
                    cmd = ["sh", "-c", _JOIN, "join", *group.procs_files(), "--", *cmd]
            cwd = Path("/")
        else:  # the unsafe mode, allowed by require()
            work = box / "work"
            for name, (path, mode) in files.items():
                shutil.copyfile(path, work / name)
                os.chmod(work / name, mode)
            argv = [a.replace(OUT_DIR, str(out_dir)) if out_dir else a for a in argv]
            cmd, cwd = [*_prlimit(limits, as_mb), *argv], work
            env.update(HOME=str(work), TMPDIR=str(work))
        start = time.monotonic()
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, pass_fds=fds)  # fmt: skip
            for fd in fds:
                os.close(fd)
            fds = []
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if iso.isolated and proc.poll() is None:
                    _kill_namespace(status, proc)
                # the whole group: bwrap's launcher, or in the unsafe mode the program and the children left
                # in its group
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        seconds = time.monotonic() - start
        err = _tail(stderr)
        started = _head(stderr, len(STARTED) + 1) == STARTED + "\n"
        if started and err.startswith(STARTED + "\n"):
            err = err[len(STARTED) + 1:]
        # bwrap reports the child's pid before it mounts anything: only PID 1's first line says it all worked
        setup_failed = iso.isolated and not started and not timed_out
        return _Run(proc.returncode, timed_out, seconds, err, setup_failed)
    finally:
        for fd in fds:
            os.close(fd)
        if group is not None:
            group.remove()


def _kill_namespace(status: Path, proc: subprocess.Popen) -> None:
    """Kill the namespace's PID 1 (our shell, ``child-pid`` in bwrap's status), which empties the PID
    namespace; bwrap, its parent, then reaps it and exits.

    Killing bwrap first would orphan PID 1 to the machine's init, which in a container may never reap it.
    """
    for line in _tail(status, 4096).splitlines():
        try:
            pid = json.loads(line).get("child-pid")
        except ValueError:
            continue
        if isinstance(pid, int) and pid > 1:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            return


def _box_base(iso: Isolation) -> str | None:
    """Where run directories go: the temp dir, unless the throw-away uid (root mode) cannot traverse its
    parents to reach the C++ build directory; then ``/tmp``."""
    base = tempfile.gettempdir()
    if iso.mode == "root" and not all(p.stat().st_mode & stat.S_IXOTH for p in [Path(base), *Path(base).parents]):
        return "/tmp"
    return None


def run_program(program: Program, limits: Limits | None = None) -> Result:
    """Run one program in the sandbox; passed means exit status 0 within the limits.

    Raises :class:`SandboxUnavailable` where nothing isolates it and the unsafe mode was not allowed.
    """
    if program.language not in LANGUAGES:
        raise ValueError(f"unknown language {program.language!r}; valid: {', '.join(LANGUAGES)}")
    limits = limits or Limits()
    iso = require()
    slot = _SLOT_POOL.acquire()
    box = Path(tempfile.mkdtemp(prefix="flowertune-sandbox-", dir=_box_base(iso)))
    try:
        (box / "work").mkdir(mode=0o700)
        name = {"python": "prog.py", "cpp": "prog.cpp", "js": "prog.js"}[program.language]
        source = box / name
        source.write_text(program.source, encoding="utf-8")
        elapsed, prefix = 0.0, None
        files = {name: (source, 0o644)}
        if program.language == "cpp":
            build = box / "build"
            build.mkdir(mode=0o700)
            if iso.mode == "root":  # bwrap runs as the throw-away uid: it must reach and fill build/
                box.chmod(0o711)
                os.chown(build, _root_uid(slot), _root_uid(slot))
            run = _execute(["g++", "-std=c++17", name, "-o", f"{OUT_DIR}/prog"], box, COMPILE_LIMITS, slot, files,
                           out_dir=build)  # fmt: skip
            elapsed += run.seconds
            if run.returncode != 0 or run.timed_out or run.setup_failed:
                return _result(run, elapsed, "compile")
            files, argv = {"prog": (build / "prog", 0o755)}, ["./prog"]
        elif program.language == "js":
            argv = ["node", f"--max-old-space-size={NODE_HEAP_MB}", name]
        else:
            python, prefix = python_executable() if iso.isolated else (sys.executable, None)
            argv = [python, "-I", name]
        as_mb = max(limits.memory_mb, NODE_AS_MB) if program.language == "js" else limits.memory_mb
        run = _execute(argv, box, limits, slot, files, as_mb=as_mb,
                       prefix=prefix if program.language == "python" else None)
        return _result(run, elapsed + run.seconds, "run")
    finally:
        shutil.rmtree(box, ignore_errors=True)
        _SLOT_POOL.release(slot)


def _result(run: _Run, seconds: float, stage: str) -> Result:
    rc = run.returncode
    if run.timed_out:
        status = "timeout"
    elif run.setup_failed or (rc in (126, 127) and ("not found" in run.stderr or "cannot execute" in run.stderr)):
        status = "error"  # the sandbox's fault (or a compiler/runtime missing), not the program's
        log.error("sandbox: %s", run.stderr.strip()[-500:])
    elif rc == 0:
        status = "passed"
    # SIGXCPU is the soft CPU limit and SIGKILL (from the hard limit one second later) the hard one
    elif rc is not None and rc in (128 + signal.SIGXCPU, -signal.SIGXCPU):
        status = "timeout"
    else:
        status = "failed"
    return Result(status == "passed", status, rc, run.stderr[-2000:], seconds, stage)


def run_programs(
    programs: Sequence[Program],
    limits: Limits | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Result]:
    """Run many programs with a bounded worker pool (default: one per CPU core); results in input order."""
    require()  # refuse before the first program, not in every worker
    workers = max(1, min(workers or os.cpu_count() or 2, _SLOTS - 1))
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowertune.eval.sandbox [--json]``: say how generated code would be isolated here."""
    iso = isolation()
    if argv and "--json" in argv:
        print(json.dumps({"mode": iso.mode, "cgroup": iso.cgroup, "reason": iso.reason}))
    else:
        print(iso.describe())
    return 0 if iso.isolated else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

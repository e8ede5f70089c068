"""Hostile programs against the code sandbox, run by whoever invokes this script (root, or another uid).

Standard library only, like ``flowertune/eval/sandbox.py``: the non-root run copies both into a directory
that the test uid can read and runs them with the system's python3. Usage::

    python3 sandbox_attacks.py OUT.json

The script plays the invoking user: it owns a 0600 secret file, a loopback TCP listener, a filesystem and an
abstract AF_UNIX listener and a marked process, then runs each attack in the sandbox and looks at the host
side afterwards. ``OUT.json`` gets one entry per attack: what the program printed and what the host saw.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sandbox

MARK = f"4321.{os.getpid()}"  # a host process's command line the programs look for
SURVIVOR = f"4322.{os.getpid()}"  # the sleep a setsid child leaves behind, if it can


def _host_processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _sandbox_pids(exclude: set[int]) -> list[int]:
    """Processes of the sandbox's uids: the throw-away ones (root mode), else ours minus ``exclude``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            uid = int(next(ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("Uid:")).split()[1])
        except (OSError, StopIteration):
            continue
        if (uid >= sandbox._UID_BASE) if os.geteuid() == 0 else (uid == os.getuid()):
            found.append(int(entry.name))
    return found


def _accepted(server: socket.socket) -> bool:
    server.setblocking(False)
    try:
        conn, _ = server.accept()
        conn.close()
        return True
    except BlockingIOError:
        return False


def main(out: Path) -> int:
    iso = sandbox.isolation()
    report: dict = {"uid": os.getuid(), "mode": iso.mode, "cgroup": getattr(iso, "cgroup", None), "attacks": {}}
    home = Path(tempfile.mkdtemp(prefix="flowertune-attacks-home-"))  # the invoking user's private dir
    home.chmod(0o700)
    secret = home / "secret.txt"
    secret.write_text("TOPSECRET")
    secret.chmod(0o600)
    host_tmp = Path(tempfile.gettempdir()) / f"flowertune-attack-{os.getpid()}"
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    port = tcp.getsockname()[1]
    unix_path = home / "worker.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(unix_path))
    unix.listen(4)
    abstract_name = f"\0flowertune-attack-{os.getpid()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(abstract_name)
    abstract.listen(4)
    marker = subprocess.Popen(["sleep", MARK])

    def attack(name: str, source: str, limits: sandbox.Limits | None = None, host: dict | None = None) -> None:
        start = time.monotonic()
        result = sandbox.run_program(sandbox.Program(source), limits)
        time.sleep(0.3)  # let anything that outlived the run show itself
        entry = {"status": result.status, "returncode": result.returncode, "seconds": time.monotonic() - start,
                 "stderr": result.stderr_tail[-1500:], "survivors": _host_processes_with(SURVIVOR)}
        entry.update(host() if callable(host) else host or {})
        report["attacks"][name] = entry

    # each program prints one JSON line per probe on stderr (the only output the sandbox keeps)
    probe = "import json, sys\ndef say(**kw):\n    sys.stderr.write(json.dumps(kw) + '\\n')\n"
    attack("umount_and_host_tmp", probe + f"""
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
say(umount2=libc.umount2(b'/tmp', 2), umount2_errno=ctypes.get_errno())
say(umount=subprocess.run(['umount', '-l', '/tmp'], capture_output=True).returncode)
say(capeff=[l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])
say(unshare=subprocess.run(['unshare', '-U', '-r', 'true'], capture_output=True).returncode)
say(tmp=sorted(os.listdir('/tmp')))
for path in ['{host_tmp}', '{home}/pwned', '/usr/pwned', '/etc/pwned', '/pwned', '/dev/pwned']:
    try:
        open(path, 'w').write('x')
        say(wrote=path)
    except OSError as e:
        say(blocked=path, errno=e.errno)
""", host=lambda: {"host_tmp_written": host_tmp.exists(), "home_written": (home / "pwned").exists()})
    attack("read_secrets_and_proc", probe + f"""
import os
try:
    say(secret=open('{secret}').read())
except OSError as e:
    say(secret_blocked=e.errno)
cmdlines = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try:
            cmdlines.append(open(f'/proc/{{pid}}/cmdline', 'rb').read().decode(errors='replace'))
        except OSError:
            pass
say(processes=len(cmdlines), saw_marker=any('{MARK}' in c for c in cmdlines), root=sorted(os.listdir('/')))
say(home_exists=os.path.exists('{home}'), cwd_project=os.path.exists('{Path.cwd()}'))
""")
    attack("connect", probe + f"""
import socket
for family, address in [(socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_UNIX, '{unix_path}'),
                        (socket.AF_UNIX, {abstract_name!r})]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(address)
        say(connected=str(address))
    except OSError as e:
        say(refused=str(address), errno=e.errno)
""", host=lambda: {"tcp_accepted": _accepted(tcp), "unix_accepted": _accepted(unix),
                   "abstract_accepted": _accepted(abstract)})
    attack("setsid_survivor", probe + f"""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv('/bin/sleep', ['sleep', '{SURVIVOR}'])
    os._exit(0)
say(parent='exits')
""")
    attack("seccomp", probe + """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for name, nr in [('keyctl', 250), ('io_uring_setup', 425), ('bpf', 321), ('perf_event_open', 298),
                 ('userfaultfd', 323), ('ptrace', 101)]:
    ctypes.set_errno(0)
    r = libc.syscall(nr, 0, 0, 0, 0, 0)
    say(syscall=name, result=r, errno=ctypes.get_errno())
""")
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    peak = {"tasks": 0}
    done = threading.Event()

    def watch() -> None:  # the most sandbox processes alive at once, seen from the host
        while not done.is_set():
            peak["tasks"] = max(peak["tasks"], len(_sandbox_pids({os.getpid(), marker.pid})))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    attack("fork_bomb", bomb, sandbox.Limits(wall_s=3, nproc=32), host=lambda: {"peak_tasks": peak["tasks"]})
    done.set()
    watcher.join()
    attack("after_fork_bomb", "print('fine')\n")
    # every child holds 150 MB at once (each under the 256 MB per-process limit); the whole-program bound
    # decides how many can
    attack("memory_bomb", probe + """
import os, time
r, w = os.pipe()
kids = []
for i in range(8):
    try:
        pid = os.fork()
    except OSError as e:
        say(fork_failed=i, errno=e.errno)
        break
    if pid == 0:
        block = bytearray(150 * 1024 * 1024)
        for j in range(0, len(block), 4096):
            block[j] = 1
        os.write(w, b'x')
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
os.close(w)
held = 0
deadline = time.time() + 4
while time.time() < deadline and held < len(kids):
    if os.read(r, 1):
        held += 1
say(forked=len(kids), held_at_once=held)
""", sandbox.Limits(wall_s=8, memory_mb=256, nproc=6))
    attack("disk_filler", probe + """
import errno
for path in ['/tmp/work/fill', '/dev/shm/fill', '/tmp/fill2']:
    written = 0
    try:
        with open(path, 'wb') as f:
            while written < 200:
                f.write(b'x' * 1024 * 1024)
                f.flush()
                written += 1
        say(path=path, mb=written, error=None)
    except OSError as e:
        say(path=path, mb=written, error=e.errno)
""", sandbox.Limits(wall_s=10, tmpfs_mb=16, file_mb=100))
    marker.kill()
    marker.wait()
    out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

"""Writes that survive a crash, a power loss or a full disk: a reader sees the old file or the whole new one.

Every file goes to a temporary name in the same directory, is flushed and fsynced, renamed over the target,
and the directory is fsynced (the rename itself is durable); the temporary file is removed if anything fails.
A directory (an adapter) is swapped in with one atomic exchange (Linux ``renameat2``), so there is no moment
without it. Free space is checked before a large write, so a full disk is a clear error before anything is
touched. Directories holding runs or flowertune's own state are private to the user (0700).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path

MARGIN = 16 * 2**20  # bytes kept free beyond what a write needs


class NoSpace(OSError):
    """Not enough free space for a write (nothing was written)."""


def private_dir(path: Path) -> Path:
    """``path`` created if missing, mode 0700 (only its owner can list or enter it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_space(directory: Path, need: int) -> None:
    """:class:`NoSpace` naming the shortfall unless ``need`` bytes (plus a margin) are free in ``directory``."""
    free = shutil.disk_usage(directory).free
    if free < need + MARGIN:
        raise NoSpace(errno.ENOSPC, f"only {free / 2**20:.0f} MiB free in {directory}, a write needs "
                                    f"{(need + MARGIN) / 2**20:.0f} MiB; free some space, then continue with "
                                    "`flowertune run --resume RUN_DIR`")


def write_bytes(path: Path, data: bytes, check: bool = True) -> Path:
    """``data`` to ``path`` atomically and durably (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if check:
        check_space(path.parent, len(data))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the call is unavailable."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL):
            return False
        raise OSError(err, os.strerror(err), str(a))
    return True


def swap_dir_in(tmp: Path, directory: Path) -> None:
    """Put the complete directory ``tmp`` at ``directory``; an existing one is replaced with no gap in between."""
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    if directory.exists() and _exchange(tmp, directory):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old one
    elif directory.exists():  # no atomic exchange here: the shortest possible gap
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    fsync_dir(directory.parent)

"""Group commit for files: write many, then make them all durable with one call.

An fsync per small file costs about as much as writing it; ``syncfs(2)`` flushes everything
written on a file system at once. Archived returns and outbox mails are written by batches
and made durable by :func:`sync_folder` before anything relies on them (a ledger row saying
"sent", moving a return out of the drop folder).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from pathlib import Path
from typing import Callable, Sequence


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, TypeError):  # not Linux / no glibc symbol
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_syncfs = _load_syncfs()


def sync_folder(folder: Path, written: Sequence[Path] = ()) -> None:
    """Make every file written (and renamed) in *folder* durable, with one call.

    Linux: ``syncfs(2)`` on the folder's file system, then an fsync of the folder itself.
    Elsewhere ``os.sync()``; without it, an fsync of each of *written*. Raises ``OSError``."""
    global _syncfs
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        done = False
        if _syncfs is not None:
            if _syncfs(fd) == 0:
                done = True
            else:
                err = ctypes.get_errno()
                if err not in (errno.ENOSYS, errno.EPERM):  # EIO etc.: the data may be lost
                    raise OSError(err, f"syncfs({folder}): {os.strerror(err)}")
                _syncfs = None  # e.g. a sandbox without the system call
        if not done and hasattr(os, "sync"):
            os.sync()
        elif not done:  # Windows
            for path in written:
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        os.fsync(fd)  # the new names
    finally:
        os.close(fd)


_folders_made: set[str] = set()  # folders known to exist in this process


def ensure_folder(folder: str) -> None:
    """Make *folder* (and its parents) once per process: later calls cost no system call."""
    if folder not in _folders_made:
        os.makedirs(folder, exist_ok=True)
        _folders_made.add(folder)


def forget_folder(folder: str) -> None:
    """*folder* went away under us (e.g. a test removed the home): make it again next time."""
    _folders_made.discard(folder)


_HOST = socket.gethostname() or "host"


def temp_tag() -> str:
    """``host-pid-thread``: part of every temp name of ours, unique on a home folder that
    several hosts share (a pid alone is not: another host may run the same one)."""
    return f"{_HOST}-{os.getpid()}-{threading.get_ident()}"


def open_new(path: str, mode: int) -> int:
    """Create *path* for writing, exclusively, and give its descriptor. *path* is a temp name
    of ours: one left by a crashed process with the same id is replaced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, mode)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_all(fd: int, data: bytes) -> None:
    """Write every byte to a raw file descriptor (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace_file(target: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Put *data* under *target* atomically (readers never see a partial file): written to a
    temp name of ours beside it, then renamed over it. No fsync: see :func:`sync_folder`."""
    target = os.fspath(target)
    tmp = os.path.join(os.path.dirname(target),
                       f".{os.path.basename(target)}.{temp_tag()}.tmp")
    write_and_rename(open_new(tmp, mode), tmp, target, lambda fd: write_all(fd, data))


def write_and_rename(fd: int, tmp: str, target: str, write: Callable[[int], None],
                     fsync: bool = False) -> None:
    """``write(fd)`` into the temp file *tmp* (open as *fd*), close it, rename it to *target*;
    on any failure the temp file is removed and *target* is left as it was."""
    try:
        try:
            write(fd)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        unlink_quietly(tmp)
        raise

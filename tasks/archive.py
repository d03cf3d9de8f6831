"""Content-addressed archive: every received file is kept, unchanged, under its sha256.

A file is durable when stored: fsynced one by one, or (``durable=False``) written for a
batch and then made durable together by :func:`tasks.durable.sync_folder` (one ``syncfs``), before
anything that relies on it (the ledger row, moving the original away) happens.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def archive_relpath(sha256: str) -> str:
    """``archive/ab/<sha256>`` relative to the home: the only path an archived file has."""
    return f"archive/{sha256[:2]}/{sha256}"


_made_dirs: set[str] = set()  # archive folders known to exist (saves a mkdir per file)


def _store(home: Path, sha: str, write, durable: bool = True) -> str:
    rel = archive_relpath(sha)
    target = os.path.join(home, rel)
    if os.path.exists(target):
        return rel  # same bytes already kept: write-once
    folder = os.path.dirname(target)
    if folder not in _made_dirs:
        os.makedirs(folder, exist_ok=True)
        _made_dirs.add(folder)
    # a temp name of our own (no path from outside), unique per process and thread
    tmp = os.path.join(folder, f".incoming-{sha[:16]}-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:  # the folder went away under us (a test removed the home)
        _made_dirs.discard(folder)
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), 0o444)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return rel


def archive_file(home: Path, path: Path, *, durable: bool = True) -> tuple[str, str, int]:
    """Copy a file into the archive; return (sha256, path relative to home, size).
    ``durable=False``: no fsync here, the caller calls :func:`tasks.durable.sync_folder` for the batch."""
    size = path.stat().st_size
    if size <= _CHUNK * 8:  # small (nearly every return): read once, hash and write the bytes
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        return sha, _store(home, sha, lambda fh: fh.write(data), durable), len(data)
    sha = sha256_file(path)
    def _write(fh):
        with path.open("rb") as src:
            shutil.copyfileobj(src, fh, _CHUNK)
    return sha, _store(home, sha, _write, durable), size


def archive_bytes(home: Path, data: bytes, *, durable: bool = True) -> tuple[str, str]:
    """Keep bytes (an attachment, a generated workbook); return (sha256, relative path)."""
    sha = hashlib.sha256(data).hexdigest()
    return sha, _store(home, sha, lambda fh: fh.write(data), durable)

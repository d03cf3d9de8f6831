"""Content-addressed archive: every received file is kept, unchanged, under its sha256.

A file is durable when stored: fsynced one by one, or (``durable=False``) written for a
batch and then made durable together by :func:`tasks.core.durable.sync_folder` (one ``syncfs``), before
anything that relies on it (the ledger row, moving the original away) happens.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..core.durable import (
    ensure_folder,
    forget_folder,
    open_new,
    temp_tag,
    unlink_quietly,
    write_all,
    write_and_rename,
)

_CHUNK = 1 << 20


def archive_relpath(sha256: str) -> str:
    """``archive/ab/<sha256>`` relative to the home: the only path an archived file has."""
    return f"archive/{sha256[:2]}/{sha256}"


def _new_temp(folder: str, tag: str) -> tuple[int, str]:
    """A new read-only temp file in *folder* (made if needed) under a name of our own, unique
    per host, process and thread (never a name from outside): (fd, path)."""
    ensure_folder(folder)
    tmp = os.path.join(folder, f".incoming-{tag}-{temp_tag()}")
    try:
        return open_new(tmp, 0o444), tmp  # read-only from birth: the archive is write-once
    except FileNotFoundError:  # the folder went away under us (a test removed the home)
        forget_folder(folder)
        ensure_folder(folder)
    return open_new(tmp, 0o444), tmp


def _store(home: Path, sha: str, write, durable: bool = True) -> str:
    """Write once under the sha256: into a temp name of ours, then renamed (a crash never
    leaves a partial file under the final name). ``write(fd)`` writes the bytes."""
    rel = archive_relpath(sha)
    target = os.path.join(home, rel)
    if os.path.exists(target):
        return rel  # same bytes already kept: write-once
    fd, tmp = _new_temp(os.path.dirname(target), sha[:16])
    write_and_rename(fd, tmp, target, write, fsync=durable)
    return rel


def _store_stream(home: Path, path: Path, durable: bool) -> tuple[str, str, int]:
    """A large file copied once, hashed on the way, then named by that hash: what is kept is
    exactly what was hashed, even if the original changes meanwhile."""
    fd, tmp = _new_temp(os.path.join(home, "archive", ".incoming"), "stream")
    h, size = hashlib.sha256(), 0
    try:
        try:
            with path.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    write_all(fd, chunk)
                    size += len(chunk)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        sha = h.hexdigest()
        rel = archive_relpath(sha)
        target = os.path.join(home, rel)
        if os.path.exists(target):  # same bytes already kept: write-once
            unlink_quietly(tmp)
        else:
            ensure_folder(os.path.dirname(target))
            os.replace(tmp, target)
    except BaseException:
        unlink_quietly(tmp)
        raise
    return sha, rel, size


def _read_small(path: Path | str, limit: int) -> bytes | None:
    """The whole file if it has at most *limit* bytes, else None (one open, one fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            return None
        parts, got = [], 0
        while chunk := os.read(fd, max(size - got, 0) + 1):  # +1: notices a file still growing
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def archive_file(home: Path, path: Path, *, durable: bool = True) -> tuple[str, str, int]:
    """Copy a file into the archive; return (sha256, path relative to home, size).
    ``durable=False``: no fsync here, the caller calls :func:`tasks.core.durable.sync_folder` for the batch."""
    data = _read_small(path, _CHUNK * 8)
    if data is not None:  # small (nearly every return): read once, hash and write the bytes
        sha = hashlib.sha256(data).hexdigest()
        return sha, _store(home, sha, lambda fd: write_all(fd, data), durable), len(data)
    return _store_stream(home, path, durable)


def archive_bytes(home: Path, data: bytes, *, durable: bool = True) -> tuple[str, str]:
    """Keep bytes (an attachment, a generated workbook); return (sha256, relative path)."""
    sha = hashlib.sha256(data).hexdigest()
    return sha, _store(home, sha, lambda fd: write_all(fd, data), durable)


def archived_bytes(home: Path, sha256: str) -> bytes | None:
    """The archived file with this sha256, checked against it; ``None`` when absent or altered."""
    try:
        data = Path(home, archive_relpath(sha256)).read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None

"""Content-addressed archive: every received file is kept, unchanged, under its sha256."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
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


def _store(home: Path, sha: str, write) -> str:
    rel = archive_relpath(sha)
    target = home / rel
    if target.exists():
        return rel  # same bytes already kept: write-once
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return rel


def archive_file(home: Path, path: Path) -> tuple[str, str, int]:
    """Copy a file into the archive; return (sha256, path relative to home, size)."""
    sha = sha256_file(path)
    def _write(fh):
        with path.open("rb") as src:
            shutil.copyfileobj(src, fh, _CHUNK)
    return sha, _store(home, sha, _write), path.stat().st_size


def archive_bytes(home: Path, data: bytes) -> tuple[str, str]:
    """Keep bytes (an attachment, a generated workbook); return (sha256, relative path)."""
    sha = hashlib.sha256(data).hexdigest()
    return sha, _store(home, sha, lambda fh: fh.write(data))

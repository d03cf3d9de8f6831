"""Taking returns in: archive first, record the submission, then move the drop-folder entry.

A file in ``<home>/inbox/<campaign>/`` is one submission; a sub-folder is one submission of
a return plus photos. Names from outside are display text only: files are kept under their
sha256 and moved to ``processed/`` under a name we make.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from .archive import archive_file
from .attachments import PHOTO_SUFFIXES, unpack_photos
from .ledger import DUPLICATE, RECEIVED, REFUSED, Event, Ledger, Submission, SubmissionFile

RETURN_SUFFIXES = {".xlsx", ".xlsm", ".xls", ".ods", ".csv"}
_SAFE = re.compile(r"[^A-Za-z0-9._\-\u4e00-\u9fff]+")


@dataclass(frozen=True)
class IncomingFile:
    name: str  # display name as the sender gave it
    path: Path  # where it lies now, inside our own inbox
    size: int


@dataclass(frozen=True)
class TakeInResult:
    submission_id: int | None
    name: str
    outcome: str  # received | duplicate | refused
    detail: str = ""


OTHER_ROLES = {".zip": "zip", ".pdf": "signed", ".docx": "narrative"}


def file_role(name: str) -> str:
    """return | photo | zip (of photos) | signed (stamped PDF scan) | narrative (.docx) | other"""
    suffix = Path(name).suffix.lower()
    if suffix in RETURN_SUFFIXES:
        return "return"
    if suffix in PHOTO_SUFFIXES:
        return "photo"
    return OTHER_ROLES.get(suffix, "other")


def safe_name(name: str, limit: int = 80) -> str:
    """A name we can put on disk: no separators, no dots in front, bounded length."""
    cleaned = _SAFE.sub("_", name)[-limit:].strip("._")
    return cleaned or "file"


def drop_folder_entries(inbox: Path) -> list[Path]:
    """Entries waiting in the drop folder, oldest first; hidden and partial files skipped."""
    if not inbox.is_dir():
        return []
    entries = [p for p in inbox.iterdir()
               if not p.name.startswith(".") and not p.name.endswith((".part", ".tmp"))
               and not p.is_symlink()]
    return sorted(entries, key=lambda p: (p.stat().st_mtime, p.name))


def entry_files(entry: Path) -> list[IncomingFile]:
    """The regular files of an entry (a file, or a folder walked without following links)."""
    if entry.is_file():
        return [IncomingFile(entry.name, entry, entry.stat().st_size)]
    found = []
    for root, dirs, files in os.walk(entry, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            p = Path(root) / f
            if f.startswith(".") or p.is_symlink() or not p.is_file():
                continue
            found.append(IncomingFile(f, p, p.stat().st_size))
    return found


def fingerprint(parts: list[tuple[str, str]]) -> str:
    """sha256 over the contents (sha256s) of a submission's files: names do not matter, so
    the same bytes sent again under another name are a duplicate."""
    h = hashlib.sha256()
    for sha in sorted(sha for _, sha in parts):
        h.update(f"{sha}\n".encode())
    return h.hexdigest()


def take_in(ledger: Ledger, campaign: str, entry_name: str, files: list[IncomingFile], *,
            source: str, sender: str | None, now: dt.datetime, max_file_bytes: int,
            max_photo_bytes: int = 10 * 1024 * 1024) -> TakeInResult:
    """Archive every file of one submission and record it as ``received`` (or refused).

    Re-running over the same entry (a crash before the move) finds the same fingerprint
    from the same source and name and records nothing new.
    """
    kept: list[tuple[IncomingFile, str | None, str | None]] = []
    refused: list[str] = []
    for f in files:
        if f.size > max_file_bytes:
            refused.append(f.name)
            kept.append((f, None, None))
            continue
        sha, rel, _ = archive_file(ledger.home, f.path)
        kept.append((f, sha, rel))
    fp = fingerprint([(f.name, sha or f"refused:{f.size}") for f, sha, _ in kept])
    with ledger.session() as s:
        earlier = s.scalars(select(Submission).where(
            Submission.campaign == campaign, Submission.fingerprint == fp)).first()
        if earlier is not None and earlier.original_name == entry_name and earlier.source == source:
            return TakeInResult(earlier.id, entry_name, "duplicate", "already recorded")
        state = RECEIVED
        detail = ""
        if earlier is not None:
            state, detail = DUPLICATE, f"与第{earlier.id}号报送记录完全相同"
        elif refused and len(refused) == len(files):
            state = REFUSED
            detail = f"文件超过大小上限 {max_file_bytes // (1024 * 1024)} MB：{'、'.join(refused)}"
        sub = Submission(campaign=campaign, source=source, original_name=entry_name, sender=sender,
                         received_at=now, fingerprint=fp, state=state,
                         errors=[detail] if state == REFUSED else [], warnings=[])
        s.add(sub)
        s.flush()
        for f, sha, rel in kept:
            role = "refused" if sha is None else file_role(f.name)
            s.add(SubmissionFile(submission_id=sub.id, role=role, name=f.name, sha256=sha,
                                 size=f.size, archive_path=rel,
                                 note="超过文件大小上限" if sha is None else None))
            if role == "zip" and state == RECEIVED:
                for u in unpack_photos(ledger.home, ledger.home / rel, f.name, max_photo_bytes,
                                       max_total_bytes=max_file_bytes):
                    s.add(SubmissionFile(submission_id=sub.id, role="refused" if u.refused else "photo",
                                         name=u.name, sha256=u.sha256, size=u.size,
                                         archive_path=u.archive_path, note=u.refused))
        sub_id = sub.id
        outcome = {RECEIVED: "received", DUPLICATE: "duplicate", REFUSED: "refused"}[state]
        s.add(Event(at=now, campaign=campaign, actor=sender or source, action=f"submission.{outcome}",
                    subject=str(sub_id), detail=json.dumps(
                        {"name": entry_name, "files": [f.name for f in files], "note": detail},
                        ensure_ascii=False)))
    return TakeInResult(sub_id, entry_name, outcome, detail)


def move_processed(home: Path, campaign: str, entry: Path, now: dt.datetime) -> Path:
    """Move a taken-in entry out of the inbox under a name of our own making."""
    target_dir = home / "processed" / campaign
    target_dir.mkdir(parents=True, exist_ok=True)
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = target_dir / f"{stamp}-{safe_name(entry.name)}"
    n = 1
    while target.exists():
        n += 1
        target = target_dir / f"{stamp}-{n}-{safe_name(entry.name)}"
    shutil.move(str(entry), str(target))
    return target

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
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy import select

from ..core import faults
from ..core.durable import ensure_folder, forget_folder, sync_folder
from ..core.ledger import (
    DUPLICATE,
    EVENT_COLUMNS,
    RECEIVED,
    REFUSED,
    Event,
    Ledger,
    Submission,
    SubmissionFile,
    bulk_insert,
    db_value,
    hold,
    insert_returning_ids,
)
from ..decisions.owed import owe, owe_rows
from .archive import archive_file
from .attachments import PHOTO_SUFFIXES, unpack_photos

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
    suffix = os.path.splitext(name)[1].lower()
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
    try:
        st = entry.stat()
    except FileNotFoundError:
        return []
    if stat.S_ISREG(st.st_mode):
        return [IncomingFile(entry.name, entry, st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        return []
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


@dataclass
class _Archived:
    """One submission's files, archived, before it is recorded."""

    entry_name: str
    files: list[IncomingFile]
    kept: list[tuple[IncomingFile, str | None, str | None]]  # (file, sha256, archive path)
    refused: list[str]
    fingerprint: str


def _archive_entry(home: Path, entry_name: str, files: list[IncomingFile], max_file_bytes: int,
                   durable: bool) -> _Archived:
    kept: list[tuple[IncomingFile, str | None, str | None]] = []
    refused: list[str] = []
    for f in files:
        if f.size > max_file_bytes:
            refused.append(f.name)
            kept.append((f, None, None))
            continue
        sha, rel, _ = archive_file(home, f.path, durable=durable)
        kept.append((f, sha, rel))
    fp = fingerprint([(f.name, sha or f"refused:{f.size}") for f, sha, _ in kept])
    return _Archived(entry_name, files, kept, refused, fp)


def take_in(ledger: Ledger, campaign: str, entry_name: str, files: list[IncomingFile], *,
            source: str, sender: str | None, now: dt.datetime, max_file_bytes: int,
            max_photo_bytes: int = 10 * 1024 * 1024) -> TakeInResult:
    """Archive every file of one submission and record it as ``received`` (or refused).

    Re-running over the same entry (a crash before the move) finds the same fingerprint
    from the same source and name and records nothing new.
    """
    archived = _archive_entry(ledger.home, entry_name, files, max_file_bytes, durable=True)
    return _record(ledger, campaign, [archived], source=source, sender=sender, now=now,
                   max_file_bytes=max_file_bytes, max_photo_bytes=max_photo_bytes)[0]


def take_in_entries(ledger: Ledger, campaign: str, entries: list[Path], *, source: str,
                    now: dt.datetime, max_file_bytes: int, max_photo_bytes: int = 10 * 1024 * 1024,
                    chunk: int = 500, progress: Callable[[int, int], None] | None = None,
                    recorded: Callable[[list[TakeInResult]], None] | None = None,
                    ) -> list[TakeInResult]:
    """Take in drop-folder entries by chunks: archive a chunk's files, make them durable
    together (one syncfs), record the chunk in one transaction, then move its entries to
    ``processed/``. A crash at any point loses nothing, and a re-run records nothing twice.
    ``recorded(results)`` is called with each chunk's results once they are in the ledger.
    An entry that is gone by the time its turn comes (taken away by its sender) is skipped."""
    results: list[TakeInResult] = []
    processed = 0
    for at in range(0, len(entries), chunk):
        part = [e for e in entries[at:at + chunk] if os.path.lexists(e)]
        processed += min(chunk, len(entries) - at)
        archived, kept = [], []
        for e in part:
            try:
                archived.append(_archive_entry(ledger.home, e.name, entry_files(e), max_file_bytes, durable=False))
            except FileNotFoundError:  # taken in and moved by another run while we read it
                continue
            kept.append(e)
            faults.reached("archive")
        part = kept
        if any(sha for a in archived for _, sha, _ in a.kept):
            sync_folder(ledger.home / "archive")  # this chunk's files durable, before its rows
        done = _record(ledger, campaign, archived, source=source, sender=None, now=now,
                       max_file_bytes=max_file_bytes, max_photo_bytes=max_photo_bytes)
        results += done
        if recorded:
            recorded(done)
        for e in part:
            faults.reached("move")
            if os.path.lexists(e):  # else another run took it in and moved it meanwhile
                move_processed(ledger.home, campaign, e, now)
        if progress:
            progress(processed, len(entries))
    return results


def _record(ledger: Ledger, campaign: str, batch: list[_Archived], *, source: str,
            sender: str | None, now: dt.datetime, max_file_bytes: int,
            max_photo_bytes: int) -> list[TakeInResult]:
    """Record archived submissions in one transaction, in order: ``received``, ``refused``
    (every file over the size limit), ``duplicate`` (the same bytes as an earlier one) or
    nothing new (the same bytes, name and source as any earlier submission: a re-run, e.g.
    after a crash between this transaction and the move to ``processed/``)."""
    with ledger.session() as s:
        hold(s, f"intake/{campaign}")  # before the lookup: two intakes at once record nothing twice
        earlier: dict[str, int] = {}  # fingerprint → the first submission of those bytes
        recorded: dict[tuple[str, str, str], int] = {}  # (fingerprint, name, source) → submission
        fps = list({a.fingerprint for a in batch})
        for i in range(0, len(fps), 500):
            # by fingerprint alone, the campaign checked here: with both in the WHERE, SQLite
            # (no statistics) walks the campaign's index, every submission of it per chunk
            for sid, fp, name, src, camp in s.execute(
                    select(Submission.id, Submission.fingerprint, Submission.original_name,
                           Submission.source, Submission.campaign)
                    .where(Submission.fingerprint.in_(fps[i:i + 500]))
                    .order_by(Submission.id.desc())):
                if camp == campaign:
                    earlier[fp] = sid  # the lowest id wins
                    recorded[(fp, name, src)] = sid
        results: list[TakeInResult | None] = [None] * len(batch)
        pending = list(enumerate(batch))
        while pending:  # a second copy within the batch waits for the first one's id
            rows, later = [], []
            firsts: set[str] = set()
            for i, a in pending:
                first = earlier.get(a.fingerprint)
                again = recorded.get((a.fingerprint, a.entry_name, source))
                if again is not None:
                    results[i] = TakeInResult(again, a.entry_name, "duplicate", "already recorded")
                elif first is None and a.fingerprint in firsts:
                    later.append((i, a))
                else:
                    firsts.add(a.fingerprint)
                    rows.append((i, a, _state_of(a, first, max_file_bytes)))
            conn = s.connection()  # plain DB-API rows: SQLAlchemy's per-row work cost more
            subs = Submission.__table__
            event_at = db_value(conn, Event.__table__.c.at, now)
            ids = insert_returning_ids(conn, subs, [
                dict(campaign=campaign, source=source, original_name=a.entry_name, sender=sender, received_at=now,
                     fingerprint=a.fingerprint, state=state, errors=[detail] if state == REFUSED else [],
                     warnings=[], late=False)
                for _, a, (state, detail) in rows])
            file_rows, events = [], []
            for sub_id, (i, a, (state, detail)) in zip(ids, rows):
                earlier.setdefault(a.fingerprint, sub_id)
                recorded[(a.fingerprint, a.entry_name, source)] = sub_id
                file_rows += _file_rows(ledger.home, sub_id, a, state, max_file_bytes, max_photo_bytes)
                outcome = {RECEIVED: "received", DUPLICATE: "duplicate", REFUSED: "refused"}[state]
                events.append((event_at, campaign, sender or source, f"submission.{outcome}", str(sub_id), json.dumps(
                    {"name": a.entry_name, "files": [f.name for f in a.files], "note": detail},
                    ensure_ascii=False)))
                results[i] = TakeInResult(sub_id, a.entry_name, outcome, detail)
            bulk_insert(conn, SubmissionFile.__table__, _FILE_COLUMNS, file_rows)
            bulk_insert(conn, Event.__table__, EVENT_COLUMNS, events)
            owe(conn, owe_rows(campaign, [], {sub_id: [f"第{sub_id}号《{' '.join(a.entry_name.split())}》被拒收：{detail}"]
                                             for sub_id, (_, a, (state, detail)) in zip(ids, rows)
                                             if state == REFUSED}, now))
            faults.reached("record")
            pending = later
    return results  # type: ignore[return-value]


_FILE_COLUMNS = ("submission_id", "role", "name", "sha256", "size", "archive_path", "caption", "note")


def _state_of(a: _Archived, first: int | None, max_file_bytes: int) -> tuple[str, str]:
    if first is not None:
        return DUPLICATE, f"与第{first}号报送记录完全相同"
    if a.refused and len(a.refused) == len(a.files):
        return REFUSED, f"文件超过大小上限 {max_file_bytes // (1024 * 1024)} MB：{'、'.join(a.refused)}"
    return RECEIVED, ""


def _file_rows(home: Path, sub_id: int, a: _Archived, state: str, max_file_bytes: int,
               max_photo_bytes: int) -> list[tuple]:
    rows = []
    for f, sha, rel in a.kept:
        role = "refused" if sha is None else file_role(f.name)
        rows.append((sub_id, role, f.name, sha, f.size, rel, None, "超过文件大小上限" if sha is None else None))
        if role == "zip" and state == RECEIVED:
            for u in unpack_photos(home, home / rel, f.name, max_photo_bytes,
                                   max_total_bytes=max_file_bytes):
                rows.append((sub_id, "refused" if u.refused else "photo", u.name, u.sha256, u.size,
                             u.archive_path, None, u.refused))
    return rows


def move_processed(home: Path, campaign: str, entry: Path, now: dt.datetime) -> Path:
    """Move a taken-in entry out of the inbox under a name of our own making; never over
    another one."""
    folder = os.path.join(home, "processed", campaign)
    ensure_folder(folder)
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = safe_name(entry.name)
    target, n = os.path.join(folder, f"{stamp}-{name}"), 1
    while os.path.lexists(target):
        n += 1
        target = os.path.join(folder, f"{stamp}-{n}-{name}")
    try:
        os.rename(entry, target)  # same filesystem (the usual case): one rename
    except FileNotFoundError:
        if os.path.lexists(entry):  # the folder went away under us (a test removed the home)
            forget_folder(folder)
            ensure_folder(folder)
            os.rename(entry, target)
        else:
            raise
    except OSError:
        shutil.move(str(entry), target)
    return Path(target)

"""Taking returns in (tasks/intake/intake.py): archive first, record once, refuse oversized files,
walk entries without following links, move entries under names we make."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tasks.core.ledger import DUPLICATE, RECEIVED, REFUSED, Ledger, Submission, SubmissionFile
from tasks.intake.intake import (
    IncomingFile,
    drop_folder_entries,
    entry_files,
    file_role,
    move_processed,
    safe_name,
    take_in,
)

CAMPAIGN = "energy-week-2023"
NOW = dt.datetime(2023, 9, 25, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
BIG = 1000


@pytest.fixture
def inbox(tmp_path) -> Path:
    d = tmp_path / "inbox"
    d.mkdir()
    return d


def put(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def take(ledger: Ledger, entry: Path, *, name: str | None = None, source: str = "folder",
         sender: str | None = None, max_file_bytes: int = BIG):
    return take_in(ledger, CAMPAIGN, name or entry.name, entry_files(entry), source=source,
                   sender=sender, now=NOW, max_file_bytes=max_file_bytes)


def submissions(ledger: Ledger) -> list[Submission]:
    return ledger.submissions(CAMPAIGN)


def files_of(ledger: Ledger, sid: int) -> list[SubmissionFile]:
    with ledger.session() as s:
        return list(s.scalars(select(SubmissionFile).where(SubmissionFile.submission_id == sid)
                              .order_by(SubmissionFile.id)))


def archived(home: Path) -> list[Path]:
    root = home / "archive"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---------------------------------------------------------------- archive first
def test_take_in_archives_the_bytes_read_only(ledger, home, inbox):
    data = b"PK\x03\x04 a return from Shenyang"
    entry = put(inbox, "沈阳市报表.xlsx", data)
    result = take(ledger, entry)
    assert result.outcome == "received" and result.submission_id is not None
    sha = hashlib.sha256(data).hexdigest()
    kept = home / "archive" / sha[:2] / sha
    assert kept.is_file() and kept.read_bytes() == data
    assert stat.S_IMODE(kept.stat().st_mode) & 0o222 == 0  # no write bit for anyone
    assert entry.read_bytes() == data  # the entry itself is left for move_processed
    (sub,) = submissions(ledger)
    assert (sub.id, sub.state, sub.original_name, sub.source) == (result.submission_id, RECEIVED, "沈阳市报表.xlsx", "folder")
    assert sub.received_at == NOW
    (f,) = files_of(ledger, sub.id)
    assert (f.role, f.name, f.sha256, f.size) == ("return", "沈阳市报表.xlsx", sha, len(data))
    assert f.archive_path == f"archive/{sha[:2]}/{sha}"
    assert (home / f.archive_path).read_bytes() == data


def test_archive_happens_before_the_ledger_is_touched(ledger, home, inbox, monkeypatch):
    data = b"kept even if the ledger write fails"
    entry = put(inbox, "大连市.xlsx", data)

    def broken_session():
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(ledger, "session", broken_session)
    with pytest.raises(RuntimeError):
        take(ledger, entry)
    sha = hashlib.sha256(data).hexdigest()
    assert (home / "archive" / sha[:2] / sha).read_bytes() == data


def test_folder_entry_is_one_submission_with_roles(ledger, home, inbox):
    entry = inbox / "锦州市"
    put(entry, "报表.xlsx", b"PK\x03\x04 workbook")
    put(entry, "现场1.jpg", b"\xff\xd8\xff jpeg 1")
    put(entry, "sub/现场2.PNG", b"\x89PNG png 2")
    put(entry, "说明.docx", b"docx")
    result = take(ledger, entry)
    assert result.outcome == "received"
    roles = {f.name: f.role for f in files_of(ledger, result.submission_id)}
    assert roles == {"报表.xlsx": "return", "现场1.jpg": "photo", "现场2.PNG": "photo", "说明.docx": "narrative"}
    assert len(archived(home)) == 4


@pytest.mark.parametrize("name, role", [("a.xlsx", "return"), ("a.XLS", "return"), ("a.ods", "return"),
                                        ("a.csv", "return"), ("a.xlsm", "return"), ("p.JPG", "photo"),
                                        ("p.jpeg", "photo"), ("p.png", "photo"), ("x.pdf", "signed"),
                                        ("x.ZIP", "zip"), ("x.docx", "narrative"), ("x.doc", "other"),
                                        ("noext", "other"), ("a.xlsx.exe", "other")])
def test_file_role(name, role):
    assert file_role(name) == role


# ---------------------------------------------------------------- once only
def test_same_entry_twice_records_one_submission(ledger, home, inbox):
    entry = put(inbox, "鞍山市.xlsx", b"PK\x03\x04 anshan")
    first = take(ledger, entry)
    again = take(ledger, entry)  # a crash before the move: the entry is still there
    assert first.outcome == "received"
    assert again.outcome == "duplicate" and again.submission_id == first.submission_id
    assert len(submissions(ledger)) == 1
    with ledger.session() as s:
        assert s.scalar(select(func.count()).select_from(SubmissionFile)) == 1
    assert len(archived(home)) == 1


def test_same_bytes_from_another_source_is_recorded_duplicate(ledger, inbox):
    entry = put(inbox, "抚顺市.xlsx", b"PK\x03\x04 fushun")
    first = take(ledger, entry)
    second = take(ledger, entry, source="imap", sender="fushun-jieneng@example.org")
    assert second.outcome == "duplicate" and second.submission_id != first.submission_id
    assert str(first.submission_id) in second.detail
    states = [(s.id, s.state) for s in submissions(ledger)]
    assert states == [(first.submission_id, RECEIVED), (second.submission_id, DUPLICATE)]


def test_identical_bytes_under_another_name_is_duplicate(ledger, inbox):
    data = b"PK\x03\x04 benxi"
    first = take(ledger, put(inbox, "本溪市.xlsx", data))
    second = take(ledger, put(inbox, "本溪市（重发）.xlsx", data))
    assert first.outcome == "received"
    assert second.outcome == "duplicate"


def test_a_second_copy_seen_again_after_a_crash_is_not_recorded_twice(ledger, inbox):
    """A second copy under another name was recorded (as a duplicate), then the run died before
    moving it to processed/: the next run finds it recorded, not new."""
    data = b"PK\x03\x04 liaoyang"
    take(ledger, put(inbox, "辽阳市.xlsx", data))
    second = take(ledger, put(inbox, "辽阳市-副本.xlsx", data))
    again = take(ledger, inbox / "辽阳市-副本.xlsx")
    assert (again.outcome, again.detail, again.submission_id) == ("duplicate", "already recorded", second.submission_id)
    assert len(submissions(ledger)) == 2


# ---------------------------------------------------------------- size cap
def test_oversized_file_is_refused_and_not_archived(ledger, home, inbox):
    entry = put(inbox, "丹东市.xlsx", b"x" * (BIG + 1))
    result = take(ledger, entry)
    assert result.outcome == "refused"
    assert archived(home) == []
    (sub,) = submissions(ledger)
    assert sub.state == REFUSED and sub.errors and "丹东市.xlsx" in sub.errors[0]
    (f,) = files_of(ledger, sub.id)
    assert (f.role, f.sha256, f.archive_path, f.size) == ("refused", None, None, BIG + 1)
    # the refusal is recorded once
    assert take(ledger, entry).outcome == "duplicate"
    assert len(submissions(ledger)) == 1


def test_file_at_the_cap_is_taken(ledger, home, inbox):
    assert take(ledger, put(inbox, "a.xlsx", b"x" * BIG)).outcome == "received"
    assert len(archived(home)) == 1


def test_oversized_photo_in_a_folder_refuses_only_that_file(ledger, home, inbox):
    entry = inbox / "营口市"
    put(entry, "报表.xlsx", b"PK\x03\x04 small")
    put(entry, "huge.jpg", b"\xff" * (BIG + 1))
    result = take(ledger, entry)
    assert result.outcome == "received"
    roles = {f.name: (f.role, f.sha256 is None) for f in files_of(ledger, result.submission_id)}
    assert roles == {"报表.xlsx": ("return", False), "huge.jpg": ("refused", True)}
    assert len(archived(home)) == 1


# ---------------------------------------------------------------- walking entries
def test_entry_files_skips_symlinks_and_hidden(inbox, tmp_path):
    secret = put(tmp_path / "outside", "secret.txt", b"not yours")
    entry = inbox / "辽阳市"
    put(entry, "报表.xlsx", b"PK")
    put(entry, "照片/a.jpg", b"\xff\xd8")
    put(entry, ".DS_Store", b"junk")
    put(entry, ".hidden/b.jpg", b"\xff\xd8")
    os.symlink(secret, entry / "link.xlsx")
    os.symlink(secret.parent, entry / "linked-dir")
    names = sorted(f.name for f in entry_files(entry))
    assert names == ["a.jpg", "报表.xlsx"]
    for f in entry_files(entry):
        assert isinstance(f, IncomingFile) and f.size == f.path.stat().st_size
        assert entry in f.path.parents


def test_entry_files_of_a_file(inbox):
    entry = put(inbox, "盘锦市.csv", b"a,b\n1,2\n")
    (f,) = entry_files(entry)
    assert (f.name, f.path, f.size) == ("盘锦市.csv", entry, 8)


def test_drop_folder_entries_skips_hidden_partial_and_links(inbox, tmp_path):
    put(inbox, "a.xlsx", b"1")
    put(inbox, "b.xlsx.part", b"1")
    put(inbox, "c.tmp", b"1")
    put(inbox, ".d.xlsx", b"1")
    put(inbox, "folder/x.xlsx", b"1")
    os.symlink(put(tmp_path, "elsewhere.xlsx", b"1"), inbox / "link.xlsx")
    assert sorted(p.name for p in drop_folder_entries(inbox)) == ["a.xlsx", "folder"]
    assert drop_folder_entries(inbox / "missing") == []


# ---------------------------------------------------------------- moving out of the inbox
@pytest.mark.parametrize("name", ["..evil", "...", "..", "报表（沈阳市）.xlsx", "a b;c.xlsx", "-rf",
                                  "\\..\\evil.xlsx", "x" * 200 + ".xlsx", "..\u202egpj.exe"])
def test_move_processed_uses_a_safe_name(home, inbox, name):
    if name in ("..", "."):
        # cannot be a directory entry; exercise the name maker directly
        assert safe_name(name) not in (".", "..") and "/" not in safe_name(name)
        return
    entry = put(inbox, name, b"data")
    target = move_processed(home, CAMPAIGN, entry, NOW)
    processed = home / "processed" / CAMPAIGN
    assert target.parent == processed
    assert target.resolve().parent == processed.resolve()
    assert "/" not in target.name and "\\" not in target.name
    assert not target.name.startswith(".") and not target.name.startswith("..")
    if name.startswith(".."):
        assert ".." not in target.name
    assert target.read_bytes() == b"data"
    assert not entry.exists()
    assert target.name.startswith("20230925T020000Z-")


def test_move_processed_keeps_chinese_and_never_overwrites(home, inbox):
    first = move_processed(home, CAMPAIGN, put(inbox, "沈阳市报表.xlsx", b"1"), NOW)
    second = move_processed(home, CAMPAIGN, put(inbox, "沈阳市报表.xlsx", b"2"), NOW)
    assert first.name == "20230925T020000Z-沈阳市报表.xlsx"
    assert first != second and first.read_bytes() == b"1" and second.read_bytes() == b"2"


def test_move_processed_moves_a_folder(home, inbox):
    entry = inbox / "朝阳市"
    put(entry, "报表.xlsx", b"1")
    put(entry, "a.jpg", b"2")
    target = move_processed(home, CAMPAIGN, entry, NOW)
    assert sorted(p.name for p in target.iterdir()) == ["a.jpg", "报表.xlsx"]
    assert not entry.exists()


@pytest.mark.parametrize("name, expected", [
    ("沈阳市报表.xlsx", "沈阳市报表.xlsx"),
    ("..evil", "evil"),
    ("../../etc/passwd", "etc_passwd"),
    ("a b\tc.xlsx", "a_b_c.xlsx"),
    ("报表（沈阳）.xlsx", "报表_沈阳_.xlsx"),
    ("", "file"),
    ("...", "file"),
    ("///", "file"),
])
def test_safe_name(name, expected):
    assert safe_name(name) == expected


@pytest.mark.parametrize("name", ["a" * 300, "报" * 300 + ".xlsx", "x/" * 100, "..." + "y" * 100])
def test_safe_name_bounded(name):
    out = safe_name(name)
    assert 0 < len(out) <= 80 and "/" not in out and not out.startswith(".")


def test_safe_name_long_name_has_no_leading_dot():
    out = safe_name("x" * 10 + "." + "y" * 79)
    assert not out.startswith(".")


# ---------------------------------------------------------------- a drop folder by chunks
def test_take_in_entries_by_chunks_records_each_once(ledger, home, inbox):
    """Chunks of entries: each archived, recorded (same bytes twice in one chunk: the second is
    a duplicate of the first), moved; put back after a crash before the move, nothing new."""
    from tasks.intake.intake import take_in_entries

    put(inbox, "a.csv", b"x,1\n")
    put(inbox, "b.csv", b"x,2\n")
    put(inbox, "c.csv", b"x,1\n")  # same bytes as a.csv
    put(inbox, "d/报表.csv", b"x,3\n")
    put(inbox, "d/照片.jpg", b"\xff\xd8 jpeg")
    put(inbox, "big.csv", b"y" * (BIG + 1))
    for i, name in enumerate(["a.csv", "b.csv", "c.csv", "d", "big.csv"]):
        os.utime(inbox / name, (1_700_000_000 + i, 1_700_000_000 + i))  # drop-folder order
    seen = []
    results = take_in_entries(ledger, CAMPAIGN, drop_folder_entries(inbox), source="folder", now=NOW,
                              max_file_bytes=BIG, chunk=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert [(r.name, r.outcome) for r in results] == [
        ("a.csv", "received"), ("b.csv", "received"), ("c.csv", "duplicate"), ("d", "received"),
        ("big.csv", "refused")]
    assert f"与第{results[0].submission_id}号" in results[2].detail
    assert list(inbox.iterdir()) == []  # every entry moved to processed/
    assert len(list((home / "processed" / CAMPAIGN).iterdir())) == 5
    assert sorted(f.role for f in files_of(ledger, results[3].submission_id)) == ["photo", "return"]
    assert len(archived(home)) == 4  # a, b, 报表, 照片 (c is a's bytes; big is refused unread)

    put(inbox, "a.csv", b"x,1\n")  # a crash after recording, before the move: the entry is back
    again = take_in_entries(ledger, CAMPAIGN, drop_folder_entries(inbox), source="folder", now=NOW,
                            max_file_bytes=BIG)
    assert [(r.submission_id, r.outcome) for r in again] == [(results[0].submission_id, "duplicate")]
    assert len(submissions(ledger)) == 5


def test_intake_rows_read_back_through_the_orm(ledger, inbox):
    """Rows written with plain DB-API values read back as the ORM's types: aware UTC times,
    JSON lists, booleans."""
    from tasks.intake.intake import take_in_entries

    put(inbox, "a.csv", b"x,1\n")
    put(inbox, "big.csv", b"y" * (BIG + 1))
    take_in_entries(ledger, CAMPAIGN, drop_folder_entries(inbox), source="folder", now=NOW,
                    max_file_bytes=BIG)
    subs = {s.original_name: s for s in submissions(ledger)}
    assert subs["a.csv"].received_at == NOW and subs["a.csv"].received_at.tzinfo is not None
    assert (subs["a.csv"].errors, subs["a.csv"].warnings, subs["a.csv"].late) == ([], [], False)
    assert subs["big.csv"].state == REFUSED and "大小上限" in subs["big.csv"].errors[0]


def test_take_in_entries_skips_an_entry_gone_before_its_turn(ledger, home, inbox):
    """A sender takes a file back after the drop folder was listed: the others go on."""
    from tasks.intake.intake import take_in_entries

    put(inbox, "a.csv", b"x,1\n")
    put(inbox, "b.csv", b"x,2\n")
    entries = drop_folder_entries(inbox)
    (inbox / "a.csv").unlink()
    seen = []
    results = take_in_entries(ledger, CAMPAIGN, entries, source="folder", now=NOW, max_file_bytes=BIG,
                              progress=lambda d, t: seen.append((d, t)))
    assert [(r.name, r.outcome) for r in results] == [("b.csv", "received")]
    assert [s.original_name for s in submissions(ledger)] == ["b.csv"]
    assert seen == [(2, 2)]


def test_a_large_file_is_archived_by_the_hash_of_the_bytes_copied(home, tmp_path):
    """Over 8 MB a file is streamed: hashed while copied, kept read-only under that hash,
    once; no temp file is left behind."""
    from tasks.intake.archive import archive_file

    data = os.urandom(1 << 20) * 9  # 9 MB
    src = put(tmp_path, "big.xlsx", data)
    sha, rel, size = archive_file(home, src)
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    kept = home / rel
    assert kept.read_bytes() == data and not kept.stat().st_mode & 0o222
    assert archive_file(home, src) == (sha, rel, size)  # write-once: the same bytes again
    assert [p.name for p in (home / "archive").rglob(".incoming-*")] == []


def test_temp_names_differ_between_hosts_sharing_the_home(home, monkeypatch):
    """Two hosts on one shared home may run the same pid: a temp file of one is never taken
    (and unlinked as a leftover) by the other."""
    import tasks.core.durable as durable
    from tasks.intake.archive import _new_temp

    names = []
    for host in ("host-a", "host-b"):
        monkeypatch.setattr(durable, "_HOST", host)
        fd, tmp = _new_temp(str(home / "archive" / ".incoming"), "stream")
        os.write(fd, host.encode())
        os.close(fd)
        names.append(tmp)
    assert names[0] != names[1] and [Path(n).read_bytes() for n in names] == [b"host-a", b"host-b"]


def test_the_duplicate_lookup_uses_the_fingerprint_index(ledger, inbox):
    """Each chunk looks its fingerprints up through their index, never by walking the
    campaign's submissions (that made the intake of 100,000 entries quadratic)."""
    from sqlalchemy import event

    from tasks.intake.intake import take_in_entries

    put(inbox, "a.csv", b"x,1\n")
    take_in_entries(ledger, CAMPAIGN, drop_folder_entries(inbox), source="folder", now=NOW,
                    max_file_bytes=BIG)
    seen = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM submissions" in statement and "fingerprint IN" in statement:
            seen.append((statement, parameters))

    event.listen(ledger.engine, "before_cursor_execute", capture)
    try:
        put(inbox, "b.csv", b"x,2\n")
        take_in_entries(ledger, CAMPAIGN, drop_folder_entries(inbox), source="folder", now=NOW,
                        max_file_bytes=BIG)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", capture)
    [(statement, parameters)] = seen
    with ledger.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                                                     parameters))
    assert "ix_submissions_fingerprint" in plan, plan

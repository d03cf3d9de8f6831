"""The ledger on a real PostgreSQL server (tests/pg_server.py): the intake, the decisions, the
bulletin merge and the deliveries give on PostgreSQL what they give on SQLite.

Each scenario runs on both backends, from the same real files (made by the project's own
helpers, as in test_intake, test_processing and test_compile), and the ledgers' rows are
compared: ids, states, times, JSON lists, values, events. No Prefect, no mocks.
"""

from __future__ import annotations

import datetime as dt
import os
import zipfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
from pg_server import postgres_server, postgres_url  # noqa: F401 - the fixtures
from PIL import Image
from sqlalchemy import select, update
from test_compile import ACCEPTED_VALUES, COMPILE, md_totals
from test_delivery import Outbox, claim_race, eml_files, receipts, two_runs_at_once
from test_intake import BIG, put
from test_processing import AFTER, BEFORE, LATER, submit, write_anonymous, write_return

from tasks.bulletin.compile import compile_bulletin, merge_accepted
from tasks.core.ledger import (
    ACCEPTED,
    DUPLICATE,
    NEEDS_EXPLANATION,
    QUARANTINED,
    RECEIVED,
    REFUSED,
    REJECTED,
    SENDING,
    SENT,
    SUPERSEDED,
    UNCERTAIN,
    Delivery,
    Event,
    Ledger,
    Submission,
    SubmissionFile,
    Value,
    bulk_update,
    db_rows,
    insert_returning_ids,
)
from tasks.decisions.processing import process_received
from tasks.intake.intake import drop_folder_entries, entry_files, take_in, take_in_entries
from tasks.mail.delivery import deliver_many, mark_stale_uncertain

CAMPAIGN = "energy-week-2023"
NOW = dt.datetime(2023, 9, 25, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


@pytest.fixture
def ledgers(tmp_path, postgres_url) -> dict[str, Ledger]:  # noqa: F811
    """A fresh SQLite ledger and a fresh PostgreSQL ledger, each with a home of its own."""
    return {"sqlite": Ledger(tmp_path / "sqlite" / "home"),
            "postgresql": Ledger(tmp_path / "postgresql" / "home", url=postgres_url)}


@pytest.fixture
def pg(tmp_path, postgres_url) -> Ledger:  # noqa: F811
    return Ledger(tmp_path / "home", url=postgres_url)


def rows(ledger: Ledger, table) -> list[tuple]:
    """Every row of a table, by id, read through SQLAlchemy's column types."""
    with ledger.session() as s:
        return [tuple(r) for r in s.execute(select(table).order_by(table.c.id))]


def snapshot(ledger: Ledger) -> dict[str, list[tuple]]:
    return {t.name: rows(ledger, t) for t in (Submission.__table__, SubmissionFile.__table__,
                                               Value.__table__, Event.__table__)}


def assert_same(pg: dict, lite: dict) -> None:
    """The snapshots of both backends are equal; name the first row that differs."""
    for table in lite:
        for a, b in zip(pg[table], lite[table]):
            assert a == b, f"{table}: PostgreSQL {a} != SQLite {b}"
        assert len(pg[table]) == len(lite[table]), table


def _zip(members: dict[str, bytes]) -> bytes:
    """A zip with fixed member times: the same bytes for both backends, whenever it is made."""
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2023, 9, 25, 10, 0, 0)), data)
    return buf.getvalue()


# ---------------------------------------------------------------- intake
def test_take_in_entries_by_chunks_on_both_backends(ledgers, tmp_path):
    """Chunks of drop-folder entries (a copy within a chunk, a sub-folder with a photo and a
    zip of photos, an oversized file), then a re-run: the same rows on both backends."""
    got = {}
    for backend, ledger in ledgers.items():
        inbox = tmp_path / backend / "inbox"
        put(inbox, "a.csv", b"x,1\n")
        put(inbox, "b.csv", b"x,2\n")
        put(inbox, "c.csv", b"x,1\n")  # same bytes as a.csv
        put(inbox, "d/报表.csv", b"x,3\n")
        put(inbox, "d/照片.jpg", b"\xff\xd8 jpeg")
        put(inbox, "e/报表.csv", b"x,4\n")
        put(inbox, "e/照片.zip", _zip({"现场.jpg": b"\xff\xd8 one", "说明.txt": b"no"}))
        put(inbox, "big.csv", b"y" * (BIG + 1))
        for i, name in enumerate(["a.csv", "b.csv", "c.csv", "d", "e", "big.csv"]):
            os.utime(inbox / name, (1_700_000_000 + i, 1_700_000_000 + i))
        results = take_in_entries(ledger, CAMPAIGN, drop_folder_entries(inbox), source="folder",
                                  now=NOW, max_file_bytes=BIG, chunk=3)
        put(inbox, "a.csv", b"x,1\n")  # a crash after recording, before the move: back again
        again = take_in_entries(ledger, CAMPAIGN, drop_folder_entries(inbox), source="folder",
                                now=NOW, max_file_bytes=BIG)
        got[backend] = (results, again, snapshot(ledger))

    results, again, snap = got["postgresql"]
    assert [(r.submission_id, r.name, r.outcome) for r in results] == [
        (1, "a.csv", "received"), (2, "b.csv", "received"), (3, "c.csv", "duplicate"),
        (4, "d", "received"), (5, "e", "received"), (6, "big.csv", "refused")]
    assert "与第1号" in results[2].detail
    assert [(r.submission_id, r.outcome) for r in again] == [(1, "duplicate")]
    pg = ledgers["postgresql"]
    subs = {s.original_name: s for s in pg.submissions(CAMPAIGN)}
    assert [s.state for s in subs.values()] == [RECEIVED, RECEIVED, DUPLICATE, RECEIVED, RECEIVED, REFUSED]
    for s in subs.values():
        assert s.received_at == NOW and s.received_at.utcoffset() == dt.timedelta(0)
        assert s.warnings == [] and s.late is False
    assert subs["a.csv"].errors == [] and subs["c.csv"].errors == []
    assert len(subs["big.csv"].errors) == 1 and "大小上限" in subs["big.csv"].errors[0]
    with pg.session() as s:
        files = s.execute(select(SubmissionFile.submission_id, SubmissionFile.role, SubmissionFile.name)
                          .order_by(SubmissionFile.id)).all()
    assert [tuple(f) for f in files if f[0] in (4, 5)] == [
        (4, "return", "报表.csv"), (4, "photo", "照片.jpg"),
        (5, "return", "报表.csv"), (5, "zip", "照片.zip"), (5, "photo", "照片.zip/现场.jpg"),
        (5, "refused", "照片.zip/说明.txt")]
    assert [e[4] for e in snap["events"]] == ["submission.received"] * 2 + ["submission.duplicate"] + \
        ["submission.received"] * 2 + ["submission.refused"]
    assert (results, again) == got["sqlite"][:2]
    assert_same(snap, got["sqlite"][2])


def test_take_in_from_a_long_mail_address(ledgers, tmp_path):
    """A sender address longer than the audit trail's actor column used to hold (128): on
    PostgreSQL, which enforces VARCHAR lengths, the intake must still record it."""
    sender = "a" * 150 + "@example.org"
    got = {}
    for backend, ledger in ledgers.items():
        entry = put(tmp_path / backend / "mail", "return.csv", b"x,1\n")
        r = take_in(ledger, CAMPAIGN, entry.name, entry_files(entry), source="imap", sender=sender,
                    now=NOW, max_file_bytes=BIG)
        got[backend] = (r, snapshot(ledger))
    r, snap = got["postgresql"]
    assert r.outcome == "received"
    assert snap["submissions"][0][5] == sender and snap["events"][0][3] == sender
    assert r == got["sqlite"][0]
    assert_same(snap, got["sqlite"][1])


# ---------------------------------------------------------------- decisions
_ANONYMOUS: list[bytes] = []


def _anonymous(config, scratch: Path) -> bytes:
    """write_anonymous's bytes, made once: openpyxl stamps the time into every file it saves."""
    if not _ANONYMOUS:
        _ANONYMOUS.append(write_anonymous(scratch / "made", config).read_bytes())
    return _ANONYMOUS[0]


def _decide_rounds(ledger: Ledger, config, inbox: Path) -> list:
    """Three rounds of real returns: every kind of decision, photos, supersession, lateness."""
    u = config.units
    submit(ledger, config, write_return(inbox / "1", config, u[0], posters=321), BEFORE)
    submit(ledger, config, write_return(inbox / "2", config, u[1], posters=-1, signs="很多"), BEFORE)
    submit(ledger, config, write_return(inbox / "3", config, u[2], posters=20000), BEFORE)
    submit(ledger, config, write_return(inbox / "4", config, u[3], posters=20000,
                                        explanation="全市统一印制，数量较大"), BEFORE)
    submit(ledger, config, put(inbox / "5", "return.xlsx", _anonymous(config, inbox)), BEFORE)
    anonymous_csv = put(inbox / "6", "return.csv", "项目,数值\n".join(
        [""] + [f"{f.label},{10 if f.kind == 'count' else '开展了节能宣传活动。'}\n"
                for f in config.campaign.form.fields]).encode("utf-8"))  # other bytes than 5's
    submit(ledger, config, anonymous_csv, BEFORE, sender=f"联络员 <{u[6].contacts[0].email}>")
    photos = inbox / "7" / "沈阳"
    write_return(photos, config, u[5], name="报表.xlsx", photos=[("现场1.jpg", "启动仪式现场")])
    Image.new("RGB", (40, 30), "red").save(photos / "现场1.jpg", "JPEG")
    Image.new("RGB", (40, 30), "blue").save(photos / "签名_活动.png", "PNG")
    (photos / "坏图.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    submit(ledger, config, photos, BEFORE)
    outcomes = process_received(ledger, config, BEFORE)
    # corrections: a new accepted return supersedes; a rejected one leaves the accepted one
    submit(ledger, config, write_return(inbox / "8", config, u[0], posters=150), LATER)
    submit(ledger, config, write_return(inbox / "9", config, u[2], posters=200), LATER)
    submit(ledger, config, write_return(inbox / "10", config, u[3], posters="很多"), LATER)
    outcomes += process_received(ledger, config, LATER)
    submit(ledger, config, write_return(inbox / "11", config, u[7]), AFTER)  # late
    outcomes += process_received(ledger, config, AFTER)
    assert process_received(ledger, config, AFTER) == []
    return outcomes


def test_decisions_on_both_backends(ledgers, config, tmp_path):
    got = {}
    for backend, ledger in ledgers.items():
        outcomes = _decide_rounds(ledger, config, tmp_path / backend / "inbox")
        got[backend] = ([asdict(o) for o in outcomes], snapshot(ledger))
    outcomes, snap = got["postgresql"]
    u = config.units
    assert [(o["submission_id"], o["state"], o["unit_code"], o["version"]) for o in outcomes] == [
        (1, ACCEPTED, u[0].code, 1), (2, REJECTED, u[1].code, 1), (3, NEEDS_EXPLANATION, u[2].code, 1),
        (4, ACCEPTED, u[3].code, 1), (5, QUARANTINED, None, None), (6, ACCEPTED, u[6].code, 1),
        (7, ACCEPTED, u[5].code, 1), (8, ACCEPTED, u[0].code, 2), (9, ACCEPTED, u[2].code, 2),
        (10, REJECTED, u[3].code, 2), (11, ACCEPTED, u[7].code, 1)]
    assert outcomes[7]["earlier_replaced"] and outcomes[8]["earlier_replaced"]
    assert outcomes[9]["earlier_still_counts"] == 1 and outcomes[10]["late"] is True
    pg = ledgers["postgresql"]
    states = {s.id: (s.state, s.late, s.decided_by) for s in pg.submissions(CAMPAIGN)}
    assert states[1] == (SUPERSEDED, False, "system") and states[3][0] == SUPERSEDED
    assert states[4][0] == ACCEPTED and states[11] == (ACCEPTED, True, "system")
    with pg.session() as s:
        sub = s.get(Submission, 2)
        assert len(sub.errors) == 2 and sub.warnings == [] and isinstance(sub.errors, list)
        assert sub.decided_at == BEFORE and sub.decided_at.utcoffset() == dt.timedelta(0)
        assert s.get(Submission, 4).explanation == "全市统一印制，数量较大"
        values = {v.field: (v.number, v.text)
                  for v in s.scalars(select(Value).where(Value.submission_id == 8))}
        captions = {f.name: (f.role, f.caption) for f in s.scalars(
            select(SubmissionFile).where(SubmissionFile.submission_id == 7))}
    assert values["posters"] == (150.0, None) and values["activities"][0] is None
    assert captions["现场1.jpg"] == ("photo", "启动仪式现场")
    assert captions["签名_活动.png"] == ("photo", "签名 活动")
    assert captions["坏图.jpg"] == ("refused", None)
    assert len(snap["submission_values"]) > 0 and len(snap["events"]) == 11 + 11
    assert outcomes == got["sqlite"][0]
    assert_same(snap, got["sqlite"][1])


# ---------------------------------------------------------------- the bulletin
def test_merge_and_compile_on_both_backends(ledgers, config, tmp_path):
    got = {}
    for backend, ledger in ledgers.items():
        inbox, u = tmp_path / backend / "inbox", config.units
        for i, v in enumerate(ACCEPTED_VALUES):
            submit(ledger, config, write_return(inbox / str(i), config, u[i], **v), BEFORE)
        submit(ledger, config, write_return(inbox / "r", config, u[3], posters=-1, signs=99999), BEFORE)
        submit(ledger, config, write_return(inbox / "n", config, u[4], posters=99999), BEFORE)
        process_received(ledger, config, BEFORE)
        b1, created1 = compile_bulletin(ledger, config, COMPILE)
        submit(ledger, config, write_return(inbox / "again", config, u[0],
                                            **{**ACCEPTED_VALUES[0], "posters": 10100}), LATER)
        process_received(ledger, config, LATER)
        merged = merge_accepted(ledger, config)
        b2, created2 = compile_bulletin(ledger, config, COMPILE)
        b3, created3 = compile_bulletin(ledger, config, COMPILE)
        got[backend] = dict(
            bulletins=[(b.version, b.submission_ids, b.created_at, b.approval) for b in (b1, b2, b3)],
            created=(created1, created2, created3),
            totals=[md_totals((ledger.home / b.folder / "bulletin.md").read_text(encoding="utf-8"))
                    for b in (b1, b2)],
            merged=merged)
    pg, lite = got["postgresql"], got["sqlite"]
    assert pg["created"] == (True, True, False)
    assert [b[:2] for b in pg["bulletins"]] == [(1, [1, 2, 3]), (2, [6, 2, 3]), (2, [6, 2, 3])]  # unit order
    assert pg["totals"][0]["张贴宣传画"] == 32237 and pg["totals"][1]["张贴宣传画"] == 32337
    assert list(pg["merged"].numbers.index) == [u.code for u in config.units[:3]]
    pd.testing.assert_frame_equal(pg["merged"].numbers, lite["merged"].numbers)
    pd.testing.assert_frame_equal(pg["merged"].texts, lite["merged"].texts)
    assert [tuple(x) for x in pg["merged"].submissions] == [tuple(x) for x in lite["merged"].submissions]
    for key in ("bulletins", "created", "totals"):
        assert pg[key] == lite[key], key


# ---------------------------------------------------------------- deliveries
def states(ledger: Ledger) -> dict[str, tuple[str, int]]:
    with ledger.session() as s:
        return {r.key: (r.state, r.attempts) for r in s.scalars(select(Delivery))}


def test_deliver_many_sends_once_on_postgres(pg, tmp_path):
    items = receipts(25)
    mailer = Outbox(tmp_path / "outbox", batch_size=10)
    assert deliver_many(pg, mailer, items, campaign=CAMPAIGN, step="receipt") == ["sent"] * 25
    assert len(eml_files(mailer)) == 25 and mailer.flushes == 3
    with pg.session() as s:
        r = s.scalars(select(Delivery).where(Delivery.key == items[7][0].key)).one()
    assert (r.state, r.attempts, r.unit_code, r.recipients) == (SENT, 1, "U7", ["unit7@example.org"])
    assert r.sent_at.utcoffset() == dt.timedelta(0) and r.claimed_at <= r.sent_at
    again = Outbox(tmp_path / "outbox")
    assert deliver_many(pg, again, items, campaign=CAMPAIGN, step="receipt") == ["skipped"] * 25
    assert again.sends == []


def test_failed_and_uncertain_retried_on_postgres(pg, tmp_path):
    items = receipts(4)
    keys = [m.key for m, _ in items]
    mailer = Outbox(tmp_path / "outbox", refuse={keys[1]}, uncertain={keys[2]})
    assert deliver_many(pg, mailer, items, campaign=CAMPAIGN, step="receipt") == \
        ["sent", "failed", "uncertain", "sent"]
    retry = Outbox(tmp_path / "outbox")
    assert deliver_many(pg, retry, items, campaign=CAMPAIGN, step="receipt") == \
        ["skipped", "sent", "skipped", "skipped"]
    assert deliver_many(pg, retry, items, campaign=CAMPAIGN, step="receipt", resend_uncertain=True) == \
        ["skipped", "skipped", "sent", "skipped"]
    assert states(pg) == {keys[0]: (SENT, 1), keys[1]: (SENT, 2), keys[2]: (SENT, 2), keys[3]: (SENT, 1)}
    with pg.session() as s:  # a claim left in sending by a crash
        s.execute(update(Delivery).where(Delivery.key == keys[3]).values(state=SENDING))
    assert mark_stale_uncertain(pg, CAMPAIGN, older_than=dt.timedelta(0)) == [keys[3]]
    assert states(pg)[keys[3]] == (UNCERTAIN, 1)


@pytest.mark.parametrize("race", ["insert", "retry"])
def test_claim_race_falls_back_on_postgres(pg, tmp_path, race):
    """Another run claims a key between this run's look-up and its write. PostgreSQL aborts
    the whole transaction on the unique-key violation: the chunk is claimed again one key at a
    time, in new transactions; the stolen key is skipped, the others sent."""
    stolen = claim_race(pg, tmp_path, race)
    assert all(st == (SENT, 1) for k, st in states(pg).items() if k != stolen)


def test_two_batched_runs_at_once_on_postgres(pg, tmp_path):
    """Two runs over the same keys in opposite orders, at once: on PostgreSQL their claims
    really overlap (row locks, not one database lock); each key still goes out once."""
    items = receipts(120)
    mailers = [Outbox(tmp_path / "outbox", batch_size=10, delay=0.001) for _ in range(2)]
    results = two_runs_at_once(pg, items, mailers)
    assert Counter(results[0] + results[1]) == {"sent": 120, "skipped": 120}
    assert sorted(mailers[0].sends + mailers[1].sends) == sorted(m.key for m, _ in items)
    assert all(st == (SENT, 1) for st in states(pg).values()) and len(states(pg)) == 120


# ---------------------------------------------------------------- the DB-API fast paths
def test_bulk_update_with_db_rows_on_both_backends(ledgers):
    """Typed columns through db_rows (JSON lists, aware times, booleans, NULLs) and bulk_update,
    read back through the ORM: the same on both backends."""
    for ledger in ledgers.values():
        _bulk_update_round_trip(ledger)


def _bulk_update_round_trip(ledger: Ledger) -> None:
    S = Submission.__table__
    cols = ("campaign", "source", "original_name", "sender", "received_at", "fingerprint", "state",
            "errors", "warnings", "late")
    with ledger.session() as s:
        conn = s.connection()
        ids = insert_returning_ids(conn, S, [dict(zip(cols, (CAMPAIGN, "folder", f"{i}.csv", None, NOW, f"fp{i}",
                                                              RECEIVED, [], [], False))) for i in range(3)])
        assert ids == [1, 2, 3]
        updates = [{"id": ids[0], "state": ACCEPTED, "errors": [], "warnings": ["偏大"], "late": True,
                    "decided_at": LATER, "unit_code": "210100", "version": 1},
                   {"id": ids[1], "state": REJECTED, "errors": ["坏", "更坏"], "warnings": [],
                    "late": False, "decided_at": LATER, "unit_code": None, "version": None},
                   {"id": ids[2], "state": QUARANTINED, "errors": [], "warnings": [], "late": False,
                    "decided_at": AFTER, "unit_code": None, "version": None}]
        columns = tuple(c for c in updates[0] if c != "id")
        bulk_update(conn, S, columns, [(*r, u["id"]) for r, u in
                                       zip(db_rows(conn, S, columns, updates), updates)])
        bulk_update(conn, S, columns, [])
    got = {x.id: x for x in ledger.submissions(CAMPAIGN)}
    for u in updates:
        x = got[u["id"]]
        assert {c: getattr(x, c) for c in columns} == {c: u[c] for c in columns}
        assert x.decided_at.utcoffset() == dt.timedelta(0) and x.received_at == NOW


def test_exclusive_is_held_by_one_run_at_a_time_on_both_backends(ledgers):
    """A long piece of work outside a transaction (reading a mailbox folder): a second holder,
    here another Ledger as another process would have, is told at once that it is taken."""
    for name, ledger in ledgers.items():
        other = Ledger(ledger.home, url=ledger.url)
        with ledger.exclusive("mailbox/x") as first:
            with other.exclusive("mailbox/x") as second, other.exclusive("mailbox/y") as third:
                assert (first, second, third) == (True, False, True), name
        with other.exclusive("mailbox/x") as again:
            assert again, name  # released on the way out

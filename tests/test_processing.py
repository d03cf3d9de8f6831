"""From received files to decisions (tasks/decisions/processing.py), end to end on real .xlsx returns
made by tasks/mail/workbook.py: take_in each, then process_received."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import Workbook
from PIL import Image
from sqlalchemy import select

from tasks.core.ledger import (
    ACCEPTED,
    NEEDS_EXPLANATION,
    QUARANTINED,
    RECEIVED,
    REJECTED,
    SUPERSEDED,
    Ledger,
    Submission,
    SubmissionFile,
    Value,
)
from tasks.decisions.processing import process_received
from tasks.decisions.status import completeness
from tasks.intake.intake import entry_files, take_in
from tasks.mail.workbook import build_request_workbook, fill_workbook

TZ = ZoneInfo("Asia/Shanghai")
BEFORE = dt.datetime(2023, 9, 25, 10, 0, tzinfo=TZ)   # deadline 2023-09-28 17:00
LATER = dt.datetime(2023, 9, 26, 10, 0, tzinfo=TZ)
AFTER = dt.datetime(2023, 9, 29, 9, 0, tzinfo=TZ)


# ---------------------------------------------------------------- helpers (real files)
def clean_values(config, unit, **over) -> dict[str, object]:
    values: dict[str, object] = {f.key: 10 if f.kind == "count" else f"{unit.name}开展节能宣传活动。"
                                 for f in config.campaign.form.fields}
    values["participants"] = 100
    values.update(over)
    return values


_MADE: dict[tuple, bytes] = {}


def write_return(folder: Path, config, unit, name: str | None = None, *, explanation: str | None = None,
                 photos=(), campaign=None, **over) -> Path:
    """The unit's generated request workbook, filled in (as flows/demo_units.py does); the
    bytes are made once per distinct content to keep the suite fast."""
    folder.mkdir(parents=True, exist_ok=True)
    camp = campaign or config.campaign
    key = (camp.id, unit.code, explanation, tuple(photos), tuple(sorted(over.items())))
    if key not in _MADE:
        _MADE[key] = fill_workbook(build_request_workbook(camp, unit), clean_values(config, unit, **over),
                                   explanation=explanation, photos=list(photos))
    path = folder / (name or f"{unit.name}报表.xlsx")
    path.write_bytes(_MADE[key])
    return path


def write_anonymous(folder: Path, config, name: str = "return.xlsx") -> Path:
    """A unit's own long-layout sheet with every field but no hint of who sent it."""
    folder.mkdir(parents=True, exist_ok=True)
    wb = Workbook()
    ws = wb.active
    ws.append(["项目", "数值"])
    for f in config.campaign.form.fields:
        ws.append([f.label, 10 if f.kind == "count" else "开展了节能宣传活动。"])
    path = folder / name
    wb.save(path)
    return path


def submit(ledger: Ledger, config, entry: Path, now: dt.datetime, sender: str | None = None):
    result = take_in(ledger, config.campaign.id, entry.name, entry_files(entry),
                     source="imap" if sender else "folder", sender=sender, now=now,
                     max_file_bytes=config.campaign.max_file_bytes)
    assert result.outcome == "received", result
    return result.submission_id


@pytest.fixture
def inbox(tmp_path) -> Path:
    return tmp_path / "inbox"


def sub(ledger: Ledger, sid: int) -> Submission:
    with ledger.session() as s:
        return s.get(Submission, sid)


def values_of(ledger: Ledger, sid: int) -> dict[str, object]:
    with ledger.session() as s:
        return {v.field: (v.number if v.text is None else v.text)
                for v in s.scalars(select(Value).where(Value.submission_id == sid))}


def unit_entry(status: dict, code: str) -> dict:
    return next(u for u in status["units"] if u["code"] == code)


# ---------------------------------------------------------------- decisions
def test_accepted_rejected_needs_explanation(ledger, config, inbox):
    u = config.units
    ok = submit(ledger, config, write_return(inbox, config, u[0], posters=321), BEFORE)
    bad = submit(ledger, config, write_return(inbox, config, u[1], posters=-1, signs="很多"), BEFORE)
    odd = submit(ledger, config, write_return(inbox, config, u[2], posters=20000), BEFORE)
    outcomes = {o.submission_id: o for o in process_received(ledger, config, BEFORE)}
    assert set(outcomes) == {ok, bad, odd}

    o = outcomes[ok]
    assert (o.state, o.unit_code, o.version, o.late, o.errors, o.warnings) == (ACCEPTED, u[0].code, 1, False, [], [])
    assert values_of(ledger, ok)["posters"] == 321.0
    assert values_of(ledger, ok)["activities"] == f"{u[0].name}开展节能宣传活动。"

    o = outcomes[bad]
    assert o.state == REJECTED and o.unit_code == u[1].code and len(o.errors) == 2
    assert any("报表!B5" in e and "张贴宣传画" in e and "应为非负整数" in e for e in o.errors)
    assert any("报表!B6" in e and "很多" in e for e in o.errors)
    assert all(f"{u[1].name}报表.xlsx" in e for e in o.errors)
    # a rejected return's readable values are kept (a coordinator may accept it by hand) but
    # only accepted returns are merged into the bulletin
    assert values_of(ledger, bad)["banners"] == 10.0
    from tasks.bulletin.compile import merge_accepted
    assert u[1].code not in merge_accepted(ledger, config).numbers.index

    o = outcomes[odd]
    assert o.state == NEEDS_EXPLANATION and o.errors == [] and len(o.warnings) == 1
    assert "15000" in o.warnings[0] and "B5" in o.warnings[0]

    states = {x.id: (x.state, x.unit_code, x.version, x.decided_by) for x in ledger.submissions(config.campaign.id)}
    assert states == {ok: (ACCEPTED, u[0].code, 1, "system"), bad: (REJECTED, u[1].code, 1, "system"),
                      odd: (NEEDS_EXPLANATION, u[2].code, 1, "system")}
    assert "单位代码" in sub(ledger, ok).identified_by
    # decided once: nothing left to process
    assert process_received(ledger, config, BEFORE) == []


def test_warning_with_explanation_is_accepted(ledger, config, inbox):
    sid = submit(ledger, config, write_return(inbox, config, config.units[3], posters=20000,
                                              explanation="全市统一印制，数量较大"), BEFORE)
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == ACCEPTED and o.warnings and o.explanation == "全市统一印制，数量较大"
    assert sub(ledger, sid).explanation == "全市统一印制，数量较大"
    assert values_of(ledger, sid)["posters"] == 20000.0


def test_resubmission_supersedes_earlier_accepted(ledger, config, inbox):
    unit = config.units[0]
    first = submit(ledger, config, write_return(inbox / "1", config, unit, posters=100), BEFORE)
    (o1,) = process_received(ledger, config, BEFORE)
    second = submit(ledger, config, write_return(inbox / "2", config, unit, posters=150), LATER)
    (o2,) = process_received(ledger, config, LATER)
    assert o1.state == ACCEPTED and o1.version == 1 and not o1.earlier_replaced
    assert o2.state == ACCEPTED and o2.version == 2 and o2.earlier_replaced
    assert o2.earlier_still_counts is None
    assert sub(ledger, first).state == SUPERSEDED
    assert sub(ledger, second).state == ACCEPTED
    st = completeness(ledger, config, LATER)
    e = unit_entry(st, unit.code)
    assert (e["state"], e["version"]) == ("accepted", 2)
    assert dt.datetime.fromisoformat(e["submitted_at"]) == LATER
    assert st["accepted"] == 1


def test_a_batch_is_decided_by_chunks_and_versions_carry_across_them(ledger, config, inbox, monkeypatch):
    """Chunks of two: a unit's three returns fall in different chunks (versions 1-3, only the
    last counts), and a run killed in its second chunk keeps the first chunk's decisions."""
    import tasks.decisions.processing as processing
    from tasks.core import faults
    monkeypatch.setattr(processing, "DECIDE_CHUNK", 2)
    unit, other = config.units[0], config.units[1]
    ids = [submit(ledger, config, write_return(inbox / str(i), config, u, posters=100 + i), BEFORE)
           for i, u in enumerate([unit, other, unit, unit, other])]

    def killed() -> None:
        raise RuntimeError("killed in the second chunk")

    with faults.hook("decide", 2, killed), pytest.raises(RuntimeError):
        process_received(ledger, config, BEFORE)
    assert [sub(ledger, i).state for i in ids] == [ACCEPTED, ACCEPTED, RECEIVED, RECEIVED, RECEIVED]
    assert {o.submission_id for o in process_received(ledger, config, BEFORE)} == set(ids[2:])
    assert [sub(ledger, i).version for i in ids] == [1, 1, 2, 3, 2]
    assert [sub(ledger, i).state for i in ids] == [SUPERSEDED, SUPERSEDED, SUPERSEDED, ACCEPTED, ACCEPTED]
    assert values_of(ledger, ids[3])["posters"] == 103


def test_needs_explanation_then_accepted_supersedes(ledger, config, inbox):
    unit = config.units[1]
    first = submit(ledger, config, write_return(inbox / "1", config, unit, posters=20000), BEFORE)
    process_received(ledger, config, BEFORE)
    submit(ledger, config, write_return(inbox / "2", config, unit, posters=200), LATER)
    (o,) = process_received(ledger, config, LATER)
    assert o.state == ACCEPTED and o.earlier_replaced
    assert sub(ledger, first).state == SUPERSEDED


def test_rejected_correction_keeps_earlier_accepted(ledger, config, inbox):
    unit = config.units[2]
    first = submit(ledger, config, write_return(inbox / "1", config, unit, posters=100), BEFORE)
    process_received(ledger, config, BEFORE)
    second = submit(ledger, config, write_return(inbox / "2", config, unit, posters="很多"), LATER)
    (o,) = process_received(ledger, config, LATER)
    assert o.state == REJECTED and o.version == 2
    assert o.earlier_still_counts == 1 and not o.earlier_replaced
    assert sub(ledger, first).state == ACCEPTED
    assert sub(ledger, second).state == REJECTED
    e = unit_entry(completeness(ledger, config, LATER), unit.code)
    assert (e["state"], e["version"]) == ("accepted", 2)
    assert dt.datetime.fromisoformat(e["submitted_at"]) == BEFORE  # the return that counts


def test_needs_explanation_correction_keeps_earlier_accepted(ledger, config, inbox):
    unit = config.units[4]
    first = submit(ledger, config, write_return(inbox / "1", config, unit), BEFORE)
    process_received(ledger, config, BEFORE)
    submit(ledger, config, write_return(inbox / "2", config, unit, posters=20000), LATER)
    (o,) = process_received(ledger, config, LATER)
    assert o.state == NEEDS_EXPLANATION and o.earlier_still_counts == 1
    assert sub(ledger, first).state == ACCEPTED
    assert unit_entry(completeness(ledger, config, LATER), unit.code)["state"] == "accepted"


# ---------------------------------------------------------------- who sent it
def test_unidentifiable_return_is_quarantined(ledger, config, inbox):
    sid = submit(ledger, config, write_anonymous(inbox, config), BEFORE)
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == QUARANTINED and o.unit_code is None and o.version is None
    assert o.reason and "无法识别报送单位" in o.reason
    s = sub(ledger, sid)
    assert s.state == QUARANTINED and s.unit_code is None and s.version is None
    st = completeness(ledger, config, BEFORE)
    assert st["quarantined"] == 1 and st["accepted"] == 0 and len(st["missing"]) == 24


def test_return_named_after_its_unit_is_identified(ledger, config, inbox):
    submit(ledger, config, write_anonymous(inbox, config, name="葫芦岛市节能周报表.xlsx"), BEFORE)
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == ACCEPTED and o.unit_code == "211400"


def test_sender_identifies_an_anonymous_return(ledger, config, inbox):
    unit = config.units[5]
    submit(ledger, config, write_anonymous(inbox, config), BEFORE, sender=f"联络员 <{unit.contacts[0].email}>")
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == ACCEPTED and o.unit_code == unit.code


def test_unknown_sender_is_quarantined(ledger, config, inbox):
    submit(ledger, config, write_anonymous(inbox, config), BEFORE, sender="stranger@example.net")
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == QUARANTINED and "stranger@example.net" in o.reason


# ---------------------------------------------------------------- lateness
def test_late_return(ledger, config, inbox):
    on_time, late = config.units[6], config.units[7]
    submit(ledger, config, write_return(inbox, config, on_time), BEFORE)
    sid = submit(ledger, config, write_return(inbox, config, late), AFTER)
    outcomes = {o.unit_code: o for o in process_received(ledger, config, AFTER)}
    assert outcomes[late.code].late is True and outcomes[late.code].state == ACCEPTED
    assert outcomes[on_time.code].late is False
    assert sub(ledger, sid).late is True
    st = completeness(ledger, config, AFTER)
    assert st["late"] == [late.code]


def test_received_exactly_at_the_deadline_is_not_late(ledger, config, inbox):
    submit(ledger, config, write_return(inbox, config, config.units[8]), config.campaign.calendar.deadline_at)
    (o,) = process_received(ledger, config, AFTER)
    assert o.late is False


# ---------------------------------------------------------------- bad input never stops the rest
def test_broken_files_are_rejected_and_others_still_decided(ledger, config, inbox):
    u = config.units
    garbage = inbox / f"{u[9].name}.xlsx"
    inbox.mkdir(parents=True, exist_ok=True)
    garbage.write_bytes(b"this is not a spreadsheet at all")
    bad = submit(ledger, config, garbage, BEFORE)
    two = inbox / "two"
    write_return(two, config, u[10], name="a.xlsx")
    write_return(two, config, u[10], name="b.xlsx")
    both = submit(ledger, config, two, BEFORE)
    other = config.campaign.model_copy(update={"id": "other-campaign"})
    foreign = submit(ledger, config, write_return(inbox / "f", config, u[11], campaign=other), BEFORE)
    good = submit(ledger, config, write_return(inbox, config, u[12]), BEFORE)
    outcomes = {o.submission_id: o for o in process_received(ledger, config, BEFORE)}
    assert outcomes[good].state == ACCEPTED
    assert outcomes[bad].state == REJECTED and outcomes[bad].errors
    assert any(f"{u[9].name}.xlsx" in e for e in outcomes[bad].errors)
    assert outcomes[both].state in (REJECTED, QUARANTINED)
    assert any("只能包含一个报表文件" in e for e in outcomes[both].errors)
    assert outcomes[foreign].state == REJECTED
    assert any("other-campaign" in e for e in outcomes[foreign].errors)


def test_photos_get_captions(ledger, config, inbox):
    unit = config.units[0]
    entry = inbox / "沈阳"
    write_return(entry, config, unit, name="报表.xlsx", photos=[("现场1.jpg", "启动仪式现场")])
    Image.new("RGB", (40, 30), "red").save(entry / "现场1.jpg", "JPEG")
    Image.new("RGB", (40, 30), "blue").save(entry / "签名_活动.png", "PNG")
    (entry / "坏图.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    sid = submit(ledger, config, entry, BEFORE)
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == ACCEPTED
    with ledger.session() as s:
        captions = {f.name: f.caption for f in s.scalars(select(SubmissionFile).where(
            SubmissionFile.submission_id == sid, SubmissionFile.role == "photo"))}
    assert captions == {"现场1.jpg": "启动仪式现场", "签名_活动.png": "签名 活动"}
    assert any("坏图.jpg" in n and "无法识别为图片" in n for n in o.notes)  # refused, the return goes on


def test_an_unexpected_error_on_one_file_stops_nothing_else(tmp_path, ledger, config, monkeypatch):
    """A bug or surprise while reading one return: that one is rejected with a message and
    marked for the coordinators; the others are decided as usual."""
    import tasks.reading.parsing as parsing
    good = submit(ledger, config, write_return(tmp_path / "a", config, config.units[0]), BEFORE)
    bad = submit(ledger, config, write_return(tmp_path / "b", config, config.units[1]), BEFORE)
    real = parsing.extract_return

    def flaky(sheets, form, file_name):
        if config.units[1].name in file_name:
            raise RuntimeError("boom")
        return real(sheets, form, file_name)

    monkeypatch.setattr(parsing, "extract_return", flaky)
    outcomes = {o.submission_id: o for o in process_received(ledger, config, BEFORE)}
    assert outcomes[good].state == ACCEPTED and outcomes[good].failure is None
    assert outcomes[bad].state == REJECTED and "RuntimeError: boom" in outcomes[bad].failure
    assert any("无法处理" in e for e in outcomes[bad].errors)


# ---------------------------------------------------------------- parsing in worker processes
def test_worker_processes_decide_as_this_process_does(ledger, config, inbox, tmp_path, monkeypatch):
    """A batch parsed in forked workers (a large batch) gets the same outcomes as one parsed
    here, in the same order; a file that breaks the parser stays one rejected submission."""
    import tasks.reading.parallel as parallel

    u = config.units
    entries = [write_return(inbox, config, u[i % 6], f"{u[i % 6].name}-{i}.xlsx", posters=100 + i)
               for i in range(12)]
    entries.append(write_return(inbox, config, u[7], posters=-5))
    (inbox / "坏文件.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    entries.append(inbox / "坏文件.xlsx")
    ids = [submit(ledger, config, e, BEFORE) for e in entries]

    def decide(workers: int) -> list:
        from tasks.reading.parsing import Job, JobFile, parse_all
        with ledger.session() as s:
            jobs = [Job(x.id, x.original_name, x.sender, x.source, x.received_at, tuple(
                JobFile(f.id, f.role, f.name, f.size, f.archive_path, f.note) for f in s.scalars(
                    select(SubmissionFile).where(SubmissionFile.submission_id == x.id))))
                for x in s.scalars(select(Submission).where(Submission.id.in_(ids)).order_by(Submission.id))]
        seen = []
        parsed = parse_all(ledger.home, config, jobs, progress=lambda d, t: seen.append((d, t)), workers=workers)
        assert seen[-1] == (len(jobs), len(jobs))
        return [(p.sub.id, p.unit_code, p.errors,
                 {k: v.raw for k, v in p.extracted.values.items()} if p.extracted else None) for p in parsed]

    monkeypatch.setattr(parallel, "PARALLEL_FROM", 2)
    here, forked = decide(1), decide(2)
    assert forked == here
    assert [x[0] for x in forked] == ids
    assert forked[-1][2] and "坏文件.xlsx" in forked[-1][2][0]  # unreadable: one rejected return

    monkeypatch.setenv("BULLETIN_WORKERS", "2")
    outcomes = process_received(ledger, config, BEFORE)
    assert [o.submission_id for o in outcomes] == ids
    assert [o.state for o in outcomes] == [ACCEPTED] * 12 + [REJECTED, QUARANTINED]  # no unit known
    assert values_of(ledger, ids[11])["posters"] == 111.0
    assert [sub(ledger, i).version for i in ids[:7]] == [1, 1, 1, 1, 1, 1, 2]
    assert sub(ledger, ids[0]).state == SUPERSEDED  # the unit's second accepted return replaced it

    from tasks.mail.notices import receipt_messages
    receipts = receipt_messages(config, outcomes)
    assert len(receipts) == 13  # nobody to tell about 坏文件
    assert "张贴宣传画" in receipts[12][0].text and receipts[12][1] == u[7].code


def test_preparser_reads_chunks_while_the_intake_goes_on(ledger, config, inbox, monkeypatch):
    """Chunks added as they are recorded are parsed by forked workers; the decisions made
    with them equal those made by parsing in process_received (one unrecorded submission
    left to it)."""
    from tasks.reading.parsing import Preparser

    u = config.units
    ids = [submit(ledger, config, write_return(inbox, config, u[i % 5], f"{u[i % 5].name}-{i}.xlsx",
                                               posters=200 + i), BEFORE) for i in range(9)]
    with Preparser(ledger, config, workers=2) as pre:
        pre.add(ids[:4])
        pre.add(ids[4:8])  # ids[8] is left for process_received to read itself
        parsed = pre.parsed()
    assert len(parsed) == 8 and all(i in parsed for i in ids[:8]) and ids[8] not in parsed
    outcomes = process_received(ledger, config, BEFORE, preparsed=parsed)
    assert [o.submission_id for o in outcomes] == ids
    assert [o.state for o in outcomes] == [ACCEPTED] * 9
    assert len(parsed) == 0  # each taken (and unpickled) as its chunk was decided
    assert [values_of(ledger, i)["posters"] for i in ids] == [200.0 + i for i in range(9)]


def _die_on_three(x: int) -> int:
    if x == 3:
        os._exit(9)  # a worker killed (e.g. for memory): no exception, the process is gone
    return x * 2


def test_a_dead_worker_is_an_exception_not_a_hang():
    """The flow falls back to reading in its own process when the pool breaks; for that the
    pool must raise, not wait forever."""
    from concurrent.futures.process import BrokenProcessPool

    from tasks.reading.parallel import ForkedPool

    with ForkedPool(_die_on_three, workers=2) as pool:
        pool.submit([1, 2])
        pool.submit([3, 4])
        with pytest.raises(BrokenProcessPool):
            pool.results()
    with ForkedPool(_die_on_three, workers=2) as pool:
        pool.submit([1, 2])
        pool.submit([5])
        assert pool.results() == [2, 4, 10]


def test_a_broken_preparser_never_stops_the_intake(ledger, config, inbox):
    """Its workers gone, the preparser takes no more chunks without raising; parsed() then
    raises, and process_received reads every submission itself."""
    from tasks.reading.parsing import Preparser

    ids = [submit(ledger, config, write_return(inbox, config, u), BEFORE) for u in config.units[:3]]
    with Preparser(ledger, config, workers=2) as pre:
        pre.add(ids[:1])
        pre.pool._pool.shutdown(wait=True)  # as if the pool had broken: submit now raises
        pre.add(ids[1:])
        assert pre.completed() >= 0 and isinstance(pre.broken, RuntimeError)
        with pytest.raises(RuntimeError):
            pre.parsed()
    assert [o.state for o in process_received(ledger, config, BEFORE)] == [ACCEPTED] * 3


def test_two_runs_deciding_at_once_decide_each_submission_once(tmp_path, ledger, config):
    """Run A has written its decisions but not committed when run B starts: B waits for A's
    write lock instead of deciding from what it read, then finds nothing left to decide."""
    import threading

    from sqlalchemy import event as sa_event

    from tasks.core.ledger import Event
    for code in ("210100", "210300", "SZ001"):
        submit(ledger, config, write_return(tmp_path / code, config, config.unit_by_code[code]), BEFORE)
    a_wrote, release = threading.Event(), threading.Event()

    def hold_a(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if threading.current_thread().name == "A" and statement.lstrip().upper().startswith("INSERT INTO EVENTS"):
            a_wrote.set()
            release.wait(20)

    sa_event.listen(ledger.engine, "after_cursor_execute", hold_a)
    results: dict[str, list] = {}
    runs = {name: threading.Thread(name=name, target=lambda n=name: results.__setitem__(
        n, process_received(ledger, config, BEFORE))) for name in ("A", "B")}
    try:
        runs["A"].start()
        assert a_wrote.wait(30)
        runs["B"].start()
        runs["B"].join(1.5)  # B is waiting for A's transaction
        release.set()
        for t in runs.values():
            t.join(60)
    finally:
        sa_event.remove(ledger.engine, "after_cursor_execute", hold_a)
    assert len(results["A"]) == 3 and results["B"] == []
    with ledger.session() as s:
        states = sorted(s.scalars(select(Submission.state)))
        decided = s.scalars(select(Event.subject).where(Event.action.like("submission.%"),
                                                       Event.action != "submission.received")).all()
    assert states == ["accepted"] * 3 and sorted(decided) == ["1", "2", "3"]

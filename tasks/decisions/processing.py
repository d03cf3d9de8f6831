"""From received submissions to decisions: read (:mod:`tasks.reading.parsing`), validate (batched),
decide, record.

One call handles every ``received`` submission of a campaign. A broken file becomes a
rejected submission with a message; it never stops the others.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy import bindparam, select, update

from ..core import faults
from ..core.config import Config
from ..core.ledger import (
    ACCEPTED,
    EVENT_COLUMNS,
    NEEDS_EXPLANATION,
    QUARANTINED,
    RECEIVED,
    REJECTED,
    SUPERSEDED,
    Event,
    Ledger,
    Submission,
    SubmissionFile,
    Value,
    bulk_insert,
    bulk_update,
    db_rows,
    db_value,
    hold,
)
from ..core.rounds import latest_accepted_numbers
from ..reading.parsing import PackedParsed, Parsed, Progress, parse_all, received_jobs
from ..reading.photos import check_photos
from .outcome import Outcome
from .owed import owe, owe_rows
from .validate import ERROR, WARNING, Finding, Previous, ReturnRecord, validate_returns

log = logging.getLogger(__name__)


#: Submissions decided per transaction: a run holds one chunk's parsed returns at a time, and a
#: run killed midway keeps the chunks it finished (the next run decides the rest).
DECIDE_CHUNK = 5000


def process_received(ledger: Ledger, config: Config, now: dt.datetime,
                     progress: Progress | None = None,
                     preparsed: dict[int, Parsed] | PackedParsed | None = None) -> list[Outcome]:
    """Decide every ``received`` submission of the campaign and record the decisions, by
    chunks of :data:`DECIDE_CHUNK` (``preparsed``: submissions a :class:`Preparser` already
    read, by id; each is taken out of it once decided)."""
    jobs = received_jobs(ledger, config.campaign.id)
    preparsed = preparsed if preparsed is not None else {}
    to_parse = sum(j.id not in preparsed for j in jobs)
    parsed_before = 0
    previous = previous_figures(ledger, config) if jobs else None
    outcomes: list[Outcome] = []
    for start in range(0, len(jobs), DECIDE_CHUNK):
        chunk = jobs[start:start + DECIDE_CHUNK]
        fresh = [j for j in chunk if j.id not in preparsed]
        chunk_progress = None if progress is None else (
            lambda done, _total, before=parsed_before: progress(before + done, to_parse))
        by_id = {p.sub.id: p for p in parse_all(ledger.home, config, fresh, chunk_progress)}
        parsed_before += len(fresh)
        parsed = [preparsed.pop(j.id) if j.id in preparsed else by_id.pop(j.id) for j in chunk]
        outcomes += _decide_chunk(ledger, config, now, parsed, previous)
        del parsed, by_id
    return outcomes


def _decide_chunk(ledger: Ledger, config: Config, now: dt.datetime, parsed: list[Parsed],
                  previous: Previous | None) -> list[Outcome]:
    """Validate, decide and record one chunk in one transaction (with its owed receipts)."""
    camp = config.campaign
    for p in parsed:
        if p.failure:
            log.error("submission %s could not be parsed: %s", p.sub.id, p.failure)
    records = [ReturnRecord(p.sub.id, _return_name(p), p.extracted.values, _explanation(p),
                            p.unit_code, p.counts)
               for p in parsed if p.extracted is not None and not p.errors]
    numbers, texts, findings = validate_returns(records, camp.form, previous) if records else (None, None, [])
    by_sub: dict[int, list[Finding]] = {}
    for f in findings:
        by_sub.setdefault(f.submission_id, []).append(f)
    with ledger.session() as s:  # one transaction for the chunk
        hold(s, f"decide/{camp.id}")  # PostgreSQL: two runs' chunks one after the other (versions)
        mine = _claim_received(s, [p.sub.id for p in parsed])  # first: locks, then reads current state
        if len(mine) < len(parsed):
            log.warning("%d submission(s) were decided by another run meanwhile", len(parsed) - len(mine))
            parsed = [p for p in parsed if p.sub.id in mine]
            if numbers is not None:
                numbers, texts = numbers[numbers.index.isin(mine)], texts[texts.index.isin(mine)]
        batch = _Batch(ledger.home, _unit_history(s, camp.id, {p.unit_code for p in parsed} - {None}))
        validated = set(numbers.index) if numbers is not None else set()
        outcomes = [_decide(batch, config, p, by_sub.get(p.sub.id, []), p.sub.id in validated, now)
                    for p in parsed]
        _write_decisions(s, batch, config, parsed, numbers, texts)
        conn = s.connection()
        at = db_value(conn, Event.__table__.c.at, now)
        bulk_insert(conn, Event.__table__, EVENT_COLUMNS, [
            (at, camp.id, "system", f"submission.{o.state}", str(o.submission_id), json.dumps(
                {"unit": o.unit_code, "errors": len(o.errors), "warnings": len(o.warnings)},
                ensure_ascii=False)) for o in outcomes])
        # the receipts and the coordinators' lines these decisions make due, owed until sent
        owe(conn, owe_rows(camp.id, outcomes, {o.submission_id: o.attention() for o in outcomes}, now))
        faults.reached("decide")
    return outcomes


def _write_decisions(s, batch: "_Batch", config: Config, parsed: list[Parsed], numbers, texts) -> None:
    """The batch's decisions as a few executemany statements (Core: no ORM objects per row)."""
    conn = s.connection()
    S, F = Submission.__table__, SubmissionFile.__table__
    if batch.updates:
        columns = tuple(c for c in batch.updates[0] if c != "id")
        bulk_update(conn, S, columns, [(*row, u["id"]) for row, u in
                                       zip(db_rows(conn, S, columns, batch.updates), batch.updates)])
    superseded = [e["id"] for rows in batch.history.values() for e in rows
                  if e.get("old") and e["state"] == SUPERSEDED]
    for i in range(0, len(superseded), 500):
        conn.execute(update(S).where(S.c.id.in_(superseded[i:i + 500])).values(state=SUPERSEDED))
    if batch.file_updates:
        conn.execute(update(F).where(F.c.id == bindparam("b_id")).values(
            role=bindparam("b_role"), caption=bindparam("b_caption")), batch.file_updates)
    if numbers is not None and len(numbers):
        bulk_insert(conn, Value.__table__, VALUE_COLUMNS,
                    _value_rows(config.campaign, parsed, numbers, texts, batch.flagged))


def previous_figures(ledger: Ledger, config: Config) -> Previous | None:
    """Each unit's latest accepted figures in the campaign's ``previous`` campaign, if any."""
    camp = config.campaign
    if not camp.previous:
        return None
    return Previous(camp.previous, latest_accepted_numbers(ledger, camp.previous), camp.change_factor)


def _claim_received(s, ids: list[int]) -> set[int]:
    """The submissions among *ids* still ``received``, locked for this transaction (PostgreSQL:
    a no-op UPDATE takes the rows' locks; SQLite's session holds the write lock already), so two
    runs deciding at once cannot both decide one submission; the second one finds them decided
    and leaves them."""
    S = Submission.__table__.c
    still: set[int] = set()
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        s.execute(update(Submission.__table__).where(S.id.in_(part), S.state == RECEIVED).values(state=S.state))
        still.update(s.scalars(select(S.id).where(S.id.in_(part), S.state == RECEIVED)))
    return still


def _unit_history(s, campaign: str, units: set[str]) -> dict[str, list[dict]]:
    """Every earlier identified submission of these units in the campaign, by unit, oldest first."""
    S = Submission.__table__.c
    history: dict[str, list[dict]] = {}
    codes = sorted(units)
    for i in range(0, len(codes), 500):
        for sid, unit, state, version in s.execute(select(S.id, S.unit_code, S.state, S.version).where(
                S.campaign == campaign, S.version.is_not(None), S.unit_code.in_(codes[i:i + 500])).order_by(S.id)):
            history.setdefault(unit, []).append({"id": sid, "state": state, "version": version, "old": True})
    return history


def _return_name(p: Parsed) -> str:
    return next(f.name for f in p.files if f.role == "return")


def _explanation(p: Parsed) -> str | None:
    cell = p.extracted.explanation if p.extracted else None
    text = str(cell.raw).strip() if cell is not None and cell.raw is not None else ""
    return text or None


@dataclass
class _Batch:
    """What the decisions of one run share and collect for a few bulk statements."""

    home: Path
    history: dict[str, list[dict]]  # identified submissions by unit, oldest first (state, version)
    updates: list[dict] = field(default_factory=list)  # one per decided submission
    file_updates: list[dict] = field(default_factory=list)
    flagged: dict[int, list[str]] = field(default_factory=dict)  # spam-flagged fields by submission


def _decide(batch: _Batch, config: Config, p: Parsed, findings: list[Finding], validated: bool,
            now: dt.datetime) -> Outcome:
    camp = config.campaign
    errors = p.errors + [f.text() for f in findings if f.level == ERROR]
    warnings = [f.text() for f in findings if f.level == WARNING]
    explanation = _explanation(p)
    flagged = p.spam if validated else []
    if p.unit_code is None:
        state = QUARANTINED
    elif errors:
        state = REJECTED
    elif warnings and not explanation:
        state = NEEDS_EXPLANATION
    else:
        state = ACCEPTED
    out = Outcome(p.sub.id, p.sub.original_name, state, p.unit_code, p.sub.sender,
                  errors, warnings, explanation=explanation, reason=None if p.unit_code else p.how,
                  notes=list(p.extracted.notes) if p.extracted else [], failure=p.failure,
                  received_at=p.sub.received_at)
    if flagged:
        out.notes.append(f"“{'”“'.join(labels_of(camp, flagged))}”中含有疑似广告或无关内容，"
                         "暂不编入简讯，待协调人审核（数据照常采用）")
        out.flagged = flagged
        batch.flagged[p.sub.id] = flagged
    late = p.sub.received_at > camp.calendar.deadline_at
    row = {"id": p.sub.id, "state": state, "errors": errors, "warnings": warnings,
           "explanation": explanation, "identified_by": p.how, "decided_at": now,
           "decided_by": "system", "late": late, "unit_code": None, "version": None}
    batch.updates.append(row)
    out.late = late
    updates, notes = check_photos(p.files, p.extracted.photo_captions if p.extracted else {}, batch.home,
                                  camp.max_photo_bytes)
    batch.file_updates += updates
    out.notes += notes
    if p.unit_code is not None:
        earlier = batch.history.setdefault(p.unit_code, [])
        row["unit_code"], row["version"] = p.unit_code, len(earlier) + 1
        out.version = row["version"]
        counted = [e for e in earlier if e["state"] == ACCEPTED]
        if state == ACCEPTED:
            for e in earlier:
                if e["state"] in (ACCEPTED, NEEDS_EXPLANATION):
                    e["state"] = SUPERSEDED
                    out.earlier_replaced = True
        elif counted:
            out.earlier_still_counts = max(e["version"] for e in counted)
        earlier.append(row)
    return out


def labels_of(camp, keys) -> list[str]:
    return [camp.form.field(k).label for k in keys]


VALUE_COLUMNS = ("submission_id", "field", "number", "text", "cell", "flag")


def _value_rows(camp, parsed: list[Parsed], numbers: pd.DataFrame, texts: pd.DataFrame,
                flagged: dict[int, list[str]]) -> list[tuple]:
    """Every validated submission's values as rows (``VALUE_COLUMNS``) for one bulk insert."""
    counts, text_keys = [f.key for f in camp.form.counts], [f.key for f in camp.form.texts]
    cells = {p.sub.id: p.extracted.values for p in parsed if p.extracted is not None}
    num_rows = numbers[counts].to_numpy(dtype="float64").tolist()
    txt_rows = texts[text_keys].to_numpy(dtype=object).tolist() if text_keys else [[]] * len(numbers)
    rows = []
    for sid, nums, txts in zip(numbers.index.tolist(), num_rows, txt_rows):
        found, spam = cells[sid], flagged.get(sid, ())
        for key, v in zip(counts, nums):
            cell = found.get(key)
            rows.append((sid, key, None if v != v else v, None, cell.cell if cell is not None else None, None))
        for key, v in zip(text_keys, txts):
            cell = found.get(key)
            rows.append((sid, key, None, None if v is None or v != v else str(v),
                         cell.cell if cell is not None else None, "spam" if key in spam else None))
    return rows

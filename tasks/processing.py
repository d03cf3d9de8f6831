"""From received submissions to decisions: parse, identify, validate (batched), decide, record.

One call handles every ``received`` submission of a campaign. A broken file becomes a
rejected submission with a message; it never stops the others.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from PIL import Image, UnidentifiedImageError
from sqlalchemy import bindparam, select, update

from .config import Config, Unit
from .attachments import docx_text, is_pdf
from .extract import CellValue, Extracted, extract_return, identify_unit, unit_index
from .ledger import (ACCEPTED, NEEDS_EXPLANATION, QUARANTINED, RECEIVED, REJECTED, SUPERSEDED,
                     Event, Ledger, Submission, SubmissionFile, Value, bulk_insert)
from .mailbox import sender_allowed
from .parallel import ForkedPool, map_forked
from .spam import looks_like_spam
from .readers import ReturnFileError, read_sheets
from .numbers import ParsedCount, parse_count
from .validate import ERROR, WARNING, Finding, Previous, ReturnRecord, cell_text, validate_returns

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What happened to one submission, for its receipt and the run's summary."""

    submission_id: int
    name: str
    state: str
    unit_code: str | None = None
    sender: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    earlier_still_counts: int | None = None  # version of an earlier accepted return that stays
    earlier_replaced: bool = False  # this accepted return superseded an earlier one
    version: int | None = None
    late: bool = False
    explanation: str | None = None
    reason: str | None = None  # quarantine reason
    notes: list[str] = field(default_factory=list)  # told to the submitter, no action needed
    flagged: list[str] = field(default_factory=list)  # narrative fields held back for review
    failure: str | None = None  # an unexpected error while reading it (the coordinators are told)
    received_at: dt.datetime | None = None


@dataclass(frozen=True)
class _File:
    id: int
    role: str
    name: str  # display name only
    size: int
    archive_path: str | None
    note: str | None


@dataclass(frozen=True)
class _Job:
    """One received submission as plain data (parsed in a worker process when there are many)."""

    id: int
    original_name: str
    sender: str | None
    source: str
    received_at: dt.datetime
    files: tuple[_File, ...]


@dataclass
class _Parsed:
    sub: _Job
    files: tuple[_File, ...]
    unit: Unit | None = None
    how: str = ""
    extracted: Extracted | None = None
    errors: list[str] = field(default_factory=list)
    failure: str | None = None
    counts: dict[str, ParsedCount] | None = None  # the count cells, parsed
    spam: list[str] = field(default_factory=list)  # narrative fields that look like spam

    # From a worker process only the findings travel back: the job is the caller's already
    # and the unit is sent as its code (unpickling thousands of them was the bottleneck).
    def __getstate__(self) -> dict:
        state = dict(self.__dict__, sub=None, files=(), unit=None)
        state["unit_code"] = self.unit.code if self.unit else None
        return state

    def __setstate__(self, state: dict) -> None:
        self._unit_code = state.pop("unit_code")
        self.__dict__.update(state)

    def reattach(self, job: _Job, config: Config) -> "_Parsed":
        """After a worker: the job and unit back in place."""
        if self.sub is None:
            self.sub, self.files = job, job.files
            code = self.__dict__.pop("_unit_code", None)
            self.unit = config.unit_by_code[code] if code else None
        return self


def _parse_one(home: Path, config: Config, sub: _Job) -> _Parsed:
    files = sub.files
    p = _Parsed(sub, files)
    returns = [f for f in files if f.role == "return"]
    if not returns:
        p.errors.append(f"《{sub.original_name}》中未找到报表文件（支持 .xlsx、.xls、.ods、.csv）")
    elif len(returns) > 1:
        p.errors.append("一次报送只能包含一个报表文件，收到：" + "、".join(f"《{f.name}》" for f in returns))
    elif returns[0].size > config.campaign.max_return_bytes:
        p.errors.append(f"《{returns[0].name}》有 {returns[0].size / 2**20:.0f} MB，超过报表文件上限 "
                        f"{config.campaign.max_return_bytes // 2**20} MB（已归档），请精简后重新报送")
    else:
        ret = returns[0]
        try:
            sheets = read_sheets(home / ret.archive_path, display_name=ret.name)
            p.extracted = extract_return(sheets, config.campaign.form, ret.name)
        except ReturnFileError as exc:
            p.errors.append(exc.message)
        if p.extracted is not None:
            _take_docx_narrative(home, config, p)
        if p.extracted and p.extracted.campaign_id and p.extracted.campaign_id != config.campaign.id:
            p.errors.append(f"《{ret.name}》是其他报送任务（{p.extracted.campaign_id}）的报表，"
                            f"请使用本次任务下发的报表")
    file_name = returns[0].name if len(returns) == 1 else sub.original_name
    p.unit, p.how = identify_unit(p.extracted, file_name, config.units, sub.sender)
    _check_sender(p)
    for f in files:
        if f.role == "other":
            p.errors.append(f"《{f.name}》不是可接收的文件类型（报表 .xlsx/.xls/.ods/.csv，照片 .jpg/.png，"
                            f"照片压缩包 .zip，盖章扫描件 .pdf，文字材料 .docx）")
        elif f.role == "signed" and not is_pdf(home / f.archive_path):
            p.errors.append(f"《{f.name}》不是有效的 PDF 文件")
    if p.extracted is not None:  # cell by cell work, done here (in a worker) rather than later
        values = p.extracted.values
        p.counts = {f.key: parse_count(values[f.key].raw if f.key in values else None)
                    for f in config.campaign.form.counts}
        p.spam = [f.key for f in config.campaign.form.texts
                  if isinstance(t := cell_text(values.get(f.key)), str) and looks_like_spam(t)]
    return p


def _parse_safely(home: Path, config: Config, sub: _Job) -> _Parsed:
    """Parse one submission; an unexpected error makes it a rejected one, never stops the rest."""
    try:
        return _parse_one(home, config, sub)
    except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the others
        broken = _Parsed(sub, sub.files, errors=[
            f"《{sub.original_name}》无法处理（{type(exc).__name__}），已归档并通知协调人"],
            failure=f"{type(exc).__name__}: {exc}"[:300])
        broken.unit, broken.how = identify_unit(None, sub.original_name, config.units, sub.sender)
        _check_sender(broken)
        return broken


def parse_all(home: Path, config: Config, jobs: list[_Job], progress: Progress | None = None,
              workers: int | None = None) -> list[_Parsed]:
    """Parse every job, in order: in forked worker processes when there are many (reading
    and matching cells is CPU-bound Python), else here."""
    unit_index(config.units)  # built once here, inherited by the workers
    parsed = map_forked(_parse_safely, jobs, (home, config), progress=progress, workers=workers)
    return [p.reattach(job, config) for p, job in zip(parsed, jobs)]


def _take_docx_narrative(home: Path, config: Config, p: _Parsed) -> None:
    """A .docx sent with the return fills the first narrative field when the sheet left it blank."""
    texts = config.campaign.form.texts
    docs = [f for f in p.files if f.role == "narrative"]
    if not texts or not docs:
        return
    key = texts[0].key
    cell = p.extracted.values.get(key)
    if cell is not None and cell.raw not in (None, "") and str(cell.raw).strip():
        return
    text = docx_text(home / docs[0].archive_path)
    if text is None:
        p.errors.append(f"《{docs[0].name}》无法读取（文件损坏或过大），请另存为 .docx 后重新发送")
        return
    p.extracted.values[key] = CellValue(text, docs[0].name, "全文")


def _check_sender(p: _Parsed) -> None:
    """Mail must come from a registered contact or delegate of the unit it reports for."""
    sub = p.sub
    if p.unit is not None and sub.source == "imap" and not sender_allowed(sub.sender, p.unit):
        p.unit, p.how = None, f"发件人 {sub.sender} 不是{p.unit.name}登记的联系人或授权人"


def received_jobs(ledger: Ledger, campaign: str, ids: list[int] | None = None) -> list[_Job]:
    """The campaign's ``received`` submissions (or those of ``ids``) as jobs, oldest first."""
    S, F = Submission.__table__.c, SubmissionFile.__table__.c
    where = [S.campaign == campaign, S.state == RECEIVED] + ([S.id.in_(ids)] if ids is not None else [])
    with ledger.session() as s:
        subs = s.execute(select(S.id, S.original_name, S.sender, S.source, S.received_at)
                         .where(*where).order_by(S.id)).all()
        files: dict[int, list[_File]] = {x.id: [] for x in subs}
        for f in s.execute(select(F.submission_id, F.id, F.role, F.name, F.size, F.archive_path, F.note)
                           .join(Submission.__table__, S.id == F.submission_id)
                           .where(*where).order_by(F.id)):
            files[f.submission_id].append(_File(f.id, f.role, f.name, f.size, f.archive_path, f.note))
    return [_Job(x.id, x.original_name, x.sender, x.source, _aware(x.received_at), tuple(files[x.id]))
            for x in subs]


class Preparser:
    """Parses submissions while the intake goes on: ``add`` the ids of each recorded chunk
    (already archived and in the ledger), get everything back from ``parsed``. Reading is
    CPU work and archiving mostly waits on the disk, so the two overlap. Make it before the
    intake starts its threads (the workers are forked at once)."""

    def __init__(self, ledger: Ledger, config: Config, workers: int | None = None):
        unit_index(config.units)  # built once here, inherited by the workers
        self.ledger, self.config, self.jobs = ledger, config, []
        self.pool = ForkedPool(_parse_safely, (ledger.home, config), workers)

    def add(self, ids: list[int]) -> None:
        jobs = received_jobs(self.ledger, self.config.campaign.id, ids) if ids else []
        self.jobs += jobs
        self.pool.submit(jobs)

    def completed(self) -> int:
        """Submissions parsed so far (in the workers)."""
        return self.pool.completed()

    def parsed(self, progress: Progress | None = None) -> dict[int, "_Parsed"]:
        total = len(self.jobs)
        results = self.pool.results(progress=(lambda done, _: progress(done, total)) if progress else None)
        return {job.id: p.reattach(job, self.config) for p, job in zip(results, self.jobs)}

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "Preparser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def process_received(ledger: Ledger, config: Config, now: dt.datetime,
                     progress: Progress | None = None,
                     preparsed: dict[int, "_Parsed"] | None = None) -> list[Outcome]:
    """Decide every ``received`` submission of the campaign and record the decisions
    (``preparsed``: submissions a :class:`Preparser` already read, by id)."""
    camp = config.campaign
    jobs = received_jobs(ledger, camp.id)
    preparsed = preparsed or {}
    fresh = parse_all(ledger.home, config, [j for j in jobs if j.id not in preparsed], progress)
    by_id = {p.sub.id: p for p in fresh}
    parsed = [preparsed[j.id] if j.id in preparsed else by_id[j.id] for j in jobs]
    for p in parsed:
        if p.failure:
            log.error("submission %s could not be parsed: %s", p.sub.id, p.failure)
    records = [ReturnRecord(p.sub.id, _return_name(p), p.extracted.values, _explanation(p),
                            p.unit.code if p.unit else None, p.counts)
               for p in parsed if p.extracted is not None and not p.errors]
    previous = previous_figures(ledger, config) if records else None
    numbers, texts, findings = validate_returns(records, camp.form, previous) if records else (None, None, [])
    by_sub: dict[int, list[Finding]] = {}
    for f in findings:
        by_sub.setdefault(f.submission_id, []).append(f)
    with ledger.session() as s:  # one transaction for the whole batch
        batch = _Batch(ledger.home, _unit_history(s, camp.id))
        validated = set(numbers.index) if numbers is not None else set()
        outcomes = [_decide(batch, config, p, by_sub.get(p.sub.id, []), p.sub.id in validated, now)
                    for p in parsed]
        _write_decisions(s, batch, config, parsed, numbers, texts)
        conn = s.connection()
        if outcomes:
            conn.execute(Event.__table__.insert(), [dict(
                at=now, campaign=camp.id, actor="system", action=f"submission.{o.state}",
                subject=str(o.submission_id), detail=json.dumps(
                    {"unit": o.unit_code, "errors": len(o.errors), "warnings": len(o.warnings)},
                    ensure_ascii=False)) for o in outcomes])
    return outcomes


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _write_decisions(s, batch: "_Batch", config: Config, parsed: list[_Parsed], numbers, texts) -> None:
    """The batch's decisions as a few executemany statements (Core: no ORM objects per row)."""
    conn = s.connection()
    S, F = Submission.__table__, SubmissionFile.__table__
    if batch.updates:
        conn.execute(update(S).where(S.c.id == bindparam("b_id")).values(
            {c: bindparam(f"b_{c}") for c in batch.updates[0] if c != "id"}),
            [{f"b_{k}": v for k, v in u.items()} for u in batch.updates])
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
    with ledger.session() as s:
        rows = s.execute(select(Submission.unit_code, Submission.id, Value.field, Value.number)
                         .join(Value, Value.submission_id == Submission.id)
                         .where(Submission.campaign == camp.previous, Submission.state == ACCEPTED,
                                Value.number.is_not(None))).all()
    frame = pd.DataFrame(rows, columns=["unit", "sid", "field", "number"])
    latest = frame.sort_values("sid").groupby(["unit", "field"])["number"].last().unstack()
    return Previous(camp.previous, latest.astype("float64"), camp.change_factor)


def _unit_history(s, campaign: str) -> dict[str, list[dict]]:
    """Every earlier identified submission of the campaign, by unit, oldest first."""
    S = Submission.__table__.c
    history: dict[str, list[dict]] = {}
    for sid, unit, state, version in s.execute(select(S.id, S.unit_code, S.state, S.version).where(
            S.campaign == campaign, S.version.is_not(None)).order_by(S.id)):
        history.setdefault(unit, []).append({"id": sid, "state": state, "version": version, "old": True})
    return history


def _return_name(p: _Parsed) -> str:
    return next(f.name for f in p.files if f.role == "return")


def _explanation(p: _Parsed) -> str | None:
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


def _decide(batch: _Batch, config: Config, p: _Parsed, findings: list[Finding], validated: bool,
            now: dt.datetime) -> Outcome:
    camp = config.campaign
    errors = p.errors + [f.text() for f in findings if f.level == ERROR]
    warnings = [f.text() for f in findings if f.level == WARNING]
    explanation = _explanation(p)
    flagged = p.spam if validated else []
    if p.unit is None:
        state = QUARANTINED
    elif errors:
        state = REJECTED
    elif warnings and not explanation:
        state = NEEDS_EXPLANATION
    else:
        state = ACCEPTED
    out = Outcome(p.sub.id, p.sub.original_name, state, p.unit.code if p.unit else None, p.sub.sender,
                  errors, warnings, explanation=explanation, reason=None if p.unit else p.how,
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
    _check_photos(batch, p, out, camp.max_photo_bytes)
    if p.unit is not None:
        earlier = batch.history.setdefault(p.unit.code, [])
        row["unit_code"], row["version"] = p.unit.code, len(earlier) + 1
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


def _check_photos(batch: _Batch, p: _Parsed, out: Outcome, max_photo_bytes: int) -> None:
    """Photos must be real JPEG/PNG images within the size limit; a bad one is refused with a
    note, not the return. Files refused earlier (oversized, odd zip members) are noted too."""
    captions = p.extracted.photo_captions if p.extracted else {}
    for f in p.files:
        if f.role == "refused" and f.note:
            out.notes.append(f"《{f.name}》{f.note}，未采用")
        if f.role != "photo":
            continue
        problem = (f"超过 {max_photo_bytes // 2**20} MB" if f.size > max_photo_bytes
                   else photo_problem(batch.home / f.archive_path))
        if problem:
            batch.file_updates.append({"b_id": f.id, "b_role": "refused", "b_caption": None})
            out.notes.append(f"照片《{f.name}》{problem}，未采用（其余材料照常处理）")
        else:
            base = f.name.rsplit("/", 1)[-1]  # photos from a zip are shown as 照片.zip/现场.jpg
            caption = captions.get(f.name) or captions.get(base) or _caption_from_name(base)
            batch.file_updates.append({"b_id": f.id, "b_role": "photo", "b_caption": caption})


VALUE_COLUMNS = ("submission_id", "field", "number", "text", "cell", "flag")


def _value_rows(camp, parsed: list[_Parsed], numbers: pd.DataFrame, texts: pd.DataFrame,
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


def photo_problem(path) -> str | None:
    """Why a photo cannot be used, or None: it must be a real JPEG or PNG image."""
    try:
        with Image.open(path) as im:
            kind = im.format
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "无法识别为图片（支持 .jpg、.png）"
    if kind not in ("JPEG", "PNG"):
        return f"格式为 {kind}，请使用 .jpg 或 .png"
    return None


def _caption_from_name(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    return stem.replace("_", " ").strip() or name

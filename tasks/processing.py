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
from sqlalchemy import insert, select

from .config import Config, Unit
from .attachments import docx_text, is_pdf
from .extract import CellValue, Extracted, extract_return, identify_unit
from .ledger import (ACCEPTED, NEEDS_EXPLANATION, QUARANTINED, RECEIVED, REJECTED, SUPERSEDED,
                     Event, Ledger, Submission, SubmissionFile, Value)
from .mailbox import sender_allowed
from .spam import looks_like_spam
from .readers import ReturnFileError, read_sheets
from .validate import ERROR, WARNING, Finding, Previous, ReturnRecord, validate_returns

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


@dataclass
class _Parsed:
    sub: Submission
    files: list[SubmissionFile]
    unit: Unit | None = None
    how: str = ""
    extracted: Extracted | None = None
    errors: list[str] = field(default_factory=list)
    failure: str | None = None


def _parse_one(ledger: Ledger, config: Config, sub: Submission, files: list[SubmissionFile]) -> _Parsed:
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
            sheets = read_sheets(ledger.home / ret.archive_path, display_name=ret.name)
            p.extracted = extract_return(sheets, config.campaign.form, ret.name)
        except ReturnFileError as exc:
            p.errors.append(exc.message)
        if p.extracted is not None:
            _take_docx_narrative(ledger, config, p)
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
        elif f.role == "signed" and not is_pdf(ledger.home / f.archive_path):
            p.errors.append(f"《{f.name}》不是有效的 PDF 文件")
    return p


def _take_docx_narrative(ledger: Ledger, config: Config, p: _Parsed) -> None:
    """A .docx sent with the return fills the first narrative field when the sheet left it blank."""
    texts = config.campaign.form.texts
    docs = [f for f in p.files if f.role == "narrative"]
    if not texts or not docs:
        return
    key = texts[0].key
    cell = p.extracted.values.get(key)
    if cell is not None and cell.raw not in (None, "") and str(cell.raw).strip():
        return
    text = docx_text(ledger.home / docs[0].archive_path)
    if text is None:
        p.errors.append(f"《{docs[0].name}》无法读取（文件损坏或过大），请另存为 .docx 后重新发送")
        return
    p.extracted.values[key] = CellValue(text, docs[0].name, "全文")


def _check_sender(p: _Parsed) -> None:
    """Mail must come from a registered contact or delegate of the unit it reports for."""
    sub = p.sub
    if p.unit is not None and sub.source == "imap" and not sender_allowed(sub.sender, p.unit):
        p.unit, p.how = None, f"发件人 {sub.sender} 不是{p.unit.name}登记的联系人或授权人"


def process_received(ledger: Ledger, config: Config, now: dt.datetime,
                     progress: Progress | None = None) -> list[Outcome]:
    """Decide every ``received`` submission of the campaign and record the decisions."""
    camp = config.campaign
    with ledger.session() as s:
        subs = list(s.scalars(select(Submission).where(
            Submission.campaign == camp.id, Submission.state == RECEIVED).order_by(Submission.id)))
        files: dict[int, list[SubmissionFile]] = {x.id: [] for x in subs}
        for f in s.scalars(select(SubmissionFile).where(SubmissionFile.submission_id.in_(list(files)))):
            files[f.submission_id].append(f)
    parsed: list[_Parsed] = []
    for i, sub in enumerate(subs, 1):
        try:
            parsed.append(_parse_one(ledger, config, sub, files[sub.id]))
        except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the others
            log.exception("submission %s could not be parsed", sub.id)
            broken = _Parsed(sub, files[sub.id], errors=[
                f"《{sub.original_name}》无法处理（{type(exc).__name__}），已归档并通知协调人"],
                failure=f"{type(exc).__name__}: {exc}"[:300])
            broken.unit, broken.how = identify_unit(None, sub.original_name, config.units, sub.sender)
            _check_sender(broken)
            parsed.append(broken)
        if progress:
            progress(i, len(subs))
    records = [ReturnRecord(p.sub.id, _return_name(p), p.extracted.values, _explanation(p),
                            p.unit.code if p.unit else None)
               for p in parsed if p.extracted is not None and not p.errors]
    previous = previous_figures(ledger, config) if records else None
    numbers, texts, findings = validate_returns(records, camp.form, previous) if records else (None, None, [])
    by_sub: dict[int, list[Finding]] = {}
    for f in findings:
        by_sub.setdefault(f.submission_id, []).append(f)
    with ledger.session() as s:  # one transaction for the whole batch
        # the batch's rows loaded once and held here (the session keeps unchanged rows only weakly)
        batch = _Batch(
            ledger.home,
            {x.id: x for x in s.scalars(select(Submission).where(
                Submission.campaign == camp.id, Submission.state == RECEIVED))},
            {f.id: f for f in s.scalars(select(SubmissionFile).join(
                Submission, Submission.id == SubmissionFile.submission_id).where(
                Submission.campaign == camp.id, Submission.state == RECEIVED))},
            _unit_history(s, camp.id))
        outcomes = [_decide(batch, config, p, by_sub.get(p.sub.id, []), numbers, texts, now)
                    for p in parsed]
        if batch.value_rows:
            s.execute(insert(Value), batch.value_rows)
        s.add_all(Event(at=now, campaign=camp.id, actor="system", action=f"submission.{o.state}",
                        subject=str(o.submission_id),
                        detail=json.dumps({"unit": o.unit_code, "errors": len(o.errors),
                                           "warnings": len(o.warnings)}, ensure_ascii=False))
                  for o in outcomes)
    return outcomes


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


def _unit_history(s, campaign: str) -> dict[str, list[Submission]]:
    """Every earlier identified submission of the campaign, by unit, oldest first."""
    history: dict[str, list[Submission]] = {}
    for sub in s.scalars(select(Submission).where(Submission.campaign == campaign,
                                                  Submission.version.is_not(None)).order_by(Submission.id)):
        history.setdefault(sub.unit_code, []).append(sub)
    return history


def _return_name(p: _Parsed) -> str:
    return next(f.name for f in p.files if f.role == "return")


def _explanation(p: _Parsed) -> str | None:
    cell = p.extracted.explanation if p.extracted else None
    text = str(cell.raw).strip() if cell is not None and cell.raw is not None else ""
    return text or None


@dataclass
class _Batch:
    """What the decisions of one run share: rows of the open transaction, values to insert."""

    home: Path
    subs: dict[int, Submission]
    files: dict[int, SubmissionFile]
    history: dict[str, list[Submission]]  # earlier identified submissions, by unit
    value_rows: list[dict] = field(default_factory=list)


def _decide(batch: _Batch, config: Config, p: _Parsed, findings: list[Finding], numbers, texts,
            now: dt.datetime) -> Outcome:
    camp = config.campaign
    errors = p.errors + [f.text() for f in findings if f.level == ERROR]
    warnings = [f.text() for f in findings if f.level == WARNING]
    explanation = _explanation(p)
    flagged = _flag_spam(p, texts)
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
    sub = batch.subs[p.sub.id]
    sub.state, sub.errors, sub.warnings = state, errors, warnings
    sub.explanation, sub.identified_by = explanation, p.how
    sub.decided_at, sub.decided_by = now, "system"
    sub.late = p.sub.received_at > camp.calendar.deadline_at
    out.late = sub.late
    _check_photos(batch, p, out, camp.max_photo_bytes)
    if p.unit is not None:
        earlier = batch.history.setdefault(p.unit.code, [])
        sub.unit_code, sub.version = p.unit.code, len(earlier) + 1
        out.version = sub.version
        counted = [e for e in earlier if e.state == ACCEPTED]
        if state == ACCEPTED:
            for e in earlier:
                if e.state in (ACCEPTED, NEEDS_EXPLANATION):
                    e.state = SUPERSEDED
                    out.earlier_replaced = True
        elif counted:
            out.earlier_still_counts = max(e.version for e in counted)
        earlier.append(sub)
    if numbers is not None and p.sub.id in numbers.index:
        batch.value_rows.extend(_value_rows(p.sub.id, p, camp, numbers, texts, flagged))
    return out


def labels_of(camp, keys) -> list[str]:
    return [camp.form.field(k).label for k in keys]


def _flag_spam(p: _Parsed, texts) -> list[str]:
    if texts is None or p.sub.id not in texts.index:
        return []
    row = texts.loc[p.sub.id]
    return [k for k, v in row.items() if isinstance(v, str) and looks_like_spam(v)]


def _check_photos(batch: _Batch, p: _Parsed, out: Outcome, max_photo_bytes: int) -> None:
    """Photos must be real JPEG/PNG images within the size limit; a bad one is refused with a
    note, not the return. Files refused earlier (oversized, odd zip members) are noted too."""
    captions = p.extracted.photo_captions if p.extracted else {}
    for f in p.files:
        if f.role == "refused" and f.note:
            out.notes.append(f"《{f.name}》{f.note}，未采用")
        if f.role != "photo":
            continue
        f_db = batch.files[f.id]
        problem = (f"超过 {max_photo_bytes // 2**20} MB" if f.size > max_photo_bytes
                   else photo_problem(batch.home / f.archive_path))
        if problem:
            f_db.role = "refused"
            out.notes.append(f"照片《{f.name}》{problem}，未采用（其余材料照常处理）")
        else:
            base = f.name.rsplit("/", 1)[-1]  # photos from a zip are shown as 照片.zip/现场.jpg
            f_db.caption = captions.get(f.name) or captions.get(base) or _caption_from_name(base)


def _value_rows(sid: int, p: _Parsed, camp, numbers, texts, flagged: list[str]) -> list[dict]:
    """One submission's values as rows for a bulk insert (one statement for the batch)."""
    cells = p.extracted.values
    nums, txts = numbers.loc[sid], texts.loc[sid]
    rows = [dict(submission_id=sid, field=f.key, number=None if nums[f.key] != nums[f.key] else float(nums[f.key]),
                 text=None, cell=cells[f.key].cell if f.key in cells else None, flag=None)
            for f in camp.form.counts]
    rows += [dict(submission_id=sid, field=f.key, number=None, text=txts[f.key],
                  cell=cells[f.key].cell if f.key in cells else None,
                  flag="spam" if f.key in flagged else None)
             for f in camp.form.texts]
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

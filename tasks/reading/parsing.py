"""Reading received submissions: the plain-data jobs, parsing one (file checks, reading,
fields, unit, counts, spam), and doing many in forked workers — all at once, or chunk by chunk
while the intake is still archiving (:class:`Preparser`).

Nothing here writes to the ledger; :mod:`tasks.decisions.processing` decides and records.
"""

from __future__ import annotations

import datetime as dt
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import select

from ..core.config import Config, Unit
from ..core.directory import sender_allowed, unit_index
from ..core.ledger import RECEIVED, Ledger, Submission, SubmissionFile
from ..intake.attachments import docx_text, is_pdf
from .extract import CellValue, Extracted, cell_text, extract_return, identify_unit
from .numbers import ParsedCount, parse_count
from .parallel import ForkedPool, map_forked
from .readers import ReturnFileError, read_sheets
from .spam import looks_like_spam

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class JobFile:
    id: int
    role: str
    name: str  # display name only
    size: int
    archive_path: str | None
    note: str | None


@dataclass(frozen=True)
class Job:
    """One received submission as plain data (parsed in a worker process when there are many)."""

    id: int
    original_name: str
    sender: str | None
    source: str
    received_at: dt.datetime
    files: tuple[JobFile, ...]


@dataclass
class Parsed:
    sub: Job
    files: tuple[JobFile, ...]
    unit_code: str | None = None  # the unit it is from (a code: Units are made when needed)
    how: str = ""
    extracted: Extracted | None = None
    errors: list[str] = field(default_factory=list)
    failure: str | None = None
    counts: dict[str, ParsedCount] | None = None  # the count cells, parsed
    spam: list[str] = field(default_factory=list)  # narrative fields that look like spam

    # From a worker process only the findings travel back: the job is the caller's already.
    def __getstate__(self) -> dict:
        return dict(self.__dict__, sub=None, files=())

    def reattach(self, job: Job) -> "Parsed":
        """After a worker: the job back in place."""
        if self.sub is None:
            self.sub, self.files = job, job.files
        return self


def _parse_one(home: Path, config: Config, sub: Job) -> Parsed:
    files = sub.files
    p = Parsed(sub, files)
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
    _set_unit(p, *identify_unit(p.extracted, file_name, config.units, sub.sender))
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


def parse_one_safely(home: Path, config: Config, sub: Job) -> Parsed:
    """Parse one submission; an unexpected error makes it a rejected one, never stops the rest."""
    try:
        return _parse_one(home, config, sub)
    except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the others
        broken = Parsed(sub, sub.files, errors=[
            f"《{sub.original_name}》无法处理（{type(exc).__name__}），已归档并通知协调人"],
            failure=f"{type(exc).__name__}: {exc}"[:300])
        _set_unit(broken, *identify_unit(None, sub.original_name, config.units, sub.sender))
        return broken


def parse_all(home: Path, config: Config, jobs: list[Job], progress: Progress | None = None,
              workers: int | None = None) -> list[Parsed]:
    """Parse every job, in order: in forked worker processes when there are many (reading
    and matching cells is CPU-bound Python), else here."""
    unit_index(config.units)  # built once here, inherited by the workers
    parsed = map_forked(parse_one_safely, jobs, (home, config), progress=progress, workers=workers)
    return [p.reattach(job) for p, job in zip(parsed, jobs)]


def _take_docx_narrative(home: Path, config: Config, p: Parsed) -> None:
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


def _set_unit(p: Parsed, unit: Unit | None, how: str) -> None:
    """The unit found, unless mail came from someone who is not its contact or delegate."""
    sub = p.sub
    if unit is not None and sub.source == "imap" and not sender_allowed(sub.sender, unit):
        unit, how = None, f"发件人 {sub.sender} 不是{unit.name}登记的联系人或授权人"
    p.unit_code, p.how = (unit.code if unit else None), how


def received_jobs(ledger: Ledger, campaign: str, ids: list[int] | None = None) -> list[Job]:
    """The campaign's ``received`` submissions (or those of ``ids``) as jobs, oldest first."""
    S, F = Submission.__table__.c, SubmissionFile.__table__.c
    where = [S.campaign == campaign, S.state == RECEIVED] + ([S.id.in_(ids)] if ids is not None else [])
    with ledger.reading() as s:
        subs = s.execute(select(S.id, S.original_name, S.sender, S.source, S.received_at)
                         .where(*where).order_by(S.id)).all()
        files: dict[int, list[JobFile]] = {x.id: [] for x in subs}
        for f in s.execute(select(F.submission_id, F.id, F.role, F.name, F.size, F.archive_path, F.note)
                           .join(Submission.__table__, S.id == F.submission_id)
                           .where(*where).order_by(F.id)):
            files[f.submission_id].append(JobFile(f.id, f.role, f.name, f.size, f.archive_path, f.note))
    return [Job(x.id, x.original_name, x.sender, x.source, x.received_at, tuple(files[x.id]))
            for x in subs]


class PackedParsed:
    """Parsed submissions by id, as the workers sent them: pickled, a chunk per ``bytes``
    (about 1.2 KB a return, against about 5 KB as objects), each chunk unpickled when one of
    its submissions is first taken (:meth:`pop`) and dropped once all of them are."""

    def __init__(self, parts=()):
        self._jobs: list[list[Job]] = []
        self._packed: list[bytes | list | None] = []
        self._where: dict[int, int] = {}  # submission id → part
        self._open: dict[int, dict[int, Parsed]] = {}  # unpickled parts not yet all taken
        for jobs, packed in parts:
            for job in jobs:
                self._where[job.id] = len(self._jobs)
            self._jobs.append(jobs)
            self._packed.append(packed)

    def __contains__(self, sid: object) -> bool:
        return sid in self._where

    def __len__(self) -> int:
        return len(self._where)

    def pop(self, sid: int) -> Parsed:
        i = self._where.pop(sid)
        opened = self._open.get(i)
        if opened is None:
            packed, self._packed[i] = self._packed[i], None
            items = pickle.loads(packed) if isinstance(packed, bytes) else packed
            opened = self._open[i] = {job.id: p.reattach(job) for p, job in zip(items, self._jobs[i])}
        found = opened.pop(sid)
        if not opened:
            del self._open[i]
        return found


class Preparser:
    """Parses submissions while the intake goes on: ``add`` the ids of each recorded chunk
    (already archived and in the ledger), get everything back from ``parsed``. The workers
    read on the other CPUs while this process archives and records. Make it before starting
    any thread of your own (the workers are forked at once)."""

    def __init__(self, ledger: Ledger, config: Config, workers: int | None = None):
        unit_index(config.units)  # built once here, inherited by the workers
        self.ledger, self.config = ledger, config
        self.jobs: list[list[Job]] = []  # as submitted, a list per chunk
        self.broken: Exception | None = None
        self.pool = ForkedPool(parse_one_safely, (ledger.home, config), workers, packed=True)

    def add(self, ids: list[int]) -> None:
        """Queue these submissions; never raises into the intake (a broken pool is reported
        by :meth:`parsed`, and the decisions then read everything themselves)."""
        if self.broken is not None or not ids:
            return
        try:
            jobs = received_jobs(self.ledger, self.config.campaign.id, ids)
            self.pool.submit(jobs)
            self.jobs.append(jobs)
        except Exception as exc:  # noqa: BLE001 - e.g. BrokenProcessPool
            self.broken = exc

    def completed(self) -> int:
        """Submissions parsed so far (in the workers)."""
        return self.pool.completed()

    def parsed(self, progress: Progress | None = None) -> "PackedParsed":
        if self.broken is not None:
            raise self.broken
        return PackedParsed(zip(self.jobs, self.pool.parts(progress)))

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "Preparser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

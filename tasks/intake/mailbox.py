"""Taking returns in from an IMAP mailbox: the attachments and photos of one message are one
submission.

For each message of ``BULLETIN_IMAP_FOLDER``: its raw bytes are archived first (exactly as the
server sent them), then it is classified: an auto-reply (out-of-office, bounce) or a message
without attachments is recorded as an event; otherwise its attachments go through
:func:`tasks.intake.intake.take_in` (``source='imap'``). Only then is it moved to the done folder,
so a crash loses nothing and a re-run duplicates nothing (``take_in`` and the events here
recognise what was already recorded). Names from the message are display text only: the
attachments are written under names we make, in a temp folder under ``work_dir``.

Who may send a unit's return: ``tasks.core.directory.sender_allowed`` (its contacts and delegates).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import imaplib
import logging
import re
import shutil
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.header import decode_header
from email.message import Message
from email.utils import parseaddr
from pathlib import Path

from imap_tools import MailBox, MailBoxStartTls, MailBoxUnencrypted, MailMessage
from imap_tools.errors import ImapToolsError, MailboxCopyError, MailboxMoveError
from imap_tools.utils import decode_value
from sqlalchemy import select

from ..core import faults
from ..core.directory import bare_address
from ..core.ledger import Event, Ledger
from ..core.settings import ImapSettings
from .archive import archive_bytes
from .intake import PHOTO_SUFFIXES, RETURN_SUFFIXES, IncomingFile, TakeInResult, take_in

log = logging.getLogger(__name__)
SOURCE = "imap"
_OUR_SUFFIXES = RETURN_SUFFIXES | PHOTO_SUFFIXES  # anything else is kept as .bin
_TYPE_SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "text/csv": ".csv",
                  "application/vnd.ms-excel": ".xls",
                  "application/vnd.oasis.opendocument.spreadsheet": ".ods",
                  "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx"}
_AUTO_SUBJECT = re.compile(
    r"^\W*(auto:|automatic reply|auto.?reply|自动回复|自动答复|out of office|退信|系统退信|"
    r"undeliverable|undelivered mail|delivery status notification|delivery failure|"
    r"mail delivery failed|returned mail)", re.IGNORECASE)
_DAEMONS = {"mailer-daemon", "postmaster"}
_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_UID = re.compile(rb"UID (\d+)")


#: What a mailbox connection that broke mid-run raises (worth another try: what was taken in is
#: recognised and skipped).
CONNECTION_ERRORS = (OSError, imaplib.IMAP4.error, ImapToolsError)


class MailboxError(Exception):
    """The mailbox could not be reached or logged into (host, port and user named; never the
    password)."""


@dataclass(frozen=True)
class MailboxResult:
    taken: list[TakeInResult]  # one per message with attachments
    auto_replies: int  # recorded ('mail.auto_reply'), moved, never answered
    skipped: int  # no attachment and no text: recorded ('mail.no_attachment'), moved, no receipt
    failed: int = 0  # could not be handled: recorded ('mail.failed'), left in place for next run
    replies: list["Reply"] = field(default_factory=list)  # text without attachments: explanations
    busy: bool = False  # another run was reading this folder: nothing done here
    signoffs: int = 0  # replies to approval requests, each decided or refused in the ledger


#: Reads a message as a reply to an approval request and records what it decides (in the
#: ledger, before the message is moved); False when the message is no such reply.
#: Called as ``signoff(message, sender, subject, text, sha256)``; see :mod:`tasks.bulletin.signoff`.
SignoffHook = Callable[[Message, str, str, str, str], bool]


@dataclass(frozen=True)
class Reply:
    """A message with text and no attachment: a unit's explanation of the warnings on its return."""

    sender: str
    subject: str
    text: str
    sha256: str


_QUOTE_START = re.compile(r"^\s*(>|-{3,}\s*(原始邮件|Original Message)|在.{0,160}写道[:：]|On .{0,80}wrote:|发件人[:：]|From:)")


def reply_text(body: str, limit: int = 2000) -> str:
    """The new text of a reply: lines above the quoted original, trimmed and bounded."""
    lines = []
    for line in body.replace("\r\n", "\n").split("\n"):
        if _QUOTE_START.match(line):
            break
        lines.append(line.rstrip())
    return "\n".join(lines).strip()[:limit]


class _RawMessage(MailMessage):
    """A fetched message that keeps the bytes exactly as the server sent them."""

    def __init__(self, fetch_data: list) -> None:
        super().__init__(fetch_data)
        self.raw: bytes = self._get_message_data_parts(fetch_data)[0]


def _header_text(value: object) -> str:
    if value is None:
        return ""
    try:
        return "".join(decode_value(*part) for part in decode_header(str(value))).strip()
    except Exception:  # noqa: BLE001 - a broken header is still text to look at
        return str(value).strip()


def is_auto_reply(msg: Message | MailMessage) -> bool:
    """Out-of-office replies, bounces and other machine-sent mail (RFC 3834 and usual habits)."""
    m: Message = getattr(msg, "obj", msg)
    auto = str(m.get("Auto-Submitted", "")).split(";")[0].strip().lower()
    if auto and auto != "no":
        return True
    if m.get("X-Autoreply") or m.get("X-Autorespond") or m.get("X-Failed-Recipients"):
        return True
    if str(m.get("Precedence", "")).strip().lower() in {"bulk", "junk", "auto_reply"}:
        return True
    if m.get_content_type() == "multipart/report":  # DSNs, bounces, read receipts
        return True
    if str(m.get("Return-Path", "")).strip() == "<>":
        return True
    local = parseaddr(_header_text(m.get("From")))[1].split("@")[0].lower()
    return local in _DAEMONS or bool(_AUTO_SUBJECT.match(_header_text(m.get("Subject"))))


def _connect(settings: ImapSettings):
    port = settings.port or (993 if settings.security == "ssl" else 143)
    where = f"{settings.user or '(无用户名)'}@{settings.host}:{port}（{settings.security}）"
    if not settings.host:
        raise MailboxError("未设置收件邮箱服务器 BULLETIN_IMAP_HOST")
    password = settings.password.get_secret_value() if settings.password else ""
    box = None
    try:
        if settings.security == "none":
            box = MailBoxUnencrypted(settings.host, port=port, timeout=60)
        else:  # imaplib's default TLS context checks no certificate: always pass a verifying one
            cls = MailBox if settings.security == "ssl" else MailBoxStartTls
            box = cls(settings.host, port=port, timeout=60, ssl_context=ssl.create_default_context())
        box.email_message_class = _RawMessage
        box.login(settings.user or "", password, initial_folder=None)
        _refresh_capabilities(box)
        if not box.folder.exists(settings.done_folder):
            box.folder.create(settings.done_folder)
        box.folder.set(settings.folder)
        return box
    except (OSError, imaplib.IMAP4.error, ImapToolsError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if password:
            reason = reason.replace(password, "***")
        if box is not None:
            with contextlib.suppress(Exception):  # already failing: the first error is reported
                box.client.shutdown()
        raise MailboxError(f"无法连接或登录收件邮箱 {where}：{reason}") from None


def open_mailbox(settings: ImapSettings):
    """A logged-in mailbox on ``settings.folder`` (imap_tools; use it as a context manager);
    raises :class:`MailboxError` saying where and why, never with the password."""
    return _connect(settings)


def _refresh_capabilities(box) -> None:
    """Read the capabilities again after login: imaplib keeps those announced before it, which
    on dovecot lack MOVE, and imap_tools then moves a message by COPY + delete + EXPUNGE, which a
    crash can leave half done (the message in both folders). With MOVE (RFC 6851) it is atomic."""
    typ, data = box.client.capability()
    if typ == "OK" and data and data[-1]:
        box.client.capabilities = tuple(data[-1].decode("ascii", "replace").upper().split())


def _arrivals(box) -> dict[str, dt.datetime]:
    """INTERNALDATE (when the server received each message), by UID."""
    typ, data = box.client.uid("FETCH", "1:*", "(INTERNALDATE)")
    found = {}
    for item in data if typ == "OK" else []:
        line = item[0] if isinstance(item, tuple) else item
        uid, date = _UID.search(line or b""), _INTERNALDATE.search(line or b"")
        if uid and date:
            with contextlib.suppress(ValueError):
                found[uid.group(1).decode()] = dt.datetime.strptime(
                    date.group(1).decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    return found


def _record_once(ledger: Ledger, campaign: str, action: str, actor: str, sha: str,
                 detail: dict, now: dt.datetime) -> None:
    """An event keyed by the raw message's sha256, recorded once however often it is seen."""
    with ledger.session() as s:
        if s.scalars(select(Event.id).where(Event.campaign == campaign, Event.action == action,
                                            Event.subject == sha)).first() is not None:
            return
    ledger.record(campaign, action, actor=actor, subject=sha, detail=detail, at=now)


def _files(msg: _RawMessage, folder: Path, max_file_bytes: int) -> list[IncomingFile]:
    """Write the attachments under names we make; the sender's names are display text only."""
    files = []
    parts = [a for a in msg.attachments if a.content_type != "message/rfc822"]  # its parts follow
    for i, att in enumerate(parts, 1):
        display = att.filename.strip()
        m = re.search(r"\.[A-Za-z0-9]{1,5}$", display)
        suffix = m.group(0).lower() if m else ""
        if not display:
            suffix = _TYPE_SUFFIXES.get(att.content_type, "")
            display = f"附件{i}{suffix}"
        path = folder / f"{i:03d}{suffix if suffix in _OUR_SUFFIXES else '.bin'}"
        payload = att.payload or b""
        if len(payload) <= max_file_bytes:  # take_in refuses larger ones without reading them
            path.write_bytes(payload)
        files.append(IncomingFile(name=display, path=path, size=len(payload)))
    return files


def message_text(msg: MailMessage) -> str:
    """The new text of a message: its plain text, else its HTML without tags; quotes removed."""
    body = msg.text or html.unescape(re.sub(r"(?s)<(script|style).*?</\1>|<[^>]+>", " ", msg.html or ""))
    return reply_text(body)


def _take_message(ledger: Ledger, campaign: str, msg: _RawMessage, *, now: dt.datetime,
                  max_file_bytes: int, work_dir: Path, signoff: SignoffHook | None = None) -> TakeInResult | str:
    sha, _ = archive_bytes(ledger.home, msg.raw)
    faults.reached("archive")
    sender = bare_address(msg.from_) or None
    subject = " ".join(msg.subject.split())
    note = {"subject": subject, "sha256": sha, "message_id": _header_text(msg.obj.get("Message-ID"))}
    if is_auto_reply(msg):
        _record_once(ledger, campaign, "mail.auto_reply", sender or SOURCE, sha, note, now)
        return "auto_reply"
    if signoff is not None and signoff(msg.obj, sender or "", subject, message_text(msg), sha):
        return "signoff"
    if not [a for a in msg.attachments if a.content_type != "message/rfc822"]:
        text = reply_text(msg.text or "")
        _record_once(ledger, campaign, "mail.no_attachment", sender or SOURCE, sha, note | {"text": text}, now)
        return Reply(sender, subject, text, sha) if sender and text else "skipped"
    folder = Path(tempfile.mkdtemp(prefix="imap-", dir=work_dir))
    try:
        files = _files(msg, folder, max_file_bytes)
        result = take_in(ledger, campaign, subject or "(无主题)", files, source=SOURCE,
                         sender=sender, now=now, max_file_bytes=max_file_bytes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _record_once(ledger, campaign, "mail.received", sender or SOURCE, sha,
                 note | {"submission": result.submission_id, "outcome": result.outcome}, now)
    return result


def collect_mailbox(ledger: Ledger, campaign: str, settings: ImapSettings, *, now: dt.datetime,
                    max_file_bytes: int, work_dir: Path, signoff: SignoffHook | None = None) -> MailboxResult:
    """Take in every message of ``settings.folder``; move each to ``settings.done_folder``.

    A submission's ``received_at`` is when the server received the message (INTERNALDATE),
    but never later than ``now``. Messages without attachments get no receipt.
    Raises :class:`MailboxError` when the server cannot be reached or logged into. Another run
    reading the same folder meanwhile makes this one skip it (``busy``).
    """
    with ledger.exclusive(f"mailbox/{settings.host}/{settings.user}/{settings.folder}") as mine:
        if not mine:  # two runs on one folder would take in and move the same messages
            return MailboxResult([], 0, 0, busy=True)
        return _collect(ledger, campaign, settings, now=now, max_file_bytes=max_file_bytes, work_dir=work_dir,
                        signoff=signoff)


class _Tally:
    """What a mailbox run found, message by message."""

    def __init__(self) -> None:
        self.taken: list[TakeInResult] = []
        self.replies: list[Reply] = []
        self.counts = {"auto_reply": 0, "skipped": 0, "failed": 0, "signoff": 0}

    def add(self, out: TakeInResult | Reply | str) -> None:
        if isinstance(out, str):
            self.counts[out] += 1
        elif isinstance(out, Reply):
            self.replies.append(out)
        else:
            self.taken.append(out)

    def result(self) -> MailboxResult:
        c = self.counts
        return MailboxResult(self.taken, c["auto_reply"], c["skipped"], c["failed"], self.replies,
                             signoffs=c["signoff"])


def _take_or_record_failure(ledger: Ledger, campaign: str, msg: _RawMessage, tally: _Tally, **kw) -> bool:
    """Take one message in; a failure is recorded and counted (the message stays for the next
    run). True when it was taken in and may be moved."""
    try:
        tally.add(_take_message(ledger, campaign, msg, **kw))
        return True
    except Exception as exc:  # noqa: BLE001 - one bad message must not stop the others
        log.exception("message %s could not be taken in", msg.uid or "(file)")
        tally.counts["failed"] += 1
        ledger.record(campaign, "mail.failed", actor=bare_address(msg.from_) or SOURCE,
                      detail={"subject": msg.subject, "error": f"{type(exc).__name__}: {exc}"}, at=kw["now"])
        return False


def _collect(ledger: Ledger, campaign: str, settings: ImapSettings, *, now: dt.datetime,
             max_file_bytes: int, work_dir: Path, signoff: SignoffHook | None) -> MailboxResult:
    work_dir.mkdir(parents=True, exist_ok=True)
    tally = _Tally()
    box = _connect(settings)
    with box:
        uids = box.uids()
        arrived = _arrivals(box) if uids else {}
        log.info("邮箱 %s：%d 封待处理", settings.folder, len(uids))
        for msg in box.fetch(uid_list=uids, mark_seen=False, bulk=20):
            if not msg.raw:  # expunged meanwhile (moved by another client): nothing to take in
                log.info("message %s is gone from %s", msg.uid, settings.folder)
                continue
            at = min(now, arrived.get(msg.uid, now))
            if not _take_or_record_failure(ledger, campaign, msg, tally, now=at, max_file_bytes=max_file_bytes,
                                           work_dir=work_dir, signoff=signoff):
                continue  # left in the folder: tried again next run
            faults.reached("move")
            try:
                box.move(msg.uid, settings.done_folder)
            except (MailboxMoveError, MailboxCopyError) as exc:  # moved by another client meanwhile
                if "EXPUNGEISSUED" not in str(exc) and "no longer exist" not in str(exc):
                    raise
                log.info("message %s was moved by another client meanwhile", msg.uid)
    return tally.result()


def collect_maildir(ledger: Ledger, campaign: str, folder: Path, *, now: dt.datetime, max_file_bytes: int,
                    work_dir: Path, signoff: SignoffHook | None = None) -> MailboxResult:
    """Take in every message of a local Maildir (``BULLETIN_MAILDIR``: ``new/`` and ``cur/``, as a
    mail server delivers them) exactly like an IMAP folder, then move each file into the
    Maildir's ``.Processed`` folder. A message's arrival is its file's modification time."""
    with ledger.exclusive(f"maildir/{folder}") as mine:
        if not mine:
            return MailboxResult([], 0, 0, busy=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        done = folder / ".Processed"
        for sub in ("new", "cur", "tmp"):
            (done / sub).mkdir(parents=True, exist_ok=True)
        tally = _Tally()
        files = sorted(p for sub in ("new", "cur") if (folder / sub).is_dir()
                       for p in (folder / sub).iterdir() if p.is_file() and not p.name.startswith("."))
        log.info("Maildir %s：%d 封待处理", folder, len(files))
        for path in files:
            try:
                raw, arrived = path.read_bytes(), dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
            except FileNotFoundError:  # moved by another reader meanwhile
                continue
            msg = _RawMessage([(b"", raw)])
            if _take_or_record_failure(ledger, campaign, msg, tally, now=min(now, arrived),
                                       max_file_bytes=max_file_bytes, work_dir=work_dir, signoff=signoff):
                faults.reached("move")
                path.replace(done / "cur" / path.name)
        return tally.result()

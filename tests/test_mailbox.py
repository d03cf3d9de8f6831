"""The mailbox half of collect, against a real dovecot on 127.0.0.1 (tests/imap_server.py)."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest
from imap_server import imap_server  # noqa: F401 - the fixture
from imap_tools import MailBoxUnencrypted
from sqlalchemy import select

from tasks.core.config import load_config
from tasks.core.directory import sender_allowed, sender_unit
from tasks.core.ledger import Event, Submission, SubmissionFile
from tasks.core.settings import ImapSettings
from tasks.intake.archive import archive_relpath
from tasks.intake.mailbox import MailboxError, collect_mailbox, is_auto_reply
from tasks.mail.workbook import build_request_workbook

CFG = load_config(Path("/work/main/config"), "energy-week-2023")
UNIT = CFG.unit_by_code["210100"]  # 沈阳市
CONTACT = UNIT.contacts[0].email  # shenyang-jieneng@example.org
CAMPAIGN = CFG.campaign.id
DEADLINE = CFG.campaign.calendar.deadline_at
NOW = DEADLINE + dt.timedelta(days=1)
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 3
XLSX_TYPE = ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet")
_n = itertools.count(1)


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture
def settings(imap_server) -> ImapSettings:  # noqa: F811
    """Folders of this test's own on the module's server."""
    n = next(_n)
    s = ImapSettings(host=imap_server.host, port=imap_server.port, user=imap_server.user,
                     password=imap_server.password, security="none", folder=f"In{n}",
                     done_folder=f"Done{n}")
    with _box(s) as box:
        box.folder.create(s.folder)
    return s


@pytest.fixture
def work(tmp_path) -> Path:
    return tmp_path / "work"


def _box(s: ImapSettings) -> MailBoxUnencrypted:
    return MailBoxUnencrypted(s.host, port=s.port).login(s.user, s.password.get_secret_value(),
                                                         initial_folder=None)


def put(s: ImapSettings, *messages: bytes, at: dt.datetime | None = None) -> None:
    with _box(s) as box:
        for m in messages:
            box.append(m, s.folder, dt=at, flag_set=())


def messages_in(s: ImapSettings, folder: str):
    with _box(s) as box:
        box.folder.set(folder)
        return list(box.fetch(mark_seen=False))


def raw_messages(s: ImapSettings, folder: str) -> list[bytes]:
    with _box(s) as box:
        box.folder.set(folder)
        typ, data = box.client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        return [item[1] for item in data if isinstance(item, tuple)]


def collect(ledger, s, work, **kw):
    return collect_mailbox(ledger, CAMPAIGN, s, now=kw.pop("now", NOW),
                           max_file_bytes=kw.pop("max_file_bytes", 100 * 1024 * 1024),
                           work_dir=work, **kw)


def mail(sender: str, subject: str, attachments=(), headers=(), body="请查收附件。") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "returns@example.com", subject
    msg["Date"], msg["Message-ID"] = formatdate(localtime=True), make_msgid(domain="example.org")
    for k, v in headers:
        msg[k] = v
    msg.set_content(body)
    for name, data, (maintype, subtype) in attachments:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def workbook() -> bytes:
    return build_request_workbook(CFG.campaign, UNIT)


def events(ledger, action):
    with ledger.session() as s:
        return list(s.scalars(select(Event).where(Event.campaign == CAMPAIGN, Event.action == action)))


def submissions(ledger):
    with ledger.session() as s:
        subs = list(s.scalars(select(Submission).order_by(Submission.id)))
        files = {x.id: list(s.scalars(select(SubmissionFile).where(
            SubmissionFile.submission_id == x.id).order_by(SubmissionFile.id))) for x in subs}
    return subs, files


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


# ---------------------------------------------------------------- a return by mail
def test_message_with_workbook_and_photos_is_one_submission(ledger, home, settings, work):
    xlsx = workbook()
    arrived = DEADLINE - dt.timedelta(hours=1)  # before the deadline, collected after it
    put(settings, mail(f"张伟 <{CONTACT.upper()}>", "沈阳市节能宣传周报表",
                       [("沈阳市报表.xlsx", xlsx, XLSX_TYPE), ("现场1.jpg", JPEG, ("image", "jpeg")),
                        ("现场2.png", PNG, ("image", "png"))]), at=arrived)

    result = collect(ledger, settings, work)

    assert (result.auto_replies, result.skipped, result.failed) == (0, 0, 0)
    assert [r.outcome for r in result.taken] == ["received"]
    subs, files = submissions(ledger)
    assert len(subs) == 1
    sub = subs[0]
    assert (sub.source, sub.sender, sub.original_name) == ("imap", CONTACT, "沈阳市节能宣传周报表")
    assert sub.received_at == arrived  # INTERNALDATE, not the moment of collection
    got = {f.name: f for f in files[sub.id]}
    assert {n: f.role for n, f in got.items()} == {"沈阳市报表.xlsx": "return", "现场1.jpg": "photo",
                                                   "现场2.png": "photo"}
    for name, data in (("沈阳市报表.xlsx", xlsx), ("现场1.jpg", JPEG), ("现场2.png", PNG)):
        assert (home / got[name].archive_path).read_bytes() == data
    # the raw message is archived, and its sha256 recorded
    [ev] = events(ledger, "mail.received")
    detail = json.loads(ev.detail)
    assert ev.subject == detail["sha256"] and detail["submission"] == sub.id
    raw = (home / archive_relpath(detail["sha256"])).read_bytes()
    assert b"Subject:" in raw and b"\r\n" in raw  # the bytes as the server sent them
    # moved, not marked seen, nothing left behind in the work folder
    assert messages_in(settings, settings.folder) == []
    [moved] = messages_in(settings, settings.done_folder)
    assert moved.subject == "沈阳市节能宣传周报表" and "\\Seen" not in moved.flags
    assert raw_messages(settings, settings.done_folder) == [raw]
    assert all_files(work) == set()


def test_received_at_is_never_later_than_now(ledger, settings, work):
    put(settings, mail(CONTACT, "报表", [("a.csv", b"x,1\n", ("text", "csv"))]))  # arrives today
    collect(ledger, settings, work)
    assert submissions(ledger)[0][0].received_at == NOW  # --now in the past wins


def test_an_address_too_long_to_be_real_is_no_sender(ledger, settings, work):
    """A From address longer than any real one (the ledger keeps 320 characters) is taken in as
    from an unknown sender (quarantined later, never answered); the next message goes on."""
    long_from = "x" * 400 + "@example.org"
    put(settings, mail(long_from, "报表", [("a.csv", b"x,1\n", ("text", "csv"))]))
    put(settings, mail(CONTACT, "报表二", [("b.csv", b"x,2\n", ("text", "csv"))]))
    result = collect(ledger, settings, work)
    assert [r.outcome for r in result.taken] == ["received", "received"] and result.failed == 0
    subs, _ = submissions(ledger)
    assert sorted((x.original_name, x.sender) for x in subs) == [("报表", None), ("报表二", CONTACT)]
    assert messages_in(settings, settings.folder) == []


# ---------------------------------------------------------------- auto-replies and bounces
def test_out_of_office_is_recorded_moved_and_not_taken(ledger, settings, work):
    put(settings, mail(CONTACT, "自动回复：关于报送节能宣传周材料的通知",
                       [("logo.png", PNG, ("image", "png"))],
                       headers=[("Auto-Submitted", "auto-replied")], body="本人休假中。"))
    result = collect(ledger, settings, work)
    assert (result.taken, result.auto_replies, result.skipped) == ([], 1, 0)
    assert submissions(ledger)[0] == []
    [ev] = events(ledger, "mail.auto_reply")
    detail = json.loads(ev.detail)
    assert ev.actor == CONTACT and detail["subject"].startswith("自动回复") and len(detail["sha256"]) == 64
    assert messages_in(settings, settings.folder) == []
    assert len(messages_in(settings, settings.done_folder)) == 1


def _bounce() -> bytes:
    original = EmailMessage()
    original["From"], original["To"], original["Subject"] = "energy-office@example.com", CONTACT, "报送通知"
    original.set_content("请填写附件。")
    original.add_attachment(workbook(), maintype=XLSX_TYPE[0], subtype=XLSX_TYPE[1], filename="报表.xlsx")
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "Mail Gateway <gateway@example.net>"  # neither a daemon name nor a bounce subject:
    report["To"], report["Subject"] = "energy-office@example.com", "报送通知"  # the type alone tells
    report.attach(MIMEText("无法投递。", "plain", "utf-8"))
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; example.net"
    per_recipient["Final-Recipient"], per_recipient["Action"] = "rfc822; x@example.org", "failed"
    per_recipient["Status"] = "5.1.1"
    status = MIMEBase("message", "delivery-status")
    status.set_payload([per_message, per_recipient])
    report.attach(status)
    wrapped = MIMEBase("message", "rfc822")
    wrapped.set_payload([original])
    report.attach(wrapped)
    return report.as_bytes()


def test_bounce_is_an_auto_reply(ledger, settings, work):
    put(settings, _bounce())
    result = collect(ledger, settings, work)
    assert (result.taken, result.auto_replies) == ([], 1)
    assert submissions(ledger)[0] == [] and len(events(ledger, "mail.auto_reply")) == 1
    assert len(messages_in(settings, settings.done_folder)) == 1


def test_message_without_attachment_is_skipped_and_moved(ledger, settings, work):
    put(settings, mail(CONTACT, "请问报表何时截止？", body="请问截止时间？"))
    put(settings, mail(CONTACT, "空邮件", body="   "))
    result = collect(ledger, settings, work)
    # text without attachments is kept as a possible explanation (the flow decides), empty mail is skipped
    assert (result.taken, result.auto_replies, result.skipped) == ([], 0, 1)
    assert [(r.sender, r.text) for r in result.replies] == [(CONTACT.lower(), "请问截止时间？")]
    evs = events(ledger, "mail.no_attachment")
    assert sorted(json.loads(ev.detail)["subject"] for ev in evs) == sorted(["请问报表何时截止？", "空邮件"])
    assert messages_in(settings, settings.folder) == []
    assert len(messages_in(settings, settings.done_folder)) == 2


@pytest.mark.parametrize("headers, sender, subject", [
    ([("Auto-Submitted", "auto-replied; vacation")], CONTACT, "Re: 报表"),
    ([("Auto-Submitted", "auto-generated")], CONTACT, "报表"),
    ([("X-Autoreply", "yes")], CONTACT, "报表"),
    ([("X-Autorespond", "1")], CONTACT, "报表"),
    ([("Precedence", "bulk")], CONTACT, "报表"),
    ([("Precedence", "auto_reply")], CONTACT, "报表"),
    ([], "MAILER-DAEMON@mx.example.net", "报表"),
    ([], "Postmaster <postmaster@example.net>", "报表"),
    ([], CONTACT, "Auto: 报表"),
    ([], CONTACT, "Automatic reply: 报表"),
    ([], CONTACT, "【自动回复】报表"),
    ([], CONTACT, "Out of Office: 报表"),
    ([], CONTACT, "系统退信"),
    ([], CONTACT, "Undeliverable: 报表"),
    ([], CONTACT, "Delivery Status Notification (Failure)"),
])
def test_is_auto_reply(headers, sender, subject):
    from email import message_from_bytes
    assert is_auto_reply(message_from_bytes(mail(sender, subject, headers=headers)))


@pytest.mark.parametrize("headers, subject", [
    ([("Auto-Submitted", "no")], "报表"), ([("Precedence", "list")], "报表"),
    ([], "Re: 自动回复的问题"), ([], "沈阳市节能宣传周报表"), ([], "Fwd: 报表"),
])
def test_is_not_auto_reply(headers, subject):
    from email import message_from_bytes
    assert not is_auto_reply(message_from_bytes(mail(CONTACT, subject, headers=headers)))


# ---------------------------------------------------------------- crash and re-run
def test_rerun_after_a_crash_before_the_move_duplicates_nothing(ledger, home, settings, work,
                                                                monkeypatch):
    put(settings, mail(CONTACT, "沈阳市报表", [("沈阳市报表.xlsx", workbook(), XLSX_TYPE),
                                               ("现场.jpg", JPEG, ("image", "jpeg"))]),
        mail(CONTACT, "Out of Office", headers=[("Auto-Submitted", "auto-replied")]),
        mail(CONTACT, "没有附件"))
    with monkeypatch.context() as m:  # archived and recorded, then "crashed": nothing moved
        m.setattr(MailBoxUnencrypted, "move", lambda self, *a, **k: None)
        first = collect(ledger, settings, work)
    assert [r.outcome for r in first.taken] == ["received"]
    assert len(messages_in(settings, settings.folder)) == 3
    archived = all_files(home / "archive")

    again = collect(ledger, settings, work)

    assert [(r.submission_id, r.outcome) for r in again.taken] == [(first.taken[0].submission_id, "duplicate")]
    subs, files = submissions(ledger)
    assert len(subs) == 1 and len(files[subs[0].id]) == 2
    for action in ("mail.received", "mail.auto_reply", "mail.no_attachment"):
        assert len(events(ledger, action)) == 1, action
    assert len(events(ledger, "submission.received")) == 1
    assert all_files(home / "archive") == archived
    assert messages_in(settings, settings.folder) == []
    assert len(messages_in(settings, settings.done_folder)) == 3


def test_a_crash_in_the_move_leaves_the_message_for_the_next_run(ledger, settings, work, monkeypatch):
    put(settings, mail(CONTACT, "沈阳市报表", [("沈阳市报表.xlsx", workbook(), XLSX_TYPE)]))

    def crash(self, *a, **k):
        raise ConnectionResetError("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(MailBoxUnencrypted, "move", crash)
        with pytest.raises(ConnectionResetError):
            collect(ledger, settings, work)
    assert len(submissions(ledger)[0]) == 1
    assert collect(ledger, settings, work).taken[0].outcome == "duplicate"
    assert len(submissions(ledger)[0]) == 1 and messages_in(settings, settings.folder) == []


# ---------------------------------------------------------------- names from outside
def test_attachment_names_are_never_paths(ledger, home, tmp_path, settings, work):
    before = all_files(tmp_path)
    put(settings, mail(CONTACT, "报表", [("../../etc/passwd.xlsx", workbook(), XLSX_TYPE),
                                         ("/abs/path.csv", b"a,1\n", ("text", "csv")),
                                         ("..\\..\\evil.png", PNG, ("image", "png"))]))
    collect(ledger, settings, work)
    subs, files = submissions(ledger)
    names = {f.name: f.role for f in files[subs[0].id]}
    assert names == {"../../etc/passwd.xlsx": "return", "/abs/path.csv": "return",
                     "..\\..\\evil.png": "photo"}
    new = all_files(tmp_path) - before
    assert new and all(p.is_relative_to(home / "archive") or p.parent == home for p in new), new
    assert all_files(work) == set()
    assert not (tmp_path / "etc").exists() and not Path("/abs").exists()
    assert not Path("/etc/passwd.xlsx").exists()


def test_chinese_subjects_and_names_decode(ledger, settings, work):
    settings = settings.model_copy(update={"done_folder": f"{settings.done_folder}已处理"})
    # RFC 2047 subject and RFC 2231 file name (Python, Thunderbird)
    modern = mail(CONTACT, "【沈阳市】节能宣传周报表（第二次）",
                  [("沈阳市节能宣传周报表.xlsx", workbook(), XLSX_TYPE)])
    # GBK, RFC 2047 inside the quoted file name (Foxmail, Outlook in Chinese)
    legacy = MIMEMultipart()
    legacy["From"], legacy["To"] = CONTACT, "returns@example.com"
    legacy["Subject"] = Header("沈阳市活动照片", "gbk")
    legacy.attach(MIMEText("照片见附件", "plain", "gbk"))
    photo = MIMEApplication(JPEG, "octet-stream")
    encoded = base64.b64encode("宣传活动现场.jpg".encode("gbk")).decode()
    photo.add_header("Content-Disposition", f'attachment; filename="=?GBK?B?{encoded}?="')
    legacy.attach(photo)
    put(settings, modern, legacy.as_bytes())

    result = collect(ledger, settings, work)

    assert [r.outcome for r in result.taken] == ["received", "received"]
    subs, files = submissions(ledger)
    assert [x.original_name for x in subs] == ["【沈阳市】节能宣传周报表（第二次）", "沈阳市活动照片"]
    assert [[f.name for f in files[x.id]] for x in subs] == [["沈阳市节能宣传周报表.xlsx"], ["宣传活动现场.jpg"]]
    assert len(messages_in(settings, settings.done_folder)) == 2


def test_nameless_inline_image_and_forwarded_message(ledger, settings, work):
    inner = EmailMessage()
    inner["From"], inner["Subject"] = CONTACT, "报表"
    inner.set_content("见附件")
    inner.add_attachment(b"a,1\n", maintype="text", subtype="csv", filename="沈阳市.csv")
    outer = EmailMessage()
    outer["From"], outer["Subject"] = CONTACT, "Fwd: 报表"
    outer.set_content("转发")
    outer.add_attachment(inner)  # message/rfc822: its own attachments are taken, not the wrapper
    outer.add_attachment(PNG, maintype="image", subtype="png", disposition="inline", cid="<p1@x>")
    put(settings, outer.as_bytes())
    collect(ledger, settings, work)
    subs, files = submissions(ledger)
    assert [(f.name, f.role) for f in files[subs[0].id]] == [("沈阳市.csv", "return"),
                                                             ("附件2.png", "photo")]


def test_oversized_attachment_is_refused_but_the_message_is_kept(ledger, home, settings, work):
    put(settings, mail(CONTACT, "大文件", [("沈阳市报表.xlsx", workbook(), XLSX_TYPE)]))
    result = collect(ledger, settings, work, max_file_bytes=1000)
    assert result.taken[0].outcome == "refused"
    [ev] = events(ledger, "mail.received")
    assert (home / archive_relpath(ev.subject)).exists()  # the whole message is still archived
    assert len(messages_in(settings, settings.done_folder)) == 1


# ---------------------------------------------------------------- connection errors
def test_wrong_password_names_server_and_user_but_not_the_password(ledger, settings, work):
    bad = settings.model_copy(update={"password": type(settings.password)("wrong-pass-123")})
    with pytest.raises(MailboxError) as err:
        collect(ledger, bad, work)
    text = str(err.value)
    assert f"{settings.user}@{settings.host}:{settings.port}" in text and "wrong-pass-123" not in text
    assert "imap-test-secret" not in text


def test_unreachable_server_is_a_mailbox_error(ledger, work):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    bad = ImapSettings(host="127.0.0.1", port=port, user="u", password="pw-xyz", security="none")
    with pytest.raises(MailboxError, match=f"u@127.0.0.1:{port}") as err:
        collect(ledger, bad, work)
    assert "pw-xyz" not in str(err.value)


def test_missing_host_is_a_mailbox_error(ledger, work):
    with pytest.raises(MailboxError, match="BULLETIN_IMAP_HOST"):
        collect(ledger, ImapSettings(host=None), work)


# ---------------------------------------------------------------- who may send a unit's return
def test_sender_unit():
    other = CFG.unit_by_code["210200"]
    with_delegate = UNIT.model_copy(update={"delegates": ["Helper@Example.net"]})
    units = [with_delegate, other]
    assert sender_unit(CONTACT, units) == with_delegate
    assert sender_unit(f"张伟 <{CONTACT.upper()}>", units) == with_delegate
    assert sender_unit("helper@example.NET", units) == with_delegate
    assert sender_unit(other.contacts[0].email, units) == other
    assert sender_unit("stranger@example.org", units) is None
    assert sender_unit("", units) is None and sender_unit(None, units) is None


def test_sender_listed_by_two_units_is_allowed_for_both_but_names_no_unit():
    a = UNIT.model_copy(update={"delegates": ["shared@example.net"]})
    b = CFG.unit_by_code["210200"].model_copy(update={"delegates": ["SHARED@example.net"]})
    assert sender_allowed("shared@example.net", a) and sender_allowed("shared@example.net", b)
    assert sender_unit("shared@example.net", [a, b]) is None
    assert not sender_allowed(CONTACT, b)


# ---------------------------------------------------------------- the test server itself
def test_missing_dovecot_skips_locally_but_fails_in_ci(monkeypatch):
    import imap_server as helper
    monkeypatch.setattr(helper, "dovecot_binary", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dovecot is not installed"):
        helper.dovecot_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        helper.dovecot_or_skip()


# ---------------------------------------------------------------- TLS: certificates are checked
@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_modes_take_mail_and_check_the_certificate(ledger, settings, work, imap_server,  # noqa: F811
                                                       monkeypatch, security):
    """IMAPS and STARTTLS against the real dovecot: with its certificate trusted (SSL_CERT_FILE,
    as an office with its own CA would set it) the mail is taken; a certificate nobody vouches
    for stops the connection before the password is sent."""
    port = imap_server.tls_port if security == "ssl" else imap_server.port
    tls = settings.model_copy(update={"security": security, "port": port})
    put(settings, mail(CONTACT, "报表", [("沈阳市报表.xlsx", workbook(), XLSX_TYPE)]))

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(MailboxError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        collect(ledger, tls, work)
    assert messages_in(settings, settings.folder)  # nothing taken, nothing moved

    monkeypatch.setenv("SSL_CERT_FILE", imap_server.cafile)
    result = collect(ledger, tls, work)
    assert len(result.taken) == 1 and result.taken[0].outcome == "received"
    assert messages_in(settings, settings.folder) == []

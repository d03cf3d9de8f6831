"""Integration: `collect-returns` reads a real IMAP mailbox (dovecot on 127.0.0.1) and sends
receipts through a real SMTP server; strangers are quarantined and never answered."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

import pytest
from imap_server import imap_server  # noqa: F401 - the fixture
from imap_tools import MailBoxUnencrypted

from tasks.mail.workbook import build_request_workbook, fill_workbook

pytestmark = pytest.mark.usefixtures("prefect_harness")
CAMPAIGN = "energy-week-2023"


def _mail(sender: str, subject: str, attachments: list[tuple[str, bytes, str]]) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "reports@example.com", subject
    msg.set_content("附件为本单位报表，请查收。")
    for name, data, mime in attachments:
        main, sub = mime.split("/")
        msg.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return msg.as_bytes()


def test_collect_reads_the_mailbox_and_answers_contacts_only(tmp_path, config, config_dir, smtp_env,
                                                             imap_server, monkeypatch):  # noqa: F811
    from flows.collect_returns import collect_returns
    folder, done = "Returns2023", "Done2023"
    monkeypatch.setenv("BULLETIN_IMAP_HOST", imap_server.host)
    monkeypatch.setenv("BULLETIN_IMAP_PORT", str(imap_server.port))
    monkeypatch.setenv("BULLETIN_IMAP_USER", imap_server.user)
    monkeypatch.setenv("BULLETIN_IMAP_PASSWORD", imap_server.password)
    monkeypatch.setenv("BULLETIN_IMAP_SECURITY", "none")
    monkeypatch.setenv("BULLETIN_IMAP_FOLDER", folder)
    monkeypatch.setenv("BULLETIN_IMAP_DONE_FOLDER", done)
    unit, other = config.unit_by_code["210600"], config.unit_by_code["210700"]
    values = {f.key: 10 for f in config.campaign.form.counts} | {"activities": "开展节能宣传。"}
    good = fill_workbook(build_request_workbook(config.campaign, unit), values)
    foreign = fill_workbook(build_request_workbook(config.campaign, other), values)
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    with MailBoxUnencrypted(imap_server.host, port=imap_server.port).login(
            imap_server.user, imap_server.password) as box:
        if not box.folder.exists(folder):
            box.folder.create(folder)
        box.append(_mail(unit.contacts[0].email, "丹东市报表", [("丹东市报表.xlsx", good, xlsx)]), folder)
        box.append(_mail("stranger@evil.example.net", "锦州市报表", [("锦州.xlsx", foreign, xlsx)]), folder)
        ooo = EmailMessage()
        ooo["From"], ooo["Subject"], ooo["Auto-Submitted"] = unit.contacts[0].email, "自动回复：休假中", "auto-replied"
        ooo.set_content("我正在休假。")
        box.append(ooo.as_bytes(), folder)

    result = collect_returns(CAMPAIGN, now=config.campaign.calendar.deadline_at, home=str(tmp_path),
                             config_dir=str(config_dir))
    assert result["decided"] == {"accepted": 1, "quarantined": 1}
    mails = [email.message_from_bytes(m.data, policy=policy.default) for m in smtp_env.messages]
    receipts = [m for m in mails if "回执" in str(m["Subject"])]
    assert [m["To"].addresses[0].addr_spec for m in receipts] == [unit.contacts[0].email]
    notices = [m for m in mails if "系统通知" in str(m["Subject"])]
    assert len(notices) == 1 and "stranger@evil.example.net" in notices[0].get_body(("plain",)).get_content()
    assert not any("stranger" in r for m in smtp_env.messages for r in m.rcpt_tos)  # no backscatter
    with MailBoxUnencrypted(imap_server.host, port=imap_server.port).login(
            imap_server.user, imap_server.password) as box:
        box.folder.set(folder)
        assert list(box.fetch()) == []  # everything moved after archiving
        box.folder.set(done)
        assert len(list(box.fetch())) == 3
    # a second run finds nothing new and sends nothing new
    again = collect_returns(CAMPAIGN, now=config.campaign.calendar.deadline_at, home=str(tmp_path),
                            config_dir=str(config_dir))
    assert again["taken_in"] == 0 and len(smtp_env.messages) == len(mails)


def test_a_reply_explains_the_warnings_and_the_return_is_accepted(tmp_path, config, config_dir, smtp_env,
                                                                  imap_server, monkeypatch):  # noqa: F811
    from flows.collect_returns import collect_returns
    from tasks.core.ledger import Ledger
    from tasks.decisions.status import completeness
    folder = "Replies2023"
    for key, value in (("HOST", imap_server.host), ("PORT", str(imap_server.port)), ("USER", imap_server.user),
                       ("PASSWORD", imap_server.password), ("SECURITY", "none"), ("FOLDER", folder),
                       ("DONE_FOLDER", "RepliesDone")):
        monkeypatch.setenv(f"BULLETIN_IMAP_{key}", value)
    unit = config.unit_by_code["210200"]
    values = {f.key: 10 for f in config.campaign.form.counts} | {"activities": "开展节能宣传。",
                                                                  "participants": 1, "trainings": 5}
    data = fill_workbook(build_request_workbook(config.campaign, unit), values)
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    sender = unit.contacts[0].email
    args = dict(home=str(tmp_path), config_dir=str(config_dir))
    with MailBoxUnencrypted(imap_server.host, port=imap_server.port).login(
            imap_server.user, imap_server.password) as box:
        if not box.folder.exists(folder):
            box.folder.create(folder)
        box.append(_mail(sender, "大连市报表", [("大连市报表.xlsx", data, xlsx)]), folder)
    first = collect_returns(CAMPAIGN, now=config.campaign.calendar.deadline_at, **args)
    assert first["decided"] == {"needs_explanation": 1}
    reply = EmailMessage()
    reply["From"], reply["To"], reply["Subject"] = sender, "reports@example.com", "回复：【回执】需要说明"
    reply.set_content("培训以视频会议形式开展，参与人次按分会场统计。\n\n在 2023年9月28日 写道：\n> 审核结果：需要说明")
    with MailBoxUnencrypted(imap_server.host, port=imap_server.port).login(
            imap_server.user, imap_server.password) as box:
        box.append(reply.as_bytes(), folder)
    collect_returns(CAMPAIGN, now=config.campaign.calendar.deadline_at, **args)
    status = completeness(Ledger(tmp_path), config, config.campaign.calendar.deadline_at)
    assert next(u for u in status["units"] if u["code"] == "210200")["state"] == "accepted"
    receipts = [email.message_from_bytes(m.data, policy=policy.default) for m in smtp_env.messages]
    last = receipts[-1]
    assert "已通过" in str(last["Subject"])
    body = last.get_body(("plain",)).get_content()
    assert "视频会议" in body and "写道" not in body  # the explanation, without the quoted original

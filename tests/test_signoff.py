"""Sign-off by reply mail: each approver of the level due gets the request by mail, and replies
read from a real dovecot mailbox decide exactly the version they name. Forged, stranger, auto
and unreadable replies decide nothing; the coordinators hear about the forged and the
strangers. Real SMTP server on 127.0.0.1, real Prefect server, real ledger files."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from imap_server import imap_server  # noqa: F401 - the fixture
from imap_tools import MailBoxUnencrypted

from tasks.bulletin.approval import APPROVED, PENDING, REJECTED, chain_state
from tasks.bulletin.signoff import as_signoff_reply, auth_failure, read_decision, subject_tag
from tasks.core.ledger import Ledger
from tasks.mail.notices import bulletin_recipients

CAMPAIGN = "energy-week-2023"
LI, WANG = "li.kezhang@example.gov.cn", "wang.chuzhang@example.gov.cn"  # the demo campaign's 审核 and 签发


# ---------------------------------------------------------------------------- plain functions
@pytest.mark.parametrize("text, expected", [
    ("同意", (True, "同意")),
    ("同意。数据已核对。\n王处长", (True, "同意。数据已核对。\n王处长")),
    ("\n\n  同意印发", (True, "同意印发")),
    ("不同意，第三段数据有误", (False, "第三段数据有误")),
    ("不同意", (False, "")),
    ("不予批准：请补充大连市的说明", (False, "请补充大连市的说明")),
    ("好的，收到", (None, "")),
    ("", (None, "")),
    ("我同意", (None, "")),  # the first word decides, nothing guessed
])
def test_the_first_line_decides(text, expected):
    assert read_decision(text) == expected


def _msg(**headers) -> EmailMessage:
    msg = EmailMessage()
    for name, value in headers.items():
        for v in value if isinstance(value, list) else [value]:
            msg[name.replace("_", "-")] = v
    msg.set_content("同意")
    return msg


def test_only_a_failing_authentication_result_counts():
    assert auth_failure(_msg(Authentication_Results="mx.example.gov.cn; spf=pass smtp.mailfrom=example.gov.cn; "
                                                    "dkim=pass; dmarc=pass header.from=example.gov.cn")) is None
    assert auth_failure(_msg(Authentication_Results="mx.example.gov.cn; dmarc=fail (p=reject) "
                                                    "header.from=example.gov.cn")) == "dmarc=fail"
    assert auth_failure(_msg(Authentication_Results=["mx.example.gov.cn; dkim=none",
                                                     "mx.example.gov.cn; SPF=Fail smtp.mailfrom=x"])) == "spf=fail"
    assert auth_failure(_msg()) is None


def test_the_version_comes_from_the_request_answered_and_must_agree_with_the_subject():
    requests = {"0" * 32: 1, "1" * 32: 2}
    ref = lambda d: f"<bulletin.{d}@example.com>"  # noqa: E731

    def read(subject, **headers):
        return as_signoff_reply(_msg(**headers), CAMPAIGN, requests, sender=f"李科长 <{LI}>", subject=subject,
                                text="同意", sha256="s")

    assert read(f"回复：{subject_tag(CAMPAIGN, 2)}", In_Reply_To=ref("1" * 32)).version == 2
    assert read("Re: 简讯", References=f"<x@y> {ref('0' * 32)}").version == 1  # the subject edited away
    assert read(f"答复: {subject_tag(CAMPAIGN, 2)}").version == 2  # the references lost
    assert read(f"回复：{subject_tag(CAMPAIGN, 2)}", In_Reply_To=ref("0" * 32)).version is None  # disagree
    assert read(f"回复：{subject_tag('energy-week-2022', 1)}") is None  # another campaign's
    assert read("回复：【回执】", In_Reply_To=ref("9" * 32)) is None  # a reply to a receipt of ours
    assert read(f"回复：{subject_tag(CAMPAIGN, 1)}").sender == LI


# ---------------------------------------------------------------------------- through the mailbox
@pytest.fixture
def mailbox(imap_server, monkeypatch, request):  # noqa: F811
    """A folder of the test's own on the real dovecot, read by ``collect``."""
    folder = f"Signoff-{request.node.name[:40]}"
    for name, value in {"HOST": imap_server.host, "PORT": str(imap_server.port), "USER": imap_server.user,
                        "PASSWORD": imap_server.password, "SECURITY": "none", "FOLDER": folder,
                        "DONE_FOLDER": folder + "-done"}.items():
        monkeypatch.setenv(f"BULLETIN_IMAP_{name}", value)
    with MailBoxUnencrypted(imap_server.host, port=imap_server.port).login(imap_server.user,
                                                                           imap_server.password) as box:
        box.folder.create(folder)

    def deliver(raw: bytes) -> None:
        with MailBoxUnencrypted(imap_server.host, port=imap_server.port).login(imap_server.user,
                                                                               imap_server.password) as box:
            box.append(raw, folder)
    return deliver


class Campaign:
    """The demo campaign in a home of the test's own, driven through its flows."""

    def __init__(self, home, config, config_dir, smtp):
        self.home, self.config, self.config_dir, self.smtp = home, config, config_dir, smtp
        self.now = config.campaign.calendar.compile_moment

    def compile(self, lead: str) -> dict:
        from flows.compile_bulletin import compile_bulletin
        return compile_bulletin(CAMPAIGN, lead=lead, now=self.now, home=str(self.home),
                                config_dir=str(self.config_dir))

    def collect(self) -> dict:
        from flows.collect_returns import collect_returns
        return collect_returns(CAMPAIGN, now=self.now, home=str(self.home), config_dir=str(self.config_dir))

    def mails(self, step: str | None = None, to: str | None = None) -> list[EmailMessage]:
        out = [email.message_from_bytes(m.data, policy=policy.default) for m in self.smtp.messages
               if to is None or to in m.rcpt_tos]
        return [m for m in out if step is None or m["X-Bulletin-Step"] == step]

    def chain(self, version: int) -> dict:
        return chain_state(Ledger(self.home), CAMPAIGN, version, self.config.campaign.bulletin.approvers)

    def status_lines(self) -> list[str]:
        from rich.console import Console

        from flows.show import print_status
        from tasks.decisions.status import completeness
        console = Console(record=True, width=200)
        print_status(completeness(Ledger(self.home), self.config, self.now), console)
        return console.export_text().splitlines()

    def chain_artifact(self):
        from prefect import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{CAMPAIGN}-approval"])), limit=200)
        return max(found, key=lambda a: a.created)

    def bulletin(self, version: int):
        from tasks.bulletin.approval import find_version
        return find_version(Ledger(self.home), CAMPAIGN, version)


@pytest.fixture
def campaign(tmp_path, config, config_dir, smtp_env, prefect_harness):
    return Campaign(tmp_path, config, config_dir, smtp_env)


def reply(request: EmailMessage, sender: str, text: str, *, subject: str | None = None,
          references: bool = True, **headers) -> bytes:
    """A reply as a mail client writes it, the original quoted below."""
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, str(request["From"])
    msg["Subject"] = subject or f"回复：{request['Subject']}"
    if references:
        msg["In-Reply-To"] = msg["References"] = str(request["Message-ID"])
    msg["Message-ID"] = make_msgid(domain="example.gov.cn")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    quoted = "\n".join(f"> {line}" for line in request.get_body(("plain",)).get_content().splitlines())
    msg.set_content(f"{text}\n\n在 2023年10月9日 10:00，{request['From']} 写道：\n{quoted}\n")
    return bytes(msg)


def test_two_levels_signed_off_by_mail_then_sent_once(campaign, mailbox):
    compiled = campaign.compile("初稿")
    assert compiled["version"] == 1
    [request] = campaign.mails("approval-request")
    assert request["To"].addresses[0].addr_spec == LI and subject_tag(CAMPAIGN, 1) in str(request["Subject"])
    attachments = list(request.iter_attachments())
    assert [p.get_filename() for p in attachments] == [
        f"{campaign.config.campaign.bulletin.title}（第1版）.docx", "各单位个性化内容（第1版）.html"]
    blocks = attachments[1].get_content()  # the units' blocks go with the version they are part of
    assert blocks.count("本单位报送情况") == len(campaign.config.units)
    text = request.get_body(("plain",)).get_content()
    assert "这是本期简讯的第一版" in text and f"共{len(campaign.config.units)}份，随本版一并审批" in text

    ooo = reply(request, LI, "我正在休假，同意请找办公室。", Auto_Submitted="auto-replied")
    forged = reply(request, WANG, "同意", Authentication_Results="mx.example.gov.cn; dmarc=fail header.from=example.gov.cn")
    stranger = reply(request, "someone@evil.example.net", "同意")
    for raw in (ooo, forged, stranger, reply(request, f"李科长 <{LI}>", "同意。数据已核对。")):
        mailbox(raw)
    first = campaign.collect()
    chain = campaign.chain(1)
    assert [(d["level"], d["by"], d["note"]) for d in chain["decisions"]] == [("审核", "李科长", "同意。数据已核对。")]
    assert chain["due"] == "签发" and campaign.bulletin(1).approval == PENDING
    assert first["signoff"]["publish"] is None
    shown = ["审核：李科长 同意（2023-10-09 09:00）：同意。数据已核对。", "待签发：王处长"]  # status, and the run's page in Prefect
    assert all(part in "\n".join(campaign.status_lines()) for part in shown)
    assert all(part in campaign.chain_artifact().description for part in shown)
    assert campaign.mails("bulletin") == []  # nothing goes out before the last level
    [to_wang] = campaign.mails("approval-request", to=WANG)
    [answer] = campaign.mails("approval-answer")
    assert answer["To"].addresses[0].addr_spec == LI and "已记录：您同意第1版简讯（审核）" in answer.get_body().get_content()
    notices = [m.get_body(("plain",)).get_content() for m in campaign.mails("notice")]
    assert len(notices) == 2 and "dmarc=fail" in notices[0] and "someone@evil.example.net" in notices[1]
    assert not any("evil" in r for m in campaign.smtp.messages for r in m.rcpt_tos)  # no backscatter

    mailbox(reply(to_wang, WANG, "同意印发"))
    second = campaign.collect()
    assert campaign.bulletin(1).approval == APPROVED and campaign.chain(1)["due"] is None
    recipients = len(bulletin_recipients(campaign.config))
    assert second["signoff"]["bulletin"]["sent"] == recipients == len(campaign.mails("bulletin"))
    assert len(campaign.mails("approval-answer", to=WANG)) == 1

    sent = len(campaign.smtp.messages)
    mailbox(reply(to_wang, WANG, "同意"))  # the same approver again: no change, and nothing resent
    third = campaign.collect()
    assert len(campaign.mails("bulletin")) == recipients and "bulletin" not in third["signoff"]
    assert "此前已有同样的决定" in campaign.mails("approval-answer", to=WANG)[-1].get_body().get_content()
    assert len(campaign.smtp.messages) == sent + 1


def test_a_reply_to_an_older_version_never_approves_a_newer_one(campaign, mailbox):
    campaign.compile("初稿")
    [old_request] = campaign.mails("approval-request")
    assert campaign.compile("二稿")["version"] == 2
    new_request = campaign.mails("approval-request")[-1]
    assert subject_tag(CAMPAIGN, 2) in str(new_request["Subject"])
    assert "数据未变" in new_request.get_body(("plain",)).get_content()  # what changed: only the text

    mailbox(reply(old_request, LI, "同意"))  # answering version 1's request
    mailbox(reply(old_request, LI, "同意", subject=f"回复：{subject_tag(CAMPAIGN, 2)}"))  # v2 typed, v1 answered
    campaign.collect()
    assert campaign.chain(2)["decisions"] == [] and campaign.chain(1)["decisions"] == []
    answers = [m.get_body().get_content() for m in campaign.mails("approval-answer")]
    assert "已被第2版取代" in answers[0] and "指向不同版本" in answers[1]

    mailbox(reply(new_request, LI, "同意"))
    campaign.collect()
    assert [d["by"] for d in campaign.chain(2)["decisions"]] == ["李科长"]


def test_a_rejection_by_mail_stops_the_chain_and_tells_the_coordinators(campaign, mailbox):
    campaign.compile("初稿")
    [request] = campaign.mails("approval-request")
    mailbox(reply(request, LI, "不同意，第三段数据有误，请核实大连市的培训人次。"))
    mailbox(reply(request, LI, "收到，稍后看"))  # unreadable: asked again, nothing recorded
    campaign.collect()
    assert campaign.bulletin(1).approval == REJECTED
    assert campaign.mails("approval-request", to=WANG) == []  # the chain stops
    [notice] = campaign.mails("notice")
    body = notice.get_body(("plain",)).get_content()
    assert "第1版简讯未获批准" in str(notice["Subject"]) and "审核：李科长" in body and "大连市的培训人次" in body
    answers = [m.get_body().get_content() for m in campaign.mails("approval-answer")]
    assert "您不同意第1版简讯" in answers[0] and "未能识别" in answers[1]
    campaign.collect()  # nothing twice
    assert len(campaign.mails("notice")) == 1 and len(campaign.mails("approval-answer")) == 2


def test_the_request_again_on_demand_and_a_reply_to_it_counts(campaign, mailbox, capsys):
    import json

    import typer

    from flows import cli
    campaign.compile("初稿")

    def request_approval(*args) -> tuple[int, dict]:
        capsys.readouterr()
        with pytest.raises(typer.Exit) as exit_:
            cli.request_approval(CAMPAIGN, *args, home=campaign.home, config=campaign.config_dir,
                                 now=campaign.now.isoformat())
        return exit_.value.exit_code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    code, owed = request_approval(False)
    assert code == 0 and owed["due"] == "审核" and owed["sent"] == {"skipped": 1}  # sent once, at compile
    code, again = request_approval(True)
    assert code == 0 and again["sent"] == {"sent": 1} and again["approvers"] == [LI]
    first, second = campaign.mails("approval-request")
    assert str(second["Subject"]).startswith("【再次提请】") and first["Message-ID"] != second["Message-ID"]
    mailbox(reply(second, LI, "同意", subject="Re: 简讯"))  # only the references name the version
    campaign.collect()
    assert [d["by"] for d in campaign.chain(1)["decisions"]] == ["李科长"]

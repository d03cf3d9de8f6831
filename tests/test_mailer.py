"""Mailers against a real aiosmtpd server on 127.0.0.1 and a real outbox folder."""

from __future__ import annotations

import email
import time
from email import policy

import pytest
from pydantic import SecretStr
from smtp_server import CollectingHandler, running_smtp_server
from test_message import VARIED, assert_wire_clean, summary

from tasks.core.durable import sync_folder
from tasks.core.settings import SmtpSettings
from tasks.mail.mailer import MailError, OutboxMailer, SmtpMailer, mailer_from_env, outbox_file_name
from tasks.mail.message import Address, Attachment, OutgoingMessage, build_mime, message_id_for, mime_bytes

SENDER = Address("报送任务系统", "bulletin@stats.example.com")


def message(n: int, **kw) -> OutgoingMessage:
    fields = dict(
        key=f"energy-week-2023/request/21010{n}/v1",
        to=(Address(f"单位{n}", f"unit{n}@example.org"),),
        cc=(Address("李四", "coordinator@example.org"),),
        subject=f"请报送数据（{n}）",
        text=f"第{n}号通知\n",
        html=f"<p>第{n}号通知</p>",
        attachments=(Attachment("填报说明.xlsx", b"PK\x03\x04", "application/vnd.openxmlformats-"
                                "officedocument.spreadsheetml.sheet"),),
    )
    fields.update(kw)
    return OutgoingMessage(**fields)


def smtp_settings(server, **kw) -> SmtpSettings:
    return SmtpSettings(host=server.host, port=server.port, security="none", **kw)


# -- outbox ----------------------------------------------------------------------------------
def test_outbox_writes_parseable_eml_and_overwrites_on_resend(tmp_path):
    outbox = tmp_path / "outbox"
    with OutboxMailer(outbox, SENDER) as mailer:
        mid = mailer.send(message(1))
        again = mailer.send(message(1))
        mailer.send(message(2))
    files = sorted(outbox.iterdir())
    assert len(files) == 2 and all(f.suffix == ".eml" for f in files)  # no temp files left
    assert mid == again == message_id_for(message(1).key, "stats.example.com")
    parsed = email.message_from_bytes(mailer.path_for(message(1).key).read_bytes(),
                                      policy=policy.default)
    assert parsed["Message-ID"] == mid
    assert parsed["Subject"] == "请报送数据（1）"
    assert parsed["To"].addresses[0].display_name == "单位1"
    assert next(p for p in parsed.iter_attachments()).get_filename() == "填报说明.xlsx"
    assert "outbox" in mailer.description


def test_outbox_writes_without_fsync_and_flush_makes_it_durable(tmp_path):
    outbox = tmp_path / "outbox"
    mailer = OutboxMailer(outbox, SENDER)
    assert mailer.batch_size > 1
    mailer.flush()  # nothing written yet: nothing to do, and the folder need not exist
    for msg in VARIED:
        assert mailer.send(msg) == message_id_for(msg.key, "stats.example.com")
    assert len(mailer._unflushed) == len(VARIED)
    mailer.flush()
    assert mailer._unflushed == []
    assert sorted(p.name for p in outbox.iterdir()) == sorted(outbox_file_name(m.key) for m in VARIED)
    for msg in VARIED:
        raw = mailer.path_for(msg.key).read_bytes()
        assert_wire_clean(raw)
        date = email.message_from_bytes(raw, policy=policy.default)["Date"].datetime
        assert raw == mime_bytes(msg, SENDER, date)[0]
        assert summary(raw) == summary(build_mime(msg, SENDER, date).as_bytes())


def test_outbox_close_flushes(tmp_path):
    with OutboxMailer(tmp_path / "outbox", SENDER) as mailer:
        mailer.send(message(1))
        assert mailer._unflushed
    assert mailer._unflushed == []


def test_outbox_flush_failure_is_an_uncertain_mail_error(tmp_path):
    outbox = tmp_path / "outbox"
    mailer = OutboxMailer(outbox, SENDER)
    mailer.send(message(1))
    for f in outbox.iterdir():  # the folder vanishes before the sync
        f.unlink()
    outbox.rmdir()
    with pytest.raises(MailError) as err:
        mailer.flush()
    assert err.value.uncertain and "durable" in str(err.value)


def test_outbox_unwritable_folder_is_a_mail_error(tmp_path):
    (tmp_path / "outbox").write_text("a file where the folder should be")
    with pytest.raises(MailError, match="cannot write") as err:
        OutboxMailer(tmp_path / "outbox", SENDER).send(message(1))
    assert not err.value.uncertain


def test_sync_folder_on_a_real_folder(tmp_path):
    (tmp_path / "a.eml").write_bytes(b"x")
    sync_folder(tmp_path, [tmp_path / "a.eml"])
    with pytest.raises(OSError):
        sync_folder(tmp_path / "missing")


def test_outbox_file_names_are_safe_and_unique():
    name = outbox_file_name("energy-week-2023/request/210100/v1")
    assert name.startswith("energy-week-2023__request__210100__v1-") and name.endswith(".eml")
    odd = outbox_file_name("../../etc/passwd 单位")
    assert "/" not in odd and not odd.startswith(".")
    assert outbox_file_name("a b") != outbox_file_name("ab")  # the hash keeps them apart


# -- SMTP ------------------------------------------------------------------------------------
def test_smtp_three_messages_over_one_connection():
    with running_smtp_server() as server, SmtpMailer(smtp_settings(server), SENDER) as mailer:
        ids = [mailer.send(message(n)) for n in (1, 2, 3)]
        got = server.messages
    assert mailer.connections == 1
    assert len(got) == 3 and len({m.peer for m in got}) == 1  # one client connection
    for n, (mid, rec) in enumerate(zip(ids, got), start=1):
        assert rec.mail_from == "bulletin@stats.example.com"
        assert rec.rcpt_tos == [f"unit{n}@example.org", "coordinator@example.org"]
        parsed = rec.message()
        assert parsed["Message-ID"] == mid == message_id_for(message(n).key, "stats.example.com")
        assert parsed["Subject"] == f"请报送数据（{n}）"
        assert (parsed["To"].addresses[0].display_name, parsed["To"].addresses[0].addr_spec) == (
            f"单位{n}", f"unit{n}@example.org")
        assert parsed["Auto-Submitted"] == "auto-generated"
        assert parsed.get_body(("plain",)).get_content().strip() == f"第{n}号通知"
    assert "SMTP 127.0.0.1:" in mailer.description and "(none)" in mailer.description


def test_smtp_sends_the_fast_bytes_unchanged():
    """Every varied message arrives byte for byte as mime_bytes made it, and decodes like
    the standard library's rendering."""
    with running_smtp_server() as server, SmtpMailer(smtp_settings(server), SENDER) as mailer:
        assert mailer.batch_size == 1
        ids = [mailer.send(msg) for msg in VARIED]
        mailer.flush()  # nothing to do for SMTP
        got = server.messages
    assert len(got) == len(VARIED)
    for msg, mid, rec in zip(VARIED, ids, got):
        date = rec.message()["Date"].datetime
        assert rec.data == mime_bytes(msg, SENDER, date)[0]
        assert summary(rec.data) == summary(build_mime(msg, SENDER, date).as_bytes())
        assert rec.message()["Message-ID"] == mid
        assert rec.rcpt_tos == list(dict.fromkeys(a.email for a in (*msg.to, *msg.cc)))


def test_smtp_rate_limit_spaces_messages():
    with running_smtp_server() as server:
        with SmtpMailer(smtp_settings(server, rate=600), SENDER) as mailer:  # 0.1 s apart
            start = time.monotonic()
            for n in (1, 2, 3):
                mailer.send(message(n))
            elapsed = time.monotonic() - start
        assert len(server.messages) == 3
    assert elapsed >= 0.19


def test_smtp_reconnects_once_after_a_dropped_connection():
    with running_smtp_server() as server, SmtpMailer(smtp_settings(server), SENDER) as mailer:
        mailer.send(message(1))
        server.restart()  # the server goes away and comes back: our socket is dead
        mailer.send(message(2))
        got = server.messages
    assert [m.message()["Subject"] for m in got] == ["请报送数据（1）", "请报送数据（2）"]
    assert mailer.connections == 2 and got[0].peer != got[1].peer


def test_smtp_login_with_plain_user_name():
    with running_smtp_server(auth={"bulletin": "s3cret"}) as server:
        settings = smtp_settings(server, user="bulletin", password=SecretStr("s3cret"))
        with SmtpMailer(settings, SENDER) as mailer:
            mailer.send(message(1))
        # yagmail would have logged in as 'bulletin@gmail.com' given a plain string
        assert [m.login for m in server.messages] == ["bulletin"]
        assert "as bulletin" in mailer.description


def test_smtp_wrong_password_is_a_clear_error_without_the_password():
    with running_smtp_server(auth={"bulletin": "s3cret"}) as server:
        settings = smtp_settings(server, user="bulletin", password=SecretStr("wrong-pw"))
        with SmtpMailer(settings, SENDER) as mailer, pytest.raises(MailError) as err:
            mailer.send(message(1))
    assert "cannot connect" in str(err.value) and "535" in str(err.value)
    assert "wrong-pw" not in str(err.value) and not err.value.uncertain


def test_smtp_unreachable_server_raises_mail_error():
    from smtp_server import free_port

    settings = SmtpSettings(host="127.0.0.1", port=free_port(), security="none",
                            user="u@example.org", password=SecretStr("hunter2"))
    with SmtpMailer(settings, SENDER, timeout=5) as mailer, pytest.raises(MailError) as err:
        mailer.send(message(1))
    assert f"127.0.0.1:{settings.port}" in str(err.value) and "hunter2" not in str(err.value)


def test_smtp_user_without_password_is_a_configuration_error():
    with pytest.raises(MailError, match="PASSWORD"):
        SmtpMailer(SmtpSettings(host="mail.example.org", user="u"), SENDER)


def test_smtp_refused_recipients():
    handler = CollectingHandler(refuse={"coordinator@example.org"})
    with running_smtp_server(handler=handler) as server, \
            SmtpMailer(smtp_settings(server), SENDER) as mailer:
        mailer.send(message(1))  # one of two refused: delivered to the other, noted
        assert mailer.last_refused == {"coordinator@example.org": (550, "5.1.1 No such user here")}
        with pytest.raises(MailError, match="refused every recipient") as err:
            mailer.send(message(2, to=(Address("x", "coordinator@example.org"),), cc=()))
        assert not err.value.uncertain
        mailer.send(message(3))  # the connection is still usable
        assert [m.rcpt_tos for m in server.messages] == [["unit1@example.org"], ["unit3@example.org"]]
        assert mailer.connections == 1


class DropDuringData(CollectingHandler):
    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        await super().handle_DATA(server, session, envelope)
        server.transport.close()  # the message arrived, but the reply never does
        return "250 OK"


def test_smtp_connection_lost_during_data_is_uncertain():
    with running_smtp_server(handler=DropDuringData()) as server, \
            SmtpMailer(smtp_settings(server), SENDER) as mailer:
        with pytest.raises(MailError, match="uncertain") as err:
            mailer.send(message(1))
        assert err.value.uncertain
        assert len(server.messages) == 1  # it was not sent a second time


def test_mailer_from_env(tmp_path, monkeypatch):
    for var in ("HOST", "PORT", "USER", "PASSWORD", "SECURITY", "RATE"):
        monkeypatch.delenv(f"BULLETIN_SMTP_{var}", raising=False)
    monkeypatch.setenv("BULLETIN_MAIL_FROM", "reports@stats.example.com")
    outbox = mailer_from_env(tmp_path)
    assert isinstance(outbox, OutboxMailer) and outbox.outbox_dir == tmp_path / "outbox"
    assert outbox.sender.email == "reports@stats.example.com"
    monkeypatch.setenv("BULLETIN_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("BULLETIN_SMTP_USER", "reports")
    monkeypatch.setenv("BULLETIN_SMTP_PASSWORD", "top-secret")
    monkeypatch.setenv("BULLETIN_SMTP_RATE", "30")
    smtp = mailer_from_env(tmp_path)
    assert isinstance(smtp, SmtpMailer)
    assert smtp.description == "SMTP smtp.example.com:587 (starttls) as reports"
    assert smtp.connections == 0  # lazy: nothing opened yet


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_smtp_tls_verifies_the_server_certificate(security, monkeypatch):
    with running_smtp_server(tls=security) as server:
        settings = SmtpSettings(host=server.host, port=server.port, security=security)
        with SmtpMailer(settings, SENDER, timeout=5) as mailer, pytest.raises(MailError) as err:
            mailer.send(message(1))  # self-signed: refused by the default context
        assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))  # now trusted
        with SmtpMailer(settings, SENDER, timeout=5) as mailer:
            mailer.send(message(1))
        assert [m.rcpt_tos for m in server.messages] == [["unit1@example.org",
                                                          "coordinator@example.org"]]

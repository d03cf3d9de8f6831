"""Sending at most once (tasks/delivery.py), with a real ledger, the file outbox and a real
SMTP server on loopback."""

from __future__ import annotations

import datetime as dt
import email
import threading
import time
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import select

from smtp_server import CollectingHandler, free_port, running_smtp_server
from tasks.delivery import deliver, mark_stale_uncertain, state_of
from tasks.ledger import FAILED, SENDING, SENT, UNCERTAIN, Delivery, Ledger
from tasks.mailer import MailError, OutboxMailer, SmtpMailer
from tasks.message import Address, OutgoingMessage, build_mime, message_id_for
from tasks.settings import SmtpSettings

CAMPAIGN = "energy-week-2023"
SENDER = Address("报送任务系统", "bulletin@example.com")


def message(key: str = f"{CAMPAIGN}/receipt/210100/1", to: str = "shenyang-jieneng@example.org") -> OutgoingMessage:
    return OutgoingMessage(key=key, to=(Address("张伟", to),), subject="【回执】已收到报送材料",
                           text="已收到。", html="<p>已收到。</p>")


@pytest.fixture
def outbox(tmp_path) -> OutboxMailer:
    return OutboxMailer(tmp_path / "outbox", SENDER)


def eml_files(mailer: OutboxMailer) -> list[Path]:
    return sorted(mailer.outbox_dir.glob("*.eml")) if mailer.outbox_dir.exists() else []


def row(ledger: Ledger, key: str) -> Delivery:
    with ledger.session() as s:
        return s.scalars(select(Delivery).where(Delivery.key == key)).one()


class Counting:
    """Wraps a mailer: counts sends, optionally slow, optionally failing the first n times."""

    def __init__(self, inner, *, delay: float = 0.0, fail: int = 0, uncertain: bool = False):
        self.inner, self.delay, self.fail, self.uncertain = inner, delay, fail, uncertain
        self.calls, self.message_ids = 0, []
        self.description = "counting"
        self._lock = threading.Lock()

    def send(self, msg: OutgoingMessage) -> str:
        with self._lock:
            self.calls += 1
            n = self.calls
        # the Message-ID this attempt puts on the wire
        self.message_ids.append(str(build_mime(msg, SENDER)["Message-ID"]))
        if self.delay:
            time.sleep(self.delay)
        if n <= self.fail:
            raise MailError("connection broke" if self.uncertain else "server refused", uncertain=self.uncertain)
        return self.inner.send(msg)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- at most once
def test_first_deliver_sends_second_skips(ledger, outbox):
    mailer = Counting(outbox)
    msg = message()
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt", unit_code="210100") == "sent"
    files = eml_files(outbox)
    assert len(files) == 1
    first_bytes, first_mtime = files[0].read_bytes(), files[0].stat().st_mtime_ns
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt", unit_code="210100") == "skipped"
    assert mailer.calls == 1
    assert eml_files(outbox) == files
    assert files[0].read_bytes() == first_bytes and files[0].stat().st_mtime_ns == first_mtime
    r = row(ledger, msg.key)
    assert r.state == SENT and r.attempts == 1 and r.sent_at is not None
    assert r.message_id == message_id_for(msg.key, "example.com")
    assert r.recipients == ["shenyang-jieneng@example.org"] and r.step == "receipt" and r.unit_code == "210100"
    parsed = email.message_from_bytes(first_bytes, policy=policy.default)
    assert parsed["Message-ID"] == r.message_id
    assert parsed["Auto-Submitted"] == "auto-generated"


def test_different_keys_each_sent(ledger, outbox):
    for code in ("210100", "210200", "210300"):
        assert deliver(ledger, outbox, message(f"{CAMPAIGN}/receipt/{code}/1"), campaign=CAMPAIGN,
                       step="receipt", unit_code=code) == "sent"
    assert len(eml_files(outbox)) == 3


def test_dry_run_writes_nothing(ledger, outbox):
    msg = message()
    assert deliver(ledger, outbox, msg, campaign=CAMPAIGN, step="receipt", dry_run=True) == "dry-run"
    assert eml_files(outbox) == []
    assert state_of(ledger, msg.key) is None
    # a dry run claims nothing: the real send still goes out, and a dry run afterwards says skipped
    assert deliver(ledger, outbox, msg, campaign=CAMPAIGN, step="receipt") == "sent"
    assert deliver(ledger, outbox, msg, campaign=CAMPAIGN, step="receipt", dry_run=True) == "skipped"
    assert len(eml_files(outbox)) == 1


# ---------------------------------------------------------------- failures
def test_failed_then_retried(ledger, outbox):
    mailer = Counting(outbox, fail=1)
    msg = message()
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "failed"
    r = row(ledger, msg.key)
    assert r.state == FAILED and "server refused" in r.error and r.sent_at is None
    assert eml_files(outbox) == []
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "sent"
    r = row(ledger, msg.key)
    assert r.state == SENT and r.attempts == 2 and r.error is None
    assert len(eml_files(outbox)) == 1
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "skipped"
    assert mailer.calls == 2


def test_uncertain_is_resent_only_on_request_with_same_message_id(ledger, outbox):
    mailer = Counting(outbox, fail=1, uncertain=True)
    msg = message()
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "uncertain"
    assert state_of(ledger, msg.key) == UNCERTAIN
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "skipped"
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "skipped"
    assert mailer.calls == 1 and eml_files(outbox) == []
    assert state_of(ledger, msg.key) == UNCERTAIN
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt", resend_uncertain=True) == "sent"
    assert mailer.calls == 2
    assert mailer.message_ids[0] == mailer.message_ids[1]
    (eml,) = eml_files(outbox)
    written = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert written["Message-ID"] == mailer.message_ids[0] == row(ledger, msg.key).message_id
    assert row(ledger, msg.key).attempts == 2
    # once sent, a resend request does nothing
    assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt", resend_uncertain=True) == "skipped"
    assert mailer.calls == 2


def test_resend_uncertain_does_not_touch_sent_or_sending(ledger, outbox):
    msg = message()
    assert deliver(ledger, outbox, msg, campaign=CAMPAIGN, step="receipt") == "sent"
    assert deliver(ledger, outbox, msg, campaign=CAMPAIGN, step="receipt", resend_uncertain=True) == "skipped"
    other = message(f"{CAMPAIGN}/receipt/210200/1")
    with ledger.session() as s:
        s.add(Delivery(key=other.key, campaign=CAMPAIGN, step="receipt", recipients=[], subject="x",
                       state=SENDING, attempts=1, claimed_at=dt.datetime.now(dt.timezone.utc)))
    assert deliver(ledger, outbox, other, campaign=CAMPAIGN, step="receipt", resend_uncertain=True) == "skipped"
    assert len(eml_files(outbox)) == 1


def test_mark_stale_uncertain(ledger):
    now = dt.datetime.now(dt.timezone.utc)
    rows = {"old": (CAMPAIGN, SENDING, now - dt.timedelta(hours=1)),
            "fresh": (CAMPAIGN, SENDING, now - dt.timedelta(minutes=1)),
            "old-sent": (CAMPAIGN, SENT, now - dt.timedelta(hours=1)),
            "other-campaign": ("other-2023", SENDING, now - dt.timedelta(hours=1))}
    with ledger.session() as s:
        for key, (camp, state, claimed) in rows.items():
            s.add(Delivery(key=key, campaign=camp, step="receipt", recipients=[], subject="s",
                           state=state, attempts=1, claimed_at=claimed))
    assert mark_stale_uncertain(ledger, CAMPAIGN) == ["old"]
    assert state_of(ledger, "old") == UNCERTAIN
    assert state_of(ledger, "fresh") == SENDING
    assert state_of(ledger, "old-sent") == SENT
    assert state_of(ledger, "other-campaign") == SENDING
    assert mark_stale_uncertain(ledger, CAMPAIGN) == []
    assert mark_stale_uncertain(ledger, CAMPAIGN, older_than=dt.timedelta(seconds=0)) == ["fresh"]


def test_concurrent_delivers_send_once(ledger, outbox):
    mailer = Counting(outbox, delay=0.3)
    msg = message()
    barrier = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=5)
            results.append(deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors
    assert sorted(results) == ["sent", "skipped"]
    assert mailer.calls == 1
    assert len(eml_files(outbox)) == 1
    assert row(ledger, msg.key).attempts == 1


# ---------------------------------------------------------------- real SMTP
def smtp_settings(host: str, port: int) -> SmtpSettings:
    return SmtpSettings(host=host, port=port, security="none", user=None, password=None, rate=None)


def test_smtp_mailer_via_deliver(ledger, smtp_server):
    msg = message()
    with SmtpMailer(smtp_settings(smtp_server.host, smtp_server.port), SENDER, timeout=10) as mailer:
        assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt", unit_code="210100") == "sent"
        assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt", unit_code="210100") == "skipped"
    (received,) = smtp_server.messages
    assert received.rcpt_tos == ["shenyang-jieneng@example.org"]
    assert received.mail_from == SENDER.email
    parsed = received.message()
    assert parsed["Message-ID"] == row(ledger, msg.key).message_id
    assert parsed["Subject"] == msg.subject
    assert row(ledger, msg.key).state == SENT


def test_smtp_refused_recipient_is_failed_then_retried(ledger):
    handler = CollectingHandler(refuse={"shenyang-jieneng@example.org"})
    msg = message()
    with running_smtp_server(handler=handler) as server:
        settings = smtp_settings(server.host, server.port)
        with SmtpMailer(settings, SENDER, timeout=10) as mailer:
            assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "failed"
        assert server.messages == []
        assert row(ledger, msg.key).state == FAILED
        handler.refuse.clear()
        with SmtpMailer(settings, SENDER, timeout=10) as mailer:
            assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "sent"
        assert len(server.messages) == 1


def test_smtp_server_down_is_failed_not_uncertain(ledger):
    settings = smtp_settings("127.0.0.1", free_port())  # nothing listens there
    with SmtpMailer(settings, SENDER, timeout=5) as mailer:
        assert deliver(ledger, mailer, message(), campaign=CAMPAIGN, step="receipt") == "failed"
    assert row(ledger, message().key).state == FAILED


# ---------------------------------------------------------------- a message that cannot be built
def test_config_refuses_an_address_the_mailer_cannot_send_to():
    """A non-ASCII address, which build_mime (hence every mailer) refuses, stops at config."""
    from pydantic import ValidationError

    from tasks.config import Contact
    with pytest.raises(ValidationError):
        Contact(name="张伟", email="张伟@example.org")
    with pytest.raises(ValueError):
        build_mime(message(to="张伟@example.org"), SENDER)


def test_unbuildable_message_is_failed_not_stuck_sending(ledger, outbox):
    msg = message(to="张伟@example.org")
    assert deliver(ledger, outbox, msg, campaign=CAMPAIGN, step="receipt") == "failed"
    assert state_of(ledger, msg.key) == FAILED

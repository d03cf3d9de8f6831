"""Sending at most once (tasks/mail/delivery.py), with a real ledger, the file outbox and a real
SMTP server on loopback."""

from __future__ import annotations

import datetime as dt
import email
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from email import policy
from pathlib import Path

import pytest
from smtp_server import CollectingHandler, free_port, running_smtp_server
from sqlalchemy import event, select, update

from tasks.core.ledger import FAILED, SENDING, SENT, UNCERTAIN, UNDELIVERABLE, Delivery, Ledger
from tasks.core.settings import SmtpSettings
from tasks.mail.delivery import deliver, deliver_many, mark_stale_uncertain, state_of
from tasks.mail.mailer import MailError, OutboxMailer, SmtpMailer
from tasks.mail.message import Address, OutgoingMessage, build_mime, message_id_for

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
        self.batch_size = 1
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

    def flush(self) -> None:
        self.inner.flush()

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


def test_smtp_refused_recipient_is_undeliverable_until_its_address_changes(ledger):
    """A 5xx refusal is permanent: the same message to the same address is never tried again,
    even once the server would take it; corrected to another address, it goes out."""
    handler = CollectingHandler(refuse={"shenyang-jieneng@example.org"})
    msg = message()
    with running_smtp_server(handler=handler) as server:
        settings = smtp_settings(server.host, server.port)
        with SmtpMailer(settings, SENDER, timeout=10) as mailer:
            assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "undeliverable"
        assert server.messages == []
        assert row(ledger, msg.key).state == UNDELIVERABLE and "550" in row(ledger, msg.key).error
        handler.refuse.clear()
        with SmtpMailer(settings, SENDER, timeout=10) as mailer:
            assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "undeliverable"
            assert server.messages == []
            corrected = message(to="shenyang-new@example.org")
            assert deliver(ledger, mailer, corrected, campaign=CAMPAIGN, step="receipt") == "sent"
        assert [m.rcpt_tos for m in server.messages] == [["shenyang-new@example.org"]]
        assert row(ledger, msg.key).recipients == ["shenyang-new@example.org"]


def test_smtp_temporary_refusal_is_failed_and_retried_by_the_next_run(ledger):
    handler = CollectingHandler(refuse={"shenyang-jieneng@example.org"})
    msg = message()
    with running_smtp_server(handler=handler) as server:
        handler.refuse_reply = "451 4.7.1 Try again later"
        settings = smtp_settings(server.host, server.port)
        with SmtpMailer(settings, SENDER, timeout=10) as mailer:
            assert deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt") == "failed"
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

    from tasks.core.config import Contact
    with pytest.raises(ValidationError):
        Contact(name="张伟", email="张伟@example.org")
    with pytest.raises(ValueError):
        build_mime(message(to="张伟@example.org"), SENDER)


def test_unbuildable_message_is_failed_not_stuck_sending(ledger, outbox):
    msg = message(to="张伟@example.org")
    assert deliver(ledger, outbox, msg, campaign=CAMPAIGN, step="receipt") == "failed"
    assert state_of(ledger, msg.key) == FAILED


# ---------------------------------------------------------------- batches (deliver_many)
class Outbox(OutboxMailer):
    """The real file outbox with knobs: batch size, refused or uncertain keys, an interrupt
    at the nth send, a slow send, and a flush whose folder has vanished."""

    def __init__(self, folder: Path, *, batch_size: int = 500, refuse=(), uncertain=(),
                 interrupt_at: int | None = None, delay: float = 0.0, lose_folder: bool = False):
        super().__init__(folder, SENDER)
        self.batch_size = batch_size
        self.refuse, self.uncertain_keys = set(refuse), set(uncertain)
        self.interrupt_at, self.delay, self.lose_folder = interrupt_at, delay, lose_folder
        self.sends: list[str] = []
        self.flushes = 0

    def send(self, msg: OutgoingMessage) -> str:
        self.sends.append(msg.key)
        if len(self.sends) == self.interrupt_at:
            raise KeyboardInterrupt
        if msg.key in self.refuse:
            raise MailError(f"server refused {msg.key}")
        if msg.key in self.uncertain_keys:
            raise MailError(f"connection broke while sending {msg.key}", uncertain=True)
        if self.delay:
            time.sleep(self.delay)
        return super().send(msg)

    def flush(self) -> None:
        self.flushes += 1
        if self.lose_folder:
            shutil.rmtree(self.outbox_dir)
        super().flush()


def receipts(n: int, start: int = 0) -> list[tuple[OutgoingMessage, str]]:
    return [(message(f"{CAMPAIGN}/receipt/{i}/1", to=f"unit{i}@example.org"), f"U{i}")
            for i in range(start, start + n)]


def states(ledger: Ledger) -> dict[str, tuple[str, int]]:
    with ledger.session() as s:
        return {r.key: (r.state, r.attempts) for r in s.scalars(select(Delivery))}


def test_deliver_many_in_chunks_one_transaction_each_way(ledger, tmp_path):
    mailer = Outbox(tmp_path / "outbox", batch_size=500)
    items = receipts(1200)
    commits: list[int] = []
    progress: list[tuple[int, int]] = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(ledger.engine, "commit", listener)
    try:
        outcomes = deliver_many(ledger, mailer, items, campaign=CAMPAIGN, step="receipt",
                                progress=lambda done, total: progress.append((done, total)))
    finally:
        event.remove(ledger.engine, "commit", listener)
    assert outcomes == ["sent"] * 1200
    assert len(commits) == 6  # per chunk: one claim, one record
    assert mailer.flushes == 3 and progress == [(500, 1200), (1000, 1200), (1200, 1200)]
    assert len(eml_files(mailer)) == 1200
    with ledger.session() as s:
        rows = list(s.scalars(select(Delivery)))
    assert len(rows) == 1200
    for r in rows:
        assert r.state == SENT and r.attempts == 1 and r.sent_at is not None and r.error is None
        assert r.message_id == message_id_for(r.key, "example.com")
        assert r.step == "receipt" and r.campaign == CAMPAIGN
    r = row(ledger, f"{CAMPAIGN}/receipt/7/1")
    assert r.unit_code == "U7" and r.recipients == ["unit7@example.org"]
    assert r.subject == "【回执】已收到报送材料"
    # a second run sends nothing and touches no file
    before = {f: f.stat().st_mtime_ns for f in eml_files(mailer)}
    again = Outbox(tmp_path / "outbox")
    assert deliver_many(ledger, again, items, campaign=CAMPAIGN, step="receipt") == ["skipped"] * 1200
    assert again.sends == [] and again.flushes == 0
    assert {f: f.stat().st_mtime_ns for f in eml_files(mailer)} == before


def test_deliver_many_mixed_chunk(ledger, tmp_path):
    items = receipts(8)
    keys = [m.key for m, _ in items]
    now = dt.datetime.now(dt.timezone.utc)
    with ledger.session() as s:  # earlier runs left these
        for key, state in ((keys[0], SENT), (keys[1], FAILED), (keys[2], UNCERTAIN), (keys[3], SENDING)):
            s.add(Delivery(key=key, campaign=CAMPAIGN, step="receipt", recipients=[], subject="x",
                           state=state, attempts=1, claimed_at=now, error="old error"))
    unbuildable = message(f"{CAMPAIGN}/receipt/bad/1", to="张伟@example.org")
    items = items + [items[4], (unbuildable, None)]  # key 4 twice; one that cannot be built
    mailer = Outbox(tmp_path / "outbox", refuse={keys[5]}, uncertain={keys[6]})
    outcomes = deliver_many(ledger, mailer, items, campaign=CAMPAIGN, step="receipt")
    assert outcomes == ["skipped", "sent", "skipped", "skipped", "sent", "failed", "uncertain", "sent",
                        "skipped", "failed"]
    assert mailer.sends == [keys[1], keys[4], keys[5], keys[6], keys[7], unbuildable.key]
    got = states(ledger)
    assert got[keys[0]] == (SENT, 1) and got[keys[1]] == (SENT, 2) and got[keys[2]] == (UNCERTAIN, 1)
    assert got[keys[3]] == (SENDING, 1) and got[keys[4]] == (SENT, 1)
    assert got[keys[5]] == (FAILED, 1) and got[keys[6]] == (UNCERTAIN, 1) and got[keys[7]] == (SENT, 1)
    assert got[unbuildable.key] == (FAILED, 1)
    assert row(ledger, keys[1]).error is None  # taken over: the old error is cleared
    assert "server refused" in row(ledger, keys[5]).error
    assert "connection broke" in row(ledger, keys[6]).error
    assert "ValueError" in row(ledger, unbuildable.key).error
    assert len(eml_files(mailer)) == 3
    # resend_uncertain takes the uncertain ones and the failed one; never sent or sending
    retry = Outbox(tmp_path / "outbox")
    outcomes = deliver_many(ledger, retry, items[:8], campaign=CAMPAIGN, step="receipt", resend_uncertain=True)
    assert outcomes == ["skipped", "skipped", "sent", "skipped", "skipped", "sent", "sent", "skipped"]
    assert sorted(retry.sends) == sorted([keys[2], keys[5], keys[6]])
    got = states(ledger)
    assert got[keys[2]] == (SENT, 2) and got[keys[5]] == (SENT, 2) and got[keys[6]] == (SENT, 2)
    assert got[keys[3]] == (SENDING, 1)


def test_deliver_many_dry_run_claims_nothing(ledger, tmp_path):
    items = receipts(5)
    mailer = Outbox(tmp_path / "outbox")
    deliver_many(ledger, mailer, items[:2], campaign=CAMPAIGN, step="receipt")
    dry = Outbox(tmp_path / "outbox", batch_size=1)
    outcomes = deliver_many(ledger, dry, items, campaign=CAMPAIGN, step="receipt", dry_run=True)
    assert outcomes == ["skipped", "skipped", "dry-run", "dry-run", "dry-run"]
    assert dry.sends == [] and len(states(ledger)) == 2 and len(eml_files(mailer)) == 2


def test_failed_flush_makes_the_chunk_uncertain(ledger, tmp_path):
    mailer = Outbox(tmp_path / "outbox", batch_size=3, lose_folder=True)
    outcomes = deliver_many(ledger, mailer, receipts(3), campaign=CAMPAIGN, step="receipt")
    assert outcomes == ["uncertain"] * 3
    assert all(st == (UNCERTAIN, 1) for st in states(ledger).values())
    assert "not made durable" in row(ledger, f"{CAMPAIGN}/receipt/0/1").error


def test_interrupt_mid_chunk_is_recorded(ledger, tmp_path):
    mailer = Outbox(tmp_path / "outbox", batch_size=5, interrupt_at=8)  # 3rd message of chunk 2
    with pytest.raises(KeyboardInterrupt):
        deliver_many(ledger, mailer, receipts(12), campaign=CAMPAIGN, step="receipt")
    got = {key.split("/")[2]: st for key, (st, _) in states(ledger).items()}
    assert got == {**{str(i): SENT for i in range(7)}, "7": UNCERTAIN, "8": FAILED, "9": FAILED}
    assert len(eml_files(mailer)) == 7
    # the next run sends what never went out, and leaves the one in flight to a person
    rerun = Outbox(tmp_path / "outbox", batch_size=5)
    outcomes = deliver_many(ledger, rerun, receipts(12), campaign=CAMPAIGN, step="receipt")
    assert rerun.sends == [f"{CAMPAIGN}/receipt/{i}/1" for i in (8, 9, 10, 11)]
    assert outcomes.count("sent") == 4 and state_of(ledger, f"{CAMPAIGN}/receipt/7/1") == UNCERTAIN


CRASHING_RUN = """
import os, sys
from pathlib import Path
from tasks.mail.delivery import deliver_many
from tasks.core.ledger import Ledger
from tasks.mail.mailer import OutboxMailer
from tasks.mail.message import Address, OutgoingMessage

class Crashing(OutboxMailer):
    batch_size = 5
    sends = 0
    def send(self, msg):
        Crashing.sends += 1
        if Crashing.sends == 8:
            os._exit(3)  # the process dies: no cleanup, no except, no finally
        return super().send(msg)

home = Path(sys.argv[1])
items = [(OutgoingMessage(key=f"energy-week-2023/receipt/{i}/1", to=(Address("张伟", f"unit{i}@example.org"),),
                          subject="【回执】已收到报送材料", text="已收到。", html="<p>已收到。</p>"), None)
         for i in range(12)]
deliver_many(Ledger(home), Crashing(home / "outbox", Address("报送任务系统", "bulletin@example.com")), items,
             campaign="energy-week-2023", step="receipt")
"""


def test_crash_leaves_one_chunk_sending_then_uncertain(ledger, home):
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", CRASHING_RUN, str(home)], cwd=root, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    got = {int(key.split("/")[2]): st for key, (st, _) in states(ledger).items()}
    assert got == {**{i: SENT for i in range(5)}, **{i: SENDING for i in range(5, 10)}}  # chunk 3 never claimed
    stale = mark_stale_uncertain(ledger, CAMPAIGN, older_than=dt.timedelta(0))
    assert sorted(int(k.split("/")[2]) for k in stale) == [5, 6, 7, 8, 9]
    outbox = Outbox(home / "outbox", batch_size=5)
    assert len(eml_files(outbox)) == 7  # 5 recorded, 2 written by the chunk that crashed
    items = receipts(12)
    assert deliver_many(ledger, outbox, items, campaign=CAMPAIGN, step="receipt").count("sent") == 2
    assert outbox.sends == [f"{CAMPAIGN}/receipt/10/1", f"{CAMPAIGN}/receipt/11/1"]
    written = {f.name: f.read_bytes() for f in eml_files(outbox)}
    resend = Outbox(home / "outbox", batch_size=5)
    outcomes = deliver_many(ledger, resend, items, campaign=CAMPAIGN, step="receipt", resend_uncertain=True)
    assert outcomes.count("sent") == 5 and len(eml_files(outbox)) == 12
    for f in eml_files(outbox):  # a resend carries the Message-ID of the copy that may be out
        if f.name in written:
            old = email.message_from_bytes(written[f.name], policy=policy.default)["Message-ID"]
            assert email.message_from_bytes(f.read_bytes(), policy=policy.default)["Message-ID"] == old


def claim_race(ledger, tmp_path, race: str) -> str:
    """Five receipts sent while another run (its own connection and transaction) claims the
    third key between this run's look-up and its write: by inserting it, or (``race="retry"``)
    by retrying it after a failure. Checks what must hold on any database; gives the key."""
    items = receipts(5)
    stolen = items[2][0].key
    now = dt.datetime.now(dt.timezone.utc)
    if race == "retry":
        with ledger.session() as s:
            s.add(Delivery(key=stolen, campaign=CAMPAIGN, step="receipt", recipients=[], subject="x",
                           state=FAILED, attempts=1, claimed_at=now))
    fired: list[str] = []

    def other_run(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if fired or not statement.startswith(("INSERT INTO deliveries", "UPDATE deliveries")):
            return
        fired.append(statement)
        with Ledger(ledger.home, url=ledger.url).session() as s:
            if race == "insert":
                s.add(Delivery(key=stolen, campaign=CAMPAIGN, step="receipt", recipients=[], subject="x",
                               state=SENDING, attempts=1, claimed_at=now))
            else:
                s.execute(update(Delivery).where(Delivery.key == stolen).values(state=SENDING, attempts=2))

    event.listen(ledger.engine, "before_cursor_execute", other_run)
    try:
        mailer = Outbox(tmp_path / "outbox")
        outcomes = deliver_many(ledger, mailer, items, campaign=CAMPAIGN, step="receipt")
    finally:
        event.remove(ledger.engine, "before_cursor_execute", other_run)
    assert fired
    assert outcomes == ["sent", "sent", "skipped", "sent", "sent"]
    assert stolen not in mailer.sends and len(mailer.sends) == 4
    assert states(ledger)[stolen] == (SENDING, 1 if race == "insert" else 2)
    return stolen


def test_on_sqlite_no_other_run_can_claim_between_the_lookup_and_the_write(ledger, tmp_path):
    """SQLite: the claim's transaction holds the write lock from its start (BEGIN IMMEDIATE),
    so another process cannot claim a key between this run's look-up and its write; it waits
    (here it gives up after 0.2 s). The race itself is tested on PostgreSQL, where it can happen
    (tests/test_postgres.py)."""
    items = receipts(5)
    blocked: list[str] = []

    def other_run(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if blocked or not statement.startswith("INSERT INTO deliveries"):
            return
        other = sqlite3.connect(ledger.home / "ledger.db", timeout=0.2)
        try:
            other.execute("INSERT INTO deliveries (key, campaign, step, recipients, subject, state, attempts, "
                          "claimed_at) VALUES (?, ?, 'receipt', '[]', 'x', 'sending', 1, '2023-01-01')",
                          (items[2][0].key, CAMPAIGN))
            other.commit()
            blocked.append("no: the other run claimed")
        except sqlite3.OperationalError as exc:
            blocked.append(str(exc))
        finally:
            other.close()

    event.listen(ledger.engine, "before_cursor_execute", other_run)
    try:
        outcomes = deliver_many(ledger, Outbox(tmp_path / "outbox"), items, campaign=CAMPAIGN, step="receipt")
    finally:
        event.remove(ledger.engine, "before_cursor_execute", other_run)
    assert blocked == ["database is locked"]
    assert outcomes == ["sent"] * 5


def two_runs_at_once(ledger, items: list, mailers: list) -> list[list[str]]:
    """Two ``deliver_many`` runs over the same items, in opposite orders, started together in
    two threads; their outcomes (any exception is raised here)."""
    barrier = threading.Barrier(2)
    results: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=5)
            results[n] = deliver_many(ledger, mailers[n], items if n == 0 else items[::-1],
                                      campaign=CAMPAIGN, step="receipt")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def test_two_batched_runs_at_once_send_each_key_once(ledger, tmp_path):
    items = receipts(300)
    mailers = [Outbox(tmp_path / "outbox", batch_size=25, delay=0.001) for _ in range(2)]
    results = two_runs_at_once(ledger, items, mailers)
    assert Counter(results[0] + results[1]) == {"sent": 300, "skipped": 300}
    sends = mailers[0].sends + mailers[1].sends
    assert sorted(sends) == sorted(m.key for m, _ in items)  # each key handed over once
    assert all(st == (SENT, 1) for st in states(ledger).values()) and len(eml_files(mailers[0])) == 300

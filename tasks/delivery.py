"""Sending with the ledger as guard: each message key goes out at most once.

A message is claimed (``sending``) in the ledger before the SMTP conversation and marked
``sent`` after it. The unique key makes a second run, or two runs at once, skip it. A claim
left in ``sending`` by a crash becomes ``uncertain``: reported, resent only on request, with
the same Message-ID.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .ledger import FAILED, SENDING, SENT, UNCERTAIN, Delivery, Ledger
from .mailer import MailError, Mailer
from .message import OutgoingMessage, recipients

STALE_AFTER = dt.timedelta(minutes=15)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _claim(ledger: Ledger, msg: OutgoingMessage, campaign: str, step: str, unit_code: str | None,
           resend_uncertain: bool) -> bool:
    """Insert the key as ``sending``; or take over a failed (or, on request, uncertain) one."""
    try:
        with ledger.session() as s:
            s.add(Delivery(key=msg.key, campaign=campaign, step=step, unit_code=unit_code,
                           recipients=recipients(msg), subject=msg.subject, state=SENDING,
                           attempts=1, claimed_at=_utcnow()))
        return True
    except IntegrityError:
        retry_from = (FAILED, UNCERTAIN) if resend_uncertain else (FAILED,)
        with ledger.session() as s:
            taken = s.execute(update(Delivery).where(Delivery.key == msg.key,
                                                     Delivery.state.in_(retry_from))
                              .values(state=SENDING, claimed_at=_utcnow(),
                                      attempts=Delivery.attempts + 1, error=None))
            return taken.rowcount == 1


def deliver(ledger: Ledger, mailer: Mailer, msg: OutgoingMessage, *, campaign: str, step: str,
            unit_code: str | None = None, dry_run: bool = False,
            resend_uncertain: bool = False) -> str:
    """Send one message at most once. Returns sent | skipped | failed | uncertain | dry-run."""
    if dry_run:
        return "skipped" if state_of(ledger, msg.key) == SENT else "dry-run"
    if not _claim(ledger, msg, campaign, step, unit_code, resend_uncertain):
        return "skipped"
    try:
        message_id = mailer.send(msg)
    except MailError as exc:
        # after the message data went out, the server may have it: never resend on our own
        state = UNCERTAIN if exc.uncertain else FAILED
        with ledger.session() as s:
            s.execute(update(Delivery).where(Delivery.key == msg.key)
                      .values(state=state, error=str(exc)[:500]))
        return "uncertain" if exc.uncertain else "failed"
    except Exception as exc:  # noqa: BLE001 - e.g. a message that cannot be built: nothing went out
        with ledger.session() as s:
            s.execute(update(Delivery).where(Delivery.key == msg.key)
                      .values(state=FAILED, error=f"{type(exc).__name__}: {exc}"[:500]))
        return "failed"
    with ledger.session() as s:
        s.execute(update(Delivery).where(Delivery.key == msg.key)
                  .values(state=SENT, sent_at=_utcnow(), message_id=message_id))
    return "sent"


def state_of(ledger: Ledger, key: str) -> str | None:
    with ledger.session() as s:
        return s.scalar(select(Delivery.state).where(Delivery.key == key))


def mark_stale_uncertain(ledger: Ledger, campaign: str, older_than: dt.timedelta = STALE_AFTER) -> list[str]:
    """Claims left in ``sending`` (a crash mid-send) become ``uncertain``; return their keys."""
    cutoff = _utcnow() - older_than
    with ledger.session() as s:
        keys = list(s.scalars(select(Delivery.key).where(
            Delivery.campaign == campaign, Delivery.state == SENDING, Delivery.claimed_at < cutoff)))
        if keys:
            s.execute(update(Delivery).where(Delivery.key.in_(keys)).values(state=UNCERTAIN))
    return keys

"""Sending with the ledger as guard: each message key goes out at most once.

A message is claimed (``sending``) in the ledger before it is handed to the mailer and
marked afterwards: ``sent`` (with its Message-ID), ``failed`` (nothing went out, for a reason
that may pass: the next run retries it), ``undeliverable`` (the server refused it for good: tried
again only when its recipients have changed, i.e. an address was corrected) or ``uncertain``
(it may have gone out: reported, resent only on request, with the same Message-ID). When the
server cannot be reached or logged into, the run stops trying: the rest is ``failed``. The
unique key on ``deliveries.key`` makes a second run, or two runs at once, skip a key that is
already claimed.

``deliver_many`` works in chunks of ``mailer.batch_size`` messages (500 for the file outbox,
1 for SMTP). For each chunk:

1. one transaction claims the chunk: new keys are inserted as ``sending`` (one executemany),
   ``failed`` keys (and ``uncertain`` ones with ``resend_uncertain``) go back to ``sending``
   with ``attempts + 1``, every other key is ``skipped``. If another run claimed one of these
   keys in between (unique-key violation, or a failed row that is no longer failed), that
   transaction is rolled back and the chunk is claimed one key at a time instead;
2. each claimed message is sent;
3. ``mailer.flush()`` makes the chunk durable (the outbox syncs its file system once); if it
   fails, the chunk's messages become ``uncertain``;
4. one transaction records the outcomes (executemany).

Crash window: a crash between steps 1 and 4 leaves at most one chunk in ``sending`` (one
message with SMTP). Each claim names its process (``claimed_by``: host, pid and the process's
start time), so ``mark_stale_uncertain`` turns a claim whose process is gone into ``uncertain``
at once when it was made on this host, and any claim older than ``STALE_AFTER`` (made on another
host, whose processes cannot be seen from here). An exception that escapes the mailer mid-chunk (KeyboardInterrupt, ...) is
recorded on the way out when possible: the messages sent before it are flushed and marked
``sent``, the one in flight ``uncertain``, the ones after it ``failed`` (never sent).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..core import faults
from ..core.ledger import FAILED, SENDING, SENT, UNCERTAIN, UNDELIVERABLE, Delivery, Ledger
from .mailer import Mailer, MailError
from .message import OutgoingMessage, recipients

STALE_AFTER = dt.timedelta(minutes=15)
DRY_RUN_CHUNK = 500  # keys looked up per query in a dry run

_T = Delivery.__table__
_MARK_SENT = (update(_T).where(_T.c.key == bindparam("b_key"))
              .values(state=SENT, sent_at=bindparam("b_at", type_=_T.c.sent_at.type),
                      message_id=bindparam("b_mid")))
_MARK_NOT_SENT = (update(_T).where(_T.c.key == bindparam("b_key"))
                  .values(state=bindparam("b_state"), error=bindparam("b_error")))

Item = tuple[OutgoingMessage, str | None]  # (message, unit code)


class _Contended(Exception):
    """Another run claimed one of the chunk's keys while this one was claiming."""


class _Unreachable(Exception):
    """The mailer cannot reach its server (or outbox): the run stops sending."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _start_of(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None when unknown/gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]  # field 22; the name in () may hold spaces


_HOST = socket.gethostname()
_me: tuple[int, str] | None = None


def process_identity() -> str:
    """``host:pid:start`` of this process (a forked child gets its own)."""
    global _me
    pid = os.getpid()
    if _me is None or _me[0] != pid:
        _me = (pid, f"{_HOST}:{pid}:{_start_of(pid) or '?'}")
    return _me[1]


def claimant_gone(claimed_by: str | None) -> bool:
    """The claim was made on this host by a process that no longer runs."""
    host, _, rest = (claimed_by or "").partition(":")
    pid, _, start = rest.partition(":")
    if host != _HOST or not pid.isdigit() or start == "?":
        return False
    return _start_of(int(pid)) != start


def _row(msg: OutgoingMessage, campaign: str, step: str, unit_code: str | None, now: dt.datetime) -> dict:
    return dict(key=msg.key, campaign=campaign, step=step, unit_code=unit_code,
                recipients=recipients(msg), subject=msg.subject, state=SENDING, attempts=1,
                claimed_at=now, claimed_by=process_identity())


def _claim_one(ledger: Ledger, msg: OutgoingMessage, campaign: str, step: str, unit_code: str | None,
               retry_from: tuple[str, ...]) -> bool:
    """Insert the key as ``sending``; or take over a failed (or, on request, uncertain) one."""
    try:
        with ledger.session() as s:
            s.execute(insert(_T), [_row(msg, campaign, step, unit_code, _utcnow())])
        return True
    except IntegrityError:
        with ledger.session() as s:
            taken = s.execute(update(_T).where(_T.c.key == msg.key, _T.c.state.in_(retry_from))
                              .values(state=SENDING, claimed_at=_utcnow(), claimed_by=process_identity(),
                                      attempts=_T.c.attempts + 1, error=None))
            return taken.rowcount == 1


def _claim_chunk(ledger: Ledger, chunk: list[Item], campaign: str, step: str,
                 retry_from: tuple[str, ...]) -> list[str]:
    """Claim the chunk's keys in one transaction: per item ``claimed``, ``skipped`` (sent,
    being sent, uncertain, or twice in the chunk) or ``undeliverable`` (refused for good, to the
    same recipients)."""
    try:
        with ledger.session() as s:
            keys = list({msg.key: None for msg, _ in chunk})
            known = {k: (st, rc) for k, st, rc in s.execute(
                select(_T.c.key, _T.c.state, _T.c.recipients).where(_T.c.key.in_(keys))).all()}
            now = _utcnow()
            claimed: list[str] = []
            new_rows: list[dict] = []
            retry: list[str] = []
            corrected: dict[str, list[str]] = {}  # undeliverable key → its new recipients
            seen: set[str] = set()
            for msg, unit in chunk:
                state, before = known.get(msg.key, (None, None))
                if msg.key in seen:  # the same key twice in one call: sent once
                    claimed.append("skipped")
                elif state is None:
                    new_rows.append(_row(msg, campaign, step, unit, now))
                    claimed.append("claimed")
                elif state in retry_from:
                    retry.append(msg.key)
                    claimed.append("claimed")
                elif state == UNDELIVERABLE and sorted(recipients(msg)) != sorted(before or []):
                    corrected[msg.key] = recipients(msg)
                    claimed.append("claimed")
                else:
                    claimed.append("undeliverable" if state == UNDELIVERABLE else "skipped")
                seen.add(msg.key)
            again = {"state": SENDING, "claimed_at": now, "claimed_by": process_identity(),
                     "attempts": _T.c.attempts + 1, "error": None}
            if retry:
                taken = s.execute(update(_T).where(_T.c.key.in_(retry), _T.c.state.in_(retry_from)).values(**again))
                if taken.rowcount != len(retry):
                    raise _Contended
            for key, rcpts in corrected.items():
                taken = s.execute(update(_T).where(_T.c.key == key, _T.c.state == UNDELIVERABLE)
                                  .values(**again, recipients=rcpts))
                if taken.rowcount != 1:
                    raise _Contended
            if new_rows:
                # in key order, so two runs claiming the same keys cannot deadlock; an
                # IntegrityError if another run inserted one first
                s.execute(insert(_T), sorted(new_rows, key=lambda r: r["key"]))
        return claimed
    except (IntegrityError, _Contended):
        seen = set()
        out = []
        for msg, unit in chunk:
            out.append("claimed" if msg.key not in seen and _claim_one(ledger, msg, campaign, step, unit, retry_from)
                       else "skipped")
            seen.add(msg.key)
        return out


def _record(ledger: Ledger, sent: list[tuple[str, str]], not_sent: list[tuple[str, str, str]]) -> None:
    """One transaction: (key, message_id) become sent; (key, state, error) failed/uncertain."""
    if not sent and not not_sent:
        return
    with ledger.session() as s:
        if sent:
            now = _utcnow()
            s.execute(_MARK_SENT, [{"b_key": k, "b_mid": mid, "b_at": now} for k, mid in sent])
        if not_sent:
            s.execute(_MARK_NOT_SENT, [{"b_key": k, "b_state": st, "b_error": err}
                                       for k, st, err in not_sent])


def _send_chunk(ledger: Ledger, mailer: Mailer, chunk: list[Item], claims: list[str]) -> list[str]:
    """Send the claimed items; the others keep their claim outcome. Raises :class:`_Unreachable`
    (after recording the chunk) when the mailer cannot reach its server."""
    outcomes = ["skipped" if c == "claimed" else c for c in claims]
    sent: list[tuple[int, str]] = []  # (index, Message-ID)
    not_sent: dict[int, tuple[str, str]] = {}  # index → (state, error)
    todo = [i for i, c in enumerate(claims) if c == "claimed"]
    unreachable: MailError | None = None

    def finish() -> None:
        nonlocal sent
        flush = getattr(mailer, "flush", None)
        if sent and flush is not None:
            try:
                flush()
            except Exception as exc:  # noqa: BLE001 - written, but maybe not durable
                error = f"sent but not made durable: {exc}"[:500]
                not_sent.update((i, (UNCERTAIN, error)) for i, _ in sent)
                sent = []
        faults.reached("mark")
        _record(ledger, [(chunk[i][0].key, mid) for i, mid in sent],
                [(chunk[i][0].key, st, err) for i, (st, err) in not_sent.items()])
        for i, _ in sent:
            outcomes[i] = "sent"
        for i, (st, _) in not_sent.items():
            outcomes[i] = {UNCERTAIN: "uncertain", UNDELIVERABLE: "undeliverable"}.get(st, "failed")

    n = 0
    try:
        for n, i in enumerate(todo):
            try:
                faults.reached("smtp")
                sent.append((i, mailer.send(chunk[i][0])))
                faults.reached("sent")
            except MailError as exc:
                # after the message data went out, the server may have it: never resend on our own
                state = UNCERTAIN if exc.uncertain else UNDELIVERABLE if exc.permanent else FAILED
                not_sent[i] = (state, str(exc)[:500])
                if exc.unreachable:
                    unreachable = exc
                    not_sent.update((j, (FAILED, f"not tried: {exc}"[:500])) for j in todo[n + 1:])
                    break
            except Exception as exc:  # noqa: BLE001 - e.g. a message that cannot be built: nothing went out
                not_sent[i] = (FAILED, f"{type(exc).__name__}: {exc}"[:500])
    except BaseException as exc:  # interrupted: record what is known, then let it go on
        not_sent[todo[n]] = (UNCERTAIN, f"interrupted while sending: {type(exc).__name__}: {exc}"[:500])
        not_sent.update((i, (FAILED, "not sent: interrupted")) for i in todo[n + 1:])
        try:
            finish()
        except BaseException:  # noqa: BLE001 - the claims stay 'sending' and become uncertain
            pass
        raise
    finish()
    if unreachable is not None:
        raise _Unreachable(outcomes) from unreachable
    return outcomes


def _dry_run(ledger: Ledger, chunk: list[Item]) -> list[str]:
    with ledger.reading() as s:
        sent = set(s.scalars(select(_T.c.key).where(_T.c.key.in_(list({m.key: None for m, _ in chunk})),
                                                    _T.c.state == SENT)))
    return ["skipped" if msg.key in sent else "dry-run" for msg, _ in chunk]


def deliver_many(ledger: Ledger, mailer: Mailer, items: Iterable[Item], *, campaign: str, step: str,
                 dry_run: bool = False, resend_uncertain: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Send each (message, unit code) at most once, in chunks of ``mailer.batch_size``.

    Returns one outcome per item, in order: sent | skipped | failed | uncertain | undeliverable
    | dry-run. A dry run claims nothing: ``skipped`` if the key was sent, else ``dry-run``.
    When the server cannot be reached, the items not yet tried are ``failed`` without being
    claimed. ``progress`` is called with (items done, items in all) after each chunk."""
    items = list(items)
    retry_from = (FAILED, UNCERTAIN) if resend_uncertain else (FAILED,)
    size = max(1, int(getattr(mailer, "batch_size", 1) or 1))  # a mailer without it: one at a time
    if dry_run:
        size = max(size, DRY_RUN_CHUNK)
    outcomes: list[str] = []
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        if dry_run:
            outcomes += _dry_run(ledger, chunk)
        else:
            claims = _claim_chunk(ledger, chunk, campaign, step, retry_from)
            faults.reached("claim")
            try:
                outcomes += _send_chunk(ledger, mailer, chunk, claims) if "claimed" in claims else claims
            except _Unreachable as stop:
                outcomes += stop.args[0]
                outcomes += ["failed"] * (len(items) - len(outcomes))
                break
        if progress is not None:
            progress(len(outcomes), len(items))
    return outcomes


def deliver(ledger: Ledger, mailer: Mailer, msg: OutgoingMessage, *, campaign: str, step: str,
            unit_code: str | None = None, dry_run: bool = False,
            resend_uncertain: bool = False) -> str:
    """Send one message at most once. Returns sent | skipped | failed | uncertain |
    undeliverable | dry-run."""
    return deliver_many(ledger, mailer, [(msg, unit_code)], campaign=campaign, step=step,
                        dry_run=dry_run, resend_uncertain=resend_uncertain)[0]


def state_of(ledger: Ledger, key: str) -> str | None:
    with ledger.session() as s:
        return s.scalar(select(Delivery.state).where(Delivery.key == key))


def mark_stale_uncertain(ledger: Ledger, campaign: str, older_than: dt.timedelta = STALE_AFTER) -> list[str]:
    """Claims left in ``sending`` by a crash become ``uncertain``: at once when their process is
    gone (this host), else once older than *older_than*; return their keys."""
    cutoff = _utcnow() - older_than
    with ledger.session() as s:
        rows = s.execute(select(Delivery.key, Delivery.claimed_at, Delivery.claimed_by).where(
            Delivery.campaign == campaign, Delivery.state == SENDING)).all()
        keys = [key for key, at, by in rows if at < cutoff or claimant_gone(by)]
        for i in range(0, len(keys), 500):
            s.execute(update(Delivery).where(Delivery.key.in_(keys[i:i + 500]), Delivery.state == SENDING)
                      .values(state=UNCERTAIN))
    return keys


def undeliverable(ledger: Ledger, campaign: str, step: str | None = None) -> list[tuple[str, list[str], str]]:
    """(key, recipients, the server's reply) of every message refused for good, by key."""
    with ledger.reading() as s:
        q = select(Delivery.key, Delivery.recipients, Delivery.error).where(
            Delivery.campaign == campaign, Delivery.state == UNDELIVERABLE)
        if step:
            q = q.where(Delivery.step == step)
        return [(k, list(r or []), e or "") for k, r, e in s.execute(q.order_by(Delivery.key))]


def outcomes_since(ledger: Ledger, keys: list[str], since: dt.datetime,
                   sent_here: set[str] | None = None) -> dict[str, int]:
    """What became of each key of a run that started at *since*, however many attempts it took:
    sent (by this run), skipped (sent before it, or being sent by another run), failed (also a
    key never claimed: the server was unreachable), uncertain, undeliverable. *sent_here*: the
    keys this run itself sent; without it, a key sent since *since* counts as this run's, which
    over-counts when another run overlapped it."""
    found = delivery_states(ledger, keys)
    counts: dict[str, int] = {}
    for key in keys:
        state, sent_at, _ = found.get(key, (FAILED, None, None))
        if state == SENT:
            ours = key in sent_here if sent_here is not None else sent_at is not None and sent_at >= since
            outcome = "sent" if ours else "skipped"
        else:
            outcome = "skipped" if state == SENDING else state
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def delivery_states(ledger: Ledger, keys: list[str]) -> dict[str, tuple[str, dt.datetime | None, str | None]]:
    """key → (state, sent_at, error) for the keys the ledger has."""
    found: dict[str, tuple[str, dt.datetime | None, str | None]] = {}
    unique = list(dict.fromkeys(keys))
    with ledger.reading() as s:
        for i in range(0, len(unique), 500):
            found.update((k, (st, at, err)) for k, st, at, err in s.execute(
                select(_T.c.key, _T.c.state, _T.c.sent_at, _T.c.error).where(_T.c.key.in_(unique[i:i + 500]))))
    return found

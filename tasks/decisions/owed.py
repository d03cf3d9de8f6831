"""Messages the ledger owes: receipts and the coordinators' notice lines.

A decision that makes a message due writes it here in the decision's own transaction (its
delivery key and what it is built from); it stays until a delivery of that key is ``sent``.
So a run killed after its decisions and before its mail leaves the mail owed, and the next run
sends it; a ``failed`` one is retried by the next run, an ``uncertain`` one resent on request
(``--resend-uncertain``, same Message-ID).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import delete, exists, select

from ..core.ledger import SENT, Delivery, Ledger, OwedMessage, bulk_insert, db_rows
from .outcome import Outcome

RECEIPT, NOTICE = "receipt", "notice"
_COLUMNS = ("campaign", "kind", "key", "submission_id", "payload", "created_at")


def receipt_key(campaign: str, outcome: Outcome) -> str:
    return f"{campaign}/receipt/{outcome.submission_id}/{outcome.state}"


def outcome_payload(outcome: Outcome) -> dict:
    data = dataclasses.asdict(outcome)
    data["received_at"] = outcome.received_at.isoformat() if outcome.received_at else None
    return data


def outcome_from(payload: dict) -> Outcome:
    data = dict(payload)
    data["received_at"] = dt.datetime.fromisoformat(data["received_at"]) if data.get("received_at") else None
    return Outcome(**data)


def owe_rows(campaign: str, outcomes: list[Outcome], lines: dict[int, list[str]], now: dt.datetime) -> list[dict]:
    """Owed rows for *outcomes*' receipts and for the notice *lines* (by submission id)."""
    rows = [dict(campaign=campaign, kind=RECEIPT, key=receipt_key(campaign, o), submission_id=o.submission_id,
                 payload=outcome_payload(o), created_at=now) for o in outcomes]
    rows += [dict(campaign=campaign, kind=NOTICE, key=f"{campaign}/notice-line/{sid}/{i}", submission_id=sid,
                  payload={"line": line}, created_at=now)
             for sid, texts in lines.items() for i, line in enumerate(texts or [])]
    return rows


def owe(conn, rows: list[dict]) -> None:
    """Write owed rows on *conn*, inside the caller's transaction (one executemany); a key
    already owed is left as it is."""
    if not rows:
        return
    table = OwedMessage.__table__
    known = set(conn.execute(select(table.c.key).where(table.c.key.in_([r["key"] for r in rows]))).scalars())
    fresh = [r for r in rows if r["key"] not in known]
    bulk_insert(conn, table, _COLUMNS, db_rows(conn, table, _COLUMNS, fresh))


def owed(ledger: Ledger, campaign: str, kind: str, *, after: int = 0, limit: int | None = None,
         ) -> list[OwedMessage]:
    """What is still owed, oldest first (``after``/``limit``: one page of it, by row id)."""
    with ledger.reading() as s:
        return list(s.scalars(select(OwedMessage).where(OwedMessage.campaign == campaign, OwedMessage.kind == kind,
                                                        OwedMessage.id > after)
                              .order_by(OwedMessage.id).limit(limit)))


def settle(ledger: Ledger, campaign: str) -> None:
    """Forget what has been sent."""
    with ledger.session() as s:
        s.execute(delete(OwedMessage).where(OwedMessage.campaign == campaign, exists().where(
            Delivery.key == OwedMessage.key, Delivery.state == SENT)))


def forgive(ledger: Ledger, keys: list[str]) -> None:
    """Forget what nobody can be sent (a stranger's mail, a file nobody can be told about)."""
    with ledger.session() as s:
        for i in range(0, len(keys), 500):
            s.execute(delete(OwedMessage).where(OwedMessage.key.in_(keys[i:i + 500])))

"""What one campaign's round recorded, read by another step: each unit's latest accepted
figures (what a later round compares with) and each unit's timeline (when its returns came).

Plain columns and frames, no ORM objects: a national round has hundreds of thousands of units.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import func, select

from .ledger import ACCEPTED, Ledger, Submission, Value


def latest_accepted_numbers(ledger: Ledger, campaign: str) -> pd.DataFrame:
    """Index unit code, one float column per counted field: the figures of each unit's latest
    accepted submission in *campaign* (a blank figure is NaN; a unit with none is absent)."""
    latest = (select(func.max(Submission.id).label("sid"))
              .where(Submission.campaign == campaign, Submission.state == ACCEPTED,
                     Submission.unit_code.is_not(None))
              .group_by(Submission.unit_code).subquery())
    with ledger.reading() as s:
        units = s.execute(select(Submission.id, Submission.unit_code)
                          .join(latest, latest.c.sid == Submission.id)).all()
        rows = s.execute(select(Value.submission_id, Value.field, Value.number)
                         .join(latest, latest.c.sid == Value.submission_id)
                         .where(Value.number.is_not(None))).all()
    unit_of = dict(units)
    index = pd.Index(sorted(unit_of.values()), name="unit")
    if not rows:
        return pd.DataFrame(index=index, dtype="float64")
    frame = pd.DataFrame(rows, columns=["sid", "field", "number"])
    frame["unit"] = frame["sid"].map(unit_of)
    return (frame.pivot_table(index="unit", columns="field", values="number", aggfunc="first")
            .reindex(index).astype("float64"))


@dataclass(frozen=True)
class Timeline:
    """When one unit's returns came: its first (any outcome) and its latest accepted one."""

    first: dt.datetime
    accepted: dt.datetime | None  # received time of the submission that counts, if any


def unit_timelines(ledger: Ledger, campaign: str) -> dict[str, Timeline]:
    """Every unit that sent something identified as its return in *campaign*."""
    with ledger.reading() as s:
        rows = s.execute(select(Submission.id, Submission.unit_code, Submission.received_at, Submission.state)
                         .where(Submission.campaign == campaign, Submission.unit_code.is_not(None),
                                Submission.version.is_not(None))
                         .order_by(Submission.id)).all()
    first: dict[str, dt.datetime] = {}
    accepted: dict[str, dt.datetime] = {}
    for _sid, unit, received, state in rows:
        first[unit] = min(first.get(unit, received), received)
        if state == ACCEPTED:
            accepted[unit] = received  # later ids win, as in the bulletin's merge
    return {u: Timeline(t, accepted.get(u)) for u, t in first.items()}


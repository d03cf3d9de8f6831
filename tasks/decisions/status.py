"""Completeness of a campaign, read straight from the ledger (no Prefect needed)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from ..bulletin.approval import chain_state
from ..core.config import Config
from ..core.ledger import (
    ACCEPTED,
    NEEDS_EXPLANATION,
    QUARANTINED,
    REJECTED,
    UNCERTAIN,
    UNDELIVERABLE,
    Bulletin,
    Delivery,
    Ledger,
    Submission,
    SubmissionFile,
)

_UNIT_STATES = (ACCEPTED, REJECTED, NEEDS_EXPLANATION)


def unit_state(subs: list[Submission]) -> str:
    """An accepted return counts until a newer one is accepted; a rejected correction takes
    nothing away. Otherwise the latest decided submission's state."""
    if any(s.state == ACCEPTED for s in subs):
        return ACCEPTED
    decided = [s for s in subs if s.state in (REJECTED, NEEDS_EXPLANATION)]
    return decided[-1].state if decided else "missing"


def completeness(ledger: Ledger, config: Config, now: dt.datetime) -> dict:
    """The ``status --json`` object of the brief."""
    camp = config.campaign
    deadline = camp.calendar.deadline_at
    with ledger.reading() as s:
        # the columns used here only: whole rows would decode every errors/warnings JSON
        subs = s.execute(select(Submission.id, Submission.unit_code, Submission.version, Submission.state,
                                Submission.received_at).where(Submission.campaign == camp.id)
                         .order_by(Submission.received_at, Submission.id)).all()
        latest = s.scalars(select(Bulletin).where(Bulletin.campaign == camp.id)
                           .order_by(Bulletin.version.desc()).limit(1)).first()
        uncertain = list(s.scalars(select(Delivery.key).where(
            Delivery.campaign == camp.id, Delivery.state == UNCERTAIN)))
        undeliverable = list(s.scalars(select(Delivery.key).where(
            Delivery.campaign == camp.id, Delivery.state == UNDELIVERABLE)))
        signed = set(s.scalars(select(SubmissionFile.submission_id).join(
            Submission, Submission.id == SubmissionFile.submission_id).where(
            Submission.campaign == camp.id, SubmissionFile.role == "signed")))
    by_unit: dict[str, list] = {}
    for sub in subs:
        if sub.unit_code and sub.version is not None:
            by_unit.setdefault(sub.unit_code, []).append(sub)
    units, counts = [], {k: 0 for k in _UNIT_STATES}
    missing, late = [], []
    for code, name in zip(config.units.codes, config.units.names):
        mine = by_unit.get(code, [])
        state = unit_state(mine)
        if state in counts:
            counts[state] += 1
        else:
            missing.append(code)
        if mine and mine[0].received_at > deadline:
            late.append(code)
        counted = next((x for x in reversed(mine) if x.state == ACCEPTED), mine[-1] if mine else None)
        units.append({
            "code": code, "name": name, "state": state,
            "submitted_at": counted.received_at.astimezone(camp.calendar.tz).isoformat() if counted else None,
            "version": len(mine) or None,
            "signed_copy": counted is not None and counted.id in signed,  # a stamped PDF scan came with it
        })
    used = set(latest.submission_ids) if latest else set()
    current = {x.id for x in subs if x.state == ACCEPTED}
    return {
        "campaign": camp.id,
        "now": now.astimezone(camp.calendar.tz).isoformat(),
        "deadline": deadline.isoformat(),
        "expected": len(config.units),
        "accepted": counts[ACCEPTED],
        "rejected": counts[REJECTED],
        "needs_explanation": counts[NEEDS_EXPLANATION],
        "quarantined": sum(1 for x in subs if x.state == QUARANTINED),
        "missing": missing,
        "late": late,
        "latest_bulletin": None if latest is None else {
            "version": latest.version, "approved": latest.approval == "approved",
            "stale": used != current,
            **({"chain": chain_state(ledger, camp.id, latest.version, camp.bulletin.approvers)}
               if camp.bulletin.approvers else {}),
        },
        "uncertain_deliveries": uncertain,
        "undeliverable_deliveries": undeliverable,
        "units": units,
    }



#: What a unit's state is called wherever a coordinator reads it (status, artifacts).
STATE_LABELS = {"missing": "未报", "accepted": "已通过", "rejected": "未通过", "needs_explanation": "待说明"}


def completeness_line(status: dict) -> str:
    """The one sentence that sums up :func:`completeness` (the CLI, the artifact, the demo)."""
    return (f"应报{status['expected']}家，已通过{status['accepted']}家，未通过{status['rejected']}家，"
            f"待说明{status['needs_explanation']}家，未报{len(status['missing'])}家，"
            f"逾期{len(status['late'])}家，待人工处理{status['quarantined']}份")

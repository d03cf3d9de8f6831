"""A coordinator's decision by hand: accept, reject or reopen a unit's return, with a note."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from ..core.config import Config
from ..core.directory import sender_unit  # the contact lists decide who may explain for a unit
from ..core.ledger import (
    ACCEPTED,
    NEEDS_EXPLANATION,
    QUARANTINED,
    REJECTED,
    SUPERSEDED,
    Ledger,
    Submission,
    Value,
    audit_event,
)
from .outcome import Outcome
from .owed import owe, owe_rows

ACTIONS = ("accept", "reject", "reopen")
_VERBS = {"accept": "采用", "reject": "退回", "reopen": "重新打开"}
_CANDIDATES = {"accept": (NEEDS_EXPLANATION, REJECTED, ACCEPTED),  # latest of these is the target
               "reject": (ACCEPTED, NEEDS_EXPLANATION), "reopen": (ACCEPTED,)}


class ReviewError(Exception):
    """The decision cannot be applied (no such unit or submission, nothing to accept...)."""


def _target(s, config: Config, unit_code: str, action: str, submission_id: int | None) -> Submission:
    camp = config.campaign.id
    if submission_id is not None:
        sub = s.get(Submission, submission_id)
        if sub is None or sub.campaign != camp:
            raise ReviewError(f"第{submission_id}号报送记录不属于 {camp}")
        if sub.unit_code not in (None, unit_code):
            raise ReviewError(f"第{submission_id}号报送记录属于单位 {sub.unit_code}，不是 {unit_code}")
        return sub
    sub = s.scalars(select(Submission).where(Submission.campaign == camp, Submission.unit_code == unit_code,
                                             Submission.state.in_(_CANDIDATES[action]))
                    .order_by(Submission.id.desc()).limit(1)).first()
    if sub is None:
        raise ReviewError(f"单位 {unit_code} 没有可{_VERBS[action]}的报送记录")
    return sub


def review(ledger: Ledger, config: Config, unit_code: str, *, action: str, by: str, note: str,
           now: dt.datetime, submission_id: int | None = None) -> Submission:
    """Apply a coordinator's decision; the ledger records who, when and why."""
    if action not in ACTIONS:
        raise ReviewError(f"unknown action {action}")
    if unit_code not in config.unit_by_code:
        raise ReviewError(f"未知单位代码 {unit_code}")
    if not by.strip() or not note.strip():
        raise ReviewError("人工审核须写明审核人（--by）和理由（--note）")
    with ledger.session() as s:
        sub = _target(s, config, unit_code, action, submission_id)
        if action == "accept":
            has_values = s.scalar(select(func.count()).select_from(Value).where(Value.submission_id == sub.id))
            if not has_values:
                raise ReviewError(f"第{sub.id}号报送记录没有可用的数据（文件无法读取），不能采用")
            if sub.state == QUARANTINED or sub.version is None:
                sub.unit_code = unit_code
                sub.version = 1 + s.scalar(select(func.count()).select_from(Submission).where(
                    Submission.campaign == sub.campaign, Submission.unit_code == unit_code,
                    Submission.version.is_not(None), Submission.id != sub.id))
            for other in s.scalars(select(Submission).where(
                    Submission.campaign == sub.campaign, Submission.unit_code == unit_code,
                    Submission.id != sub.id, Submission.state.in_((ACCEPTED, NEEDS_EXPLANATION)))):
                other.state = SUPERSEDED
            sub.state = ACCEPTED
        else:
            sub.state = REJECTED
        sub.decided_at, sub.decided_by, sub.note = now, by, note
        s.add(audit_event(config.campaign.id, f"review.{action}", actor=by, subject=str(sub.id),
                          detail={"unit": unit_code, "note": note}, at=now))
    return sub


def explain_by_reply(ledger: Ledger, config: Config, sender: str, text: str,
                     now: dt.datetime) -> Submission | None:
    """A unit's reply explaining the warnings on its latest return: that return is accepted
    with the explanation kept. Returns it, or None when the sender's unit has nothing waiting."""
    unit = sender_unit(sender, config.units)
    if unit is None:
        return None
    with ledger.session() as s:
        sub = s.scalars(select(Submission).where(
            Submission.campaign == config.campaign.id, Submission.unit_code == unit.code,
            Submission.state == NEEDS_EXPLANATION).order_by(Submission.id.desc()).limit(1)).first()
        if sub is None:
            return None
        for other in s.scalars(select(Submission).where(
                Submission.campaign == sub.campaign, Submission.unit_code == unit.code,
                Submission.id != sub.id, Submission.state == ACCEPTED)):
            other.state = SUPERSEDED
        sub.state, sub.explanation = ACCEPTED, text
        sub.decided_at, sub.decided_by = now, f"{sender}（回复说明）"
        s.add(audit_event(config.campaign.id, "submission.explained", actor=sender, subject=str(sub.id),
                          detail={"unit": unit.code, "explanation": text}, at=now))
        outcome = Outcome(sub.id, sub.original_name, sub.state, sub.unit_code, sender, warnings=list(sub.warnings),
                          version=sub.version, late=sub.late, explanation=text, received_at=sub.received_at)
        s.flush()
        owe(s.connection(), owe_rows(config.campaign.id, [outcome], {}, now))  # its receipt, until sent
    return sub

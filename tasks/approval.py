"""Approval lives in the ledger: who approved or rejected which bulletin version, and why."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from .ledger import Bulletin, Ledger

APPROVED, REJECTED, PENDING = "approved", "rejected", "pending"


class ApprovalError(Exception):
    """The decision cannot be taken (no such version, a rejected version approved...)."""


def find_version(ledger: Ledger, campaign: str, version: int | None = None) -> Bulletin:
    """The given version, or the latest; ApprovalError when there is none."""
    with ledger.session() as s:
        q = select(Bulletin).where(Bulletin.campaign == campaign)
        q = q.where(Bulletin.version == version) if version else q.order_by(Bulletin.version.desc())
        found = s.scalars(q.limit(1)).first()
    if found is None:
        raise ApprovalError(f"{campaign} 尚无第{version}版简讯" if version else
                            f"{campaign} 尚未生成简讯，请先运行 bulletin compile")
    return found


def decide(ledger: Ledger, campaign: str, *, by: str, approve: bool, note: str | None,
           now: dt.datetime, version: int | None = None) -> Bulletin:
    """Record an approval or a rejection. A rejected version is never approved later:
    compile again (a change makes version N+1)."""
    if not by.strip():
        raise ApprovalError("审批人姓名不能为空（--by）")
    target = find_version(ledger, campaign, version)
    decision = APPROVED if approve else REJECTED
    if target.approval == REJECTED and approve:
        raise ApprovalError(f"第{target.version}版已被驳回，不能再批准；请修改后重新编制（生成新版本）")
    if target.approval == decision:
        return target  # the same decision again changes nothing
    with ledger.session() as s:
        row = s.get(Bulletin, target.id)
        row.approval, row.approved_by, row.approved_at, row.approval_note = decision, by, now, note
        target = row
    ledger.record(campaign, f"bulletin.{decision}", actor=by, subject=f"v{target.version}",
                  detail=note, at=now)
    return target

"""Approval lives in the ledger: who approved or rejected which bulletin version, and why.

A decision names one version. Only the latest version can be approved (an older one was
superseded by a newer compile); a rejected version is never approved later (compile again: a
change makes version N+1); a version that has started going out is not rejected any more.
Each decision commits in one transaction with its audit-trail event.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from .ledger import SENDING, SENT, UNCERTAIN, Bulletin, Delivery, Ledger, audit_event

APPROVED, REJECTED, PENDING = "approved", "rejected", "pending"


class ApprovalError(Exception):
    """The decision cannot be taken (no such version, a rejected version approved...)."""


class Superseded(ApprovalError):
    """The version named is no longer the latest: a newer compile replaced it."""

    def __init__(self, version: int, latest: int):
        super().__init__(f"第{version}版已被第{latest}版取代，不能再批准；请审批第{latest}版")
        self.version, self.latest = version, latest


def find_version(ledger: Ledger, campaign: str, version: int | None = None) -> Bulletin:
    """The given version, or the latest; ApprovalError when there is none."""
    with ledger.session() as s:
        return _version_row(s, campaign, version)


def _version_row(s, campaign: str, version: int | None) -> Bulletin:
    q = select(Bulletin).where(Bulletin.campaign == campaign)
    q = q.where(Bulletin.version == version) if version else q.order_by(Bulletin.version.desc())
    found = s.scalars(q.limit(1).with_for_update()).first()
    if found is None:
        raise ApprovalError(f"{campaign} 尚无第{version}版简讯" if version else
                            f"{campaign} 尚未生成简讯，请先运行 bulletin compile")
    return found


def copies_out(s, campaign: str, version: int) -> int:
    """How many copies of the version were sent, or may have been (sending, uncertain)."""
    prefix = f"{campaign}/bulletin/v{version}/"
    return s.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.key.startswith(prefix, autoescape=True), Delivery.state.in_((SENDING, SENT, UNCERTAIN))))


def decide(ledger: Ledger, campaign: str, *, by: str, approve: bool, note: str | None,
           now: dt.datetime, version: int | None = None, pending_only: bool = False) -> Bulletin:
    """Record an approval or a rejection of *version* (default: the latest) and its event.

    ``pending_only`` is for an answer given to a run waiting on *version*: it is recorded
    only while that version is the latest and still pending. A decision already in the ledger
    stands (the version is returned as it is); a superseded version raises :class:`Superseded`.
    """
    if not by.strip():
        raise ApprovalError("审批人姓名不能为空（--by）")
    decision = APPROVED if approve else REJECTED
    with ledger.session() as s:
        target = _version_row(s, campaign, version)
        latest = s.scalar(select(func.max(Bulletin.version)).where(Bulletin.campaign == campaign))
        if pending_only and target.approval != PENDING:
            return target
        if target.approval == decision:
            return target  # the same decision again changes nothing
        if target.version != latest and (approve or pending_only):
            raise Superseded(target.version, latest)
        if target.approval == REJECTED:
            raise ApprovalError(f"第{target.version}版已被驳回，不能再批准；请修改后重新编制（生成新版本）")
        if target.approval == APPROVED and (out := copies_out(s, campaign, target.version)):
            raise ApprovalError(f"第{target.version}版已开始分发（{out}份），不能再驳回")
        target.approval, target.approved_by, target.approved_at, target.approval_note = decision, by, now, note
        s.add(audit_event(campaign, f"bulletin.{decision}", actor=by, subject=f"v{target.version}",
                    detail=note, at=now))
    return target

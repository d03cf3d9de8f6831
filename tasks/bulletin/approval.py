"""Approval lives in the ledger: who approved or rejected which bulletin version, and why.

A decision names one version. Only the latest version can be approved (an older one was
superseded by a newer compile); a rejected version is never approved later (compile again: a
change makes version N+1); a version that has started going out is not rejected any more.
Each decision commits in one transaction with its audit-trail event.

A campaign may name its approvers by level (``bulletin.approvers``: 审核, then 签发, ...): each
version then needs an approval at every level, in order, each from an approver of that level
(named by name or address); a rejection at any level rejects the version. Without approvers,
one decision by anyone named decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..core.config import Approver
from ..core.ledger import SENDING, SENT, UNCERTAIN, ApprovalRecord, Bulletin, Delivery, Ledger, audit_event

APPROVED, REJECTED, PENDING = "approved", "rejected", "pending"


class ApprovalError(Exception):
    """The decision cannot be taken (no such version, a rejected version approved...)."""


class Superseded(ApprovalError):
    """The version named is no longer the latest: a newer compile replaced it."""

    def __init__(self, version: int, latest: int):
        super().__init__(f"第{version}版已被第{latest}版取代，不能再批准；请审批第{latest}版")
        self.version, self.latest = version, latest


class NotAnApprover(ApprovalError):
    """The person named may not decide at the level that is due."""


def levels_of(approvers: Sequence[Approver]) -> list[str]:
    return list(dict.fromkeys(a.level for a in approvers))


def _due(s, campaign: str, version: int, levels: list[str]) -> str | None:
    """The first level without an approval of the version; None once every level approved."""
    approved = set(s.scalars(select(ApprovalRecord.level).where(
        ApprovalRecord.campaign == campaign, ApprovalRecord.version == version,
        ApprovalRecord.decision == APPROVED)))
    return next((level for level in levels if level not in approved), None)


def _approver(approvers: Sequence[Approver], levels: list[str], by: str) -> Approver | None:
    key = by.strip().lower()
    return next((a for a in approvers if a.level in levels and key in (a.name.lower(), a.email.lower())), None)


def chain_state(ledger: Ledger, campaign: str, version: int, approvers: Sequence[Approver]) -> dict:
    """Where a version stands in the chain: each level's decisions and the level due (None
    when every level approved, or without a chain)."""
    levels = levels_of(approvers)
    with ledger.reading() as s:
        rows = list(s.scalars(select(ApprovalRecord).where(
            ApprovalRecord.campaign == campaign, ApprovalRecord.version == version).order_by(ApprovalRecord.id)))
        due = _due(s, campaign, version, levels) if levels else None
    return {"levels": levels, "due": due,
            "due_approvers": [a.name for a in approvers if a.level == due],
            "decisions": [{"level": r.level, "decision": r.decision, "by": r.by, "note": r.note,
                           "at": r.at.isoformat()} for r in rows]}


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
           now: dt.datetime, version: int | None = None, pending_only: bool = False,
           approvers: Sequence[Approver] = (),
           also: Callable[[Session, Bulletin, str | None], None] | None = None) -> Bulletin:
    """Record an approval or a rejection of *version* (default: the latest) and its event.

    ``pending_only`` is for an answer given to a run waiting on *version*: it is recorded
    only while that version is the latest and still pending. A decision already in the ledger
    stands (the version is returned as it is); a superseded version raises :class:`Superseded`.
    With *approvers*, *by* must be an approver of the level that is due (any approver, to
    withdraw a version every level approved), else :class:`NotAnApprover`; an approval below
    the last level leaves the version pending. ``also(session, version, level)`` runs in the
    decision's transaction when a decision is recorded (a reply's own event, say).
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
        final, detail, level = True, note, None
        levels = levels_of(approvers)
        if levels:
            due = _due(s, campaign, target.version, levels)
            who = _approver(approvers, [due] if due else levels, by)
            if who is None:
                allowed = "、".join(f"{a.name}（{a.email}）" for a in approvers if due is None or a.level == due)
                raise NotAnApprover(f"第{target.version}版现在{'待' + due if due else '已全部审批'}：只有{allowed}可以"
                                    f"{'审批' if due else '撤回'}；{by} 不在其列（--by 填姓名或邮箱）")
            level = due or who.level
            s.add(ApprovalRecord(campaign=campaign, version=target.version, level=level, decision=decision,
                                 by=who.name, email=who.email, note=note, at=now))
            by, final = who.name, not approve or level == levels[-1]
            detail = {"level": level, "note": note, "final": final}
        if final:
            target.approval, target.approved_by, target.approved_at, target.approval_note = decision, by, now, note
        s.add(audit_event(campaign, f"bulletin.{decision}", actor=by, subject=f"v{target.version}",
                    detail=detail, at=now))
        if also is not None:
            also(s, target, level)
    return target

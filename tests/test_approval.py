"""Approval in the ledger: a decision names one version; only the latest pending version can be
approved; a run's answer never overrides the ledger. (The waiting runs themselves are tried
against a real Prefect server in test_approval_server.py.)"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from tasks.bulletin.approval import APPROVED, PENDING, REJECTED, ApprovalError, Superseded, decide, find_version
from tasks.bulletin.compile import compile_bulletin
from tasks.core.ledger import SENT, Delivery, Event, Ledger

CAMPAIGN = "energy-week-2023"
NOW = dt.datetime(2023, 10, 9, 9, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def _versions(ledger, config, n: int) -> list[int]:
    return [compile_bulletin(ledger, config, NOW, lead=f"导语{i}")[0].version for i in range(n)]


def _events(ledger) -> list[tuple[str, str, str | None]]:
    with ledger.session() as s:
        return [(e.action, e.subject, e.actor) for e in s.scalars(select(Event).where(
            Event.action.in_(("bulletin.approved", "bulletin.rejected"))).order_by(Event.id))]


def test_an_approval_names_one_version_and_records_one_event(ledger, config):
    _versions(ledger, config, 2)
    row = decide(ledger, CAMPAIGN, by="王处长", approve=True, note="同意", now=NOW)
    assert (row.version, row.approval, row.approved_by, row.approval_note) == (2, APPROVED, "王处长", "同意")
    assert find_version(ledger, CAMPAIGN, 1).approval == PENDING
    # the same decision again changes nothing and records nothing
    decide(ledger, CAMPAIGN, by="李科长", approve=True, note="再次同意", now=NOW)
    assert find_version(ledger, CAMPAIGN, 2).approved_by == "王处长"
    assert _events(ledger) == [("bulletin.approved", "v2", "王处长")]


def test_a_superseded_version_cannot_be_approved_but_can_be_rejected(ledger, config):
    _versions(ledger, config, 2)
    with pytest.raises(Superseded, match="第1版已被第2版取代"):
        decide(ledger, CAMPAIGN, by="王处长", approve=True, note=None, now=NOW, version=1)
    assert decide(ledger, CAMPAIGN, by="王处长", approve=False, note="作废", now=NOW, version=1).approval == REJECTED
    assert _events(ledger) == [("bulletin.rejected", "v1", "王处长")]


def test_a_rejected_version_is_never_approved(ledger, config):
    _versions(ledger, config, 1)
    decide(ledger, CAMPAIGN, by="王处长", approve=False, note="数据待核", now=NOW)
    with pytest.raises(ApprovalError, match="已被驳回"):
        decide(ledger, CAMPAIGN, by="李科长", approve=True, note=None, now=NOW)
    assert find_version(ledger, CAMPAIGN).approval == REJECTED


def test_a_version_going_out_is_not_rejected_any_more(ledger, config):
    _versions(ledger, config, 1)
    decide(ledger, CAMPAIGN, by="王处长", approve=True, note=None, now=NOW)
    with ledger.session() as s:
        s.add(Delivery(key=f"{CAMPAIGN}/bulletin/v1/a@example.com", campaign=CAMPAIGN, step="bulletin",
                       recipients=["a@example.com"], subject="x", state=SENT, claimed_at=NOW))
    with pytest.raises(ApprovalError, match="已开始分发（1份）"):
        decide(ledger, CAMPAIGN, by="王处长", approve=False, note="撤回", now=NOW)


def test_an_approval_not_yet_sent_can_be_withdrawn(ledger, config):
    _versions(ledger, config, 1)
    decide(ledger, CAMPAIGN, by="王处长", approve=True, note=None, now=NOW)
    assert decide(ledger, CAMPAIGN, by="王处长", approve=False, note="撤回", now=NOW).approval == REJECTED


def test_a_runs_answer_never_overrides_the_ledger(ledger, config):
    """``pending_only``: what a waiting run uses for the answer it was resumed with."""
    _versions(ledger, config, 2)
    decide(ledger, CAMPAIGN, by="王处长", approve=True, note="命令行批准", now=NOW, version=2)
    kept = decide(ledger, CAMPAIGN, by="界面用户", approve=False, note="界面驳回", now=NOW, version=2,
                  pending_only=True)
    assert (kept.approval, kept.approved_by) == (APPROVED, "王处长")
    # an answer for a superseded version is not recorded, whatever it says
    with pytest.raises(Superseded):
        decide(ledger, CAMPAIGN, by="界面用户", approve=False, note=None, now=NOW, version=1, pending_only=True)
    assert _events(ledger) == [("bulletin.approved", "v2", "王处长")]


def test_no_approver_no_decision(ledger, config):
    _versions(ledger, config, 1)
    with pytest.raises(ApprovalError, match="审批人姓名不能为空"):
        decide(ledger, CAMPAIGN, by="  ", approve=True, note=None, now=NOW)
    with pytest.raises(ApprovalError, match="第7版"):
        decide(ledger, CAMPAIGN, by="王处长", approve=True, note=None, now=NOW, version=7)
    assert _events(ledger) == []


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_without_deployment_does_not_wait_and_sends_nothing(tmp_path, config, config_dir, smtp_env):
    """Only a deployment's run can suspend; run by hand with wait_for_approval it says why it
    does not wait and sends nothing, with its reason in the state message."""
    from flows.publish_bulletin import publish_bulletin
    args = dict(home=str(tmp_path), config_dir=str(config_dir))
    _versions(Ledger(tmp_path), config, 1)
    state = publish_bulletin(CAMPAIGN, wait_for_approval=True, now=NOW, return_state=True, **args)
    assert state.is_completed() and "尚未批准" in state.message
    assert state.result()["sent"] == 0 and not smtp_env.messages

"""Approval: a publish run paused for input is resumed (UI form or `bulletin approve`), the
ledger keeps the decision, and only an approved version is sent."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.approval import ApprovalError, decide, find_version
from tasks.ledger import Ledger

pytestmark = pytest.mark.usefixtures("prefect_harness")
CAMPAIGN = "energy-week-2023"


def _wait_for_paused(campaign: str, timeout: float = 90) -> list:
    from flows.approval import _paused_publish_runs
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = asyncio.run(_paused_publish_runs(campaign))
        if runs:
            return runs
        time.sleep(1)
    raise AssertionError("no paused publish run appeared")


def test_paused_publish_resumes_with_approval_and_sends(tmp_path, config, config_dir, smtp_env):
    from flows.approval import resume_waiting_runs
    from flows.compile_bulletin import compile_bulletin
    from flows.publish_bulletin import publish_bulletin
    from tasks.notices import bulletin_recipients
    cal = config.campaign.calendar
    args = dict(home=str(tmp_path), config_dir=str(config_dir))
    version = compile_bulletin(CAMPAIGN, now=cal.compile_moment, **args)["version"]

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(publish_bulletin, CAMPAIGN, wait_for_approval=True,
                              now=cal.compile_moment, **args)
        _wait_for_paused(CAMPAIGN)
        assert not smtp_env.messages  # nothing goes out while waiting
        # what `bulletin approve` does: the ledger first, then resume the waiting run
        decide(Ledger(tmp_path), CAMPAIGN, by="王处长", approve=True, note="同意", now=cal.compile_moment,
               version=version)
        assert resume_waiting_runs(CAMPAIGN, version, approve=True, by="王处长", note="同意")
        result = running.result(timeout=120)
    assert result["approval"] == "approved"
    assert result["sent"] == len(bulletin_recipients(config)) == len(smtp_env.messages)
    row = find_version(Ledger(tmp_path), CAMPAIGN, version)
    assert (row.approval, row.approved_by, row.approval_note) == ("approved", "王处长", "同意")


def test_rejected_version_is_never_sent(tmp_path, config, config_dir, smtp_env):
    from flows.compile_bulletin import compile_bulletin
    from flows.publish_bulletin import publish_bulletin
    cal = config.campaign.calendar
    args = dict(home=str(tmp_path), config_dir=str(config_dir))
    version = compile_bulletin(CAMPAIGN, now=cal.compile_moment, **args)["version"]
    ledger = Ledger(tmp_path)
    decide(ledger, CAMPAIGN, by="王处长", approve=False, note="数据待核", now=cal.compile_moment)
    with pytest.raises(ApprovalError):
        decide(ledger, CAMPAIGN, by="李科长", approve=True, note=None, now=cal.compile_moment)
    result = publish_bulletin(CAMPAIGN, version=version, now=cal.compile_moment, **args)
    assert result["approval"] == "rejected" and result["sent"] == 0
    assert not smtp_env.messages

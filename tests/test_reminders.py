"""Reminders under time travel: who gets which tier, nothing twice, two runs at once."""

from __future__ import annotations

import datetime as dt
import email
from concurrent.futures import ThreadPoolExecutor
from email import policy

import pytest
from sqlalchemy import select

from tasks.core.ledger import ACCEPTED, Delivery, Ledger, Submission
from tasks.decisions.reminders import due_tier

pytestmark = pytest.mark.usefixtures("prefect_harness")
CAMPAIGN = "energy-week-2023"


def test_due_tier_follows_the_calendar(config):
    cal = config.campaign.calendar
    d = cal.deadline_at
    assert due_tier(cal, d - dt.timedelta(days=4)) is None
    assert due_tier(cal, d - dt.timedelta(days=3)).offset == "-3d"
    assert due_tier(cal, d - dt.timedelta(hours=30)).offset == "-3d"
    assert due_tier(cal, d - dt.timedelta(days=1)).offset == "-1d"
    assert due_tier(cal, d).offset == "0d"
    assert due_tier(cal, d + dt.timedelta(days=5)).escalate
    assert due_tier(cal, cal.closes_at + dt.timedelta(minutes=1)) is None


def _accept(ledger: Ledger, code: str, at: dt.datetime) -> None:
    with ledger.session() as s:
        s.add(Submission(campaign=CAMPAIGN, unit_code=code, source="folder", original_name="x.xlsx",
                         received_at=at, fingerprint=code, state=ACCEPTED, version=1, errors=[], warnings=[]))


def test_each_tier_once_per_unit_even_when_two_runs_overlap(tmp_path, config, config_dir, smtp_env):
    from flows.send_reminders import send_reminders
    server = smtp_env
    cal = config.campaign.calendar
    args = dict(home=str(tmp_path), config_dir=str(config_dir))
    ledger = Ledger(tmp_path)
    _accept(ledger, "210100", cal.opens_at + dt.timedelta(days=1))
    owing = len(config.units) - 1

    at = cal.deadline_at - dt.timedelta(days=3)
    with ThreadPoolExecutor(2) as pool:  # the same scheduled run started twice at once
        results = list(pool.map(lambda _: send_reminders(CAMPAIGN, now=at, **args), range(2)))
    assert sum(r.get("sent", 0) for r in results) == owing
    assert len(server.messages) == owing
    rcpts = {r for m in server.messages for r in m.rcpt_tos}
    assert "shenyang-jieneng@example.org" not in rcpts  # 沈阳 has an accepted return

    # later the same day: the tier is done, nothing new
    assert send_reminders(CAMPAIGN, now=at + dt.timedelta(hours=5), **args).get("sent", 0) == 0
    assert len(server.messages) == owing

    # escalation after the deadline: supervisor in Cc, only for units still owing
    _accept(ledger, "210200", cal.deadline_at - dt.timedelta(hours=1))
    late = send_reminders(CAMPAIGN, now=cal.deadline_at + dt.timedelta(days=2), **args)
    assert late["sent"] == owing - 1
    escalations = [email.message_from_bytes(m.data, policy=policy.default) for m in server.messages[owing:]]
    assert all("督办" in str(m["Subject"]) and m["Cc"] for m in escalations)
    assert all("-leader@example.org" in str(m["Cc"]) for m in escalations)
    with ledger.session() as s:
        keys = list(s.scalars(select(Delivery.key).where(Delivery.step == "reminder")))
    assert len(keys) == len(set(keys)) == owing + owing - 1

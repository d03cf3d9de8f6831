"""A campaign's calendar as schedules: when each step runs, in the campaign's timezone.

Pure: returns RRULE strings (RFC 5545) that ``bulletin serve`` and ``prefect.yaml`` turn into
Prefect schedules. Every schedule ends with the campaign, so a finished campaign runs nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .config import Campaign

PUBLISH_AFTER_COMPILE = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class StepSchedule:
    slug: str  # stable per schedule, so registering again updates instead of adding
    rrule: str
    parameters: dict = field(default_factory=dict)


def _stamp(moment: dt.datetime) -> str:
    return moment.replace(tzinfo=None).strftime("%Y%m%dT%H%M%S")


def once(slug: str, moment: dt.datetime, parameters: dict | None = None) -> StepSchedule:
    """A run at one moment (local time of the campaign's timezone)."""
    return StepSchedule(slug, f"DTSTART:{_stamp(moment)}\nRRULE:FREQ=DAILY;COUNT=1", parameters or {})


def campaign_schedules(campaign: Campaign) -> dict[str, list[StepSchedule]]:
    """Schedules per flow name: request at opening, each reminder tier, collect every N
    minutes until closing (and at the deadline), compile, then publish awaiting approval."""
    cal = campaign.calendar
    opens, deadline, closes = cal.opens_at, cal.deadline_at, cal.closes_at
    # COUNT rather than UNTIL: Prefect localises DTSTART, and then UNTIL would have to be UTC
    runs = int((closes - opens) / dt.timedelta(minutes=cal.collect_every_minutes)) + 1
    collect_every = StepSchedule(
        "collect-every",
        f"DTSTART:{_stamp(opens)}\nRRULE:FREQ=MINUTELY;INTERVAL={cal.collect_every_minutes};COUNT={runs}")
    return {
        "request-returns": [once("request-at-opening", opens)],
        "send-reminders": [once(f"reminder-{i + 1}", deadline + tier.delta)
                           for i, tier in enumerate(cal.reminders)],
        "collect-returns": [collect_every, once("collect-at-deadline", deadline + dt.timedelta(minutes=1))],
        "compile-bulletin": [once("compile", cal.compile_moment)],
        "publish-bulletin": [once("publish", cal.compile_moment + PUBLISH_AFTER_COMPILE,
                                  {"wait_for_approval": True})],
    }

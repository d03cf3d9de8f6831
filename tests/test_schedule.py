"""Schedules computed from a campaign calendar, the deployments built on them, prefect.yaml."""

from __future__ import annotations

import datetime as dt

from dateutil.rrule import rrulestr

from tasks.core.schedule import campaign_schedules


def _times(schedule, tz):
    rule = rrulestr(schedule.rrule, forceset=True)
    return [t.replace(tzinfo=tz) for t in rule]


def test_every_step_is_scheduled_from_the_calendar(config):
    cal = config.campaign.calendar
    tz = cal.tz
    s = campaign_schedules(config.campaign)
    assert set(s) == {"request-returns", "send-reminders", "collect-returns", "compile-bulletin",
                      "publish-bulletin"}
    assert _times(s["request-returns"][0], tz) == [cal.opens_at]
    reminder_times = [t for sched in s["send-reminders"] for t in _times(sched, tz)]
    assert reminder_times == [cal.deadline_at + tier.delta for tier in cal.reminders]
    every = _times(s["collect-returns"][0], tz)
    assert every[0] == cal.opens_at and every[-1] <= cal.closes_at
    assert every[1] - every[0] == dt.timedelta(minutes=cal.collect_every_minutes)
    assert cal.closes_at - every[-1] < dt.timedelta(minutes=cal.collect_every_minutes)
    assert _times(s["collect-returns"][1], tz)[0] > cal.deadline_at  # a run right after the deadline
    assert _times(s["compile-bulletin"][0], tz) == [cal.compile_moment]
    publish = s["publish-bulletin"][0]
    assert _times(publish, tz)[0] > cal.compile_moment and publish.parameters == {"wait_for_approval": True}


def test_slugs_are_unique_per_deployment(config):
    for schedules in campaign_schedules(config.campaign).values():
        slugs = [x.slug for x in schedules]
        assert len(slugs) == len(set(slugs))


def test_deployments_load_with_schedules_and_parameters(tmp_path, config_dir):
    from flows.serve import build_deployments
    deployments = build_deployments(config_dir)
    names = {(d.flow_name, d.name) for d in deployments}
    for campaign in ("energy-week-2023", "energy-week-2027"):
        for flow in ("request-returns", "send-reminders", "collect-returns", "compile-bulletin",
                     "publish-bulletin"):
            assert (flow, campaign) in names
    collect = next(d for d in deployments if d.flow_name == "collect-returns" and d.name == "energy-week-2027")
    assert collect.parameters["campaign"] == "energy-week-2027"
    assert collect.parameters == {"campaign": "energy-week-2027"}  # as in prefect.yaml
    assert [s.schedule.timezone for s in collect.schedules] == ["Asia/Shanghai", "Asia/Shanghai"]


def test_committed_prefect_yaml_is_up_to_date():
    from flows.context import PROJECT_ROOT
    from flows.deployments import render_yaml
    assert (PROJECT_ROOT / "prefect.yaml").read_text(encoding="utf-8") == render_yaml(), \
        "prefect.yaml is stale: run `make prefect-yaml`"

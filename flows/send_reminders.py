"""Flow ``send-reminders``: the tier due now, to units without an accepted return, once each."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from tasks.decisions.reminders import due_tier, units_to_remind
from tasks.mail.notices import reminder_message

from .common import check_uncertain, run_name, send_messages
from .context import open_context
from .robots import robots_on_failure, tell_robots


@task(name="build-reminders", cache_policy=NO_CACHE)
def build_reminders(ctx, codes: list[str] | None) -> list:
    tier = due_tier(ctx.config.campaign.calendar, ctx.now)
    if tier is None:
        get_run_logger().info("当前没有到期的催报档次（%s）", ctx.now.isoformat())
        return []
    targets = units_to_remind(ctx.ledger, ctx.config, codes)
    get_run_logger().info("催报档次“%s”：%d 家单位尚无通过审核的报表", tier.name, len(targets))
    return [(reminder_message(ctx.config, unit, tier, state_note=note, override=ctx.override_dir), unit.code)
            for unit, note in targets]


@flow(name="send-reminders", flow_run_name=run_name("remind"), log_prints=True, on_failure=[robots_on_failure])
def send_reminders(campaign: str, units: list[str] | None = None, dry_run: bool = False,
                   now: dt.datetime | None = None, home: str | None = None,
                   config_dir: str | None = None, resend_uncertain: bool = False) -> dict:
    """Send the reminder tier due at ``now``; each tier reaches each unit at most once."""
    ctx = open_context(campaign, home, config_dir, now)
    check_uncertain(ctx)
    messages = build_reminders(ctx, units)
    counts = send_messages(ctx, quote(messages), "reminder", dry_run=dry_run, resend_uncertain=resend_uncertain)
    tier = due_tier(ctx.config.campaign.calendar, ctx.now)
    if tier is not None and tier.escalate and counts.get("sent") and not dry_run:  # the group hears of escalations
        tell_robots(ctx.config, ctx.ledger, [f"已向 {counts['sent']} 家单位发出督办（{tier.name}，抄送其分管负责同志）"],
                    mailed=False)
    return {"campaign": ctx.campaign_id, "reminders": len(messages), **counts}

"""Flow ``publish-bulletin``: approval (from the ledger, or asked for in the UI), then sending."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from tasks.approval import APPROVED, PENDING, ApprovalError, decide, find_version
from tasks.ledger import Bulletin
from tasks.notices import addressed, bulletin_message, bulletin_recipients

from .common import check_uncertain, run_name, send_messages
from .context import Context, open_context


class Approval(RunInput):
    """The form a coordinator fills in the Prefect UI."""

    approve: bool
    name: str
    comment: str = ""


def _ask_in_ui(ctx: Context, bulletin: Bulletin) -> Bulletin:
    """Pause for a coordinator's decision; the ledger keeps it whatever happens to this run."""
    log = get_run_logger()
    hours = ctx.config.campaign.bulletin.approval_timeout_hours
    log.info("第%d版简讯等待审批（Prefect 界面或 bulletin approve），最长 %.0f 小时", bulletin.version, hours)
    answer = pause_flow_run(wait_for_input=Approval, timeout=int(hours * 3600))
    try:
        return decide(ctx.ledger, ctx.campaign_id, by=answer.name, approve=answer.approve,
                      note=answer.comment or None, now=dt.datetime.now(ctx.now.tzinfo),
                      version=bulletin.version)
    except ApprovalError as exc:
        log.error("%s", exc)
        return find_version(ctx.ledger, ctx.campaign_id, bulletin.version)


@task(name="build-bulletin-mail", cache_policy=NO_CACHE)
def build_bulletin_mail(ctx: Context, bulletin: Bulletin) -> list:
    base = bulletin_message(ctx.config, ctx.home / bulletin.folder, bulletin.version)
    return [(addressed(base, to), None) for to in bulletin_recipients(ctx.config)]


def _deliveries_artifact(ctx: Context, bulletin: Bulletin, messages: list, counts: dict) -> None:
    create_table_artifact(
        key=f"{ctx.campaign_id}-deliveries",
        table=[{"收件人": m.to[0].name, "地址": m.to[0].email, "版本": bulletin.version} for m, _ in messages],
        description=f"第{bulletin.version}版简讯分发：{counts}")


@flow(name="publish-bulletin", flow_run_name=run_name("publish"), log_prints=True)
def publish_bulletin(campaign: str, version: int | None = None, dry_run: bool = False,
                     wait_for_approval: bool = False, resend_uncertain: bool = False,
                     now: dt.datetime | None = None, home: str | None = None,
                     config_dir: str | None = None) -> dict:
    """Send an approved bulletin version to the distribution lists, once per recipient."""
    ctx = open_context(campaign, home, config_dir, now)
    log = get_run_logger()
    check_uncertain(ctx)
    bulletin = find_version(ctx.ledger, ctx.campaign_id, version)
    if bulletin.approval == PENDING and wait_for_approval and not dry_run:
        bulletin = _ask_in_ui(ctx, bulletin)
    if bulletin.approval != APPROVED and not dry_run:
        log.warning("第%d版简讯状态为 %s，未发送", bulletin.version, bulletin.approval)
        return {"campaign": ctx.campaign_id, "version": bulletin.version,
                "approval": bulletin.approval, "sent": 0}
    messages = build_bulletin_mail(ctx, bulletin)
    counts = send_messages(ctx, quote(messages), "bulletin", dry_run=dry_run, resend_uncertain=resend_uncertain)
    if not dry_run:
        _deliveries_artifact(ctx, bulletin, messages, counts)
    return {"campaign": ctx.campaign_id, "version": bulletin.version, "approval": bulletin.approval,
            "recipients": len(messages), **counts}

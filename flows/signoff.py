"""Sign-off by reply mail, seen from the flows: send what the ledger's sign-off state calls for
(``tasks.bulletin.signoff.signoff_messages``), and send a version the last level approved by mail."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from tasks.bulletin.approval import chain_state
from tasks.bulletin.signoff import approved_by_mail, signoff_messages

from .common import send_messages
from .context import Context
from .show import DECISION_LABELS, chain_lines, local_minute


@task(name="sign-off-by-mail", cache_policy=NO_CACHE)
def follow_up_signoff(ctx: Context, again: bool = False, resend_uncertain: bool = False) -> dict:
    """Answers to approvers, notices, the next level's requests; the version to send, if the last
    level approved it by mail and no copy has gone out yet."""
    if not ctx.config.campaign.bulletin.approvers:
        return {}
    publish_chain(ctx)
    messages = [(m, None) for m in signoff_messages(ctx.ledger, ctx.config, again=again, override=ctx.override_dir)]
    counts = send_messages(ctx, quote(messages), "approval", resend_uncertain=resend_uncertain) if messages else {}
    publish = approved_by_mail(ctx.ledger, ctx.campaign_id)
    if publish:
        get_run_logger().info("第%d版简讯已通过最后一级审批（邮件答复）：开始分发", publish)
    return {"messages": counts, "publish": publish}


def publish_chain(ctx: Context) -> None:
    """The table artifact ``<campaign>-approval``: where the latest version stands in its chain,
    who decided what, when and why, and who is due."""
    latest = ctx.ledger.latest_bulletin(ctx.campaign_id)
    approvers = ctx.config.campaign.bulletin.approvers
    if latest is None or not approvers:
        return
    chain = chain_state(ctx.ledger, ctx.campaign_id, latest.version, approvers)
    tz = ctx.config.campaign.calendar.tz
    rows = [{"版本": latest.version, "级别": d["level"], "审批人": d["by"],
             "决定": DECISION_LABELS.get(d["decision"], d["decision"]), "时间": local_minute(d["at"], tz),
             "意见": d.get("note") or ""} for d in chain["decisions"]]
    if chain["due"]:
        rows.append({"版本": latest.version, "级别": chain["due"], "审批人": "、".join(chain["due_approvers"]),
                     "决定": "待审批", "时间": "", "意见": ""})
    create_table_artifact(key=f"{ctx.campaign_id}-approval", table=rows,
                          description=f"第{latest.version}版简讯审批："
                          + "；".join(chain_lines(chain, tz) or [latest.approval]))


def publish_approved(ctx: Context, version: int) -> dict:
    """Hand the version to the publish runs waiting on it (``serve``), else send it here."""
    from .approval import resume_waiting_runs
    from .publish_bulletin import publish_bulletin
    try:
        resumed = resume_waiting_runs(ctx.campaign_id, version, approve=True, by="邮件审批", note="")
    except Exception as exc:  # noqa: BLE001 - no API to ask: send it here (the ledger sends once)
        get_run_logger().warning("无法查询等待审批的发布运行（%s）：由本运行发送", exc)
        resumed = []
    if resumed:
        return {"version": version, "resumed_runs": resumed}
    sent = publish_bulletin(ctx.campaign_id, version=version, now=ctx.now, home=str(ctx.home),
                            config_dir=str(ctx.config.directory))
    return {k: v for k, v in sent.items() if k != "campaign"}

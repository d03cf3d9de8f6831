"""Sign-off by reply mail, seen from the flows: send what the ledger's sign-off state calls for
(``tasks.signoff.signoff_messages``), and send a version the last level approved by mail."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from tasks.signoff import approved_by_mail, signoff_messages

from .common import send_messages
from .context import Context


@task(name="sign-off-by-mail", cache_policy=NO_CACHE)
def follow_up_signoff(ctx: Context, again: bool = False, resend_uncertain: bool = False) -> dict:
    """Answers to approvers, notices, the next level's requests; the version to send, if the last
    level approved it by mail and no copy has gone out yet."""
    if not ctx.config.campaign.bulletin.approvers:
        return {}
    messages = [(m, None) for m in signoff_messages(ctx.ledger, ctx.config, again=again, override=ctx.override_dir)]
    counts = send_messages(ctx, quote(messages), "approval", resend_uncertain=resend_uncertain) if messages else {}
    publish = approved_by_mail(ctx.ledger, ctx.campaign_id)
    if publish:
        get_run_logger().info("第%d版简讯已通过最后一级审批（邮件答复）：开始分发", publish)
    return {"messages": counts, "publish": publish}


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

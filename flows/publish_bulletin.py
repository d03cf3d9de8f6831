"""Flow ``publish-bulletin``: a decision on one bulletin version (from the ledger, or asked for
in the UI while the run is suspended), then sending that version, once per recipient.

Waiting holds nothing: the run *suspends* (``suspend_flow_run``), which ends its process. An
answer (the UI's form, or ``bulletin approve``) resumes it; Prefect reschedules it and the
runner of ``serve`` or a worker runs it again from the top, so everything before the wait is
safe to repeat and the version waited on is pinned in the run's own inputs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Mapping

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput, create_flow_run_input, read_flow_run_input
from prefect.states import Completed
from prefect.utilities.annotations import quote
from pydantic import Field

from tasks.bulletin.approval import (
    APPROVED,
    PENDING,
    REJECTED,
    ApprovalError,
    Superseded,
    chain_state,
    decide,
    find_version,
)
from tasks.bulletin.personal import read_blocks, splice
from tasks.bulletin.upward import DropFolderMailer, UpwardError, parent_dir, upward_key, upward_message
from tasks.core.config import ConfigError, load_config
from tasks.core.ledger import Bulletin
from tasks.mail.delivery import deliver_many, delivery_states
from tasks.mail.message import OutgoingMessage
from tasks.mail.notices import addressed, bulletin_audience, bulletin_message, copy_key, rejection_notice

from .approval import pause_key
from .common import check_uncertain, notify_undeliverable, run_name, send_messages
from .context import Context, open_context
from .robots import robots_on_failure
from .signoff import publish_chain

#: Answers a run takes that name another version or no approver before it stops waiting.
MAX_ANSWERS = 20
_PINNED = "bulletin-version"


class Approval(RunInput):
    """The form a coordinator fills in the Prefect UI."""

    approve: bool = Field(title="批准 approve", description="勾选为批准发送，不勾选为驳回")
    name: str = Field(title="审批人 name", description="姓名，记入审批记录")
    comment: str = Field("", title="意见 comment")
    version: int = Field(title="版本 version", description="所审批的简讯版本（已填好，勿改）")


class Ended(Exception):
    """The run stops without sending; the message says why (state message and log)."""


def _pinned_version(ctx: Context, version: int | None) -> int:
    """The version this run waits on: its parameter, else the latest when the run first
    started (kept in the run's inputs, so a newer compile does not change it on resume)."""
    if version:
        return version
    stored = read_flow_run_input(_PINNED)
    if stored:
        return int(stored)
    latest = find_version(ctx.ledger, ctx.campaign_id).version
    create_flow_run_input(_PINNED, latest)
    return latest


def _await_decision(ctx: Context, version: int | None) -> Bulletin:
    """The version's decision: the ledger's when there is one, else a coordinator's answer,
    suspending the run until it comes. Raises :class:`Ended` when the run must not send."""
    log = get_run_logger()
    run = FlowRunContext.get().flow_run
    if run.deployment_id is None:
        bulletin = find_version(ctx.ledger, ctx.campaign_id, version)
        if bulletin.approval == PENDING:
            log.warning("此运行不属于部署，无法挂起等待审批：请运行 bulletin approve %s --by 姓名", ctx.campaign_id)
        return bulletin
    try:
        number = _pinned_version(ctx, version)
    except ApprovalError as exc:
        raise Ended(f"{exc}：本次发布结束，未发送") from None
    hours = ctx.config.campaign.bulletin.approval_timeout_hours
    for attempt in range(1, MAX_ANSWERS + 1):
        try:
            bulletin = find_version(ctx.ledger, ctx.campaign_id, number)
        except ApprovalError as exc:
            raise Ended(f"{exc}：本次发布结束，未发送") from None
        latest = find_version(ctx.ledger, ctx.campaign_id).version
        if latest > number:
            raise Ended(f"第{number}版已被第{latest}版取代：本次发布结束，未发送任何邮件。请审批第{latest}版")
        if bulletin.approval != PENDING:
            return bulletin  # decided in the ledger (bulletin approve, or an earlier answer)
        if attempt == 1:
            log.info("第%d版简讯等待审批（Prefect 界面或 bulletin approve），最长 %.0f 小时；等待期间不占用进程",
                     number, hours)
        approvers = ctx.config.campaign.bulletin.approvers
        chain = chain_state(ctx.ledger, ctx.campaign_id, number, approvers)
        who = f"（待{chain['due']}：{'、'.join(chain['due_approvers'])}）" if chain["due"] else ""
        form = Approval.with_initial_data(
            description=f"审批第{number}版简讯{who}：勾选“批准”并填写姓名后提交"
                        f"{'（最后一级批准后即发送）' if chain['levels'] else '即发送'}；不勾选为驳回。", version=number)
        answer = suspend_flow_run(wait_for_input=form, key=pause_key(number, attempt), timeout=int(hours * 3600))
        if answer.version != number:
            log.error("收到的答复针对第%d版，此运行等待第%d版：不予记录，继续等待", answer.version, number)
            continue
        try:
            decided = decide(ctx.ledger, ctx.campaign_id, by=answer.name, approve=answer.approve,
                             note=answer.comment or None, now=dt.datetime.now(ctx.now.tzinfo),
                             version=number, pending_only=True, approvers=approvers)
        except Superseded as exc:
            raise Ended(f"{exc}：本次发布结束，未发送任何邮件") from None
        except ApprovalError as exc:
            log.error("答复未记录：%s；继续等待", exc)
            continue
        if decided.approval != PENDING:
            return decided
        log.info("第%d版：%s 已记录，等待下一级审批", number, answer.name)  # the chain goes on
    raise Ended(f"第{number}版已收到 {MAX_ANSWERS} 次无效答复，本次发布结束，未发送；请用 bulletin approve 审批")


#: Recipients per batch. A unit's copy carries its own mail HTML (about 100 KB in memory), so
#: a send to 100,000 units is built and sent a batch at a time, never whole.
SEND_CHUNK = 2000


@task(name="build-bulletin-mail", cache_policy=NO_CACHE)
def build_bulletin_mail(ctx: Context, bulletin: Bulletin) -> tuple[OutgoingMessage, Mapping]:
    """The version's message, not yet addressed, and its units' blocks as compiled (and
    approved) in the version's folder."""
    folder = ctx.home / bulletin.folder
    return bulletin_message(ctx.config, folder, bulletin.version), read_blocks(folder)


def send_bulletin(ctx: Context, base: OutgoingMessage, blocks: Mapping, audience: list, dry_run: bool,
                  resend_uncertain: bool) -> dict[str, int]:
    """One message per recipient, by batches of :data:`SEND_CHUNK`; a unit's contact gets the
    copy with the unit's own block on top. The coordinators hear once, at the end, of the
    recipients the server refused for good."""
    counts: Counter[str] = Counter()
    for start in range(0, len(audience), SEND_CHUNK):
        batch = [(addressed(_unit_copy(base, blocks.get(unit)) if unit else base, to), None)
                 for to, unit in audience[start:start + SEND_CHUNK]]
        counts.update(send_messages(ctx, quote(batch), "bulletin", dry_run=dry_run,
                                    resend_uncertain=resend_uncertain, tell_refused=False))
        del batch  # before the next batch is built, not after
    if counts.get("undeliverable") and not dry_run:
        notify_undeliverable(ctx, "bulletin")
    return dict(counts)


def _unit_copy(base: OutgoingMessage, block: tuple[str, str] | None) -> OutgoingMessage:
    if block is None:  # compiled without personal copies
        return base
    html, text = block
    return dataclasses.replace(base, html=splice(base.html, html), text=text + base.text)


_STATE_LABELS = {"sent": "已发送", "failed": "未发出（将重试）", "undeliverable": "被对方服务器拒收",
                 "uncertain": "状态不确定", "sending": "发送中"}


def _deliveries_artifact(ctx: Context, bulletin: Bulletin, base: OutgoingMessage, audience: list,
                         counts: dict) -> None:
    """Every recipient with what the ledger says of its copy (and why, when it did not go out)."""
    keys = [copy_key(base, to) for to, _unit in audience]
    states = delivery_states(ctx.ledger, keys)
    rows = []
    for (to, _unit), key in zip(audience, keys):
        state, _at, error = states.get(key, (None, None, None))
        rows.append({"收件人": to.name, "地址": to.email, "版本": bulletin.version,
                     "状态": _STATE_LABELS.get(state, "未发出"), "原因": "" if state == "sent" else (error or "")[:200]})
    create_table_artifact(key=f"{ctx.campaign_id}-deliveries", table=rows,
                          description=f"第{bulletin.version}版简讯分发：{counts}")


@flow(name="publish-bulletin", flow_run_name=run_name("publish"), log_prints=True, on_failure=[robots_on_failure])
def publish_bulletin(campaign: str, version: int | None = None, dry_run: bool = False,
                     wait_for_approval: bool = False, resend_uncertain: bool = False,
                     now: dt.datetime | None = None, home: str | None = None,
                     config_dir: str | None = None):
    """Send an approved bulletin version to the distribution lists, once per recipient; with
    ``wait_for_approval``, wait (suspended) for the decision on it first."""
    ctx = open_context(campaign, home, config_dir, now)
    log = get_run_logger()
    check_uncertain(ctx)
    if wait_for_approval and not dry_run:
        try:
            bulletin = _await_decision(ctx, version)
        except Ended as exc:
            log.warning("%s", exc)
            return Completed(message=str(exc), data={"campaign": ctx.campaign_id, "version": version,
                                                      "approval": "ended", "sent": 0, "reason": str(exc)})
    else:
        bulletin = find_version(ctx.ledger, ctx.campaign_id, version)
    if bulletin.approval != APPROVED and not dry_run:
        reason = (f"第{bulletin.version}版已被驳回（{bulletin.approved_by}），未发送" if bulletin.approval == REJECTED
                  else f"第{bulletin.version}版尚未批准，未发送")
        log.warning("%s", reason)
        if bulletin.approval == REJECTED:  # the coordinators hear it once, whoever rejected it where
            chain = chain_state(ctx.ledger, ctx.campaign_id, bulletin.version, ctx.config.campaign.bulletin.approvers)
            send_messages(ctx, [(rejection_notice(ctx.config, bulletin.version, bulletin.approved_by,
                                                  bulletin.approval_note, chain, ctx.override_dir), None)], "notice")
        return Completed(message=reason, data={"campaign": ctx.campaign_id, "version": bulletin.version,
                                               "approval": bulletin.approval, "sent": 0})
    audience = bulletin_audience(ctx.config)
    base, blocks = build_bulletin_mail(ctx, bulletin)
    counts = send_bulletin(ctx, base, blocks, audience, dry_run, resend_uncertain)
    upward = None
    if not dry_run:
        _deliveries_artifact(ctx, bulletin, base, audience, counts)
        publish_chain(ctx)
        if ctx.config.campaign.reports_to:
            upward = report_upward(ctx, bulletin)
    return {"campaign": ctx.campaign_id, "version": bulletin.version, "approval": bulletin.approval,
            "recipients": len(audience), **counts, **({"upward": upward} if upward else {})}


@task(name="report-upward", cache_policy=NO_CACHE)
def report_upward(ctx: Context, bulletin: Bulletin) -> str:
    """The approved version as this office's return to the parent campaign, once per version
    (the ledger's key); raises (the run fails, the distribution already done) when it cannot
    be made or delivered, so that a rerun of publish delivers it."""
    log = get_run_logger()
    rt = ctx.config.campaign.reports_to
    try:
        parent = load_config(parent_dir(ctx.config), rt.campaign)
        earlier = delivery_states(ctx.ledger, [upward_key(ctx.config, v) for v in range(1, bulletin.version)])
        msg = upward_message(ctx.config, parent, ctx.home / bulletin.folder, bulletin.version,
                             bulletin.approved_by or "", any(s == "sent" for s, _at, _e in earlier.values()),
                             ctx.override_dir)
    except (ConfigError, UpwardError) as exc:
        raise UpwardError(f"未能向上级任务 {rt.campaign} 报送第{bulletin.version}版：{exc}") from exc
    if rt.drop_folder:
        with DropFolderMailer(rt.drop_folder) as mailer:
            outcome = deliver_many(ctx.ledger, mailer, [(msg, None)], campaign=ctx.campaign_id, step="upward")[0]
        where = mailer.description
    else:
        counts = send_messages(ctx, [(msg, None)], "upward")
        outcome = next(iter(k for k, v in counts.items() if v), "failed")
        where = rt.mailbox
    done = {"sent": "已报送", "skipped": "此前已报送，未重复"}.get(outcome)
    if done is None:
        raise UpwardError(f"第{bulletin.version}版未能报送上级任务 {rt.campaign}（{where}）：{outcome}；重新运行发布即可补报")
    log.info("%s：第%d版作为 %s 的报表 → %s（%s）", done, bulletin.version, rt.unit, rt.campaign, where)
    return outcome

"""Prefect pieces shared by the flows: sending a batch of messages, artifacts, run names."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from typing import Callable

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from tasks.core.settings import AppSettings
from tasks.decisions.status import STATE_LABELS, completeness, completeness_line
from tasks.mail.delivery import deliver_many, mark_stale_uncertain, outcomes_since, undeliverable
from tasks.mail.mailer import mailer_from_env
from tasks.mail.message import OutgoingMessage
from tasks.mail.notices import coordinator_notice

from .context import Context
from .robots import tell_robots_of_sent
from .secrets import smtp_settings

PROGRESS_EVERY = 500  # messages between progress lines in send_messages


class SendFailed(RuntimeError):
    """Some messages failed for a reason that may pass (the server unreachable, a 4xx reply):
    raised so that Prefect retries the batch (sent ones are skipped). Carries the counts."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__(f"{counts.get('failed', 0)} message(s) could not be sent yet; sent ones are skipped on retry")
        self.counts = counts


def transient_only(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn
    """Retry the batch only for :class:`SendFailed` (what may pass). A permanent refusal, an
    uncertain message and any other error (a bug, the ledger gone) are never retried."""
    return isinstance(state.data, SendFailed)


def run_name(step: str) -> Callable[[], str]:
    """``collect energy-week-2023 2023-09-28 17:00`` from the run's parameters."""
    def _name() -> str:
        params = flow_run.parameters or {}
        now = params.get("now")
        when = now.strftime("%Y-%m-%d %H:%M") if isinstance(now, dt.datetime) else (now or "now")
        return f"{step} {params.get('campaign', '?')} {when}"
    return _name


# Callers pass big message lists wrapped in prefect.utilities.annotations.quote: Prefect then
# hands the list over as is instead of walking every message (and its attachments).
RETRY_DELAYS = AppSettings().send_retry_delays


@task(name="send-messages", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS or 0,
      retry_condition_fn=transient_only, cache_policy=NO_CACHE, task_run_name="send-{step}-{ctx.campaign_id}")
def send_batch(ctx: Context, messages: list[tuple[OutgoingMessage, str | None]], step: str,
               dry_run: bool = False, resend_uncertain: bool = False) -> dict[str, int]:
    """Deliver each (message, unit) once; raises :class:`SendFailed` (retried) while some failed
    for a reason that may pass."""
    counts = deliver_counted(ctx, messages, step, dry_run, resend_uncertain)
    if counts.get("failed"):
        raise SendFailed(counts)
    return counts


def send_messages(ctx: Context, messages, step: str, dry_run: bool = False,
                  resend_uncertain: bool = False, tell_refused: bool = True) -> dict[str, int]:
    """Run :func:`send_batch` (with its retries) and count the outcomes: sent, skipped, failed,
    uncertain, undeliverable. Messages that could not be sent are in the counts, never raised;
    the coordinators are told about recipients the server refused for good (a caller sending
    by batches passes ``tell_refused=False`` and calls :func:`notify_undeliverable` once at the end)."""
    started = dt.datetime.now(dt.timezone.utc)
    state = send_batch(ctx, messages, step, dry_run, resend_uncertain, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException) and not isinstance(outcome, SendFailed):
        raise outcome
    counts = outcome.counts if isinstance(outcome, SendFailed) else outcome
    listed = messages.unquote() if isinstance(messages, quote) else messages
    if listed and not dry_run:  # over every attempt of the batch, not only the last one
        counts = outcomes_since(ctx.ledger, [m.key for m, _ in listed], started, sent_here=ctx.sent_keys)
    if counts.get("undeliverable") and step != "notice" and tell_refused:
        notify_undeliverable(ctx, step)
    return counts


def deliver_counted(ctx: Context, messages: list[tuple[OutgoingMessage, str | None]], step: str,
                    dry_run: bool = False, resend_uncertain: bool = False) -> dict[str, int]:
    """Deliver each (message, unit) once, through one connection, in ledger-guarded chunks
    (``tasks.mail.delivery.deliver_many``); count the outcomes."""
    log = get_run_logger()
    counts: Counter[str] = Counter()
    if not messages:
        return {}
    logged = 0

    def progress(done: int, total: int) -> None:
        nonlocal logged
        if done // PROGRESS_EVERY > logged // PROGRESS_EVERY:
            log.info("已处理 %d/%d", done, total)
        logged = done

    with mailer_from_env(ctx.home, smtp_settings()) as mailer:
        if not dry_run:
            log.info("发送 %d 封 %s 邮件，经由 %s", len(messages), step, mailer.description)
        outcomes = deliver_many(ctx.ledger, mailer, messages, campaign=ctx.campaign_id, step=step,
                                dry_run=dry_run, resend_uncertain=resend_uncertain, progress=progress)
    sent = [m for (m, _), outcome in zip(messages, outcomes) if outcome == "sent"]
    ctx.sent_keys.update(m.key for m in sent)
    for (msg, _unit), outcome in zip(messages, outcomes):
        counts[outcome] += 1
        if dry_run:
            log.info("[dry-run] %s → %s", msg.subject, ", ".join(a.email for a in msg.to))
        elif outcome in ("failed", "uncertain", "undeliverable"):
            log.warning("%s：%s → %s", OUTCOME_LABELS[outcome], msg.subject, ", ".join(a.email for a in msg.to))
    tell_robots_of_sent(ctx.config, ctx.ledger, step, sent)
    return dict(counts)


OUTCOME_LABELS = {"failed": "未发出（稍后重试）failed", "uncertain": "发送状态不确定 uncertain",
                  "undeliverable": "被对方服务器拒收 undeliverable"}


def notify_undeliverable(ctx: Context, step: str) -> None:
    """One notice per set of messages the server refused for good (the ledger sends it once)."""
    refused = undeliverable(ctx.ledger, ctx.campaign_id, step)
    if not refused:
        return
    digest = hashlib.sha256("\n".join(k for k, _, _ in refused).encode()).hexdigest()[:12]
    lines = [f"{key}：{'、'.join(rcpts)}（{error}）" for key, rcpts, error in refused]
    notice = coordinator_notice(
        ctx.config, f"undeliverable/{step}/{len(refused)}/{digest}", "邮件被对方服务器拒收",
        "以下邮件被收件方服务器永久拒收（地址可能有误或邮箱已停用），系统不会自动重发。请在配置中更正地址后"
        "重新运行相应步骤：地址改变的邮件会发往新地址。", lines, ctx.override_dir)
    deliver_counted(ctx, [(notice, None)], "notice")


@task(name="check-uncertain-sends", cache_policy=NO_CACHE)
def check_uncertain(ctx: Context) -> list[str]:
    """Claims left in ``sending`` by a crash become ``uncertain``; tell the coordinators."""
    keys = mark_stale_uncertain(ctx.ledger, ctx.campaign_id)
    if keys:
        get_run_logger().warning("发现 %d 封发送状态不确定的邮件：%s", len(keys), ", ".join(keys))
        notice = coordinator_notice(
            ctx.config, f"uncertain/{len(keys)}/{keys[0]}", "邮件发送状态不确定",
            "以下邮件在发送过程中中断，无法确定对方是否收到。系统不会自动重发；如需重发（使用相同的 "
            "Message-ID），请对相应步骤加 --resend-uncertain：回执与通知 bulletin collect，报送通知 "
            "bulletin request，催报 bulletin remind，简讯 bulletin send。", keys, ctx.override_dir)
        deliver_counted(ctx, [(notice, None)], "notice")
    return keys


#: The completeness artifact lists at most this many units (those needing attention first);
#: the whole list is always in ``bulletin status``.
ARTIFACT_ROWS = 1000


@task(name="publish-completeness", cache_policy=NO_CACHE)
def publish_completeness(ctx: Context) -> dict:
    """The completeness table as a Prefect table artifact ``<campaign>-completeness``."""
    status = completeness(ctx.ledger, ctx.config, ctx.now)
    late = set(status["late"])
    units = status["units"]
    if len(units) > ARTIFACT_ROWS:
        units = sorted(units, key=lambda u: u["state"] == "accepted" and u["code"] not in late)
    rows = [{"单位代码": u["code"], "单位": u["name"], "状态": STATE_LABELS.get(u["state"], u["state"]),
             "报送时间": u["submitted_at"] or "", "报送次数": u["version"] or 0,
             "逾期": "是" if u["code"] in late else ""} for u in units[:ARTIFACT_ROWS]]
    shown = "" if len(units) <= ARTIFACT_ROWS else (
        f"；表中列出需要关注的单位在前的{ARTIFACT_ROWS}家，全部单位见 bulletin status {ctx.campaign_id}")
    create_table_artifact(
        key=f"{ctx.campaign_id}-completeness", table=rows,
        description=f"{completeness_line(status)}（{status['now']}）{shown}")
    return status

"""Flow ``collect-returns``: take in, archive, validate, decide, send receipts, report."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections import Counter
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from tasks.bulletin.signoff import as_signoff_reply, record_reply, request_digests
from tasks.core.ledger import REFUSED, SENT
from tasks.core.settings import AppSettings, ImapSettings
from tasks.decisions.outcome import Outcome
from tasks.decisions.owed import NOTICE, RECEIPT, forgive, outcome_from, owed, settle
from tasks.decisions.processing import process_received
from tasks.decisions.review import explain_by_reply
from tasks.intake.intake import drop_folder_entries, take_in_entries
from tasks.intake.mailbox import CONNECTION_ERRORS, MailboxError, MailboxResult, collect_mailbox, collect_maildir
from tasks.mail.delivery import state_of
from tasks.mail.notices import coordinator_notice, receipt_messages
from tasks.reading.parallel import PARALLEL_FROM
from tasks.reading.parsing import PackedParsed, Preparser, received_jobs

from .common import check_uncertain, notify_undeliverable, publish_completeness, run_name, send_messages
from .context import Context, open_context
from .dask_parsing import dask_address, parse_on_dask
from .robots import robots_on_failure
from .secrets import SecretError, imap_settings
from .signoff import follow_up_signoff, publish_approved


@task(name="take-in-drop-folder", cache_policy=NO_CACHE)
def take_in_drop_folder(ctx: Context, inbox: str | None) -> tuple[list, dict]:
    """Archive every entry of the drop folder, record it, then move it to ``processed/``;
    a large batch is read by worker processes meanwhile: (results, parsed submissions by id)."""
    log = get_run_logger()
    folder = Path(inbox) if inbox else ctx.home / "inbox" / ctx.campaign_id
    folder.mkdir(parents=True, exist_ok=True)
    entries = drop_folder_entries(folder)
    log.info("收件目录 %s：%d 份待处理", folder, len(entries))

    camp = ctx.config.campaign
    # read in local workers while the intake goes on; with a Dask cluster, after it (decide_returns)
    big = len(entries) >= PARALLEL_FROM and not dask_address()
    with Preparser(ctx.ledger, ctx.config) if big else contextlib.nullcontext() as pre:

        def progress(done: int, total: int) -> None:
            log.info("已归档 %d/%d%s", done, total, f"，已解析 {pre.completed()}" if pre else "")

        def parsing(done: int, total: int) -> None:
            if done == total:
                log.info("解析进度 %d/%d", done, total)

        results = take_in_entries(
            ctx.ledger, ctx.campaign_id, entries, source="folder", now=ctx.now,
            max_file_bytes=camp.max_file_bytes, max_photo_bytes=camp.max_photo_bytes, progress=progress,
            recorded=(lambda done: pre.add([r.submission_id for r in done if r.outcome == "received"]))
            if pre else None)
        parsed = {}
        if pre:
            try:
                parsed = pre.parsed(parsing)
            except Exception as exc:  # noqa: BLE001 - e.g. a worker killed for memory: read them here
                log.warning("后台解析进程失败（%s: %s），改由本进程逐份解析", type(exc).__name__, exc)
    for result in results:
        if result.outcome != "received":
            log.warning("《%s》：%s %s", result.name, result.outcome, result.detail)
    return results, parsed


def _mailbox_dropped(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn
    """Retry the mailbox only when its connection broke mid-run (what was taken in is known and
    skipped); a bug or a ledger error is not retried."""
    return isinstance(state.data, CONNECTION_ERRORS)


@task(name="take-in-mailbox", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_mailbox_dropped,
      cache_policy=NO_CACHE)
def take_in_mailbox(ctx: Context) -> tuple[list, list, list[str]]:
    """Archive and record every message of the campaign's IMAP folder (when a host is set) and
    of ``BULLETIN_MAILDIR`` (when set): (taken-in submissions, replies carrying explanations,
    problems for the coordinators). Replies to approval requests are decided on the way."""
    log = get_run_logger()
    common = dict(now=ctx.now, max_file_bytes=ctx.config.campaign.max_file_bytes, signoff=signoff_hook(ctx))
    found: list[tuple[str, MailboxResult]] = []
    problems: list[str] = []
    maildir = AppSettings().maildir
    try:
        settings = imap_settings()
    except SecretError as exc:  # the drop folder and the Maildir are still taken in
        log.error("%s", exc)
        problems.append(f"无法读取邮箱：{exc}")
        settings = ImapSettings(host=None)
    if ctx.config.campaign.mailbox_folder:
        settings = settings.model_copy(update={"folder": ctx.config.campaign.mailbox_folder})
    if settings.host:
        try:
            found.append((settings.folder, collect_mailbox(ctx.ledger, ctx.campaign_id, settings,
                                                           work_dir=ctx.home / "work" / "imap" / ctx.campaign_id,
                                                           **common)))
        except MailboxError as exc:
            log.error("%s", exc)
            problems.append(f"无法读取邮箱：{exc}")
    if maildir:
        found.append((maildir, collect_maildir(ctx.ledger, ctx.campaign_id, Path(maildir),
                                               work_dir=ctx.home / "work" / "maildir" / ctx.campaign_id, **common)))
    taken, replies = [], []
    for where, r in found:
        if r.busy:
            log.info("邮箱 %s 正由另一运行读取，本次跳过", where)
            continue
        log.info("邮箱 %s：%d 份报送，%d 封审批答复，%d 封自动回复（已记录，不回复），%d 封无附件，%d 封处理失败",
                 where, len(r.taken), r.signoffs, r.auto_replies, r.skipped, r.failed)
        if r.failed:
            problems.append(f"{r.failed} 封邮件处理失败，已留在邮箱中下次重试")
        taken += r.taken
        replies += r.replies
    return taken, replies, problems


def signoff_hook(ctx: Context):
    """Replies to the campaign's approval requests, decided in the ledger as they are read
    (``tasks.bulletin.signoff``); None when the campaign names no approvers."""
    if not ctx.config.campaign.bulletin.approvers:
        return None
    requests = request_digests(ctx.ledger, ctx.campaign_id)
    log = get_run_logger()

    def hook(message, sender: str, subject: str, text: str, sha: str) -> bool:
        reply = as_signoff_reply(message, ctx.campaign_id, requests, sender=sender, subject=subject,
                                 text=text, sha256=sha)
        if reply is None:
            return False
        detail = record_reply(ctx.ledger, ctx.config, reply, ctx.now)
        log.info("审批答复 %s → 第%s版：%s %s", reply.sender, detail.get("version"), detail["outcome"],
                 detail.get("reason") or detail.get("note") or "")
        return True
    return hook


@task(name="apply-explanations", cache_policy=NO_CACHE)
def apply_explanations(ctx: Context, replies: list) -> list[int]:
    """Replies from a unit's contacts explain the warnings on its waiting return: accept it
    (its receipt is then owed like any other). Returns the submissions accepted."""
    accepted = []
    for reply in replies:
        sub = explain_by_reply(ctx.ledger, ctx.config, reply.sender, reply.text, ctx.now)
        if sub is None:
            get_run_logger().info("来自 %s 的邮件没有附件，也没有待说明的报表：已记录", reply.sender)
        else:
            accepted.append(sub.id)
    return accepted


@task(name="decide-returns", cache_policy=NO_CACHE)
def decide_returns(ctx: Context, preparsed: dict | PackedParsed | None = None) -> list[Outcome]:
    """Parse, identify and validate every received submission in one batch; record decisions."""
    log = get_run_logger()

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            log.info("解析进度 %d/%d", done, total)

    outcomes = process_received(ctx.ledger, ctx.config, ctx.now, progress=progress, preparsed=preparsed)
    for o in outcomes:
        if o.state != "accepted":  # accepted ones are summed up below, not logged one by one
            log.info("%s《%s》→ %s（错误 %d，提示 %d）", o.unit_code or "未识别", o.name, o.state,
                     len(o.errors), len(o.warnings))
    log.info("本次处理 %d 份，通过 %d 份", len(outcomes), sum(o.state == "accepted" for o in outcomes))
    return outcomes


#: Receipts built and sent per batch: a run's memory does not grow with the number of returns.
RECEIPT_CHUNK = 2000


@task(name="build-owed-receipts", cache_policy=NO_CACHE)
def build_owed_receipts(ctx: Context, decided_now: set[int], after: int = 0) -> tuple[list, int | None]:
    """One batch of the receipts the ledger owes (rows after ``after``): this run's decisions
    and any an earlier run did not send (killed after deciding, or failed); receipts nobody can
    be sent are forgiven. Returns the messages and the last row read (None: nothing left)."""
    rows = owed(ctx.ledger, ctx.campaign_id, RECEIPT, after=after, limit=RECEIPT_CHUNK)
    outcomes = [outcome_from(r.payload) for r in rows]
    messages = receipt_messages(ctx.config, outcomes, ctx.override_dir)
    built = {m.key for m, _ in messages}
    forgive(ctx.ledger, [r.key for r in rows if r.key not in built])
    earlier = sum(o.submission_id not in decided_now for o in outcomes)
    if earlier:
        get_run_logger().warning("补发此前运行未发出的回执 %d 份", earlier)
    return messages, (rows[-1].id if rows else None)


def send_receipts(ctx: Context, decided_now: set[int], resend_uncertain: bool) -> dict[str, int]:
    """Every owed receipt, built and sent by batches of :data:`RECEIPT_CHUNK`; the coordinators
    hear once, at the end, of the recipients the server refused for good."""
    counts: Counter[str] = Counter()
    after: int | None = 0
    while after is not None:
        messages, after = build_owed_receipts(ctx, quote(decided_now), after)
        if messages:
            counts.update(send_messages(ctx, quote(messages), "receipt", resend_uncertain=resend_uncertain,
                                        tell_refused=False))
        del messages  # before the next batch is built
    if counts.get("undeliverable"):
        notify_undeliverable(ctx, "receipt")
    return dict(counts)


def _notify_coordinators(ctx: Context, problems: list[str], resend_uncertain: bool) -> None:
    """One notice with every owed line (quarantined, unreadable, held back, refused) and this
    run's mailbox problems; the lines are forgotten once it is sent. Its key names the owed
    lines it carries, so a re-run after a crash sends it once, and new lines make a new one."""
    rows = owed(ctx.ledger, ctx.campaign_id, NOTICE)
    lines = problems + [r.payload["line"] for r in rows]
    if not lines:
        return
    # named by the owed lines' own keys (a submission's), never by row ids: a database may give
    # a deleted row's id again, and the new notice would then pass for the one already sent
    digest = hashlib.sha256("\n".join(r.key for r in rows).encode()).hexdigest()[:16]
    key = f"intake/{digest}-{len(rows)}" if rows else f"mailbox/{int(ctx.now.timestamp())}"
    notice = coordinator_notice(ctx.config, key, "有报送材料需要人工处理",
                                "以下报送材料无法自动处理（已归档，未丢失），请核实：", lines, ctx.override_dir)
    send_messages(ctx, [(notice, None)], "notice", resend_uncertain=resend_uncertain)
    if state_of(ctx.ledger, notice.key) == SENT:
        forgive(ctx.ledger, [r.key for r in rows])


@flow(name="collect-returns", flow_run_name=run_name("collect"), log_prints=True, on_failure=[robots_on_failure])
def collect_returns(campaign: str, inbox: str | None = None, now: dt.datetime | None = None,
                    home: str | None = None, config_dir: str | None = None,
                    resend_uncertain: bool = False) -> dict:
    """Take in every waiting return, tell each submitter the outcome, publish completeness."""
    ctx = open_context(campaign, home, config_dir, now)
    get_run_logger().info("收取报表：%s，主目录 %s", ctx.campaign_id, ctx.home)
    check_uncertain(ctx)
    taken, preparsed = take_in_drop_folder(ctx, inbox)
    mailed, replies, mailbox_problems = take_in_mailbox(ctx)
    taken = taken + mailed
    if (address := dask_address()) and not preparsed:  # here, not in a task: see parse_on_dask
        jobs = received_jobs(ctx.ledger, ctx.campaign_id)
        if len(jobs) >= PARALLEL_FROM:
            preparsed = parse_on_dask(ctx, jobs, address)
    outcomes = decide_returns(ctx, quote(preparsed))
    explained = apply_explanations(ctx, replies) if replies else []
    decided_now = {o.submission_id for o in outcomes} | set(explained)
    receipts = send_receipts(ctx, decided_now, resend_uncertain)
    settle(ctx.ledger, ctx.campaign_id)
    _notify_coordinators(ctx, mailbox_problems, resend_uncertain)
    signoff = follow_up_signoff(ctx, resend_uncertain=resend_uncertain)
    if signoff.get("publish"):
        signoff["bulletin"] = publish_approved(ctx, signoff["publish"])
    refused = [r for r in taken if r.outcome == REFUSED]
    status = publish_completeness(ctx)
    states: dict[str, int] = {}
    for o in outcomes:
        states[o.state] = states.get(o.state, 0) + 1
    return {"campaign": ctx.campaign_id, "taken_in": len(taken), "decided": states,
            "receipts": receipts, "mailbox": mailbox_problems,
            **({"signoff": signoff} if signoff else {}),
            "accepted_units": status["accepted"], "expected": status["expected"],
            "problems": sum(v for k, v in states.items() if k != "accepted") + len(refused)
            + len(mailbox_problems)}

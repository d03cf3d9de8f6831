"""Flow ``request-returns``: each unit gets its request with its own pre-filled workbook."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from sqlalchemy import func, select

from tasks.core.ledger import RequestRecord, hold
from tasks.intake.archive import archive_bytes, archived_bytes
from tasks.mail.notices import request_message
from tasks.mail.workbook import build_request_workbook

from .common import check_uncertain, run_name, send_messages
from .context import Context, open_context
from .robots import robots_on_failure


def _select_units(ctx: Context, codes: list[str] | None):
    if not codes:
        return ctx.config.units
    unknown = [c for c in codes if c not in ctx.config.unit_by_code]
    if unknown:
        raise ValueError(f"未知单位代码 unknown unit code(s): {', '.join(unknown)}")
    return [ctx.config.unit_by_code[c] for c in codes]


@task(name="build-requests", cache_policy=NO_CACHE)
def build_requests(ctx: Context, codes: list[str] | None, force: bool, dry_run: bool) -> list:
    """Each selected unit's workbook and message; a forced resend gets the next sequence. A
    request already recorded (a rerun, a resend) goes with the workbook it recorded, read
    back from the archive, not built again."""
    with ctx.ledger.reading() as s:
        asked = _asked(s, ctx.campaign_id)
        recorded = _recorded_workbooks(s, ctx.campaign_id)
    out, records = [], []
    for unit in _select_units(ctx, codes):
        before = asked.get(unit.code, 0)
        # unchanged sequence = the same delivery key as before, which the ledger skips
        sequence = before + 1 if force or not before else before
        workbook = archived_bytes(ctx.home, recorded[unit.code]) if sequence == before else None
        if workbook is None:
            workbook = build_request_workbook(ctx.config.campaign, unit)
        if not dry_run and sequence > before:
            sha, _ = archive_bytes(ctx.home, workbook)
            records.append(RequestRecord(campaign=ctx.campaign_id, unit_code=unit.code,
                                         workbook_sha256=sha, created_at=ctx.now))
        out.append((request_message(ctx.config, unit, workbook, sequence=sequence,
                                    override=ctx.override_dir), unit.code))
    with ctx.ledger.session() as s:
        hold(s, f"requests/{ctx.campaign_id}")
        # a unit another run recorded meanwhile is left to it (same sequence, same delivery key)
        now_asked = _asked(s, ctx.campaign_id)
        s.add_all(r for r in records if now_asked.get(r.unit_code, 0) == asked.get(r.unit_code, 0))
    return out


def _recorded_workbooks(s, campaign: str) -> dict[str, str]:
    """Each unit's latest recorded request workbook (sha256)."""
    rows = s.execute(select(RequestRecord.unit_code, RequestRecord.workbook_sha256)
                     .where(RequestRecord.campaign == campaign).order_by(RequestRecord.id)).all()
    return dict(rows)


def _asked(s, campaign: str) -> dict[str, int]:
    """How many requests each unit already has, in one query."""
    return dict(s.execute(select(RequestRecord.unit_code, func.count())
                          .where(RequestRecord.campaign == campaign)
                          .group_by(RequestRecord.unit_code)).all())


@flow(name="request-returns", flow_run_name=run_name("request"), log_prints=True, on_failure=[robots_on_failure])
def request_returns(campaign: str, units: list[str] | None = None, force: bool = False,
                    dry_run: bool = False, now: dt.datetime | None = None,
                    home: str | None = None, config_dir: str | None = None,
                    resend_uncertain: bool = False) -> dict:
    """Send each unit (or the given ones) its request once; ``force`` resends and says so."""
    ctx = open_context(campaign, home, config_dir, now)
    log = get_run_logger()
    log.info("报送通知：%s，主目录 %s", ctx.campaign_id, ctx.home)
    check_uncertain(ctx)
    messages = build_requests(ctx, units, force, dry_run)
    counts = send_messages(ctx, quote(messages), "request", dry_run=dry_run, resend_uncertain=resend_uncertain)
    log.info("报送通知结果：%s", counts)
    return {"campaign": ctx.campaign_id, "units": len(messages), **counts}

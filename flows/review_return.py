"""Flow ``review-return``: a coordinator accepts, rejects or reopens a unit's return by hand."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger

from tasks.decisions.review import ReviewError, review
from tasks.mail.notices import review_message

from .common import publish_completeness, run_name, send_messages
from .context import open_context


@flow(name="review-return", flow_run_name=run_name("review"), log_prints=True)
def review_return(campaign: str, unit: str, action: str, by: str, note: str,
                  submission: int | None = None, now: dt.datetime | None = None,
                  home: str | None = None, config_dir: str | None = None) -> dict:
    """Record the decision in the ledger, tell the unit, refresh the completeness table."""
    ctx = open_context(campaign, home, config_dir, now)
    try:
        sub = review(ctx.ledger, ctx.config, unit, action=action, by=by, note=note, now=ctx.now,
                     submission_id=submission)
    except ReviewError as exc:  # a refused decision is an answer, not a crashed run
        get_run_logger().error("%s", exc)
        return {"campaign": ctx.campaign_id, "unit": unit, "error": str(exc)}
    counts = send_messages(ctx, [(review_message(ctx.config, sub, action, by, note, ctx.override_dir), unit)],
                           "review")
    publish_completeness(ctx)
    return {"campaign": ctx.campaign_id, "unit": unit, "submission": sub.id, "state": sub.state, **counts}

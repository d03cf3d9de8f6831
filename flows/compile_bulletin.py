"""Flow ``compile-bulletin``: merge the accepted returns and render bulletin version N."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.bulletin.compile import compile_bulletin as compile_version

from .approval import retire_superseded_runs
from .common import publish_completeness, run_name
from .context import Context, open_context
from .robots import robots_on_failure
from .signoff import follow_up_signoff


@task(name="render-bulletin", cache_policy=NO_CACHE)
def render_bulletin(ctx: Context, lead: str | None) -> dict:
    bulletin, created = compile_version(ctx.ledger, ctx.config, ctx.now, lead=lead,
                                        override_dir=ctx.override_dir)
    folder = ctx.home / bulletin.folder
    get_run_logger().info("%s 第%d版：%s", "生成" if created else "内容未变，沿用", bulletin.version, folder)
    return {"version": bulletin.version, "created": created, "folder": str(folder),
            "approval": bulletin.approval}


@flow(name="compile-bulletin", flow_run_name=run_name("compile"), log_prints=True, on_failure=[robots_on_failure])
def compile_bulletin(campaign: str, lead: str | None = None, now: dt.datetime | None = None,
                     home: str | None = None, config_dir: str | None = None) -> dict:
    """Compile the bulletin; the same inputs give the existing version, not a new one."""
    ctx = open_context(campaign, home, config_dir, now)
    result = render_bulletin(ctx, lead)
    markdown = (ctx.home / result["folder"] / "bulletin.md").read_text(encoding="utf-8")
    create_markdown_artifact(key=f"{ctx.campaign_id}-bulletin", markdown=markdown,
                             description=f"第{result['version']}版（{result['approval']}）")
    if result["created"]:
        result["waiting_runs"] = retire_superseded(ctx, result["version"])
    signoff = follow_up_signoff(ctx)  # the first level's requests (once per version)
    if signoff.get("messages"):
        result["signoff"] = signoff["messages"]
    publish_completeness(ctx)
    return {"campaign": ctx.campaign_id, **result}


@task(name="retire-superseded-waits", cache_policy=NO_CACHE)
def retire_superseded(ctx: Context, version: int) -> dict:
    """Publish runs waiting on an older version end (they would send nothing anyway); one
    waiting on this version takes their place, so the UI offers its form."""
    log = get_run_logger()
    try:
        changed = retire_superseded_runs(ctx.campaign_id, version)
    except Exception as exc:  # noqa: BLE001 - the version is made; a waiting run checks for itself
        log.warning("未能结束等待旧版本审批的发布运行（%s）；它们恢复后会自行结束，不会发送", exc)
        return {}
    if changed["ended"]:
        log.info("第%d版取代了旧版本：结束 %d 个等待审批的发布运行，新开 %d 个等待第%d版",
                 version, len(changed["ended"]), len(changed["offered"]), version)
    return changed

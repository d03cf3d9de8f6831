"""Flow ``compile-bulletin``: merge the accepted returns and render bulletin version N."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.compile import compile_bulletin as compile_version

from .common import publish_completeness, run_name
from .context import Context, open_context


@task(name="render-bulletin", cache_policy=NO_CACHE)
def render_bulletin(ctx: Context, lead: str | None) -> dict:
    bulletin, created = compile_version(ctx.ledger, ctx.config, ctx.now, lead=lead,
                                        override_dir=ctx.override_dir)
    folder = ctx.home / bulletin.folder
    get_run_logger().info("%s 第%d版：%s", "生成" if created else "内容未变，沿用", bulletin.version, folder)
    return {"version": bulletin.version, "created": created, "folder": str(folder),
            "approval": bulletin.approval}


@flow(name="compile-bulletin", flow_run_name=run_name("compile"), log_prints=True)
def compile_bulletin(campaign: str, lead: str | None = None, now: dt.datetime | None = None,
                     home: str | None = None, config_dir: str | None = None) -> dict:
    """Compile the bulletin; the same inputs give the existing version, not a new one."""
    ctx = open_context(campaign, home, config_dir, now)
    result = render_bulletin(ctx, lead)
    markdown = (ctx.home / result["folder"] / "bulletin.md").read_text(encoding="utf-8")
    create_markdown_artifact(key=f"{ctx.campaign_id}-bulletin", markdown=markdown,
                             description=f"第{result['version']}版（{result['approval']}）")
    publish_completeness(ctx)
    return {"campaign": ctx.campaign_id, **result}

"""The campaign's group robots (``robots:`` in its config) told what the coordinators are
mailed: notices, approval requests, and a step that failed. A robot that fails is logged and
recorded in the ledger's audit trail (``robot_failed``); the step goes on."""

from __future__ import annotations

import datetime as dt
import logging
import os

from tasks.core.config import Config, Robot
from tasks.core.ledger import Ledger
from tasks.mail.robots import RobotError, post, robot_text

from .secrets import SecretError, read_secret_block

log = logging.getLogger("bulletin.robots")

#: The steps whose sent messages are the coordinators' (and approvers') business.
ROBOT_STEPS = ("notice", "approval")


def _value(env: str | None, block: str | None, what: str) -> str | None:
    if block:
        return read_secret_block(block, what)
    if env:
        value = os.environ.get(env)
        if not value:
            raise RobotError(f"环境变量 {env} 未设置（{what}）")
        return value
    return None


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def tell_robots(config: Config, ledger: Ledger | None, subjects: list[str], mailed: bool = True) -> int:
    """Post each subject to each of the campaign's robots (*mailed*: the coordinators also had
    a mail about it); how many posts failed."""
    failed = 0
    for robot in config.campaign.robots:
        for subject in subjects:
            try:
                post_one(robot, robot_text(config.campaign.name, subject, mailed))
            except (RobotError, SecretError) as exc:
                failed += 1
                _logger().warning("群机器人未收到通知 robot notice failed: %s", exc)
                if ledger is not None:
                    ledger.record(config.campaign.id, "robot_failed", subject=robot.kind, detail=str(exc),
                                  at=dt.datetime.now(dt.timezone.utc))
    return failed


def tell_robots_of_sent(config: Config, ledger: Ledger | None, step: str, sent: list) -> None:
    """The subjects of the coordinators' messages (*step* a :data:`ROBOT_STEPS` one) just sent,
    each once (an approval request goes to several approvers under one subject)."""
    if step in ROBOT_STEPS and sent and config.campaign.robots:
        tell_robots(config, ledger, list(dict.fromkeys(m.subject for m in sent)))


def post_one(robot: Robot, text: str) -> None:
    url = _value(robot.url_env, robot.url_block, "机器人地址 webhook URL")
    secret = _value(robot.secret_env, robot.secret_block, "机器人加签密钥 signing secret")
    post(robot.kind, url, text, secret)


def robots_on_failure(flow, flow_run, state) -> None:  # noqa: ANN001 - Prefect's on_failure hook
    """A step that failed: its campaign's robots are told which step, never the error's text
    (it may quote a unit's input)."""
    from .context import open_context
    params = flow_run.parameters or {}
    try:
        ctx = open_context(params["campaign"], params.get("home"), params.get("config_dir"))
    except Exception:  # noqa: BLE001 - no config, no robots to tell
        return
    tell_robots(ctx.config, ctx.ledger, [f"步骤 {flow.name} 运行失败，请在 Prefect 界面查看运行记录"], mailed=False)

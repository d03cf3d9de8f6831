"""``bulletin check``: every flaw of the configuration at once (file, key, line, reason), every
template rendered with sample data, and the mail settings that are present checked for
completeness. Nothing is sent, nothing is written outside a temporary folder."""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from tasks.core.config import Config, ConfigError, list_campaigns, load_config_afresh
from tasks.core.settings import AppSettings, ImapSettings, SmtpSettings


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}" + (f":{self.line}" if self.line else "")
        return f"{where}: {self.key or '(文件)'}: {self.reason}"


def yaml_line(path: Path | str, key: str) -> int | None:
    """The line (1-based) of a dotted key (``units.3.contacts.0.email``) in a YAML file: the
    deepest part of it the file has; None when the file cannot be read."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for part in [p for p in key.split(".") if p]:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if child is not None:
                key_node = next(k for k, v in node.value if v is child)
                line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            child = node.value[int(part)]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def config_problems(config_dir: Path, campaign: str | None = None) -> tuple[list[Problem], list[Config]]:
    """Every flaw of the units, the lists and the campaigns (or the one named), once each, and
    the campaigns that loaded."""
    seen: dict[tuple[str, str, str], Problem] = {}
    loaded = []
    for name in [campaign] if campaign else list_campaigns(config_dir):
        try:
            loaded.append(load_config_afresh(config_dir, name))
        except ConfigError as exc:
            for p in exc.every:
                seen.setdefault((p.file, p.key, p.reason), Problem(p.file, p.key, _line(p), p.reason))
    return list(seen.values()), loaded


def _line(p: ConfigError) -> int | None:
    if p.key.startswith("line "):  # a YAML syntax error names its own line
        return int(p.key.split()[1].rstrip(","))
    return yaml_line(p.file, p.key) if p.file.endswith((".yaml", ".yml")) else None


def template_problems(config: Config) -> list[Problem]:
    """Render every message and the bulletin of *config* with sample data: a template that
    fails (an unknown variable, a syntax error in an override) is reported, with the message."""
    from tasks.bulletin.compile import compile_bulletin
    from tasks.core.ledger import Ledger
    from tasks.decisions.outcome import Outcome
    from tasks.mail.notices import (
        coordinator_notice,
        receipt_message,
        reminder_message,
        request_message,
        review_message,
    )
    from tasks.mail.workbook import build_request_workbook

    from .context import Context
    camp = config.campaign
    override = Context(config, None, Path("."), dt.datetime.now(dt.timezone.utc)).override_dir
    unit = config.units[0]
    when = camp.calendar.deadline_at
    samples = {
        "request": lambda: request_message(config, unit, build_request_workbook(camp, unit), sequence=1,
                                           override=override),
        **{f"reminder {tier.name}": (lambda tier=tier: reminder_message(config, unit, tier, override=override))
           for tier in camp.calendar.reminders},
        **{f"receipt {state}": (lambda state=state: receipt_message(
            config, Outcome(1, "示例报表.xlsx", state, unit.code, unit.contacts[0].email,
                            errors=["B7：应为非负整数"] if state == "rejected" else [],
                            warnings=["示例提示"] if state == "needs_explanation" else [],
                            reason="示例原因" if state == "quarantined" else None), when, override))
           for state in ("accepted", "rejected", "needs_explanation", "quarantined")},
        "notice": lambda: coordinator_notice(config, "check", "示例通知", "示例说明", ["示例一行"], override),
        "review": lambda: review_message(config, _SampleSubmission(unit.code, when), "accept", "示例协调人", "示例意见",
                                         override),
    }
    problems = []
    for what, build in samples.items():
        try:
            build()
        except Exception as exc:  # noqa: BLE001 - each failure is a finding
            problems.append(_template_problem(config, what, exc))
    with tempfile.TemporaryDirectory(prefix="bulletin-check-") as home:
        try:
            compile_bulletin(Ledger(Path(home)), config, when, override_dir=override)
        except Exception as exc:  # noqa: BLE001
            problems.append(_template_problem(config, "bulletin", exc))
    return problems


def _template_problem(config: Config, what: str, exc: Exception) -> Problem:
    return Problem(str(config.campaign_file), f"templates ({what})", None, f"{type(exc).__name__}: {exc}")


def _env(variable: str, reason: str) -> Problem:
    return Problem("(环境变量)", variable, None, reason)


@dataclass(frozen=True)
class _SampleSubmission:
    unit_code: str
    decided_at: dt.datetime
    id: int = 1
    sender: str | None = None
    original_name: str = "示例报表.xlsx"
    version: int = 1


def mail_problems() -> list[Problem]:
    """The mail settings that are present, complete: a user needs a password, an IMAP host a user
    and a password; values that do not parse are reported by variable."""
    problems = []
    for settings_class, prefix in ((SmtpSettings, "BULLETIN_SMTP_"), (ImapSettings, "BULLETIN_IMAP_"),
                                   (AppSettings, "BULLETIN_")):
        try:
            settings = settings_class()
        except ValidationError as exc:
            problems += [_env(prefix + str(e["loc"][0]).upper(), e["msg"]) for e in exc.errors()]
            continue
        if isinstance(settings, (SmtpSettings, ImapSettings)) and settings.password and settings.password_block:
            problems.append(_env(f"{prefix}PASSWORD_BLOCK", f"与 {prefix}PASSWORD 只能设置一个"))
        has_password = getattr(settings, "password", None) is not None or getattr(settings, "password_block", None)
        if isinstance(settings, SmtpSettings) and settings.host and settings.user and not has_password:
            problems.append(_env("BULLETIN_SMTP_PASSWORD", "设置了 BULLETIN_SMTP_USER 但没有密码（或 BULLETIN_SMTP_PASSWORD_BLOCK）"))
        if isinstance(settings, ImapSettings) and settings.host:
            if settings.user is None:
                problems.append(_env("BULLETIN_IMAP_USER", "设置了 BULLETIN_IMAP_HOST 但缺少此项"))
            if not has_password:
                problems.append(_env("BULLETIN_IMAP_PASSWORD", "设置了 BULLETIN_IMAP_HOST 但缺少此项（或 BULLETIN_IMAP_PASSWORD_BLOCK）"))
        if isinstance(settings, AppSettings) and "@" not in settings.mail_from:
            problems.append(_env("BULLETIN_MAIL_FROM", f"'{settings.mail_from}' 不是邮件地址"))
    return problems

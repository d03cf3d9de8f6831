"""The ``bulletin`` command: thin over the flows. Exit 0 done, 1 problems found, 2 bad input."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tasks.core.config import ConfigError, load_config

from .context import config_cache, configure_prefect_home, resolve_home, resolve_now, running_server
from .context import resolve_config_dir as _resolve_config_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="报送任务：从报送通知到简讯分发。Report-collection campaigns, from request to bulletin.")

Home = Annotated[Optional[Path], typer.Option("--home", envvar="BULLETIN_HOME",
                                              help="State folder (default ./var).", show_default=False)]
Conf = Annotated[Optional[Path], typer.Option("--config", envvar="BULLETIN_CONFIG",
                                              help="Config folder with units.yaml, lists.yaml, campaigns/ (default ./config).",
                                              show_default=False)]
Now = Annotated[Optional[str], typer.Option("--now", help="Act as if at this ISO-8601 moment (rehearsals, tests).")]
Campaign = Annotated[str, typer.Argument(help="Campaign id (file stem under <config>/campaigns/) or a YAML path.")]
Units = Annotated[Optional[list[str]], typer.Option("--unit", help="Only this unit code (repeatable).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="List what would be sent; send nothing.")]
Resend = Annotated[bool, typer.Option("--resend-uncertain",
                                      help="Resend messages a crash left uncertain (same Message-ID).")]


def resolve_config_dir(config: Path | None) -> Path:
    """The configuration folder of a command (``--config``, ``BULLETIN_CONFIG``, ``./config``);
    exit 2 pointing at ``bulletin init`` when there is none there."""
    folder = _resolve_config_dir(config)
    if not (folder / "campaigns").is_dir():
        raise _err(f"找不到配置目录 {folder}（其中应有 units.yaml、lists.yaml 和 campaigns/）。新建项目：bulletin init 目录名，"
                   f"然后在该目录中运行命令，或用 --config 指定。No configuration at {folder}: run `bulletin init DIR`.")
    return folder


def _err(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _prepare(campaign: str, home: Path | None, config: Path | None, now: str | None,
             prefect: bool = True) -> tuple[str, str, dt.datetime]:
    """Check config and --now before any flow starts; set PREFECT_HOME; print the home."""
    config_dir = resolve_config_dir(config)
    home_dir = resolve_home(home)
    try:  # with the disk cache the flow's own load uses: this process loads the config once
        cfg = load_config(config_dir, campaign, cache_dir=config_cache(home_dir))
    except ConfigError as exc:
        raise _err(str(exc)) from None
    try:
        moment = resolve_now(now, cfg)
    except ValueError:
        raise _err(f"--now: '{now}' is not an ISO-8601 moment, e.g. 2023-09-28T17:00:00+08:00") from None
    _check_ledger(home_dir, campaign)
    if prefect:
        configure_prefect_home(home_dir)
        typer.echo(f"主目录 home: {home_dir}", err=True)
    return str(home_dir), str(config_dir), moment


def _check_ledger(home_dir: Path, campaign: str | None = None) -> None:
    """A ledger older or newer than this code stops every command before it does anything
    (exit 2); one that cannot be opened (its database server down) too, as an outage (exit 1,
    with the JSON error of a step)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from tasks.core.ledger import Ledger, database_url
    from tasks.core.schema import SchemaError
    from tasks.core.settings import AppSettings

    from .console import error_line
    url = AppSettings().db_url
    try:
        Ledger(home_dir, url)
    except SchemaError as exc:
        raise _err(str(exc)) from None
    except (DBAPIError, OSError) as exc:
        where = make_url(database_url(home_dir, url)).render_as_string(hide_password=True)
        line = error_line(exc)
        typer.echo(f"无法打开账本 {where}：{line}。Cannot open the ledger.", err=True)
        if campaign:
            typer.echo(json.dumps({"campaign": campaign, "error": line}, ensure_ascii=False))
        raise typer.Exit(1) from None


def _report(result: dict, problems: bool) -> None:
    typer.echo(json.dumps(result, ensure_ascii=False, default=str))
    raise typer.Exit(1 if problems else 0)


def _unsent(counts: dict) -> bool:
    """Some message of this run was not (surely) delivered."""
    return any(counts.get(k) for k in ("failed", "uncertain", "undeliverable"))


def _step(campaign: str, run, *args, expected: tuple[type[Exception], ...] = (), **kwargs) -> dict:
    """Run a step's flow. An error that stops it (the ledger's server restarted, a full disk)
    ends the command with exit 1, one line on stderr and a JSON summary naming the error, never
    a traceback: what was done is in the ledger, and running the same command again goes on."""
    from .console import error_line, quiet_tracebacks
    quiet_tracebacks()
    try:
        return run(*args, **kwargs)
    except expected:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as the step's outcome
        line = error_line(exc)
        typer.echo(f"运行中断：{line}。已完成的部分已记入账本，排除问题后重新运行同一命令即可继续。"
                   f"The run stopped; run the same command again once the problem is fixed.", err=True)
        typer.echo(json.dumps({"campaign": campaign, "error": line}, ensure_ascii=False))
        raise typer.Exit(1) from None


@app.command()
def init(folder: Annotated[Path, typer.Argument(help="The new project folder (made if needed).")]) -> None:
    """Make a project folder: config/ (units, distribution lists and one campaign, commented in
    Chinese) and .env.example. Edit them, then `bulletin check` in that folder.

    Example: bulletin init ./节能周报送 && cd ./节能周报送 && bulletin check
    """
    import shutil

    from tasks.core.shipped import STARTER
    target = folder.expanduser().resolve()
    if (target / "config").exists():
        raise _err(f"{target / 'config'} 已存在，未改动。It exists; nothing written.")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(STARTER / "config", target / "config")
    if not (target / ".env.example").exists():
        shutil.copy(STARTER / "env.example", target / ".env.example")
    campaign = next((target / "config" / "campaigns").glob("*.yaml")).stem
    typer.echo(f"已建立项目 {target}：\n  config/units.yaml       报送单位名单\n  config/lists.yaml       简讯分发名单\n"
               f"  config/campaigns/{campaign}.yaml  一期报送任务\n  .env.example            邮件等设置（复制为环境变量）\n"
               f"下一步：cd {target} && bulletin check {campaign}")


@app.command()
def check(campaign: Annotated[Optional[str], typer.Argument(help="Only this campaign (default: all).")] = None,
          config: Conf = None) -> None:
    """Check the configuration: every error at once (file, line, key, reason), every template
    rendered with sample data, the mail settings present complete. Exit 2 on any error.

    Example: bulletin check energy-week-2023
    """
    from .check import config_problems, mail_problems, template_problems
    config_dir = resolve_config_dir(config)
    try:
        problems, loaded = config_problems(config_dir, campaign)
    except ConfigError as exc:  # no campaigns folder, a bad campaign id
        raise _err(str(exc)) from None
    for cfg in loaded:
        problems += template_problems(cfg)
    problems += mail_problems()
    for p in problems:
        typer.echo(f"错误 error: {p}", err=True)
    names = "、".join(c.campaign.id for c in loaded) or "（无）"
    if problems:
        typer.echo(f"配置检查：{len(problems)} 处错误（{config_dir}）。Configuration check failed.", err=True)
        raise typer.Exit(2)
    typer.echo(f"配置检查通过：{config_dir}，报送任务 {names}，模板与邮件设置均无问题。Configuration OK.")


campaign_app = typer.Typer(help="Campaign files: make the next round from the last one.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


@campaign_app.command("new")
def campaign_new(new_id: Annotated[str, typer.Argument(metavar="ID", help="The new campaign's id (its file name).")],
                 previous: Annotated[str, typer.Option("--from", help="The campaign it follows (an id).")],
                 opens: Annotated[Optional[str], typer.Option(
                     "--opens", help="Opening day (YYYY-MM-DD); default: a year after the previous one.")] = None,
                 config: Conf = None) -> None:
    """Make the next round of a campaign: the calendar a year on (or from --opens, keeping every
    interval), `previous` linked, the bulletin's issue number one more, the year in its name and
    title moved; everything else (comments and order too) kept. The new file is then checked.

    Example: bulletin campaign new energy-week-2024 --from energy-week-2023
    """
    import datetime as dt

    from tasks.core.campaign_file import next_round
    from tasks.core.config import CAMPAIGN_ID, campaign_path
    config_dir = resolve_config_dir(config)
    if not CAMPAIGN_ID.match(new_id):
        raise _err(f"活动代码“{new_id}”须由小写字母、数字和连字符组成 a campaign id is lowercase letters, digits and dashes")
    try:
        source, target = campaign_path(config_dir, previous), campaign_path(config_dir, new_id)
    except ConfigError as exc:
        raise _err(str(exc)) from None
    if not source.is_file():
        raise _err(f"找不到上一轮活动 {source}")
    if target.exists():
        raise _err(f"{target} 已存在，未改动。It exists; nothing written.")
    try:
        day = dt.date.fromisoformat(opens) if opens else None
        text = next_round(source.read_text(encoding="utf-8"), source.stem, day)
    except ValueError as exc:
        raise _err(f"无法生成新一轮活动：{exc}") from None
    target.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(config_dir, new_id)
    except ConfigError as exc:
        raise _err(f"已写入 {target}，但检查未通过：{exc}") from None
    cal = cfg.campaign.calendar
    typer.echo(f"已写入 {target}：{cfg.campaign.name}，{cal.opens_at:%Y-%m-%d %H:%M} 开始，"
               f"{cal.deadline_at:%Y-%m-%d %H:%M} 截止，第{cfg.campaign.bulletin.issue}期；请运行 bulletin check {new_id}")


units_app = typer.Typer(help="The units of config/units.yaml: import the office's roster.", no_args_is_help=True)
app.add_typer(units_app, name="units")


@units_app.command("import")
def units_import(roster: Annotated[Path, typer.Argument(help="The roster: .xlsx, .xls, .ods or .csv.")],
                 write: Annotated[bool, typer.Option("--write", help="Write units.yaml (default: show only).")] = False,
                 config: Conf = None) -> None:
    """Read the office's roster of units and show what it changes in units.yaml: units added,
    contacts changed, units the roster lacks (kept). Bad rows are reported by row and left out.
    With --write, units.yaml is rewritten (its opening comments and order kept) after a check.

    Example: bulletin units import 报送单位名单.xlsx --write
    """
    import tempfile

    import yaml as pyyaml

    from tasks.core.config import load_units
    from tasks.reading.readers import ReturnFileError
    from tasks.reading.roster import merge_units, read_roster, units_yaml
    config_dir = resolve_config_dir(config)
    path = config_dir / "units.yaml"
    try:
        found = read_roster(roster)
    except (ReturnFileError, OSError) as exc:
        raise _err(f"无法读取 {roster}：{exc}") from None
    original = path.read_text(encoding="utf-8") if path.exists() else "units:\n"
    existing = (pyyaml.safe_load(original) or {}).get("units") or []
    merged = merge_units(existing, found)
    for label, items in (("新增", merged.added), ("联系人等有变化", merged.changed),
                         ("名单中没有（保留）", merged.missing), ("提示", merged.notes), ("未导入的行", found.problems)):
        if items:
            typer.echo(f"{label} {len(items)}：" + "；".join(items))
    result = {"units": len(found.units), "added": len(merged.added), "changed": len(merged.changed),
              "missing": len(merged.missing), "bad_rows": len(found.problems), "written": False}
    if write and (merged.added or merged.changed):
        text = units_yaml(original, merged.units)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "units.yaml").write_text(text, encoding="utf-8")
            try:
                load_units(Path(tmp))
            except ConfigError as exc:
                raise _err(f"导入后的名单未通过检查，units.yaml 未改动：{exc}") from None
        path.write_text(text, encoding="utf-8")
        result["written"] = True
        typer.echo(f"已写入 {path}")
    elif merged.added or merged.changed:
        typer.echo("（仅显示差异；加 --write 写入 units.yaml）")
    _report(result, bool(found.problems))


@app.command()
def demo(home: Home = None) -> None:
    """Run a whole campaign with simulated units (energy-week-2023) in a fresh home.

    Example: bulletin demo --home /tmp/demo
    """
    from .demo import DemoError, new_demo_home
    try:
        home_dir = new_demo_home(home)
    except DemoError as exc:
        raise _err(str(exc)) from None
    configure_prefect_home(home_dir)
    from .demo import run_demo
    ok = run_demo(home_dir)
    raise typer.Exit(0 if ok else 1)


@app.command()
def request(campaign: Campaign, unit: Units = None,
            force: Annotated[bool, typer.Option("--force", help="Resend to units already asked (marked 重发).")] = False,
            dry_run: DryRun = False, resend_uncertain: Resend = False,
            home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Send each unit its request with its own pre-filled workbook (once per unit).

    Example: bulletin request energy-week-2023 --unit 210100 --dry-run
    """
    h, c, moment = _prepare(campaign, home, config, now)
    from .request_returns import request_returns
    try:
        result = _step(campaign, request_returns, campaign, units=unit, force=force, dry_run=dry_run, now=moment,
                       home=h, config_dir=c, resend_uncertain=resend_uncertain, expected=(ValueError,))
    except ValueError as exc:
        raise _err(str(exc)) from None
    _report(result, _unsent(result))


@app.command()
def remind(campaign: Campaign, unit: Units = None, dry_run: DryRun = False, resend_uncertain: Resend = False,
           home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Send the reminder tier due now to units without an accepted return (each tier once).

    Example: bulletin remind energy-week-2023 --now 2023-09-25T09:00:00
    """
    h, c, moment = _prepare(campaign, home, config, now)
    from .send_reminders import send_reminders
    result = _step(campaign, send_reminders, campaign, units=unit, dry_run=dry_run, now=moment, home=h,
                   config_dir=c, resend_uncertain=resend_uncertain)
    _report(result, _unsent(result))


@app.command()
def collect(campaign: Campaign,
            inbox: Annotated[Optional[Path], typer.Option("--inbox", help="Drop folder (default <home>/inbox/<campaign>).")] = None,
            resend_uncertain: Resend = False, home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Take in returns from the drop folder, validate them and send receipts.

    Example: bulletin collect energy-week-2023 --inbox ./returns
    """
    h, c, moment = _prepare(campaign, home, config, now)
    from .collect_returns import collect_returns
    result = _step(campaign, collect_returns, campaign, inbox=str(inbox.resolve()) if inbox else None, now=moment,
                   home=h, config_dir=c, resend_uncertain=resend_uncertain)
    _report(result, result["problems"] > 0 or _unsent(result["receipts"]))


@app.command()
def status(campaign: Campaign, as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
           home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Show completeness: expected, accepted, rejected, needs explanation, missing, late.

    Example: bulletin status energy-week-2023 --json
    """
    h, c, moment = _prepare(campaign, home, config, now, prefect=False)
    from tasks.core.ledger import Ledger
    from tasks.core.settings import AppSettings
    from tasks.decisions.status import completeness
    result = completeness(Ledger(Path(h), AppSettings().db_url), load_config(Path(c), campaign), moment)
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    from .show import print_status
    print_status(result)


@app.command()
def review(campaign: Campaign, unit: Annotated[str, typer.Argument(help="Unit code.")],
           by: Annotated[str, typer.Option("--by", help="Who decides (recorded).")],
           note: Annotated[str, typer.Option("--note", help="Why (recorded, and told to the unit).")],
           accept: Annotated[bool, typer.Option("--accept", help="Accept the unit's latest return (or --submission).")] = False,
           reject: Annotated[bool, typer.Option("--reject", help="Reject the unit's current return.")] = False,
           reopen: Annotated[bool, typer.Option("--reopen", help="Ask the unit for a new return; the current one stops counting.")] = False,
           submission: Annotated[Optional[int], typer.Option("--submission", help="A submission id (e.g. a quarantined one).")] = None,
           home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Accept, reject or reopen a unit's return by hand, with a note; the unit is told.

    Example: bulletin review energy-week-2023 210200 --accept --by 王处长 --note 已电话核实
    """
    actions = [name for name, on in (("accept", accept), ("reject", reject), ("reopen", reopen)) if on]
    if len(actions) != 1:
        raise _err("review: give exactly one of --accept, --reject, --reopen")
    h, c, moment = _prepare(campaign, home, config, now)
    from .review_return import review_return
    result = _step(campaign, review_return, campaign, unit, actions[0], by, note, submission=submission,
                   now=moment, home=h, config_dir=c)
    if "error" in result:
        raise _err(result["error"], 1)
    _report(result, bool(result.get("failed")))


@app.command(name="compile")
def compile_(campaign: Campaign,
             lead: Annotated[Optional[str], typer.Option("--lead", help="Lead paragraph (default: the campaign's).")] = None,
             home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Compile the bulletin (html, txt, md, docx); unchanged inputs keep the same version.

    Example: bulletin compile energy-week-2023
    """
    h, c, moment = _prepare(campaign, home, config, now)
    from .compile_bulletin import compile_bulletin
    _report(_step(campaign, compile_bulletin, campaign, lead=lead, now=moment, home=h, config_dir=c), False)


@app.command()
def approve(campaign: Campaign, by: Annotated[str, typer.Option("--by", help="Who decides (recorded).")],
            version: Annotated[Optional[int], typer.Option("--version", help="Version (default: the latest).")] = None,
            reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving.")] = False,
            note: Annotated[Optional[str], typer.Option("--note", help="Why (recorded).")] = None,
            home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Approve (or reject) one bulletin version; an approved version is then sent, once.

    A publish run waiting on that version is resumed and sends it (through `serve` or a
    worker); with none waiting, this command sends it itself. Runs waiting on an older
    version end without sending.

    Example: bulletin approve energy-week-2023 --by 王处长 --note 同意印发
    """
    h, c, moment = _prepare(campaign, home, config, now, prefect=False)
    from tasks.bulletin.approval import (
        APPROVED,
        PENDING,
        REJECTED,
        ApprovalError,
        chain_state,
        decide,
        find_version,
    )
    from tasks.core.ledger import Ledger
    from tasks.core.settings import AppSettings
    cfg = load_config(Path(c), campaign)
    ledger = Ledger(Path(h), AppSettings().db_url)
    try:
        row = decide(ledger, cfg.campaign.id, by=by, approve=not reject, note=note, now=moment, version=version,
                     approvers=cfg.campaign.bulletin.approvers)
    except ApprovalError as exc:
        raise _err(str(exc), 1) from None
    chain = chain_state(ledger, cfg.campaign.id, row.version, cfg.campaign.bulletin.approvers)
    if row.approval == PENDING:  # one level of the chain approved: the next one is due
        last = chain["decisions"][-1]
        typer.echo(f"第{row.version}版简讯：{last['level']}已通过（{last['by']}），待{chain['due']}"
                   f"（{'、'.join(chain['due_approvers'])}）", err=True)
    else:
        typer.echo(f"第{row.version}版简讯：{'已批准' if row.approval == APPROVED else '已驳回'}（{row.approved_by}）",
                   err=True)
    mailed: dict[str, int] = {}
    if cfg.campaign.bulletin.approvers:  # the next level's requests, or the rejection notice, by mail
        from tasks.bulletin.signoff import signoff_messages
        mailed = _mail_now(ledger, cfg, Path(h), signoff_messages(ledger, cfg), "approval")
    elif row.approval == REJECTED:
        _tell_rejection(ledger, cfg, row, chain, Path(h))
    if row.approval == PENDING:
        _report({"campaign": cfg.campaign.id, "version": row.version, "approval": row.approval,
                 "chain": chain, "mailed": mailed}, _unsent(mailed))
    configure_prefect_home(Path(h))
    from .approval import resume_waiting_runs, retire_superseded_runs
    latest = find_version(ledger, cfg.campaign.id)
    waits = retire_superseded_runs(cfg.campaign.id, latest.version, offer_latest=latest.approval == PENDING)
    resumed = resume_waiting_runs(cfg.campaign.id, row.version, approve=row.approval == APPROVED,
                                  by=row.approved_by or by, note=row.approval_note or "")
    result = {"campaign": cfg.campaign.id, "version": row.version, "approval": row.approval,
              "by": row.approved_by, "resumed_runs": resumed, "ended_runs": waits["ended"]}
    if chain["levels"]:
        result["chain"] = chain
    if resumed:
        typer.echo(f"已交给等待审批的发布运行 {', '.join(resumed)}：由 bulletin serve（或 worker）发送", err=True)
    elif row.approval == APPROVED:
        from .publish_bulletin import publish_bulletin
        sent = _step(campaign, publish_bulletin, cfg.campaign.id, version=row.version, now=moment, home=h,
                     config_dir=c)
        result["send"] = {k: v for k, v in sent.items() if k not in ("campaign", "version", "approval")}
    _report(result, _unsent(result.get("send", {})))


def _mail_now(ledger, cfg, home: Path, messages: list, step: str) -> dict[str, int]:
    """Deliver a few messages from this process, each once (the ledger); failures reported."""
    from collections import Counter

    from tasks.mail.delivery import deliver_many
    from tasks.mail.mailer import MailError, mailer_from_env

    from .robots import tell_robots_of_sent
    from .secrets import smtp_settings
    counts: Counter[str] = Counter()
    if not messages:
        return {}
    try:
        with mailer_from_env(home, smtp_settings()) as mailer:
            outcomes = deliver_many(ledger, mailer, [(m, None) for m in messages], campaign=cfg.campaign.id, step=step)
        counts.update(outcomes)
        tell_robots_of_sent(cfg, ledger, step, [m for m, o in zip(messages, outcomes) if o == "sent"])
    except MailError as exc:
        typer.echo(f"邮件未能发出：{exc}", err=True)
        counts["failed"] += 1
    if _unsent(counts):
        typer.echo(f"部分邮件未能发出（{dict(counts)}）：重新运行同一命令即可补发", err=True)
    return dict(counts)


def _tell_rejection(ledger, cfg, row, chain: dict, home: Path) -> None:
    """The coordinators' notice of a rejection (sent once per version; a failure is reported)."""
    from tasks.mail.notices import rejection_notice
    notice = rejection_notice(cfg, row.version, row.approved_by, row.approval_note, chain)
    if _unsent(_mail_now(ledger, cfg, home, [notice], "notice")):
        typer.echo("驳回通知未能发给协调人", err=True)


@app.command(name="request-approval")
def request_approval(campaign: Campaign,
                     again: Annotated[bool, typer.Option("--again", help="Send the request again (a new round).")] = False,
                     home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Mail the latest version's approval request to the approvers of the level that is due.

    Compiling a version and each approval send the requests of the level that comes next by
    themselves (once); this sends those still owed, or with --again one more round. The
    approvers answer by replying 同意 or 不同意 (with a reason); `bulletin collect` reads the
    replies from the mailbox.

    Example: bulletin request-approval energy-week-2023 --again
    """
    h, c, moment = _prepare(campaign, home, config, now, prefect=False)
    from tasks.bulletin.signoff import due_approvers, signoff_messages
    from tasks.core.ledger import Ledger
    from tasks.core.settings import AppSettings
    cfg = load_config(Path(c), campaign)
    if not cfg.campaign.bulletin.approvers:
        raise _err(f"{cfg.campaign.id} 未配置审批人（bulletin.approvers）：用 bulletin approve 审批")
    ledger = Ledger(Path(h), AppSettings().db_url)
    bulletin, due = due_approvers(ledger, cfg)
    if bulletin is None:
        latest = ledger.latest_bulletin(cfg.campaign.id)
        typer.echo("尚无简讯，请先运行 bulletin compile" if latest is None else
                   f"第{latest.version}版简讯不在待审批状态（{latest.approval}）：无需发送审批请求", err=True)
        _report({"campaign": cfg.campaign.id, "version": latest.version if latest else None, "due": None}, False)
    counts = _mail_now(ledger, cfg, Path(h), signoff_messages(ledger, cfg, again=again), "approval")
    typer.echo(f"第{bulletin.version}版简讯待{due[0].level}：审批请求已发给 "
               f"{'、'.join(f'{a.name}（{a.email}）' for a in due)}", err=True)
    _report({"campaign": cfg.campaign.id, "version": bulletin.version, "due": due[0].level,
             "approvers": [a.email for a in due], "sent": counts}, _unsent(counts))


@app.command()
def send(campaign: Campaign, dry_run: DryRun = False,
         version: Annotated[Optional[int], typer.Option("--version", help="Version (default: the latest).")] = None,
         resend_uncertain: Resend = False,
         home: Home = None, config: Conf = None, now: Now = None) -> None:
    """Mail the approved bulletin to the campaign's lists, one message per recipient, once.

    Example: bulletin send energy-week-2023 --dry-run
    """
    h, c, moment = _prepare(campaign, home, config, now)
    from tasks.bulletin.approval import ApprovalError

    from .publish_bulletin import publish_bulletin
    try:
        result = _step(campaign, publish_bulletin, campaign, version=version, dry_run=dry_run,
                       resend_uncertain=resend_uncertain, now=moment, home=h, config_dir=c,
                       expected=(ApprovalError,))
    except ApprovalError as exc:
        raise _err(str(exc), 1) from None
    if result["approval"] != "approved" and not dry_run:
        typer.echo(f"第{result['version']}版简讯尚未批准（{result['approval']}），未发送。"
                   f"请先运行 bulletin approve {campaign} --by 姓名", err=True)
    _report(result, result["approval"] != "approved" and not dry_run or _unsent(result))


@app.command(name="mail-test")
def mail_test(to: Annotated[Optional[str], typer.Option(
                  "--to", help="Send the test message here (default: BULLETIN_MAIL_FROM itself).")] = None,
              no_send: Annotated[bool, typer.Option("--no-send", help="Check the settings; send nothing.")] = False,
              folder: Annotated[Optional[str], typer.Option(
                  "--folder", help="The IMAP folder collect reads (default: BULLETIN_IMAP_FOLDER).")] = None,
              home: Home = None) -> None:
    """Try the mail settings: send one test message through SMTP, list the IMAP folders, and
    say what is wrong (port and security, password, certificate, host, folder). Exit 1 on a failure.

    Example: bulletin mail-test --to me@example.org
    """
    from tasks.core.settings import AppSettings
    from tasks.mail.diagnose import Check, check_imap, check_smtp
    from tasks.mail.message import Address
    app_settings = AppSettings()
    needs_prefect = any(os.environ.get(f"BULLETIN_{s}_PASSWORD_BLOCK") for s in ("SMTP", "IMAP"))
    if needs_prefect:  # a Secret block is read from the Prefect server of this home
        configure_prefect_home(resolve_home(home))
    from .secrets import SecretError, imap_settings, smtp_settings
    sender = Address(app_settings.mail_from_name, app_settings.mail_from)
    services = (("SMTP", smtp_settings, lambda s: check_smtp(s, sender, None if no_send else (to or sender.email))),
                ("IMAP", imap_settings, lambda s: check_imap(s, folder=folder)))
    checks: list[Check] = []
    for service, settings_of, check in services:
        try:
            checks += check(settings_of())
        except SecretError as exc:
            checks.append(Check(service, "密码", False, str(exc)))
    for c in checks:
        typer.echo(c.line())
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.command()
def upgrade(home: Home = None) -> None:
    """Migrate the ledger to this version's schema; a SQLite ledger is backed up beside it first.

    The only command that changes the ledger's structure; every other one stops (exit 2) while
    the ledger is older than the code. Prints the revisions applied.

    Example: bulletin upgrade --home /srv/bulletin
    """
    from tasks.core.ledger import database_url, engine_for
    from tasks.core.schema import SchemaError
    from tasks.core.schema import upgrade as upgrade_ledger
    from tasks.core.settings import AppSettings
    home_dir = resolve_home(home)
    engine = engine_for(database_url(home_dir, AppSettings().db_url), check=False)
    try:
        report = upgrade_ledger(engine, dt.datetime.now().astimezone())
    except SchemaError as exc:
        raise _err(str(exc)) from None
    if report.backup:
        typer.echo(f"已备份账本 backup: {report.backup}", err=True)
    for step in report.applied:
        typer.echo(f"已应用 applied {step['revision']}: {step['what']}", err=True)
    if not report.applied:
        typer.echo(f"账本已是最新结构（{report.after}），无需升级 up to date", err=True)
    _report(report.as_dict(), False)


@app.command()
def serve(home: Home = None, config: Conf = None,
          host: Annotated[str, typer.Option("--host", envvar="BULLETIN_UI_HOST",
                                            help="Address of the local Prefect UI and API (default 127.0.0.1; "
                                                 "any other needs PREFECT_SERVER_API_AUTH_STRING).")] = "127.0.0.1") -> None:
    """Start the scheduler: one deployment per step per campaign, schedules from each calendar.

    Example: bulletin serve   (then open the Prefect UI it prints)
    """
    from .serve import ExposureError, check_exposure, serve_all
    try:
        check_exposure(host)
    except ExposureError as exc:
        raise _err(str(exc)) from None
    home_dir = resolve_home(home)
    _check_ledger(home_dir)
    running = running_server(home_dir)
    if running:
        raise _err(f"serve 已在此主目录运行（{running.removesuffix('/api')}），不能再启动一个。"
                   f"serve is already running on {home_dir}.")
    configure_prefect_home(home_dir, use_running_server=False)
    try:
        serve_all(home_dir, resolve_config_dir(config), host=host)
    except ConfigError as exc:
        raise _err(str(exc)) from None


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # python -m flows.cli
    main()

"""Build every outgoing message as a pure function: request, reminder, receipt, notice, bulletin.

Nothing here sends; :mod:`tasks.mail.delivery` does, guarded by the ledger.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import css_inline

from ..core.config import Campaign, Config, Contact, ReminderTier, Unit
from ..core.directory import sender_unit
from ..core.render import render
from ..decisions.outcome import Outcome
from .message import Address, Attachment, InlineImage, OutgoingMessage

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_STATE_WORDS = {"accepted": "已通过", "rejected": "未通过，请修改", "needs_explanation": "需要说明",
                "quarantined": "暂未受理"}


def _addr(c: Contact) -> Address:
    return Address(c.name, c.email)


def _html(name: str, override: str | None, **ctx) -> str:
    return css_inline.inline(render(name, override, **ctx))


def _common(config: Config) -> dict:
    camp = config.campaign
    return dict(campaign=camp, coordinators=camp.coordinators, english=camp.english,
                deadline=camp.calendar.deadline_at)


def _headers(camp: Campaign, step: str, unit: str | None = None) -> tuple[tuple[str, str], ...]:
    return (("X-Bulletin-Campaign", camp.id), ("X-Bulletin-Step", step)) + \
        ((("X-Bulletin-Unit", unit),) if unit else ())


def workbook_name(camp: Campaign, unit: Unit) -> str:
    return f"{unit.name}-{camp.name}.xlsx"


def request_message(config: Config, unit: Unit, workbook: bytes, *, sequence: int,
                    override: str | None = None) -> OutgoingMessage:
    """The request to one unit with its own workbook; ``sequence`` > 1 is a forced resend."""
    camp = config.campaign
    resend = sequence > 1
    ctx = _common(config) | dict(contact=unit.contacts[0], unit=unit, resend=resend,
                                 workbook_name=workbook_name(camp, unit))
    subject = f"{'【重发】' if resend else ''}【报送通知】{camp.name}（{unit.name}）"
    ctx["subject"] = subject
    return OutgoingMessage(
        key=f"{camp.id}/request/{unit.code}/{sequence}", to=tuple(_addr(c) for c in unit.contacts),
        subject=subject, text=render("request.txt.j2", override, **ctx),
        html=_html("request.html.j2", override, **ctx),
        attachments=(Attachment(workbook_name(camp, unit), workbook, XLSX),),
        reply_to=_addr(camp.coordinators[0]), headers=_headers(camp, "request", unit.code))


def reminder_message(config: Config, unit: Unit, tier: ReminderTier, *, state_note: str = "",
                     override: str | None = None) -> OutgoingMessage:
    camp = config.campaign
    overdue = tier.delta > dt.timedelta(0)
    prefix = "【督办】" if tier.escalate else "【催报】"
    subject = f"{prefix}{camp.name}（{unit.name}，{tier.name}）"
    ctx = _common(config) | dict(contact=unit.contacts[0], unit=unit, tier=tier, overdue=overdue,
                                 state_note=state_note, subject=subject)
    return OutgoingMessage(
        key=f"{camp.id}/reminder/{tier.offset}/{unit.code}", to=tuple(_addr(c) for c in unit.contacts),
        cc=(_addr(unit.supervisor),) if tier.escalate else (), subject=subject,
        text=render("reminder.txt.j2", override, **ctx), html=_html("reminder.html.j2", override, **ctx),
        reply_to=_addr(camp.coordinators[0]), headers=_headers(camp, "reminder", unit.code))


def receipt_message(config: Config, outcome: Outcome, received_at: dt.datetime,
                    override: str | None = None) -> OutgoingMessage | None:
    """The receipt for one submission: to the sender if known, else to the unit's contacts."""
    camp = config.campaign
    unit = config.unit_by_code.get(outcome.unit_code) if outcome.unit_code else None
    if outcome.state == "quarantined" and outcome.sender and not sender_unit(outcome.sender, config.units):
        return None  # never answer a stranger (or a forged From): the coordinators are told
    if outcome.sender:
        to = (Address("", outcome.sender),)
    elif unit:
        to = tuple(_addr(c) for c in unit.contacts)
    else:
        return None  # a drop-folder file nobody can be told about: the coordinators are
    greeting = f"{unit.contacts[0].name}同志" if unit and not outcome.sender else "您好"
    name = " ".join(outcome.name.split())  # a sender's file name may hold line breaks
    subject = f"【回执】{camp.name}：{_STATE_WORDS.get(outcome.state, outcome.state)}（{name}）"
    ctx = _common(config) | dict(o=outcome, unit=unit, greeting=greeting, subject=subject,
                                 received_at=received_at.astimezone(camp.calendar.tz))
    return OutgoingMessage(
        key=f"{camp.id}/receipt/{outcome.submission_id}/{outcome.state}", to=to, subject=subject,
        text=render("receipt.txt.j2", override, **ctx), html=_html("receipt.html.j2", override, **ctx),
        reply_to=_addr(camp.coordinators[0]),
        headers=_headers(camp, "receipt", outcome.unit_code))


def receipt_messages(config: Config, outcomes: list[Outcome], override: str | None = None,
                     ) -> list[tuple[OutgoingMessage, str | None]]:
    """Every outcome's receipt with its unit; outcomes nobody can be told about are left out.
    (Rendered here: in worker processes, moving the rendered text back cost as much as
    rendering it, measured at 10,000.)"""
    out = []
    for o in outcomes:
        msg = receipt_message(config, o, o.received_at, override)
        if msg is not None:
            out.append((msg, o.unit_code))
    return out


def review_message(config: Config, sub, action: str, by: str, note: str,
                   override: str | None = None) -> OutgoingMessage:
    """Tell a unit what a coordinator decided by hand about one of its submissions."""
    camp = config.campaign
    unit = config.unit_by_code[sub.unit_code]
    to = (Address("", sub.sender),) if sub.sender else tuple(_addr(c) for c in unit.contacts)
    words = {"accept": "已采用", "reject": "未采用，请修改", "reopen": "请重新报送"}[action]
    subject = f"【审核结果】{camp.name}：{words}（{unit.name}）"
    ctx = _common(config) | dict(sub=sub, action=action, by=by, note=note, subject=subject,
                                 greeting=f"{unit.contacts[0].name}同志" if not sub.sender else "您好")
    return OutgoingMessage(
        key=f"{camp.id}/review/{sub.id}/{action}/{sub.decided_at:%Y%m%dT%H%M%S}", to=to, subject=subject,
        text=render("review.txt.j2", override, **ctx), html=_html("review.html.j2", override, **ctx),
        reply_to=_addr(camp.coordinators[0]), headers=_headers(camp, "review", unit.code))


def coordinator_notice(config: Config, key: str, subject: str, intro: str, lines: list[str],
                       override: str | None = None) -> OutgoingMessage:
    camp = config.campaign
    ctx = _common(config) | dict(intro=intro, lines=lines, subject=subject)
    return OutgoingMessage(
        key=f"{camp.id}/notice/{key}", to=tuple(_addr(c) for c in camp.coordinators),
        subject=f"【系统通知】{subject}", text=render("notice.txt.j2", override, **ctx),
        html=_html("notice.html.j2", override, **ctx), headers=_headers(camp, "notice"))


def bulletin_audience(config: Config) -> list[tuple[Address, str | None]]:
    """Everyone on the campaign's distribution lists, once each (first list wins), with the
    unit whose contact they are on an ``all_units`` list (their copy is the unit's own)."""
    seen: dict[str, tuple[Address, str | None]] = {}
    for list_id in config.campaign.bulletin.distribution:
        lst = config.lists[list_id]
        people = [(u.contacts[0], u.code) for u in config.units] if lst.all_units else \
            [(m, None) for m in lst.members]
        for c, unit in people:
            seen.setdefault(c.email, (_addr(c), unit))
    return list(seen.values())


def bulletin_recipients(config: Config) -> list[Address]:
    """Everyone on the campaign's distribution lists, once each (first list wins)."""
    return [a for a, _unit in bulletin_audience(config)]


def bulletin_message(config: Config, folder: Path, version: int) -> OutgoingMessage:
    """The approved bulletin, not yet addressed: HTML body, text alternative, DOCX, photos.

    Built once per send; :func:`addressed` makes the one message per recipient."""
    camp = config.campaign
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    images = tuple(InlineImage(p["cid"], Path(p["file"]).name, (folder / p["file"]).read_bytes(),
                               "image/jpeg") for p in manifest["photos"])
    images += tuple(InlineImage(c["cid"], Path(c["file"]).name, (folder / c["file"]).read_bytes(), "image/png")
                    for c in manifest.get("charts", []))
    title = manifest["title"]
    return OutgoingMessage(
        key=f"{camp.id}/bulletin/v{version}", to=(),
        subject=f"{title}（第{camp.bulletin.issue}期）",
        text=(folder / "bulletin.txt").read_text(encoding="utf-8"),
        html=(folder / "mail.html").read_text(encoding="utf-8"),
        attachments=(Attachment(f"{title}.docx", (folder / "bulletin.docx").read_bytes(), DOCX),)
        + ((Attachment(f"{title}-各单位汇总表.xlsx", (folder / "merged.xlsx").read_bytes(), XLSX),)
           if manifest.get("attach_table") else ())
        + ((Attachment(f"{title}.pdf", (folder / "bulletin.pdf").read_bytes(), "application/pdf"),)
           if manifest.get("attach_pdf") else ()),
        inline_images=images, auto_generated=False, reply_to=_addr(camp.coordinators[0]),
        headers=_headers(camp, "bulletin"))


def addressed(base: OutgoingMessage, to: Address) -> OutgoingMessage:
    """One recipient's copy of the bulletin, keyed by version and address."""
    return dataclasses.replace(base, key=copy_key(base, to), to=(to,))


def copy_key(base: OutgoingMessage, to: Address) -> str:
    """The ledger key of *to*'s copy of *base* (what :func:`addressed` gives it)."""
    return f"{base.key}/{to.email}"


def rejection_notice(config: Config, version: int, by: str | None, note: str | None, chain: dict,
                     override: str | None = None) -> OutgoingMessage:
    """Tell the coordinators that a version was rejected, by whom, at which level (the last
    decision of *chain*, ``tasks.bulletin.approval.chain_state``) and why; once per version: the key
    names it."""
    level = chain["decisions"][-1]["level"] if chain["decisions"] else None
    who = f"{level}：{by}" if level else (by or "")
    return coordinator_notice(
        config, f"rejected/v{version}", f"第{version}版简讯未获批准",
        f"第{version}版简讯被驳回（{who}），未发送。请按意见修改后重新编制（bulletin compile 生成新版本），"
        "新版本从第一级重新审批。", [f"意见：{note or '（未填写）'}"], override)

"""Sign-off by reply mail: the approval request each approver of the level that is due
receives, and an approver's reply read into a decision on exactly the version it names.

A request's subject carries a tag, ``[简讯审批 <campaign> 第N版]``, and its Message-ID is
derived from its ledger key (``tasks.mail.message.message_id_for``), so a reply names the version
twice: in the subject and in ``In-Reply-To``/``References``. The references win; a reply
whose subject names another version than the request it answers is refused, and a reply to
an older version's request is refused as superseded (``tasks.bulletin.approval.decide``), so it never
approves a newer one.

A reply decides only when it comes from an approver's registered address, is no auto-reply
(``tasks.intake.mailbox.is_auto_reply``, checked before this module sees it), carries no
``Authentication-Results`` with ``dmarc=fail`` or ``spf=fail`` from the receiving server, and
starts with 同意 (approve) or 不同意 (reject, the rest is the reason). Every reply read is
recorded once, keyed by the sha256 of the raw message, in the same transaction as the
decision it makes (event ``approval.mail``); what follows (the answer to the approver, the
next level's requests, the coordinators' notice of a refusal, sending the bulletin) is derived
from the ledger, so a crash anywhere loses none of it and repeats none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from email.utils import parseaddr
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from ..core.config import Approver, Config
from ..core.ledger import Bulletin, Delivery, Event, Ledger, audit_event
from ..core.render import render
from ..mail.message import Address, Attachment, OutgoingMessage, message_digest
from .approval import (
    APPROVED,
    PENDING,
    REJECTED,
    ApprovalError,
    chain_state,
    copies_out,
    decide,
    levels_of,
)
from .personal import block_count

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
ACTION = "approval.mail"  # the event of every reply read, keyed by the raw message's sha256
_TAG = re.compile(r"\[简讯审批\s*(?P<campaign>[A-Za-z0-9_.-]+)\s*第\s*(?P<version>\d+)\s*版\]")
_OUR_MESSAGE_ID = re.compile(r"<bulletin\.([0-9a-f]{32})@", re.IGNORECASE)
_AUTH_FAIL = re.compile(r"\b(dmarc|spf)\s*=\s*fail\b", re.IGNORECASE)
_REJECT = re.compile(r"^(不同意|不批准|不予批准|驳回|退回|reject(ed)?\b|disapprove)", re.IGNORECASE)
_APPROVE = re.compile(r"^(同意|批准|approve(d)?\b)", re.IGNORECASE)
_LEADING = re.compile(r"^[\s，,。.:：;；!！、\-—]+")

#: What an approver is told about a reply (outcome → text), and which outcomes the
#: coordinators hear about.
ANSWERS = {
    "approved": "已记录：您同意第{version}版简讯（{level}）。",
    "approved_final": "已记录：您同意第{version}版简讯（{level}），审批完成，简讯将按分发名单发送。",
    "rejected": "已记录：您不同意第{version}版简讯（{level}），理由：{note}。协调人将修改后重新编制。",
    "unchanged": "第{version}版简讯此前已有同样的决定，本次答复未改变任何记录。",
    "unreadable": "未能识别您的答复：请在回复的第一行写“同意”，或“不同意”并写明理由。",
    "refused": "未记录：{reason}",
}
COORDINATOR_OUTCOMES = {"auth_failed", "not_an_approver"}


def subject_tag(campaign: str, version: int) -> str:
    return f"[简讯审批 {campaign} 第{version}版]"


def request_prefix(campaign: str) -> str:
    return f"{campaign}/approval-request/"


def request_key(campaign: str, version: int, level: str, email: str, round_: int = 1) -> str:
    """One approver's request for one version at one level; a request sent again on demand is
    round 2, 3..."""
    base = f"{request_prefix(campaign)}v{version}/{level}/{email.lower()}"
    return base if round_ == 1 else f"{base}/r{round_}"


def request_digests(ledger: Ledger, campaign: str) -> dict[str, int]:
    """Every approval request of the campaign the ledger knows: Message-ID digest → version."""
    with ledger.reading() as s:
        keys = s.scalars(select(Delivery.key).where(
            Delivery.key.startswith(request_prefix(campaign), autoescape=True)))
        return {message_digest(k): int(k[len(request_prefix(campaign)):].split("/")[0][1:]) for k in keys}


# ---------------------------------------------------------------------------- the request
def version_changes(previous: Path | None, current: Path, config: Config) -> list[str]:
    """What changed from the previous version's merged table to this one's, in lines a reader
    understands: units added or gone, units whose figures changed, totals that moved; none for a
    first version."""
    if previous is None or not (previous / "merged.xlsx").exists():
        return []
    before, after = (pd.read_excel(p / "merged.xlsx", dtype={"单位代码": str}, engine="calamine").set_index("单位代码")
                     for p in (previous, current))
    lines = []
    added = [after.at[c, "报送单位"] for c in after.index.difference(before.index)]
    gone = [before.at[c, "报送单位"] for c in before.index.difference(after.index)]
    if added:
        lines.append(f"新增单位：{'、'.join(added)}")
    if gone:
        lines.append(f"不再计入：{'、'.join(gone)}")
    columns = [c for c in after.columns if c != "报送单位" and c in before.columns]
    both = after.index.intersection(before.index)
    changed = [after.at[c, "报送单位"] for c in both
               if not before.loc[c, columns].fillna(0).equals(after.loc[c, columns].fillna(0))]
    if changed:
        lines.append(f"数据更新的单位：{'、'.join(changed)}")
    for column in columns:
        old, new = before[column].fillna(0).sum(), after[column].fillna(0).sum()
        if old != new:
            lines.append(f"{column}合计：{old:,.0f} → {new:,.0f}")
    return lines or ["数据未变，仅文字或版式有调整。"]


#: The units' blocks go with the approval request up to this size (else the request says where they are).
MAX_BLOCKS_ATTACHED = 2 * 1024 * 1024


def request_message(config: Config, bulletin: Bulletin, folder: Path, approver: Approver,
                    changes: list[str], round_: int = 1, override: str | None = None) -> OutgoingMessage:
    """The approval request to one approver: the bulletin (DOCX) attached, what changed, and
    how to answer. Replies go to the system's own address (the mailbox ``collect`` reads)."""
    camp = config.campaign
    subject = (f"{'【再次提请】' if round_ > 1 else ''}【请审批】{camp.bulletin.title} "
               f"{subject_tag(camp.id, bulletin.version)}")
    personal = folder / "personal" / "index.html"
    blocks = block_count(folder) if personal.is_file() else 0
    attach_blocks = blocks and personal.stat().st_size <= MAX_BLOCKS_ATTACHED
    text = render("approval_request.txt.j2", override, campaign=camp, approver=approver, version=bulletin.version,
                  changes=changes, subject_tag=subject_tag(camp.id, bulletin.version), personal_blocks=blocks, area=camp.bulletin.area,
                  blocks_attached=attach_blocks, blocks_path=personal)
    attachments = (Attachment(f"{camp.bulletin.title}（第{bulletin.version}版）.docx",
                              (folder / "bulletin.docx").read_bytes(), DOCX),)
    if attach_blocks:
        attachments += (Attachment(f"各单位个性化内容（第{bulletin.version}版）.html", personal.read_bytes(), "text/html"),)
    return OutgoingMessage(
        key=request_key(camp.id, bulletin.version, approver.level, approver.email, round_),
        to=(Address(approver.name, approver.email),), subject=subject, text=text,
        attachments=attachments,
        headers=(("X-Bulletin-Campaign", camp.id), ("X-Bulletin-Step", "approval-request")))


# ---------------------------------------------------------------------------- the reply
@dataclass(frozen=True)
class SignoffReply:
    """A message that answers one of the campaign's approval requests."""

    sender: str  # bare address, lower-cased
    subject: str
    text: str  # the new text of the reply (quoted original removed)
    sha256: str  # of the raw message, as archived
    version: int | None  # the version it names; None when its subject and references disagree
    auth_failure: str | None  # "dmarc=fail" / "spf=fail" from the receiving server


def auth_failure(msg: Message) -> str | None:
    """``dmarc=fail`` or ``spf=fail`` in an ``Authentication-Results`` header, else None. (Only
    failures count: a header a sender forged can make us refuse, never accept.)"""
    for value in msg.get_all("Authentication-Results") or []:
        found = _AUTH_FAIL.search(str(value))
        if found:
            return f"{found.group(1).lower()}=fail"
    return None


def as_signoff_reply(msg: Message, campaign: str, requests: Mapping[str, int], *, sender: str,
                     subject: str, text: str, sha256: str) -> SignoffReply | None:
    """The message as a reply to an approval request of *campaign*, or None when it is none
    (no tag of this campaign in its subject, no reference to one of its requests)."""
    refs = " ".join(str(v) for h in ("In-Reply-To", "References") for v in (msg.get_all(h) or []))
    referenced = {requests[d] for d in _OUR_MESSAGE_ID.findall(refs.lower()) if d in requests}
    tag = _TAG.search(subject)
    tagged = int(tag.group("version")) if tag and tag.group("campaign") == campaign else None
    if not referenced and tagged is None:
        return None
    versions = referenced | ({tagged} if tagged is not None else set())
    version = versions.pop() if len(versions) == 1 else None
    return SignoffReply(parseaddr(sender)[1].lower() or sender.lower(), subject, text, sha256, version,
                        auth_failure(msg))


def read_decision(text: str) -> tuple[bool | None, str]:
    """(True, note) for 同意… (the note is the reply as written: 同意印发), (False, reason) for
    不同意… (the reason is what follows the word), (None, '') when neither starts the reply's first
    non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None, ""
    first, rest = lines[0], "\n".join(lines[1:])
    for pattern, approve in ((_REJECT, False), (_APPROVE, True)):  # 不同意 contains 同意
        found = pattern.match(first)
        if found:
            note = first if approve else _LEADING.sub("", first[found.end():])
            return approve, "\n".join(p for p in (note, rest.strip()) if p)[:500]
    return None, ""


def record_reply(ledger: Ledger, config: Config, reply: SignoffReply, now) -> dict:
    """Take the decision the reply makes, or refuse it, and record the outcome once (event
    ``approval.mail`` keyed by the message's sha256, in the decision's own transaction).
    Returns the event's detail."""
    campaign = config.campaign.id
    with ledger.reading() as s:
        done = s.scalars(select(Event).where(Event.campaign == campaign, Event.action == ACTION,
                                             Event.subject == reply.sha256)).first()
    if done is not None:
        return json.loads(done.detail)
    approvers = config.campaign.bulletin.approvers
    who = next((a for a in approvers if a.email.lower() == reply.sender), None)
    detail = {"sender": reply.sender, "subject": reply.subject, "version": reply.version,
              "approver": who.name if who else None}

    def refuse(outcome: str, reason: str) -> dict:
        ledger.record(campaign, ACTION, actor=reply.sender, subject=reply.sha256,
                      detail=detail | {"outcome": outcome, "reason": reason}, at=now)
        return detail | {"outcome": outcome, "reason": reason}

    if reply.auth_failure:
        return refuse("auth_failed", f"收件服务器判定此邮件未通过发件人验证（{reply.auth_failure}），可能是冒用地址")
    if who is None:
        return refuse("not_an_approver", f"{reply.sender} 不是本期简讯登记的审批人")
    if reply.version is None:
        return refuse("refused", "邮件主题与所答复的审批请求指向不同版本，无法判断您审批的是哪一版；"
                                 "请直接回复对应版本的审批请求")
    approve, note = read_decision(reply.text)
    if approve is None:
        return refuse("unreadable", "答复第一行没有“同意”或“不同意”")
    if not approve and not note:
        note = "（未写理由）"
    outcome: dict = {}

    def also(s, bulletin: Bulletin, level: str | None) -> None:
        final = bulletin.approval != PENDING
        outcome.update(outcome=("approved_final" if final else "approved") if approve else "rejected",
                       level=level, note=note)
        s.add(audit_event(campaign, ACTION, actor=reply.sender, subject=reply.sha256,
                          detail=detail | outcome, at=now))

    try:
        decide(ledger, campaign, by=reply.sender, approve=approve, note=note, now=now, version=reply.version,
               approvers=approvers, also=also)
    except ApprovalError as exc:
        return refuse("refused", str(exc))
    if not outcome:  # the same decision was already in the ledger: nothing changed
        due = chain_state(ledger, campaign, reply.version, approvers)["due"]
        return refuse("unchanged", f"第{reply.version}版此前已有同样的决定（{due or '审批已完成'}）")
    return detail | outcome


def answer_message(config: Config, detail: dict, sha256: str, override: str | None = None) -> OutgoingMessage | None:
    """What the approver is told about the reply (never a stranger, never a forged sender)."""
    if detail.get("outcome") in COORDINATOR_OUTCOMES or not detail.get("approver"):
        return None
    camp = config.campaign
    words = ANSWERS.get(detail["outcome"], ANSWERS["refused"]).format(
        version=detail.get("version"), level=detail.get("level") or "", note=detail.get("note") or "",
        reason=detail.get("reason") or "")
    tag = f" {subject_tag(camp.id, detail['version'])}" if detail.get("version") else ""
    subject = f"【审批回执】{camp.bulletin.title}{tag}"
    text = render("approval_answer.txt.j2", override, campaign=camp, approver_name=detail["approver"], words=words,
                  subject=detail.get("subject") or "")
    return OutgoingMessage(key=f"{camp.id}/approval-answer/{sha256[:24]}",
                           to=(Address(detail["approver"], detail["sender"]),), subject=subject, text=text,
                           headers=(("X-Bulletin-Campaign", camp.id), ("X-Bulletin-Step", "approval-answer")))


def replies_read(ledger: Ledger, campaign: str) -> list[tuple[str, dict]]:
    """Every reply read so far: (sha256, detail), oldest first."""
    with ledger.reading() as s:
        return [(e.subject, json.loads(e.detail)) for e in s.scalars(
            select(Event).where(Event.campaign == campaign, Event.action == ACTION).order_by(Event.id))]


def due_approvers(ledger: Ledger, config: Config) -> tuple[Bulletin | None, list[Approver]]:
    """The latest version while it waits on a level of the chain, and that level's approvers."""
    approvers = config.campaign.bulletin.approvers
    if not levels_of(approvers):
        return None, []
    latest = ledger.latest_bulletin(config.campaign.id)
    if latest is None or latest.approval != PENDING:
        return None, []
    due = chain_state(ledger, config.campaign.id, latest.version, approvers)["due"]
    return latest, [a for a in approvers if a.level == due]


def previous_folder(ledger: Ledger, campaign: str, version: int) -> Path | None:
    with ledger.reading() as s:
        row = s.scalars(select(Bulletin).where(Bulletin.campaign == campaign, Bulletin.version == version - 1)).first()
        return ledger.home / row.folder if row else None


def approved_by_mail(ledger: Ledger, campaign: str) -> int | None:
    """The latest version when a reply approved it at the last level and no copy of it has gone
    out yet: the bulletin ``collect`` sends (or hands to the run waiting on it)."""
    latest = ledger.latest_bulletin(campaign)
    if latest is None or latest.approval != APPROVED:
        return None
    finals = [d for _sha, d in replies_read(ledger, campaign)
              if d.get("outcome") == "approved_final" and d.get("version") == latest.version]
    if not finals:
        return None
    with ledger.reading() as s:
        return None if copies_out(s, campaign, latest.version) else latest.version



def _rounds(ledger: Ledger, key: str) -> int:
    """How many rounds of the request with this (round 1) key the ledger has."""
    with ledger.reading() as s:
        keys = s.scalars(select(Delivery.key).where(Delivery.key.startswith(key, autoescape=True)))
        return sum(k == key or k.startswith(key + "/r") for k in keys)


def signoff_messages(ledger: Ledger, config: Config, *, again: bool = False,
                     override: str | None = None) -> list[OutgoingMessage]:
    """Every message the ledger's sign-off state calls for (the ledger sends each once): the
    answer to each reply read, the coordinators' notice of each reply refused as forged or from
    a stranger, a rejected version's notice, and the requests to the approvers of the level that
    is due (*again*: one more round of them)."""
    from ..mail.notices import coordinator_notice, rejection_notice
    camp = config.campaign
    if not camp.bulletin.approvers:
        return []
    out = []
    for sha, detail in replies_read(ledger, camp.id):
        answer = answer_message(config, detail, sha, override)
        if answer is not None:
            out.append(answer)
        if detail.get("outcome") in COORDINATOR_OUTCOMES:
            out.append(coordinator_notice(
                config, f"signoff-refused/{sha[:24]}", "一封审批答复未予采信",
                "下面这封针对简讯审批请求的答复没有被采信，未记录任何审批决定。如确属审批人本人所发，请其在系统中审批"
                "（bulletin approve）或从登记的邮箱重新回复：",
                [f"发件人：{detail.get('sender') or '（无）'}", f"主题：{detail.get('subject') or ''}",
                 f"原因：{detail.get('reason')}"], override))
    latest = ledger.latest_bulletin(camp.id)
    if latest is not None and latest.approval == REJECTED:
        chain = chain_state(ledger, camp.id, latest.version, camp.bulletin.approvers)
        out.append(rejection_notice(config, latest.version, latest.approved_by, latest.approval_note, chain, override))
    bulletin, due = due_approvers(ledger, config)
    if bulletin is not None:
        folder = ledger.home / bulletin.folder
        changes = version_changes(previous_folder(ledger, camp.id, bulletin.version), folder, config)
        for approver in due:
            first = request_key(camp.id, bulletin.version, approver.level, approver.email)
            round_ = _rounds(ledger, first) + 1 if again else 1
            out.append(request_message(config, bulletin, folder, approver, changes, max(round_, 1), override))
    return out

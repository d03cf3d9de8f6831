"""Reporting upward (逐级上报): an approved version of this campaign's bulletin becomes one
unit's return to the parent campaign (``reports_to`` in the campaign's YAML).

The return is the parent's own request workbook for that unit, filled in with the version's
totals (``figures.json``, written at compile and approved with the version) and its lead and
highlights as the narrative, with the bulletin's PDF as the signed copy. It travels as a mail
to the parent's mailbox, or as a folder written into the parent's drop folder when both run on
one host; either way the parent's ordinary intake takes it like any other return. It is keyed
in the ledger per approved version, so it goes once per approval, and a later approved
version goes as a correction.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..core.config import Config, Unit, parent_config_dir
from ..core.durable import sync_folder, temp_tag
from ..core.render import render
from ..mail.mailer import MailError
from ..mail.message import Address, Attachment, OutgoingMessage
from ..mail.notices import XLSX, workbook_name
from ..mail.workbook import build_request_workbook, fill_workbook
from .compile import FIGURES_FILE

PDF = "application/pdf"


class UpwardError(Exception):
    """The return upward cannot be made (the parent's config, the unit, the version's files)."""


def parent_dir(config: Config) -> Path:
    return parent_config_dir(config.directory, config.campaign.reports_to)


def upward_key(config: Config, version: int) -> str:
    rt = config.campaign.reports_to
    return f"{config.campaign.id}/upward/{rt.campaign}/{rt.unit}/v{version}"


def upward_values(parent: Config, record: dict) -> tuple[dict[str, object], list[str]]:
    """The parent form's fields filled from this version's record: counted fields by key
    (those this campaign does not count stay blank, and are listed), the first text field with
    the lead, a ``highlights`` field with the units' highlights."""
    values: dict[str, object] = {}
    missing = []
    for f in parent.campaign.form.counts:
        if f.key in record["totals"]:
            values[f.key] = int(record["totals"][f.key])
        else:
            missing.append(f.label)
    highlights = "；".join(f"{h['unit']}：{h['text'].rstrip('。；;. ')}" for h in record["highlights"])
    highlights += "。" if highlights else ""
    lead_used = False
    for f in parent.campaign.form.texts:
        if f.key == "highlights":
            text = highlights
        elif not lead_used:
            text, lead_used = record["lead"], True
        else:
            continue
        if f.max_length and len(text) > f.max_length:
            text = text[:f.max_length - 1] + "…"
        values[f.key] = text or None
    return values, missing


def upward_message(config: Config, parent: Config, folder: Path, version: int, approved_by: str,
                   corrected: bool = False, override_dir: str | None = None) -> OutgoingMessage:
    """The return of ``reports_to.unit`` to the parent campaign, from this approved version;
    ``corrected`` when an earlier version went up before."""
    rt = config.campaign.reports_to
    unit: Unit | None = parent.unit_by_code.get(rt.unit)
    if unit is None:
        raise UpwardError(f"上级任务 {rt.campaign} 的报送单位中没有 {rt.unit}（{parent.campaign_file}）")
    try:
        record = json.loads((folder / FIGURES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UpwardError(f"第{version}版没有可上报的数据 {folder / FIGURES_FILE}：{exc}") from exc
    values, _missing = upward_values(parent, record)
    workbook = fill_workbook(build_request_workbook(parent.campaign, unit), values, formulas=False)
    name = workbook_name(parent.campaign, unit)
    attachments = [Attachment(name, workbook, XLSX)]
    pdf = folder / "bulletin.pdf"
    pdf_name = f"{record['title']}（第{version}版）.pdf" if pdf.is_file() else None
    if pdf_name:
        attachments.append(Attachment(pdf_name, pdf.read_bytes(), PDF))
    camp = config.campaign
    text = render("upward.txt.j2", override_dir, parent=parent.campaign, unit=unit, campaign=camp,
                  version=version, expected=record["expected"], reported=record["reported"],
                  approved_by=approved_by, corrected=corrected, workbook_name=name, pdf_name=pdf_name)
    to = rt.mailbox or f"{rt.unit}@drop-folder.invalid"
    return OutgoingMessage(
        key=upward_key(config, version), to=(Address(parent.campaign.coordinators[0].name, to),),
        subject=f"{unit.name}报表：{parent.campaign.name}（{'更正稿，' if corrected else ''}第{version}版汇总）",
        text=text, attachments=tuple(attachments),
        auto_generated=False,  # a return, not an auto-reply: the parent's intake takes it in
        headers=(("X-Bulletin-Campaign", camp.id), ("X-Bulletin-Step", "upward"), ("X-Bulletin-Unit", rt.unit)))


class DropFolderMailer:
    """Delivers a return upward into the parent's drop folder on this host: the message's
    attachments as one folder (``<unit>-<campaign>-v<N>``), written under a hidden temp name
    and renamed into place, so the parent's intake never sees half of it."""

    batch_size = 50

    def __init__(self, drop_folder: Path | str) -> None:
        self.folder = Path(drop_folder)
        self.description = f"上级收件目录 {self.folder}"
        self._written: list[Path] = []

    def folder_for(self, msg: OutgoingMessage) -> Path:
        campaign, _step, _parent, unit, version = msg.key.split("/")  # see upward_key
        return self.folder / f"{unit}-{campaign}-{version}"

    def send(self, msg: OutgoingMessage) -> str:
        target = self.folder_for(msg)
        tmp = self.folder / f".{target.name}.{temp_tag()}"
        try:
            if not self.folder.is_dir():
                raise MailError(f"上级收件目录不存在：{self.folder}", unreachable=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for a in msg.attachments:
                (tmp / Path(a.filename).name).write_bytes(a.data)
            if target.exists():  # delivered before and not yet taken in: the same return, kept
                shutil.rmtree(tmp)
            else:
                os.rename(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MailError(f"cannot write {target}: {exc}", unreachable=True) from exc
        self._written.append(target)
        return f"<{target.name}@drop-folder>"

    def flush(self) -> None:
        if self._written:
            try:
                sync_folder(self.folder, self._written)
            except OSError as exc:
                raise MailError(f"cannot make {self.folder} durable: {exc}", uncertain=True) from exc
            self._written = []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> DropFolderMailer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""The request workbook: a pre-filled, protected .xlsx each unit fills in and sends back.

Layout (the return parser relies on it): sheet ``报表`` has the unit in B2/D2, a header in
row 4 and one row per form field from row 5 (A label, B value, C unit, D help), then the
explanation row; ``照片`` lists photo file names and captions; ``填报说明`` tells the unit
what to do; the very hidden ``_meta`` sheet carries campaign id, unit code and form version.
Each value cell also has a workbook-level defined name (``field_<key>``, ``explanation``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from io import BytesIO
from zipfile import ZIP_DEFLATED, ZipFile, ZipInfo

from openpyxl import Workbook, load_workbook
from openpyxl.comments import Comment
from openpyxl.styles import Alignment, Border, Font, PatternFill, Protection, Side
from openpyxl.workbook.defined_name import DefinedName
from openpyxl.workbook.protection import WorkbookProtection
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.writer.excel import ExcelWriter

from tasks.core.config import Campaign, Form, FormField, Unit

SHEET_FORM, SHEET_PHOTOS, SHEET_GUIDE, SHEET_META = "报表", "照片", "填报说明", "_meta"
HEADER_ROW, FIRST_FIELD_ROW = 4, 5
PHOTO_ROWS = 20  # rows 2..21 of 照片 are open for photos; the note is in A23
PHOTO_NOTE_ROW = PHOTO_ROWS + 3
CREATOR = "报送任务系统"
EXPLANATION_NAME = "explanation"

_BOLD = Font(bold=True)
_HEADER_FILL = PatternFill("solid", fgColor="D9E1F2")
_INPUT_FILL = PatternFill("solid", fgColor="FFF2CC")
_OPEN = Protection(locked=False)
_THIN = Side(style="thin", color="999999")
_BOX = Border(left=_THIN, right=_THIN, top=_THIN, bottom=_THIN)
_WRAP = Alignment(wrap_text=True, vertical="top")
_MIDDLE = Alignment(vertical="center")


def form_version(form: Form) -> str:
    """Short stable hash (12 hex) of what the layout depends on: field order, keys, labels,
    units and kinds, and the explanation label."""
    shape = [[f.key, f.label, f.unit or "", f.kind] for f in form.fields]
    shape.append(["_explanation", form.explanation_label, "", "text"])
    blob = json.dumps(shape, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]


def field_name(key: str) -> str:
    """The defined name of a field's value cell."""
    return f"field_{key}"


def format_moment(moment: datetime) -> str:
    """``2023年9月28日17:00``: no leading zeros in the date or hour."""
    return f"{moment.year}年{moment.month}月{moment.day}日{moment.hour}:{moment.minute:02d}"


def field_help(field: FormField) -> str:
    """The D-column text: 必填/选填, then the field's help or a default."""
    text = field.help or ("填写非负整数" if field.kind == "count" else
                          f"不超过{field.max_length}字" if field.max_length else "填写文字说明")
    return ("必填。" if field.required else "选填。") + text


def _validation(field: FormField, help_text: str) -> DataValidation:
    prompt = dict(showInputMessage=True, promptTitle=field.label[:32], prompt=help_text[:255])
    if field.kind == "count":
        unit = f"（单位：{field.unit}）" if field.unit else ""
        return DataValidation(
            type="whole", operator="greaterThanOrEqual", formula1="0", allow_blank=True,
            showErrorMessage=True, errorTitle="请填写非负整数",
            error=f"“{field.label}”应填写非负整数{unit}，如0、120；不要填写文字、单位或小数。",
            **prompt)
    if field.max_length:
        return DataValidation(
            type="textLength", operator="lessThanOrEqual", formula1=str(field.max_length),
            allow_blank=True, showErrorMessage=True, errorTitle="文字过长",
            error=f"“{field.label}”不超过{field.max_length}字，请精简后再填写。", **prompt)
    return DataValidation(allow_blank=True, **prompt)


def _form_sheet(wb: Workbook, campaign: Campaign, unit: Unit) -> None:
    ws = wb.active
    ws.title = SHEET_FORM
    ws["A1"] = f"{campaign.name}报表"
    ws["A1"].font = Font(bold=True, size=14)
    ws["A1"].alignment = Alignment(horizontal="center", vertical="center", wrap_text=True)
    ws.merge_cells("A1:D1")
    ws.row_dimensions[1].height = 36
    for ref, text in (("A2", "填报单位"), ("B2", unit.name), ("C2", "单位代码"), ("D2", unit.code)):
        ws[ref] = text
    ws["A2"].font = ws["C2"].font = _BOLD
    for col, text in zip("ABCD", ("项目", "数值", "单位", "填报说明")):
        cell = ws[f"{col}{HEADER_ROW}"]
        cell.value, cell.font, cell.fill, cell.border = text, _BOLD, _HEADER_FILL, _BOX
        cell.alignment = Alignment(horizontal="center", vertical="center")
    for width, col in ((24, "A"), (40, "B"), (8, "C"), (40, "D")):
        ws.column_dimensions[col].width = width

    rows = [(f, field_help(f)) for f in campaign.form.fields]
    for row, (field, help_text) in enumerate(rows, start=FIRST_FIELD_ROW):
        for col, text in ((1, field.label), (3, field.unit or ""), (4, help_text)):
            ws.cell(row, col, text)
        if field.help:
            ws.cell(row, 1).comment = Comment(field.help, CREATOR, width=240, height=90)
        value = ws.cell(row, 2)
        if field.kind == "text":
            value.number_format = "@"
            ws.row_dimensions[row].height = 120 if (field.max_length or 2000) > 500 else 60
        dv = _validation(field, help_text)
        ws.add_data_validation(dv)
        dv.add(value.coordinate)
        wb.defined_names[field_name(field.key)] = DefinedName(
            field_name(field.key), attr_text=f"'{SHEET_FORM}'!$B${row}")

    last = FIRST_FIELD_ROW + len(rows)
    note = "如数据变化较大或超出常规，请在此说明原因"
    ws.cell(last, 1, campaign.form.explanation_label)
    ws.cell(last, 4, note)
    ws.cell(last, 2).number_format = "@"
    ws.row_dimensions[last].height = 60
    dv = DataValidation(allow_blank=True, showInputMessage=True,
                        promptTitle=campaign.form.explanation_label[:32], prompt=note)
    ws.add_data_validation(dv)
    dv.add(f"B{last}")
    wb.defined_names[EXPLANATION_NAME] = DefinedName(
        EXPLANATION_NAME, attr_text=f"'{SHEET_FORM}'!$B${last}")

    for row in range(FIRST_FIELD_ROW, last + 1):
        for col in range(1, 5):
            cell = ws.cell(row, col)
            cell.border = _BOX
            cell.alignment = _WRAP if col in (2, 4) else _MIDDLE
        ws.cell(row, 2).fill, ws.cell(row, 2).protection = _INPUT_FILL, _OPEN
    ws.freeze_panes = f"A{FIRST_FIELD_ROW}"
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.page_setup.fitToWidth, ws.page_setup.fitToHeight = 1, 0
    _protect(ws)


def _photos_sheet(wb: Workbook) -> None:
    ws = wb.create_sheet(SHEET_PHOTOS)
    for col, text in (("A", "照片文件名"), ("B", "图片说明")):
        cell = ws[f"{col}1"]
        cell.value, cell.font, cell.fill, cell.border = text, _BOLD, _HEADER_FILL, _BOX
    ws.column_dimensions["A"].width, ws.column_dimensions["B"].width = 32, 60
    for row in range(2, PHOTO_ROWS + 2):
        for col in (1, 2):
            cell = ws.cell(row, col)
            cell.fill, cell.protection, cell.border = _INPUT_FILL, _OPEN, _BOX
            cell.number_format = "@"
    note = ws.cell(PHOTO_NOTE_ROW, 1, "说明：活动照片请保存为jpg或png格式，作为附件与本表在同一封邮件中发送"
                   "（或放在同一文件夹中）；每张照片填写一行：照片文件名（如 活动现场1.jpg）和图片说明。")
    note.alignment = _WRAP
    ws.merge_cells(start_row=PHOTO_NOTE_ROW, start_column=1, end_row=PHOTO_NOTE_ROW, end_column=2)
    ws.row_dimensions[PHOTO_NOTE_ROW].height = 48
    ws.freeze_panes = "A2"
    _protect(ws)


def _guide_sheet(wb: Workbook, campaign: Campaign, unit: Unit) -> None:
    ws = wb.create_sheet(SHEET_GUIDE)
    contacts = "；".join(f"{c.name}（{c.email}）" for c in campaign.coordinators)
    lines = [
        f"{campaign.name}填报说明",
        f"填报单位：{unit.name}（单位代码：{unit.code}）",
        f"一、报送截止时间：{format_moment(campaign.calendar.deadline_at)}。",
        "二、请在“报表”工作表的黄色单元格中填写，其他单元格已锁定，无需也无法修改。",
        "三、数量类项目填写非负整数（如0、120），不要填写文字、单位或小数；未开展的项目请填0。"
        "标注“必填”的项目不能空缺。",
        "四、文字类项目按“填报说明”列的要求填写，注意字数限制。",
        f"五、如数据变化较大或超出常规，请在“{campaign.form.explanation_label}”一栏说明原因。",
        "六、活动照片（jpg或png格式）请作为邮件附件一并发送，并在“照片”工作表中逐行填写照片文件名和图片说明。",
        "七、请直接填写并报送本文件：不要重命名、删除或新增工作表，不要插入或删除行列，不要另存为其他格式。",
        "八、报送方式：直接回复报送通知邮件，附上填好的本文件和照片。",
        "九、系统收到后将自动回复回执：已接收的告知接收结果；有问题的逐项列出单元格、填写内容和修改要求，"
        "请按回执修改后重新报送。",
        f"十、如有疑问，请联系：{contacts}。",
    ]
    for row, text in enumerate(lines, start=1):
        ws.cell(row, 1, text).alignment = _WRAP
    ws["A1"].font = Font(bold=True, size=14)
    ws.column_dimensions["A"].width = 100
    _protect(ws)


def _meta_sheet(wb: Workbook, campaign: Campaign, unit: Unit) -> None:
    ws = wb.create_sheet(SHEET_META)
    meta = (("campaign", campaign.id), ("unit_code", unit.code),
            ("form_version", form_version(campaign.form)))
    for row, (key, value) in enumerate(meta, start=1):
        ws.cell(row, 1, key)
        ws.cell(row, 2, value)
    ws.sheet_state = "veryHidden"
    _protect(ws)


def _protect(ws) -> None:
    """Sheet protection without a password; rows and columns may still be resized."""
    ws.protection.sheet, ws.protection.formatColumns, ws.protection.formatRows = True, False, False


def _to_bytes(wb: Workbook, moment: datetime) -> bytes:
    """Serialise ``wb`` with every timestamp fixed to ``moment``, so equal inputs give equal bytes.

    openpyxl's ``save`` stamps the current time into docProps and the zip entries; this writes
    through ``ExcelWriter`` (keeping the properties as set) and re-packs with fixed entry times.
    """
    raw = BytesIO()
    ExcelWriter(wb, ZipFile(raw, "w", ZIP_DEFLATED, allowZip64=True)).save()
    stamp = moment.timetuple()[:6]
    out = BytesIO()
    with ZipFile(BytesIO(raw.getvalue())) as src, ZipFile(out, "w", ZIP_DEFLATED) as dst:
        for entry in src.infolist():
            info = ZipInfo(entry.filename, date_time=stamp)
            info.compress_type, info.create_system, info.external_attr = ZIP_DEFLATED, 3, 0o644 << 16
            dst.writestr(info, src.read(entry))
    return out.getvalue()


def build_request_workbook(campaign: Campaign, unit: Unit) -> bytes:
    """The .xlsx bytes of ``unit``'s request workbook; identical bytes for identical inputs."""
    wb = Workbook()
    _form_sheet(wb, campaign, unit)
    _photos_sheet(wb)
    _guide_sheet(wb, campaign, unit)
    _meta_sheet(wb, campaign, unit)
    wb.active = 0
    wb.security = WorkbookProtection(lockStructure=True)  # no renaming, adding or unhiding sheets
    opens = campaign.calendar.opens_at
    utc = opens.astimezone(timezone.utc).replace(tzinfo=None)  # docProps times are UTC
    props = wb.properties
    props.title = f"{campaign.name}报表（{unit.name}）"
    props.subject = campaign.name
    props.creator = props.lastModifiedBy = CREATOR
    props.identifier = f"{campaign.id}/{unit.code}"
    props.created = props.modified = utc
    return _to_bytes(wb, opens.replace(tzinfo=None))


def fill_workbook(data: bytes, values: dict[str, object], explanation: str | None = None,
                  photos: list[tuple[str, str]] = (), formulas: bool = True) -> bytes:
    """Simulate a unit filling its request workbook; return the new .xlsx bytes.

    ``values`` maps field keys to what the unit types (None clears the cell). As in Excel, a
    string starting with ``=`` becomes a formula (useful to test the parser), unless
    ``formulas`` is false: then every string is written as text (what the product itself fills
    in, from text others wrote). ``photos`` are (file name, caption) rows written from row 2
    of ``照片``. Unknown keys raise KeyError.
    """
    wb = load_workbook(BytesIO(data))
    names = wb.defined_names

    def cell_of(name: str):
        if name not in names:
            raise KeyError(f"no cell named {name!r} in this workbook (not a request workbook?)")
        sheet, ref = next(names[name].destinations)
        return wb[sheet][ref.replace("$", "")]

    for key, value in values.items():
        if field_name(key) not in names:
            raise KeyError(f"unknown field key {key!r}")
        cell = cell_of(field_name(key))
        cell.value = value
        if not formulas and isinstance(value, str):
            cell.data_type = "s"  # openpyxl took a leading '=' for a formula
    if explanation is not None:
        cell_of(EXPLANATION_NAME).value = explanation
    if len(photos) > PHOTO_ROWS:
        raise ValueError(f"the photos sheet has {PHOTO_ROWS} rows, got {len(photos)} photos")
    ws = wb[SHEET_PHOTOS]
    for row, (file_name, caption) in enumerate(photos, start=2):
        ws.cell(row, 1, file_name)
        ws.cell(row, 2, caption)
    moment = wb.properties.modified or datetime(1980, 1, 1)
    return _to_bytes(wb, moment)

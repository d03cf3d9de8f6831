"""The request workbook: layout, protection, validation, determinism and a filled round trip."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from openpyxl import load_workbook
from python_calamine import CalamineWorkbook

from tasks.core.config import load_config
from tasks.mail.workbook import (
    PHOTO_NOTE_ROW,
    PHOTO_ROWS,
    build_request_workbook,
    fill_workbook,
    form_version,
    format_moment,
)

ROOT = Path(__file__).resolve().parents[1]
SHEETS = ["报表", "照片", "填报说明", "_meta"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config", "energy-week-2023")


@pytest.fixture(scope="module")
def unit(cfg):
    return cfg.unit_by_code["210100"]


@pytest.fixture(scope="module")
def data(cfg, unit) -> bytes:
    return build_request_workbook(cfg.campaign, unit)


@pytest.fixture(scope="module")
def wb(data):
    return load_workbook(io.BytesIO(data))


def field_rows(cfg):
    return {f.key: row for row, f in enumerate(cfg.campaign.form.fields, start=5)}


def test_opens_with_openpyxl_and_calamine_in_order(data, wb):
    assert wb.sheetnames == SHEETS
    assert wb.active.title == "报表"
    cal = CalamineWorkbook.from_filelike(io.BytesIO(data))
    assert cal.sheet_names == SHEETS
    states = {s.name: str(s.visible) for s in cal.sheets_metadata}
    assert "VeryHidden" in states["_meta"] and "VeryHidden" not in states["报表"]


def test_meta_sheet(cfg, unit, wb):
    ws = wb["_meta"]
    assert ws.sheet_state == "veryHidden"
    rows = [tuple(c.value for c in r) for r in ws.iter_rows(min_row=1, max_row=3, max_col=2)]
    assert rows == [("campaign", "energy-week-2023"), ("unit_code", "210100"),
                    ("form_version", form_version(cfg.campaign.form))]


def test_head_of_form_sheet(cfg, unit, wb):
    ws = wb["报表"]
    assert ws["A1"].value == f"{cfg.campaign.name}报表"
    assert "A1:D1" in {str(r) for r in ws.merged_cells.ranges}
    assert ws["A1"].font.bold and ws["A1"].font.size == 14
    assert ws["A1"].alignment.horizontal == "center"
    assert [ws[c].value for c in ("A2", "B2", "C2", "D2")] == ["填报单位", "沈阳市", "单位代码", "210100"]
    assert ws["D2"].data_type == "s"  # a code, never a number
    assert [ws.cell(4, c).value for c in range(1, 5)] == ["项目", "数值", "单位", "填报说明"]
    assert all(ws.cell(4, c).font.bold for c in range(1, 5))


def test_one_row_per_field_in_form_order(cfg, wb):
    ws = wb["报表"]
    fields = cfg.campaign.form.fields
    for row, f in enumerate(fields, start=5):
        assert ws.cell(row, 1).value == f.label
        assert ws.cell(row, 2).value is None
        assert (ws.cell(row, 3).value or "") == (f.unit or "")
        help_text = ws.cell(row, 4).value
        assert help_text.startswith("必填。" if f.required else "选填。")
        if f.help:
            assert f.help in help_text
        elif f.kind == "count":
            assert "填写非负整数" in help_text
    last = 5 + len(fields)
    assert ws.cell(last, 1).value == "情况说明"
    assert ws.cell(last, 2).value is None
    assert ws.cell(last, 4).value == "如数据变化较大或超出常规，请在此说明原因"
    assert ws.max_row == last
    assert ws.column_dimensions["A"].width >= 20 and ws.column_dimensions["B"].width >= 30
    text_row = field_rows(cfg)["activities"]
    assert ws.cell(text_row, 2).alignment.wrap_text
    assert ws.row_dimensions[text_row].height >= 60


def test_validations_cover_exactly_count_and_text_cells(cfg, wb):
    ws = wb["报表"]
    rows = field_rows(cfg)
    by_type: dict[str, set[str]] = {}
    prompts = {}
    for dv in ws.data_validations.dataValidation:
        cells = {c for rng in dv.sqref.ranges for c in re.findall(r"[A-Z]+\d+", rng.coord)}
        by_type.setdefault(dv.type or "any", set()).update(cells)
        for c in cells:
            prompts[c] = dv
    counts = {f"B{rows[f.key]}" for f in cfg.campaign.form.counts}
    limited = {f"B{rows[f.key]}" for f in cfg.campaign.form.texts if f.max_length}
    assert by_type["whole"] == counts
    assert by_type["textLength"] == limited
    for f in cfg.campaign.form.fields:
        dv = prompts[f"B{rows[f.key]}"]
        assert dv.showInputMessage and dv.prompt == ws.cell(rows[f.key], 4).value
        if f.kind == "count":
            assert (dv.operator, dv.formula1, dv.errorTitle) == ("greaterThanOrEqual", "0", "请填写非负整数")
            assert dv.showErrorMessage and "非负整数" in dv.error
        elif f.max_length:
            assert (dv.operator, dv.formula1) == ("lessThanOrEqual", str(f.max_length))


def test_comments_on_labels_with_help(cfg, wb):
    ws = wb["报表"]
    for row, f in enumerate(cfg.campaign.form.fields, start=5):
        comment = ws.cell(row, 1).comment
        assert (comment.text if comment else None) == f.help


def test_protection_leaves_only_value_cells_open(cfg, wb):
    ws = wb["报表"]
    assert ws.protection.sheet and not ws.protection.password
    last = 5 + len(cfg.campaign.form.fields)
    for row in range(1, last + 1):
        for col in range(1, 5):
            open_cell = col == 2 and row >= 5
            assert ws.cell(row, col).protection.locked is not open_cell, ws.cell(row, col).coordinate
    assert ws.cell(5, 2).fill.fgColor.rgb.endswith("FFF2CC")
    assert all(wb[name].protection.sheet for name in SHEETS)
    assert wb.security.lockStructure


def test_photos_sheet(wb):
    ws = wb["照片"]
    assert (ws["A1"].value, ws["B1"].value) == ("照片文件名", "图片说明")
    for row in range(2, PHOTO_ROWS + 2):
        assert not ws.cell(row, 1).protection.locked and not ws.cell(row, 2).protection.locked
    assert ws.cell(PHOTO_ROWS + 2, 1).protection.locked
    note = ws.cell(PHOTO_NOTE_ROW, 1).value
    assert "jpg" in note and "png" in note and "同一封邮件" in note


def test_guide_sheet(wb):
    text = "\n".join(str(r[0]) for r in wb["填报说明"].iter_rows(values_only=True) if r[0])
    assert "2023年9月28日17:00" in text
    for phrase in ("回复", "附件", "回执", "不要重命名", "照片"):
        assert phrase in text


def test_format_moment_has_no_leading_zeros():
    assert format_moment(datetime(2023, 9, 5, 9, 5)) == "2023年9月5日9:05"
    assert format_moment(datetime(2023, 10, 28, 17, 0)) == "2023年10月28日17:00"


def test_document_properties(cfg, wb):
    props = wb.properties
    assert props.creator == "报送任务系统"
    assert cfg.campaign.name in props.title and "沈阳市" in props.title
    opens = cfg.campaign.calendar.opens_at.astimezone(timezone.utc).replace(tzinfo=None)
    assert props.created == opens and props.modified == opens


def test_form_version_is_stable_and_tracks_labels(cfg):
    form = cfg.campaign.form
    version = form_version(form)
    assert re.fullmatch(r"[0-9a-f]{12}", version)
    assert form_version(form.model_copy()) == version
    fields = list(form.fields)
    fields[0] = fields[0].model_copy(update={"label": "张贴宣传画（新）"})
    assert form_version(form.model_copy(update={"fields": fields})) != version
    swapped = [fields[1], fields[0], *fields[2:]]
    assert form_version(form.model_copy(update={"fields": swapped})) != form_version(
        form.model_copy(update={"fields": fields}))


def test_bytes_are_deterministic(cfg, unit, data):
    again = build_request_workbook(cfg.campaign, unit)
    assert hashlib.sha256(again).hexdigest() == hashlib.sha256(data).hexdigest()
    other = build_request_workbook(cfg.campaign, cfg.unit_by_code["SZ001"])
    assert other != data


def test_bytes_are_deterministic_across_processes(data):
    code = ("import hashlib,sys; from pathlib import Path; from tasks.core.config import load_config;"
            "from tasks.mail.workbook import build_request_workbook as b;"
            "c=load_config(Path('config'),'energy-week-2023');"
            "sys.stdout.write(hashlib.sha256(b(c.campaign,c.unit_by_code['210100'])).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out == hashlib.sha256(data).hexdigest()


def filled(data) -> bytes:
    return fill_workbook(
        data,
        {"posters": 1200, "signs": 35, "trainings": 4, "activities": "组织开展节能宣传进机关活动。",
         "highlights": "绿色出行打卡"},
        explanation="宣传画数量较去年增加，因新增社区宣传点。",
        photos=[("活动现场1.jpg", "启动仪式现场"), ("展板.png", "节能展板展示")],
    )


@pytest.mark.parametrize("how", ["filelike", "path"])
def test_fill_round_trip_read_by_calamine(cfg, data, tmp_path, how):
    out = filled(data)
    if how == "path":
        (tmp_path / "return.xlsx").write_bytes(out)
        cal = CalamineWorkbook.from_path(str(tmp_path / "return.xlsx"))
    else:
        cal = CalamineWorkbook.from_filelike(io.BytesIO(out))
    rows = cal.get_sheet_by_name("报表").to_python()
    by_label = {r[0]: r[1] for r in rows[4:]}
    assert by_label["张贴宣传画"] == 1200 and by_label["张贴节能标识"] == 35
    assert by_label["举办培训"] == 4
    assert by_label["主要活动情况"] == "组织开展节能宣传进机关活动。"
    assert by_label["特色亮点"] == "绿色出行打卡"
    assert by_label["情况说明"] == "宣传画数量较去年增加，因新增社区宣传点。"
    assert by_label["悬挂横幅"] == ""
    assert rows[1][:4] == ["填报单位", "沈阳市", "单位代码", "210100"]
    photos = cal.get_sheet_by_name("照片").to_python()
    assert photos[1][:2] == ["活动现场1.jpg", "启动仪式现场"]
    assert photos[2][:2] == ["展板.png", "节能展板展示"]
    assert cal.get_sheet_by_name("_meta").to_python()[2] == ["form_version", form_version(cfg.campaign.form)]


def test_filled_workbook_keeps_structure(cfg, data):
    wb = load_workbook(io.BytesIO(filled(data)))
    assert wb.sheetnames == SHEETS and wb["_meta"].sheet_state == "veryHidden"
    ws = wb["报表"]
    assert ws.protection.sheet and not ws.cell(5, 2).protection.locked
    assert any(dv.type == "whole" for dv in ws.data_validations.dataValidation)
    assert ws.cell(5, 2).value == 1200


def test_fill_rejects_unknown_keys_and_types_formulas_like_excel(data):
    with pytest.raises(KeyError):
        fill_workbook(data, {"no_such_field": 1})
    with pytest.raises(ValueError):
        fill_workbook(data, {}, photos=[(f"{i}.jpg", "") for i in range(PHOTO_ROWS + 1)])
    wb = load_workbook(io.BytesIO(fill_workbook(data, {"posters": "=SUM(1,2)", "signs": "200条"})))
    assert wb["报表"]["B5"].data_type == "f"
    assert wb["报表"]["B6"].value == "200条"

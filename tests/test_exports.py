"""Exported tables (tasks/bulletin/exports.py): values from returns reach the sheet as literal
text, never as formulas, read back the same by openpyxl and calamine."""

from __future__ import annotations

import math
import zipfile
from datetime import datetime, timedelta, timezone
from xml.etree import ElementTree

import pandas as pd
import pytest
from openpyxl import load_workbook
from openpyxl.utils.escape import unescape
from python_calamine import CalamineWorkbook

from tasks.bulletin.exports import export_frame

PAYLOADS = ['=HYPERLINK("http://x","y")', "+1", "-2+3", "@SUM(A1)", "=1+1", " =cmd|' /C calc'!A0",
            "\t=1", "\r=1"]
MAIN_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def excel_text(value: str) -> str:
    """A string cell as Excel (and calamine) shows it: a CR is stored as ``_x000D_`` (OOXML's
    escape for characters XML cannot carry), which openpyxl leaves as it is."""
    return unescape(value)


def formula_elements(path) -> list:
    """Every <f> element in every worksheet XML of an .xlsx file."""
    found = []
    with zipfile.ZipFile(path) as z:
        sheets = [n for n in z.namelist() if n.startswith("xl/worksheets/") and n.endswith(".xml")]
        assert sheets
        for name in sheets:
            found += list(ElementTree.fromstring(z.read(name)).iter(f"{MAIN_NS}f"))
    return found


@pytest.fixture()
def exported(tmp_path):
    frame = pd.DataFrame({
        "单位": ["沈阳市", "大连市", *(["省检察院"] * (len(PAYLOADS) - 2))],
        "说明": PAYLOADS,
        "=HYPERLINK(\"http://x\",\"h\")": ["+1"] * len(PAYLOADS),
        "张贴宣传画": range(len(PAYLOADS)),
        "比例": [0.5, math.nan, *([1.25] * (len(PAYLOADS) - 2))],
    })
    frame["收到时间"] = datetime(2023, 9, 20, 10, 30, tzinfo=timezone(timedelta(hours=8)))
    path = export_frame(frame, tmp_path / "out" / "summary.xlsx")
    return frame, path


def test_export_frame_has_no_formulas(exported):
    _, path = exported
    assert path.is_file()
    assert formula_elements(path) == []


def test_export_frame_reads_back_literally_with_openpyxl(exported):
    frame, path = exported
    wb = load_workbook(path)
    ws = wb["汇总"]
    assert [c.value for c in ws[1]] == list(frame.columns)
    assert all(c.font.bold for c in ws[1])
    for row, text in enumerate(PAYLOADS, start=2):
        assert excel_text(ws.cell(row, 2).value) == text and ws.cell(row, 2).data_type == "s"
        assert ws.cell(row, 3).value == "+1"
        assert ws.cell(row, 4).value == row - 2 and ws.cell(row, 4).data_type == "n"
    assert ws["E3"].value is None
    assert ws["F2"].value == datetime(2023, 9, 20, 10, 30)
    assert ws.column_dimensions["B"].width >= 8


def test_export_frame_reads_back_literally_with_calamine(exported):
    frame, path = exported
    rows = CalamineWorkbook.from_path(str(path)).get_sheet_by_name("汇总").to_python()
    assert rows[0] == list(frame.columns)
    assert [r[1] for r in rows[1:]] == PAYLOADS
    assert {r[2] for r in rows[1:]} == {"+1"}
    assert [r[3] for r in rows[1:]] == list(range(len(PAYLOADS)))
    assert rows[1][0] == "沈阳市" and rows[1][4] == 0.5 and rows[2][4] == ""


def test_export_frame_custom_sheet_name(tmp_path):
    path = export_frame(pd.DataFrame({"a": ["@SUM(A1)"]}), tmp_path / "x.xlsx", sheet="明细")
    assert load_workbook(path).sheetnames == ["明细"]
    assert CalamineWorkbook.from_path(str(path)).get_sheet_by_name("明细").to_python() == [["a"], ["@SUM(A1)"]]


def test_export_frame_every_text_cell_is_text_with_quote_prefix_when_risky(tmp_path):
    """Strings go in as text cells, never formulas, whatever column or row they are in; long
    text wraps."""
    long_text = "节能" * 40 + "\n第二行"
    n = 300
    frame = pd.DataFrame({
        "=SUM(A1:A2)": [PAYLOADS[i % len(PAYLOADS)] for i in range(n)],
        "说明": [long_text if i % 2 else None for i in range(n)],
        "数量": [float(i) for i in range(n)],
    })
    path = export_frame(frame, tmp_path / "many.xlsx")
    assert formula_elements(path) == []
    ws = load_workbook(path)["汇总"]
    header = ws[1]
    assert (header[0].value, header[0].data_type, header[0].quotePrefix, header[0].font.bold) == (
        "=SUM(A1:A2)", "s", True, True)
    for r in range(2, n + 2):
        cell = ws.cell(r, 1)
        assert (excel_text(cell.value), cell.data_type, cell.quotePrefix) == (PAYLOADS[(r - 2) % len(PAYLOADS)], "s",
                                                                           True)
        assert ws.cell(r, 3).value == r - 2 and ws.cell(r, 3).data_type == "n"
    assert ws.cell(3, 2).value == long_text and ws.cell(3, 2).alignment.wrap_text
    assert ws.cell(2, 2).value is None
    # Excel stores a width with its padding (XlsxWriter writes 60 as 60.71)
    assert int(ws.column_dimensions["B"].width) == 60 and int(ws.column_dimensions["C"].width) == 8
    assert ws.freeze_panes == "A2"


@pytest.mark.parametrize("frame", [pd.DataFrame(), pd.DataFrame({"单位": [], "数量": []})])
def test_export_frame_without_rows_is_a_readable_workbook(tmp_path, frame):
    path = export_frame(frame, tmp_path / "empty.xlsx")
    ws = load_workbook(path)["汇总"]
    assert [[c.value for c in row] for row in ws.iter_rows()] in ([], [[]], [list(frame.columns)])
    assert CalamineWorkbook.from_path(str(path)).get_sheet_by_name("汇总").to_python() in ([], [[]], [list(frame.columns)])


@pytest.mark.parametrize("name", ["", "a/b", "x" * 32, "[汇总]"])
def test_export_frame_refuses_a_sheet_name_excel_refuses(tmp_path, name):
    with pytest.raises(ValueError):
        export_frame(pd.DataFrame({"a": [1]}), tmp_path / "x.xlsx", sheet=name)

"""Write the sample returns in tests/data/returns/ (run: python tests/data/make_samples.py).

Every file is made with a real library (openpyxl for .xlsx, the csv module and Python's
codecs for .csv/.txt) and is deterministic (fixed zip timestamps and document dates), so
re-running it does not change committed files. Two things openpyxl cannot do are done by
editing the saved XML, and say so:

- cached formula values: openpyxl saves a formula with an empty cached value (it does not
  calculate), so ``formula_cached_营口市.xlsx`` gets its cached ``<v>`` values written in;
- .ods: no ODS writer is installed (no odfpy), so ``ods_盘锦市.ods`` is a minimal
  OpenDocument package written with zipfile, shaped like LibreOffice's own output
  (an error formula carries ``calcext:value-type="error"`` and a cached value of 0).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import openpyxl
from openpyxl.styles import Font

OUT = Path(__file__).parent / "returns"
FIXED = (2023, 9, 20, 9, 0, 0)


def _deterministic(data: bytes, patches: dict[str, list[tuple[str, str, str]]] | None = None
                   ) -> bytes:
    """Re-zip with fixed timestamps and document dates; ``patches`` give formula cells
    (ref, cached value, extra attribute such as ' t="e"') their cached values."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            text = src.read(info)
            if info.filename == "docProps/core.xml":
                text = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2023-09-20T09:00:00Z", text)
            for ref, cached, kind in (patches or {}).get(info.filename, []):
                text, n = re.subn(  # fill the empty cached value openpyxl left
                    rf'<c r="{ref}"([^>]*)><f>(.*?)</f><v></v></c>'.encode(),
                    rf'<c r="{ref}"\1{kind}><f>\2</f><v>{cached}</v></c>'.encode(), text)
                assert n == 1, f"no formula cell {ref} to patch"
            zi = zipfile.ZipInfo(info.filename, FIXED)
            zi.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(zi, text)
    return out.getvalue()


def _save(wb: openpyxl.Workbook, name: str, patches=None) -> None:
    buf = io.BytesIO()
    wb.save(buf)
    (OUT / name).write_bytes(_deterministic(buf.getvalue(), patches))


def generated_layout() -> None:
    """The request workbook's layout (tasks/mail/workbook.py), filled in the ways units type."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "报表"
    ws["A1"] = "2023年辽宁省公共机构节能宣传周活动情况报送报表"
    ws.merge_cells("A1:D1")
    ws["A2"], ws["B2"], ws["C2"], ws["D2"] = "填报单位", "省妇联", "单位代码", "SZ003"
    for col, text in zip("ABCD", ("项目", "数值", "单位", "填报说明")):
        ws[f"{col}4"] = text
    fields = [  # label, unit, value as typed
        ("张贴宣传画", "套", 120), ("张贴节能标识", "个", "１２０"), ("悬挂横幅", "条", "1,234"),
        ("展出展板", "块", "约200"), ("发放宣传材料", "份", "200余份"), ("发放节能购物袋", "个", "三十"),
        ("发放节能宣传品", "件", "1.2万"), ("举办培训", "场", 5), ("省级以上媒体新闻稿件", "篇", None),
        ("市级媒体新闻稿件", "篇", "=B5+B12"), ("展播宣传片", "部", None), ("参与干部职工", "人次", "两千"),
        ("主要活动情况", "", "开展节能宣传进机关活动，发放宣传材料。"), ("特色亮点", "", None),
    ]
    for row, (label, unit, value) in enumerate(fields, start=5):
        ws.cell(row, 1, label), ws.cell(row, 3, unit or None), ws.cell(row, 4, "必填。")
        ws.cell(row, 2, value)
    ws["B13"].value, ws["B13"].data_type = "#VALUE!", "e"  # an error cell, as Excel saves one
    ws["A19"], ws["D19"] = "情况说明", "如数据变化较大或超出常规，请在此说明原因"
    ws["B19"] = "宣传品数量较多，因今年新增社区活动。"
    photos = wb.create_sheet("照片")
    photos.append(["照片文件名", "图片说明"])
    photos.append(["活动现场1.jpg", "节能宣传周启动仪式"])
    photos.append(["展板.png", "节能展板展示"])
    photos["A23"] = "说明：活动照片请保存为jpg或png格式。"
    photos.merge_cells("A23:B23")
    guide = wb.create_sheet("填报说明")
    guide["A1"], guide["A2"] = "填报说明", "填报单位：省妇联（单位代码：SZ003）"
    meta = wb.create_sheet("_meta")
    for row in (("campaign", "energy-week-2023"), ("unit_code", "SZ003"), ("form_version", "ca7d4bdee2c8")):
        meta.append(row)
    meta.sheet_state = "veryHidden"
    # B14 holds =B5+B12; Excel would have cached 125 (120 + 5).
    _save(wb, "generated_SZ003.xlsx", {"xl/worksheets/sheet1.xml": [("B14", "125", "")]})


def wide_title_merged() -> None:
    """A unit's own wide table: title row, two-level merged header, blank row, text numbers."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "统计表"
    ws["A1"] = "沈阳市公共机构节能宣传周活动情况统计表"
    ws["A1"].font = Font(bold=True)
    ws.merge_cells("A1:H1")
    ws["A3"], ws["B3"], ws["E3"], ws["F3"] = "填报单位", "宣传品发放", "举办培训（场）", "参与人数"
    ws["G3"], ws["H3"] = "节能讲座", "备注"
    for rng in ("A3:A4", "B3:D3", "E3:E4", "F3:F4", "G3:G4", "H3:H4"):
        ws.merge_cells(rng)
    ws["B4"], ws["C4"], ws["D4"] = "宣传画（套）", "横幅(条)", "展板【块】"
    ws.append([])  # row 5 stays blank
    ws["A6"], ws["B6"], ws["C6"], ws["D6"] = "沈阳市机关事务服务中心", "1,234", "30条", "二十"
    ws["E6"], ws["F6"], ws["G6"] = 5, "约3000", 2
    wb.create_sheet("Sheet2")
    _save(wb, "wide_title_merged_沈阳.xlsx")


def long_no_header() -> None:
    """Labels in B after a 序号 column, a blank column, values in D, no value header."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws["A1"] = "填报单位：大连市"
    rows = [(1, "1.张贴宣传画（套）", "200多"), (2, "悬挂横幅：", "3千"), (3, "展出展板*", "\u3000１５\u3000"),
            None, (4, "举办培训场次", "无"), (5, "参与干部职工（人次）", "2,000"),
            (6, "其他宣传活动", "10"), (7, "情况说明", "参与人次较多，系全市联动。")]
    for i, row in enumerate(rows, start=3):
        if row:
            ws.cell(i, 1, row[0]), ws.cell(i, 2, row[1]), ws.cell(i, 4, row[2])
    _save(wb, "long_no_header_大连市.xlsx")


def formula_cached() -> None:
    """Formulas whose cached values are the only truth (one refers to another workbook)."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "营口"
    rows = [("张贴宣传画", 10), ("悬挂横幅", 20), ("展出展板", "=B1+B2"),
            ("发放宣传材料", "='[汇总.xlsx]Sheet1'!$B$2"), ("举办培训", "=1/0"), ("展播宣传片", "=B1*2")]
    for row in rows:
        ws.append(row)
    _save(wb, "formula_cached_营口市.xlsx", {"xl/worksheets/sheet1.xml": [
        ("B3", "30", ""), ("B4", "77", ""), ("B5", "#DIV/0!", ' t="e"')]})
    # B6 (=B1*2) keeps openpyxl's empty cached value: it reads as blank.


def csv_files() -> None:
    def write(name: str, rows: list[list[str]], encoding: str, delimiter: str) -> None:
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
        (OUT / name).write_bytes(buf.getvalue().encode(encoding))

    write("long_utf8_鞍山市.csv", [
        ["鞍山市节能宣传周情况"], ["项目", "数值", "备注"], ["张贴宣传画", "1,500", ""],
        ["悬挂横幅", "45", ""], ["宣传展板", "12块", ""], ["发放宣传材料", "3,000份", "含电子版"],
        ["主要活动情况", "开展节能宣传，发放材料，组织培训", ""], ["情况说明", "", ""]], "utf-8", ",")
    write("wide_bom_本溪.csv", [
        ["填报单位", "宣传画（套）", "横幅(条)", "培训(场)", "参与人数"],
        ["本溪市", "１，２００", "8", "3", "150"]], "utf-8-sig", ";")
    write("long_gbk_丹东.txt", [
        ["单位名称", "丹东市"], ["单位代码", "210600"], [], ["项目", "填报数", "单位"],
        ["张贴宣传画", "80", "套"], ["张贴节能标识", "60", "个"], ["悬挂横幅", "12", "条"],
        ["举办培训", "3", "场"]], "gbk", "\t")
    write("wide_gb18030_锦州.csv", [
        ["锦州市节能宣传周统计表"], ["序号", "张贴宣传画", "悬挂横幅", "展出展板", "情况说明"],
        ["1", "150", "二十", "约10", "活动在𠮷祥社区开展"]], "gb18030", "，")


_ODS_CELL = '<table:table-cell office:value-type="string"><text:p>{}</text:p></table:table-cell>'


def ods_file() -> None:
    def row(*cells: str) -> str:
        return "<table:table-row>" + "".join(cells) + "</table:table-row>"

    s = _ODS_CELL.format
    content = (
        '<?xml version="1.0" encoding="UTF-8"?><office:document-content '
        'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
        'xmlns:calcext="urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0" '
        'office:version="1.2"><office:body><office:spreadsheet><table:table table:name="报表">'
        + row(s("填报单位"), s("盘锦市"))
        + row('<table:table-cell table:number-columns-repeated="2"/>')
        + row(s("张贴宣传画"), '<table:table-cell office:value-type="float" office:value="120">'
              "<text:p>120</text:p></table:table-cell>")
        + row(s("悬挂横幅"), '<table:table-cell table:formula="of:=1/0" office:value-type="float" '
              'office:value="0" calcext:value-type="error"><text:p>#DIV/0!</text:p></table:table-cell>')
        + row(s("展出展板"), '<table:table-cell table:formula="of:=2+3" office:value-type="float" '
              'office:value="5"><text:p>5</text:p></table:table-cell>')
        + "</table:table></office:spreadsheet></office:body></office:document-content>")
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest='
        '"urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
        '<manifest:file-entry manifest:full-path="/" manifest:media-type='
        '"application/vnd.oasis.opendocument.spreadsheet"/><manifest:file-entry '
        'manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>')
    with zipfile.ZipFile(OUT / "ods_盘锦市.ods", "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype", FIXED), "application/vnd.oasis.opendocument.spreadsheet")
        for name, text in (("META-INF/manifest.xml", manifest), ("content.xml", content)):
            zi = zipfile.ZipInfo(name, FIXED)
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, text)


def bad_files() -> None:
    good = (OUT / "formula_cached_营口市.xlsx").read_bytes()
    (OUT / "bad_truncated.xlsx").write_bytes(good[: len(good) // 2])
    (OUT / "bad_empty.csv").write_bytes(b"")
    # An encrypted OOXML file is an OLE compound file holding an "EncryptionInfo" stream;
    # this synthetic stand-in has the OLE signature and that stream name (UTF-16LE).
    (OUT / "bad_encrypted.xlsx").write_bytes(
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504) + "EncryptionInfo".encode("utf-16-le")
        + bytes(512))
    (OUT / "bad_webpage.xls").write_bytes(
        "<html><body><table><tr><td>张贴宣传画</td><td>1</td></tr></table></body></html>".encode())
    (OUT / "bad_binary.csv").write_bytes(bytes(range(256)) * 4)
    (OUT / "bad_photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(60))
    wb = openpyxl.Workbook()
    wb.active.append(["姓名", "电话"])
    wb.active.append(["张伟", "13800000000"])
    _save(wb, "bad_no_labels.xlsx")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for make in (generated_layout, wide_title_merged, long_no_header, formula_cached, csv_files,
                 ods_file, bad_files):
        make()
    for path in sorted(OUT.iterdir()):
        assert path.stat().st_size < 20_000, path
        print(f"{path.stat().st_size:6d}  {path.name}")


if __name__ == "__main__":
    main()

import datetime as dt
import io
import struct
import zipfile
from pathlib import Path

import openpyxl
import pytest

from tasks.reading.readers import ReturnFileError, Sheet, cell_ref, read_sheets

RETURNS = Path(__file__).parent / "data" / "returns"
GOOD = sorted(p for p in RETURNS.iterdir() if not p.name.startswith("bad_"))
BAD = sorted(p for p in RETURNS.iterdir() if p.name.startswith("bad_") and p.name != "bad_no_labels.xlsx")


@pytest.mark.parametrize("row, col, ref", [
    (0, 0, "A1"), (6, 1, "B7"), (0, 25, "Z1"), (0, 26, "AA1"), (9, 27, "AB10"),
    (0, 701, "ZZ1"), (0, 702, "AAA1"), (1048575, 16383, "XFD1048576"),
])
def test_cell_ref(row, col, ref):
    assert cell_ref(row, col) == ref


def _cell(sheets: list[Sheet], sheet: str, ref: str) -> object:
    s = next(x for x in sheets if x.name == sheet)
    for r, row in enumerate(s.rows):
        for c, v in enumerate(row):
            if cell_ref(r, c) == ref:
                return v
    return None


# file, sheet, cell, expected value (as read: numbers are floats, blanks None, errors text)
CELLS = [
    ("generated_SZ003.xlsx", "报表", "A1", "2023年辽宁省公共机构节能宣传周活动情况报送报表"),
    ("generated_SZ003.xlsx", "报表", "B1", None),                 # merged A1:D1
    ("generated_SZ003.xlsx", "报表", "D2", "SZ003"),
    ("generated_SZ003.xlsx", "报表", "B5", 120.0),
    ("generated_SZ003.xlsx", "报表", "B6", "１２０"),
    ("generated_SZ003.xlsx", "报表", "B13", "#VALUE!"),           # error cell
    ("generated_SZ003.xlsx", "报表", "B14", 125.0),               # cached formula value
    ("generated_SZ003.xlsx", "_meta", "B2", "SZ003"),
    ("formula_cached_营口市.xlsx", "营口", "B3", 30.0),
    ("formula_cached_营口市.xlsx", "营口", "B4", 77.0),           # external reference: cache only
    ("formula_cached_营口市.xlsx", "营口", "B5", "#DIV/0!"),
    ("formula_cached_营口市.xlsx", "营口", "B6", None),           # formula saved without a cache
    ("long_no_header_大连市.xlsx", "Sheet", "D5", "\u3000１５\u3000"),
    ("long_no_header_大连市.xlsx", "Sheet", "C5", None),
    ("wide_title_merged_沈阳.xlsx", "统计表", "E6", 5.0),
    ("wide_title_merged_沈阳.xlsx", "统计表", "E4", None),          # merged E3:E4
    ("ods_盘锦市.ods", "报表", "B3", 120.0),
    ("ods_盘锦市.ods", "报表", "B4", "#DIV/0!"),                  # calamine alone says 0.0
    ("ods_盘锦市.ods", "报表", "B5", 5.0),
    ("long_utf8_鞍山市.csv", "long_utf8_鞍山市", "B3", "1,500"),
    ("long_utf8_鞍山市.csv", "long_utf8_鞍山市", "B7", "开展节能宣传，发放材料，组织培训"),
    ("wide_bom_本溪.csv", "wide_bom_本溪", "A1", "填报单位"),       # BOM removed
    ("wide_bom_本溪.csv", "wide_bom_本溪", "B2", "１，２００"),
    ("long_gbk_丹东.txt", "long_gbk_丹东", "B2", "210600"),
    ("long_gbk_丹东.txt", "long_gbk_丹东", "A5", "张贴宣传画"),
    ("wide_gb18030_锦州.csv", "wide_gb18030_锦州", "E3", "活动在𠮷祥社区开展"),
    ("wide_gb18030_锦州.csv", "wide_gb18030_锦州", "C3", "二十"),
]


@pytest.mark.parametrize("name, sheet, ref, expected", CELLS)
def test_cell_values(name, sheet, ref, expected):
    assert _cell(read_sheets(RETURNS / name), sheet, ref) == expected


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_files_read_and_rows_are_rectangular(path):
    sheets = read_sheets(path)
    assert sheets and all(isinstance(s, Sheet) for s in sheets)
    for s in sheets:
        assert len({len(r) for r in s.rows}) <= 1
        assert all(v != "" for row in s.rows for v in row)


def test_sheet_order_visibility_and_merges():
    sheets = read_sheets(RETURNS / "generated_SZ003.xlsx")
    assert [(s.name, s.hidden) for s in sheets] == [
        ("报表", False), ("照片", False), ("填报说明", False), ("_meta", True)]
    assert sheets[0].merged == (((0, 0), (0, 3)),)


# file, expected problem (a fragment of the Chinese message)
@pytest.mark.parametrize("path, problem", [
    ("bad_truncated.xlsx", "已损坏"),
    ("bad_empty.csv", "空文件"),
    ("bad_encrypted.xlsx", "密码"),
    ("bad_webpage.xls", "网页"),
    ("bad_binary.csv", "编码无法识别"),
    ("bad_photo.jpg", "不是可识别的报表文件"),
])
def test_bad_files(path, problem):
    with pytest.raises(ReturnFileError) as err:
        read_sheets(RETURNS / path, display_name=f"附件/{path}")
    assert err.value.message.startswith(f"文件“附件/{path}”")
    assert problem in err.value.message
    assert str(RETURNS) not in err.value.message


def test_every_bad_sample_is_covered():
    assert {p.name for p in BAD} == {"bad_truncated.xlsx", "bad_empty.csv", "bad_encrypted.xlsx",
                                     "bad_webpage.xls", "bad_binary.csv", "bad_photo.jpg"}


def test_missing_file(tmp_path):
    with pytest.raises(ReturnFileError, match="无法打开"):
        read_sheets(tmp_path / "nope.xlsx", "nope.xlsx")


@pytest.mark.parametrize("cut", [10, 100, 500, 1000, 2000, 3000, 4000, 4500, 5000])
def test_truncated_workbooks_only_raise_return_file_error(tmp_path, cut):
    data = (RETURNS / "generated_SZ003.xlsx").read_bytes()
    path = tmp_path / "cut.xlsx"
    path.write_bytes(data[:cut])
    with pytest.raises(ReturnFileError):
        read_sheets(path)


def _xlsx_bytes(rows) -> bytes:
    wb = openpyxl.Workbook()
    for row in rows:
        wb.active.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_zip_bomb_refused_by_declared_size(tmp_path):
    path = tmp_path / "big.xlsx"
    path.write_bytes(_xlsx_bytes([["张贴宣传画", "x" * 1000]] * 300))  # ~300 KB unpacked
    assert read_sheets(path)
    with pytest.raises(ReturnFileError, match="疑似恶意文件"):
        read_sheets(path, "big.xlsx", max_unzipped_bytes=100_000)


def test_zip_bomb_refused_by_ratio(tmp_path):
    path = tmp_path / "ratio.xlsx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/padding.xml", b"0" * (11 * 1024 * 1024))  # ratio ~1000:1
    with pytest.raises(ReturnFileError, match="疑似恶意文件"):
        read_sheets(path, "ratio.xlsx")


def test_zip_lying_about_sizes_refused(tmp_path):
    data = bytearray(_xlsx_bytes([["张贴宣传画", "y" * 5000]] * 20))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # shrink declared sizes
        at = data.find(sig)
        while at != -1:
            struct.pack_into("<I", data, at + offset, 10)
            at = data.find(sig, at + 4)
    path = tmp_path / "liar.xlsx"
    path.write_bytes(bytes(data))
    with pytest.raises(ReturnFileError, match="liar.xlsx"):
        read_sheets(path)


def test_far_away_cell_refused(tmp_path):
    wb = openpyxl.Workbook()
    wb.active["A1"], wb.active["XFD100000"] = "张贴宣传画", 1
    path = tmp_path / "far.xlsx"
    wb.save(path)
    with pytest.raises(ReturnFileError, match="XFD100000"):
        read_sheets(path, "far.xlsx")


def test_data_not_at_a1_keeps_spreadsheet_positions(tmp_path):
    wb = openpyxl.Workbook()
    wb.active["C3"], wb.active["D5"] = "张贴宣传画", 7
    wb.active["C4"].value, wb.active["C4"].data_type = "#N/A", "e"
    path = tmp_path / "offset.xlsx"
    wb.save(path)
    sheets = read_sheets(path)
    assert (_cell(sheets, "Sheet", "C3"), _cell(sheets, "Sheet", "D5")) == ("张贴宣传画", 7.0)
    assert _cell(sheets, "Sheet", "C4") == "#N/A"


def test_dates_and_booleans_come_through(tmp_path):
    wb = openpyxl.Workbook()
    wb.active.append([dt.date(2023, 9, 20), True])
    path = tmp_path / "types.xlsx"
    wb.save(path)
    assert read_sheets(path)[0].rows == [[dt.date(2023, 9, 20), True]]


def test_xls_misnamed_as_xlsx_is_read_by_content(tmp_path):
    path = tmp_path / "really.ods"  # an .xlsx package under the wrong suffix
    path.write_bytes((RETURNS / "formula_cached_营口市.xlsx").read_bytes())
    assert _cell(read_sheets(path), "营口", "B4") == 77.0


# text, encoding, expected rows
@pytest.mark.parametrize("text, encoding, rows", [
    ("a,b\n1,2\n", "utf-8", [["a", "b"], ["1", "2"]]),
    ("项目\t数值\n宣传画\t1,200\n", "utf-8", [["项目", "数值"], ["宣传画", "1,200"]]),
    ("项目;数值\n宣传画;1,200\n", "gbk", [["项目", "数值"], ["宣传画", "1,200"]]),
    ("项目，数值\n宣传画，12\n", "gb18030", [["项目", "数值"], ["宣传画", "12"]]),
    ("sep=;\n项目;数值\n宣传画;3\n", "utf-8", [["项目", "数值"], ["宣传画", "3"]]),
    ("项目\t数值\n横幅\t5\n", "utf-16", [["项目", "数值"], ["横幅", "5"]]),
    ("标题\n项目,数值,备注\n宣传画,3\n", "utf-8-sig",
     [["标题", None, None], ["项目", "数值", "备注"], ["宣传画", "3", None]]),
    ('项目,内容\n活动情况,"开展宣传，发放材料，组织培训"\n说明,无\n', "utf-8",
     [["项目", "内容"], ["活动情况", "开展宣传，发放材料，组织培训"], ["说明", "无"]]),
])
def test_csv_encodings_and_delimiters(tmp_path, text, encoding, rows):
    path = tmp_path / "r.csv"
    path.write_bytes(text.encode(encoding))
    assert read_sheets(path)[0].rows == rows


def test_csv_under_a_workbook_suffix_is_read_as_text(tmp_path):
    path = tmp_path / "export.xls"
    path.write_bytes("项目\t数值\n宣传画\t3\n".encode("gbk"))
    assert read_sheets(path)[0].rows == [["项目", "数值"], ["宣传画", "3"]]


def test_sheet_name_of_csv_is_the_display_stem(tmp_path):
    path = tmp_path / "x123.csv"
    path.write_text("a,b\n", encoding="utf-8")
    assert read_sheets(path, display_name="沈阳市报表.csv")[0].name == "沈阳市报表"


def test_blank_workbook_refused(tmp_path):
    path = tmp_path / "blank.xlsx"
    openpyxl.Workbook().save(path)
    with pytest.raises(ReturnFileError, match="没有任何内容"):
        read_sheets(path, "blank.xlsx")


def _ods(path: Path, rows_xml: str) -> None:
    content = (
        '<?xml version="1.0" encoding="UTF-8"?><office:document-content '
        'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body>'
        '<office:spreadsheet><table:table table:name="S">' + rows_xml +
        "</table:table></office:spreadsheet></office:body></office:document-content>")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("META-INF/manifest.xml", '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
                   'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"/>')
        z.writestr("content.xml", content)


def test_ods_repeated_cells_bomb_refused(tmp_path):
    path = tmp_path / "rep.ods"
    _ods(path, '<table:table-row table:number-rows-repeated="1000000"><table:table-cell '
               'table:number-columns-repeated="16384" office:value-type="float" office:value="1">'
               "<text:p>1</text:p></table:table-cell></table:table-row>")
    with pytest.raises(ReturnFileError, match="数据区域过大"):
        read_sheets(path, "rep.ods")


def test_ods_with_entities_is_refused_unexpanded(tmp_path):
    """A billion-laughs DTD in content.xml: refused as broken, never expanded (defusedxml)."""
    path = tmp_path / "laughs.ods"
    _ods(path, '<table:table-row><table:table-cell office:value-type="string"><text:p>&lol9;</text:p>'
               "</table:table-cell></table:table-row>")
    entities = "".join(f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10 if i else "lol"}">' for i in range(10))
    with zipfile.ZipFile(path) as z:
        content = z.read("content.xml").decode().replace("?><office", f"?><!DOCTYPE office [{entities}]><office", 1)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("content.xml", content)
    with pytest.raises(ReturnFileError, match="已损坏"):
        read_sheets(path, "laughs.ods")


def test_ods_trailing_empty_repeats_are_fine(tmp_path):
    path = tmp_path / "ok.ods"
    _ods(path, '<table:table-row><table:table-cell office:value-type="string"><text:p>张贴宣传画'
               '</text:p></table:table-cell><table:table-cell table:number-columns-repeated="16383"/>'
               '</table:table-row><table:table-row table:number-rows-repeated="1048575">'
               '<table:table-cell table:number-columns-repeated="16384"/></table:table-row>')
    assert read_sheets(path)[0].rows == [["张贴宣传画"]]


def test_xlsx_cells_without_reference_are_bounded(tmp_path):
    wb = openpyxl.Workbook()
    wb.active["A1"], wb.active["XFD1"] = "a", "b"
    buf = io.BytesIO()
    wb.save(buf)
    path = tmp_path / "loose.xlsx"
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":  # a cell far down, without r=
                data = data.replace(b"</sheetData>",
                                    b'<row r="900000"><c t="n"><v>1</v></c></row></sheetData>')
            dst.writestr(info, data)
    with pytest.raises(ReturnFileError, match="数据区域过大"):
        read_sheets(path, "loose.xlsx")


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_archived_copy_without_suffix_reads_the_same(tmp_path, path):
    blob = tmp_path / "0f3a9c"  # the archive stores files without their suffix
    blob.write_bytes(path.read_bytes())
    assert read_sheets(blob, display_name=path.name) == read_sheets(path)

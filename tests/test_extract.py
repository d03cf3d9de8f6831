from pathlib import Path

import pytest

from tasks.core.config import Contact, Form, Unit, load_config
from tasks.reading.extract import CellValue, Extracted, extract_return, identify_unit
from tasks.reading.numbers import parse_count
from tasks.reading.readers import ReturnFileError, Sheet, read_sheets

ROOT = Path(__file__).resolve().parents[1]
RETURNS = ROOT / "tests" / "data" / "returns"
GOOD = sorted(p.name for p in RETURNS.iterdir() if not p.name.startswith("bad_"))
CONFIG = load_config(ROOT / "config", "energy-week-2023")
FORM: Form = CONFIG.campaign.form
UNITS: list[Unit] = CONFIG.units

# Per sample: layout, sheet, unit code, how (prefix), counts, count errors, approximate keys,
# cells (key → ref), texts, explanation (ref, text) or None, photo captions, unknown labels.
EXPECTED = {
    "generated_SZ003.xlsx": dict(
        layout="long", sheet="报表", unit="SZ003", how="单位代码 SZ003",
        counts=dict(posters=120, signs=120, banners=1234, boards=200, materials=200, bags=30,
                    items=12000, trainings=5, news_city=125, participants=2000),
        errors=dict(news_provincial="单元格为错误值 #VALUE!"), approx={"boards", "materials"},
        cells=dict(posters="B5", news_provincial="B13", highlights="B18"),
        texts=dict(activities="开展节能宣传进机关活动，发放宣传材料。"),
        explanation=("B19", "宣传品数量较多，因今年新增社区活动。"),
        photos={"活动现场1.jpg": "节能宣传周启动仪式", "展板.png": "节能展板展示"}, unknown=[]),
    "wide_title_merged_沈阳.xlsx": dict(
        layout="wide", sheet="统计表", unit="210100", how="表中填报单位“沈阳市机关事务服务中心”",
        counts=dict(posters=1234, banners=30, boards=20, trainings=5, participants=3000),
        errors={}, approx={"participants"}, cells=dict(posters="B6", participants="F6"),
        texts={}, explanation=None, photos={}, unknown=["宣传品发放", "节能讲座"]),
    # the same sheet saved as .xls (BIFF8) by LibreOffice: `soffice --convert-to xls`
    "xls_libreoffice_沈阳.xls": dict(
        layout="wide", sheet="统计表", unit="210100", how="表中填报单位“沈阳市机关事务服务中心”",
        counts=dict(posters=1234, banners=30, boards=20, trainings=5, participants=3000),
        errors={}, approx={"participants"}, cells=dict(posters="B6", participants="F6"),
        texts={}, explanation=None, photos={}, unknown=["宣传品发放", "节能讲座"]),
    "long_no_header_大连市.xlsx": dict(
        layout="long", sheet="Sheet", unit="210200", how="表中填报单位“大连市”",
        counts=dict(posters=200, banners=3000, boards=15, trainings=0, participants=2000),
        errors={}, approx={"posters"}, cells=dict(posters="D3", participants="D8"), texts={},
        explanation=("D10", "参与人次较多，系全市联动。"), photos={}, unknown=["其他宣传活动"]),
    "formula_cached_营口市.xlsx": dict(
        layout="long", sheet="营口", unit="210800", how="文件名“formula_cached_营口市.xlsx”",
        counts=dict(posters=10, banners=20, boards=30, materials=77),
        errors=dict(trainings="单元格为错误值 #DIV/0!"), approx=set(),
        cells=dict(videos="B6"), texts={}, explanation=None, photos={}, unknown=[]),
    "long_utf8_鞍山市.csv": dict(
        layout="long", sheet="long_utf8_鞍山市", unit="210300", how="文件名“long_utf8_鞍山市.csv”",
        counts=dict(posters=1500, banners=45, boards=12, materials=3000), errors={}, approx=set(),
        cells=dict(materials="B6"), texts=dict(activities="开展节能宣传，发放材料，组织培训"),
        explanation=None, photos={}, unknown=[]),
    "wide_bom_本溪.csv": dict(
        layout="wide", sheet="wide_bom_本溪", unit="210500", how="表中填报单位“本溪市”",
        counts=dict(posters=1200, banners=8, trainings=3, participants=150), errors={},
        approx=set(), cells=dict(posters="B2"), texts={}, explanation=None, photos={}, unknown=[]),
    "long_gbk_丹东.txt": dict(
        layout="long", sheet="long_gbk_丹东", unit="210600", how="单位代码 210600",
        counts=dict(posters=80, signs=60, banners=12, trainings=3), errors={}, approx=set(),
        cells=dict(posters="B5"), texts={}, explanation=None, photos={}, unknown=[]),
    "wide_gb18030_锦州.csv": dict(
        layout="wide", sheet="wide_gb18030_锦州", unit="210700", how="文件名“wide_gb18030_锦州.csv”",
        counts=dict(posters=150, banners=20, boards=10), errors={}, approx={"boards"},
        cells=dict(boards="D3"), texts={}, explanation=("E3", "活动在𠮷祥社区开展"), photos={},
        unknown=[]),
    "ods_盘锦市.ods": dict(
        layout="long", sheet="报表", unit="211100", how="表中填报单位“盘锦市”",
        counts=dict(posters=120, boards=5), errors=dict(banners="单元格为错误值 #DIV/0!"),
        approx=set(), cells=dict(banners="B4"), texts={}, explanation=None, photos={}, unknown=[]),
}


def test_every_sample_has_expectations():
    assert set(GOOD) == set(EXPECTED)


@pytest.mark.parametrize("name", GOOD)
def test_sample_returns(name):
    want = EXPECTED[name]
    got = extract_return(read_sheets(RETURNS / name), FORM, name)
    assert (got.layout, got.sheet) == (want["layout"], want["sheet"])
    unit, how = identify_unit(got, name, UNITS)
    assert unit is not None and (unit.code, how) == (want["unit"], want["how"])
    parsed = {k: parse_count(got.values[k].raw) for k in got.values if k in {f.key for f in FORM.counts}}
    assert {k: p.value for k, p in parsed.items() if p.value is not None} == want["counts"]
    assert {k: p.error for k, p in parsed.items() if p.error} == want["errors"]
    assert {k for k, p in parsed.items() if p.approximate} == want["approx"]
    assert all(v.sheet == want["sheet"] for v in got.values.values())
    assert {k: got.values[k].cell for k in want["cells"]} == want["cells"]
    assert {k: got.values[k].raw for k in want["texts"]} == want["texts"]
    expl = got.explanation
    assert ((expl.cell, expl.raw) if expl else None) == want["explanation"]
    assert got.photo_captions == want["photos"]
    assert got.unknown_labels == want["unknown"]


def test_meta_of_generated_workbook():
    got = extract_return(read_sheets(RETURNS / "generated_SZ003.xlsx"), FORM, "x.xlsx")
    assert (got.campaign_id, got.unit_code, got.unit_name) == ("energy-week-2023", "SZ003", "省妇联")
    assert set(got.values) == {f.key for f in FORM.fields}  # every field found, blanks too
    assert got.values["videos"].raw is None


def test_no_labels_names_the_file():
    sheets = read_sheets(RETURNS / "bad_no_labels.xlsx")
    with pytest.raises(ReturnFileError) as err:
        extract_return(sheets, FORM, "通讯录.xlsx")
    assert err.value.message.startswith("文件“通讯录.xlsx”中没有找到报表内容")


def _sheet(rows, name="S", **kw) -> Sheet:
    width = max(len(r) for r in rows)
    return Sheet(name, [list(r) + [None] * (width - len(r)) for r in rows], **kw)


def _values(got: Extracted) -> dict[str, tuple[object, str]]:
    return {k: (v.raw, v.cell) for k, v in got.values.items()}


# rows, expected {key: (raw, cell)}
LAYOUTS = [
    pytest.param([["项目", "单位", "数值"], ["宣传画", "套", 5], ["横幅", "条", 6]],
                 {"posters": (5, "C2"), "banners": (6, "C3")}, id="value-header-not-adjacent"),
    pytest.param([["项目", "数值", "备注"], ["宣传画", None, "含线上"], ["横幅", None, "未开展"]],
                 {"posters": (None, "B2"), "banners": (None, "B3")}, id="value-header-beats-notes"),
    pytest.param([["宣传画", "套", "12"], ["横幅", "条", "7"]],
                 {"posters": ("12", "C1"), "banners": ("7", "C2")}, id="no-header-skips-unit-column"),
    pytest.param([["宣传画", None, "套"], ["横幅", None, "条"]],
                 {"posters": (None, "B1"), "banners": (None, "B2")}, id="no-header-all-blank"),
    pytest.param([[None], ["标题"], [None, None, None], [None, "宣传画", None, None, "3"],
                  [None, None], [None, "横幅", None, None, "4"]],
                 {"posters": ("3", "E4"), "banners": ("4", "E6")}, id="blank-rows-and-columns"),
    pytest.param([["宣传画（套）", "横幅（条）"], ["（套）", "（条）"], ["1", "2"]],
                 {"posters": ("1", "A3"), "banners": ("2", "B3")}, id="wide-unit-row-skipped"),
    pytest.param([["标题"], ["填报单位", "宣传画", "横幅", "展板"], [None], ["大连市", 1, 2, 3]],
                 {"posters": (1, "B4"), "banners": (2, "C4"), "boards": (3, "D4")}, id="wide-title-blank"),
]


@pytest.mark.parametrize("rows, expected", LAYOUTS)
def test_layouts(rows, expected):
    assert _values(extract_return([_sheet(rows)], FORM, "f.xlsx")) == expected


def test_long_merged_label_cell_value_after_merge():
    sheet = _sheet([["宣传画", None, "5"], ["横幅", None, "6"]], merged=(((0, 0), (1, 1)),))
    assert _values(extract_return([sheet], FORM, "f.xlsx"))["posters"] == ("5", "C1")


def test_wide_prefers_total_row_and_notes_it():
    rows = [["单位", "宣传画", "横幅"], ["一处", 1, 2], ["二处", 3, 4], ["合计", 4, 6]]
    got = extract_return([_sheet(rows)], FORM, "f.xlsx")
    assert _values(got) == {"posters": (4, "B4"), "banners": (6, "C4")}
    assert got.notes == ["工作表“S”表头下有 3 行数据，只读取了第 4 行"]


def test_best_sheet_wins_and_meta_photo_sheets_ignored():
    sheets = [
        _sheet([["宣传画", 1], ["横幅", 2]], name="草稿"),
        _sheet([["宣传画", 9], ["横幅", 8], ["展板", 7]], name="正式"),
        _sheet([["宣传画", "横幅", "展板", "培训"], [0, 0, 0, 0]], name="_meta", hidden=True),
        _sheet([["照片文件名", "图片说明"], ["宣传画", "横幅"], ["a.jpg", "现场"]], name="照片"),
    ]
    got = extract_return(sheets, FORM, "f.xlsx")
    assert got.sheet == "正式" and _values(got)["boards"] == (7, "B3")
    assert got.photo_captions == {"宣传画": "横幅", "a.jpg": "现场"}


def test_unit_labels_inline_and_code():
    rows = [["填报单位：沈阳市（盖章）"], ["单位代码", None, "210100"], ["宣传画", 1], ["横幅", 2]]
    got = extract_return([_sheet(rows)], FORM, "f.xlsx")
    assert (got.unit_name, got.unit_code) == ("沈阳市（盖章）", "210100")


def test_blank_explanation_is_none_not_the_help_text():
    rows = [["项目", "数值", "单位", "填报说明"], ["张贴宣传画", 1, "套", "必填"],
            ["悬挂横幅", 2, "条", "必填"], ["情况说明", None, None, "如数据变化较大请说明"]]
    assert extract_return([_sheet(rows)], FORM, "f.xlsx").explanation is None


def test_reads_the_real_request_workbook(tmp_path):
    workbook = pytest.importorskip("tasks.mail.workbook")
    if not hasattr(workbook, "fill_workbook"):
        pytest.skip("tasks.mail.workbook has no fill_workbook")
    unit = UNITS[1]
    data = workbook.fill_workbook(workbook.build_request_workbook(CONFIG.campaign, unit),
                                  {"posters": "１２０套", "banners": 7}, explanation="说明",
                                  photos=[("a.jpg", "现场")])
    path = tmp_path / "return.xlsx"
    path.write_bytes(data)
    got = extract_return(read_sheets(path), FORM, "return.xlsx")
    assert identify_unit(got, "return.xlsx", UNITS)[0] == unit
    assert (got.values["posters"].raw, got.values["posters"].cell) == ("１２０套", "B5")
    assert parse_count(got.values["banners"].raw).value == 7
    assert got.explanation is not None and got.explanation.raw == "说明"
    assert got.photo_captions == {"a.jpg": "现场"}


# ---------------------------------------------------------------- identify_unit
def _ex(code=None, name=None) -> Extracted:
    return Extracted("long", "S", code, name, None, {}, None, {}, [])


@pytest.mark.parametrize("extracted, file_name, sender, code, how", [
    (_ex("210100", "大连市"), "大连市.xlsx", None, "210100", "单位代码 210100"),
    (_ex("sz003"), "x.xlsx", None, "SZ003", "单位代码 sz003"),
    (_ex("999999", "大连市"), "x.xlsx", None, "210200", "表中填报单位“大连市”"),
    (_ex(None, "大连"), "x.xlsx", None, "210200", "表中填报单位“大连”"),
    (_ex(None, " 大 连 市（盖章）"), "x.xlsx", None, "210200", "表中填报单位“ 大 连 市（盖章）”"),
    (_ex(None, "沈阳市机关事务服务中心"), "x.xlsx", None, "210100", "表中填报单位“沈阳市机关事务服务中心”"),
    (_ex(None, "某某局"), "2023-鞍山.xlsx", None, "210300", "文件名“2023-鞍山.xlsx”"),
    (None, "沈抚示范区报表.xlsx", None, "219000", "文件名“沈抚示范区报表.xlsx”"),
    (None, "SZ003.xlsx", None, "SZ003", "文件名“SZ003.xlsx”"),
    (None, "报表_210100.xlsx", None, "210100", "文件名“报表_210100.xlsx”"),
    (None, "沈阳市/报表.xlsx", None, "210100", "文件名“沈阳市/报表.xlsx”"),  # folder in the drop box
    (None, "报表.xlsx", "dalian-jieneng@example.org", "210200", "发件人 dalian-jieneng@example.org"),
    (None, "报表.xlsx", "王芳 <DALIAN-Jieneng@Example.org>", "210200", "发件人 dalian-jieneng@example.org"),
])
def test_identify_unit(extracted, file_name, sender, code, how):
    unit, got_how = identify_unit(extracted, file_name, UNITS, sender)
    assert unit is not None and (unit.code, got_how) == (code, how)


@pytest.mark.parametrize("extracted, file_name, sender, reason", [
    (None, "沈阳市大连市汇总.xlsx", None, "文件名同时匹配多个单位：沈阳市、大连市"),
    (_ex(None, "沈阳市、大连市"), "x.xlsx", None, "表中填报单位“沈阳市、大连市”同时匹配多个单位：沈阳市、大连市"),
    (None, "20210100.xlsx", None, "无法识别报送单位：表中没有单位代码或填报单位，文件名中也没有单位名称"),
    (_ex("999"), "x.xlsx", "who@example.com",
     "无法识别报送单位：表中的单位代码“999”不在本次报送单位名单中；发件人 who@example.com 不是任何单位的联系人"),
])
def test_identify_unit_fails(extracted, file_name, sender, reason):
    assert identify_unit(extracted, file_name, UNITS, sender) == (None, reason)


def _unit(code, name, email, **kw) -> Unit:
    c = Contact(name="x", email=email)
    return Unit(code=code, name=name, kind="city", contacts=[c], supervisor=c, **kw)


def test_longest_file_name_match_wins_and_delegates():
    units = [_unit("A", "大连市", "a@example.org"),
             _unit("B", "大连市甘井子区", "b@example.org", delegates=["Helper@example.org"])]
    assert identify_unit(None, "大连市甘井子区报表.xlsx", units)[0].code == "B"
    assert identify_unit(None, "大连市报表.xlsx", units)[0].code == "A"
    assert identify_unit(None, "r.xlsx", units, "helper@example.org")[0].code == "B"


def test_cellvalue_is_hashable_and_frozen():
    cv = CellValue(1, "S", "A1")
    with pytest.raises(AttributeError):
        cv.raw = 2  # type: ignore[misc]

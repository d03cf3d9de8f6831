"""Batch validation (tasks/decisions/validate.py): findings name the submission, file, sheet!cell,
label, value and what is expected; errors and warnings land where they should."""

from __future__ import annotations

import math

import pytest

from tasks.decisions.validate import ERROR, WARNING, Finding, ReturnRecord, validate_returns
from tasks.reading.extract import CellValue

SHEET = "报表"
MISSING = object()  # marks a field absent from the return altogether


@pytest.fixture(scope="module")
def form(config):
    return config.campaign.form


def cell_of(form, key: str) -> str:
    """The cell a field occupies in the generated workbook layout (B5, B6, ...)."""
    return f"B{5 + [f.key for f in form.fields].index(key)}"


def cells(form, **over) -> dict[str, CellValue]:
    """A clean return's cells (every count 10, participants 100, texts filled), then ``over``."""
    values: dict[str, object] = {f.key: 10 if f.kind == "count" else "组织节能宣传活动。" for f in form.fields}
    values["participants"] = 100
    values.update(over)
    return {k: CellValue(v, SHEET, cell_of(form, k)) for k, v in values.items() if v is not MISSING}


def run(form, *records: ReturnRecord):
    return validate_returns(list(records), form)


def only(findings: list[Finding], key: str | None, level: str | None = None) -> Finding:
    hits = [f for f in findings if f.field == key and (level is None or f.level == level)]
    assert len(hits) == 1, findings
    return hits[0]


# ---------------------------------------------------------------- clean
def test_clean_return_has_no_findings(form):
    num, txt, findings = run(form, ReturnRecord(7, "沈阳市.xlsx", cells(form)))
    assert findings == []
    assert list(num.index) == [7] and num.index.name == "submission_id"
    assert list(num.columns) == [f.key for f in form.counts]
    assert num.loc[7, "posters"] == 10.0 and num.loc[7, "participants"] == 100.0
    assert list(txt.columns) == [f.key for f in form.texts]
    assert txt.loc[7, "activities"] == "组织节能宣传活动。"


@pytest.mark.parametrize("raw, value", [("１２０", 120), ("1,234", 1234), ("200条", 200), ("三十", 30),
                                        (120.0, 120), (0, 0), ("无", 0)])
def test_forms_people_type_are_numbers_without_findings(form, raw, value):
    num, _, findings = run(form, ReturnRecord(1, "a.xlsx", cells(form, materials=raw)))
    assert findings == []
    assert num.loc[1, "materials"] == value


def test_optional_blank_count_is_fine(form):
    num, _, findings = run(form, ReturnRecord(1, "a.xlsx", cells(form, participants=None)))
    assert findings == []
    assert math.isnan(num.loc[1, "participants"])


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("raw", [-5, -1, "-3", "－3"])
def test_negative_count_is_an_error(form, raw):
    _, _, findings = run(form, ReturnRecord(3, "大连市.xlsx", cells(form, posters=raw)))
    f = only(findings, "posters")
    assert f.level == ERROR and f.submission_id == 3
    assert (f.sheet, f.cell, f.label) == (SHEET, "B5", "张贴宣传画")
    assert "应为非负整数" in f.expected
    text = f.text()
    assert "报表!B5" in text and "张贴宣传画" in text and "应为非负整数" in text and "大连市.xlsx" in text


@pytest.mark.parametrize("raw", ["很多", "abc", "12abc34", "1,23", "#VALUE!", True, "1.5"])
def test_non_number_is_an_error(form, raw):
    num, _, findings = run(form, ReturnRecord(4, "a.xlsx", cells(form, signs=raw)))
    f = only(findings, "signs")
    assert f.level == ERROR
    assert f.cell == cell_of(form, "signs") and f.label == "张贴节能标识"
    assert f.value == str(raw) or f.value.upper() == str(raw)
    assert math.isnan(num.loc[4, "signs"])


@pytest.mark.parametrize("raw", [None, "", "   ", "-", "/"])
def test_blank_required_count_is_an_error(form, raw):
    _, _, findings = run(form, ReturnRecord(5, "a.xlsx", cells(form, banners=raw)))
    f = only(findings, "banners")
    assert f.level == ERROR and f.expected == "必填项未填写"
    assert f.cell == cell_of(form, "banners")
    assert "必填项未填写" in f.text() and cell_of(form, "banners") in f.text()


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_blank_required_text_is_an_error(form, raw):
    _, _, findings = run(form, ReturnRecord(5, "a.xlsx", cells(form, activities=raw)))
    f = only(findings, "activities")
    assert f.level == ERROR and f.expected == "必填项未填写"


@pytest.mark.parametrize("key", ["posters", "trainings", "videos"])
def test_required_field_missing_entirely(form, key):
    _, _, findings = run(form, ReturnRecord(6, "own.xlsx", cells(form, **{key: MISSING})))
    f = only(findings, key)
    assert f.level == ERROR and f.cell is None
    assert "未找到" in f.expected and form.field(key).label in f.expected
    assert "own.xlsx" in f.text()


def test_optional_field_missing_entirely_is_fine(form):
    _, _, findings = run(form, ReturnRecord(6, "own.xlsx", cells(form, participants=MISSING, highlights=MISSING)))
    assert findings == []


@pytest.mark.parametrize("length, ok", [(2000, True), (2001, False), (5000, False)])
def test_text_too_long(form, length, ok):
    _, _, findings = run(form, ReturnRecord(8, "a.xlsx", cells(form, activities="字" * length)))
    if ok:
        assert findings == []
    else:
        f = only(findings, "activities")
        assert f.level == ERROR and "2000" in f.expected and f.cell == cell_of(form, "activities")
        assert len(f.value) <= 60  # shown shortened


def test_optional_text_too_long(form):
    _, _, findings = run(form, ReturnRecord(8, "a.xlsx", cells(form, highlights="亮" * 501)))
    f = only(findings, "highlights")
    assert f.level == ERROR and "500" in f.expected


# ---------------------------------------------------------------- warnings
@pytest.mark.parametrize("raw, value", [("约200", 200), ("200余", 200), ("200多", 200), ("大约30", 30)])
def test_approximate_is_a_warning_kept_as_number(form, raw, value):
    num, _, findings = run(form, ReturnRecord(9, "a.xlsx", cells(form, boards=raw)))
    f = only(findings, "boards")
    assert f.level == WARNING and f.value == raw
    assert str(value) in f.expected
    assert num.loc[9, "boards"] == value


@pytest.mark.parametrize("key, limit", [("posters", 15000), ("trainings", 50), ("materials", 20000)])
def test_warn_above_exceeded_is_a_warning(form, key, limit):
    num, _, findings = run(form, ReturnRecord(10, "a.xlsx", cells(form, **{key: limit + 1})))
    f = only(findings, key)
    assert f.level == WARNING and str(limit) in f.expected
    assert f.cell == cell_of(form, key)
    assert num.loc[10, key] == limit + 1


def test_warn_above_at_the_limit_is_fine(form):
    _, _, findings = run(form, ReturnRecord(10, "a.xlsx", cells(form, posters=15000)))
    assert findings == []


def test_cross_check_participants_below_trainings(form):
    _, _, findings = run(form, ReturnRecord(11, "a.xlsx", cells(form, participants=3, trainings=5)))
    f = only(findings, None)
    assert f.level == WARNING and f.expected == form.checks[0].message


@pytest.mark.parametrize("participants", [None, 5, 6])
def test_cross_check_holds_or_blank(form, participants):
    _, _, findings = run(form, ReturnRecord(11, "a.xlsx", cells(form, participants=participants, trainings=5)))
    assert findings == []


# ---------------------------------------------------------------- batches
def test_three_records_findings_go_to_the_right_submission(form):
    records = [
        ReturnRecord(101, "沈阳市.xlsx", cells(form)),
        ReturnRecord(102, "大连市.xlsx", cells(form, posters=-1, boards="约20")),
        ReturnRecord(103, "鞍山市.xlsx", cells(form, trainings=60, participants=5, activities=None)),
    ]
    num, txt, findings = run(form, *records)
    assert list(num.index) == [101, 102, 103] and list(txt.index) == [101, 102, 103]
    by_sid = {sid: {(f.field, f.level) for f in findings if f.submission_id == sid} for sid in (101, 102, 103)}
    assert by_sid[101] == set()
    assert by_sid[102] == {("posters", ERROR), ("boards", WARNING)}
    assert by_sid[103] == {("activities", ERROR), ("trainings", WARNING), (None, WARNING)}
    for f in findings:
        assert f.file == {101: "沈阳市.xlsx", 102: "大连市.xlsx", 103: "鞍山市.xlsx"}[f.submission_id]
    # errors sort before warnings within a submission
    order = [(f.submission_id, f.level) for f in findings]
    assert order == sorted(order, key=lambda x: (x[0], x[1] != ERROR))


def test_finding_text_has_file_cell_value():
    f = Finding(12, ERROR, "锦州市报表.xlsx", "posters", "张贴宣传画", "报表", "C7", "abc", "无法识别为整数，应为非负整数")
    text = f.text()
    assert "锦州市报表.xlsx" in text and "报表!C7" in text and "abc" in text
    assert "张贴宣传画" in text and "应为非负整数" in text
    assert "C7" in Finding(1, ERROR, "x.csv", "k", None, None, "C7", None, "e").text()
    assert "填写为" not in Finding(1, ERROR, "x.csv", "k", None, None, None, None, "e").text()


def test_finding_text_from_validation_has_value(form):
    _, _, findings = run(form, ReturnRecord(1, "丹东市.xlsx", cells(form, signs="很多")))
    text = only(findings, "signs").text()
    assert "丹东市.xlsx" in text and f"{SHEET}!{cell_of(form, 'signs')}" in text and "很多" in text


@pytest.mark.parametrize("over, key, shown", [({"posters": -5}, "posters", "-5"),
                                             ({"posters": -5.0}, "posters", "-5"),
                                             ({"materials": 20001}, "materials", "20001"),
                                             ({"trainings": "51"}, "trainings", "51")])
def test_finding_value_shows_integers_as_typed(form, over, key, shown):
    _, _, findings = run(form, ReturnRecord(1, "a.xlsx", cells(form, **over)))
    f = only(findings, key)
    assert f.value == shown
    assert f"填写为“{shown}”" in f.text()


@pytest.mark.parametrize("typed", ["二万零一", "20,001", "20001份"])
def test_finding_value_is_the_text_typed(form, typed):
    _, _, findings = run(form, ReturnRecord(1, "a.xlsx", cells(form, materials=typed)))
    assert only(findings, "materials").value == typed


def test_cross_check_finding_shows_the_values(form):
    _, _, findings = run(form, ReturnRecord(11, "a.xlsx", cells(form, participants=3, trainings=5)))
    f = only(findings, None)
    assert "3" in f.value and "5" in f.value
    assert "参与干部职工" in f.value and "举办培训" in f.value
    assert f.value in f.text()


def test_cross_check_finding_shows_large_values_exactly(form):
    from tasks.core.config import CrossCheck
    form2 = form.model_copy(update={"checks": [CrossCheck(rule="materials >= bags", message="宣传材料少于购物袋")]})
    _, _, findings = run(form2, ReturnRecord(1, "a.xlsx", cells(form2, materials=1000000, bags=1234567)))
    f = only(findings, None)
    assert "1234567" in f.value and "1000000" in f.value


# ---------------------------------------------------------------- against the previous campaign
def test_jumps_and_drops_against_the_previous_campaign_are_warnings(config):
    import pandas as pd

    from tasks.decisions.validate import Previous
    form = config.campaign.form
    before = pd.DataFrame({"posters": [100.0, 100.0, 5.0], "banners": [50.0, 50.0, 50.0]},
                          index=["210100", "210200", "210300"])
    previous = Previous("energy-week-2022", before, factor=3.0, minimum=10.0)
    records = [ReturnRecord(1, "a.xlsx", cells(form, posters=400, banners=50), unit_code="210100"),  # jump
               ReturnRecord(2, "b.xlsx", cells(form, posters=100, banners=10), unit_code="210200"),  # drop
               ReturnRecord(3, "c.xlsx", cells(form, posters=9, banners=40), unit_code="210300"),  # small: no
               ReturnRecord(4, "d.xlsx", cells(form, posters=900), unit_code="211400")]  # no history
    _, _, findings = validate_returns(records, form, previous)
    compared = [(f.submission_id, f.field) for f in findings if "energy-week-2022" in f.expected]
    assert compared == [(1, "posters"), (2, "banners")]
    jump = next(f for f in findings if f.submission_id == 1 and f.field == "posters" and "2022" in f.expected)
    assert jump.level == WARNING and "100" in jump.expected and jump.value == "400"

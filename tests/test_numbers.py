import datetime as dt
from decimal import Decimal

import pytest

from tasks.reading.numbers import ParsedCount, parse_count

# raw, value, approximate
OK = [
    (120, 120, False),
    (120.0, 120, False),
    (199.99999999997, 200, False),  # Excel arithmetic noise
    (Decimal("7"), 7, False),
    ("120", 120, False),
    ("１２３", 123, False),
    ("  45 ", 45, False),
    ("\u3000１５\u3000", 15, False),
    ("1,234", 1234, False),
    ("1，234", 1234, False),
    ("１，２００", 1200, False),
    ("12,345,678", 12345678, False),
    ("1,234.0", 1234, False),
    ("1 234", 1234, False),
    ("200条", 200, False),
    ("200 套", 200, False),
    ("200人次", 200, False),
    ("1.2万", 12000, False),
    ("3千", 3000, False),
    ("3千5百", 3500, False),
    ("1万2千", 12000, False),
    ("200万元", 2_000_000, False),
    ("1.0", 1, False),
    ("三十", 30, False),
    ("三十条", 30, False),
    ("一百二十", 120, False),
    ("两千", 2000, False),
    ("两场", 2, False),
    ("一千零五", 1005, False),
    ("壹佰", 100, False),
    ("无", 0, False),
    ("暂无", 0, False),
    ("0", 0, False),
    ("０", 0, False),
    ("-5", -5, False),
    ("－5", -5, False),
    ("\u22125", -5, False),
    (-3, -3, False),
    ("+5", 5, False),
    ("共12场", 12, False),
    ("200（含线上）", 200, False),
    ("约200", 200, True),
    ("大约200", 200, True),
    ("近200", 200, True),
    ("200余", 200, True),
    ("200多", 200, True),
    ("200多条", 200, True),
    ("200余份", 200, True),
    ("200条左右", 200, True),
    ("200+", 200, True),
    ("三十多个", 30, True),
    ("一百余人次", 100, True),
    ("约1.2万余份", 12000, True),
    ("1万多", 10000, True),
]


@pytest.mark.parametrize("raw, value, approximate", OK)
def test_parses_numbers(raw, value, approximate):
    assert parse_count(raw) == ParsedCount(value, approximate=approximate)


@pytest.mark.parametrize("raw", [None, "", "   ", "\u3000", "-", "/", "—", "——", "－", float("nan")])
def test_blank(raw):
    got = parse_count(raw)
    assert got.blank and got.value is None and got.error is None


# raw, expected error (exact)
ERRORS = [
    ("#VALUE!", "单元格为错误值 #VALUE!"),
    ("#DIV/0!", "单元格为错误值 #DIV/0!"),
    ("#N/A", "单元格为错误值 #N/A"),
    ("#REF!", "单元格为错误值 #REF!"),
    ("#div/0!", "单元格为错误值 #DIV/0!"),
    (1.5, "应为整数"),
    ("1.5", "应为整数"),
    ("1.23456万", "应为整数"),
    ("1,2345", "千位分隔符位置不对，无法识别为整数"),
    ("abc", "无法识别为整数"),
    ("200abc", "无法识别为整数"),
    ("5%", "无法识别为整数"),
    ("十几", "无法识别为整数"),
    ("见附件", "无法识别为整数"),
    ("200，其中线上100", "无法识别为整数"),
    (True, "应为整数，单元格是逻辑值（TRUE/FALSE）"),
    (False, "应为整数，单元格是逻辑值（TRUE/FALSE）"),
    (dt.date(2023, 1, 2), "应为整数，单元格是日期或时间格式"),
    (dt.datetime(2023, 1, 2, 8), "应为整数，单元格是日期或时间格式"),
    (float("inf"), "无法识别为整数"),
]


@pytest.mark.parametrize("raw, error", ERRORS)
def test_errors(raw, error):
    got = parse_count(raw)
    assert got.value is None and not got.blank and got.error == error


def test_never_raises_on_odd_objects():
    assert parse_count(object()).error == "无法识别为整数"
    assert parse_count(["1"]).error == "无法识别为整数"

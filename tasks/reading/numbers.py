"""Turn what a unit typed into a count cell into an integer.

Units type counts every way a person can: ``１２３``, ``1,234``, ``200条``, ``约200``,
``200余``, ``1.2万``, ``三十``, ``两千``. :func:`parse_count` accepts all of them and says
whether the number was approximate (余/多/约/左右…), blank, or unreadable (with a Chinese
reason). It never raises. Negative numbers parse (validation flags them).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import cn2an

EXCEL_ERRORS = frozenset({"#VALUE!", "#DIV/0!", "#N/A", "#REF!", "#NAME?", "#NUM!", "#NULL!",
                          "#SPILL!", "#CALC!", "#FIELD!", "#BLOCKED!", "#UNKNOWN!",
                          "#GETTING_DATA", "#CONNECT!", "#BUSY!"})
BLANK_MARKS = frozenset({"-", "--", "/", "//", "\\", "—", "——", "–", "─", "_", "."})
ZERO_WORDS = frozenset({"无", "暂无", "没有", "零"})

_MULTIPLIERS = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "萬": 10_000, "亿": 10**8,
                "億": 10**8}
_CN_DIGITS = "零〇一二两三四五六七八九十百千万亿壹贰叁肆伍陆柒捌玖拾佰仟萬億负"
_NOT_UNIT = _CN_DIGITS + "余多几左右以上下"
_COUNT = re.compile(
    r"^(?P<pre>大约|约计|约|将近|接近|近|超过|逾|共计|共|合计|总计)?"
    r"(?P<sign>[-+])?"
    rf"(?P<body>[0-9.,{_CN_DIGITS}]+)"
    r"(?P<a1>余|多|\+)?"
    rf"(?P<unit>(?:(?![{_NOT_UNIT}])[\u4e00-\u9fff]){{1,4}})?"
    r"(?P<a2>余|多|左右|以上|上下)?$"
)
_ARABIC = re.compile(r"^(?P<num>[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)(?P<mul>[十百千万萬亿億])?$")
_GROUPED = re.compile(r"^[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?$")
_TRAILING_NOTE = re.compile(r"[(\[【][^()\[\]【】]*[)\]】]$")
_APPROX_PREFIXES = frozenset({"大约", "约计", "约", "将近", "接近", "近", "超过", "逾"})


class ParsedCount(NamedTuple):
    """A parsed count: ``value`` is None when blank or unparseable (then ``error`` says why).
    (A named tuple: thousands cross from worker processes, and tuples pickle cheaply.)"""

    value: int | None
    approximate: bool = False
    blank: bool = False
    error: str | None = None


BLANK = ParsedCount(None, blank=True)


def _fail(reason: str) -> ParsedCount:
    return ParsedCount(None, error=reason)


def _from_float(x: float) -> ParsedCount:
    if math.isnan(x):
        return BLANK
    if math.isinf(x):
        return _fail("无法识别为整数")
    r = round(x)
    if abs(x - r) > 1e-9 * max(1.0, abs(x)):  # Excel arithmetic leaves 199.99999999997
        return _fail("应为整数")
    return ParsedCount(int(r))


def _arabic(body: str) -> int | str:
    """Arabic digits with an optional 万/千/k multiplier → int, or a Chinese reason."""
    m = _ARABIC.match(body)
    if not m:
        return "无法识别为整数"
    num = m.group("num")
    if "," in num:
        if not _GROUPED.match(num):
            return "千位分隔符位置不对，无法识别为整数"
        num = num.replace(",", "")
    try:
        value = Decimal(num) * _MULTIPLIERS.get(m.group("mul") or "", 1)
    except InvalidOperation:
        return "无法识别为整数"
    if value != value.to_integral_value():
        return "应为整数"
    return int(value)


def _chinese(body: str) -> int | str:
    try:
        value = cn2an.cn2an(body, "smart")
    except (ValueError, KeyError, IndexError, TypeError):
        return "无法识别为整数"
    if isinstance(value, float) and not value.is_integer():
        return "应为整数"
    return int(value)


def parse_count(raw: object) -> ParsedCount:
    """Parse one count cell (int, float, text as typed) into a :class:`ParsedCount`."""
    if raw is None:
        return BLANK
    if isinstance(raw, bool):
        return _fail("应为整数，单元格是逻辑值（TRUE/FALSE）")
    if isinstance(raw, int):
        return ParsedCount(raw)
    if isinstance(raw, float):
        return _from_float(raw)
    if isinstance(raw, (dt.date, dt.time, dt.timedelta)):
        return _fail("应为整数，单元格是日期或时间格式")
    if not isinstance(raw, str):
        try:
            return _from_float(float(raw))  # Decimal, numpy numbers
        except (TypeError, ValueError):
            return _fail("无法识别为整数")
    text = unicodedata.normalize("NFKC", raw).replace("\u2212", "-")
    text = "".join(text.split()).lower()
    if not text or text in BLANK_MARKS:
        return BLANK
    if text.upper() in EXCEL_ERRORS:
        return _fail(f"单元格为错误值 {text.upper()}")
    if text in ZERO_WORDS:
        return ParsedCount(0)
    text = _TRAILING_NOTE.sub("", text) or text
    m = _COUNT.match(text)
    if not m:
        return _fail("无法识别为整数")
    body = m.group("body")
    result = _arabic(body) if re.match(r"^[0-9.,]+[十百千万萬亿億]?$", body) else _chinese(body)
    if isinstance(result, str):
        return _fail(result)
    if m.group("sign") == "-":
        result = -result
    approximate = bool(m.group("a1") or m.group("a2") or m.group("pre") in _APPROX_PREFIXES)
    return ParsedCount(result, approximate=approximate)

"""Number and date conventions of the bulletin: the ``余`` rounding and Chinese dates."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from fractions import Fraction

import cn2an

_URL = re.compile(r"(?i)(?<![a-z0-9])((?:https?|ftp)://|www\.)")  # CJK may touch the link


def round_down_prose(value: int | float, significant: int = 3) -> str:
    """Floor to ``significant`` figures; add ``余`` only when something was cut off.

    32237 → ``32200余``; 830 → ``830``; 2150 → ``2150``; 60 → ``60``; 0 → ``0``.
    """
    n = int(value)
    if n < 0:
        raise ValueError(f"a total cannot be negative: {value}")
    digits = len(str(n))
    if digits <= significant:
        return str(n)
    step = 10 ** (digits - significant)
    floored = n // step * step
    return f"{floored}余" if floored != n else str(n)


def percent_half_up(part: int | float, whole: int | float) -> Decimal:
    """``100 × part / whole`` to one decimal, halves rounded away from zero (四舍五入), exactly:
    ``percent_half_up(1, 8)`` is ``12.5``, ``percent_half_up(-1, 16)`` is ``-6.3``."""
    if not whole:
        raise ValueError("a percentage of nothing")
    if isinstance(part, int) and isinstance(whole, int):  # integers: the same rounding, about 10x faster
        tenths = (2000 * abs(part) + abs(whole)) // (2 * abs(whole))  # floor(|1000 p / w| + 1/2)
        return Decimal(tenths if (part >= 0) == (whole > 0) or tenths == 0 else -tenths).scaleb(-1)
    q = Fraction(100) * Fraction(part) / Fraction(whole)
    tenths = int(abs(q) * 10 + Fraction(1, 2))
    return Decimal(tenths if q >= 0 else -tenths).scaleb(-1)


def percent_text(part: int | float, whole: int | float) -> str:
    """``12.3%`` (never with 余: a percentage is already rounded); ``—`` of nothing."""
    return f"{percent_half_up(part, whole):.1f}%" if whole else "—"


def cn_ordinal(n: int) -> str:
    """The Chinese numeral of a heading number: 1 → 一, 10 → 十, 11 → 十一, 21 → 二十一 (一、 and
    （一） headings, in every output)."""
    if n < 1:
        raise ValueError(f"ordinal out of range: {n}")
    return cn2an.an2cn(n)


def chinese_date(day: dt.date | dt.datetime) -> str:
    """``2023年10月9日``: Arabic numerals, no leading zeros."""
    return f"{day.year}年{day.month}月{day.day}日"


def chinese_datetime(moment: dt.datetime) -> str:
    """``2023年9月28日17:00`` in the moment's own timezone."""
    return f"{chinese_date(moment)}{moment.hour}:{moment.minute:02d}"


def defang_links(text: str) -> str:
    """Make URLs inert in every output: ``http://x`` → ``http[:]//x``, ``www.`` → ``www[.]``.

    Autoescaping stops markup; this stops mail clients and Word from turning a bare URL
    in a unit's narrative into a live link.
    """
    def _sub(m: re.Match) -> str:
        s = m.group(1)
        return s.replace("://", "[:]//") if "://" in s else s[:-1] + "[.]"
    return _URL.sub(_sub, text)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~=])")


def escape_markdown(text: str) -> str:
    """Backslash-escape Markdown syntax so a narrative stays plain text in Markdown."""
    return _MD_SPECIAL.sub(r"\\\1", text)

"""The bulletin's number and date conventions (tasks/core/formatting.py): 余 rounding, Chinese
dates, inert links, Markdown escaping."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest

from tasks.core.formatting import chinese_date, chinese_datetime, defang_links, escape_markdown, round_down_prose


# ---------------------------------------------------------------- round_down_prose (余)
@pytest.mark.parametrize("value, expected", [
    (32237, "32200余"),   # the brief's example
    (830, "830"),         # three figures: nothing cut off
    (2150, "2150"),       # floored value equals the value: no 余
    (17634, "17600余"),
    (1001, "1000余"),
    (1000, "1000"),
    (999, "999"),
    (0, "0"),
    (7, "7"),
    (60, "60"),
    (42120, "42100余"),
    (45821, "45800余"),
    (2153, "2150余"),
    (834, "834"),
    (100000, "100000"),
    (100001, "100000余"),
    (1234567, "1230000余"),
])
def test_round_down_prose_default_three_figures(value, expected):
    assert round_down_prose(value) == expected


@pytest.mark.parametrize("value, significant, expected", [
    (32237, 2, "32000余"),
    (32237, 4, "32230余"),
    (32230, 4, "32230"),
    (32000, 2, "32000"),
    (99, 2, "99"),
    (199, 2, "190余"),
    (830, 1, "800余"),
    (800, 1, "800"),
    (5, 1, "5"),
    (123456, 6, "123456"),
])
def test_round_down_prose_significant_figures(value, significant, expected):
    assert round_down_prose(value, significant=significant) == expected


def test_round_down_prose_never_rounds_up():
    for n in (1999, 29999, 98765, 15999):
        prose = round_down_prose(n)
        assert int(prose.rstrip("余")) <= n
        assert prose.endswith("余")


def test_round_down_prose_accepts_integral_float():
    assert round_down_prose(32237.0) == "32200余"
    assert round_down_prose(830.0) == "830"


@pytest.mark.parametrize("bad", [-1, -830, -32237, -1.0])
def test_round_down_prose_negative_raises(bad):
    with pytest.raises(ValueError):
        round_down_prose(bad)


# ---------------------------------------------------------------- dates
@pytest.mark.parametrize("day, expected", [
    (dt.date(2023, 10, 9), "2023年10月9日"),
    (dt.date(2023, 1, 5), "2023年1月5日"),
    (dt.date(2023, 9, 28), "2023年9月28日"),
    (dt.date(2024, 12, 31), "2024年12月31日"),
    (dt.datetime(2023, 7, 1, 8, 5), "2023年7月1日"),
])
def test_chinese_date_has_no_leading_zeros(day, expected):
    text = chinese_date(day)
    assert text == expected
    assert not re.search(r"[年月]0", text)


def test_chinese_datetime_keeps_its_timezone_and_pads_minutes():
    moment = dt.datetime(2023, 9, 28, 17, 5, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert chinese_datetime(moment) == "2023年9月28日17:05"
    assert chinese_datetime(dt.datetime(2023, 9, 8, 9, 0)) == "2023年9月8日9:00"


# ---------------------------------------------------------------- defang_links
@pytest.mark.parametrize("text, expected", [
    ("see http://evil.example.com/x", "see http[:]//evil.example.com/x"),
    ("see https://evil.example.com", "see https[:]//evil.example.com"),
    ("HTTPS://EVIL.example.com", "HTTPS[:]//EVIL.example.com"),
    ("ftp://files.example.com", "ftp[:]//files.example.com"),
    ("visit www.example.com today", "visit www[.]example.com today"),
    ("(www.example.com)", "(www[.]example.com)"),
    ("两个链接 http://a.example 和 https://b.example", "两个链接 http[:]//a.example 和 https[:]//b.example"),
])
def test_defang_links(text, expected):
    out = defang_links(text)
    assert out == expected
    assert "://" not in out
    assert "www." not in out


@pytest.mark.parametrize("text", [
    "举办公共机构节能宣传周启动仪式，干部职工现场签名承诺绿色出行。",
    "plain text without any link",
    "",
    "a.b.c and 3.14 and e-mail someone@example.com",
    "http without colon slash",
])
def test_defang_links_leaves_text_without_links_unchanged(text):
    assert defang_links(text) == text


@pytest.mark.parametrize("text", ["详见http://evil.example.com/x", "请访问www.evil.example.com"])
def test_defang_links_after_chinese_text(text):
    out = defang_links(text)
    assert "://" not in out and "www." not in out


# ---------------------------------------------------------------- escape_markdown
def test_escape_markdown_link_stays_text():
    out = escape_markdown("[x](http://a)")
    assert out == r"\[x\]\(http://a\)"
    assert not re.search(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", out)  # no unescaped [..]( left


@pytest.mark.parametrize("text", [
    "**bold** _it_ `code` # head", "<script>alert(1)</script>", "![img](http://x/y.png)",
    "a | b | c", "1. item", "- item", "~~strike~~",
])
def test_escape_markdown_escapes_every_special_character(text):
    out = escape_markdown(text)
    # every Markdown special character in the output is preceded by a backslash
    for i, ch in enumerate(out):
        if ch in "`*_{}[]()#+-.!|<>~":
            assert out[i - 1] == "\\", (text, out, i)


def test_escape_markdown_keeps_chinese_text():
    assert escape_markdown("节能宣传周活动情况") == "节能宣传周活动情况"


def test_escape_markdown_setext_heading_stays_text():
    out = escape_markdown("活动总结\n===")
    assert not re.search(r"^=+\s*$", out, re.M)


@pytest.mark.parametrize("n, text", [(1, "一"), (5, "五"), (10, "十"), (11, "十一"), (20, "二十"), (23, "二十三"),
                                     (100, "一百")])
def test_heading_ordinals_in_code_and_in_templates(n, text):
    """The same numerals in the DOCX and the templates, past ten sections too."""
    from tasks.core.formatting import cn_ordinal
    from tasks.core.render import environment
    assert cn_ordinal(n) == text
    assert environment().from_string("{{ n | cn }}、").render(n=n) == f"{text}、"


def test_percent_half_up_on_integers_rounds_as_the_exact_fraction_does():
    """The integer fast path against the exact rational computation, on random and edge cases."""
    import random
    from decimal import Decimal
    from fractions import Fraction

    from tasks.core.formatting import percent_half_up

    def exact(part, whole):
        q = Fraction(100) * Fraction(part) / Fraction(whole)
        tenths = int(abs(q) * 10 + Fraction(1, 2))
        return Decimal(tenths if q >= 0 else -tenths).scaleb(-1)

    rng = random.Random(7)
    cases = [(rng.randint(-10**7, 10**7), rng.choice([-1, 1]) * rng.randint(1, 10**7)) for _ in range(20000)]
    cases += [(1, 8), (-1, 8), (1, -8), (-1, 16), (0, 3), (0, -3), (1, 2000), (-1, 2000), (3, 2000), (1, 3)]
    for part, whole in cases:
        assert str(percent_half_up(part, whole)) == str(exact(part, whole)), (part, whole)

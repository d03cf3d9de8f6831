"""Rendering (tasks/core/render.py + templates/): hostile text from units stays text — escaped in
HTML, verbatim (no entities) in plain text, backslash-escaped in Markdown."""

from __future__ import annotations

import datetime as dt
import html as html_lib
import re

import pandas as pd
import pytest

from tasks.bulletin.bulletin_content import BulletinContent, Figure, Recipients, Story, UnitRow
from tasks.bulletin.compile import Merged, build_content
from tasks.bulletin.readers import Readers
from tasks.bulletin.timeliness import LATE, MISSING, ON_TIME, UnitTimeliness, summarize
from tasks.core.ledger import Submission
from tasks.core.render import environment, render
from tasks.decisions.outcome import Outcome
from tasks.mail.message import Address, build_mime
from tasks.mail.notices import receipt_message

SCRIPT = "<script>alert(1)</script>"
LINK = '<a href="http://x">x</a>'
MDLINK = "[x](http://a)"
HOSTILE = f"组织活动{SCRIPT}，详见 {LINK} 和 {MDLINK} & 更多"
ENTITIES = re.compile(r"&(lt|gt|amp|quot|#34|#39|#x27);")


def content(**over) -> BulletinContent:
    base = dict(
        campaign_id="energy-week-2023", version=1, name="工作简讯", issue=3,
        title="2023年节能宣传周活动工作简讯", issuer="公共机构节能处",
        date=dt.date(2023, 10, 9), date_text="2023年10月9日", lead=f"导语{SCRIPT}",
        stories_regions=(Story("210100", "沈阳市", "city", HOSTILE, f"亮点{LINK}"),),
        stories_departments=(Story("SZ001", "省检察院", "department", f"部门{SCRIPT}"),),
        figures=(Figure("posters", "张贴宣传画", "套", 32237, "32200余"),
                 Figure("news_city", "市级媒体新闻稿件", "篇", 52, "52", "media")),
        totals_sentence="全省各级公共机构共张贴宣传画32200余套。",
        media_sentence="宣传报道方面，共计市级媒体新闻稿件52篇。",
        expected=24, reported=2, completeness_sentence="本次应报24家，已报2家。", missing_names=(),
        table_headers=("张贴宣传画（套）", "市级媒体新闻稿件（篇）"),
        unit_rows=(UnitRow("210100", "沈阳市", (32000, 50)), UnitRow("SZ001", "省检察院", (237, 2), late=True)),
        recipients=(Recipients("报", ("局长",)), Recipients("发", ("各市",))), copies=31)
    base.update(over)
    return BulletinContent(**base)


def rendered(name: str, b: BulletinContent | None = None) -> str:
    return render(name, None, b=b or content(), units_label=[], image_src={})


# ---------------------------------------------------------------- HTML
def test_html_escapes_narrative():
    out = rendered("bulletin.html.j2")
    assert "<script" not in out.lower()
    assert '<a href="http://x">' not in out and "<a " not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;a href=" in out
    assert html_lib.escape(HOSTILE) in out.replace("&#34;", "&quot;").replace("&#39;", "&#x27;")
    # the page itself is there
    assert "沈阳市" in out and "32200余" in out and "2023年10月9日" in out and "共印31份" in out


def test_html_escapes_captions_and_names():
    from pathlib import Path

    from tasks.bulletin.bulletin_content import Photo
    photo = Photo(Path("images/photo-01.jpg"), f'现场"{SCRIPT}', f"单位{LINK}", "photo-01@bulletin")
    out = render("bulletin.html.j2", None, b=content(photos=(photo,)), units_label=[],
                 image_src={"photo-01@bulletin": "cid:photo-01@bulletin"})
    assert "<script" not in out.lower() and "<a " not in out
    assert 'src="cid:photo-01@bulletin"' in out
    assert 'alt="现场&#34;&lt;script&gt;' in out  # no breaking out of the attribute


# ---------------------------------------------------------------- plain text
@pytest.mark.parametrize("fresh", [False, True])
def test_txt_has_no_html_entities(fresh):
    if fresh:
        environment.cache_clear()  # the text template compiled before any HTML one
    out = rendered("bulletin.txt.j2")
    assert not ENTITIES.search(out), ENTITIES.search(out)
    assert HOSTILE in out and f"导语{SCRIPT}" in out
    assert "32200余" in out and "（逾期）" in out
    # HTML rendered in between does not change the text output
    rendered("bulletin.html.j2")
    assert rendered("bulletin.txt.j2") == out


# ---------------------------------------------------------------- Markdown
def test_md_escapes_brackets_and_tags():
    out = rendered("bulletin.md.j2")
    assert r"\[x\]\(http://a\)" in out
    assert MDLINK not in out
    assert SCRIPT not in out and r"\<script\>" in out
    assert LINK not in out
    assert not ENTITIES.search(out)
    # no unescaped Markdown link anywhere in a narrative
    assert not re.search(r"(?<!\\)\[[^\]\n]*(?<!\\)\]\(", out)
    assert "**沈阳市**" in out and "| **合计** |" in out


# ---------------------------------------------------------------- through build_content
@pytest.fixture
def built(config) -> BulletinContent:
    codes = ["210100", "SZ001"]
    counts = [f.key for f in config.campaign.form.counts]
    texts = [f.key for f in config.campaign.form.texts]
    numbers = pd.DataFrame([[30000.0] + [10.0] * (len(counts) - 1), [2237.0] + [1.0] * (len(counts) - 1)],
                           index=codes, columns=counts)
    text_frame = pd.DataFrame([[HOSTILE, "访问 www.example.com"], [f"部门{SCRIPT}", None]], index=codes,
                              columns=texts)
    subs = [Submission(id=1, unit_code="210100", late=False, fingerprint="a"),
            Submission(id=2, unit_code="SZ001", late=True, fingerprint="b")]
    merged = Merged(subs, numbers, text_frame, [])
    return build_content(config, merged, 1, dt.date(2023, 10, 9), f"导语{SCRIPT}", (), readers_of(config))


def readers_of(config) -> Readers:
    """沈阳市 on time, the department late, every other unit missing; no previous round."""
    at = dt.datetime(2023, 9, 20, tzinfo=dt.timezone.utc)
    states = {u.code: UnitTimeliness(MISSING, None) for u in config.units}
    states["210100"] = UnitTimeliness(ON_TIME, at)
    states["SZ001"] = UnitTimeliness(LATE, at + dt.timedelta(days=12), "2天", 48)
    return Readers(None, None, {}, states, summarize(states), None)


def test_build_content_totals_and_prose(built, config):
    posters = next(f for f in built.figures if f.key == "posters")
    assert (posters.exact, posters.prose) == (32237, "32200余")
    assert "张贴宣传画32200余套" in built.totals_sentence
    assert built.date_text == "2023年10月9日"
    assert (built.expected, built.reported) == (24, 2)
    assert "应报24家，已报2家" in built.completeness_sentence
    assert config.campaign.bulletin.name_units  # the 2023 campaign names late units (通报 style)
    assert [r.late for r in built.unit_rows] == [False, True]
    late = config.unit_by_code["SZ001"].name
    assert "报送率8.3%" in built.completeness_sentence and f"逾期报送：{late}（逾期2天）" in built.completeness_sentence
    assert [s.unit_name for s in built.stories_regions] == ["沈阳市"]
    assert [s.unit_name for s in built.stories_departments] == [config.unit_by_code["SZ001"].name]


def test_build_content_defangs_links(built):
    story = built.stories_regions[0]
    assert "http[:]//x" in story.activities and "http[:]//a" in story.activities
    assert "www[.]example.com" in story.highlights
    assert "http://" not in story.activities


@pytest.mark.parametrize("template", ["bulletin.html.j2", "bulletin.txt.j2", "bulletin.md.j2"])
def test_built_content_renders_safely(built, template):
    out = render(template, None, b=built, units_label=[], image_src={})
    assert "http://" not in out and "www.example" not in out  # no live link from a unit
    assert "沈阳市" in out and "32237" in out
    if template == "bulletin.html.j2":
        assert "<script" not in out.lower() and "&lt;script&gt;" in out
    elif template == "bulletin.txt.j2":
        assert f"部门{SCRIPT}" in out and not ENTITIES.search(out)
    else:
        assert SCRIPT not in out and r"部门\<script\>" in out


# ---------------------------------------------------------------- receipts
def outcome(**over) -> Outcome:
    base = dict(submission_id=7, name=f"{SCRIPT}.xlsx", state="rejected", unit_code="210100",
                sender=None, errors=[f"《x.xlsx》 报表!B5（张贴宣传画）：填写为“{LINK}”，应为非负整数"],
                warnings=[f"提示{MDLINK}"])
    base.update(over)
    return Outcome(**base)


def test_receipt_escapes_in_html_and_not_in_text(config):
    msg = receipt_message(config, outcome(), dt.datetime(2023, 9, 25, 2, 0, tzinfo=dt.timezone.utc))
    assert "<script" not in msg.html.lower() and '<a href="http://x">' not in msg.html
    assert "&lt;script&gt;" in msg.html and "&lt;a href=" in msg.html
    assert not ENTITIES.search(msg.text)
    assert f"《{SCRIPT}.xlsx》" in msg.text and LINK in msg.text
    assert "2023年9月25日10:00" in msg.text  # in the campaign's timezone
    assert "张伟同志" in msg.text


def test_receipt_says_earlier_return_still_counts(config):
    msg = receipt_message(config, outcome(earlier_still_counts=1, version=2),
                          dt.datetime(2023, 9, 26, 2, 0, tzinfo=dt.timezone.utc))
    assert "此前第1次报送的报表已通过审核" in msg.text
    assert "此前第1次报送的报表已通过审核" in msg.html


def test_receipt_for_a_file_name_with_a_line_break_can_be_sent(config):
    msg = receipt_message(config, outcome(name="沈阳市\n报表.xlsx", state="accepted", errors=[], warnings=[]),
                          dt.datetime(2023, 9, 25, 2, 0, tzinfo=dt.timezone.utc))
    mime = build_mime(msg, Address("报送任务系统", "bulletin@example.com"))  # a CR/LF would raise here
    assert "\n" not in msg.subject and "（沈阳市 报表.xlsx）" in str(mime["Subject"])

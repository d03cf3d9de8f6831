"""The DOCX bulletin: page geometry, fonts, numbering, tables, photos and footer, read back."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import pytest
from docx import Document
from docx.oxml.ns import qn
from docx.shared import Emu, Mm, Pt
from PIL import Image

from tasks.bulletin.bulletin_content import BulletinContent, Figure, Photo, Recipients, Story, UnitRow
from tasks.bulletin.render_docx import write_docx

FIGURES = (
    Figure("posters", "张贴宣传画", "套", 32237, "32200余"),
    Figure("signs", "节能标识", "个", 17688, "17600余"),
    Figure("trainings", "举办培训", "场", 61, "61"),
    Figure("news_province", "省级以上媒体报道", "篇", 12, "12", section="media"),
)


def _png(path: Path, size=(320, 240), color=(40, 120, 200)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def make_content(tmp_path: Path, **overrides) -> BulletinContent:
    base = dict(
        campaign_id="energy-week-2023", version=1, name="工作简讯", issue=3,
        title="2023年辽宁省公共机构节能宣传周活动工作简讯", issuer="辽宁省机关事务管理局",
        date=dt.date(2023, 10, 9), date_text="2023年10月9日",
        lead="节能宣传周期间，全省各级公共机构开展了形式多样的宣传活动。",
        stories_regions=(
            Story("210100", "沈阳市", "city", "举办节能宣传周启动仪式", "发放节能宣传品3000余件"),
            Story("210600", "丹东市", "city", "发放环保购物袋。详见 http://example.com/x <script>alert(1)</script>"),
            Story("219900", "沈抚示范区", "zone", "组织干部职工观看宣传片"),
        ),
        stories_departments=(Story("D001", "省妇联", "department", "举办低碳日活动"),),
        figures=FIGURES,
        totals_sentence="全省各级公共机构共张贴宣传画32200余套、节能标识17600余个，举办培训61场。",
        media_sentence="各级媒体刊载、播发各类新闻稿件12篇。",
        expected=4, reported=3, completeness_sentence="应报4家，已报3家。未报送：省科技馆。",
        missing_names=("省科技馆",),
        table_headers=("张贴宣传画（套）", "节能标识（个）", "举办培训（场）"),
        unit_rows=(
            UnitRow("210100", "沈阳市", (30000, 17000, 40)),
            UnitRow("210600", "丹东市", (2237, 688, 21), late=True),
            UnitRow("219900", "沈抚示范区", (0, 0, None)),
        ),
        photos=(
            Photo(_png(tmp_path / "a.png"), "沈阳市启动仪式现场", "沈阳市", "p1"),
            Photo(_png(tmp_path / "b.png", (200, 400)), "丹东市发放环保购物袋", "丹东市", "p2"),
        ),
        recipients=(
            Recipients("发", ("各市公共机构节能主管部门", "沈抚示范区")),
            Recipients("报", ("国家机关事务管理局",)),
            Recipients("送", ("省发展改革委", "省住建厅")),
        ),
        copies=60,
    )
    base.update(overrides)
    return BulletinContent(**base)


@pytest.fixture
def rendered(tmp_path):
    content = make_content(tmp_path)
    path = write_docx(content, tmp_path / "out" / "bulletin.docx")
    return content, path, Document(str(path))


def _texts(doc) -> list[str]:
    return [p.text for p in doc.paragraphs]


def _east_asia(run) -> str | None:
    return run._r.rPr.rFonts.get(qn("w:eastAsia"))


def test_page_geometry(rendered):
    _, _, doc = rendered
    sec = doc.sections[0]
    mm = lambda length: round(Emu(length).mm, 1)  # stored in twips
    assert (mm(sec.page_width), mm(sec.page_height)) == (210, 297)
    assert (mm(sec.top_margin), mm(sec.bottom_margin)) == (37, 35)
    assert (mm(sec.left_margin), mm(sec.right_margin)) == (28, 26)
    assert mm(sec.page_height - sec.top_margin - sec.bottom_margin) == 225


def test_masthead_and_headline(rendered):
    content, _, doc = rendered
    paras = doc.paragraphs
    name = paras[0]
    assert name.text == "工作简讯"
    assert name.alignment == 1  # centre
    assert str(name.runs[0].font.color.rgb) in ("FF0000", "C00000")
    assert name.runs[0].font.size >= Pt(36)
    assert _east_asia(name.runs[0]) == "方正小标宋简体"
    assert paras[1].text == "第3期"
    assert paras[2].text == "辽宁省机关事务管理局\t2023年10月9日"
    rule = paras[2]._p.pPr.find(qn("w:pBdr")).find(qn("w:bottom"))
    assert rule.get(qn("w:color")) == "FF0000" and int(rule.get(qn("w:sz"))) >= 12
    headline = paras[3]
    assert headline.text == content.title
    assert headline.runs[0].font.size == Pt(22) and headline.alignment == 1
    assert _east_asia(headline.runs[0]) == "方正小标宋简体" and headline.runs[0].font.bold


def test_body_font_indent_and_spacing(rendered):
    content, _, doc = rendered
    lead = next(p for p in doc.paragraphs if p.text == content.lead)
    assert _east_asia(lead.runs[0]) == "仿宋"
    assert lead.runs[0].font.size == Pt(16)
    assert lead.paragraph_format.first_line_indent == Pt(32)
    assert abs(lead.paragraph_format.line_spacing - Pt(28.9)) < Pt(0.1)
    for p in doc.paragraphs:
        if p.text.startswith(("沈阳市：", "省妇联：")):
            assert p.runs[0].font.bold and _east_asia(p.runs[1]) == "仿宋"


def test_numbered_sections_and_heading_fonts(rendered):
    _, _, doc = rendered
    texts = _texts(doc)
    expected = ["一、各地区各部门开展活动情况", "（一）各市及沈抚示范区", "（二）省直机关", "二、活动成效",
                "三、宣传报道", "四、报送情况", "五、活动图片"]
    positions = [texts.index(t) for t in expected]
    assert positions == sorted(positions)
    by_text = {p.text: p for p in doc.paragraphs}
    assert _east_asia(by_text["二、活动成效"].runs[0]) == "黑体"
    assert _east_asia(by_text["（二）省直机关"].runs[0]) == "楷体"
    assert "沈阳市：举办节能宣传周启动仪式。发放节能宣传品3000余件。" in texts
    assert "应报4家，已报3家。未报送：省科技馆。" in texts


def test_tables_carry_exact_totals(rendered):
    content, _, doc = rendered
    cells = [[c.text for c in row.cells] for t in doc.tables for row in t.rows]
    totals = {row[0]: row for row in cells if len(row) == 3 and row[0] != "项目"}
    for f in content.figures:
        assert totals[f.label] == [f.label, f.unit, str(f.exact)]
    unit_table = doc.tables[1]
    assert [c.text for c in unit_table.rows[0].cells] == ["单位", *content.table_headers]
    assert [c.text for c in unit_table.rows[2].cells] == ["丹东市（逾期）", "2237", "688", "21"]
    assert [c.text for c in unit_table.rows[3].cells] == ["沈抚示范区", "0", "0", "—"]
    size = unit_table.rows[1].cells[0].paragraphs[0].runs[0].font.size
    assert Pt(10.5) <= size <= Pt(12)


def test_photos_and_captions(rendered):
    content, _, doc = rendered
    assert len(doc.inline_shapes) == len(content.photos)
    assert all(s.width <= Mm(156) for s in doc.inline_shapes)
    texts = _texts(doc)
    for photo in content.photos:
        caption = doc.paragraphs[texts.index(photo.caption)]
        assert caption.alignment == 1 and _east_asia(caption.runs[0]) == "楷体"


def test_footer_block_and_page_numbers(rendered):
    _, path, doc = rendered
    texts = _texts(doc)
    assert texts[-4:] == ["报：国家机关事务管理局", "送：省发展改革委，省住建厅",
                          "发：各市公共机构节能主管部门，沈抚示范区", "共印60份"]
    assert doc.paragraphs[-1].alignment == 2  # right
    assert all(p.paragraph_format.keep_with_next for p in doc.paragraphs[-4:-1])
    footer_xml = doc.sections[0].footer._element.xml
    assert "w:fldSimple" in footer_xml and 'w:instr=" PAGE "' in footer_xml
    number = doc.sections[0].footer.paragraphs[0]._p
    assert "".join(number.xpath(".//w:t/text()")) == "— 1 —"
    assert number.xpath("w:fldSimple/w:r/w:t/text()") == ["1"]
    assert doc.sections[0].even_page_footer.paragraphs[0]._p.xpath("w:fldSimple")
    with zipfile.ZipFile(path) as z:
        fonts = z.read("word/fontTable.xml").decode()
    assert 'w:name="方正小标宋简体"' in fonts and 'w:altName w:val="宋体"' in fonts


def test_core_properties(rendered):
    content, _, doc = rendered
    assert doc.core_properties.title == content.title
    assert doc.core_properties.author == content.issuer


def test_markup_and_links_stay_literal(rendered):
    _, path, doc = rendered
    story = next(p for p in doc.paragraphs if p.text.startswith("丹东市："))
    assert "<script>alert(1)</script>" in story.text and "http://example.com/x" in story.text
    with zipfile.ZipFile(path) as z:
        body = z.read("word/document.xml").decode()
    assert "&lt;script&gt;" in body and "<script>" not in body and "w:hyperlink" not in body


def test_empty_content_still_valid(tmp_path):
    content = make_content(tmp_path, stories_regions=(), stories_departments=(), photos=(),
                           figures=(), unit_rows=(), totals_sentence="", media_sentence="",
                           missing_names=(), recipients=(), copies=0)
    doc = Document(str(write_docx(content, tmp_path / "empty.docx")))
    texts = _texts(doc)
    assert texts[0] == "工作简讯" and len(doc.inline_shapes) == 0 and not doc.tables
    assert "一、报送情况" in texts  # the only section left is numbered 一


def test_unreadable_photo_leaves_a_note(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    content = make_content(tmp_path, photos=(Photo(bad, "坏图片", "沈阳市", "x"),))
    doc = Document(str(write_docx(content, tmp_path / "b.docx")))
    assert len(doc.inline_shapes) == 0
    assert "（图片无法读取：broken.jpg）" in _texts(doc) and "坏图片" in _texts(doc)


def test_large_photo_is_downscaled(tmp_path):
    big = _png(tmp_path / "big.png", (3000, 2000))
    content = make_content(tmp_path, photos=(Photo(big, "大图", "沈阳市", "x"),))
    doc = Document(str(write_docx(content, tmp_path / "big.docx")))
    blob = doc.inline_shapes[0]._inline.graphic.graphicData.pic.blipFill.blip.embed
    image = doc.part.related_parts[blob].blob
    assert max(Image.open(io.BytesIO(image)).size) <= 1600


def test_per_unit_figures_split_by_section_when_columns_are_the_figures(tmp_path):
    """Activities and media get a table each, so twelve columns never share one A4 width."""
    from docx import Document
    content = make_content(
        tmp_path, table_headers=("张贴宣传画（套）", "节能标识（个）", "举办培训（场）", "省级以上媒体报道（篇）"),
        unit_rows=(UnitRow("210100", "沈阳市", (30000, 17000, 40, 12)),))
    doc = Document(str(write_docx(content, tmp_path / "split.docx")))
    unit_tables = [t for t in doc.tables if t.rows[0].cells[0].text == "单位"]
    assert [[c.text for c in t.rows[0].cells] for t in unit_tables] == [
        ["单位", "张贴宣传画（套）", "节能标识（个）", "举办培训（场）"], ["单位", "省级以上媒体报道（篇）"]]
    assert unit_tables[1].rows[1].cells[1].text == "12"

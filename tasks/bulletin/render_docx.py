"""Render a :class:`BulletinContent` as an official-style DOCX (a 简报 laid out per GB/T 9704-2012).

Fonts are named, not embedded. Each named font also gets a font-table entry with a GB2312
charset, a family and an ``altName`` (方正小标宋简体 → 宋体, 仿宋 → 仿宋_GB2312 …) so Word or WPS
substitutes a close face on a machine that lacks it.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
from pathlib import Path
from typing import Callable

from docx import Document
from docx.enum.table import WD_TABLE_ALIGNMENT
from docx.enum.text import WD_ALIGN_PARAGRAPH, WD_TAB_ALIGNMENT
from docx.opc.constants import CONTENT_TYPE as CT
from docx.oxml import OxmlElement, parse_xml
from docx.oxml.ns import nsdecls, qn
from docx.shared import Cm, Emu, Length, Mm, Pt, RGBColor
from lxml import etree
from PIL import Image, ImageOps

from ..core.formatting import cn_ordinal
from .bulletin_content import BulletinContent, Figure, Photo, Story

log = logging.getLogger(__name__)

XIAOBIAOSONG, FANGSONG, HEITI, KAITI, SONGTI = "方正小标宋简体", "仿宋", "黑体", "楷体", "宋体"
# name -> (altName for substitution, font-table family)
_FALLBACKS = {XIAOBIAOSONG: ("宋体", "roman"), FANGSONG: ("仿宋_GB2312", "roman"),
              KAITI: ("楷体_GB2312", "roman"), HEITI: ("SimHei", "modern"), SONGTI: ("SimSun", "roman")}
RED = RGBColor(0xFF, 0x00, 0x00)
_BODY = Pt(16)  # 3号
_LINE = Pt(28.9)  # 225 mm type area / 22 lines
_INDENT = Pt(32)  # two characters
_TYPE_WIDTH = Mm(156)
_PHOTO_WIDTH, _PHOTO_MAX_HEIGHT, _PHOTO_MAX_PX = Cm(12), Cm(9.5), 1600  # two photos a page
_ROLE_ORDER = {"报": 0, "送": 1, "发": 2}
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_CENTER, _LEFT, _RIGHT = WD_ALIGN_PARAGRAPH.CENTER, WD_ALIGN_PARAGRAPH.LEFT, WD_ALIGN_PARAGRAPH.RIGHT


def write_docx(content: BulletinContent, out_path: Path) -> Path:
    """Write ``content`` as an official-style 工作简讯 to ``out_path``; return the path."""
    doc = Document()
    _set_up(doc, content)
    _masthead(doc, content)
    headline = _para(doc, align=_CENTER, indent=None, line=Pt(36))
    headline.paragraph_format.space_before = headline.paragraph_format.space_after = _LINE
    _run(headline, content.title, XIAOBIAOSONG, Pt(22), bold=True)  # bold: reads right in 宋体 too
    _text(doc, content.lead)
    for n, (title, build) in enumerate(_sections(content), 1):
        _heading(doc, 1, n, title)
        build(doc, content)
    _colophon(doc, content)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(str(out_path))
    return out_path


def _sections(c: BulletinContent) -> list[tuple[str, Callable[..., None]]]:
    """Level-1 sections that have something to say, in order."""
    candidates = [
        ("各地区各部门开展活动情况", _activities, c.stories_regions or c.stories_departments),
        ("活动成效", _results, c.totals_sentence or _figures(c, "activity") or c.unit_rows),
        ("宣传报道", _media, c.media_sentence or _figures(c, "media")),
        ("报送情况", _completeness, c.completeness_sentence or c.timeliness_rows),
        ("活动图片", _gallery, c.photos),
    ]
    return [(title, build) for title, build, present in candidates if present]


def _activities(doc, c: BulletinContent) -> None:
    groups = [(_region_label(c.stories_regions), c.stories_regions), (c.departments_heading, c.stories_departments)]
    for n, (label, stories) in enumerate([g for g in groups if g[1]], 1):
        _heading(doc, 2, n, label)
        for story in stories:
            p = _para(doc)
            _run(p, _one_line(story.unit_name), bold=True)
            _run(p, "：" + _sentences(story.activities, story.highlights))


def _results(doc, c: BulletinContent) -> None:
    _text(doc, c.totals_sentence + c.totals_change)
    _figure_table(doc, f"{c.area}活动情况汇总", _figures(c, "activity"), c.compare_headers)
    for chart in c.charts:
        _chart(doc, chart)
    if not c.unit_rows:
        return
    # one table per kind of figure (activities, media) so the columns fit the type area
    groups: dict[str, list[int]] = {}
    if len(c.figures) == len(c.table_headers):
        for i, f in enumerate(c.figures):
            groups.setdefault(f.section, []).append(i)
    else:  # columns that are not the figures: one table
        groups["activity"] = list(range(len(c.table_headers)))
    titles = {"activity": "各单位活动情况", "media": "各单位宣传报道情况"}
    keys = [f.key for f in c.figures] if len(c.figures) == len(c.table_headers) else []
    for section, idx in groups.items():
        changed = lambda i: i < len(keys) and keys[i] in c.change_keys  # noqa: E731 - a 比上年 column follows
        headers = ["单位"] + [h for i in idx for h in ((c.table_headers[i], "比上年") if changed(i) else (c.table_headers[i],))]
        rows = [[r.unit_name + ("（逾期）" if r.late else "")]
                + [cell for i in idx for cell in (("—" if r.values[i] is None else str(r.values[i]),)
                                                  + ((r.changes[keys[i]].short,) if changed(i) else ()))]
                for r in c.unit_rows]
        first = Mm(34)
        columns = len(headers) - 1
        rest = Emu((_TYPE_WIDTH - first) // max(columns, 1))
        size = Pt(10.5) if columns <= 6 else Pt(9)
        _table(doc, titles.get(section, "各单位情况"), headers, rows, size, [first] + [rest] * columns)


def _media(doc, c: BulletinContent) -> None:
    _text(doc, c.media_sentence + c.media_change)
    _figure_table(doc, "宣传报道情况", _figures(c, "media"), c.compare_headers)


def _completeness(doc, c: BulletinContent) -> None:
    """The sentence (it names late and missing units in the 通报 style) and the timeliness table."""
    _text(doc, c.completeness_sentence)
    if c.timeliness_rows:
        columns = len(c.timeliness_headers)
        _table(doc, "报送及时情况", list(c.timeliness_headers), [list(r) for r in c.timeliness_rows], Pt(12),
               [Mm(56)] + [Emu((_TYPE_WIDTH - Mm(56)) // max(columns - 1, 1))] * (columns - 1))
        _text(doc, "及时率＝截止前报送单位数÷应报单位数；截止前报送、截止后又更正的，计入“截止后更正”。")


def _gallery(doc, c: BulletinContent) -> None:
    for photo in c.photos:
        _photo(doc, photo)


def _figures(c: BulletinContent, section: str) -> list[Figure]:
    return [f for f in c.figures if (f.section == "media") == (section == "media")]


def _region_label(stories: tuple[Story, ...]) -> str:
    """各市及沈抚示范区 / 各市 / the zones' names, from the kinds present."""
    zones = list(dict.fromkeys(s.unit_name for s in stories if s.kind == "zone"))
    zone_text = "、".join(zones) if len(zones) <= 2 else "各示范区"
    if any(s.kind != "zone" for s in stories):
        whole = "各区县" if all(s.kind in ("district", "zone") for s in stories) else "各市"
        return f"{whole}及{zone_text}" if zones else whole
    return zone_text


def _masthead(doc, c: BulletinContent) -> None:
    """报头: red name, 第N期, issuer left / date right, red rule."""
    name = _para(doc, align=_CENTER, indent=None, line=None)
    name.paragraph_format.space_after = Pt(6)
    _run(name, c.name, XIAOBIAOSONG, Pt(42), bold=True, color=RED)
    _run(_para(doc, align=_CENTER, indent=None), f"第{c.issue}期")
    line = _para(doc, indent=None, border=[("bottom", "FF0000", 16)])
    fmt = line.paragraph_format
    fmt.space_before, fmt.left_indent, fmt.right_indent = Pt(12), Pt(16), Pt(16)
    fmt.tab_stops.add_tab_stop(_TYPE_WIDTH - Pt(16), WD_TAB_ALIGNMENT.RIGHT)
    _run(line, f"{_one_line(c.issuer)}\t{c.date_text}")


def _heading(doc, level: int, n: int, text: str) -> None:
    """一、 in 黑体; （一） in 楷体; 1. and （1） in 仿宋."""
    fmt, font = {1: ("{}、", HEITI), 2: ("（{}）", KAITI), 3: ("{}.", FANGSONG), 4: ("（{}）", FANGSONG)}[level]
    p = _para(doc)
    p.paragraph_format.keep_with_next = True
    _run(p, fmt.format(cn_ordinal(n) if level <= 2 else n) + text, font)


def _text(doc, text: str) -> None:
    """Body paragraphs, one per non-empty line of ``text``."""
    for line in _clean(text or "").splitlines():
        if line.strip():
            _run(_para(doc), line.strip())


def _figure_table(doc, title: str, figures: list[Figure], compare_headers: tuple[str, ...] = ()) -> None:
    """项目 / 单位 / 合计, and the year-over-year columns when there are any."""
    if not figures:
        return
    rows = [[f.label, f.unit, str(f.exact), *f.compare] for f in figures]
    if not compare_headers:
        _table(doc, title, ["项目", "单位", "合计"], rows, Pt(12), [Mm(76), Mm(30), Mm(50)])
        return
    rest = Emu((_TYPE_WIDTH - Mm(52) - Mm(14)) // (1 + len(compare_headers)))
    _table(doc, title, ["项目", "单位", "合计", *compare_headers], rows, Pt(10.5),
           [Mm(52), Mm(14)] + [rest] * (1 + len(compare_headers)))


def _table(doc, title: str, headers, rows, size: Length, widths: list[int]) -> None:
    """A bordered, centred table with a 黑体 title above and a repeated header row."""
    caption = _para(doc, align=_CENTER, indent=None, line=None)
    caption.paragraph_format.space_before, caption.paragraph_format.keep_with_next = Pt(6), True
    _run(caption, title, HEITI, Pt(14))
    table = doc.add_table(rows=1, cols=len(headers))
    table.style, table.alignment = "Table Grid", WD_TABLE_ALIGNMENT.CENTER
    tr_pr = table.rows[0]._tr.get_or_add_trPr()
    tr_pr.append(OxmlElement("w:tblHeader"))
    for row_cells, texts, head in [(table.rows[0].cells, headers, True)] + [
            (table.add_row().cells, r, False) for r in rows]:
        for i, (cell, text) in enumerate(zip(row_cells, texts)):
            cell.width = widths[i]
            p = cell.paragraphs[0]
            p.alignment = _LEFT if i == 0 and not head else _CENTER
            p.paragraph_format.line_spacing = 1.0
            _run(p, _one_line(text), HEITI if head else FANGSONG, size)
    _para(doc, indent=None, line=Pt(12))  # breathing space after the table


def _chart(doc, chart) -> None:
    """A chart at type-area width (a tall one capped by the type area's height), its title below."""
    p = _para(doc, align=_CENTER, indent=None, line=None)
    p.paragraph_format.space_before, p.paragraph_format.keep_with_next = Pt(6), True
    stream, (w, h) = _image(Path(chart.path))
    p.add_run().add_picture(stream, width=min(_TYPE_WIDTH, int(Mm(200) * w / h)))
    _run(_para(doc, align=_CENTER, indent=None, line=None),
         _one_line(chart.title + (f"（{chart.note}）" if chart.note else "")), KAITI, Pt(14))


def _photo(doc, photo: Photo) -> None:
    """One photo at type-area width (tall ones capped by height), caption in 楷体 below."""
    p = _para(doc, align=_CENTER, indent=None, line=None)
    p.paragraph_format.space_before, p.paragraph_format.keep_with_next = Pt(12), True
    try:
        stream, (w, h) = _image(Path(photo.path))
        p.add_run().add_picture(stream, width=min(_PHOTO_WIDTH, int(_PHOTO_MAX_HEIGHT * w / h)))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("photo %s left out of the DOCX: %s", photo.path, exc)
        _run(p, f"（图片无法读取：{Path(photo.path).name}）", KAITI, Pt(14))
    _run(_para(doc, align=_CENTER, indent=None, line=None), _one_line(photo.caption), KAITI, Pt(14))


def _image(path: Path) -> tuple[io.BytesIO, tuple[int, int]]:
    """Image bytes Word can show upright: EXIF rotation applied, long side ≤ 1600 px."""
    with Image.open(path) as im:
        fmt = im.format
        if fmt in ("JPEG", "PNG") and max(im.size) <= _PHOTO_MAX_PX and im.getexif().get(0x0112, 1) == 1:
            return io.BytesIO(path.read_bytes()), im.size
        im = ImageOps.exif_transpose(im)
        im.thumbnail((_PHOTO_MAX_PX, _PHOTO_MAX_PX))
        out_fmt = "JPEG" if fmt == "JPEG" else "PNG"
        if out_fmt == "JPEG" and im.mode not in ("RGB", "L", "CMYK"):
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, out_fmt, quality=85)
        buf.seek(0)
        return buf, im.size


def _colophon(doc, c: BulletinContent) -> None:
    """报尾, kept together on the last page: 报/送/发 lines and 共印N份 between two rules.

    It flows after the body rather than being pinned to the page foot: a bottom-aligned frame
    or floating table is not honoured by LibreOffice 7.4 (it also drops the rules there).
    """
    recipients = sorted((r for r in c.recipients if r.names), key=lambda r: _ROLE_ORDER.get(r.role, 9))
    lines = [(f"{r.role}：", "，".join(_one_line(n) for n in r.names)) for r in recipients]
    if c.copies:
        lines.append(("", f"共印{c.copies}份"))
    for i, (role, names) in enumerate(lines):
        border = [("top", "000000", 8)] if i == 0 else []
        border += [("bottom", "000000", 8)] if i == len(lines) - 1 else []
        p = _para(doc, indent=None, border=border)
        fmt = p.paragraph_format
        fmt.keep_with_next = i < len(lines) - 1
        fmt.space_before = _LINE if i == 0 else 0
        fmt.left_indent, fmt.right_indent = Pt(14 + 14 * len(role)), Pt(14)
        fmt.first_line_indent = Pt(-14 * len(role))
        p.alignment = _LEFT if role else _RIGHT
        _run(p, role + names, FANGSONG, Pt(14))


def _para(doc, *, align=None, indent: Length | None = _INDENT, line: Length | None = _LINE,
          border: list[tuple[str, str, int]] = ()):
    """A paragraph with first-line indent and fixed line spacing (``None`` = single)."""
    p = doc.add_paragraph()
    p_pr = p._p.get_or_add_pPr()
    if border:
        edges = "".join(f'<w:{side} w:val="single" w:sz="{sz}" w:space="4" w:color="{color}"/>'
                        for side, color, sz in border)
        p_pr.append(parse_xml(f'<w:pBdr {nsdecls("w")}>{edges}</w:pBdr>'))
    fmt = p.paragraph_format
    fmt.first_line_indent = indent
    fmt.line_spacing = line if line is not None else 1.0
    if align is not None:
        p.alignment = align
    return p


def _run(p, text: str, font: str = FANGSONG, size: Length = _BODY, *, bold: bool = False,
         color: RGBColor | None = None):
    """A run with all four rFonts slots named (ascii, hAnsi, eastAsia, cs)."""
    run = p.add_run(_XML_ILLEGAL.sub("", text))
    _name_fonts(run._r.get_or_add_rPr(), font)
    run.font.size, run.font.bold = size, bold or None
    if color is not None:
        run.font.color.rgb = color
    return run


def _name_fonts(r_pr, font: str) -> None:
    fonts = r_pr.get_or_add_rFonts()
    fonts.attrib.clear()
    for slot in ("w:ascii", "w:hAnsi", "w:eastAsia", "w:cs"):
        fonts.set(qn(slot), font)


def _clean(text: str) -> str:
    """Drop characters XML cannot carry; normalise line ends. Markup stays literal text."""
    return _XML_ILLEGAL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _one_line(text: str) -> str:
    """Join wrapped lines: a space between Latin words, nothing between Chinese."""
    text = re.sub(r"(?<=[A-Za-z0-9])\s*\n\s*(?=[A-Za-z0-9])", " ", _clean(text or ""))
    return re.sub(r"\s*\n\s*", "", text).replace("\t", " ").strip()


def _sentences(*parts: str) -> str:
    """Join narrative parts, each ending in Chinese terminal punctuation."""
    out = []
    for part in filter(None, (_one_line(p) for p in parts)):
        out.append(part if part[-1] in "。！？；…!?;" else part + "。")
    return "".join(out)


def _set_up(doc, c: BulletinContent) -> None:
    """Page, default fonts, page-number footers, font fallbacks, core properties."""
    sec = doc.sections[0]
    sec.page_width, sec.page_height = Mm(210), Mm(297)
    sec.top_margin, sec.bottom_margin, sec.left_margin, sec.right_margin = Mm(37), Mm(35), Mm(28), Mm(26)
    sec.header_distance, sec.footer_distance = Mm(15), Mm(22)  # number ~7 mm below the type area
    r_pr = doc.styles.element.xpath("w:docDefaults/w:rPrDefault/w:rPr")[0]
    _name_fonts(r_pr, FANGSONG)  # replaces the template's theme fonts (a Japanese 明朝 for CJK)
    r_pr.xpath("w:lang")[0].set(qn("w:eastAsia"), "zh-CN")
    normal = doc.styles["Normal"]
    normal.font.size = _BODY
    normal.paragraph_format.space_before = normal.paragraph_format.space_after = 0
    normal.paragraph_format.line_spacing = _LINE
    normal.paragraph_format.widow_control = True
    doc.settings.odd_and_even_pages_header_footer = True  # numbers on the outer side
    _page_number(sec.footer.paragraphs[0], _RIGHT)
    _page_number(sec.even_page_footer.paragraphs[0], _LEFT)
    _font_table(doc)
    cp = doc.core_properties
    cp.title, cp.author, cp.last_modified_by = c.title, c.issuer, c.issuer
    cp.subject, cp.comments, cp.language = f"{c.name}第{c.issue}期", "", "zh-CN"
    cp.identifier, cp.version = c.campaign_id, str(c.version)
    cp.created = cp.modified = dt.datetime.combine(c.date, dt.time())


def _page_number(p, align) -> None:
    """``— 1 —`` in 4号 宋体 around a PAGE field, one character in from the outer edge."""
    p.alignment = align
    setattr(p.paragraph_format, "right_indent" if align == _RIGHT else "left_indent", Pt(14))
    p.paragraph_format.line_spacing = 1.0
    _run(p, "— ", SONGTI, Pt(14))
    number = _run(p, "1", SONGTI, Pt(14))
    _run(p, " —", SONGTI, Pt(14))
    field = parse_xml(f'<w:fldSimple {nsdecls("w")} w:instr=" PAGE "/>')
    number._r.addprevious(field)
    field.append(number._r)


def _font_table(doc) -> None:
    """Declare each named font with a GB2312 charset and a substitute (altName)."""
    part = next(p for p in doc.part.package.iter_parts() if p.content_type == CT.WML_FONT_TABLE)
    fonts = parse_xml(part.blob)
    for name, (alt, family) in _FALLBACKS.items():
        fonts.append(parse_xml(
            f'<w:font {nsdecls("w")} w:name="{name}"><w:altName w:val="{alt}"/><w:charset w:val="86"/>'
            f'<w:family w:val="{family}"/><w:pitch w:val="variable"/></w:font>'))
    part._blob = etree.tostring(fonts, xml_declaration=True, encoding="UTF-8", standalone=True)

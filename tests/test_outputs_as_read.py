"""The bulletin looked at as its readers do: charts drawn in a font that has every character,
the PDF in the official look with its text extractable, the mail in Chromium at a phone's and
a desktop's width (inline images from the product's own message), the DOCX as LibreOffice lays
it out. The viewers come from Debian (``make view-deps``); a missing one fails under CI."""

from __future__ import annotations

import base64
import email
import json
import logging
import os
import re
import shutil
import subprocess
from email import policy
from pathlib import Path

import pytest
from PIL import Image
from test_bulletin_readers import _compile, two_rounds  # noqa: F401 - the fixture

from tasks.bulletin import charts as charts_module
from tasks.mail.message import Address, mime_bytes
from tasks.mail.notices import bulletin_message

SETTINGS = dict(charts=True, pdf=True, chart_fields=["posters", "trainings"], attach_pdf=True)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: make view-deps installs it (as root)")
        pytest.skip(f"{name} is not installed (make view-deps)")
    return path


@pytest.fixture
def version(two_rounds, config):  # noqa: F811 - the fixture imported above
    folder, _ = _compile(two_rounds, config, **SETTINGS)
    return folder


def _numbers(text: str) -> set[str]:
    """Figures a reader compares: integers of three digits or more, and percentages."""
    return {n for n in re.findall(r"\d+(?:\.\d+)?%|\d{3,}", text.replace(",", ""))}


def test_charts_are_drawn_with_every_character_and_described(version, config):
    manifest = json.loads((version / "manifest.json").read_text(encoding="utf-8"))
    assert [c["file"] for c in manifest["charts"]] == ["charts/chart-1.png", "charts/chart-2.png",
                                                       "charts/chart-3.png"]
    for c in manifest["charts"]:
        with Image.open(version / c["file"]) as im:
            assert im.width == 1080 and im.getcolors(1 << 16) is not None and len(im.getcolors(1 << 16)) > 2
    with Image.open(version / "charts" / "chart-1.png") as im:  # printed in greyscale, the rounds stay apart
        grey = dict((level, n) for n, level in im.convert("L").getcolors(256))
        dark, light = (sum(grey.get(v, 0) for v in range(c - 6, c + 7)) for c in (0x2B, 0xC8))
        assert dark > 2000 and light > 1000, (dark, light)
    html = (version / "bulletin.html").read_text(encoding="utf-8")
    alts = re.findall(r'<img src="charts/[^"]+" alt="([^"]+)"', html)
    assert len(alts) == 3 and "张贴宣传画上年3000套、本年3123套（增长4.1%）" in alts[0]
    tables = re.sub(r"<img[^>]*>", "", html)  # every number a chart shows is also in a table
    for alt in alts:
        assert _numbers(alt) <= _numbers(tables), alt
    from docx import Document
    assert len(Document(str(version / "bulletin.docx")).inline_shapes) == 3  # the DOCX carries them too
    md = (version / "bulletin.md").read_text(encoding="utf-8")
    assert md.count("](charts/chart-") == 3


def test_a_font_without_chinese_gives_no_chart_and_says_why(two_rounds, config, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(charts_module, "cjk_family", lambda: "DejaVu Sans")
    with caplog.at_level(logging.WARNING):
        folder, _ = _compile(two_rounds, config, **SETTINGS)
    assert not (folder / "charts").exists() and "缺字" in caplog.text
    assert "<img src=\"charts/" not in (folder / "bulletin.html").read_text(encoding="utf-8")


def test_the_pdf_embeds_its_fonts_and_says_what_the_text_says(version):
    pdf = version / "bulletin.pdf"
    fonts = subprocess.run([_tool("pdffonts"), str(pdf)], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in fonts.splitlines()[2:] if line.strip()]
    assert rows and all(r[-5] == "yes" for r in rows), fonts  # emb
    pages = subprocess.run([_tool("pdftotext"), "-layout", str(pdf), "-"], capture_output=True, text=True,
                           check=True).stdout.split("\f")
    text = "".join(pages)
    assert _numbers(text) == _numbers((version / "bulletin.txt").read_text(encoding="utf-8"))
    last = [p for p in pages if p.strip()][-1]
    assert "共印" in last and "发：" in last and re.search(r"—\s*1\s*—", pages[0])
    # the 报尾 sits at the foot of the last page: its last line ends near the type area's bottom
    # (841.9 pt high, 35 mm = 99.2 pt of bottom margin)
    boxes = subprocess.run([_tool("pdftotext"), "-f", str(len(pages) - 1), "-l", str(len(pages) - 1), "-bbox",
                            str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    bottom = float(re.search(r'yMax="([\d.]+)">共印', boxes).group(1))
    assert 841.9 - 99.2 - 50 < bottom <= 841.9 - 99.2, bottom


def _rendered(html: str, width: int, tmp_path: Path) -> dict:
    """The mail in headless Chromium, in a frame *width* px wide (a headless window is never
    narrower than 500 px): the frame's scroll width and its images."""
    import html as html_lib
    probe = ("<script>const f=document.getElementById('mail');f.addEventListener('load',()=>{"
             "const d=f.contentDocument,i=[...d.images];const p=document.createElement('pre');p.id='probe';"
             "p.textContent=JSON.stringify({width:f.contentWindow.innerWidth,scroll:d.documentElement.scrollWidth,"
             "images:i.length,broken:i.filter(x=>!(x.complete&&x.naturalWidth>0)).map(x=>x.alt.slice(0,20))});"
             "document.body.appendChild(p)})</script>")
    page = tmp_path / f"frame-{width}.html"
    page.write_text(f'<!DOCTYPE html><html><body style="margin:0"><iframe id="mail" style="border:0" width="{width}" '
                    f'height="900" srcdoc="{html_lib.escape(html, quote=True)}"></iframe>{probe}</body></html>',
                    encoding="utf-8")
    out = subprocess.run(
        [_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / f'chromium-{width}'}", f"--window-size={max(width, 500) + 40},1000",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout)
    assert found, out.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_the_mail_reads_on_a_phone_and_a_desktop(version, config, tmp_path):
    """The messages the product sends (their own bytes), a leader's and a unit's, images put
    back from their parts."""
    from flows.publish_bulletin import _unit_copy
    from tasks.bulletin.personal import read_blocks
    base = bulletin_message(config, version, 1)
    block = read_blocks(version).get(config.units[0].code)
    assert block is not None, "the version was compiled with personal copies"
    for message in (base, _unit_copy(base, block)):
        _read_on_two_widths(message, tmp_path)


def _read_on_two_widths(message, tmp_path) -> None:
    raw, _ = mime_bytes(dict_copy(message), Address("简讯", "bulletin@example.org"))
    assert len(raw) <= 10 * 1024 * 1024  # the campaign's max_mail_bytes
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert [p.get_filename() for p in msg.iter_attachments()][1:] == [f"{message.subject.split('（')[0]}.pdf"]
    html = msg.get_body(("html",)).get_content()
    parts = {p["Content-ID"].strip("<>"): p for p in msg.walk() if p.get("Content-ID")}
    assert len(parts) == html.count('src="cid:')
    for cid, part in parts.items():
        data = base64.b64encode(part.get_payload(decode=True)).decode()
        html = html.replace(f"cid:{cid}", f"data:{part.get_content_type()};base64,{data}")
    for width in (375, 1280):
        seen = _rendered(html, width, tmp_path)
        assert seen["width"] == width, seen
        assert seen["scroll"] <= width, f"scrolls sideways at {width} px: {seen}"
        assert seen["images"] == len(parts) and seen["broken"] == [], seen


def dict_copy(message):
    """The base message addressed to one reader, as publish-bulletin sends it."""
    import dataclasses
    return dataclasses.replace(message, to=(Address("读者", "reader@example.org"),))


def test_the_docx_lays_out_as_pages(version, tmp_path):
    out = tmp_path / "lo"
    done = subprocess.run([_tool("soffice"), "--headless", f"-env:UserInstallation={(tmp_path / 'profile').as_uri()}",
                           "--convert-to", "pdf", "--outdir", str(out), str(version / "bulletin.docx")],
                          capture_output=True, text=True, timeout=240)
    pdf = out / "bulletin.pdf"
    assert pdf.exists(), done.stdout + done.stderr
    subprocess.run([_tool("pdftoppm"), "-r", "40", "-png", "-f", "1", "-l", "2", str(pdf), str(tmp_path / "page")],
                   check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 2
    with Image.open(pages[0]) as im:
        red = sum(1 for r, g, b in im.convert("RGB").get_flattened_data() if r > 180 and g < 80 and b < 80)
        assert im.height > im.width and red > 50  # A4 upright, the red masthead and rule
    text = subprocess.run([_tool("pdftotext"), str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = re.sub(r"\s+", "", text)
    assert "工作简讯" in text and "比上年增长4.1%" in text

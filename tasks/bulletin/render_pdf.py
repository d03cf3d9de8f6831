"""The bulletin as ``bulletin.pdf`` in the official look, through WeasyPrint from HTML.

Why HTML → WeasyPrint rather than DOCX → LibreOffice: the 报尾 must sit at the foot of the last
page, and LibreOffice 7.4 (Debian 12) ignores bottom-aligned frames; CSS paged media puts it
there as a footnote of the last line. WeasyPrint is a Python package (with Pango from Debian),
embeds the subset of every font it uses, and keeps the text extractable.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.render import render
from .bulletin_content import BulletinContent

log = logging.getLogger(__name__)
logging.getLogger("weasyprint").setLevel(logging.ERROR)  # its CSS warnings are about the mail styles
logging.getLogger("fontTools").setLevel(logging.WARNING)


def write_pdf(content: BulletinContent, folder: Path, context: dict, override_dir: str | None) -> Path:
    """``folder/bulletin.pdf`` from ``bulletin.print.html.j2``; images by path in the folder."""
    from weasyprint import HTML  # imported here: a second or two, and only a compile needs it
    html = render("bulletin.print.html.j2", override_dir, **context,
                  image_src={x.cid: str(x.path.relative_to(folder)) for x in content.photos + content.charts})
    out = folder / "bulletin.pdf"
    HTML(string=html, base_url=str(folder)).write_pdf(out)
    return out

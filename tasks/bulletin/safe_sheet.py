"""Write values that came from returns into exported sheets, never as formulas.

A unit's text such as ``=HYPERLINK("http://x","y")`` must reach a coordinator's sheet as that
literal text. openpyxl turns any string starting with ``=`` into a formula, so every string
is written with the cell type forced to text; risky strings also get Excel's quote-prefix
flag (the invisible apostrophe), so editing the cell later in Excel keeps it text.

:func:`export_frame` writes its .xlsx itself (one sheet, inline strings, a few styles; read
back by openpyxl, calamine and LibreOffice cell for cell as openpyxl wrote it): a 10,000-row
table took ~2.3 s through openpyxl's write-only mode, ~0.5 s this way. It has no code path that
writes a formula: every string becomes an inline-string cell.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zipfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import to_excel

RISKY_LEADS = ("=", "+", "-", "@")
RISKY_RAW_LEADS = ("\t", "\r")
MAX_CELL_CHARS = 32767  # Excel's limit for one cell; longer text makes the file unreadable


class LiteralText(str):
    """Text that must be stored as a string cell (it would read as a formula otherwise)."""


def is_risky(text: str) -> bool:
    """True when a spreadsheet could read ``text`` as a formula (CSV/formula injection)."""
    return text.startswith(RISKY_RAW_LEADS) or text.lstrip().startswith(RISKY_LEADS)


def safe_text(value: object) -> object:
    """Return ``value`` unchanged in content; a risky str comes back as :class:`LiteralText`.

    The text is kept exactly (no apostrophe is added); writers check ``isinstance(v, str)``
    and force a text cell. Non-strings are returned as they are.
    """
    if isinstance(value, str) and not isinstance(value, LiteralText) and is_risky(value):
        return LiteralText(value)
    return value


def _cell_value(value: object) -> object:
    """A value openpyxl can store: missing → None, aware datetimes → local wall time."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)  # Excel has no NaN or infinity
    if isinstance(value, (str, bool, int, float, Decimal)):
        return value
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, (dt.date, dt.time, dt.timedelta)):
        return value
    if isinstance(value, np.datetime64):
        return _cell_value(pd.Timestamp(value))
    if isinstance(value, np.generic):
        return _cell_value(value.item())
    return str(value)


def write_cell(ws, row: int, col: int, value: object) -> None:
    """Write ``value`` at (row, col): strings always as text cells, numbers as numbers.

    Characters XML cannot carry (control characters) are dropped and text is cut to
    Excel's 32,767-character cell limit, so one bad value never breaks the export.
    """
    value = _cell_value(value)
    cell = ws.cell(row=row, column=col)
    if isinstance(value, str):
        text = ILLEGAL_CHARACTERS_RE.sub("", str(value))[:MAX_CELL_CHARS]
        cell.value = text
        cell.data_type = "s"  # never 'f': '=1+1' stays the text '=1+1'
        if is_risky(text):
            cell.quotePrefix = True
        return
    cell.value = value
    if isinstance(value, dt.datetime):
        cell.number_format = "yyyy-mm-dd hh:mm"


_WIDE = re.compile("[\u2e80-\U0010ffff]")  # CJK and full-width: two columns on screen


def _display_width(value: object) -> int:
    """Rough on-screen width: CJK and full-width characters count double."""
    if value is None:
        return 0
    text = str(value).partition("\n")[0]
    return len(text) + len(_WIDE.findall(text))


def _header(label: object) -> object:
    if isinstance(label, tuple):  # MultiIndex columns
        return " ".join(str(p) for p in label if p is not None and str(p) != "")
    return label


def export_frame(frame: pd.DataFrame, path: Path, sheet: str = "汇总") -> Path:
    """Write ``frame`` (columns only, not the index) to ``path`` as .xlsx with safe cells.

    The header row is bold and frozen; column widths follow the content (capped at 60);
    text wider than 58 wraps. Strings are always text cells (quote prefix when risky).
    """
    path = Path(path)
    if not sheet or len(sheet) > 31 or set(sheet) & set("[]:*?/\\"):
        raise ValueError(f"'{sheet}' is not a sheet name (1-31 characters, none of []:*?/\\)")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [_sheet_value(_header(label)) for label in frame.columns]
    columns = [_column_values(frame.iloc[:, c]) for c in range(frame.shape[1])]
    widths = [max(_display_width(h), _column_width(col)) for h, col in zip(header, columns)]
    letters = [get_column_letter(c) for c in range(1, len(header) + 1)]
    styles = _Styles()
    cells = [[_cell_xml(f"{letter}1", value, styles, bold=True) for letter, value in zip(letters, header)]]
    cells += [_column_xml(letter, col, styles, wrap=width > 58)
              for letter, col, width in zip(letters, columns, widths)]
    rows = [f'<row r="1">{"".join(cells[0])}</row>']
    rows += [f'<row r="{r}">{"".join(row)}</row>' for r, row in enumerate(zip(*cells[1:]), start=2)]
    last = f"{letters[-1]}{len(frame) + 1}" if letters else "A1"
    cols = "".join(f'<col min="{c}" max="{c}" width="{min(max(w + 2, 8), 60)}" customWidth="1"/>'
                   for c, w in enumerate(widths, start=1))
    worksheet = (f'{_XML_HEAD}<worksheet xmlns="{_MAIN}" xmlns:r="{_REL}">'
                 f'<dimension ref="A1:{last}"/>'
                 '<sheetViews><sheetView workbookViewId="0">'
                 '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
                 '<selection pane="bottomLeft" activeCell="A2" sqref="A2"/></sheetView></sheetViews>'
                 '<sheetFormatPr defaultRowHeight="15"/>'
                 + (f"<cols>{cols}</cols>" if cols else "")
                 + f'<sheetData>{"".join(rows)}</sheetData>'
                 '<pageMargins left="0.75" right="0.75" top="1" bottom="1" header="0.5" footer="0.5"/>'
                 "</worksheet>")
    workbook = (f'{_XML_HEAD}<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><bookViews><workbookView/></bookViews>'
                f'<sheets><sheet name="{_escape(sheet, quote=True)}" sheetId="1" r:id="rId1"/></sheets></workbook>')
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CONTENT_TYPES)
        z.writestr("_rels/.rels", _PACKAGE_RELS)
        z.writestr("xl/workbook.xml", workbook)
        z.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        z.writestr("xl/styles.xml", styles.xml())
        z.writestr("xl/worksheets/sheet1.xml", worksheet)
    return path


def _column_values(column: pd.Series) -> list:
    """:func:`_sheet_value` of each value; a float column without infinities in one pass."""
    if column.dtype == np.float64 and not np.isinf(column.to_numpy()).any():
        return [None if v != v else v for v in column.tolist()]  # NaN → None
    return [_sheet_value(v) for v in column.tolist()]


def _column_width(values: list) -> int:
    """The widest :func:`_display_width` of a column's values."""
    if all(type(v) is float or v is None for v in values):
        return max((len(str(v)) for v in values if v is not None), default=0)
    return max((_display_width(v) for v in values), default=0)


def _sheet_value(value: object) -> object:
    """What a cell will hold: :func:`_cell_value`, and text without characters XML cannot
    carry, cut to Excel's cell limit."""
    value = _cell_value(value)
    if isinstance(value, str):
        return _NOT_XML.sub("", ILLEGAL_CHARACTERS_RE.sub("", value))[:MAX_CELL_CHARS]
    return value


# ---------------------------------------------------------------- the .xlsx parts
_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_XML_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_CONTENT_TYPES = (
    f'{_XML_HEAD}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
    f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_CT}.worksheet+xml"/>'
    f'<Override PartName="/xl/styles.xml" ContentType="{_CT}.styles+xml"/></Types>')
_PACKAGE_RELS = (f'{_XML_HEAD}<Relationships xmlns="{_PKG_REL}">'
                 f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/>'
                 "</Relationships>")
_WORKBOOK_RELS = (f'{_XML_HEAD}<Relationships xmlns="{_PKG_REL}">'
                  f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
                  f'<Relationship Id="rId2" Type="{_REL}/styles" Target="styles.xml"/></Relationships>')
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")  # beyond openpyxl's ILLEGAL_CHARACTERS_RE
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ESCAPES_QUOTED = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;", '"': "&quot;"})
# openpyxl's formats for date and time values (datetimes: to the minute, as before)
_DATE_FORMATS = ((dt.datetime, "yyyy-mm-dd hh:mm"), (dt.date, "yyyy-mm-dd"), (dt.time, "h:mm:ss"),
                 (dt.timedelta, "[hh]:mm:ss"))


def _escape(text: str, quote: bool = False) -> str:
    return text.translate(_ESCAPES_QUOTED if quote else _ESCAPES)


class _Styles:
    """The cell formats one sheet uses: (bold, quote prefix, wrap, number format) → xf index."""

    def __init__(self):
        self.index: dict[tuple[bool, bool, bool, str | None], int] = {(False, False, False, None): 0}

    def of(self, bold: bool = False, quote: bool = False, wrap: bool = False, fmt: str | None = None) -> int:
        key = (bold, quote, wrap, fmt)
        if key not in self.index:
            self.index[key] = len(self.index)
        return self.index[key]

    def xml(self) -> str:
        formats = {fmt: 164 + i for i, fmt in enumerate(dict.fromkeys(k[3] for k in self.index if k[3]))}
        xfs = []
        for bold, quote, wrap, fmt in self.index:
            attrs = (f'numFmtId="{formats.get(fmt, 0)}" fontId="{int(bold)}" fillId="0" borderId="0" xfId="0"'
                     + (' applyNumberFormat="1"' if fmt else "") + (' applyFont="1"' if bold else "")
                     + (' applyAlignment="1"' if wrap else "") + (' quotePrefix="1"' if quote else ""))
            xfs.append(f'<xf {attrs}><alignment wrapText="1" vertical="top"/></xf>' if wrap else f"<xf {attrs}/>")
        num_fmts = "".join(f'<numFmt numFmtId="{i}" formatCode="{_escape(f, quote=True)}"/>'
                           for f, i in formats.items())
        font = '<sz val="11"/><name val="Calibri"/><family val="2"/>'
        return (f'{_XML_HEAD}<styleSheet xmlns="{_MAIN}">'
                + (f'<numFmts count="{len(formats)}">{num_fmts}</numFmts>' if formats else "")
                + f'<fonts count="2"><font>{font}</font><font><b/>{font}</font></fonts>'
                '<fills count="2"><fill><patternFill patternType="none"/></fill>'
                '<fill><patternFill patternType="gray125"/></fill></fills>'
                '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
                '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
                f'<cellXfs count="{len(xfs)}">{"".join(xfs)}</cellXfs>'
                '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
                "</styleSheet>")


def _cell_xml(ref: str, value: object, styles: _Styles, bold: bool = False, wrap: bool = False) -> str:
    """One ``<c>``. A string is always an inline string: no code path here writes a formula."""
    if isinstance(value, str):
        quote = is_risky(value)
        s = styles.of(bold, quote, wrap) if bold or quote or wrap else 0
        style = f' s="{s}"' if s else ""
        space = ' xml:space="preserve"' if value != value.strip() else ""
        return f'<c r="{ref}"{style} t="inlineStr"><is><t{space}>{_escape(value)}</t></is></c>'
    fmt = next((f for kind, f in _DATE_FORMATS if isinstance(value, kind)), None)
    s = styles.of(bold, False, wrap, fmt) if bold or wrap or fmt else 0
    style = f' s="{s}"' if s else ""
    if value is None:
        return f'<c r="{ref}"{style}/>' if s else ""
    if isinstance(value, bool):
        return f'<c r="{ref}"{style} t="b"><v>{int(value)}</v></c>'
    if fmt:
        value = to_excel(value)
    return f'<c r="{ref}"{style} t="n"><v>{"%.16g" % value}</v></c>'


def _column_xml(letter: str, values: list, styles: _Styles, wrap: bool) -> list[str]:
    """The ``<c>`` of one column's data rows (plain numbers take a short path)."""
    if not wrap and all(type(v) is float or v is None for v in values):
        return [f'<c r="{letter}{r}" t="n"><v>{"%.16g" % v}</v></c>' if v is not None else ""
                for r, v in enumerate(values, start=2)]
    return [_cell_xml(f"{letter}{r}", v, styles, wrap=wrap) for r, v in enumerate(values, start=2)]

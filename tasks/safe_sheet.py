"""Write values that came from returns into exported sheets, never as formulas.

A unit's text such as ``=HYPERLINK("http://x","y")`` must reach a coordinator's sheet as that
literal text. openpyxl turns any string starting with ``=`` into a formula, so every string
is written with the cell type forced to text; risky strings also get Excel's quote-prefix
flag (the invisible apostrophe), so editing the cell later in Excel keeps it text.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter

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


def _display_width(value: object) -> int:
    """Rough on-screen width: CJK and full-width characters count double."""
    if value is None:
        return 0
    text = str(value).split("\n")[0]
    return sum(2 if ord(ch) > 0x2E7F else 1 for ch in text)


def _header(label: object) -> object:
    if isinstance(label, tuple):  # MultiIndex columns
        return " ".join(str(p) for p in label if p is not None and str(p) != "")
    return label


def export_frame(frame: pd.DataFrame, path: Path, sheet: str = "汇总") -> Path:
    """Write ``frame`` (columns only, not the index) to ``path`` as .xlsx with safe cells.

    The header row is bold and frozen; column widths follow the content (capped at 60).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb = Workbook()
    ws = wb.active
    ws.title = sheet
    widths: list[int] = []
    bold = Font(bold=True)
    for c, label in enumerate(frame.columns, start=1):
        write_cell(ws, 1, c, _header(label))
        ws.cell(row=1, column=c).font = bold
        widths.append(_display_width(ws.cell(row=1, column=c).value))
    for r, row in enumerate(frame.itertuples(index=False, name=None), start=2):
        for c, value in enumerate(row, start=1):
            write_cell(ws, r, c, value)
            widths[c - 1] = max(widths[c - 1], _display_width(ws.cell(row=r, column=c).value))
    wrap = Alignment(wrap_text=True, vertical="top")
    for c, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(c)].width = min(max(width + 2, 8), 60)
        if width > 58:  # long text: wrap instead of one endless line
            for (cell,) in ws.iter_rows(min_row=2, min_col=c, max_col=c):
                cell.alignment = wrap
    ws.freeze_panes = "A2"
    wb.save(path)
    return path

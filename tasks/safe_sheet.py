"""Write values that came from returns into exported sheets, never as formulas.

A unit's text such as ``=HYPERLINK("http://x","y")`` must reach a coordinator's sheet as that
literal text. openpyxl turns any string starting with ``=`` into a formula, so every string
is written with the cell type forced to text; risky strings also get Excel's quote-prefix
flag (the invisible apostrophe), so editing the cell later in Excel keeps it text.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
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

    The header row is bold and frozen; column widths follow the content (capped at 60).
    Rows are streamed (openpyxl's write-only mode); every string goes in as a text cell.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [_sheet_value(_header(label)) for label in frame.columns]
    columns = [[_sheet_value(v) for v in frame.iloc[:, c].tolist()] for c in range(frame.shape[1])]
    widths = [max([_display_width(h)] + [_display_width(v) for v in col]) for h, col in zip(header, columns)]
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(sheet)
    for c, width in enumerate(widths, start=1):  # before the first row in write-only mode
        ws.column_dimensions[get_column_letter(c)].width = min(max(width + 2, 8), 60)
    ws.freeze_panes = "A2"
    bold = Font(bold=True)
    ws.append([_cell(ws, value, font=bold) for value in header])
    wrap = Alignment(wrap_text=True, vertical="top")
    # long text: wrap instead of one endless line
    alignments = [wrap if width > 58 else None for width in widths]
    for values in zip(*columns):
        ws.append([_cell(ws, value, alignment=a) for value, a in zip(values, alignments)])
    wb.save(path)
    return path


def _sheet_value(value: object) -> object:
    """What a cell will hold: :func:`_cell_value`, and text without XML-illegal characters,
    cut to Excel's cell limit."""
    value = _cell_value(value)
    if isinstance(value, str):
        return ILLEGAL_CHARACTERS_RE.sub("", value)[:MAX_CELL_CHARS]
    return value


def _cell(ws, value: object, font: Font | None = None, alignment: Alignment | None = None) -> object:
    """The value as it goes into a write-only row: a cell of its own when it is text (forced
    to type 's', never a formula), a datetime or styled; the bare value otherwise."""
    if isinstance(value, str):
        cell = WriteOnlyCell(ws)
        cell.value = value
        cell.data_type = "s"  # never 'f': '=1+1' stays the text '=1+1'
        if is_risky(value):
            cell.quotePrefix = True
    elif isinstance(value, dt.datetime) or font or alignment:
        cell = WriteOnlyCell(ws, value)
        if isinstance(value, dt.datetime):
            cell.number_format = "yyyy-mm-dd hh:mm"
    else:
        return value
    if font:
        cell.font = font
    if alignment:
        cell.alignment = alignment
    return cell

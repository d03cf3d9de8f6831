"""Read a returned file into plain rows of Python values, whatever its format.

Workbooks (.xlsx/.xlsm/.xlsb/.xls/.ods) are read with python-calamine, CSV/TXT with the
standard library after detecting the encoding. Rows start at cell A1 (row 0 is spreadsheet
row 1), so ``cell_ref(r, c)`` names the cell the unit sees. Blank cells are None.

What python-calamine 0.9.1 gives (measured, see tests/test_readers.py):
- formulas: the value cached in the file, never evaluated; a formula saved without a cached
  value (openpyxl writes those) reads as blank;
- error cells (``#VALUE!``): .xlsx reads them as blank and .ods as the cached number (0), so
  both are re-read here from the sheet XML and given as the error text; .xls/.xlsb: blank;
- merged cells: the value sits in the top-left cell, the other cells are blank;
- numbers come as float (``120.0``), dates as ``datetime.date``/``datetime``.

Anything unreadable raises :class:`ReturnFileError` naming the file by its display name.
"""

from __future__ import annotations

import csv
import html
import io
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import charset_normalizer
import python_calamine as pc

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xlsb", ".xls", ".ods")
TEXT_SUFFIXES = (".csv", ".txt")
_ZIP_MAGIC, _OLE_MAGIC = b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_DELIMITERS = (",", "\t", ";", "，")
_ODS_NS = {"table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
           "calcext": "urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0"}


class ReturnFileError(Exception):
    """A returned file cannot be read; ``message`` (Chinese) names the file and the problem."""

    def __init__(self, file: str, reason: str):
        self.file, self.reason = file, reason
        self.message = f"文件“{file}”{reason}"
        super().__init__(self.message)


@dataclass(frozen=True)
class Sheet:
    """One sheet as rows of values; ``merged`` holds 0-based ((r0, c0), (r1, c1)) ranges."""

    name: str
    rows: list[list[object]]
    hidden: bool = False
    merged: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = ()


def cell_ref(row: int, col: int) -> str:
    """0-based (row, col) → spreadsheet reference: (6, 1) → 'B7'."""
    letters, n = "", col + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return f"{letters}{row + 1}"


def _ref_to_rc(ref: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"\$?([A-Za-z]{1,3})\$?([0-9]{1,7})", ref)
    if not m:
        return None
    col = 0
    for ch in m.group(1).upper():
        col = col * 26 + ord(ch) - 64
    return int(m.group(2)) - 1, col - 1


def read_sheets(path: Path, display_name: str | None = None, *,
                max_unzipped_bytes: int = 200 * 1024 * 1024, max_ratio: int = 200,
                max_cells: int = 2_000_000) -> list[Sheet]:
    """Every sheet of a returned file, in workbook order; raise ReturnFileError if unreadable."""
    path = Path(path)
    name = display_name or path.name
    try:
        head = path.open("rb").read(8)
    except OSError:
        raise ReturnFileError(name, "无法打开（文件不存在或无权读取）") from None
    if not head:
        raise ReturnFileError(name, "是空文件（0 字节），请重新发送") from None
    suffix = path.suffix.lower()
    if head.startswith((_ZIP_MAGIC, _OLE_MAGIC)):
        sheets = _read_workbook(path, name, head, max_unzipped_bytes, max_ratio, max_cells)
    elif suffix in WORKBOOK_SUFFIXES:
        sheets = [_read_disguised(path, name)]
    elif suffix in TEXT_SUFFIXES:
        sheets = [_read_text(path, name)]
    else:
        raise ReturnFileError(name, "不是可识别的报表文件，请使用 .xlsx、.xls、.ods 或 .csv 格式")
    if not any(v is not None for s in sheets for row in s.rows for v in row):
        raise ReturnFileError(name, "中没有任何内容（所有工作表都是空的）")
    return sheets


def _read_disguised(path: Path, name: str) -> Sheet:
    """A workbook suffix on a file that is no workbook: web exports are often CSV or HTML."""
    start = path.read_bytes()[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<", b"\xff\xfe<", b"\xfe\xff\x00<")):
        raise ReturnFileError(name, "实际是网页或 XML 格式，不是 Excel 文件；请用 Excel 打开后"
                                    "另存为 .xlsx 再发送")
    try:
        return _read_text(path, name, strict=True)
    except ReturnFileError:
        raise ReturnFileError(name, "已损坏，或不是有效的 Excel/ODS 文件") from None


def _check_zip(path: Path, name: str, max_bytes: int, max_ratio: int) -> zipfile.ZipFile:
    """Refuse a zip that would unpack too large (declared sizes, then verified by streaming)."""
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ReturnFileError(name, "已损坏，或不是有效的 Excel/ODS 文件（压缩包无法打开）") from None
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos) or 1
    too_big = ReturnFileError(name, f"解压后超过 {max_bytes // (1024 * 1024)} MB 或压缩比异常，"
                                    "疑似恶意文件，已拒收")
    if total > max_bytes or (total > 10 * 1024 * 1024 and total / packed > max_ratio):
        raise too_big
    seen = 0
    try:  # the sizes in the headers can lie: count what actually comes out
        for info in infos:
            with zf.open(info) as member:
                while chunk := member.read(1 << 20):
                    seen += len(chunk)
                    if seen > max_bytes:
                        raise too_big
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError):
        zf.close()
        raise ReturnFileError(name, "已损坏或已加密，无法解压，请重新保存后发送") from None
    return zf


def _read_workbook(path: Path, name: str, head: bytes, max_bytes: int, max_ratio: int,
                   max_cells: int) -> list[Sheet]:
    zf = None
    if head.startswith(_OLE_MAGIC) and "EncryptionInfo".encode("utf-16-le") in path.read_bytes():
        raise ReturnFileError(name, "设置了打开密码（已加密），请取消密码后重新发送")
    if head.startswith(_ZIP_MAGIC):
        zf = _check_zip(path, name, max_bytes, max_ratio)
    try:
        try:
            wb = pc.CalamineWorkbook.from_path(str(path))
        except pc.CalamineError:  # e.g. an .xls renamed .xlsx: detect the format from the bytes
            wb = pc.CalamineWorkbook.from_filelike(io.BytesIO(path.read_bytes()))
        sheets = []
        with wb:
            for meta in wb.sheets_metadata:
                if meta.typ != pc.SheetTypeEnum.WorkSheet:
                    continue
                sheet = wb.get_sheet_by_name(meta.name)
                end = sheet.end
                if end and (end[0] + 1) * (end[1] + 1) > max_cells:
                    raise ReturnFileError(name, f"的工作表“{meta.name}”数据区域过大（延伸到 "
                                                f"{cell_ref(*end)}），请删除多余的行列后重新发送")
                rows = [[None if v == "" else v for v in row]
                        for row in sheet.to_python(skip_empty_area=False)] if end else []
                sheets.append(Sheet(meta.name, rows,
                                    hidden=meta.visible != pc.SheetVisibleEnum.Visible,
                                    merged=tuple(sheet.merged_cell_ranges or ())))
    except ReturnFileError:
        raise
    except pc.PasswordError:
        raise ReturnFileError(name, "设置了密码，请取消密码后重新发送") from None
    except Exception:  # calamine raises CalamineError, ZipError, XmlError, OSError, ...
        raise ReturnFileError(name, "已损坏，或不是有效的 Excel/ODS 文件，无法读取") from None
    if zf is not None:
        with zf:
            try:
                _restore_errors(zf, sheets)
            except (ET.ParseError, KeyError, ValueError, zipfile.BadZipFile):
                pass  # best effort: the values calamine gave stand
    return sheets


def _put(sheet: Sheet, row: int, col: int, value: str) -> None:
    while len(sheet.rows) <= row:
        sheet.rows.append([])
    cells = sheet.rows[row]
    cells.extend([None] * (col + 1 - len(cells)))
    cells[col] = value


def _tags(zf: zipfile.ZipFile, member: str, tag: str) -> list[dict[str, str]]:
    """The attributes of every ``<tag …>`` in a zip member (prefix-agnostic, unescaped)."""
    xml = zf.read(member).decode("utf-8", "replace")
    return [{k: html.unescape(v) for k, v in re.findall(r'([\w:]+)="([^"]*)"', m.group(1))}
            for m in re.finditer(rf"<(?:\w+:)?{tag}\b([^>]*)>", xml)]


def _restore_errors(zf: zipfile.ZipFile, sheets: list[Sheet]) -> None:
    """Put error texts (``#DIV/0!``) back where calamine dropped them (.xlsx/.xlsm, .ods)."""
    by_name = {s.name: s for s in sheets}
    names = set(zf.namelist())
    if "xl/workbook.xml" in names:
        rels = {a.get("Id"): a.get("Target", "") for a in _tags(zf, "xl/_rels/workbook.xml.rels",
                                                                "Relationship")}
        for a in _tags(zf, "xl/workbook.xml", "sheet"):
            sheet, target = by_name.get(a.get("name", "")), rels.get(a.get("r:id"), "")
            member = target.lstrip("/") if target.startswith("/") else "xl/" + target
            if sheet is None or member not in names:
                continue
            xml = zf.read(member).decode("utf-8", "replace")
            if 't="e"' not in xml:
                continue
            for c in re.finditer(r'<(?:\w+:)?c\b([^>]*)(?<!/)>(.*?)</(?:\w+:)?c>', xml, re.S):
                ref = re.search(r'\br="([^"]+)"', c.group(1))
                v = re.search(r"<(?:\w+:)?v>([^<]*)</", c.group(2))
                if 't="e"' in c.group(1) and ref and v and (rc := _ref_to_rc(ref.group(1))):
                    _put(sheet, *rc, html.unescape(v.group(1)))
    elif "content.xml" in names:
        data = zf.read("content.xml")
        if b'value-type="error"' not in data:
            return
        t = "{%s}" % _ODS_NS["table"]
        for table in ET.fromstring(data).iter(t + "table"):
            sheet, r = by_name.get(table.get(t + "name", "")), 0
            for row in table.iter(t + "table-row"):
                rep = int(row.get(t + "number-rows-repeated", "1"))
                c = 0
                for cell in row:
                    span = int(cell.get(t + "number-columns-repeated", "1"))
                    if sheet and cell.get("{%s}value-type" % _ODS_NS["calcext"]) == "error":
                        text = "".join(cell.itertext()).strip() or "#VALUE!"
                        for dr in range(min(rep, 100)):
                            for dc in range(min(span, 100)):
                                _put(sheet, r + dr, c + dc, text)
                    c += span
                r += rep


def _decode(data: bytes, name: str, strict: bool = False) -> str:
    """Bytes of a text file → str: UTF-16 by BOM, UTF-8(-BOM), GB18030 (⊃ GBK), else a guess."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    if b"\x00" not in data:
        for encoding in ("utf-8-sig", "gb18030"):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                continue
        best = None if strict else charset_normalizer.from_bytes(data).best()
        if best is not None:
            return str(best)
    raise ReturnFileError(name, "不是文本表格，或文字编码无法识别（请另存为 UTF-8 或 GBK 编码的 CSV）")


def _sniff(lines: list[str]) -> str:
    """The delimiter that splits most lines into the same number (>1) of fields."""
    if lines and lines[0].lower().startswith("sep=") and len(lines[0]) >= 5:
        return lines[0][4]
    best, best_score = ",", 0
    for d in _DELIMITERS:
        widths = [len(r) for r in csv.reader(lines[:200], delimiter=d) if len(r) > 1]
        if widths:
            mode = max(set(widths), key=widths.count)
            score = widths.count(mode)
            if score > best_score:
                best, best_score = d, score
    return best


def _read_text(path: Path, name: str, strict: bool = False) -> Sheet:
    try:
        text = _decode(path.read_bytes(), name, strict)
    except OSError:
        raise ReturnFileError(name, "无法打开（文件不存在或无权读取）") from None
    lines = text.splitlines()
    delimiter = _sniff(lines)
    if lines and lines[0].lower().startswith("sep="):
        lines = lines[1:]
    try:
        rows = [[v if v.strip() else None for v in row]
                for row in csv.reader(lines, delimiter=delimiter)]
    except csv.Error:
        raise ReturnFileError(name, "的 CSV 格式有误（引号不成对或含非法字符）") from None
    width = max((len(r) for r in rows), default=0)
    return Sheet(Path(name).stem, [r + [None] * (width - len(r)) for r in rows])

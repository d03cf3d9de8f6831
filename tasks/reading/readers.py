"""Read a returned file into plain rows of Python values, whatever its format.

Workbooks (.xlsx/.xlsm/.xls/.ods) are read with python-calamine, CSV/TXT with the standard
library after detecting the encoding. Rows start at cell A1 (row 0 is spreadsheet row 1),
so ``cell_ref(r, c)`` names the cell the unit sees. Blank cells are None.

What python-calamine 0.9.1 gives (measured, see tests/test_readers.py):
- formulas: the value cached in the file, never evaluated; a formula saved without a cached
  value (openpyxl writes those) reads as blank;
- error cells (``#VALUE!``): .xlsx gives blank and .ods the cached number (0), so both are
  re-read here from the sheet XML and given as the error text; .xls: blank;
- merged cells: the value is in the top-left cell only, the others are blank (.xlsx/.xls
  also list the ranges, kept in ``Sheet.merged``; .ods does not);
- numbers come as float (``120.0``), dates as ``datetime.date``/``datetime``.
calamine allocates a sheet's whole range (A1 to the farthest cell) when it loads it, so a
tiny file with one far-away cell would exhaust memory: the extent is checked in the XML first
(.xlsx/.ods; .xls is not pre-checked, its format caps a sheet at 65536 x 256).

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
import defusedxml.ElementTree as SafeET
import python_calamine as pc

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods")
TEXT_SUFFIXES = (".csv", ".txt")
_ZIP, _OLE = b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_DELIMITERS = (",", "\t", ";", "，")
_T = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
_CALCEXT = "{urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0}"
_SHEET_XML = re.compile(r"^xl/worksheets/[^/]+\.xml$")
_KEEP = ("content.xml", "xl/workbook.xml", "xl/_rels/workbook.xml.rels")
_IN_MEMORY = 8 * 2**20  # packages up to this size are read into memory at once
_DEFLATE_MAX_RATIO = 1032  # the most deflate can expand (258-byte matches, 2 bits each)


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


def _rc(ref: bytes | str) -> tuple[int, int] | None:
    m = re.fullmatch(r"\$?([A-Za-z]{1,3})\$?([0-9]{1,7})", ref.decode() if isinstance(ref, bytes) else ref)
    if not m:
        return None
    col = 0
    for ch in m.group(1).upper():
        col = col * 26 + ord(ch) - 64
    return int(m.group(2)) - 1, col - 1


def read_sheets(path: Path, display_name: str | None = None, *,
                max_unzipped_bytes: int = 200 * 1024 * 1024, max_ratio: int = 200,
                max_cells: int = 2_000_000) -> list[Sheet]:
    """Every worksheet of a returned file, in order; raise ReturnFileError if unreadable."""
    path = Path(path)
    name = display_name or path.name
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        raise ReturnFileError(name, "无法打开（文件不存在或无权读取）") from None
    if not head:
        raise ReturnFileError(name, "是空文件（0 字节），请重新发送")
    suffix = Path(name).suffix.lower()  # the display name's: archived files have no suffix
    try:
        if head.startswith((_ZIP, _OLE)):
            sheets = _read_workbook(path, name, head, max_unzipped_bytes, max_ratio, max_cells)
        elif suffix in WORKBOOK_SUFFIXES:
            sheets = [_read_disguised(path, name)]
        elif suffix in TEXT_SUFFIXES:
            sheets = [_read_text(path, name)]
        else:
            raise ReturnFileError(name, "不是可识别的报表文件，请使用 .xlsx、.xls、.ods 或 .csv 格式")
    except (ReturnFileError, KeyboardInterrupt, SystemExit):
        raise
    except MemoryError:
        raise ReturnFileError(name, "过大，无法读取，请删除多余的内容后重新发送") from None
    except BaseException as exc:  # nothing but ReturnFileError leaves (pyo3 panics included)
        raise ReturnFileError(name, "无法读取，文件可能已损坏") from exc
    if not any(v is not None for s in sheets for row in s.rows for v in row):
        raise ReturnFileError(name, "中没有任何内容（所有工作表都是空的）")
    return sheets


def _check_zip(path: Path, name: str, max_bytes: int, max_ratio: int, max_cells: int,
               xml: dict[str, bytes]) -> None:
    """Refuse zip bombs and far-flung cells before calamine opens an .xlsx/.ods package.

    Declared sizes and the ratio are checked first. Headers can lie about the unpacked size
    but not about the packed one (a reader takes exactly that many bytes), and deflate
    unpacks at most ~1032:1: a package whose packed members could not exceed ``max_bytes``
    even so needs no further proof; any other is unpacked member by member with a running
    count. The sheet XML read (and the workbook's sheet list, when a sheet has error cells) are
    put in ``xml``."""
    bomb = ReturnFileError(name, "解压后体积过大或压缩比异常，疑似恶意文件，已拒收")
    try:
        # a small package is read at once: zipfile's many small reads then cost no system calls
        source = io.BytesIO(path.read_bytes()) if path.stat().st_size <= _IN_MEMORY else path
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
            total, packed = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
            if total > max_bytes or (total > 10 * 2**20 and total / max(packed, 1) > max_ratio):
                raise bomb
            names = {i.filename for i in infos}
            if not {"xl/workbook.xml", "content.xml"} & names:
                raise ReturnFileError(name, "不是 .xlsx 或 .ods 工作簿（如为 .xlsb 等格式，请另存为 .xlsx）")
            bounded = packed * _DEFLATE_MAX_RATIO <= max_bytes and all(
                i.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) for i in infos)
            seen = 0
            for info in infos:
                keep = _SHEET_XML.match(info.filename) or info.filename in _KEEP
                if bounded:
                    # the workbook's sheet list only matters for error cells: read below if any
                    if keep and info.filename not in _KEEP[1:]:
                        xml[info.filename] = zf.read(info)
                    continue
                parts = []
                with zf.open(info) as member:
                    while chunk := member.read(1 << 20):
                        seen += len(chunk)
                        if seen > max_bytes:
                            raise bomb
                        if keep:
                            parts.append(chunk)
                if keep:
                    xml[info.filename] = b"".join(parts)
            if bounded and any(b't="e"' in d for d in xml.values()):
                for member in _KEEP[1:]:
                    if member in names:
                        xml[member] = zf.read(member)
        for member, data in xml.items():
            if member not in _KEEP[1:]:
                rows, cols = _ods_extent(data) if member == "content.xml" else _xlsx_extent(data)
                if rows * cols > max_cells:
                    raise ReturnFileError(name, f"的数据区域过大（延伸到 {cell_ref(rows - 1, cols - 1)}），"
                                                "请删除多余的行列后重新发送")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError,
            NotImplementedError, ValueError, ET.ParseError):
        raise ReturnFileError(name, "已损坏或已加密，不是有效的 Excel/ODS 文件，请重新保存后发送") from None


_CELL_OPEN = re.compile(rb"<(?:\w+:)?c\b[^>]*(?<!/)>")  # a cell with content (not <c .../>)
_CELL_REF = re.compile(rb'<(?:\w+:)?c\b[^>]*?\br="\$?([A-Za-z]{1,3})\$?([0-9]{1,7})"[^>]*?(/?)>')


def _xlsx_extent(xml: bytes) -> tuple[int, int]:
    """(rows, cols) from A1 to the farthest non-empty cell; cells without ``r`` counted wide."""
    refs = [(letters, digits) for letters, digits, empty in _CELL_REF.findall(xml) if not empty]
    rows = max((int(d) for _, d in refs), default=0)
    cols = 0
    for letters in {x for x, _ in refs}:  # <c r="Z9" s="1"/> (formatting only) left out above
        col = 0
        for ch in letters.upper():
            col = col * 26 + ch - 64
        cols = max(cols, col)
    loose = len(_CELL_OPEN.findall(xml)) - len(refs)  # cells without a usable r="": placed last
    if loose > 0:
        row_attrs = [int(x) for x in re.findall(rb'<(?:\w+:)?row\b[^>]*?\br="([0-9]+)"', xml)]
        rows, cols = max([rows, *row_attrs]) + loose, cols + loose
    return rows, cols


def _ods_cells(xml: bytes):
    """Every ODS cell as (sheet name, row, col, rows repeated, cols repeated, element)."""
    for table in SafeET.fromstring(xml).iter(_T + "table"):  # no DTD, no entities: no XML bomb
        r = 0
        for row in table.iter(_T + "table-row"):
            c, rep = 0, int(row.get(_T + "number-rows-repeated", "1"))
            for cell in row:
                span = int(cell.get(_T + "number-columns-repeated", "1"))
                yield table.get(_T + "name", ""), r, c, rep, span, cell
                c += span
            r += rep


def _ods_extent(xml: bytes) -> tuple[int, int]:
    """(rows, cols) up to the farthest non-empty ODS cell, repeats expanded."""
    rows = cols = 0
    for _, r, c, rep, span, cell in _ods_cells(xml):
        if len(cell) or cell.get("{urn:oasis:names:tc:opendocument:xmlns:office:1.0}value-type"):
            rows, cols = max(rows, r + rep), max(cols, c + span)
    return rows, cols


def _read_workbook(path: Path, name: str, head: bytes, max_bytes: int, max_ratio: int,
                   max_cells: int) -> list[Sheet]:
    xml: dict[str, bytes] = {}
    if head.startswith(_OLE) and "EncryptionInfo".encode("utf-16-le") in path.read_bytes():
        raise ReturnFileError(name, "设置了打开密码（已加密），请取消密码后重新发送")
    if head.startswith(_ZIP):
        _check_zip(path, name, max_bytes, max_ratio, max_cells, xml)
    sheets = []
    try:
        try:
            wb = pc.CalamineWorkbook.from_path(str(path))
        except pc.CalamineError:  # e.g. an .xls renamed .xlsx: detect the format from the bytes
            wb = pc.CalamineWorkbook.from_filelike(io.BytesIO(path.read_bytes()))
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
                sheets.append(Sheet(meta.name, rows, meta.visible != pc.SheetVisibleEnum.Visible,
                                    tuple(sheet.merged_cell_ranges or ())))
    except pc.PasswordError:
        raise ReturnFileError(name, "设置了密码，请取消密码后重新发送") from None
    except (pc.CalamineError, OSError, ValueError):
        raise ReturnFileError(name, "已损坏，或不是有效的 Excel/ODS 文件，无法读取") from None
    try:
        _restore_errors(xml, sheets)
    except (ET.ParseError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # best effort: the values calamine gave stand
    return sheets


def _put(sheet: Sheet, row: int, col: int, value: str) -> None:
    """Set a cell, growing the (rectangular) rows if it lies outside them."""
    width = max(len(sheet.rows[0]) if sheet.rows else 0, col + 1)
    while len(sheet.rows) <= row:
        sheet.rows.append([])
    for cells in sheet.rows:
        cells.extend([None] * (width - len(cells)))
    sheet.rows[row][col] = value


def _attrs(text: str, tag: str) -> list[dict[str, str]]:
    """The attributes of every ``<tag …>`` in an XML text (prefix-agnostic, unescaped)."""
    return [{k: html.unescape(v) for k, v in re.findall(r'([\w:]+)="([^"]*)"', m.group(1))}
            for m in re.finditer(rf"<(?:\w+:)?{tag}\b([^>]*)>", text)]


def _restore_errors(xml: dict[str, bytes], sheets: list[Sheet]) -> None:
    """Put error texts (``#DIV/0!``) back where calamine dropped them (.xlsx/.xlsm, .ods)."""
    by_name = {s.name: s for s in sheets}
    if not any(b't="e"' in d or b'value-type="error"' in d for d in xml.values()):
        return
    if "content.xml" in xml:
        for table, r, c, rep, span, cell in _ods_cells(xml["content.xml"]):
            if table in by_name and cell.get(_CALCEXT + "value-type") == "error":
                text = "".join(cell.itertext()).strip() or "#VALUE!"
                for dr in range(min(rep, 100)):
                    for dc in range(min(span, 100)):
                        _put(by_name[table], r + dr, c + dc, text)
        return
    book = xml["xl/workbook.xml"].decode("utf-8", "replace")
    rels = xml["xl/_rels/workbook.xml.rels"].decode("utf-8", "replace")
    targets = {a.get("Id"): a.get("Target", "") for a in _attrs(rels, "Relationship")}
    for a in _attrs(book, "sheet"):
        target = targets.get(a.get("r:id"), "")
        member = target.lstrip("/") if target.startswith("/") else "xl/" + target
        sheet, data = by_name.get(a.get("name", "")), xml.get(member, b"").decode("utf-8", "replace")
        for c in re.finditer(r"<(?:\w+:)?c\b([^>]*)(?<!/)>(.*?)</(?:\w+:)?c>", data, re.S):
            ref = re.search(r'\br="([^"]+)"', c.group(1))
            v = re.search(r"<(?:\w+:)?v>([^<]*)</", c.group(2))
            if sheet and 't="e"' in c.group(1) and ref and v and (rc := _rc(ref.group(1))):
                _put(sheet, *rc, html.unescape(v.group(1)))


def _read_disguised(path: Path, name: str) -> Sheet:
    """A workbook suffix on a file that is no workbook: web exports are often CSV or HTML."""
    start = path.read_bytes()[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith((b"<", b"\xff\xfe<", b"\xfe\xff\x00<")):
        raise ReturnFileError(name, "实际是网页或 XML 格式，不是 Excel 文件；请用 Excel 打开后"
                                    "另存为 .xlsx 再发送")
    try:
        return _read_text(path, name, strict=True)
    except ReturnFileError:
        raise ReturnFileError(name, "已损坏，或不是有效的 Excel/ODS 文件") from None


def _decode(data: bytes, name: str, strict: bool = False) -> str:
    """Text bytes → str: UTF-16 by BOM, UTF-8 (BOM or not), GB18030 (⊃ GBK), else a guess."""
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
    """The delimiter that splits the most lines into the same number (>1) of fields."""
    best, best_score = ",", 0
    for d in _DELIMITERS:
        widths = [len(r) for r in csv.reader(lines[:200], delimiter=d) if len(r) > 1]
        score = max((widths.count(w) for w in set(widths)), default=0)
        if score > best_score:
            best, best_score = d, score
    return best


def _read_text(path: Path, name: str, strict: bool = False) -> Sheet:
    try:
        lines = _decode(path.read_bytes(), name, strict).splitlines()
    except OSError:
        raise ReturnFileError(name, "无法打开（文件不存在或无权读取）") from None
    if lines and re.fullmatch(r"sep=.", lines[0].strip(), re.I):  # Excel's delimiter hint
        delimiter, lines = lines[0].strip()[4], lines[1:]
    else:
        delimiter = _sniff(lines)
    try:
        rows = [[v if v.strip() else None for v in row] for row in csv.reader(lines, delimiter=delimiter)]
    except csv.Error:
        raise ReturnFileError(name, "的 CSV 格式有误（引号不成对或含非法字符）") from None
    width = max((len(r) for r in rows), default=0)
    return Sheet(Path(name).stem, [r + [None] * (width - len(r)) for r in rows])

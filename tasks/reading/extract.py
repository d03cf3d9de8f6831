"""Find the form's fields in a returned file's sheets, and the unit the return is from.

Two layouts are recognised on any sheet (``_meta`` and photo sheets excepted):

- **long**: a column of labels, values in the column under a value header (数值/数量/…) of
  a header row above, else in the first column to the right that holds more than units;
- **wide**: a header row where at least two cells are labels (with a neighbouring header row
  when merged or two-level headers split the labels), values in the first data row below
  (the 合计 row when there are several).

The sheet and layout with the most distinct form labels win. Labels match via
:class:`tasks.core.labels.LabelMatcher`; cells are named as the unit sees them (``B7``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parseaddr
from functools import lru_cache
from typing import NamedTuple

from tasks.core.config import Form, Unit
from tasks.core.directory import unit_index
from tasks.core.labels import LabelMatcher, normalize_label
from tasks.reading.readers import ReturnFileError, Sheet, cell_ref

VALUE_HEADERS = frozenset({"数值", "数量", "填报数", "填报数值", "值", "内容", "情况", "数据",
                           "填报内容", "填报情况", "本单位填报"})
HEADER_WORDS = VALUE_HEADERS | {"项目", "指标", "名称", "项目名称", "指标名称", "单位", "计量单位",
                                "填报说明", "说明", "备注", "序号", "类别", "合计", "总计"}
PSEUDO = {"填报单位": "_unit_name", "单位名称": "_unit_name", "报送单位": "_unit_name",
          "填报单位名称": "_unit_name", "单位代码": "_unit_code", "单位编码": "_unit_code"}
PHOTO_SHEET = re.compile(r"照片|图片|相片|photo|image|picture", re.I)
_INLINE = re.compile(r"^([^:：]{1,12})[:：]\s*(.+)$")  # '填报单位：沈阳市'
_IMAGE_NAME = re.compile(r"\.(jpe?g|png|gif|bmp|heic|webp)$", re.I)


class CellValue(NamedTuple):
    """A raw cell value and where it came from (sheet name and ``B7``); a named tuple, as
    thousands cross from worker processes."""

    raw: object
    sheet: str
    cell: str


@dataclass
class Extracted:
    """What one return contains; ``notes`` are Chinese remarks for the coordinator."""

    layout: str
    sheet: str
    unit_code: str | None
    unit_name: str | None
    campaign_id: str | None
    values: dict[str, CellValue]
    explanation: CellValue | None
    photo_captions: dict[str, str]
    unknown_labels: list[str]
    notes: list[str] = field(default_factory=list)


def cell_text(cell: CellValue | None) -> object:
    """A cell as stripped text, None when blank."""
    if cell is None or cell.raw is None:
        return None
    text = str(cell.raw).strip()
    return text or None


def _text(v: object) -> str | None:
    """A cell as trimmed text (120.0 → '120'), None when blank."""
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    s = str(v).strip()
    return s or None


def _get(rows: list[list[object]], r: int, c: int) -> object:
    return rows[r][c] if 0 <= r < len(rows) and 0 <= c < len(rows[r]) else None


@dataclass
class _Layout:
    kind: str
    sheet: Sheet
    cells: dict[str, tuple[int, int]]  # key (field or pseudo) → value cell (row, col)
    label_cells: set[tuple[int, int]]
    scan: list[tuple[int, int]]  # cells that hold labels in this layout (for unknown labels)
    notes: list[str]

    def score(self) -> tuple[int, int, bool]:
        keys = [k for k in self.cells if not k.startswith("_")]
        filled = sum(_text(_get(self.sheet.rows, *self.cells[k])) is not None for k in keys)
        return len(keys), filled, not self.sheet.hidden


class _SheetScan:
    def __init__(self, sheet: Sheet, matcher: LabelMatcher, units: set[str]):
        self.sheet, self.rows, self.matcher, self.units = sheet, sheet.rows, matcher, units
        self.hits = [(r, c, k) for r, row in enumerate(sheet.rows) for c, v in enumerate(row)
                     if isinstance(v, str) and (k := matcher.match(v)) is not None]
        self.by_row: dict[int, list[tuple[int, str]]] = {}
        self.by_col: dict[int, list[tuple[int, str]]] = {}
        for r, c, k in self.hits:
            self.by_row.setdefault(r, []).append((c, k))
            self.by_col.setdefault(c, []).append((r, k))
        self.labels = {(r, c) for r, c, _ in self.hits}
        self.unitish = {(r, c) for r, row in enumerate(sheet.rows) for c, v in enumerate(row)
                        if self.unit_like(v)}

    def is_value(self, r: int, c: int) -> bool:
        """A non-blank cell that is neither a label nor a unit."""
        return (_text(_get(self.rows, r, c)) is not None and (r, c) not in self.labels
                and (r, c) not in self.unitish)

    def unit_like(self, v: object) -> bool:
        """'套', '（套）', '单位：套': a unit written where a value or label could be."""
        return isinstance(v, str) and _unit_text(v) in self.units

    def long(self, col: int) -> _Layout:
        hits = [(r, k) for r, k in self.by_col[col] if not k.startswith("_")]
        first, last = min(r for r, _ in hits), max(r for r, _ in hits)
        vcol = next((j for r in range(first - 1, max(first - 6, -1), -1)
                     for j in range(col + 1, len(self.rows[r]))
                     if normalize_label(self.rows[r][j]) in VALUE_HEADERS), None)
        if vcol is None:  # no value header: the first column right of the labels with values
            start = max([c1 + 1 for (r0, c0), (r1, c1) in self.sheet.merged
                         if c0 == col and r0 <= first <= r1] + [col + 1])
            vcol = next((j for j in range(start, max(map(len, self.rows)))
                         if any(self.is_value(r, j) for r, _ in hits)), start)
        hits += [(r, k) for r, k in self.by_col[col] if k == "_explanation"]
        cells: dict[str, tuple[int, int]] = {}
        for r, k in hits:
            cells.setdefault(k, (r, vcol))
        scan = [(r, col) for r in range(first, min(last + 4, len(self.rows)))]
        return _Layout("long", self.sheet, cells, {(r, col) for r, _ in hits}, scan, [])

    def wide(self, row: int) -> _Layout:
        band = {(c, k): row for c, k in self.by_row[row]}
        for other in (row - 1, row + 1):  # labels split over two header rows
            for c, k in self.by_row.get(other, []):
                if _get(self.rows, row, c) is None:
                    band.setdefault((c, k), other)
        cols = {c for c, k in band if not k.startswith("_")}
        below = max(band.values()) + 1
        data = [r for r in range(below, min(below + 200, len(self.rows)))
                if any(self.is_value(r, c) for c in cols)]
        notes, vrow = [], data[0] if data else below
        if len(data) > 1:
            total = next((r for r in data if any(normalize_label(v) in ("合计", "总计")
                                                 for v in self.rows[r])), None)
            vrow = total if total is not None else data[0]
            notes.append(f"工作表“{self.sheet.name}”表头下有 {len(data)} 行数据，"
                         f"只读取了第 {vrow + 1} 行")
        cells: dict[str, tuple[int, int]] = {}
        for (c, k) in sorted(band, key=lambda ck: ck[0]):
            cells.setdefault(k, (vrow, c))
        scan = [(r, c) for r in sorted(set(band.values())) for c in range(len(self.rows[r]))]
        label_cells = {(r, c) for (c, _), r in band.items()}
        return _Layout("wide", self.sheet, cells, label_cells, scan, notes)

    def layouts(self) -> list[_Layout]:
        def fields(hits) -> int:
            return len({k for _, k in hits if not k.startswith("_")})
        in_row = {r: fields(h) for r, h in self.by_row.items()}
        # a layout needs two field labels to win (see extract_return): columns with fewer
        # are not tried as long layouts (a wide header has one label per column)
        cols = [c for c in sorted(self.by_col) if fields(self.by_col[c]) >= 2]
        rows = [r for r in sorted(in_row) if in_row[r] >= 2 or in_row[r] and (
            in_row.get(r - 1, 0) or in_row.get(r + 1, 0))]
        rows.sort(key=lambda r: in_row[r] < 2)  # real header rows first, then at most 50
        return [self.long(c) for c in cols] + [self.wide(r) for r in rows[:50]]

    def pseudo(self, key: str) -> tuple[object, tuple[int, int]] | None:
        """A pseudo label's value: the next cell to its right, or inline '填报单位：沈阳市'."""
        for r, c, k in self.hits:
            if k == key:
                for j in range(c + 1, len(self.rows[r])):
                    v = self.rows[r][j]
                    if v is not None:
                        return (None, (r, j)) if self.matcher.match(v) else (v, (r, j))
        for r, row in enumerate(self.rows):
            for c, v in enumerate(row):
                if isinstance(v, str) and ("：" in v or ":" in v) and (m := _INLINE.match(v.strip())):
                    if self.matcher.match(m.group(1)) == key:
                        return m.group(2).strip(), (r, c)
        return None


@lru_cache(maxsize=1 << 14)
def _unit_text(v: str) -> str:
    return re.sub(r"[()\[\]【】:\s]|单位", "", unicodedata.normalize("NFKC", v))


_MATCHERS: dict[int, tuple[Form, LabelMatcher, set[str]]] = {}


def _matcher_for(form: Form) -> tuple[LabelMatcher, set[str]]:
    """The label matcher and unit words of this very form, built once per form object."""
    found = _MATCHERS.get(id(form))
    if found is None or found[0] is not form:
        if len(_MATCHERS) > 16:
            _MATCHERS.clear()
        matcher = LabelMatcher(form, {**PSEUDO, form.explanation_label: "_explanation"})
        units = {normalize_label(f.unit) for f in form.fields if f.unit}
        found = _MATCHERS[id(form)] = (form, matcher, units)
    return found[1], found[2]


def _photo_captions(sheet: Sheet) -> dict[str, str]:
    rows, name_col, cap_col, start = sheet.rows, 0, 1, 0
    for r, row in enumerate(rows[:10]):
        heads = [normalize_label(v) for v in row]
        n = next((i for i, h in enumerate(heads) if "文件" in h or "照片名" in h or "file" in h), None)
        c = next((i for i, h in enumerate(heads) if i != n and re.search(
            r"说明|标题|图注|描述|caption|title", h)), None)
        if n is not None and c is not None:
            name_col, cap_col, start = n, c, r + 1
            break
    out: dict[str, str] = {}
    for row in rows[start:]:
        name, caption = _text(_get([row], 0, name_col)), _text(_get([row], 0, cap_col))
        if name and caption and (start or _IMAGE_NAME.search(name)):
            out[re.split(r"[\\/]", name)[-1]] = caption
    return out


def extract_return(sheets: list[Sheet], form: Form, file_name: str) -> Extracted:
    """Locate every form field in a return; ReturnFileError when no sheet has 2 form labels."""
    matcher, units = _matcher_for(form)
    meta: dict[str, str] = {}
    captions: dict[str, str] = {}
    scans: list[_SheetScan] = []
    for sheet in sheets:
        if sheet.name.strip().lower() == "_meta":
            meta.update({k: v for row in sheet.rows
                         if (k := _text(_get([row], 0, 0))) and (v := _text(_get([row], 0, 1)))})
        elif PHOTO_SHEET.search(sheet.name):
            captions.update(_photo_captions(sheet))
        else:
            scans.append(_SheetScan(sheet, matcher, units))
    layouts = [(lay, -i) for i, s in enumerate(scans) for lay in s.layouts()]
    if not layouts or max(lay.score()[0] for lay, _ in layouts) < 2:
        eg = "”“".join(f.label for f in form.fields[:2])
        raise ReturnFileError(file_name, f"中没有找到报表内容：至少要有两个与表单一致的项目名称（如“{eg}”），"
                                         "请使用下发的报表模板填报")
    best, neg_index = max(layouts, key=lambda li: (li[0].score(), li[1]))
    scan = scans[-neg_index]
    rows, name = best.sheet.rows, best.sheet.name
    found: dict[str, CellValue] = {}
    for key, (r, c) in best.cells.items():
        found[key] = CellValue(_get(rows, r, c), name, cell_ref(r, c))
    for key in ("_unit_name", "_unit_code", "_explanation"):
        if key in found:  # the layout placed it (perhaps blank): no guessing elsewhere
            continue
        for s in [scan] + [x for x in scans if x is not scan]:
            if (hit := s.pseudo(key)) and _text(hit[0]) is not None:
                found[key] = CellValue(hit[0], s.sheet.name, cell_ref(*hit[1]))
                break
    unknown = [str(v).strip() for r, c in best.scan if (r, c) not in best.label_cells
               and isinstance(v := _get(rows, r, c), str) and 1 < len(v.strip()) <= 30
               and normalize_label(v) not in HEADER_WORDS and matcher.match(v) is None
               and not scan.unit_like(v) and _wordy(v)]
    expl = found.pop("_explanation", None)
    unit_name, unit_code = found.pop("_unit_name", None), found.pop("_unit_code", None)
    return Extracted(
        layout=best.kind, sheet=name,
        unit_code=meta.get("unit_code") or (_text(unit_code.raw) if unit_code else None),
        unit_name=_text(unit_name.raw) if unit_name else None,
        campaign_id=meta.get("campaign"), values=found,
        explanation=expl if expl and _text(expl.raw) is not None else None,
        photo_captions=captions, unknown_labels=unknown, notes=best.notes)


def _wordy(text: str) -> bool:
    """True when ``text`` reads like a label (has letters, is not a number with a unit)."""
    return bool(re.search(r"[\u4e00-\u9fffA-Za-z]", text)) and not re.fullmatch(
        r"[\d.,\s]+[\u4e00-\u9fff]{0,2}", text)


_CODE_CHAR = re.compile(r"[0-9a-z]")


def _units_in(text: str, units: Sequence[Unit]) -> list[Unit]:
    """Units whose name, alias or code occurs in ``text``; a match inside a longer match of
    another unit does not count (``沈抚示范区`` is not ``沈阳``)."""
    idx = unit_index(units)
    spans: list[tuple[int, int, Unit]] = []
    for a in range(len(text)):
        for b in range(a + 1, min(len(text), a + idx.longest_name) + 1):
            spans += [(a, b, u) for u in idx.by_name.get(text[a:b], ())]
        if a and _CODE_CHAR.match(text[a - 1]):
            continue  # a code must not be glued to letters or digits before it
        for b in range(a + 1, min(len(text), a + idx.longest_code) + 1):
            if b < len(text) and _CODE_CHAR.match(text[b]):
                continue
            unit = idx.unit_of_code(text[a:b])
            if unit is not None:
                spans.append((a, b, unit))
    kept = [(a, b, u) for a, b, u in spans if not any(
        a2 <= a and b <= b2 and b2 - a2 > b - a and u2.code != u.code for a2, b2, u2 in spans)]
    return list({u.code: u for _, _, u in kept}.values())


def identify_unit(extracted: Extracted | None, file_name: str, units: Sequence[Unit],
                  sender: str | None = None) -> tuple[Unit | None, str]:
    """The unit a return is from and how it was told (Chinese), or None and the reason.

    Order: the code in the workbook (``_meta`` or a 单位代码 label), a 填报单位/单位名称
    label, a unit's name/alias/code in the file name, the sender among contacts/delegates.
    """
    problems: list[str] = []
    if extracted and extracted.unit_code:
        code = extracted.unit_code.strip()
        unit = unit_index(units).unit_of_code(code)
        if unit:
            return unit, f"单位代码 {code}"
        problems.append(f"表中的单位代码“{code}”不在本次报送单位名单中")
    if extracted and extracted.unit_name:
        name = extracted.unit_name
        norm = normalize_label(name)
        found = list({u.code: u for u in unit_index(units).by_name.get(norm, [])}.values())
        found = found or _units_in(norm, units)
        if len(found) == 1:
            return found[0], f"表中填报单位“{name}”"
        if found:
            return None, f"表中填报单位“{name}”同时匹配多个单位：{'、'.join(u.name for u in found)}"
        problems.append(f"表中填报单位“{name}”与名单中的单位都不对应")
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", file_name)
    found = _units_in("".join(unicodedata.normalize("NFKC", stem).split()).lower(), units)
    if len(found) == 1:
        return found[0], f"文件名“{file_name}”"
    if found:
        return None, f"文件名同时匹配多个单位：{'、'.join(u.name for u in found)}"
    if sender:
        address = parseaddr(sender)[1].lower() or sender.strip().lower()
        found = list({u.code: u for u in unit_index(units).by_email.get(address, [])}.values())
        if len(found) == 1:
            return found[0], f"发件人 {address}"
        if found:
            return None, f"发件人 {address} 同时是多个单位的联系人：{'、'.join(u.name for u in found)}"
        problems.append(f"发件人 {address} 不是任何单位的联系人")
    problems = problems or ["表中没有单位代码或填报单位，文件名中也没有单位名称"]
    return None, "无法识别报送单位：" + "；".join(problems)

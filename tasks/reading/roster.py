"""The office's own roster of reporting units (.xlsx, .xls, .ods or .csv), read into units:
the header found among the first rows whatever its wording (单位名称 / 名称 / 单位, 联系人 /
联系人姓名, 电子邮箱 / 邮箱 / E-mail ...), cells merged down a unit's rows filled in, a unit
with several contact rows given several contacts. A row that cannot be a unit (no name, an
address that is none, an unknown kind, a code given twice) is reported by its row number and
left out, never written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.campaign_file import inline_yaml
from ..core.config import EMAIL, UNIT_CODE
from ..core.labels import normalize_label
from .readers import read_sheets

#: Header wordings per column (normalised as labels are: no spaces, no brackets).
COLUMNS = {
    "name": ("单位名称", "单位", "名称", "报送单位", "单位全称"),
    "code": ("单位代码", "代码", "编码", "单位编码", "统一社会信用代码"),
    "kind": ("单位类型", "类型", "类别", "层级"),
    "contact": ("联系人", "联系人姓名", "姓名", "填报人"),
    "title": ("职务", "联系人职务"),
    "email": ("电子邮箱", "邮箱", "e-mail", "email", "电子邮件", "联系人邮箱"),
    "phone": ("联系电话", "电话", "手机", "手机号码", "办公电话"),
    "supervisor": ("分管领导", "分管负责人", "分管负责同志"),
    "supervisor_email": ("分管领导邮箱", "分管负责人邮箱", "领导邮箱"),
}
KINDS = {"city": ("city", "市", "地市", "各市"), "zone": ("zone", "示范区", "开发区", "新区"),
         "department": ("department", "部门", "省直", "省直部门", "厅", "委", "局")}


@dataclass
class RosterUnit:
    code: str
    name: str
    kind: str
    contacts: list[dict] = field(default_factory=list)
    supervisor: dict | None = None
    row: int = 0  # the first row it came from (1-based, as the office's program shows it)


@dataclass
class Roster:
    units: list[RosterUnit]
    problems: list[str]  # "第N行：why"


def _column_of(label: object) -> str | None:
    text = normalize_label(label)
    return next((col for col, names in COLUMNS.items() if text in {normalize_label(n) for n in names}), None)


def _kind(text: str) -> str | None:
    text = text.strip().lower()
    for kind, words in KINDS.items():
        if text in words or any(text.endswith(w) for w in words if len(w) == 1 and len(text) > 1):
            return kind
    return None


def read_roster(path: Path) -> Roster:
    """The units of the roster's first sheet that has a recognisable header."""
    for sheet in read_sheets(path, path.name):
        for top, row in enumerate(sheet.rows[:10]):
            columns = {col: c for c, label in enumerate(row) if (col := _column_of(label)) and col}
            if {"name", "email"} <= columns.keys():
                return _units(sheet.rows, top, columns)
    return Roster([], [f"{path.name}：前10行中没有找到表头（至少需要“单位名称”和“电子邮箱”两列）"])


def _units(rows: list[list[object]], top: int, columns: dict[str, int]) -> Roster:
    units: dict[str, RosterUnit] = {}
    problems: list[str] = []
    last: dict[str, str] = {}
    for r in range(top + 1, len(rows)):
        line = r + 1
        cells = {col: ("" if rows[r][c] is None or c >= len(rows[r]) else str(rows[r][c]).strip())
                 for col, c in columns.items() if c < len(rows[r])}
        if not any(cells.values()):
            continue
        continued = not cells.get("name")  # a unit's further contact row: its cells merged down, or left blank
        for col in ("name", "code", "kind", "supervisor", "supervisor_email"):
            if cells.get(col):
                last[col] = cells[col]
            elif continued and last.get(col):
                cells[col] = last[col]
        name, email = cells.get("name", ""), cells.get("email", "").lower()
        if not name:
            problems.append(f"第{line}行：没有单位名称")
            continue
        code = cells.get("code") or ""
        if code and not UNIT_CODE.match(code):
            problems.append(f"第{line}行（{name}）：单位代码“{code}”只能由字母、数字、“-”或“_”组成")
            continue
        kind = _kind(cells.get("kind") or "") if cells.get("kind") else "department"
        if kind is None:
            problems.append(f"第{line}行（{name}）：单位类型“{cells['kind']}”不是 市/示范区/部门 之一")
            continue
        if not EMAIL.fullmatch(email):
            problems.append(f"第{line}行（{name}）：“{cells.get('email', '')}”不是电子邮箱")
            continue
        key = code or name
        unit = units.get(key)
        if unit is not None and unit.name != name:
            problems.append(f"第{line}行（{name}）：单位代码 {code} 已用于第{unit.row}行的{unit.name}")
            continue
        if unit is None:
            unit = units[key] = RosterUnit(code, name, kind, row=line)
        contact = {"name": cells.get("contact") or name, "email": email}
        for extra in ("title", "phone"):
            if cells.get(extra):
                contact[extra] = cells[extra]
        if contact["email"] not in {c["email"] for c in unit.contacts}:
            unit.contacts.append(contact)
        boss_email = (cells.get("supervisor_email") or "").lower()
        if boss_email and EMAIL.fullmatch(boss_email):
            unit.supervisor = {"name": cells.get("supervisor") or "分管负责同志", "email": boss_email}
    return Roster(list(units.values()), problems)


# ---------------------------------------------------------------------------- against units.yaml
@dataclass
class Merge:
    units: list[dict]  # every unit, units.yaml's order first, then the new ones
    added: list[str]
    changed: list[str]
    missing: list[str]  # in units.yaml, not in the roster: kept
    notes: list[str]


def merge_units(existing: list[dict], roster: Roster) -> Merge:
    """units.yaml's units (as dicts) updated from the roster: a unit matched by its code, else by
    its name or an alias; contacts (and the supervisor, when the roster gives one) from the
    roster; everything else kept. A new unit without a code gets the next free ``U0001``."""
    out = [dict(u) for u in existing]
    by_code = {str(u["code"]): u for u in out}
    by_name = {normalize_label(n): u for u in out for n in [u.get("name", ""), *u.get("aliases", [])]}
    seen: set[str] = set()
    added, changed, notes = [], [], []
    taken = set(by_code)
    for r in roster.units:
        unit = by_code.get(r.code) if r.code else by_name.get(normalize_label(r.name))
        if unit is None:
            code = r.code or next(f"U{i:04d}" for i in range(1, 10**6) if f"U{i:04d}" not in taken)
            taken.add(code)
            supervisor = r.supervisor or {"name": r.contacts[0]["name"], "email": r.contacts[0]["email"]}
            if r.supervisor is None:
                notes.append(f"{r.name}：名单中没有分管领导，暂以联系人代替，请补充")
            unit = {"code": code, "name": r.name, "kind": r.kind, "contacts": r.contacts, "supervisor": supervisor}
            out.append(unit)
            added.append(f"{r.name}（{code}）")
        else:
            before = dict(unit)
            known = {c.get("email"): c for c in unit.get("contacts", [])} | {c.get("name"): c for c in unit.get("contacts", [])}
            unit["contacts"] = [known.get(c["email"], known.get(c["name"], {})) | c for c in r.contacts]
            if r.supervisor:
                unit["supervisor"] = r.supervisor
            if r.name != unit["name"] and normalize_label(r.name) not in {normalize_label(a) for a in unit.get("aliases", [])}:
                unit["aliases"] = [*unit.get("aliases", []), r.name]
            if unit != before:
                changed.append(f"{unit['name']}（{unit['code']}）")
        seen.add(str(unit["code"]))
    missing = [f"{u['name']}（{u['code']}）" for u in out[:len(existing)] if str(u["code"]) not in seen]
    return Merge(out, added, changed, missing, notes)


def units_yaml(original: str, units: list[dict]) -> str:
    """units.yaml's text for *units*: the file's opening comments kept, then one entry per unit
    in the file's own style (one line per field, contacts as inline mappings)."""
    head = []
    for line in original.splitlines():
        if line.startswith("units:"):
            break
        head.append(line)
    out = head + ["units:"]
    for u in units:
        out.append(f"  - code: {json.dumps(str(u['code']), ensure_ascii=False)}")
        for key in ("name", "kind"):
            out.append(f"    {key}: {inline_yaml(u[key])}")
        for key in ("aliases", "delegates"):
            if u.get(key):
                out.append(f"    {key}: {inline_yaml(list(u[key]))}")
        out.append("    contacts:")
        out += [f"      - {inline_yaml(c)}" for c in u["contacts"]]
        out.append(f"    supervisor: {inline_yaml(u['supervisor'])}")
    return "\n".join(out) + "\n"


"""Validation of many returns at once: one frame, one pandera schema call per level.

Values are parsed cell by cell (full-width digits, units, 余/约, Chinese numerals), then the
whole batch is checked as one DataFrame (rows = submissions, columns = form fields). Each
failure becomes a :class:`Finding` naming the file, sheet, cell, value and what is expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from ..core.config import Form
from ..reading.extract import CellValue, cell_text
from ..reading.numbers import ParsedCount, parse_count

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    submission_id: int
    level: str  # error | warning
    file: str
    field: str | None
    label: str | None
    sheet: str | None
    cell: str | None
    value: str | None
    expected: str

    def text(self) -> str:
        """One line a submitter can act on: file, sheet!cell (label): value — what is expected."""
        where = f"《{self.file}》"
        if self.cell:
            where += f" {self.sheet}!{self.cell}" if self.sheet else f" {self.cell}"
        if self.label:
            where += f"（{self.label}）"
        value = f"填写为“{self.value}”，" if self.value not in (None, "") else ""
        return f"{where}：{value}{self.expected}"


@dataclass(frozen=True)
class ReturnRecord:
    """One parsed return, ready for batch validation."""

    submission_id: int
    file_name: str
    cells: dict[str, CellValue]
    explanation: str | None = None
    unit_code: str | None = None  # for the comparison with the unit's previous return
    counts: dict[str, ParsedCount] | None = None  # count cells already parsed (by a worker)


@dataclass(frozen=True)
class Previous:
    """The same units' accepted figures in an earlier campaign, for spotting jumps and drops."""

    campaign: str
    numbers: pd.DataFrame  # index unit code, columns count fields
    factor: float = 3.0  # warn above previous × factor or below previous ÷ factor
    minimum: float = 10.0  # ignore small numbers: 2 → 7 is no jump worth asking about


def _show(raw: object) -> str:
    if isinstance(raw, float) and raw == raw and raw.is_integer():
        raw = int(raw)  # spreadsheets hand back 5 as 5.0: show what the unit typed
    text = "" if raw is None else str(raw)
    return text if len(text) <= 60 else text[:57] + "…"


def _schemas(form: Form) -> tuple[pa.DataFrameSchema, pa.DataFrameSchema, pa.DataFrameSchema]:
    errors = {f.key: pa.Column(float, nullable=not f.required, required=False,
                               checks=[pa.Check.ge(0, error="应为非负整数")])
              for f in form.counts}
    warnings = {f.key: pa.Column(float, nullable=True, required=False,
                                 checks=[pa.Check.le(f.warn_above, error=f"超出常规范围（一般不超过{f.warn_above}），请核实或在“{form.explanation_label}”中说明")])
                for f in form.counts if f.warn_above is not None}
    texts = {f.key: pa.Column(object, nullable=not f.required, required=False,
                              checks=[pa.Check(lambda s, n=f.max_length: s.str.len() <= n,
                                               element_wise=False,
                                               error=f"内容过长，应不超过{f.max_length}字")]
                              if f.max_length else [])
             for f in form.texts}
    return (pa.DataFrameSchema(errors, coerce=False), pa.DataFrameSchema(warnings),
            pa.DataFrameSchema(texts))


def _failures(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        fc = exc.failure_cases
        return fc[fc["index"].notna()]
    return pd.DataFrame(columns=["column", "check", "failure_case", "index"])


def validate_returns(records: list[ReturnRecord], form: Form, previous: Previous | None = None,
                     ) -> tuple[pd.DataFrame, pd.DataFrame, list[Finding]]:
    """Check a batch of returns; return (numbers, texts, findings).

    ``numbers``: index submission id, one float column per count field (NaN = blank or bad);
    ``texts``: one column per text field.
    """
    findings: list[Finding] = []
    by_id = {r.submission_id: r for r in records}
    labels = {f.key: f.label for f in form.fields}

    def finding(sid: int, level: str, key: str | None, expected: str, value: object = None) -> Finding:
        cell = by_id[sid].cells.get(key) if key else None
        shown = _show(cell.raw if cell is not None and value is None else value)
        return Finding(sid, level, by_id[sid].file_name, key, labels.get(key) if key else None,
                       cell.sheet if cell else None, cell.cell if cell else None, shown or None, expected)

    numbers: dict[str, list[float]] = {f.key: [] for f in form.counts}
    for r in records:
        for f in form.counts:
            cell = r.cells.get(f.key)
            parsed = r.counts[f.key] if r.counts is not None else parse_count(
                cell.raw if cell is not None else None)
            if parsed.error:
                findings.append(finding(r.submission_id, ERROR, f.key, f"{parsed.error}，应为非负整数"))
            elif parsed.approximate:
                findings.append(finding(r.submission_id, WARNING, f.key,
                                        f"为约数，已按{parsed.value}计；如需精确数字请更正"))
            if cell is None and f.required:
                findings.append(Finding(r.submission_id, ERROR, r.file_name, f.key, f.label, None, None,
                                        None, f"未找到“{f.label}”一项，请使用下发的报表或补充该项"))
            numbers[f.key].append(float("nan") if parsed.value is None or parsed.error else float(parsed.value))
    ids = [r.submission_id for r in records]
    num = pd.DataFrame(numbers, index=pd.Index(ids, name="submission_id"), dtype="float64")
    txt = pd.DataFrame({f.key: [cell_text(r.cells.get(f.key)) for r in records] for f in form.texts},
                       index=num.index, dtype=object)

    parse_failed = {(x.submission_id, x.field) for x in findings if x.level == ERROR}
    err_schema, warn_schema, text_schema = _schemas(form)
    for level, schema, frame in ((ERROR, err_schema, num), (WARNING, warn_schema, num),
                                 (ERROR, text_schema, txt)):
        for row in _failures(schema, frame).itertuples(index=False):
            sid, key = int(row.index), row.column
            if (sid, key) in parse_failed:
                continue  # already told: the cell was not a number at all
            if row.check == "not_nullable":
                findings.append(finding(sid, ERROR, key, "必填项未填写"))
            else:
                findings.append(finding(sid, level, key, str(row.check)))  # shows the cell as typed
    findings.extend(_cross_checks(num, form, by_id))
    if previous is not None:
        findings.extend(_compare_previous(num, form, by_id, previous))
    findings.sort(key=lambda f: (f.submission_id, f.level != ERROR, list(labels).index(f.field)
                                 if f.field in labels else -1))
    return num, txt, findings


def _compare_previous(num: pd.DataFrame, form: Form, by_id: dict[int, ReturnRecord],
                      previous: Previous) -> list[Finding]:
    """Warn where a figure moved by more than ``factor`` against the unit's previous return."""
    units = pd.Series({sid: r.unit_code for sid, r in by_id.items()}, dtype=object)
    keys = [k for k in num.columns if k in previous.numbers.columns]
    before = previous.numbers.reindex(units.reindex(num.index).to_numpy())[keys]
    before.index = num.index
    now = num[keys]
    big = (now.where(now >= previous.minimum) > before * previous.factor) & (before >= 0)
    small = (before >= previous.minimum) & (now < before / previous.factor)
    out = []
    labels = {f.key: f.label for f in form.counts}
    for sid, key in zip(*((big | small).to_numpy().nonzero())):
        sid, key = int(num.index[sid]), keys[key]
        r = by_id[sid]
        cell = r.cells.get(key)
        out.append(Finding(sid, WARNING, r.file_name, key, labels[key], cell.sheet if cell else None,
                           cell.cell if cell else None, _show(cell.raw) if cell else None,
                           f"与上次（{previous.campaign}）的{before.at[sid, key]:.0f}相比变化超过{previous.factor:g}倍，"
                           f"请核实或在“{form.explanation_label}”中说明"))
    return out


def _cross_checks(num: pd.DataFrame, form: Form, by_id: dict[int, ReturnRecord]) -> list[Finding]:
    out = []
    labels = {f.key: f.label for f in form.counts}
    for check in form.checks:
        if not len(num):
            break
        used = [k for k in num.columns if re.search(rf"\b{k}\b", check.rule)]
        held = num.eval(check.rule).astype(bool)
        # a rule over blank values neither holds nor fails: only definite failures warn
        failed = num.index[~held & num[used].notna().all(axis=1)]
        for sid in failed:
            shown = "，".join(f"{labels[k]} {num.at[sid, k]:.0f}" for k in used)
            out.append(Finding(int(sid), WARNING, by_id[int(sid)].file_name, None, None, None, None,
                               shown, check.message))
    return out

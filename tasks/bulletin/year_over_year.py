"""This round against the campaign's ``previous`` one: totals, like-for-like by default.

Like-for-like (``same_units``) compares the units that returned in both rounds only, so a unit
new this year or missing last year never shows as growth or decline; ``all_units`` compares
the whole of each round. A change is written ``比上年增长12.3%``, ``比上年下降4.1%`` or
``与上年持平`` (it rounds to 0.0%); nothing at all when there is no base to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pandas as pd

from ..core.formatting import percent_half_up


@dataclass(frozen=True)
class Change:
    """One figure against its base; ``percent`` is None when there is none (base absent or 0)."""

    percent: Decimal | None
    absent: bool = False  # the unit did not return in the previous round

    @property
    def short(self) -> str:
        """For tables: ``增长12.3%`` / ``下降4.1%`` / ``持平`` / ``—`` / ``上年未报``."""
        if self.absent:
            return "上年未报"
        if self.percent is None:
            return "—"
        if self.percent == 0:
            return "持平"
        return f"{'增长' if self.percent > 0 else '下降'}{abs(self.percent):.1f}%"

    @property
    def phrase(self) -> str:
        """For prose: ``比上年增长12.3%`` / ``比上年下降4.1%`` / ``与上年持平`` / ``上年未报送`` / empty."""
        if self.absent:
            return "上年未报送"
        if self.percent is None:
            return ""
        return "与上年持平" if self.percent == 0 else f"比上年{self.short}"


def change(current: float | None, base: float | None) -> Change:
    """*current* against *base* (blank is no figure; a base of 0 gives no percentage)."""
    if current is None or base is None or pd.isna(current) or pd.isna(base) or base == 0:
        return Change(None)
    return Change(percent_half_up(current - base, base))


@dataclass(frozen=True)
class YearOverYear:
    """Both rounds' totals on the chosen basis, and who is in it."""

    previous: str  # the previous campaign's id
    basis: str  # same_units | all_units
    both: int  # units with an accepted return in both rounds
    new: int  # this round only
    dropped: int  # the previous round only
    current: dict[str, int]  # field key -> this round's total on the basis
    base: dict[str, int]  # field key -> the previous round's total on the basis
    changes: dict[str, Change]

    @property
    def coverage(self) -> str:
        """Who the comparison covers, as the bulletin says it."""
        if self.basis == "all_units":
            return f"本年报送{self.both + self.new}家，上年报送{self.both + self.dropped}家"
        text = f"其中{self.both}家单位两年均报送"
        aside = [f"本年新报送{self.new}家" if self.new else "",
                 f"上年报送而本年未报{self.dropped}家" if self.dropped else ""]
        aside = [a for a in aside if a]
        return text + (f"；{'、'.join(aside)}，不计入比较" if aside else "")

    def sentence(self, labels: dict[str, str], coverage: bool = True) -> str:
        """``与上年同口径相比（其中23家单位两年均报送），张贴宣传画比上年增长12.3%，……。`` over the
        fields of *labels* (key -> label) that have a change to tell; the part in brackets only
        with *coverage*."""
        parts = [f"{labels[k]}{self.changes[k].phrase}" for k in labels if k in self.changes
                 and self.changes[k].phrase]
        if not parts:
            return ""
        lead = "与上年同口径相比" if self.basis == "same_units" else "与上年相比"
        return f"{lead}{f'（{self.coverage}）' if coverage else ''}，{'，'.join(parts)}。"


def compare_rounds(current: pd.DataFrame, previous: pd.DataFrame, previous_id: str,
                   basis: str = "same_units") -> YearOverYear | None:
    """Totals of *current* and *previous* (index unit, columns field keys; blank counts 0) on
    *basis*, for the fields both rounds have. None when no unit returned in both (same_units)
    or the previous round has no figures."""
    both = current.index.intersection(previous.index)
    if previous.empty or (basis == "same_units" and both.empty):
        return None
    keys = [k for k in current.columns if k in previous.columns]
    same = basis == "same_units"
    now = (current.loc[both, keys] if same else current[keys]).fillna(0).sum().round().astype("int64")
    then = (previous.loc[both, keys] if same else previous[keys]).fillna(0).sum().round().astype("int64")
    return YearOverYear(
        previous=previous_id, basis=basis, both=len(both), new=len(current.index.difference(previous.index)),
        dropped=len(previous.index.difference(current.index)),
        current={k: int(now[k]) for k in keys}, base={k: int(then[k]) for k in keys},
        changes={k: change(int(now[k]), int(then[k])) for k in keys})


def unit_changes(current: pd.DataFrame, previous: pd.DataFrame, keys: list[str]) -> dict[str, dict[str, Change]]:
    """Each unit's change per key against its own previous return; a unit absent from the
    previous round gets none (it is never +100%)."""
    out: dict[str, dict[str, Change]] = {}
    for code in current.index:
        if code not in previous.index:
            continue
        out[code] = {k: change(current.at[code, k], previous.at[code, k] if k in previous.columns else None)
                     for k in keys if k in current.columns}
    return out

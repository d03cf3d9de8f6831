"""Who returned on time, late, corrected after the deadline, or not at all; 报送率 and 及时率.

Each expected unit is in one state, from when its returns came (``tasks.core.rounds``):

- ``on_time``: the return that counts arrived by the deadline;
- ``corrected``: a return arrived by the deadline, the one that counts after it;
- ``late``: its first return arrived after the deadline (how late: calendar days in the
  campaign's timezone, hours on the deadline's own day);
- ``missing``: no accepted return.

报送率 = units with an accepted return ÷ expected; 及时率 = units that returned by the deadline
(on time or corrected later) ÷ expected.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from ..core.formatting import percent_text
from ..core.rounds import Timeline

ON_TIME, CORRECTED, LATE, MISSING = "on_time", "corrected", "late", "missing"
LABELS = {ON_TIME: "按时报送", CORRECTED: "截止后更正", LATE: "逾期报送", MISSING: "未报送"}


@dataclass(frozen=True)
class UnitTimeliness:
    state: str  # on_time | corrected | late | missing
    received: dt.datetime | None  # when the return that counts arrived
    late_by: str = ""  # 3天 / 5小时 (late only)
    late_hours: float = 0.0

    @property
    def label(self) -> str:
        """按时报送 / 逾期3天报送 / 截止前已报送，截止后更正 / 未报送."""
        if self.state == LATE:
            return f"逾期{self.late_by}报送"
        return "截止前已报送，截止后更正" if self.state == CORRECTED else LABELS[self.state]


def late_by(received: dt.datetime, deadline: dt.datetime, tz: ZoneInfo) -> str:
    """How late, as people count it: calendar days past the deadline's day, else hours."""
    days = (received.astimezone(tz).date() - deadline.astimezone(tz).date()).days
    if days >= 1:
        return f"{days}天"
    return f"{max(1, math.ceil((received - deadline).total_seconds() / 3600))}小时"


def classify(codes: list[str], timelines: dict[str, Timeline], deadline: dt.datetime,
             tz: ZoneInfo) -> dict[str, UnitTimeliness]:
    """Every expected unit's state."""
    out = {}
    for code in codes:
        t = timelines.get(code)
        if t is None or t.accepted is None:
            out[code] = UnitTimeliness(MISSING, None)
        elif t.first > deadline:
            out[code] = UnitTimeliness(LATE, t.accepted, late_by(t.first, deadline, tz),
                                       (t.first - deadline).total_seconds() / 3600)
        else:
            out[code] = UnitTimeliness(ON_TIME if t.accepted <= deadline else CORRECTED, t.accepted)
    return out


@dataclass(frozen=True)
class RoundTimeliness:
    """One round's counts and rates."""

    expected: int
    counts: dict[str, int]  # state -> units
    longest_late: str  # 3天 (empty when nobody was late)

    @property
    def reported(self) -> int:
        return self.expected - self.counts[MISSING]

    @property
    def by_deadline(self) -> int:
        return self.counts[ON_TIME] + self.counts[CORRECTED]

    @property
    def reporting_rate(self) -> str:
        return percent_text(self.reported, self.expected)

    @property
    def on_time_rate(self) -> str:
        return percent_text(self.by_deadline, self.expected)


def summarize(states: dict[str, UnitTimeliness]) -> RoundTimeliness:
    counts = {s: 0 for s in LABELS}
    for u in states.values():
        counts[u.state] += 1
    late = [u for u in states.values() if u.state == LATE]
    longest = max(late, key=lambda u: u.late_hours).late_by if late else ""
    return RoundTimeliness(len(states), counts, longest)


def table(this: RoundTimeliness, previous: RoundTimeliness | None) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(headers, rows) of the bulletin's timeliness table; the 上年 column when there is one."""
    def column(r: RoundTimeliness) -> list[str]:
        late = f"{r.counts[LATE]}" + (f"（最长逾期{r.longest_late}）" if r.longest_late else "")
        return [str(r.expected), str(r.counts[ON_TIME]), str(r.counts[CORRECTED]), late,
                str(r.counts[MISSING]), r.reporting_rate, r.on_time_rate]
    names = ["应报单位", "按时报送", "截止后更正", "逾期报送", "未报送", "报送率", "及时率"]
    columns = [column(this)] + ([column(previous)] if previous else [])
    headers = ("项目", "本次") + (("上年",) if previous else ())
    return headers, tuple((name, *(c[i] for c in columns)) for i, name in enumerate(names))


def sentence(this: RoundTimeliness, previous: RoundTimeliness | None) -> str:
    """本次应报25家，已报24家，报送率96.0%；截止前报送23家，及时率92.0%（上年分别为…）。"""
    text = (f"本次应报{this.expected}家，已报{this.reported}家，报送率{this.reporting_rate}；"
            f"截止前报送{this.by_deadline}家，及时率{this.on_time_rate}")
    if previous:
        text += f"（上年分别为{previous.reporting_rate}和{previous.on_time_rate}）"
    return text + "。"

"""Which reminder tier is due, and which units still owe an accepted return."""

from __future__ import annotations

import datetime as dt

from ..core.config import Calendar, Config, ReminderTier, Unit
from ..core.ledger import ACCEPTED, NEEDS_EXPLANATION, REJECTED, Ledger
from .status import unit_state

_NOTES = {REJECTED: "贵单位最近一次报送的报表未通过审核，请按回执修改后重新报送。",
          NEEDS_EXPLANATION: "贵单位的报表需要补充情况说明，请按回执说明后重新报送。"}


def due_tier(calendar: Calendar, now: dt.datetime) -> ReminderTier | None:
    """The latest tier whose moment (deadline + offset) has come, while the campaign is open.

    A run that missed a tier sends only the latest one due, never a burst of old ones."""
    if now < calendar.opens_at or now > calendar.closes_at:
        return None
    due = [t for t in calendar.reminders if calendar.deadline_at + t.delta <= now]
    return max(due, key=lambda t: t.delta) if due else None


def units_to_remind(ledger: Ledger, config: Config, codes: list[str] | None = None) -> list[tuple[Unit, str]]:
    """Units (all, or the given codes) without an accepted return, with a note on their state."""
    by_unit: dict[str, list] = {}
    for sub in ledger.submissions(config.campaign.id):
        if sub.unit_code and sub.version is not None:
            by_unit.setdefault(sub.unit_code, []).append(sub)
    wanted = set(codes) if codes else None
    out = []
    for i, code in enumerate(config.units.codes):  # a unit is made only for those reminded
        if wanted is not None and code not in wanted:
            continue
        state = unit_state(by_unit.get(code, []))
        if state != ACCEPTED:
            out.append((config.units[i], _NOTES.get(state, "")))
    return out

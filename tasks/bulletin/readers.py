"""What the bulletin tells its readers beyond this round's totals, gathered from the ledger:
the previous round's figures (year over year), every unit's timeliness in this round and the
previous one. ``compile`` builds the content from it and fingerprints it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import pandas as pd

from ..core.config import Config, ConfigError, load_config
from ..core.ledger import Ledger
from ..core.rounds import latest_accepted_numbers, unit_timelines
from .timeliness import RoundTimeliness, UnitTimeliness, classify, summarize
from .year_over_year import Change, YearOverYear, compare_rounds, unit_changes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readers:
    previous: pd.DataFrame | None  # the previous round's latest accepted figures, index unit code
    comparison: YearOverYear | None  # totals on the campaign's basis
    changes: dict[str, dict[str, Change]]  # unit -> key -> change against its own previous return
    states: dict[str, UnitTimeliness]  # every expected unit, this round
    this_round: RoundTimeliness
    previous_round: RoundTimeliness | None

    def digest(self) -> str:
        """Everything here that can change what the bulletin says."""
        previous = None if self.previous is None else self.previous.sort_index().to_json()
        states = {c: [u.state, u.received.isoformat() if u.received else None, u.late_by]
                  for c, u in sorted(self.states.items())}
        rounds = [None if r is None else [r.expected, r.counts, r.longest_late]
                  for r in (self.this_round, self.previous_round)]
        text = json.dumps([previous, states, rounds], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def round_timeliness(ledger: Ledger, config: Config) -> dict[str, UnitTimeliness]:
    cal = config.campaign.calendar
    return classify(list(config.units.codes), unit_timelines(ledger, config.campaign.id),
                    cal.deadline_at, cal.tz)


def gather(ledger: Ledger, config: Config, numbers: pd.DataFrame) -> Readers:
    """*numbers*: this round's merged figures (index unit code, columns count keys)."""
    camp, b = config.campaign, config.campaign.bulletin
    states = round_timeliness(ledger, config)
    previous = comparison = previous_round = None
    changes: dict[str, dict[str, Change]] = {}
    if camp.previous and b.year_over_year:  # off: no 上年 anywhere in the bulletin
        previous = latest_accepted_numbers(ledger, camp.previous)
        if previous.empty:  # that round never ran on this ledger
            previous = None
    if previous is not None:
        comparison = compare_rounds(numbers, previous, camp.previous, b.compare_basis)
        changes = unit_changes(numbers, previous, [f.key for f in camp.form.counts])
        previous_round = _previous_round(ledger, config)
    return Readers(previous, comparison, changes, states,
                   summarize(states), previous_round)


def _previous_round(ledger: Ledger, config: Config) -> RoundTimeliness | None:
    """The previous campaign's rates, when its configuration still loads (its units and
    deadline); otherwise the bulletin goes without them and the log says why."""
    try:
        previous = load_config(config.directory, config.campaign.previous)
    except ConfigError as exc:
        log.warning("上一轮 %s 的配置无法读取，简讯不列上年报送率：%s", config.campaign.previous, exc)
        return None
    cal = previous.campaign.calendar
    timelines = unit_timelines(ledger, previous.campaign.id)
    return summarize(classify(list(previous.units.codes), timelines, cal.deadline_at, cal.tz))

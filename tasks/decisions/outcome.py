"""What happened to one submission: the record its receipt, the run's summary and the
coordinators' notice are built from (kept light: building a receipt imports no reader)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..core.ledger import QUARANTINED


@dataclass
class Outcome:
    """What happened to one submission, for its receipt and the run's summary."""

    submission_id: int
    name: str
    state: str
    unit_code: str | None = None
    sender: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    earlier_still_counts: int | None = None  # version of an earlier accepted return that stays
    earlier_replaced: bool = False  # this accepted return superseded an earlier one
    version: int | None = None
    late: bool = False
    explanation: str | None = None
    reason: str | None = None  # quarantine reason
    notes: list[str] = field(default_factory=list)  # told to the submitter, no action needed
    flagged: list[str] = field(default_factory=list)  # narrative fields held back for review
    failure: str | None = None  # an unexpected error while reading it (the coordinators are told)
    received_at: dt.datetime | None = None

    def attention(self) -> list[str]:
        """What the coordinators are told about this submission (lines of their notice)."""
        head = f"第{self.submission_id}号《{' '.join(self.name.split())}》"
        lines = [f"{head}：{self.reason}"] if self.state == QUARANTINED else []
        if self.failure:
            lines.append(f"{head}处理时出错（{self.failure}），文件已归档，请人工查看")
        if self.flagged:
            lines.append(f"{head}（{self.unit_code}）的叙述含疑似广告内容，暂未编入简讯；"
                         f"审核后可用 bulletin review CAMPAIGN {self.unit_code} --accept 采用")
        return lines

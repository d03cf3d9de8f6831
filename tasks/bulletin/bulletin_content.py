"""What a bulletin says, independent of its format.

``compile`` builds one :class:`BulletinContent` from the merged returns; the HTML, text and
Markdown templates and the DOCX writer all render that same object.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Story:
    """What one unit did, from its narrative fields."""

    unit_code: str
    unit_name: str
    kind: str  # city | zone | department | district
    activities: str
    highlights: str = ""


@dataclass(frozen=True)
class Figure:
    """One counted item: exact total for tables, rounded text (``32200余``) for prose."""

    key: str
    label: str  # 张贴宣传画
    unit: str  # 套
    exact: int
    prose: str  # 32200余
    section: str = "activity"  # activity | media
    compare: tuple[str, ...] = ()  # cells under BulletinContent.compare_headers (year over year)
    change: object = None  # its year_over_year.Change (``.short`` for tables, ``.phrase`` for prose)


@dataclass(frozen=True)
class UnitRow:
    """One unit's row in the per-unit table (exact values, in form order)."""

    unit_code: str
    unit_name: str
    values: tuple[int | None, ...]
    late: bool = False  # marked only in the 通报 style (name_units)
    changes: dict = field(default_factory=dict)  # key -> year_over_year.Change, for BulletinContent.change_keys


@dataclass(frozen=True)
class Photo:
    path: Path  # file inside the bulletin folder (images/...)
    caption: str
    unit_name: str
    cid: str  # Content-ID used when the HTML goes out by mail
    unit_code: str = ""


@dataclass(frozen=True)
class Recipients:
    """One line of the footer block: 报/送/发 and who is on it."""

    role: str  # 报 | 送 | 发
    names: tuple[str, ...]


@dataclass(frozen=True)
class BulletinContent:
    campaign_id: str
    version: int
    name: str  # 工作简讯
    issue: int  # 第N期
    title: str
    issuer: str
    date: dt.date
    date_text: str  # 2023年10月9日 (no leading zeros)
    lead: str
    stories_regions: tuple[Story, ...]  # cities and zones
    stories_departments: tuple[Story, ...]
    figures: tuple[Figure, ...]  # province totals, form order
    totals_sentence: str  # 全省各级公共机构共张贴宣传画32200余套、…… (全市 … in a city's round)
    media_sentence: str
    expected: int
    reported: int
    completeness_sentence: str  # 应报24家，已报22家……
    missing_names: tuple[str, ...]
    table_headers: tuple[str, ...]  # per-unit table column labels (with units)
    unit_rows: tuple[UnitRow, ...]
    photos: tuple[Photo, ...] = ()
    recipients: tuple[Recipients, ...] = ()
    copies: int = 0  # 共印N份
    generated_at: str = ""
    # year over year (empty when the campaign has no previous round or turns it off)
    totals_change: str = ""  # 与上年同口径相比（其中23家单位两年均报送），张贴宣传画比上年增长12.3%，……
    media_change: str = ""
    compare_headers: tuple[str, ...] = ()  # extra columns of the totals tables
    change_keys: tuple[str, ...] = ()  # per-unit table: a 比上年 column after each of these
    # timeliness (empty when switched off)
    timeliness_headers: tuple[str, ...] = ()
    timeliness_rows: tuple[tuple[str, ...], ...] = ()
    personal: tuple = ()  # PersonalBlock per expected unit (tasks.bulletin.personal)
    charts: tuple = ()  # tasks.bulletin.charts.Chart, each placed where its section says
    extra: dict = field(default_factory=dict)
    area: str = "全省"  # 全省 | 全市 …: the whole the totals are of
    regions_heading: str = "各市及沈抚示范区"  # the stories of the regions (各区县 in a city's round)
    departments_heading: str = "省直机关"  # 市直机关 in a city's round

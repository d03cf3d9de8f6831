"""Campaign configuration: units, distribution lists and campaigns, validated up front.

Everything under ``config/`` is loaded into pydantic models before any step runs. A bad file
raises :class:`ConfigError` naming the file, the key and the reason (the CLI exits 2).

:func:`load_config` keeps what it loaded for the life of the process: loading an unchanged
configuration again returns the same (immutable) :class:`Config`. With ``cache_dir`` a large
YAML file's parsed data is also kept on disk, keyed by its content, so a new process need
not parse a ``units.yaml`` of thousands of units again: the other files' data is validated
again on every load; ``units.yaml``'s is kept as validated (keyed by the unit model too), and a
unit is validated again whenever it is made from its row (:mod:`.unit_list`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import re
import time
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .durable import temp_tag
from .unit_list import UnitList, UnitsByCode
from .yaml_items import NotAList, list_items

CAMPAIGN_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
UNIT_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
FIELD_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
EMAIL = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+")
_DURATION = re.compile(r"^([+-]?)(\d+)\s*([dhm])$")


class ConfigError(Exception):
    """A configuration file is unusable: ``file``, ``key`` and ``reason`` say where and why.
    ``every`` holds all the flaws found with it (this one first), for ``bulletin check``."""

    def __init__(self, file: Path | str, key: str, reason: str, every: list[ConfigError] | None = None):
        self.file, self.key, self.reason = str(file), key, reason
        self.every = every or [self]
        super().__init__(f"配置错误 config error: {self.file}: {key or '(file)'}: {reason}")


def _raise_all(problems: list[ConfigError]) -> None:
    """Raise the first problem, carrying them all."""
    if problems:
        first = problems[0]
        raise ConfigError(first.file, first.key, first.reason, problems)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_offset(text: str | int) -> timedelta:
    """``-3d``, ``0d``, ``+12h``, ``30m`` → timedelta (relative to a calendar date)."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"'{text}' is not a duration like -3d, +12h or 30m")
    sign = -1 if m.group(1) == "-" else 1
    n = int(m.group(2))
    unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(3)]
    return sign * timedelta(**{unit: n})


# ---------------------------------------------------------------- units and lists
class Contact(_Model):
    name: str
    email: str
    title: str | None = None
    phone: str | None = None

    @field_validator("email")
    @classmethod
    def _looks_like_email(cls, v: str) -> str:
        if not v.isascii() or not EMAIL.fullmatch(v):
            raise ValueError(f"'{v}' is not an email address")
        return v.lower()


class Approver(Contact):
    """Someone who may decide on a bulletin at one level of the chain (e.g. 审核, then 签发)."""

    level: str = Field(min_length=1)


class Unit(_Model):
    code: str
    name: str
    kind: Literal["city", "zone", "department", "district"]  # district: 区县, in a city's round
    contacts: list[Contact] = Field(min_length=1)
    supervisor: Contact
    # default_factory: a literal [] default is deep-copied for every unit
    aliases: list[str] = Field(default_factory=list)
    delegates: list[str] = Field(default_factory=list)  # other addresses allowed to send this unit's return

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not UNIT_CODE.match(v):
            raise ValueError(f"unit code '{v}' must be 1-32 letters, digits, '-' or '_'")
        return v


class DistributionList(_Model):
    """A named set of recipients with its role in the DOCX footer (报/送/发)."""

    title: str
    role: Literal["报", "送", "发"]
    members: list[Contact] = []
    all_units: bool = False  # expands to the first contact of every unit of the campaign


# ---------------------------------------------------------------- campaign
class FormField(_Model):
    key: str
    label: str
    kind: Literal["count", "text"] = "count"
    unit: str | None = None  # 套, 个, 条 ... (counts only)
    synonyms: list[str] = []
    required: bool = True
    max_length: int | None = None  # text only
    warn_above: int | None = None  # plausibility ceiling: above it is a warning, not an error
    section: Literal["activity", "media", "narrative"] = "activity"
    help: str | None = None

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not FIELD_KEY.match(v):
            raise ValueError(f"field key '{v}' must be lowercase letters, digits and '_'")
        return v


class CrossCheck(_Model):
    """A sanity rule over one return, a pandas expression that must hold (else a warning)."""

    rule: str
    message: str


class Form(_Model):
    fields: list[FormField] = Field(min_length=1)
    checks: list[CrossCheck] = []
    explanation_label: str = "情况说明"

    @model_validator(mode="after")
    def _unique_keys(self) -> "Form":
        seen: set[str] = set()
        for f in self.fields:
            if f.key in seen:
                raise ValueError(f"field key '{f.key}' appears twice")
            seen.add(f.key)
        return self

    @property
    def counts(self) -> list[FormField]:
        return [f for f in self.fields if f.kind == "count"]

    @property
    def texts(self) -> list[FormField]:
        return [f for f in self.fields if f.kind == "text"]

    def field(self, key: str) -> FormField:
        return next(f for f in self.fields if f.key == key)


class ReminderTier(_Model):
    name: str
    offset: str  # relative to the deadline: -3d, -1d, 0d, +2d
    escalate: bool = False  # after the deadline: the unit's supervisor in Cc

    @field_validator("offset")
    @classmethod
    def _offset(cls, v: str) -> str:
        parse_offset(v)
        return v

    @property
    def delta(self) -> timedelta:
        return parse_offset(self.offset)


class Calendar(_Model):
    timezone: str = "Asia/Shanghai"
    opens: datetime
    deadline: datetime
    closes: datetime
    compile_at: datetime | None = None  # default: closes
    reminders: list[ReminderTier] = []
    collect_every_minutes: int = Field(default=60, ge=5)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone '{v}'") from None
        return v

    @model_validator(mode="after")
    def _order(self) -> "Calendar":
        if not (self.opens_at < self.deadline_at <= self.closes_at):
            raise ValueError("calendar must satisfy opens < deadline <= closes")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def at(self, moment: datetime) -> datetime:
        """A calendar moment as an aware datetime in the campaign's timezone."""
        return moment if moment.tzinfo else moment.replace(tzinfo=self.tz)

    @property
    def opens_at(self) -> datetime:
        return self.at(self.opens)

    @property
    def deadline_at(self) -> datetime:
        return self.at(self.deadline)

    @property
    def closes_at(self) -> datetime:
        return self.at(self.closes)

    @property
    def compile_moment(self) -> datetime:
        return self.at(self.compile_at or self.closes)


class BulletinSettings(_Model):
    name: str = "工作简讯"
    title: str
    issuer: str
    issue: int = 1
    date: dt.date | None = None  # default: the compile date in the campaign's timezone
    lead: str = ""
    area: str = "全省"  # how the bulletin names the whole: 全省合计, 占全省 (a city's round: 全市)
    significant_figures: int = Field(default=3, ge=1, le=6)
    copies: int | None = None  # 共印N份; default: the number of recipients
    distribution: list[str] = Field(min_length=1)  # list ids from lists.yaml
    max_mail_bytes: int = 10 * 1024 * 1024
    max_photos: int = Field(default=12, ge=0)  # gallery size; one per unit first
    max_table_rows: int = Field(default=100, ge=0)  # more units: the per-unit table goes as an .xlsx
    max_stories: int = Field(default=200, ge=0)  # narratives quoted in the bulletin, in unit order
    approval_timeout_hours: float = 48
    # who decides, level by level in the order of their first approver; none: anyone named
    approvers: list[Approver] = Field(default_factory=list)
    # what the readers get beyond the totals (README "What the bulletin tells its readers")
    year_over_year: bool = True  # compare with the campaign's `previous` round, when it names one
    compare_basis: Literal["same_units", "all_units"] = "same_units"  # like-for-like by default
    change_columns: list[str] = Field(default_factory=list)  # count keys with a 比上年 column per unit
    timeliness: bool = True  # the section on time / late / missing with 报送率 and 及时率
    name_units: bool = False  # 通报 style: late and missing units named in the bulletin
    personal_copies: bool = True  # each unit's copy opens with its own figures
    charts: bool = True  # the totals against the previous round, and chart_fields per unit
    chart_fields: list[str] = Field(default_factory=list, max_length=2)  # count keys charted unit by unit
    pdf: bool = True  # bulletin.pdf in the official look beside the DOCX
    attach_pdf: bool = False  # bulletin.pdf goes with the mail too

    @property
    def approval_levels(self) -> list[str]:
        return list(dict.fromkeys(a.level for a in self.approvers))


_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class Robot(_Model):
    """A WeCom (企业微信) or DingTalk (钉钉) group robot that also gets the coordinators' notices.
    The config names where its webhook URL and signing secret are (an environment variable or a
    Prefect Secret block), never the values themselves."""

    kind: Literal["wecom", "dingtalk"]
    url_env: str | None = None
    url_block: str | None = None
    secret_env: str | None = None  # DingTalk's 加签 secret (WeCom's robots sign nothing)
    secret_block: str | None = None

    @model_validator(mode="after")
    def _where(self) -> Robot:
        if (self.url_env is None) == (self.url_block is None):
            raise ValueError("name exactly one of url_env (an environment variable) or url_block (a Prefect Secret block)")
        if self.secret_env and self.secret_block:
            raise ValueError("name at most one of secret_env or secret_block")
        if self.kind == "wecom" and (self.secret_env or self.secret_block):
            raise ValueError("WeCom group robots have no signing secret: leave secret_env/secret_block out")
        for name in (self.url_env, self.secret_env):
            if name is not None and not _ENV_NAME.match(name):
                raise ValueError(f"'{name}' is not an environment variable name: put the URL or secret in the "
                                 f"environment and name the variable here, e.g. BULLETIN_DINGTALK_URL")
        return self


class ReportsTo(_Model):
    """Where this campaign's approved result goes as one unit's return (逐级上报): the parent
    campaign, the unit this office reports as there, and how the return travels: into the
    parent's drop folder (both on one host) or by mail to the parent's mailbox, from this
    office's sending address (which the parent must list as a contact of the unit)."""

    campaign: str
    unit: str
    config: str | None = None  # the parent's config folder, relative to this one (default: this one)
    drop_folder: str | None = None  # e.g. /srv/province/inbox/energy-week-2027
    mailbox: str | None = None  # e.g. returns@province.example.gov.cn

    @model_validator(mode="after")
    def _where(self) -> ReportsTo:
        if not CAMPAIGN_ID.match(self.campaign):
            raise ValueError(f"campaign id '{self.campaign}' must be lowercase letters, digits and dashes")
        if not UNIT_CODE.match(self.unit):
            raise ValueError(f"unit code '{self.unit}' must be letters, digits, '-' or '_' (at most 32)")
        if (self.drop_folder is None) == (self.mailbox is None):
            raise ValueError("name exactly one of drop_folder (the parent's, on this host) or mailbox (its address)")
        if self.mailbox is not None and not EMAIL.fullmatch(self.mailbox):
            raise ValueError(f"'{self.mailbox}' is not an email address")
        if self.drop_folder is not None and not Path(self.drop_folder).is_absolute():
            raise ValueError(f"drop_folder '{self.drop_folder}' must be an absolute path")
        return self


class Campaign(_Model):
    id: str
    name: str
    units: list[str] | Literal["all"] = "all"
    coordinators: list[Contact] = Field(min_length=1)
    calendar: Calendar
    form: Form
    bulletin: BulletinSettings
    english: bool = False  # add English beside the Chinese in messages
    previous: str | None = None  # an earlier campaign id: jumps and drops against it are warnings
    mailbox_folder: str | None = None  # IMAP folder of this campaign (default BULLETIN_IMAP_FOLDER)
    robots: list[Robot] = []  # group robots that also get the coordinators' notices
    change_factor: float = Field(default=3.0, gt=1)
    max_return_bytes: int = 20 * 1024 * 1024  # a return file above this is refused (kept in the archive)
    max_photo_bytes: int = 10 * 1024 * 1024
    max_file_bytes: int = 100 * 1024 * 1024  # refused at the door above this
    reports_to: ReportsTo | None = None  # the approved result goes upward as a unit's return

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not CAMPAIGN_ID.match(v):
            raise ValueError(f"campaign id '{v}' must be lowercase letters, digits and dashes")
        return v


class Config(BaseModel):
    """Units, lists and one campaign, cross-checked.

    One loaded Config is shared by every caller in the process (see :func:`load_config`):
    it is frozen and its unit lists are immutable :class:`UnitList` (compact: a unit is made
    when asked for; ``units.codes``, ``name_of`` and ``kind_of`` need none); treat ``lists`` as
    read-only too (``model_copy(update=...)`` gives a changed copy)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    directory: Path
    campaign_file: Path
    units_all: UnitList
    lists: dict[str, DistributionList]
    campaign: Campaign

    @cached_property
    def units(self) -> UnitList:
        """The units this campaign expects a return from, in configured order."""
        if self.campaign.units == "all":
            return self.units_all
        return self.units_all.subset(self.campaign.units)

    @cached_property
    def unit_by_code(self) -> UnitsByCode:
        return self.units.by_code

    def model_copy(self, *, update=None, deep: bool = False) -> "Config":
        """A copy whose derived views are computed again (they may depend on ``update``)."""
        copy = super().model_copy(update=update, deep=deep)
        for name in ("units", "unit_by_code"):
            copy.__dict__.pop(name, None)
        return copy


# ---------------------------------------------------------------- loading
# libyaml's loader when PyYAML has it: ~10x faster on a units.yaml of thousands
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# a parsed-data cache file is only worth it for big files; the tag changes with the parser
_DISK_CACHE_MIN_CHARS = 64 * 1024
_DISK_CACHE_TAG = f"bulletin-config-1 PyYAML {yaml.__version__} {_YAML_LOADER.__name__}"
_DISK_CACHE_KEEP = 4  # cached files per source file name
# a file changed this recently may change again within one file-system timestamp tick,
# unseen by its stat: such a configuration is not kept in memory
_RACY_NS = 2_000_000_000

Stamp = tuple[int, int, int, int, int]


@functools.cache
def _units_cache_tag() -> str:
    """Validated units are kept as they validate today: another unit model is another cache
    (computed when units are first loaded, not at import)."""
    schema = json.dumps(Unit.model_json_schema(), sort_keys=True).encode()
    return "bulletin-units-1 " + hashlib.sha256(schema).hexdigest()


def _stamp(path: Path) -> Stamp | None:
    """What identifies a file's version: device, inode, size, mtime and ctime (None if absent)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Reading:
    """One load's bookkeeping: the files it depended on, parsed data to keep on disk."""

    def __init__(self, cache_dir: Path | None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.sources: dict[Path, Stamp | None] = {}
        self.to_store: list[tuple[Path, str]] = []

    def depends_on(self, path: Path) -> None:
        self.sources.setdefault(path.absolute(), _stamp(path))

    def store(self) -> None:
        """Write the pending parsed-data cache files (best effort: a failure costs a re-parse)."""
        for target, text in self.to_store:
            tmp = target.with_name(f".{target.name}.{temp_tag()}.tmp")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, target)
                source_name = target.name.rsplit("-", 1)[0]
                kept = sorted(target.parent.glob(f"{source_name}-*{target.suffix}"), key=lambda q: q.stat().st_mtime_ns)
                for old in kept[:-_DISK_CACHE_KEEP]:
                    old.unlink(missing_ok=True)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)


def _parse_yaml(path: Path, text: str) -> object:
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, where, f"YAML syntax: {problem}") from None


def _as_json(data: object) -> str | None:
    """``data`` as JSON text when JSON gives it back exactly (no dates, non-text keys, NaN)."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == data else None


def _read_text(path: Path, reading: _Reading | None) -> str:
    if reading is not None:
        reading.depends_on(path)
    if not path.is_file():
        raise ConfigError(path, "", "file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text ({exc.reason})") from None


def _cache_file(reading: _Reading | None, path: Path, text: str, tag: str, suffix: str) -> Path | None:
    """Where a big file's parsed data is kept (by content), or None when it is not kept."""
    if reading is None or reading.cache_dir is None or len(text) < _DISK_CACHE_MIN_CHARS:
        return None
    digest = hashlib.sha256(f"{tag}\n{text}".encode()).hexdigest()
    return reading.cache_dir / f"{path.name}-{digest}{suffix}"


def _read_yaml(path: Path, reading: _Reading | None = None) -> object:
    """The file's data; a big file's parsed data is looked up in (and kept in) the disk cache."""
    text = _read_text(path, reading)
    cached = _cache_file(reading, path, text, _DISK_CACHE_TAG, ".json")
    if cached is None:
        return _parse_yaml(path, text)
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    data = _parse_yaml(path, text)
    as_json = _as_json(data)
    if as_json is not None:
        reading.to_store.append((cached, as_json))
    return data


def _validated(model: type[BaseModel], data: object, path: Path, prefix: str = ""):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            problems.append(ConfigError(path, f"{prefix}.{key}".strip(".") if prefix else key, err["msg"]))
        _raise_all(problems)


class _UnitsFile(_Model):
    units: list[Unit] = Field(min_length=1)


class _ListsFile(_Model):
    lists: dict[str, DistributionList] = Field(min_length=1)


def campaign_path(config_dir: Path, campaign: str) -> Path:
    """A campaign argument (a YAML path or an id under ``campaigns/``) → the file's path."""
    if campaign.endswith((".yaml", ".yml")) or "/" in campaign:
        return Path(campaign)
    if not CAMPAIGN_ID.match(campaign):
        raise ConfigError(config_dir / "campaigns", campaign,
                          "a campaign id is lowercase letters, digits and dashes")
    return config_dir / "campaigns" / f"{campaign}.yaml"


def list_campaigns(config_dir: Path) -> list[str]:
    return sorted(p.stem for p in (config_dir / "campaigns").glob("*.yaml"))


def load_units(config_dir: Path, reading: _Reading | None = None) -> UnitList:
    """``units.yaml`` validated unit by unit into a compact :class:`UnitList`.

    The file is read a list item at a time (:mod:`.yaml_items`); a file of another shape is
    read whole, for the same error messages. With a disk cache, a big file's validated units
    are kept (by content and by the unit model) for later processes."""
    path = config_dir / "units.yaml"
    text = _read_text(path, reading)
    cached = _cache_file(reading, path, text, _units_cache_tag(), ".jsonl")
    if cached is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return UnitList(cached.read_bytes().splitlines())
    try:
        rows = _validated_rows(path, list_items(text, "units"))
    except (NotAList, yaml.YAMLError):
        rows = _validated_rows(path, _whole_list(path, text))
    if cached is not None:
        reading.to_store.append((cached, b"\n".join(rows).decode("utf-8")))
    return UnitList(rows)


def _whole_list(path: Path, text: str) -> list:
    """The units of a file :func:`list_items` cannot stream (raising what the whole file's
    validation says when it is not ``{units: [...]}``)."""
    raw = _parse_yaml(path, text)
    listed = raw.get("units") if isinstance(raw, dict) else None
    if not isinstance(listed, list) or not listed or set(raw) != {"units"}:
        _validated(_UnitsFile, raw, path)
    return listed


def _validated_rows(path: Path, items) -> list[bytes]:
    """Each item validated as a Unit (every problem named), codes unique, as compact rows."""
    problems: list[ConfigError] = []
    rows: list[bytes] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        code = str(item.get("code")) if isinstance(item, dict) and item.get("code") is not None else None
        if code in seen:
            problems.append(ConfigError(path, f"units.{i}.code", f"unit code '{code}' appears twice"))
        seen.add(code)
        try:
            rows.append(UnitList.row(Unit.model_validate(item)))
        except ValidationError as exc:
            problems += [ConfigError(path, ".".join(["units", str(i), *(str(p) for p in err["loc"])]), err["msg"])
                         for err in exc.errors()]
    if not rows and not problems:
        _validated(_UnitsFile, {"units": []}, path)
    _raise_all(problems)
    return rows


def load_lists(config_dir: Path, reading: _Reading | None = None) -> dict[str, DistributionList]:
    path = config_dir / "lists.yaml"
    return _validated(_ListsFile, _read_yaml(path, reading), path).lists


def _check_rule_evaluates(rule: str, keys: set[str], path: Path, key: str) -> None:
    """A cross-field rule must be a comparison pandas can evaluate row by row."""
    import pandas as pd
    sample = pd.DataFrame({k: [1.0, 2.0] for k in keys})
    try:
        result = sample.eval(rule)
    except Exception as exc:  # noqa: BLE001 - any failure means the rule is unusable
        raise ConfigError(path, key, f"'{rule}' is not a valid expression ({type(exc).__name__})") from None
    if not isinstance(result, pd.Series) or result.dtype != bool:
        raise ConfigError(path, key, f"'{rule}' must be a comparison that is true or false, e.g. a >= b")


# (cwd, config_dir, campaign) -> (the files read with their stamps, the Config made from them)
_loaded: dict[tuple[str, str, str], tuple[tuple[tuple[Path, Stamp | None], ...], Config]] = {}


def load_config(config_dir: Path | str, campaign: str, *, cache_dir: Path | str | None = None) -> Config:
    """Load and cross-check everything a campaign step needs; raise ConfigError on any flaw.

    An unchanged configuration (every file it read has the same stamp, see :func:`_stamp`)
    gives back the Config loaded before in this process, without reading anything.
    ``cache_dir``: where to keep big files' parsed data (by content) for later processes."""
    config_dir = Path(config_dir)
    try:
        key = (os.getcwd(), str(config_dir), campaign)
    except OSError:  # the working directory is gone: no memo
        key = None
    known = _loaded.get(key) if key else None
    if known is not None and all(_stamp(p) == stamp for p, stamp in known[0]):
        return known[1]
    started = time.time_ns()
    reading = _Reading(cache_dir)
    config = _load_config(config_dir, campaign, reading)
    reading.store()
    settled = all(stamp is not None and max(stamp[3], stamp[4]) < started - _RACY_NS
                  for stamp in reading.sources.values())
    if key and settled:
        _loaded[key] = (tuple(reading.sources.items()), config)
    elif key:
        _loaded.pop(key, None)
    return config


def parent_config_dir(config_dir: Path | str, reports_to: ReportsTo) -> Path:
    """The parent campaign's config folder (``reports_to.config`` is relative to this one)."""
    return (Path(config_dir) / reports_to.config).resolve() if reports_to.config else Path(config_dir)


def load_config_afresh(config_dir: Path, campaign: str) -> Config:
    """:func:`load_config` reading every file again: no memo, no disk cache (``bulletin check``)."""
    return _load_config(Path(config_dir), campaign, _Reading(None))


def _load_config(config_dir: Path, campaign: str, reading: _Reading) -> Config:
    path = campaign_path(config_dir, campaign)
    units = load_units(config_dir, reading)
    lists = load_lists(config_dir, reading)
    raw = _read_yaml(path, reading)
    if isinstance(raw, dict):
        raw.setdefault("id", path.stem)
        if raw["id"] != path.stem:
            raise ConfigError(path, "id", f"'{raw['id']}' differs from the file name '{path.stem}'")
    camp = _validated(Campaign, raw, path)
    codes = set(units.codes)
    problems = []
    if camp.units != "all":
        problems += [ConfigError(path, f"units.{i}", f"unknown unit code '{code}' (not in units.yaml)")
                     for i, code in enumerate(camp.units) if code not in codes]
    problems += [ConfigError(path, f"bulletin.distribution.{i}", f"unknown list '{name}' (lists.yaml has: {', '.join(lists)})")
                 for i, name in enumerate(camp.bulletin.distribution) if name not in lists]
    if camp.previous is not None:
        previous = campaign_path(config_dir, camp.previous)
        reading.depends_on(previous)
        if not previous.is_file():
            problems.append(ConfigError(path, "previous", f"no campaign '{camp.previous}' under {config_dir / 'campaigns'}"))
    if camp.reports_to is not None:
        parent = campaign_path(parent_config_dir(config_dir, camp.reports_to), camp.reports_to.campaign)
        reading.depends_on(parent)
        if not parent.is_file():
            problems.append(ConfigError(path, "reports_to.campaign", f"no campaign file {parent}"))
        else:
            parent_units = load_units(parent.parent.parent, reading)
            if camp.reports_to.unit not in parent_units.by_code:
                problems.append(ConfigError(path, "reports_to.unit", f"'{camp.reports_to.unit}' is not a unit in "
                                                                     f"{parent.parent.parent / 'units.yaml'}"))
    keys = {f.key for f in camp.form.counts}
    problems += [ConfigError(path, f"bulletin.change_columns.{i}",
                             f"'{key}' is not a counted field of the form ({', '.join(sorted(keys))})")
                 for i, key in enumerate(camp.bulletin.change_columns) if key not in keys]
    problems += [ConfigError(path, f"bulletin.chart_fields.{i}",
                             f"'{key}' is not a counted field of the form ({', '.join(sorted(keys))})")
                 for i, key in enumerate(camp.bulletin.chart_fields) if key not in keys]
    for i, check in enumerate(camp.form.checks):
        names = set(re.findall(r"[a-z_][a-z0-9_]*", check.rule)) - {"and", "or", "not"}
        unknown = names - keys
        if unknown:
            problems.append(ConfigError(path, f"form.checks.{i}.rule", f"unknown field(s) {', '.join(sorted(unknown))}"))
            continue
        try:
            _check_rule_evaluates(check.rule, keys, path, f"form.checks.{i}.rule")
        except ConfigError as exc:
            problems.append(exc)
    _raise_all(problems)
    return Config(directory=config_dir, campaign_file=path, units_all=units, lists=lists,
                  campaign=camp)

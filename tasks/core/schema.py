"""The ledger's schema version, kept by Alembic migrations (``tasks/core/migrations/versions``).

A new ledger gets the latest schema directly and is stamped at the head revision. An existing
ledger must be at the head: an older one (or one made before migrations existed) raises
:class:`LedgerTooOld`, a newer one :class:`LedgerTooNew`. Nothing migrates on its own: only
:func:`upgrade` (``bulletin upgrade``) does, after backing up a SQLite ledger.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema of commit 6f01f0f, which ledgers made before migrations have


class SchemaError(Exception):
    """The ledger's schema does not fit this code; the message says what to do."""


class LedgerTooOld(SchemaError):
    pass


class LedgerTooNew(SchemaError):
    pass


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    return scripts().get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _has_tables(conn: Connection) -> bool:
    from .ledger import Base
    names = set(inspect(conn).get_table_names())
    return any(t in names for t in Base.metadata.tables)


def where(engine: Engine) -> str:
    """The ledger's location for messages (no password)."""
    return engine.url.database if engine.url.get_backend_name() == "sqlite" else engine.url.render_as_string()


def ensure_current(engine: Engine) -> None:
    """A new ledger: the latest schema, stamped. An existing one: check its revision."""
    from .ledger import Base, hold_on
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                # two first runs at once: the second waits here, then finds the schema made
                # (without it, PostgreSQL may show it the tables but not yet their revision)
                hold_on(conn, "schema")
                revision = current_revision(conn)
                if revision == head():
                    return
                if revision is None and not _has_tables(conn):
                    Base.metadata.create_all(conn)
                    MigrationContext.configure(conn).stamp(scripts(), "head")
                    return
            break
        except DBAPIError:  # e.g. a SQLite ledger created by another process meanwhile: look again
            if attempt == 2:
                raise
    raise _mismatch(engine, revision)


def _mismatch(engine: Engine, revision: str | None) -> SchemaError:
    if revision is None:
        return LedgerTooOld(f"账本 {where(engine)} 由未记录迁移版本的旧程序建立，需先升级：请运行 bulletin upgrade"
                            f"（SQLite 账本会先备份）。The ledger predates migrations: run `bulletin upgrade`.")
    try:
        scripts().get_revision(revision)
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown id
        return LedgerTooNew(f"账本 {where(engine)} 已由更新版本的程序升级（迁移版本 {revision}），本程序只支持到 {head()}："
                            f"请使用新版程序。The ledger is newer than this code.")
    return LedgerTooOld(f"账本 {where(engine)} 的结构版本 {revision} 早于本程序所需的 {head()}：请运行 bulletin upgrade"
                        f"（SQLite 账本会先备份）。The ledger is older than the code: run `bulletin upgrade`.")


@dataclass
class UpgradeReport:
    ledger: str
    before: str | None
    after: str
    applied: list[dict] = field(default_factory=list)
    backup: str | None = None

    def as_dict(self) -> dict:
        return {"ledger": self.ledger, "from": self.before or "unversioned", "to": self.after,
                "applied": self.applied, "backup": self.backup}


def upgrade(engine: Engine, now: dt.datetime) -> UpgradeReport:
    """Back up a SQLite ledger, then bring it to the head revision in one transaction."""
    with engine.connect() as conn:
        before = current_revision(conn)
        fresh = before is None and not _has_tables(conn)
    report = UpgradeReport(where(engine), before, head())
    if before == head():
        return report
    if before is not None and isinstance(problem := _mismatch(engine, before), LedgerTooNew):
        raise problem
    if fresh:
        ensure_current(engine)
        return report
    report.backup = _backup(engine, now)
    with engine.begin() as conn:
        start = before
        if start is None:
            _check_baseline(conn)
            MigrationContext.configure(conn).stamp(scripts(), BASELINE)
            report.applied.append({"revision": BASELINE, "what": "已有的表即基线结构，记为此版本 stamped"})
            start = BASELINE
        command.upgrade(alembic_config(conn), "head")
    for rev in reversed(list(scripts().iterate_revisions(head(), start))):
        if rev.revision != start:
            report.applied.append({"revision": rev.revision, "what": (rev.doc or "").strip()})
    return report


def _backup(engine: Engine, now: dt.datetime) -> str | None:
    """A consistent copy of a SQLite ledger beside it (``ledger-<time>.db``); None elsewhere
    (back up PostgreSQL with pg_dump first)."""
    if engine.url.get_backend_name() != "sqlite" or not engine.url.database:
        return None
    source = Path(engine.url.database)
    target = source.with_name(f"{source.stem}-{now:%Y%m%dT%H%M%S}{source.suffix}")
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return str(target)


@lru_cache(maxsize=1)
def _baseline_columns() -> dict[str, set[str]]:
    """Tables and columns of the baseline revision (built in memory from its migration)."""
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        found = inspect(conn)
        return {t: {c["name"] for c in found.get_columns(t)} for t in found.get_table_names()
                if t != "alembic_version"}


def _check_baseline(conn: Connection) -> None:
    """A ledger without a revision is taken as the baseline only if it has its tables and columns."""
    found = inspect(conn)
    tables = set(found.get_table_names())
    missing = [f"{t}.{c}" for t, cols in _baseline_columns().items()
               for c in (sorted(cols - {x["name"] for x in found.get_columns(t)}) if t in tables else ["*"])]
    if missing:
        raise SchemaError(f"账本 {where(conn.engine)} 早于第一个迁移版本，缺少：{', '.join(missing)}；"
                          f"无法自动升级。The ledger predates the baseline schema.")

"""The ledger: every request, submission, value, bulletin, approval and delivery, with who/when/why.

SQLite at ``<home>/ledger.db`` by default; ``BULLETIN_DB_URL`` points it at another database
(PostgreSQL). A new ledger gets the latest schema on first use; an existing one must be at the
latest migration (``tasks.core.schema``; ``bulletin upgrade`` migrates). Times are stored as aware
UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

# Submission states. received → accepted | rejected | needs_explanation | quarantined
# (→ superseded); refused = never parsed (too large); duplicate = same bytes seen before.
RECEIVED, ACCEPTED, REJECTED, NEEDS_EXPLANATION = "received", "accepted", "rejected", "needs_explanation"
QUARANTINED, SUPERSEDED, REFUSED, DUPLICATE = "quarantined", "superseded", "refused", "duplicate"
# Delivery states: sending (claimed, SMTP conversation under way), sent, failed (nothing went
# out, may be retried), uncertain (a crash between sending and sent: resent only on request),
# undeliverable (the server refused it for good, 5xx: tried again only to corrected recipients).
SENDING, SENT, FAILED, UNCERTAIN = "sending", "sent", "failed", "uncertain"
UNDELIVERABLE = "undeliverable"


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out (SQLite keeps no offset)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict: JSON, list: JSON}


class RequestRecord(Base):
    """One generated request workbook for a unit (the email itself is a Delivery)."""

    __tablename__ = "requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64), index=True)
    unit_code: Mapped[str] = mapped_column(String(32))
    workbook_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]


class Submission(Base):
    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64), index=True)
    unit_code: Mapped[str | None] = mapped_column(String(32), index=True)
    source: Mapped[str] = mapped_column(String(16))  # folder | imap
    original_name: Mapped[str] = mapped_column(Text)  # as the sender named it (display only)
    sender: Mapped[str | None] = mapped_column(String(320))
    received_at: Mapped[dt.datetime]
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)  # sha256 over its files
    state: Mapped[str] = mapped_column(String(24), default=RECEIVED, index=True)
    version: Mapped[int | None] = mapped_column(Integer)  # the unit's nth submission
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    errors: Mapped[list] = mapped_column(default=list)
    warnings: Mapped[list] = mapped_column(default=list)
    explanation: Mapped[str | None] = mapped_column(Text)
    identified_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[dt.datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)


class SubmissionFile(Base):
    __tablename__ = "submission_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # return|photo|zip|signed|narrative|other|refused
    name: Mapped[str] = mapped_column(Text)  # display name only, never used as a path
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    archive_path: Mapped[str | None] = mapped_column(Text)  # relative to <home>
    caption: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)  # why a file was refused (told to the sender)


class Value(Base):
    __tablename__ = "submission_values"
    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), index=True)
    field: Mapped[str] = mapped_column(String(64))
    number: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)
    cell: Mapped[str | None] = mapped_column(String(64))
    flag: Mapped[str | None] = mapped_column(String(16))  # spam: left out of the bulletin until reviewed


class Bulletin(Base):
    __tablename__ = "bulletins"
    __table_args__ = (UniqueConstraint("campaign", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))
    submission_ids: Mapped[list] = mapped_column(default=list)
    folder: Mapped[str] = mapped_column(Text)  # relative to <home>
    created_at: Mapped[dt.datetime]
    approval: Mapped[str] = mapped_column(String(16), default="pending")  # pending|approved|rejected
    approved_by: Mapped[str | None] = mapped_column(String(128))
    approved_at: Mapped[dt.datetime | None]
    approval_note: Mapped[str | None] = mapped_column(Text)


class ApprovalRecord(Base):
    """One approver's decision at one level of the chain on one bulletin version."""

    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))  # approved | rejected
    by: Mapped[str] = mapped_column(String(128))
    email: Mapped[str | None] = mapped_column(String(320))
    note: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime]


class Delivery(Base):
    """One message, keyed campaign × step × unit or recipient × version: sent at most once."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    campaign: Mapped[str] = mapped_column(String(64), index=True)
    step: Mapped[str] = mapped_column(String(32))  # request | reminder | receipt | bulletin | notice
    unit_code: Mapped[str | None] = mapped_column(String(32))
    recipients: Mapped[list] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[dt.datetime]
    sent_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # host:pid:start of the claiming process


class OwedMessage(Base):
    """A message the ledger owes: written in the same transaction as the decision that makes it
    due (a receipt, a line of the coordinators' notice), removed once it is sent. A run that dies
    between the decision and the sending leaves it here for the next run."""

    __tablename__ = "owed_messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # receipt | notice
    key: Mapped[str] = mapped_column(String(255), unique=True)  # the delivery key it is sent under
    submission_id: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict] = mapped_column(default=dict)  # what the message is built from
    created_at: Mapped[dt.datetime]


class Event(Base):
    """The audit trail: who did what, when, and why."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime]
    campaign: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(320))  # system, a coordinator's name, a sender's address
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text)


def audit_event(campaign: str, action: str, *, actor: str = "system", subject: str | None = None,
          detail: object = None, at: dt.datetime) -> Event:
    """An audit-trail row, to be added in the same session as the change it records, so that
    both commit together or neither does."""
    text = detail if isinstance(detail, str) or detail is None else json.dumps(detail, ensure_ascii=False)
    return Event(at=at, campaign=campaign, actor=actor, action=action, subject=subject, detail=text)


#: The columns of an audit-trail row written as a plain tuple (:func:`bulk_insert`).
EVENT_COLUMNS = ("at", "campaign", "actor", "action", "subject", "detail")

_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _mark(conn) -> str:
    """The DB-API driver's positional placeholder (``?`` or ``%s``)."""
    mark = _PLACEHOLDER.get(conn.dialect.paramstyle)
    if mark is None:
        raise NotImplementedError(f"DB-API paramstyle {conn.dialect.paramstyle}")
    return mark


def _insert_sql(conn, table, columns: tuple[str, ...]) -> str:
    marks = ", ".join([_mark(conn)] * len(columns))
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"


def bulk_insert(conn, table, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Insert many plain rows (numbers and text only, or values converted by :func:`db_value`
    / :func:`db_rows`) with one DB-API ``executemany``; SQLAlchemy's per-row parameter
    processing costs more than SQLite itself."""
    if rows:
        conn.exec_driver_sql(_insert_sql(conn, table, columns), rows)


def db_value(conn, column, value):
    """*value* as the DB-API takes it for *column* (a datetime or a JSON list converted by
    the column's type), for rows given to :func:`bulk_insert`: convert a value shared by many
    rows once."""
    process = _bind_processor(conn, column)
    return process(value) if process else value


def _bind_processor(conn, column):
    """What SQLAlchemy itself does to a value bound to *column* on this connection's dialect.
    The dialect's implementation of the type, not the generic type: a generic ``JSON`` leaves
    a list as it is where the driver serializes JSON (psycopg: only its ``Json`` wrapper is
    sent as JSON; a bare list becomes an array)."""
    return column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)


def db_rows(conn, table, columns: tuple[str, ...], rows: list[dict]) -> list[tuple]:
    """Dict rows as DB-API tuples in *columns* order, each value converted by its column's
    type (JSON, datetimes): for :func:`bulk_insert` and :func:`bulk_update`."""
    process = [_bind_processor(conn, table.c[c]) for c in columns]
    pairs = list(zip(columns, process))
    return [tuple(p(r[c]) if p else r[c] for c, p in pairs) for r in rows]


def bulk_update(conn, table, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """``UPDATE table SET columns… WHERE id = ?`` for many plain rows ``(*values, id)`` with
    one DB-API ``executemany``."""
    if not rows:
        return
    mark = _mark(conn)
    sets = ", ".join(f"{c} = {mark}" for c in columns)
    conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE id = {mark}", rows)


def insert_returning_ids(conn, table, rows: list[dict]) -> list[int]:
    """Insert *rows* (Python values: the column types convert them) and give the new ids in the
    order given: SQLAlchemy's batched ``INSERT … RETURNING`` (insertmanyvalues), one statement
    per batch on both backends. (A hand-written path was 2.6 ms against 9.1 ms per 500 rows on
    SQLite, and one statement per row on PostgreSQL: not worth its code.)"""
    if not rows:
        return []
    return list(conn.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).scalars())


def plain_rows(conn, stmt) -> list[tuple]:
    """The rows of a Core select as the DB-API cursor gives them: plain tuples, no Row objects
    (a third of a bulletin merge's time at 140,000 values). Only for columns that need no result
    conversion (numbers, text) and parameters that need no bind conversion (text)."""
    return [row for batch in plain_row_batches(conn, stmt) for row in batch]


def plain_row_batches(conn, stmt, size: int = 10_000) -> Iterator[list[tuple]]:
    """:func:`plain_rows` a batch at a time (the DB-API's ``fetchmany``), for a caller that
    folds millions of rows into something smaller."""
    compiled = stmt.compile(dialect=conn.dialect)
    params = compiled.construct_params()
    args = tuple(params[k] for k in compiled.positiontup) if compiled.positional else params
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        while batch := cursor.fetchmany(size):
            yield [tuple(r) for r in batch]
    finally:
        cursor.close()


def database_url(home: Path, url: str | None = None) -> str:
    return url or f"sqlite:///{(home / 'ledger.db').resolve()}"


_engines: dict[str, Engine] = {}


def _forget_connections_after_fork() -> None:
    """In a forked child (the reading workers), drop the parent's pooled connections without
    closing them: they belong to the parent, and a child using or closing one would break it.
    The child opens its own if it needs the ledger."""
    for engine in _engines.values():
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


_checked: set[str] = set()


#: Execution option of a read-only transaction (:meth:`Ledger.reading`): on SQLite a plain
#: ``BEGIN``, which takes no lock until something is written, instead of ``BEGIN IMMEDIATE``.
READ_ONLY = "bulletin_read_only"


def _sqlite_transactions(eng: Engine) -> None:
    """SQLite: WAL, a busy timeout, and transactions that SQLAlchemy begins itself, ``BEGIN
    IMMEDIATE`` unless read-only. The driver's own (deferred, begun at the first write) let a
    transaction read, then fail at once with "database is locked" when another process had
    written meanwhile: SQLite cannot wait for a write lock on a stale snapshot. ``IMMEDIATE``
    takes the write lock first, waiting up to the busy timeout, so two runs at once queue."""

    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # the driver begins nothing; the "begin" hook does
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of the process (what the guards need);
        # only a power cut may lose the last commits, and the archive is fsynced apart
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(eng, "begin")
    def _begin(conn):  # noqa: ANN001
        options = conn.get_execution_options()
        if options.get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN" if options.get(READ_ONLY) else "BEGIN IMMEDIATE")


def engine_for(url: str, check: bool = True) -> Engine:
    """One engine per URL per process (SQLite: :func:`_sqlite_transactions`).

    With *check*, a new ledger gets the latest schema and an existing one must be at the
    latest migration (``tasks.core.schema``: LedgerTooOld / LedgerTooNew otherwise)."""
    if url not in _engines:
        is_sqlite = url.startswith("sqlite")
        # elsewhere a pooled connection is checked before use: after the database server
        # restarted, a long-lived process (serve) gets a new one instead of an error
        eng = create_engine(url, connect_args={"timeout": 30}) if is_sqlite else create_engine(url, pool_pre_ping=True)
        if is_sqlite:
            _sqlite_transactions(eng)
        _engines[url] = eng
    if check and url not in _checked:
        from .schema import ensure_current
        ensure_current(_engines[url])
        _checked.add(url)
    return _engines[url]


def hold(s: Session, name: str) -> None:
    """Hold the lock *name* (e.g. ``intake/<campaign>``) until the session's transaction ends,
    so that two runs of one step cannot both act on what they read: PostgreSQL, an advisory
    lock; SQLite, the database's write lock, which the session has held since its ``BEGIN
    IMMEDIATE``."""
    hold_on(s.connection(), name)


def hold_on(conn, name: str) -> None:
    """:func:`hold` for a Core connection in a transaction."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(name.encode()),))


class Ledger:
    """Thin access to the ledger's sessions; domain operations live in the task modules."""

    def __init__(self, home: Path, url: str | None = None, check_schema: bool = True):
        self.home = home
        self.url = database_url(home, url)
        if self.url.startswith("sqlite"):
            home.mkdir(parents=True, exist_ok=True)
        self.engine = engine_for(self.url, check=check_schema)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction that may write (SQLite: it holds the write lock from its start)."""
        with self._sessions.begin() as s:
            yield s

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Try to hold *name* (e.g. ``mailbox/<campaign>``) for a long piece of work outside any
        transaction: yields False at once when another run holds it. PostgreSQL: a session
        advisory lock on a connection kept for the duration (any host); SQLite: an exclusive
        ``flock`` on a file beside the ledger (the same host, as the ledger itself)."""
        if self.engine.dialect.name == "postgresql":
            key = zlib.crc32(name.encode())
            with self.engine.connect() as conn:
                got = conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (key,)).scalar()
                conn.commit()
                try:
                    yield bool(got)
                finally:
                    if got:
                        conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (key,))
                        conn.commit()
            return
        path = Path(self.engine.url.database or self.home / "ledger.db")
        lock = path.with_name(f"{path.name}.{zlib.crc32(name.encode()):08x}.lock")
        with open(lock, "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A transaction that only reads: one consistent view, no lock held against writers."""
        with self._readers.begin() as s:
            yield s

    def record(self, campaign: str, action: str, *, actor: str = "system", subject: str | None = None,
               detail: object = None, at: dt.datetime) -> None:
        """An event that is a fact of its own (a mail seen, a failure). An event that records a
        change is added with :func:`audit_event` in the change's own transaction instead."""
        with self.session() as s:
            s.add(audit_event(campaign, action, actor=actor, subject=subject, detail=detail, at=at))

    def submissions(self, campaign: str, states: tuple[str, ...] | None = None) -> list[Submission]:
        with self.reading() as s:
            q = select(Submission).where(Submission.campaign == campaign)
            if states:
                q = q.where(Submission.state.in_(states))
            return list(s.scalars(q.order_by(Submission.id)))

    def latest_bulletin(self, campaign: str) -> Bulletin | None:
        with self.reading() as s:
            return s.scalars(select(Bulletin).where(Bulletin.campaign == campaign)
                             .order_by(Bulletin.version.desc()).limit(1)).first()

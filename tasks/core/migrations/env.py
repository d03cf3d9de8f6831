"""Alembic's entry point for the ledger's migrations (run by ``tasks.core.schema``, or by the
``alembic`` command with ``-c tasks/core/migrations/alembic.ini`` when writing a new revision).

The connection comes from ``config.attributes["connection"]`` (``tasks.core.schema``), else from
``BULLETIN_DB_URL``, else from ``sqlalchemy.url`` in the ini file. SQLite gets batch mode:
it cannot alter a column or a constraint in place.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from tasks.core.ledger import Base, UTCDateTime

config = context.config


def _render_item(kind: str, obj, autogen_context):  # noqa: ANN001 - alembic's hook
    """Stored types, not our Python-side wrappers: a migration must not import the models."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True,
                      render_item=_render_item)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = os.environ.get("BULLETIN_DB_URL") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as conn:
        _run(conn)

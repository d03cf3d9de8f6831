"""What a coordinator sees in the terminal: log lines, never a Python traceback.

Prefect logs a failing task or flow with its traceback. On the console that is noise to a
coordinator (the step's JSON summary and one line say what failed); the traceback still goes to
the Prefect API, so the run's page in the UI keeps it. ``BULLETIN_DEBUG=1`` shows it here too.
"""

from __future__ import annotations

import errno
import logging
import os


class _WithoutTraceback(logging.Formatter):
    """Formats a copy of each record without its exception info (the other handlers, such as
    Prefect's API handler, still get the record with it)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                            "stack_info": None})
        return self.inner.format(record)


def quiet_tracebacks() -> None:
    """Drop tracebacks from Prefect's console handler (unless ``BULLETIN_DEBUG`` is set)."""
    if os.environ.get("BULLETIN_DEBUG"):
        return
    from prefect.logging.handlers import PrefectConsoleHandler
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))


def error_line(exc: BaseException, limit: int = 300) -> str:
    """One line naming an error: its type and first line (a database error: the driver's own
    message, without the SQL statement and its parameters)."""
    inner = getattr(exc, "orig", None) or exc
    text = (str(inner).strip().splitlines() or [""])[0][:limit]
    line = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
    full = getattr(inner, "errno", None) == errno.ENOSPC or "disk is full" in text
    return f"磁盘空间不足 {line}" if full else line

"""Named points where the fault-injection suite (``bench/faults.py``) kills a step.

``BULLETIN_FAULT=<phase>:<n>`` makes the *n*-th arrival of this process at *phase* end the
whole process group with SIGKILL, as an operator's ``kill -9`` or a power cut of the host would.
Without it (always, outside that suite) :func:`reached` returns at once.
``BULLETIN_FAULT_TALLY=<file>`` writes how often each phase was reached (a run's map).

Phases, in the order a return or a message meets them: ``archive`` (a drop-folder entry's files,
or a mail's raw bytes, archived, not yet recorded), ``record`` (the intake's rows written, not
committed), ``move`` (recorded, entries being moved to ``processed/``, or a mail to the done
folder), ``decide`` (decisions written, not committed),
``claim`` (messages claimed, none sent), ``smtp`` (a message about to be handed to the mail
server), ``sent`` (handed over, not yet marked), ``mark`` (the chunk's outcomes about to be
written).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PHASES = ("archive", "record", "move", "decide", "claim", "smtp", "sent", "mark")


def _plan() -> tuple[str, int] | None:
    raw = os.environ.get("BULLETIN_FAULT", "")
    phase, _, count = raw.partition(":")
    return (phase, int(count or 1)) if phase in PHASES else None


_PLAN: tuple[str, int] | None = None
_TALLY: str | None = None  # a file: how often each phase was reached
_seen = 0
_tally: Counter[str] = Counter()


def _write_tally() -> None:
    with open(_TALLY, "w", encoding="utf-8") as fh:  # type: ignore[arg-type]
        json.dump(_tally, fh)


def configure_from_env() -> None:
    """Read ``BULLETIN_FAULT`` and ``BULLETIN_FAULT_TALLY`` (at import, and again in a step
    forked from serve's warm process with the command line's environment)."""
    global _PLAN, _TALLY, _seen
    _PLAN, _TALLY, _seen = _plan(), os.environ.get("BULLETIN_FAULT_TALLY"), 0
    _tally.clear()
    atexit.unregister(_write_tally)
    if _TALLY:
        atexit.register(_write_tally)


configure_from_env()


_hooks: dict[str, list] = {}  # phase → [arrivals left, action] (tests, in this process)


@contextmanager
def hook(phase: str, nth: int, action: Callable[[], None]) -> Iterator[None]:
    """In this process (tests): run *action* at the *nth* arrival at *phase* while inside the
    ``with`` block (e.g. restart the ledger's database in the middle of a transaction)."""
    _hooks[phase] = [nth, action]
    try:
        yield
    finally:
        _hooks.pop(phase, None)


def reached(phase: str) -> None:
    """Count an arrival at *phase*; the planned one kills the process group."""
    global _seen
    if _TALLY:
        _tally[phase] += 1
    planned = _hooks.get(phase)
    if planned is not None:
        planned[0] -= 1
        if planned[0] == 0:
            planned[1]()
    if _PLAN is None or _PLAN[0] != phase:
        return
    _seen += 1
    if _seen == _PLAN[1]:
        os.killpg(os.getpgrp(), signal.SIGKILL)

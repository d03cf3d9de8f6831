"""The audit trail is atomic: every change commits in one transaction with its event. Each
operation is interrupted at its event's INSERT (an exception, and a SIGKILL of the process doing
it): the ledger then holds neither the change nor the event, and run again it holds both."""

from __future__ import annotations

import multiprocessing
import os
import signal
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select
from test_processing import BEFORE, LATER, submit, write_return

from tasks.bulletin.approval import decide
from tasks.bulletin.compile import compile_bulletin
from tasks.core.ledger import Base, Event
from tasks.decisions.processing import process_received
from tasks.decisions.review import explain_by_reply, review

CAMPAIGN = "energy-week-2023"


class Interrupted(Exception):
    pass


@contextmanager
def interrupted_at_event_insert(engine, stop):
    """Call *stop* when a statement starts writing to ``events``."""
    def hook(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("INSERT INTO EVENTS"):
            stop()
    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", hook)


def _raise() -> None:
    raise Interrupted


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def snapshot(ledger) -> dict:
    """Every row of every ledger table, and the bulletin version folders (a killed compile may
    leave its hidden work folder, which is no version)."""
    with ledger.session() as s:
        rows = {t.name: [tuple(r) for r in s.execute(select(t).order_by(*t.primary_key.columns))]
                for t in Base.metadata.sorted_tables}
    folder = ledger.home / "bulletins" / CAMPAIGN
    rows["folders"] = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []
    return rows


def _returned(tmp_path, ledger, config, code: str, **figures) -> None:
    submit(ledger, config, write_return(tmp_path / "in", config, config.unit_by_code[code], **figures), BEFORE)
    process_received(ledger, config, BEFORE)


def _compiled(tmp_path, ledger, config) -> None:
    compile_bulletin(ledger, config, LATER)


# operation name → (set-up, the operation, the event it must record)
OPERATIONS = {
    "approve": (_compiled, lambda t, l, c: decide(l, CAMPAIGN, by="王处长", approve=True, note="同意", now=LATER),
                "bulletin.approved"),
    "reject": (_compiled, lambda t, l, c: decide(l, CAMPAIGN, by="王处长", approve=False, note="待核", now=LATER),
               "bulletin.rejected"),
    "compile": (lambda t, l, c: _returned(t, l, c, "210100"), lambda t, l, c: compile_bulletin(l, c, LATER),
                "bulletin.compiled"),
    "review-accept": (lambda t, l, c: _returned(t, l, c, "210200", participants=1, trainings=5),
                      lambda t, l, c: review(l, c, "210200", action="accept", by="王处长", note="已核实", now=LATER),
                      "review.accept"),
    "review-reject": (lambda t, l, c: _returned(t, l, c, "210100"),
                      lambda t, l, c: review(l, c, "210100", action="reject", by="王处长", note="有误", now=LATER),
                      "review.reject"),
    "reopen": (lambda t, l, c: _returned(t, l, c, "210100"),
               lambda t, l, c: review(l, c, "210100", action="reopen", by="王处长", note="请重报", now=LATER),
               "review.reopen"),
    "explained": (lambda t, l, c: _returned(t, l, c, "210200", participants=1, trainings=5),
                  lambda t, l, c: explain_by_reply(l, c, c.unit_by_code["210200"].contacts[0].email,
                                                   "培训集中在本周", LATER),
                  "submission.explained"),
    "decisions": (lambda t, l, c: submit(l, c, write_return(t / "in", c, c.unit_by_code["210100"]), BEFORE),
                  lambda t, l, c: process_received(l, c, BEFORE), "submission.accepted"),
}


def _events(ledger, action: str) -> int:
    with ledger.session() as s:
        return len(s.scalars(select(Event.id).where(Event.action == action)).all())


@pytest.mark.parametrize("how", ["exception", "sigkill"])
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_a_change_and_its_event_commit_together(name, how, tmp_path, ledger, config):
    set_up, operation, action = OPERATIONS[name]
    set_up(tmp_path, ledger, config)
    before = snapshot(ledger)
    if how == "exception":
        with interrupted_at_event_insert(ledger.engine, _raise), pytest.raises(Interrupted):
            operation(tmp_path, ledger, config)
    else:
        def doomed() -> None:
            with interrupted_at_event_insert(ledger.engine, _kill):
                operation(tmp_path, ledger, config)
        child = multiprocessing.get_context("fork").Process(target=doomed)
        child.start()
        child.join(60)
        assert child.exitcode == -signal.SIGKILL
    assert snapshot(ledger) == before  # neither the change nor its event
    operation(tmp_path, ledger, config)
    after = snapshot(ledger)
    assert _events(ledger, action) == 1  # both
    changed = [t for t in after if after[t] != before[t] and t not in ("events", "folders")]
    assert changed, "the operation changed nothing besides its event"

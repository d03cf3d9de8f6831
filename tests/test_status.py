"""Completeness (tasks/decisions/status.py): the object behind ``status --json``, built end to end from
real .xlsx returns taken in and processed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tasks.core.ledger import (
    ACCEPTED,
    NEEDS_EXPLANATION,
    QUARANTINED,
    REJECTED,
    SENDING,
    SENT,
    UNCERTAIN,
    Delivery,
    Submission,
)
from tasks.decisions.processing import process_received
from tasks.decisions.status import completeness, unit_state

TZ = ZoneInfo("Asia/Shanghai")
BEFORE = dt.datetime(2023, 9, 25, 10, 0, tzinfo=TZ)
LATER = dt.datetime(2023, 9, 26, 10, 0, tzinfo=TZ)
AFTER = dt.datetime(2023, 9, 29, 9, 0, tzinfo=TZ)

# the brief's `status --json` object
BRIEF_KEYS = {"campaign", "now", "deadline", "expected", "accepted", "rejected", "needs_explanation",
              "quarantined", "missing", "late", "latest_bulletin", "units"}
UNIT_KEYS = {"code", "name", "state", "submitted_at", "version"}
UNIT_STATES = {"missing", "accepted", "rejected", "needs_explanation"}


from test_processing import submit, write_return  # noqa: E402 - shared real-file helpers


def anonymous(folder: Path, config) -> Path:
    from openpyxl import Workbook
    folder.mkdir(parents=True, exist_ok=True)
    wb = Workbook()
    for f in config.campaign.form.fields:
        wb.active.append([f.label, 10 if f.kind == "count" else "活动"])
    path = folder / "return.xlsx"
    wb.save(path)
    return path


@pytest.fixture
def campaign_run(ledger, config, tmp_path):
    """Five units reported: accepted, rejected, needs_explanation, accepted late, accepted then
    a rejected correction; one quarantined return."""
    inbox, u = tmp_path / "inbox", config.units
    submit(ledger, config, write_return(inbox / "a", config, u[0]), BEFORE)
    submit(ledger, config, write_return(inbox / "b", config, u[1], posters=-3), BEFORE)
    submit(ledger, config, write_return(inbox / "c", config, u[2], posters=20000), BEFORE)
    submit(ledger, config, write_return(inbox / "d", config, u[4]), BEFORE)
    submit(ledger, config, anonymous(inbox / "q", config), BEFORE)
    process_received(ledger, config, BEFORE)
    submit(ledger, config, write_return(inbox / "e", config, u[4], posters="很多"), LATER)
    submit(ledger, config, write_return(inbox / "f", config, u[3]), AFTER)
    process_received(ledger, config, AFTER)
    return completeness(ledger, config, AFTER)


# ---------------------------------------------------------------- shape
def test_completeness_has_the_keys_and_types_of_status_json(campaign_run, config):
    st = campaign_run
    extra = set(st) - BRIEF_KEYS
    assert BRIEF_KEYS <= set(st)
    # additions to the brief's object: uncertain sends ("shown by status", Non-negotiables) and
    # messages the recipients' servers refused for good
    assert extra == {"uncertain_deliveries", "undeliverable_deliveries"}
    assert isinstance(st["uncertain_deliveries"], list) and isinstance(st["undeliverable_deliveries"], list)
    assert st["campaign"] == "energy-week-2023"
    for key in ("now", "deadline"):
        moment = dt.datetime.fromisoformat(st[key])
        assert moment.utcoffset() is not None
    assert dt.datetime.fromisoformat(st["now"]) == AFTER
    assert dt.datetime.fromisoformat(st["deadline"]) == config.campaign.calendar.deadline_at
    for key in ("expected", "accepted", "rejected", "needs_explanation", "quarantined"):
        assert type(st[key]) is int, key
    for key in ("missing", "late"):
        assert isinstance(st[key], list) and all(isinstance(c, str) for c in st[key])
    assert st["latest_bulletin"] is None
    assert isinstance(st["units"], list) and len(st["units"]) == 24
    for u in st["units"]:
        assert set(u) == UNIT_KEYS | {"signed_copy"}  # documented addition
        assert type(u["signed_copy"]) is bool
        assert isinstance(u["code"], str) and isinstance(u["name"], str)
        assert u["state"] in UNIT_STATES
        if u["state"] == "missing":
            assert u["submitted_at"] is None and u["version"] is None
        else:
            assert dt.datetime.fromisoformat(u["submitted_at"]).utcoffset() is not None
            assert type(u["version"]) is int and u["version"] >= 1
    assert [u["code"] for u in st["units"]] == [u.code for u in config.units]
    json.dumps(st)  # serialisable as is


def test_completeness_counts(campaign_run, config):
    st, u = campaign_run, config.units
    assert st["expected"] == 24
    assert (st["accepted"], st["rejected"], st["needs_explanation"], st["quarantined"]) == (3, 1, 1, 1)
    assert st["accepted"] + st["rejected"] + st["needs_explanation"] + len(st["missing"]) == st["expected"]
    reported = {x.code for x in u[:5]}
    assert st["missing"] == [x.code for x in u if x.code not in reported]
    assert st["late"] == [u[3].code]
    by_code = {x["code"]: x for x in st["units"]}
    assert [by_code[x.code]["state"] for x in u[:5]] == ["accepted", "rejected", "needs_explanation",
                                                         "accepted", "accepted"]
    assert by_code[u[4].code]["version"] == 2  # accepted, then a rejected correction
    assert dt.datetime.fromisoformat(by_code[u[4].code]["submitted_at"]) == BEFORE
    assert dt.datetime.fromisoformat(by_code[u[3].code]["submitted_at"]) == AFTER
    assert by_code[u[0].code]["name"] == u[0].name


def test_empty_campaign(ledger, config):
    st = completeness(ledger, config, BEFORE)
    assert st["accepted"] == st["rejected"] == st["needs_explanation"] == st["quarantined"] == 0
    assert len(st["missing"]) == 24 and st["late"] == [] and st["latest_bulletin"] is None
    assert all(u["state"] == "missing" for u in st["units"])


def test_now_is_shown_in_the_campaign_timezone(ledger, config):
    st = completeness(ledger, config, dt.datetime(2023, 9, 28, 9, 0, tzinfo=dt.timezone.utc))
    assert st["now"] == "2023-09-28T17:00:00+08:00"
    assert st["deadline"] == "2023-09-28T17:00:00+08:00"


# ---------------------------------------------------------------- bulletin and uncertain sends
def test_latest_bulletin_and_staleness(ledger, config, tmp_path):
    from tasks.bulletin.compile import compile_bulletin
    inbox = tmp_path / "inbox"
    submit(ledger, config, write_return(inbox / "a", config, config.units[0]), BEFORE)
    process_received(ledger, config, BEFORE)
    compile_bulletin(ledger, config, BEFORE)
    latest = completeness(ledger, config, BEFORE)["latest_bulletin"]
    assert {k: latest[k] for k in ("version", "approved", "stale")} == {"version": 1, "approved": False, "stale": False}
    assert (latest["chain"]["due"], latest["chain"]["decisions"]) == ("审核", [])  # the demo campaign's chain
    submit(ledger, config, write_return(inbox / "b", config, config.units[1]), LATER)
    process_received(ledger, config, LATER)
    latest = completeness(ledger, config, LATER)["latest_bulletin"]
    assert {k: latest[k] for k in ("version", "approved", "stale")} == {"version": 1, "approved": False, "stale": True}


def test_uncertain_deliveries_are_listed(ledger, config):
    now = dt.datetime.now(dt.timezone.utc)
    with ledger.session() as s:
        for key, state, camp in (("k-uncertain", UNCERTAIN, config.campaign.id), ("k-sent", SENT, config.campaign.id),
                                 ("k-sending", SENDING, config.campaign.id), ("k-other", UNCERTAIN, "other")):
            s.add(Delivery(key=key, campaign=camp, step="receipt", recipients=[], subject="s", state=state,
                           attempts=1, claimed_at=now))
    assert completeness(ledger, config, BEFORE)["uncertain_deliveries"] == ["k-uncertain"]


# ---------------------------------------------------------------- unit_state
def _s(state: str) -> Submission:
    return Submission(state=state)


@pytest.mark.parametrize("states, expected", [
    ([], "missing"),
    ([ACCEPTED], "accepted"),
    ([ACCEPTED, REJECTED], "accepted"),
    ([ACCEPTED, NEEDS_EXPLANATION], "accepted"),
    ([REJECTED], "rejected"),
    ([REJECTED, NEEDS_EXPLANATION], "needs_explanation"),
    ([NEEDS_EXPLANATION, REJECTED], "rejected"),
    (["superseded", ACCEPTED, REJECTED], "accepted"),
    ([QUARANTINED], "missing"),
])
def test_unit_state(states, expected):
    assert unit_state([_s(x) for x in states]) == expected

"""A coordinator's decisions by hand, and spam-like narratives held back until accepted."""

from __future__ import annotations

import pytest
from test_processing import BEFORE, LATER, submit, write_anonymous, write_return

from tasks.bulletin.compile import merge_accepted
from tasks.core.ledger import ACCEPTED, NEEDS_EXPLANATION, QUARANTINED, REJECTED, Submission
from tasks.decisions.processing import process_received
from tasks.decisions.review import ReviewError, review
from tasks.decisions.status import completeness

SPAM = "球盟会(中国)唯一官方网站\n球盟会(中国)唯一官方网站\n球盟会(中国)唯一官方网站"


def _state(ledger, sid):
    with ledger.session() as s:
        return s.get(Submission, sid).state


def test_accept_by_hand_a_return_with_warnings(tmp_path, ledger, config):
    unit = config.unit_by_code["210200"]
    sid = submit(ledger, config, write_return(tmp_path / "in", config, unit, participants=1, trainings=5), BEFORE)
    assert process_received(ledger, config, BEFORE)[0].state == NEEDS_EXPLANATION
    review(ledger, config, "210200", action="accept", by="王处长", note="已电话核实", now=LATER)
    assert _state(ledger, sid) == ACCEPTED
    assert completeness(ledger, config, LATER)["accepted"] == 1
    with pytest.raises(ReviewError):  # a decision needs a reason
        review(ledger, config, "210200", action="reject", by="王处长", note=" ", now=LATER)


def test_quarantined_return_assigned_and_accepted(tmp_path, ledger, config):
    sid = submit(ledger, config, write_anonymous(tmp_path / "in", config), BEFORE)
    assert process_received(ledger, config, BEFORE)[0].state == QUARANTINED
    review(ledger, config, "SZ001", action="accept", by="王处长", note="省检察院电话确认", now=LATER,
           submission_id=sid)
    with ledger.session() as s:
        sub = s.get(Submission, sid)
        assert (sub.state, sub.unit_code, sub.version, sub.decided_by) == (ACCEPTED, "SZ001", 1, "王处长")
    assert list(merge_accepted(ledger, config).numbers.index) == ["SZ001"]


def test_reopen_makes_the_unit_owe_a_new_return(tmp_path, ledger, config):
    unit = config.unit_by_code["210100"]
    sid = submit(ledger, config, write_return(tmp_path / "in", config, unit), BEFORE)
    process_received(ledger, config, BEFORE)
    review(ledger, config, "210100", action="reopen", by="王处长", note="数据口径有误，请重报", now=LATER)
    assert _state(ledger, sid) == REJECTED
    status = completeness(ledger, config, LATER)
    assert status["accepted"] == 0 and next(u for u in status["units"] if u["code"] == "210100")["state"] == "rejected"


def test_spam_narrative_counts_but_stays_out_of_the_bulletin_until_accepted(tmp_path, ledger, config):
    unit = config.unit_by_code["210300"]
    submit(ledger, config, write_return(tmp_path / "in", config, unit, activities=SPAM), BEFORE)
    outcome = process_received(ledger, config, BEFORE)[0]
    assert outcome.state == ACCEPTED and outcome.flagged == ["activities"]
    assert any("待协调人审核" in n for n in outcome.notes)
    merged = merge_accepted(ledger, config)
    assert merged.numbers.loc["210300", "posters"] == 10  # the figures count
    assert merged.texts.loc["210300", "activities"] != merged.texts.loc["210300", "activities"]  # NaN
    review(ledger, config, "210300", action="accept", by="王处长", note="已核实为误报", now=LATER)
    assert "球盟会" in merge_accepted(ledger, config).texts.loc["210300", "activities"]

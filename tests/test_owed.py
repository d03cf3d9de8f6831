"""Nothing owed is lost: a decision's receipt and the coordinators' lines are owed in the
ledger until sent, so a run killed after deciding leaves them for the next one; a claim whose
process is gone is found uncertain at once, and an uncertain receipt is resent on request with
its Message-ID."""

from __future__ import annotations

import email
import subprocess
import sys
from email import policy

import pytest
from sqlalchemy import select
from test_processing import BEFORE, submit, write_anonymous, write_return

from tasks.core.ledger import SENDING, SENT, UNCERTAIN, Delivery
from tasks.decisions.owed import NOTICE, RECEIPT, owed
from tasks.decisions.processing import process_received
from tasks.mail.delivery import claimant_gone, mark_stale_uncertain, process_identity

CAMPAIGN = "energy-week-2023"


def test_a_decision_owes_its_receipt_and_its_coordinator_lines(tmp_path, ledger, config):
    submit(ledger, config, write_return(tmp_path / "in", config, config.unit_by_code["210100"]), BEFORE)
    submit(ledger, config, write_anonymous(tmp_path / "in2", config), BEFORE)
    outcomes = process_received(ledger, config, BEFORE)  # and then the run dies: nothing sent
    receipts = owed(ledger, CAMPAIGN, RECEIPT)
    assert sorted(r.key for r in receipts) == sorted(f"{CAMPAIGN}/receipt/{o.submission_id}/{o.state}" for o in outcomes)
    [line] = owed(ledger, CAMPAIGN, NOTICE)
    assert f"第{outcomes[1].submission_id}号" in line.payload["line"] and "无法识别报送单位" in line.payload["line"]


def _dead_process_identity() -> str:
    child = subprocess.run([sys.executable, "-c", "from tasks.mail.delivery import process_identity; print(process_identity())"],
                           capture_output=True, text=True, check=True)
    return child.stdout.strip()


def test_a_claim_whose_process_is_gone_is_uncertain_at_once(ledger):
    from tasks.mail.delivery import _utcnow
    gone, alive = _dead_process_identity(), process_identity()
    assert claimant_gone(gone) and not claimant_gone(alive) and not claimant_gone("elsewhere:1:2")
    with ledger.session() as s:
        for key, by in (("gone", gone), ("alive", alive), ("other-host", "elsewhere:1:2")):
            s.add(Delivery(key=key, campaign=CAMPAIGN, step="receipt", recipients=[], subject="x", state=SENDING,
                           claimed_at=_utcnow(), claimed_by=by))
    assert mark_stale_uncertain(ledger, CAMPAIGN) == ["gone"]
    with ledger.session() as s:
        assert dict(s.execute(select(Delivery.key, Delivery.state)).all()) == {
            "gone": UNCERTAIN, "alive": SENDING, "other-host": SENDING}


@pytest.mark.usefixtures("prefect_harness")
def test_the_next_collect_sends_what_a_killed_one_owed_and_resends_on_request(tmp_path, config, config_dir, smtp_env):
    from flows.collect_returns import collect_returns
    from tasks.core.ledger import Ledger
    home = tmp_path / "home"
    ledger = Ledger(home)
    unit = config.unit_by_code["210100"]
    submit(ledger, config, write_return(tmp_path / "in", config, unit), BEFORE)
    submit(ledger, config, write_anonymous(tmp_path / "in2", config), BEFORE)
    process_received(ledger, config, BEFORE)  # a collect killed right after its decisions
    assert not smtp_env.messages
    args = dict(home=str(home), config_dir=str(config_dir), now=BEFORE)
    result = collect_returns(CAMPAIGN, **args)
    assert result["receipts"] == {"sent": 1}  # the decision of the killed run, not a new one
    got = [email.message_from_bytes(m.data, policy=policy.default) for m in smtp_env.messages]
    assert [m.rcpt_tos for m in smtp_env.messages][0] == [unit.contacts[0].email]
    notice = next(m for m in got if "人工处理" in str(m["Subject"]))
    assert "第2号" in notice.get_body(("plain",)).get_content()
    assert owed(ledger, CAMPAIGN, RECEIPT) == [] and owed(ledger, CAMPAIGN, NOTICE) == []
    # nothing twice
    collect_returns(CAMPAIGN, **args)
    assert len(smtp_env.messages) == 2


@pytest.mark.usefixtures("prefect_harness")
def test_a_receipt_claimed_by_a_killed_run_is_uncertain_at_once_and_resent_on_request(
        tmp_path, config, config_dir, smtp_env):
    from flows.collect_returns import collect_returns
    from tasks.core.ledger import Ledger
    from tasks.decisions.status import completeness
    from tasks.mail.delivery import _utcnow
    home = tmp_path / "home"
    ledger = Ledger(home)
    submit(ledger, config, write_return(tmp_path / "in", config, config.unit_by_code["210100"]), BEFORE)
    [outcome] = process_received(ledger, config, BEFORE)
    key = f"{CAMPAIGN}/receipt/{outcome.submission_id}/{outcome.state}"
    with ledger.session() as s:  # the killed run had claimed it and was in the SMTP conversation
        s.add(Delivery(key=key, campaign=CAMPAIGN, step="receipt", recipients=[], subject="x", state=SENDING,
                       claimed_at=_utcnow(), claimed_by=_dead_process_identity()))
    args = dict(home=str(home), config_dir=str(config_dir), now=BEFORE)
    result = collect_returns(CAMPAIGN, **args)
    assert result["receipts"] == {"uncertain": 1}  # reported as such, never resent without asking
    assert completeness(ledger, config, BEFORE)["uncertain_deliveries"] == [key]
    [told] = [email.message_from_bytes(m.data, policy=policy.default) for m in smtp_env.messages]
    assert "不确定" in str(told["Subject"]) and key in told.get_body(("plain",)).get_content()
    collect_returns(CAMPAIGN, resend_uncertain=True, **args)
    resent = email.message_from_bytes(smtp_env.messages[-1].data, policy=policy.default)
    assert len(smtp_env.messages) == 2 and "回执" in str(resent["Subject"])
    with ledger.session() as s:
        row = s.scalars(select(Delivery).where(Delivery.key == key)).one()
    assert (row.state, row.message_id) == (SENT, resent["Message-ID"])
    assert owed(ledger, CAMPAIGN, RECEIPT) == []
    collect_returns(CAMPAIGN, resend_uncertain=True, **args)
    assert len(smtp_env.messages) == 2

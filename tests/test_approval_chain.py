"""Who may approve: a campaign's named approvers, level by level (审核, then 签发); anyone else
is refused with the names of who may decide; a rejection at any level stops the chain; a new
version starts it again. Real ledger files; the command through its own function, under the
test's Prefect server, with a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
import typer
import yaml
from sqlalchemy import select

from tasks.bulletin.approval import APPROVED, PENDING, REJECTED, ApprovalError, NotAnApprover, chain_state, decide
from tasks.bulletin.compile import compile_bulletin
from tasks.core.config import Approver
from tasks.core.ledger import ApprovalRecord, Event, Ledger
from tasks.mail.notices import bulletin_recipients

CAMPAIGN = "energy-week-2023"
CHAIN = [{"name": "李科长", "email": "li@example.gov.cn", "level": "审核"},
         {"name": "赵科长", "email": "zhao@example.gov.cn", "level": "审核"},
         {"name": "王处长", "email": "wang@example.gov.cn", "level": "签发"}]
APPROVERS = [Approver(**a) for a in CHAIN]


@pytest.fixture
def now(config):
    return dt.datetime(2023, 10, 9, 9, tzinfo=config.campaign.calendar.tz)


@pytest.fixture
def ledger(tmp_path, config, now):
    ledger = Ledger(tmp_path)
    compile_bulletin(ledger, config, now, lead="初稿")
    return ledger


def _decide(ledger, now, by, approve=True, **kw):
    return decide(ledger, CAMPAIGN, by=by, approve=approve, note=kw.pop("note", None), now=now,
                  approvers=APPROVERS, **kw)


def test_each_level_in_order_by_its_own_approvers(ledger, now):
    with pytest.raises(NotAnApprover) as refused:
        _decide(ledger, now, "王处长")  # 签发 before 审核
    assert "待审核" in str(refused.value) and "李科长" in str(refused.value) and "赵科长" in str(refused.value)
    assert _decide(ledger, now, "li@example.gov.cn", note="数据已核").approval == PENDING  # by address
    state = chain_state(ledger, CAMPAIGN, 1, APPROVERS)
    assert (state["due"], state["due_approvers"]) == ("签发", ["王处长"])
    with pytest.raises(NotAnApprover):
        _decide(ledger, now, "赵科长")  # 审核 is done: only 签发 is due
    row = _decide(ledger, now, "王处长", note="同意印发")
    assert (row.approval, row.approved_by) == (APPROVED, "王处长")
    state = chain_state(ledger, CAMPAIGN, 1, APPROVERS)
    assert state["due"] is None
    assert [(d["level"], d["by"], d["decision"]) for d in state["decisions"]] == [
        ("审核", "李科长", APPROVED), ("签发", "王处长", APPROVED)]
    with ledger.session() as s:
        events = [(e.action, e.actor) for e in s.scalars(select(Event).where(Event.action.like("bulletin.%approved")))]
    assert events == [("bulletin.approved", "李科长"), ("bulletin.approved", "王处长")]


def test_a_stranger_is_refused_and_nothing_is_recorded(ledger, now):
    with pytest.raises(NotAnApprover) as refused:
        _decide(ledger, now, "张三")
    assert "张三" in str(refused.value) and "李科长（li@example.gov.cn）" in str(refused.value)
    with ledger.session() as s:
        assert s.scalars(select(ApprovalRecord)).all() == []
        assert s.scalars(select(Event).where(Event.action.in_(("bulletin.approved", "bulletin.rejected")))).all() == []


def test_a_rejection_at_any_level_stops_the_chain(ledger, now):
    _decide(ledger, now, "赵科长")
    row = _decide(ledger, now, "王处长", approve=False, note="第三段数据有误")
    assert (row.approval, row.approval_note) == (REJECTED, "第三段数据有误")
    with pytest.raises(ApprovalError):
        _decide(ledger, now, "王处长")


def test_a_new_version_starts_the_chain_again(ledger, config, now):
    _decide(ledger, now, "李科长")
    compile_bulletin(ledger, config, now, lead="修改稿")
    assert chain_state(ledger, CAMPAIGN, 2, APPROVERS)["due"] == "审核"
    with pytest.raises(NotAnApprover):
        _decide(ledger, now, "王处长", version=2)


def test_without_approvers_anyone_named_decides_once(ledger, now):
    row = decide(ledger, CAMPAIGN, by="任何人", approve=True, note=None, now=now)
    assert (row.approval, row.approved_by) == (APPROVED, "任何人")


@pytest.fixture
def chain_config_dir(tmp_path, config_dir):
    """The bundled config with the chain above in the campaign."""
    target = tmp_path / "config"
    shutil.copytree(config_dir, target)
    path = target / "campaigns" / f"{CAMPAIGN}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["bulletin"]["approvers"] = CHAIN
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return target


def approving(tmp_path, config, config_dir, now, capsys):
    """A home with version 1 compiled, and `bulletin approve` on it: (exit code, JSON, stderr)."""
    from flows import cli
    home = tmp_path / "home"
    compile_bulletin(Ledger(home), config, now, lead="初稿")
    common = dict(home=home, config=config_dir, now=now.isoformat())

    def run(**options) -> tuple[int, dict | None, str]:
        capsys.readouterr()
        with pytest.raises(typer.Exit) as exit_:
            cli.approve(CAMPAIGN, **options, **common)
        out = capsys.readouterr()
        lines = [line for line in out.out.splitlines() if line.startswith("{")]
        return exit_.value.exit_code, json.loads(lines[-1]) if lines else None, out.err
    return run


@pytest.mark.usefixtures("prefect_harness")
def test_the_command_goes_level_by_level_and_sends_after_the_last(tmp_path, config, chain_config_dir, smtp_env,
                                                                  now, capsys):
    run = approving(tmp_path, config, chain_config_dir, now, capsys)
    code, _, err = run(by="张三")
    assert code == 1 and "李科长" in err
    code, first, err = run(by="李科长", note="数据已核")
    assert code == 0 and first["approval"] == PENDING and first["chain"]["due"] == "签发"
    # nothing goes out before the last level but the request to the level that is now due
    assert "待签发" in err and [(m.rcpt_tos, m.message()["X-Bulletin-Step"]) for m in smtp_env.messages] == \
        [(["wang@example.gov.cn"], "approval-request")]
    code, last, _ = run(by="王处长", note="同意印发")
    assert code == 0 and last["approval"] == APPROVED
    copies = [m for m in smtp_env.messages if m.message()["X-Bulletin-Step"] == "bulletin"]
    assert last["send"]["sent"] == len(bulletin_recipients(config)) == len(copies)


@pytest.mark.usefixtures("prefect_harness")
def test_a_rejection_tells_the_coordinators_once_with_the_reason(tmp_path, config, chain_config_dir, smtp_env,
                                                                  now, capsys):
    run = approving(tmp_path, config, chain_config_dir, now, capsys)
    for by, reject in (("李科长", False), ("王处长", True), ("王处长", True)):
        run(by=by, reject=reject, note="第三段数据有误" if reject else None)
    notices = [m.message() for m in smtp_env.messages if m.message()["X-Bulletin-Step"] == "notice"]
    assert len(notices) == 1 and "第1版简讯未获批准" in str(notices[0]["Subject"])
    body = notices[0].get_body(("plain",)).get_content()
    assert "签发：王处长" in body and "第三段数据有误" in body
    assert sorted(a.addr_spec for a in notices[0]["To"].addresses) == sorted(c.email for c in config.campaign.coordinators)

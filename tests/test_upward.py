"""Reporting upward (tasks/bulletin/upward.py): a child campaign's approved bulletin becomes
one unit's return to the parent campaign, taken in by the parent's ordinary intake."""

from __future__ import annotations

import datetime as dt
import email
import shutil
from email import policy
from io import BytesIO
from pathlib import Path

import pytest
from openpyxl import load_workbook

from flows.demo import build_returns, drop

PARENT, CHILD, AS_UNIT = "energy-week-2023", "shenyang-2023", "210100"
DISTRICTS = ["210200", "210300", "210400", "210500", "210600"]  # stand-ins for the city's districts


def _child_config_dir(config_dir: Path, tmp_path: Path, **reports_to: str) -> Path:
    """The test configuration plus a child campaign that reports to the parent as 沈阳市."""
    copy = tmp_path / "config"
    shutil.copytree(config_dir, copy)
    text = (copy / "campaigns" / f"{PARENT}.yaml").read_text(encoding="utf-8")
    text = text.replace(f"id: {PARENT}", f"id: {CHILD}").replace("units: all", f"units: {DISTRICTS}")
    text = text.replace("name: 2023年辽宁省公共机构节能宣传周活动情况报送", "name: 2023年沈阳市公共机构节能宣传周活动情况报送")
    text = text.replace("\n  pdf: false\n", "\n  pdf: true\n")  # the signed copy goes with the return
    reports_to = {"unit": f'"{AS_UNIT}"', **reports_to}
    where = "".join(f"\n  {k}: {v}" for k, v in reports_to.items())
    (copy / "campaigns" / f"{CHILD}.yaml").write_text(
        text + f"\nreports_to:\n  campaign: {PARENT}{where}\n", encoding="utf-8")
    return copy


def _district_returns(child, parent) -> dict:
    """The districts' returns: 沈阳市's own demo figures shared out among them, so that the
    city's roll-up looks like the return the province usually gets from it."""
    city = build_returns(parent)[AS_UNIT].exact
    returns = build_returns(child)
    for i, code in enumerate(DISTRICTS):
        for key, total in city.items():
            returns[code].exact[key] = returns[code].values[key] = total // 5 + (total % 5 if i == 0 else 0)
    return returns


def test_the_parent_form_is_filled_with_the_totals_and_narrative_as_data(config):
    from tasks.bulletin.upward import upward_values
    from tasks.mail.workbook import build_request_workbook, fill_workbook

    record = {"totals": {f.key: 10 * i for i, f in enumerate(config.campaign.form.counts) if i != 1},
              "lead": "=HYPERLINK(\"http://evil.example\",\"点击\")" + "长" * 3000,
              "highlights": [{"unit": "和平区", "text": "节能竞赛"}, {"unit": "沈河区", "text": "绿色出行"}]}
    values, missing = upward_values(config, record)
    assert missing == [config.campaign.form.counts[1].label], "a field the child does not count stays blank"
    assert values["highlights"] == "和平区：节能竞赛；沈河区：绿色出行。"
    assert len(values["activities"]) == 2000 and values["activities"].endswith("…"), "cut to the field's limit"
    book = load_workbook(BytesIO(fill_workbook(build_request_workbook(config.campaign, config.units[0]), values,
                                               formulas=False)))
    dest = next(book.defined_names["field_activities"].destinations)
    cell = book[dest[0]][dest[1].replace("$", "")]
    assert cell.data_type == "s" and cell.value.startswith("=HYPERLINK"), "text from below is never a formula"


@pytest.mark.parametrize("where, message", [
    ({}, "exactly one of drop_folder"),
    ({"drop_folder": "relative/inbox"}, "absolute path"),
    ({"mailbox": "not-an-address"}, "not an email address"),
    ({"mailbox": "a@example.org", "unit": '"999999"'}, "not a unit in"),
])
def test_reports_to_names_one_way_upward(config_dir, tmp_path, where, message):
    from tasks.core.config import ConfigError, load_config_afresh

    with pytest.raises(ConfigError, match=message):
        load_config_afresh(_child_config_dir(config_dir, tmp_path, **where), CHILD)


@pytest.mark.usefixtures("prefect_harness")
def test_an_approved_round_goes_upward_once_and_a_correction_follows(config_dir, tmp_path, monkeypatch):
    from flows.collect_returns import collect_returns
    from flows.compile_bulletin import compile_bulletin
    from flows.publish_bulletin import publish_bulletin
    from tasks.bulletin.approval import decide
    from tasks.core.config import load_config
    from tasks.core.ledger import Ledger, Submission, SubmissionFile
    from tasks.core.rounds import latest_accepted_numbers

    monkeypatch.delenv("BULLETIN_SMTP_HOST", raising=False)
    parent_home, child_home = tmp_path / "province", tmp_path / "shenyang"
    parent_inbox = parent_home / "inbox" / PARENT
    parent_inbox.mkdir(parents=True)
    cdir = _child_config_dir(config_dir, tmp_path, drop_folder=str(parent_inbox))
    child, parent = load_config(cdir, CHILD), load_config(cdir, PARENT)
    cal = child.campaign.calendar
    c_args = {"home": str(child_home), "config_dir": str(cdir)}
    p_args = {"home": str(parent_home), "config_dir": str(cdir)}

    # four of the five districts report; the city's round is compiled, approved, published
    returns = _district_returns(child, parent)
    child_inbox = child_home / "inbox" / CHILD
    child_inbox.mkdir(parents=True)
    for code in DISTRICTS[:4]:
        drop(child, child_inbox, returns[code], "generated")
    collect_returns(CHILD, now=cal.deadline_at - dt.timedelta(days=2), **c_args)
    compile_bulletin(CHILD, now=cal.compile_moment, **c_args)
    decide(Ledger(child_home), CHILD, by="沈阳市协调人", approve=True, note="同意", now=cal.compile_moment)
    published = publish_bulletin(CHILD, now=cal.compile_moment, **c_args)
    assert published["upward"] == "sent"
    [folder] = list(parent_inbox.iterdir())
    assert folder.name == f"{AS_UNIT}-{CHILD}-v1"
    assert sorted(p.suffix for p in folder.iterdir()) == [".pdf", ".xlsx"]

    # published again: nothing goes upward twice for the same approval
    assert publish_bulletin(CHILD, now=cal.compile_moment, **c_args)["upward"] == "skipped"
    assert [p.name for p in parent_inbox.iterdir()] == [folder.name]

    # the province's ordinary intake takes it as 沈阳市's return, the PDF as its signed copy
    collect_returns(PARENT, now=cal.deadline_at - dt.timedelta(days=1), **p_args)
    assert not list(parent_inbox.iterdir())
    with Ledger(parent_home).reading() as s:
        [(unit, state, sub_id)] = s.execute(
            Submission.__table__.select().with_only_columns(Submission.unit_code, Submission.state, Submission.id)).all()
        roles = sorted(r for (r,) in s.execute(SubmissionFile.__table__.select().with_only_columns(
            SubmissionFile.role).where(SubmissionFile.submission_id == sub_id)))
    assert (unit, state) == (AS_UNIT, "accepted") and roles == ["return", "signed"], roles
    keys = [f.key for f in parent.campaign.form.counts]
    first = {k: sum(returns[c].values[k] or 0 for c in DISTRICTS[:4]) for k in keys}
    got = latest_accepted_numbers(Ledger(parent_home), PARENT).loc[AS_UNIT]
    assert {k: int(got[k]) for k in keys} == first

    # the fifth district reports late; version 2 approved goes up as a correction
    drop(child, child_inbox, returns[DISTRICTS[4]], "generated")
    collect_returns(CHILD, now=cal.deadline_at + dt.timedelta(hours=1), **c_args)
    compile_bulletin(CHILD, now=cal.compile_moment + dt.timedelta(hours=1), **c_args)
    decide(Ledger(child_home), CHILD, by="沈阳市协调人", approve=True, note="同意",
           now=cal.compile_moment + dt.timedelta(hours=1))
    assert publish_bulletin(CHILD, now=cal.compile_moment + dt.timedelta(hours=1), **c_args)["upward"] == "sent"
    assert [p.name for p in parent_inbox.iterdir()] == [f"{AS_UNIT}-{CHILD}-v2"]
    collect_returns(PARENT, now=cal.deadline_at + dt.timedelta(hours=2), **p_args)
    got = latest_accepted_numbers(Ledger(parent_home), PARENT).loc[AS_UNIT]
    assert {k: int(got[k]) for k in keys} == {k: sum(returns[c].values[k] or 0 for c in DISTRICTS) for k in keys}


@pytest.mark.usefixtures("prefect_harness")
def test_by_mail_from_the_units_contact_into_the_parents_mailbox(config_dir, tmp_path, monkeypatch, smtp_server):
    """The return goes by SMTP from the address the parent lists for the unit; delivered into
    the parent's Maildir as a mail server would, the parent's intake takes it in."""
    from flows.collect_returns import collect_returns
    from flows.compile_bulletin import compile_bulletin
    from flows.publish_bulletin import publish_bulletin
    from tasks.bulletin.approval import decide
    from tasks.core.config import load_config
    from tasks.core.ledger import Ledger, Submission

    parent_home, child_home = tmp_path / "province", tmp_path / "shenyang"
    cdir = _child_config_dir(config_dir, tmp_path, mailbox="returns@province.example.org")
    child, parent = load_config(cdir, CHILD), load_config(cdir, PARENT)
    cal = child.campaign.calendar
    c_args = {"home": str(child_home), "config_dir": str(cdir)}
    returns = _district_returns(child, parent)
    child_inbox = child_home / "inbox" / CHILD
    child_inbox.mkdir(parents=True)
    for code in DISTRICTS:
        drop(child, child_inbox, returns[code], "generated")
    monkeypatch.setenv("BULLETIN_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("BULLETIN_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("BULLETIN_SMTP_SECURITY", "none")
    monkeypatch.setenv("BULLETIN_MAIL_FROM", parent.unit_by_code[AS_UNIT].contacts[0].email)
    collect_returns(CHILD, now=cal.deadline_at - dt.timedelta(days=2), **c_args)
    compile_bulletin(CHILD, now=cal.compile_moment, **c_args)
    decide(Ledger(child_home), CHILD, by="沈阳市协调人", approve=True, note="同意", now=cal.compile_moment)
    before = len(smtp_server.messages)
    assert publish_bulletin(CHILD, now=cal.compile_moment, **c_args)["upward"] == "sent"
    upward = [m for m in smtp_server.messages[before:] if "returns@province.example.org" in m.rcpt_tos]
    assert len(upward) == 1
    parsed = email.message_from_bytes(upward[0].data, policy=policy.default)
    assert "Auto-Submitted" not in parsed, "a return, not an auto-reply"
    assert "更正稿" not in str(parsed["Subject"]) and parsed["From"].addresses[0].addr_spec == \
        parent.unit_by_code[AS_UNIT].contacts[0].email

    maildir = tmp_path / "maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.upward").write_bytes(upward[0].data)
    monkeypatch.delenv("BULLETIN_SMTP_HOST")
    monkeypatch.setenv("BULLETIN_MAILDIR", str(maildir))
    collect_returns(PARENT, now=cal.deadline_at - dt.timedelta(days=1), home=str(parent_home), config_dir=str(cdir))
    with Ledger(parent_home).reading() as s:
        rows = s.execute(Submission.__table__.select().with_only_columns(
            Submission.unit_code, Submission.state, Submission.source)).all()
    assert [(u, st) for u, st, _ in rows] == [(AS_UNIT, "accepted")], rows


@pytest.mark.slow
def test_the_rollup_benchmark_runs_three_levels_and_resumes(tmp_path):
    """bench/rollup.py, tiny: stopped after three offices, then resumed to the centre, whose
    totals must equal the sum of every institution's figures."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, str(root / "bench" / "rollup.py"), "--provinces", "2", "--cities", "2",
           "--institutions", "4", "--dir", str(tmp_path / "rollup")]
    first = subprocess.run([*cmd, "--offices", "3"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 1 and "run again with --dir" in first.stdout, first.stdout + first.stderr[-3000:]
    done = sorted(p.parent.name for p in (tmp_path / "rollup" / "offices").glob("*/done.json"))
    assert done == ["city-0101", "city-0102", "prov-01"]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert "the centre's totals equal the sum of every institution's figures: yes" in second.stdout
    levels = {line.split()[0]: line.split()[1] for line in second.stdout.splitlines()
              if line.split() and line.split()[0] in ("city", "province", "centre")}
    assert levels == {"city": "4", "province": "2", "centre": "1"}, second.stdout

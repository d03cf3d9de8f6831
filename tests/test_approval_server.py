"""Only the approved version goes out, tried as coordinators do it: `bulletin serve` with its own
Prefect server on 127.0.0.1, a scheduled-style publish run that suspends for approval, and the
answer given as the UI gives it (``POST /api/flow_runs/{id}/resume`` with the run input) or with
`bulletin approve`. Mail goes to a real SMTP server on loopback."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
from email import policy
from pathlib import Path

import pytest
import yaml
from serve_process import BIN, ServeProcess, clean_env, final, suspended
from smtp_server import running_smtp_server
from sqlalchemy import select

CAMPAIGN = "energy-week-2023"
PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture(scope="module")
def smtp():
    with running_smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smtp):
    """One home and one `serve` for the module (its Prefect server takes seconds to start)."""
    root = tmp_path_factory.mktemp("approval-server")
    config_dir = root / "config"
    shutil.copytree(PROJECT_CONFIG, config_dir)
    (config_dir / "campaigns" / "energy-week-2027.yaml").unlink()  # fewer deployments to register
    _without_approvers(config_dir / "campaigns" / f"{CAMPAIGN}.yaml")  # one decision (tests/test_signoff.py: the chain)
    home = root / "home"
    home.mkdir()
    env = clean_env(BULLETIN_SMTP_HOST=smtp.host, BULLETIN_SMTP_PORT=str(smtp.port), BULLETIN_SMTP_SECURITY="none",
                    PREFECT_RUNNER_POLL_FREQUENCY="1")
    served = ServeProcess(home, config_dir, env).start()
    yield served
    served.stop()


def _without_approvers(path: Path) -> None:
    campaign = yaml.safe_load(path.read_text(encoding="utf-8"))
    del campaign["bulletin"]["approvers"]
    path.write_text(yaml.safe_dump(campaign, allow_unicode=True), encoding="utf-8")


def _ledger(served):
    from tasks.core.ledger import Ledger
    return Ledger(served.home)


def _config(served):
    from tasks.core.config import load_config
    return load_config(served.config_dir, CAMPAIGN)


def _compile(served, lead: str) -> int:
    """A new version, made without Prefect (so no waiting run is touched)."""
    import datetime as dt

    from tasks.bulletin.compile import compile_bulletin
    config = _config(served)
    row, created = compile_bulletin(_ledger(served), config, dt.datetime(2023, 10, 9, 9, tzinfo=config.campaign.calendar.tz),
                                    lead=lead)
    assert created
    return row.version


def _cli(served, *args: str, api: bool = True) -> dict:
    env = {**served.env, **({"PREFECT_API_URL": served.api} if api else {})}
    out = subprocess.run([str(BIN / "bulletin"), *args, "--home", str(served.home), "--config", str(served.config_dir)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _waiting_publish_run(served, version: int) -> str:
    run = served.create_run("publish-bulletin", CAMPAIGN, {"wait_for_approval": True})
    waiting = served.wait_for(run, suspended)
    assert waiting["state"]["state_details"]["pause_key"] == f"approval-v{version}-1"
    return run


def _answer(served, run: str, version: int, approve: bool = True, name: str = "王处长", comment: str = "同意") -> dict:
    return served.post(f"/flow_runs/{run}/resume", {"run_input": {"approve": approve, "name": name,
                                                                  "comment": comment, "version": version}})


def _received(smtp, served, version: int) -> list[str]:
    """Recipients that received version *version* (matched by the Message-IDs in the ledger)."""
    from tasks.core.ledger import Delivery
    with _ledger(served).session() as s:
        ids = {mid for (mid,) in s.execute(select(Delivery.message_id).where(
            Delivery.key.startswith(f"{CAMPAIGN}/bulletin/v{version}/")))}
    got = [m for m in smtp.messages if email.message_from_bytes(m.data, policy=policy.default)["Message-ID"] in ids]
    return [to for m in got for to in m.rcpt_tos]


def _decisions(served, version: int) -> list[tuple[str, str]]:
    from tasks.core.ledger import Event
    with _ledger(served).session() as s:
        return [(e.action, e.actor) for e in s.scalars(select(Event).where(
            Event.campaign == CAMPAIGN, Event.subject == f"v{version}", Event.action.like("bulletin.%ed"),
            Event.action != "bulletin.compiled"))]


def _recipients(served) -> int:
    from tasks.mail.notices import bulletin_recipients
    return len(bulletin_recipients(_config(served)))


def test_the_answer_for_the_waited_version_sends_it_once_and_waiting_holds_no_process(setup, smtp):
    served = setup
    version = _compile(served, "第一次导语")
    run = _waiting_publish_run(served, version)
    served.wait_idle()  # suspended: no process, no serve slot
    assert suspended(served.run(run))
    assert _received(smtp, served, version) == []
    _answer(served, run, version)
    done = served.wait_for(run, final)
    assert done["state"]["type"] == "COMPLETED"
    received = _received(smtp, served, version)
    assert len(received) == len(set(received)) == _recipients(served)
    row = _ledger(served).latest_bulletin(CAMPAIGN)
    assert (row.version, row.approval, row.approved_by, row.approval_note) == (version, "approved", "王处长", "同意")
    assert _decisions(served, version) == [("bulletin.approved", "王处长")]
    # a later `bulletin send` sends nothing new
    again = _cli(served, "send", CAMPAIGN)
    assert again.get("sent", 0) == 0 and len(_received(smtp, served, version)) == _recipients(served)


def test_a_superseded_version_ends_its_run_and_the_latest_is_offered(setup, smtp):
    served = setup
    old = _compile(served, "第二次导语")
    run = _waiting_publish_run(served, old)
    compiled = _cli(served, "compile", CAMPAIGN, "--lead", "更正后的导语")  # as a coordinator would
    new = compiled["version"]
    assert new == old + 1 and compiled["waiting_runs"]["ended"] == [run]
    ended = served.run(run)
    assert ended["state"]["type"] == "CANCELLED"
    assert f"第{old}版已被第{new}版取代" in ended["state"]["message"]
    served.wait_log(run, f"第{old}版已被第{new}版取代")
    # its form is gone: the answer the UI would send is refused, and nothing is recorded
    status, answer = served.request("POST", f"/flow_runs/{run}/resume",
                                    {"run_input": {"approve": True, "name": "王处长", "comment": "", "version": old}})
    assert answer["status"] == "ABORT"
    [offered] = compiled["waiting_runs"]["offered"]
    assert served.wait_for(offered, suspended)["state"]["state_details"]["pause_key"] == f"approval-v{new}-1"
    _answer(served, offered, new, comment="同意印发第二版")
    assert served.wait_for(offered, final)["state"]["type"] == "COMPLETED"
    assert len(_received(smtp, served, new)) == _recipients(served)
    assert _received(smtp, served, old) == [] and _decisions(served, old) == []
    assert _ledger(served).latest_bulletin(CAMPAIGN).approval_note == "同意印发第二版"


def test_a_rejection_sends_nothing(setup, smtp):
    served = setup
    version = _compile(served, "第三次导语")
    run = _waiting_publish_run(served, version)
    _answer(served, run, version, approve=False, comment="数据待核")
    done = served.wait_for(run, final)
    assert done["state"]["type"] == "COMPLETED" and "驳回" in done["state"]["message"]
    assert _received(smtp, served, version) == []
    row = _ledger(served).latest_bulletin(CAMPAIGN)
    assert (row.approval, row.approval_note) == ("rejected", "数据待核")
    assert _decisions(served, version) == [("bulletin.rejected", "王处长")]


def test_an_answer_for_another_version_is_not_recorded(setup, smtp):
    served = setup
    version = _compile(served, "第四次导语")
    run = _waiting_publish_run(served, version)
    _answer(served, run, version + 40)  # a version that does not exist
    again = served.wait_for(run, lambda r: suspended(r) and r["state"]["state_details"]["pause_key"].endswith("-2"))
    assert again["state"]["state_details"]["pause_key"] == f"approval-v{version}-2"  # still waiting, on its version
    served.wait_log(run, f"此运行等待第{version}版")
    assert _decisions(served, version) == [] and _ledger(served).latest_bulletin(CAMPAIGN).approval == "pending"
    # superseded without Prefect hearing of it: an answer that still reaches the run records nothing
    newer = _compile(served, "第五次导语")
    _answer(served, run, version)
    done = served.wait_for(run, final)
    assert f"第{version}版已被第{newer}版取代" in done["state"]["message"]
    assert _decisions(served, version) == [] and _received(smtp, served, version) == []


def test_cli_approval_of_the_latest_never_sends_the_superseded_one(setup, smtp):
    """The scenario of the bug report: a run waits on v1, a late correction makes v2, the
    coordinator approves the latest from the command line."""
    served = setup
    old = _compile(served, "第六次导语")
    run = _waiting_publish_run(served, old)
    new = _cli(served, "compile", CAMPAIGN, "--lead", "第六次导语（更正）")["version"]
    approved = _cli(served, "approve", CAMPAIGN, "--by", "王处长", "--note", "同意印发第二版")
    assert approved["version"] == new and approved["approval"] == "approved"
    assert served.run(run)["state"]["type"] == "CANCELLED"
    # sent by the run waiting on the new version, or by the command itself when none waited yet
    for offered in approved["resumed_runs"]:
        served.wait_for(offered, final)
    assert len(_received(smtp, served, new)) == _recipients(served)
    assert _received(smtp, served, old) == []
    assert _decisions(served, old) == [] and _decisions(served, new) == [("bulletin.approved", "王处长")]
    assert _cli(served, "send", CAMPAIGN).get("sent", 0) == 0
    assert len(_received(smtp, served, new)) == _recipients(served)


def test_a_waiting_run_survives_serve_being_stopped(setup, smtp):
    """Stopped while a run waits; approved from the command line while it is down; started
    again: the approval is sent, once."""
    served = setup
    version = _compile(served, "第七次导语")
    run = _waiting_publish_run(served, version)
    served.wait_idle()
    served.stop()
    approved = _cli(served, "approve", CAMPAIGN, "--by", "王处长", "--note", "同意", api=False)
    assert approved["resumed_runs"] == [run] and "send" not in approved
    assert _received(smtp, served, version) == []  # nobody runs it while serve is down
    served.start()
    served.wait_for(run, final)
    received = _received(smtp, served, version)
    assert len(received) == len(set(received)) == _recipients(served)
    assert _decisions(served, version) == [("bulletin.approved", "王处长")]

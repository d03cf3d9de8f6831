"""Outages and refusals as a coordinator meets them, through the commands' own functions (in
this process, under the test's Prefect server) against a real SMTP server and a real dovecot on
127.0.0.1: each step finishes what it can, says the truth in its JSON summary and exits 1,
never with a traceback; only what may pass (the server down, a 4xx reply) is retried."""

from __future__ import annotations

import datetime as dt
import email
import json
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from email import policy

import pytest
import typer
from imap_server import imap_server  # noqa: F401 - the fixture
from pg_server import postgres_or_skip, restart, running_postgres
from smtp_server import CollectingHandler, free_port, running_smtp_server
from test_processing import write_return

from flows import cli, common
from tasks.bulletin.approval import decide
from tasks.bulletin.compile import compile_bulletin
from tasks.core import faults
from tasks.core.ledger import ACCEPTED, SENT, UNDELIVERABLE, Delivery, Ledger, Submission
from tasks.mail.notices import bulletin_recipients

pytestmark = pytest.mark.usefixtures("prefect_harness")
CAMPAIGN = "energy-week-2023"


@dataclass
class Moody(CollectingHandler):
    """A mail server with moods: 4xx to some recipients a number of times, the connection
    dropped during one recipient's DATA (after the server has the message), every RCPT counted."""

    temporary: dict[str, int] = field(default_factory=dict)  # address → 4xx replies still to give
    drop_during: str | None = None
    attempts: Counter = field(default_factory=Counter)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: N802
        self.attempts[address.lower()] += 1
        if self.temporary.get(address.lower(), 0) > 0:
            self.temporary[address.lower()] -= 1
            return "451 4.7.1 Greylisted, please try again later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        reply = await super().handle_DATA(server, session, envelope)
        if self.drop_during and self.drop_during in [r.lower() for r in envelope.rcpt_tos]:
            self.drop_during = None
            server.transport.close()  # the server has it; the client never hears 250
        return reply


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """The batch's retries come at once here (10 s and 60 s in production)."""
    monkeypatch.setattr(common.send_batch, "retry_delay_seconds", [0, 0])


@pytest.fixture
def approved(tmp_path, config, config_dir):
    """A home whose bulletin v1 is approved, nothing sent; the common CLI options."""
    now = dt.datetime(2023, 10, 9, 9, tzinfo=config.campaign.calendar.tz)
    ledger = Ledger(tmp_path)
    compile_bulletin(ledger, config, now, lead="导语")
    decide(ledger, CAMPAIGN, by="王处长", approve=True, note=None, now=now)
    return dict(home=tmp_path, config=config_dir, now=now.isoformat())


def use_smtp(monkeypatch, port: int) -> None:
    monkeypatch.setenv("BULLETIN_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("BULLETIN_SMTP_PORT", str(port))
    monkeypatch.setenv("BULLETIN_SMTP_SECURITY", "none")
    monkeypatch.delenv("BULLETIN_SMTP_USER", raising=False)


def run(capsys, command, *args, **options) -> tuple[int, dict, str]:
    """Exit code, JSON summary and stderr of one command."""
    capsys.readouterr()
    with pytest.raises(typer.Exit) as exit_:
        command(CAMPAIGN, *args, **options)
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary: {out.out[-2000:]} {out.err[-2000:]}"
    assert "Traceback" not in out.err + out.out
    return exit_.value.exit_code, json.loads(lines[-1]), out.err


def addresses(config) -> list[str]:
    return [a.email.lower() for a in bulletin_recipients(config)]


def received(server) -> Counter:
    """(recipient, Message-ID) → copies received."""
    seen: Counter = Counter()
    for m in server.messages:
        mid = email.message_from_bytes(m.data, policy=policy.default)["Message-ID"]
        seen.update((r.lower(), mid) for r in m.rcpt_tos)
    return seen


def delivery_states(home) -> dict[str, str]:
    with Ledger(home).session() as s:
        return {d.key: d.state for d in s.query(Delivery).filter(Delivery.step == "bulletin")}


def test_smtp_down_at_the_start_fails_cleanly_and_a_later_run_sends(approved, config, monkeypatch, capsys):
    use_smtp(monkeypatch, free_port())  # nothing listens there
    code, summary, err = run(capsys, cli.send, **approved)
    everyone = addresses(config)
    assert code == 1 and summary["failed"] == len(everyone) and not summary.get("sent")
    with Ledger(approved["home"]).session() as s:  # tried once per attempt of the batch, then it stopped
        tried = s.query(Delivery).filter(Delivery.step == "bulletin").all()
    assert [(d.state, d.attempts) for d in tried] == [("failed", 3)] and "无法连接" in tried[0].error
    with running_smtp_server() as server:
        use_smtp(monkeypatch, server.port)
        code, summary, _ = run(capsys, cli.send, **approved)
        assert code == 0 and summary["sent"] == len(everyone)
        assert sorted(r for r, _ in received(server)) == sorted(everyone)
        assert set(received(server).values()) == {1}


def test_a_permanent_refusal_is_never_retried_and_the_others_are_sent(approved, config, monkeypatch, capsys):
    everyone = addresses(config)
    wrong = everyone[1]
    with running_smtp_server(handler=Moody(refuse={wrong})) as server:
        use_smtp(monkeypatch, server.port)
        code, summary, err = run(capsys, cli.send, **approved)
        assert code == 1 and summary["undeliverable"] == 1 and summary["sent"] == len(everyone) - 1
        assert server.handler.attempts[wrong] == 1  # neither the batch's retries nor ...
        code, summary, _ = run(capsys, cli.send, **approved)
        assert server.handler.attempts[wrong] == 1  # ... the next run try it again
        assert code == 1 and summary["undeliverable"] == 1 and summary.get("sent", 0) == 0
        bulletins = [m for m in server.messages if wrong not in m.rcpt_tos and "系统通知" not in
                     str(m.message()["Subject"])]
        assert len(bulletins) == len(everyone) - 1
        notices = [m.message() for m in server.messages if "系统通知" in str(m.message()["Subject"])]
        assert len(notices) == 1 and wrong in notices[0].get_body(("plain",)).get_content()
    states = delivery_states(approved["home"])
    assert Counter(states.values()) == {SENT: len(everyone) - 1, UNDELIVERABLE: 1}
    rows = deliveries_artifact()  # the run's page in Prefect says the same, recipient by recipient
    assert [r["状态"] for r in rows if r["地址"].lower() == wrong] == ["被对方服务器拒收"]
    assert sum(r["状态"] == "已发送" for r in rows) == len(everyone) - 1


def test_refusals_in_different_batches_make_one_notice(approved, config, monkeypatch, capsys):
    """A large audience is sent by batches; the coordinators hear of every refusal once, at
    the end, not once per batch."""
    import flows.publish_bulletin as publish_module
    monkeypatch.setattr(publish_module, "SEND_CHUNK", 2)
    everyone = addresses(config)
    wrong = {everyone[0], everyone[-1]}
    assert len(everyone) > 4
    with running_smtp_server(handler=Moody(refuse=wrong)) as server:
        use_smtp(monkeypatch, server.port)
        code, summary, _ = run(capsys, cli.send, **approved)
        assert code == 1 and summary["undeliverable"] == 2 and summary["sent"] == len(everyone) - 2
        notices = [m.message() for m in server.messages if "系统通知" in str(m.message()["Subject"])]
        assert len(notices) == 1 and all(w in notices[0].get_body(("plain",)).get_content() for w in wrong)
        assert sorted(r for r, _ in received(server) if r not in {c.email for c in config.campaign.coordinators}) \
            == sorted(set(everyone) - wrong)


def deliveries_artifact() -> list[dict]:
    """The latest ``<campaign>-deliveries`` table artifact, from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{CAMPAIGN}-deliveries"])),
                                           sort=ArtifactSort.CREATED_DESC, limit=1)
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def test_a_temporary_refusal_is_retried_then_sent_once(approved, config, monkeypatch, capsys):
    everyone = addresses(config)
    busy = everyone[2]
    with running_smtp_server(handler=Moody(temporary={busy: 2})) as server:
        use_smtp(monkeypatch, server.port)
        code, summary, _ = run(capsys, cli.send, **approved)
        assert code == 0 and summary["sent"] == len(everyone)
        assert server.handler.attempts[busy] == 3  # two 451s, then accepted by the second retry
        assert Counter(r.lower() for m in server.messages for r in m.rcpt_tos)[busy] == 1


def test_a_temporary_refusal_that_lasts_is_tried_a_bounded_number_of_times(approved, config, monkeypatch,
                                                                           capsys):
    everyone = addresses(config)
    busy = everyone[0]
    with running_smtp_server(handler=Moody(temporary={busy: 99})) as server:
        use_smtp(monkeypatch, server.port)
        code, summary, _ = run(capsys, cli.send, **approved)
        assert code == 1 and summary["failed"] == 1 and summary["sent"] == len(everyone) - 1
        assert server.handler.attempts[busy] == 3  # the first try and the batch's two retries
        code, summary, _ = run(capsys, cli.send, **approved)  # the next run tries again
        assert code == 1 and server.handler.attempts[busy] == 6


def test_a_connection_dropped_during_a_message_leaves_only_that_one_uncertain(approved, config, monkeypatch,
                                                                              capsys):
    everyone = addresses(config)
    victim = everyone[3]
    with running_smtp_server(handler=Moody(drop_during=victim)) as server:
        use_smtp(monkeypatch, server.port)
        code, summary, _ = run(capsys, cli.send, **approved)
        assert code == 1 and summary["uncertain"] == 1 and summary["sent"] == len(everyone) - 1
        assert all(n == 1 for n in received(server).values())
        code, summary, _ = run(capsys, cli.send, resend_uncertain=True, **approved)
        assert code == 0 and summary["sent"] == 1
        copies = {k: n for k, n in received(server).items() if k[0] == victim}
        assert list(copies.values()) == [2]  # the resend carries the first copy's Message-ID
        assert all(n == 1 for k, n in received(server).items() if k[0] != victim)


@pytest.mark.parametrize("fault", ["down", "login refused"])
def test_the_mailbox_failing_does_not_stop_the_drop_folder(tmp_path, config, config_dir, smtp_env, imap_server,  # noqa: F811
                                                           monkeypatch, capsys, fault):
    monkeypatch.setenv("BULLETIN_IMAP_HOST", imap_server.host)
    monkeypatch.setenv("BULLETIN_IMAP_PORT", str(free_port() if fault == "down" else imap_server.port))
    monkeypatch.setenv("BULLETIN_IMAP_USER", imap_server.user)
    monkeypatch.setenv("BULLETIN_IMAP_PASSWORD", "not-the-password")
    monkeypatch.setenv("BULLETIN_IMAP_SECURITY", "none")
    unit = config.unit_by_code["210600"]
    write_return(tmp_path / "inbox" / CAMPAIGN, config, unit)
    now = config.campaign.calendar.deadline_at
    code, summary, err = run(capsys, cli.collect, home=tmp_path, config=config_dir, now=now.isoformat())
    assert code == 1 and summary["decided"] == {"accepted": 1} and summary["taken_in"] == 1
    assert summary["mailbox"] and "邮箱" in summary["mailbox"][0]
    assert "not-the-password" not in json.dumps(summary, ensure_ascii=False) + err
    subjects = [str(m.message()["Subject"]) for m in smtp_env.messages]
    assert sum("回执" in s for s in subjects) == 1
    notices = [m.message() for m in smtp_env.messages if "系统通知" in str(m.message()["Subject"])]
    assert len(notices) == 1 and "邮箱" in notices[0].get_body(("plain",)).get_content()


def test_postgres_restarted_during_an_intake_fails_the_run_cleanly_and_the_next_completes(
        tmp_path, config, config_dir, smtp_env, monkeypatch, capsys):
    with running_postgres(postgres_or_skip()) as server:
        with server.connect(autocommit=True) as conn:
            conn.execute('CREATE DATABASE "outage"')
        monkeypatch.setenv("BULLETIN_DB_URL", server.url("outage"))
        units = config.units[:3]
        for unit in units:
            write_return(tmp_path / "inbox" / CAMPAIGN, config, unit)
        options = dict(home=tmp_path, config=config_dir, now=config.campaign.calendar.deadline_at.isoformat())
        # the intake's rows are written, not committed, when the server goes away
        with faults.hook("record", 1, lambda: restart(server)):
            code, summary, err = run(capsys, cli.collect, **options)
        assert code == 1 and "error" in summary and "重新运行" in err
        assert len(list((tmp_path / "inbox" / CAMPAIGN).iterdir())) == 3  # nothing moved, nothing lost
        code, summary, _ = run(capsys, cli.collect, **options)
        assert code == 0 and summary["decided"] == {"accepted": 3}
        with Ledger(tmp_path, server.url("outage")).session() as s:
            subs = [(x.unit_code, x.state) for x in s.query(Submission)]
        assert sorted(subs) == sorted((u.code, ACCEPTED) for u in units)
        assert sum("回执" in str(m.message()["Subject"]) for m in smtp_env.messages) == 3
        from tasks.core import ledger
        ledger._engines.pop(server.url("outage")).dispose()
        ledger._checked.discard(server.url("outage"))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs mounted for this test (as root; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, which only root can mount")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def fill(disk, leave: int):
    """A file that leaves about *leave* bytes free on *disk*."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_a_full_disk_stops_intake_and_compile_cleanly_and_nothing_half_written_counts(
        small_disk, tmp_path, config, config_dir, smtp_env, capsys):
    home, returns = small_disk / "home", tmp_path / "returns"
    units = config.units[:8]
    for unit in units:
        write_return(returns, config, unit, name=f"{unit.code}.xlsx")
    Ledger(home)  # the ledger exists; then the disk fills up
    options = dict(home=home, config=config_dir, now=config.campaign.calendar.deadline_at.isoformat())
    filler = fill(small_disk, leave=24 * 1024)
    code, summary, err = run(capsys, cli.collect, inbox=returns, **options)
    assert code == 1 and "磁盘空间不足" in summary["error"] and "磁盘空间不足" in err
    with Ledger(home).session() as s:
        recorded = {x.original_name for x in s.query(Submission)}
    assert recorded < {f"{u.code}.xlsx" for u in units}  # some or none: the disk filled up first
    assert {p.name for p in returns.iterdir()} >= {f"{u.code}.xlsx" for u in units} - recorded
    assert not [p for p in (home / "archive").rglob(".incoming*")]  # no half-written file left
    filler.unlink()
    code, summary, _ = run(capsys, cli.collect, inbox=returns, **options)
    assert code == 0 and summary["accepted_units"] == 8 and not list(returns.iterdir())
    with Ledger(home).session() as s:
        assert sorted(x.unit_code for x in s.query(Submission)) == sorted(u.code for u in units)

    filler = fill(small_disk, leave=16 * 1024)
    code, summary, err = run(capsys, cli.compile_, **options)
    assert code == 1 and "磁盘空间不足" in summary["error"]
    assert Ledger(home).latest_bulletin(CAMPAIGN) is None
    assert not list((home / "bulletins" / CAMPAIGN).glob("*"))  # no version folder, whole or half
    filler.unlink()
    code, summary, _ = run(capsys, cli.compile_, **options)
    assert code == 0 and summary["version"] == 1


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BULLETIN_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def test_the_ledgers_database_down_is_an_outage_on_the_console_not_a_traceback(tmp_path, config_dir):
    import sys
    bin_ = os.path.join(os.path.dirname(sys.executable), "bulletin")
    run = subprocess.run([bin_, "collect", CAMPAIGN, "--home", str(tmp_path), "--config", str(config_dir)],
                         env=_clean_env(BULLETIN_DB_URL=f"postgresql+psycopg://office:s3cret@127.0.0.1:{free_port()}/x"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout
    assert "无法打开账本" in run.stderr and "s3cret" not in run.stderr + run.stdout
    assert "Connection refused" in json.loads(run.stdout.strip().splitlines()[-1])["error"]


def test_a_failing_send_shows_its_summary_and_no_traceback_on_the_console(approved, config, capsys):
    """The real command in its own process (against the test's Prefect server): Prefect logs
    the batch's failure with a traceback, which goes to the UI, not to the coordinator's terminal."""
    import sys

    from prefect.settings import PREFECT_API_URL
    bin_ = os.path.join(os.path.dirname(sys.executable), "bulletin")
    run = subprocess.run([bin_, "send", CAMPAIGN, "--home", str(approved["home"]), "--config", str(approved["config"]),
                          "--now", approved["now"]],
                         env=_clean_env(BULLETIN_SMTP_HOST="127.0.0.1", BULLETIN_SMTP_PORT=str(free_port()),
                                        BULLETIN_SMTP_SECURITY="none", BULLETIN_SEND_RETRY_DELAYS="[0, 0]",
                                        PREFECT_API_URL=PREFECT_API_URL.value()),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr + run.stdout and "SendFailed" in run.stderr  # the line, not the trace
    assert json.loads(run.stdout.strip().splitlines()[-1])["failed"] == len(addresses(config))

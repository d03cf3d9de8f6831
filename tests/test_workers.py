"""Workers on several hosts, as the README sets them up: a Prefect server on PostgreSQL, the
ledger on PostgreSQL, ``prefect deploy --all`` from the committed ``prefect.yaml``, and two
``prefect worker start`` processes in separate working directories (each with a checkout of
its own) sharing one home folder, as two hosts would share it over NFS. Every step is
triggered by deployment name with ``prefect deployment run``, and collect and publish twice at
once: each message reaches the SMTP server once, each return is decided once."""

from __future__ import annotations

import datetime as dt
import email
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from email import policy
from pathlib import Path

import pytest
from pg_server import postgres_server  # noqa: F401 - the fixture
from serve_process import BIN, PrefectRest, clean_env

from flows.demo import build_returns, drop

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CAMPAIGN = "energy-week-2023"
CHECKOUT = ("flows", "tasks", "templates", "config", "prefect.yaml", "pyproject.toml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkout(host: Path) -> Path:
    """A host's own copy of the project (what ``git clone`` would give it)."""
    target = host / "bulletin"
    for name in CHECKOUT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / name)
    return target


@contextmanager
def _process(cmd: list[str], env: dict, cwd: Path, log: Path):
    """A long-running child in its own session; SIGTERM to its group at the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((15, 30), (9, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def _cli(args: list[str], env: dict, cwd: Path) -> str:
    done = subprocess.run([str(BIN / "prefect"), *args], check=False, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _wait_healthy(api: PrefectRest, proc, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if api.request("GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None, f"prefect server exited: {log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"prefect server did not answer: {log.read_text(errors='replace')[-3000:]}")


def _run_by_name(name: str, params: dict, env: dict, cwd: Path) -> str:
    out = _cli(["deployment", "run", name, "--params", json.dumps(params)], env, cwd)
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert found, out
    return found.group(1)


def _finished(run: dict) -> bool:
    return run["state"]["type"] == "COMPLETED"


def _mails(server) -> list:
    return [email.message_from_bytes(m.data, policy=policy.default) for m in server.messages]


def test_two_workers_on_one_shared_home_run_every_step_once(postgres_server, tmp_path, config, config_dir,  # noqa: F811
                                                            smtp_server):
    from tasks.bulletin.approval import decide
    from tasks.core.ledger import Ledger, Submission
    from tasks.mail.notices import bulletin_recipients

    pg = postgres_server
    tag = f"{os.getpid()}_{int(time.time())}"
    with pg.connect(autocommit=True) as conn:
        for db in (f"prefect_{tag}", f"ledger_{tag}"):
            conn.execute(f'CREATE DATABASE "{db}"')
    ledger_url = pg.url(f"ledger_{tag}")
    port = _free_port()
    api = PrefectRest(f"http://127.0.0.1:{port}/api")
    home = tmp_path / "shared-home"  # what the hosts mount at the same path
    home.mkdir()
    cal = config.campaign.calendar

    server_env = clean_env(
        PREFECT_HOME=str(tmp_path / "server-prefect-home"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://{pg.user}@{pg.host}:{pg.port}/prefect_{tag}",
        PREFECT_SERVER_UI_ENABLED="false")
    cli_env = clean_env(PREFECT_HOME=str(tmp_path / "cli-prefect-home"), PREFECT_API_URL=api.api)
    hosts = {name: tmp_path / name for name in ("host-a", "host-b")}
    with ExitStack() as stack:
        server_log = tmp_path / "prefect-server.log"
        server = stack.enter_context(_process(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"],
            server_env, tmp_path, server_log))
        _wait_healthy(api, server, server_log)

        _cli(["work-pool", "create", "bulletin", "--type", "process"], cli_env, tmp_path)
        checkouts = {name: _checkout(host) for name, host in hosts.items()}
        _cli(["deploy", "--all", "--no-prompt"], cli_env, checkouts["host-a"])  # from a checkout, once

        logs = {}
        for name, host in hosts.items():
            env = clean_env(
                PREFECT_HOME=str(host / "prefect-home"), PREFECT_API_URL=api.api,
                PREFECT_WORKER_QUERY_SECONDS="1",
                BULLETIN_PROJECT_DIR=str(checkouts[name]), BULLETIN_HOME=str(home),
                BULLETIN_CONFIG=str(config_dir), BULLETIN_DB_URL=ledger_url,
                BULLETIN_SMTP_HOST=smtp_server.host, BULLETIN_SMTP_PORT=str(smtp_server.port),
                BULLETIN_SMTP_SECURITY="none", BULLETIN_WORKERS="1")
            logs[name] = host / "worker.log"
            stack.enter_context(_process(
                [str(BIN / "prefect"), "worker", "start", "--pool", "bulletin", "--type", "process",
                 "--name", name, "--limit", "1"], env, host, logs[name]))

        def run(step: str, now: dt.datetime, times: int = 1, **params) -> list[dict]:
            ids = [_run_by_name(f"{step}/{CAMPAIGN}", {"now": now.isoformat(), **params}, cli_env, tmp_path)
                   for _ in range(times)]
            return [api.wait_for(i, _finished, timeout=300) for i in ids]

        # requests: once per unit
        run("request-returns", cal.opens_at)
        assert len(smtp_server.messages) == len(config.units)

        # every unit returns, into the shared drop folder; collect started twice at once
        inbox = home / "inbox" / CAMPAIGN
        inbox.mkdir(parents=True)
        for r in build_returns(config).values():
            drop(config, inbox, r, "generated")
        before = len(smtp_server.messages)
        run("collect-returns", cal.deadline_at - dt.timedelta(days=2), times=2)
        with Ledger(home, ledger_url).reading() as s:
            decided = Counter(code for (code,) in s.execute(
                Submission.__table__.select().with_only_columns(Submission.unit_code)))
        assert decided == Counter({u.code: 1 for u in config.units}), "each return decided once"
        contacts = {u.contacts[0].email for u in config.units}
        sent = Counter((m["To"].addresses[0].addr_spec, str(m["Subject"])) for m in _mails(smtp_server)[before:])
        assert sorted(to for to, _ in sent if to in contacts) == sorted(contacts), "one receipt per return"
        assert set(sent.values()) == {1}, "nothing twice (receipts, and the coordinators' notice)"
        assert not list(inbox.iterdir())

        # reminders: only to the units whose return was not accepted (the demo's one that owes
        # an explanation), once each
        with Ledger(home, ledger_url).reading() as s:
            owing = {code for code, state in s.execute(
                Submission.__table__.select().with_only_columns(Submission.unit_code, Submission.state))
                if state != "accepted"}
        before = len(smtp_server.messages)
        run("send-reminders", cal.deadline_at - dt.timedelta(days=1))
        reminded = [m["To"].addresses[0].addr_spec for m in _mails(smtp_server)[before:]]
        owing_contacts = {u.contacts[0].email for u in config.units if u.code in owing}
        assert owing and set(reminded) <= owing_contacts and len(reminded) == len(set(reminded)), reminded

        # compile, approve, publish twice at once
        run("compile-bulletin", cal.compile_moment)
        decide(Ledger(home, ledger_url), CAMPAIGN, by="测试协调人", approve=True, note="同意", now=cal.compile_moment)
        before = len(smtp_server.messages)
        run("publish-bulletin", cal.compile_moment, times=2)
        bulletins = _mails(smtp_server)[before:]
        people = sorted(p.email for p in bulletin_recipients(config))
        assert sorted(m["To"].addresses[0].addr_spec for m in bulletins) == people, "one copy per recipient"

        # both hosts took work (each worker takes one run at a time: the runs started twice at
        # once went one to each)
        for name, log in logs.items():
            assert f"Worker '{name}' submitting flow run" in log.read_text(errors="replace"), f"{name} ran nothing"

"""Shared fixtures: one Prefect test harness per session, a real SMTP server on loopback."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from smtp_server import running_smtp_server  # noqa: E402

#: Modules whose tests run whole processes (the CLI, serve, killed steps): marked ``slow``.
SLOW_MODULES = {"test_faults", "test_outages", "test_approval_server", "test_serve", "test_cli", "test_schema"}


def pytest_collection_modifyitems(items):
    """Markers from what a test uses, so that ``make test-fast`` (``-m "not imap and not
    postgres and not prefect_server and not slow"``) runs the plain-function tests alone."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "imap_server" in used or item.module.__name__ == "test_faults":
            item.add_marker(pytest.mark.imap)
        if used & {"postgres_server", "postgres_url", "pg", "ledgers"}:
            item.add_marker(pytest.mark.postgres)
        if "prefect_harness" in used or item.module.__name__ in {"test_approval_server", "test_serve", "test_faults"}:
            item.add_marker(pytest.mark.prefect_server)
        if item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory) -> Path:
    """The repository's configuration, with the 2023 campaign's charts and PDF turned off: they
    cost two or three seconds a compile, and the flow tests compile a few dozen times. They are
    tested where they are read (tests/test_outputs_as_read.py) and by the demo's test, which
    runs on the repository's own files."""
    copy = tmp_path_factory.mktemp("config") / "config"
    shutil.copytree(ROOT / "config", copy)
    campaign = copy / "campaigns" / "energy-week-2023.yaml"
    text = campaign.read_text(encoding="utf-8")
    assert "\n  attach_pdf: true\n" in text
    campaign.write_text(text.replace("\n  attach_pdf: true\n", "\n  attach_pdf: false\n  pdf: false\n  charts: false\n"),
                        encoding="utf-8")
    return copy


@pytest.fixture(scope="session")
def config(config_dir):
    """The 2023 campaign (without charts and PDF: see ``config_dir``)."""
    from tasks.core.config import load_config
    return load_config(config_dir, "energy-week-2023")


@pytest.fixture
def home(tmp_path) -> Path:
    """A fresh bulletin home (state folder) per test."""
    return tmp_path / "home"


@pytest.fixture
def ledger(home):
    """A real SQLite ledger in that home."""
    from tasks.core.ledger import Ledger
    return Ledger(home)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect server for every integration test of the session."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    @flow(name="warm-up")
    def warm_up() -> None:
        """Prefect's logging is set up by the first flow run and keeps the streams it found: run
        one here, before any test captures stdout or stderr (capsys), whatever the test order."""

    with prefect_test_harness(server_startup_timeout=120):
        warm_up()
        yield


@pytest.fixture
def smtp_server():
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def smtp_env(smtp_server, monkeypatch):
    """Point the mailer at the loopback SMTP server (plain, no login)."""
    monkeypatch.setenv("BULLETIN_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("BULLETIN_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("BULLETIN_SMTP_SECURITY", "none")
    monkeypatch.delenv("BULLETIN_SMTP_USER", raising=False)
    return smtp_server

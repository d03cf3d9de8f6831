"""What every step starts from: home, configuration, ledger and the moment it acts at.

No Prefect import here: the CLI resolves the home (and so ``PREFECT_HOME``) before Prefect
loads, and ``status`` never loads it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tasks.core.config import Config, load_config
from tasks.core.ledger import Ledger
from tasks.core.settings import AppSettings
from tasks.core.shipped import DEMO_CONFIG

from .home import resolve_home  # noqa: F401 - re-exported: the CLI and the flows import it from here

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_CONFIG = DEMO_CONFIG  # the demo's configuration, shipped with the code


def config_cache(home: Path) -> Path:
    """Where big config files' parsed data is kept by content (see :func:`load_config`)."""
    return home / "cache" / "config"


def resolve_config_dir(config_dir: str | os.PathLike | None = None) -> Path:
    """``--config``, else ``BULLETIN_CONFIG``, else ``./config``. (Only ``demo`` uses the shipped
    configuration; a folder without one is made by ``bulletin init``.)"""
    chosen = config_dir or os.environ.get("BULLETIN_CONFIG")
    return Path(chosen or "config").expanduser().resolve()


#: Where ``serve`` records the Prefect server it started, for the CLI to use instead of its own.
SERVER_RECORD = "server.json"


def configure_prefect_home(home: Path, use_running_server: bool = True) -> None:
    """Use ``<home>/prefect`` as PREFECT_HOME unless a Prefect home or API is already set; and
    when ``serve`` is running on this home (:func:`running_server`), its API, so a step from
    the command line starts no temporary server and shows in the UI like a scheduled run.

    Must run before Prefect is imported, so the CLI, ``serve`` and ``approve`` share one
    Prefect database."""
    if not os.environ.get("PREFECT_HOME") and not os.environ.get("PREFECT_API_URL"):
        (home / "prefect").mkdir(parents=True, exist_ok=True)
    os.environ.update(prefect_environment(home, os.environ, use_running_server))


def prefect_environment(home: Path, env: Mapping[str, str], use_running_server: bool = True) -> dict[str, str]:
    """The Prefect settings a step on *home* runs with, from the environment *env* it was
    started with (see :func:`configure_prefect_home`)."""
    env = dict(env)
    if not env.get("PREFECT_HOME") and not env.get("PREFECT_API_URL"):
        env["PREFECT_HOME"] = str(home / "prefect")
        api = running_server(home) if use_running_server else None
        if api:
            env["PREFECT_API_URL"] = api
            if env.get("PREFECT_SERVER_API_AUTH_STRING"):
                env.setdefault("PREFECT_API_AUTH_STRING", env["PREFECT_SERVER_API_AUTH_STRING"])
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a new Prefect database migrates at first start: on a busy 2-core machine that can
    # take longer than Prefect's 20 s default
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    return {k: v for k, v in env.items() if k.startswith("PREFECT_")}


def record_server(home: Path, api: str) -> Path:
    """Note the API of the server ``serve`` started (removed when it stops)."""
    path = home / "prefect" / SERVER_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"api": api, "pid": os.getpid()}), encoding="utf-8")
    return path


def running_server(home: Path) -> str | None:
    """The API recorded by a ``serve`` still running on *home* and answering its health check
    within a second; None otherwise (no record, its process gone, or no answer)."""
    path = home / "prefect" / SERVER_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        os.kill(int(record["pid"]), 0)
        with urllib.request.urlopen(f"{record['api']}/health", timeout=1) as answer:
            return str(record["api"]) if answer.status == 200 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_now(now: dt.datetime | str | None, config: Config) -> dt.datetime:
    """``--now`` (naive times are in the campaign's timezone), else the real clock."""
    tz = config.campaign.calendar.tz
    if now is None:
        return dt.datetime.now(tz)
    if isinstance(now, str):
        now = dt.datetime.fromisoformat(now)
    return now if now.tzinfo else now.replace(tzinfo=tz)


class Context:
    """One step's view of a campaign.

    A plain class on purpose: Prefect walks dataclasses and pydantic models passed to tasks
    (looking for futures), and a config holds every unit, up to hundreds of thousands."""

    def __init__(self, config: Config, ledger: Ledger, home: Path, now: dt.datetime):
        self.config, self.ledger, self.home, self.now = config, ledger, home, now
        self.sent_keys: set[str] = set()  # messages this run handed to the server, over every attempt

    def __repr__(self) -> str:
        return f"Context({self.campaign_id}, {self.home}, {self.now.isoformat()})"

    @property
    def campaign_id(self) -> str:
        return self.config.campaign.id

    @property
    def override_dir(self) -> str | None:
        folder = self.config.directory / "campaigns" / self.campaign_id / "templates"
        return str(folder) if folder.is_dir() else None


def open_context(campaign: str, home: str | None = None, config_dir: str | None = None,
                 now: dt.datetime | str | None = None) -> Context:
    """Load and check the configuration (ConfigError on any flaw), open the ledger.

    A big ``units.yaml`` is parsed once per content: later runs read its data from
    ``<home>/cache/config``."""
    home_path = resolve_home(home)
    config = load_config(resolve_config_dir(config_dir), campaign, cache_dir=config_cache(home_path))
    ledger = Ledger(home_path, AppSettings().db_url)
    return Context(config, ledger, home_path, resolve_now(now, config))

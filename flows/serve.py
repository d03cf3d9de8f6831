"""``bulletin serve``: a deployment per step per campaign, scheduled from each calendar.

With no ``PREFECT_API_URL`` it starts a local Prefect server (UI on) on 127.0.0.1 under
``<home>/prefect`` and stops it on exit; with one set it registers against that server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tasks.config import list_campaigns, load_config
from tasks.schedule import campaign_schedules

DEFAULT_PORT = 4200


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@contextmanager
def local_prefect_server(home: Path, port: int = DEFAULT_PORT, timeout: float = 120) -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1; yield its API URL; stop it afterwards."""
    port = _free_port(port)
    env = {**os.environ, "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(home / "prefect")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
           # show a campaign's runs up to a year ahead (Prefect's default horizon is 100 days)
           "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_SCHEDULED_TIME": os.environ.get(
               "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_SCHEDULED_TIME", "P400D")}
    log = open(home / "prefect-server.log", "ab")
    # its own session: Ctrl+C in the terminal reaches serve alone, whose runner still needs the
    # server to wind down; the server is stopped below, or when this process dies (Linux)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_stop_with_parent)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server did not start; see {home / 'prefect-server.log'}")
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def build_deployments(home: Path, config_dir: Path) -> list:
    """Every campaign's five deployments (named after the campaign id) with their schedules."""
    from prefect.schedules import RRule

    from .collect_returns import collect_returns
    from .compile_bulletin import compile_bulletin
    from .publish_bulletin import publish_bulletin
    from .request_returns import request_returns
    from .send_reminders import send_reminders
    flows = {f.name: f for f in (request_returns, send_reminders, collect_returns, compile_bulletin,
                                 publish_bulletin)}
    deployments = []
    for campaign_id in list_campaigns(config_dir):
        campaign = load_config(config_dir, campaign_id).campaign
        for flow_name, schedules in campaign_schedules(campaign).items():
            deployments.append(flows[flow_name].to_deployment(
                name=campaign_id,
                parameters={"campaign": campaign_id, "home": str(home), "config_dir": str(config_dir)},
                schedules=[RRule(s.rrule, timezone=campaign.calendar.timezone, slug=s.slug,
                                 parameters=s.parameters) for s in schedules],
                description=f"{campaign.name}：{flow_name}", tags=[campaign_id, "bulletin"]))
    return deployments


def serve_all(home: Path, config_dir: Path) -> None:
    """Register every deployment and run them until interrupted (Ctrl+C)."""
    home.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PREFECT_API_URL"):
        _serve(home, config_dir)
        return
    with local_prefect_server(home) as api:
        os.environ["PREFECT_API_URL"] = api
        print(f"Prefect 界面 UI: {api.removesuffix('/api')}", flush=True)
        _serve(home, config_dir)


def _serve(home: Path, config_dir: Path) -> None:
    from prefect import serve
    deployments = build_deployments(home, config_dir)
    print(f"主目录 home: {home}；已注册 {len(deployments)} 个部署 deployments", flush=True)
    serve(*deployments)

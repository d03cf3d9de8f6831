"""``bulletin serve``: a deployment per step per campaign, scheduled from each calendar.

With no ``PREFECT_API_URL`` it starts a local Prefect server (UI on) under ``<home>/prefect``
and stops it on exit; with one set it registers against that server. The local server listens
on 127.0.0.1 unless told otherwise (``--host``); any other address needs Prefect's API
authentication (``PREFECT_SERVER_API_AUTH_STRING``), or serve refuses to start: the UI answers
approvals.
"""

from __future__ import annotations

import base64
import json
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

from .context import record_server
from .watch import start_watching

DEFAULT_PORT = 4200
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ExposureError(Exception):
    """The UI would be reachable from other machines without authentication."""


def check_exposure(host: str) -> None:
    """Binding the UI and API to anything but loopback needs Prefect's API authentication."""
    if host in LOOPBACK or os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        return
    raise ExposureError(
        f"拒绝在 {host} 上开放 Prefect 界面和接口：未设置认证，任何能访问该地址的人都能审批简讯。"
        "请设置 PREFECT_SERVER_API_AUTH_STRING=用户名:密码（其他客户端设置 PREFECT_API_AUTH_STRING 为同一值），"
        "或只绑定 127.0.0.1 并经单位的反向代理访问。"
        f"Refusing to serve the UI on {host} without PREFECT_SERVER_API_AUTH_STRING.")


def _client_host(host: str) -> str:
    """Where this machine reaches a server bound to *host*."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "localhost") else host


def _free_port(preferred: int | None) -> int:
    """*preferred* when nothing listens there, else (or with None) a port the system gives."""
    if preferred is not None:
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
def local_prefect_server(home: Path, port: int = DEFAULT_PORT, timeout: float = 120,
                         host: str = "127.0.0.1") -> Iterator[str]:
    """Start ``prefect server start`` on *host* (see :func:`check_exposure`); yield its API URL;
    stop it afterwards. The preferred port is used when free; when another server (of another
    home) takes it meanwhile, this one starts again on a port the system gives."""
    check_exposure(host)
    prefect_home = os.environ.get("PREFECT_HOME", str(home / "prefect"))
    env = {**os.environ, "PREFECT_HOME": prefect_home,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
           # show a campaign's runs up to a year ahead (Prefect's default horizon is 100 days)
           "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_SCHEDULED_TIME": os.environ.get(
               "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_SCHEDULED_TIME", "P400D")}
    log = open(home / "prefect-server.log", "ab")
    proc: subprocess.Popen | None = None
    try:
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            port = _free_port(port if attempt == 0 else None)
            # its own session: Ctrl+C in the terminal reaches serve alone, whose runner still needs
            # the server to wind down; the server is stopped below, or when this process dies (Linux)
            proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host,
                                     "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_stop_with_parent)
            api = f"http://{_client_host(host)}:{port}/api"
            answer = _wait_for_server(api, proc, prefect_home, deadline)
            if answer == "ours":
                break
            _stop(proc)  # the port went to another server before ours could take it
        else:
            raise RuntimeError(f"Prefect server did not start; see {home / 'prefect-server.log'}")
        yield api
    finally:
        if proc is not None:
            _stop(proc)
        log.close()


def _wait_for_server(api: str, proc: subprocess.Popen, prefect_home: str, deadline: float) -> str:
    """``ours`` once the API answers with our Prefect home, ``other`` when a server of another
    home answers there; RuntimeError when ours died or the time is up."""
    headers = {}
    if os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        token = base64.b64encode(os.environ["PREFECT_SERVER_API_AUTH_STRING"].encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    while True:
        try:
            request = urllib.request.Request(f"{api}/admin/settings", headers=headers)
            with urllib.request.urlopen(request, timeout=2) as r:
                home = json.load(r).get("home")
            return "ours" if home and Path(home).resolve() == Path(prefect_home).resolve() else "other"
        except (OSError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Prefect server did not start (exit {proc.poll()})")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def build_deployments(config_dir: Path) -> list:
    """The deployments of ``flows.deployments.deployment_specs``, ready for ``serve``."""
    from prefect.schedules import RRule

    from .collect_returns import collect_returns
    from .compile_bulletin import compile_bulletin
    from .deployments import deployment_specs
    from .publish_bulletin import publish_bulletin
    from .request_returns import request_returns
    from .send_reminders import send_reminders
    flows = {f.name: f for f in (request_returns, send_reminders, collect_returns, compile_bulletin,
                                 publish_bulletin)}
    return [flows[d.flow_name].to_deployment(
        name=d.name, parameters=d.parameters, description=d.description, tags=d.tags,
        schedules=[RRule(s.rrule, timezone=d.timezone, slug=s.slug, parameters=s.parameters) for s in d.schedules])
        for d in deployment_specs(config_dir)]


def serve_all(home: Path, config_dir: Path, host: str = "127.0.0.1") -> None:
    """Register every deployment and run them until interrupted (Ctrl+C)."""
    home.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PREFECT_API_URL"):
        _serve(home, config_dir)
        return
    with local_prefect_server(home, host=host) as api:
        os.environ["PREFECT_API_URL"] = api
        if os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):  # this process's clients log in too
            os.environ.setdefault("PREFECT_API_AUTH_STRING", os.environ["PREFECT_SERVER_API_AUTH_STRING"])
        print(f"Prefect 界面 UI: {api.removesuffix('/api')}", flush=True)
        record = record_server(home, api)  # the CLI's steps use this server while it runs
        try:
            _serve(home, config_dir)
        finally:
            record.unlink(missing_ok=True)


def _serve(home: Path, config_dir: Path) -> None:
    from prefect import serve
    # the runner's flow processes inherit these: the deployments pass the campaign alone
    os.environ["BULLETIN_HOME"], os.environ["BULLETIN_CONFIG"] = str(home), str(config_dir)
    deployments = build_deployments(config_dir)
    print(f"主目录 home: {home}；已注册 {len(deployments)} 个部署 deployments", flush=True)
    stop = start_watching(home, config_dir) if os.environ.get("BULLETIN_WATCH", "1") != "0" else None
    warm = start_warm_process(home) if os.environ.get("BULLETIN_WARM", "1") != "0" else None
    try:
        serve(*deployments)
    finally:
        if stop is not None:
            stop.set()
        if warm is not None:
            warm.terminate()  # it stops taking commands; those under way finish


def start_warm_process(home: Path) -> subprocess.Popen:
    """Serve's warm process (:mod:`flows.warm`), in this environment, logging to
    ``<home>/prefect/warm.log``; it ends with serve."""
    with open(home / "prefect" / "warm.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "flows.warm", "--home", str(home)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_stop_with_parent, start_new_session=True)

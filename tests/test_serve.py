"""`bulletin serve` against a real Prefect server on 127.0.0.1: deployments register with the
brief's names, and a run triggered by deployment name completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BULLETIN_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def test_serve_registers_deployments_and_runs_one(tmp_path, config_dir):
    from flows.serve import local_prefect_server
    os.environ.pop("PREFECT_API_URL", None)
    server_home = tmp_path / "server"
    server_home.mkdir()
    saved = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(server_home / "prefect")
    try:
        with local_prefect_server(server_home, port=4290) as api:
            env = _env(PREFECT_API_URL=api, PREFECT_HOME=str(server_home / "prefect"))
            home = tmp_path / "home"
            serve = subprocess.Popen([str(BIN / "bulletin"), "serve", "--home", str(home), "--config", str(config_dir)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                from tasks.config import list_campaigns
                names = _wait_for_deployments(env, expected=5 * len(list_campaigns(config_dir)))
                assert "collect-returns/energy-week-2027" in names
                assert "publish-bulletin/energy-week-2023" in names
                run = subprocess.run(
                    [str(BIN / "prefect"), "deployment", "run", "request-returns/energy-week-2023",
                     "-p", "now=2023-09-18T09:00:00+08:00", "-p", "dry_run=true", "--watch",
                     "--watch-timeout", "240"],
                    env=env, capture_output=True, text=True, timeout=300)
                assert run.returncode == 0, run.stdout + run.stderr
                assert "Completed" in run.stdout
            finally:
                serve.terminate()
                serve.wait(timeout=30)
    finally:
        if saved is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = saved
    assert (home / "ledger.db").exists()


def _wait_for_deployments(env: dict, expected: int, timeout: float = 180) -> set[str]:
    code = ("import asyncio, json\nfrom prefect import get_client\n"
            "async def m():\n async with get_client() as c:\n"
            "  ds = await c.read_deployments()\n  fl = {f.id: f.name for f in await c.read_flows()}\n"
            "  print(json.dumps([fl[d.flow_id] + '/' + d.name for d in ds]))\nasyncio.run(m())")
    deadline = time.monotonic() + timeout
    names: set[str] = set()
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            names = set(json.loads(out.stdout.strip().splitlines()[-1]))
            if len(names) >= expected:
                return names
        time.sleep(3)
    raise AssertionError(f"deployments not registered in time: {names}")


def test_serve_refuses_to_open_the_ui_to_the_network_without_authentication(tmp_path, config_dir):
    run = subprocess.run([str(BIN / "bulletin"), "serve", "--home", str(tmp_path / "home"), "--config",
                          str(config_dir), "--host", "0.0.0.0"], env=_env(), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "PREFECT_SERVER_API_AUTH_STRING" in run.stderr and "0.0.0.0" in run.stderr
    assert not (tmp_path / "home" / "prefect-server.log").exists()  # no server was started


def test_the_ui_on_the_network_asks_for_the_password(tmp_path, config_dir):
    """Bound to every address with Prefect's API authentication: a request without the password
    is refused, one with it is served, and serve's own clients (registering the deployments) log
    in with it."""
    import base64
    import urllib.error
    import urllib.request

    from serve_process import ServeProcess, clean_env
    served = ServeProcess(tmp_path / "home", config_dir, clean_env(PREFECT_SERVER_API_AUTH_STRING="office:s3cret"),
                          "--host", "0.0.0.0").start()
    try:
        body = json.dumps({"limit": 200}).encode()

        def deployments(auth: str | None) -> tuple[int, list]:
            headers = {"Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
            req = urllib.request.Request(served.api + "/deployments/filter", data=body, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                return exc.code, []

        assert deployments(None)[0] == 401
        assert deployments("office:wrong")[0] == 401
        deadline = time.monotonic() + 120  # serve registers its deployments through the same API
        while time.monotonic() < deadline:
            status, found = deployments("office:s3cret")
            assert status == 200
            if any(d["name"] == "energy-week-2023" for d in found):
                break
            time.sleep(1)
        else:
            raise AssertionError("serve did not register its deployments with the password")
    finally:
        served.stop()

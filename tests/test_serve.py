"""`bulletin serve` against a real Prefect server: deployments register with the brief's
names, and a run triggered through the API completes; the UI and API leave 127.0.0.1 only with
Prefect's API authentication."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BULLETIN_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def test_serve_refuses_to_open_the_ui_to_the_network_without_authentication(tmp_path, config_dir):
    run = subprocess.run([str(BIN / "bulletin"), "serve", "--home", str(tmp_path / "home"), "--config",
                          str(config_dir), "--host", "0.0.0.0"], env=_env(), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "PREFECT_SERVER_API_AUTH_STRING" in run.stderr and "0.0.0.0" in run.stderr
    assert not (tmp_path / "home" / "prefect-server.log").exists()  # no server was started


def test_serve_on_the_network_registers_and_runs_behind_the_password(tmp_path, config_dir):
    """Bound to every address with Prefect's API authentication: a request without the password,
    or with a wrong one, is refused; serve's own clients log in, register a deployment per step
    per campaign under the brief's names, and a run created through the API completes."""
    from serve_process import ServeProcess, clean_env

    from flows.context import running_server
    from tasks.core.config import list_campaigns
    served = ServeProcess(tmp_path / "home", config_dir, clean_env(PREFECT_SERVER_API_AUTH_STRING="office:s3cret"),
                          "--host", "0.0.0.0").start()
    try:
        def status_with(auth: str | None) -> int:
            headers = {"Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
            req = urllib.request.Request(served.api + "/deployments/filter", data=b"{}", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status_with(None) == 401 and status_with("office:wrong") == 401
        run = served.create_run("request-returns", "energy-week-2023",
                                {"now": "2023-09-18T09:00:00+08:00", "dry_run": True})
        served.wait_for(run, lambda r: r["state"]["type"] == "COMPLETED", timeout=240)
        flows = {f["id"]: f["name"] for f in served.post("/flows/filter", {})}
        names = {f"{flows[d['flow_id']]}/{d['name']}" for d in served.post("/deployments/filter", {"limit": 200})}
        assert len(names) == 5 * len(list_campaigns(config_dir))
        assert {"collect-returns/energy-week-2027", "publish-bulletin/energy-week-2023"} <= names
        # a step from the command line on this home runs against serve's server (logging in
        # with the same password), not a temporary API of its own
        home = tmp_path / "home"
        assert json.loads((home / "prefect" / "server.json").read_text())["api"] == served.api
        done = subprocess.run([str(BIN / "bulletin"), "collect", "energy-week-2023", "--home", str(home),
                               "--config", str(config_dir), "--now", "2023-09-20T10:00:00"],
                              env=clean_env(PREFECT_SERVER_API_AUTH_STRING="office:s3cret"),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "temporary server" not in done.stderr, done.stderr[-2000:]
        runs = [r["name"] for r in served.post("/flow_runs/filter", {"limit": 50})]
        assert any(n.startswith("collect energy-week-2023") for n in runs), runs
    finally:
        served.stop()
    assert (tmp_path / "home" / "ledger.db").exists()
    assert not (tmp_path / "home" / "prefect" / "server.json").exists()  # gone with serve
    (tmp_path / "home" / "prefect" / "server.json").write_text(
        json.dumps({"api": "http://127.0.0.1:9/api", "pid": 2 ** 22 + 1}))
    assert running_server(tmp_path / "home") is None  # a record left by a serve that died


def test_receipts_come_within_a_minute_of_arrival():
    """``bench/receipts.py`` in a small burst: serve's watcher starts a collect as returns
    arrive by IMAP APPEND and by renames into the drop folder; every receipt within 60 s."""
    import importlib.util
    from pathlib import Path

    from imap_server import dovecot_or_skip
    dovecot_or_skip()
    path = Path(__file__).resolve().parent.parent / "bench" / "receipts.py"
    spec = importlib.util.spec_from_file_location("bench_receipts", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure(returns=4, bursts=1, gap=0)
    assert result["missing"] == 0 and result["max"] <= bench.TARGET, result
    assert 1 <= result["runs_started_by_arrivals"] <= 4, result  # the watcher's runs, debounced

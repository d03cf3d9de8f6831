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


def test_command_line_steps_run_in_serves_warm_process(tmp_path, config_dir):
    """With serve running, a step from the command line is forked from serve's warm process
    (flows/warm.py): same answer as run in its own process, its exit status comes back (2 for
    bad input; SIGKILL for a step a fault killed, whose return the next run takes in); Ctrl+C
    reaches the step; a command killed takes its step with it; a command with other Prefect
    settings runs the step itself."""
    import signal
    import socket
    import time

    from serve_process import ServeProcess, clean_env

    from tasks.core.config import load_config
    from tasks.mail.workbook import build_request_workbook, fill_workbook
    home, campaign, now = tmp_path / "home", "energy-week-2023", "2023-09-20T10:00:00"
    served = ServeProcess(home, config_dir, clean_env(BULLETIN_WATCH="0")).start()
    log = home / "prefect" / "warm.log"

    def warm_lines() -> list[str]:
        return log.read_text(encoding="utf-8").splitlines() if log.exists() else []

    def args(*step: str) -> list[str]:
        return [str(BIN / "bulletin"), *step, "--home", str(home), "--config", str(config_dir)]

    def cli(*step: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(args(*step), env=clean_env(**extra), capture_output=True, text=True, timeout=300)

    try:
        deadline = time.monotonic() + 60
        while not any("ready on" in line for line in warm_lines()):
            assert time.monotonic() < deadline, "the warm process did not start"
            time.sleep(0.2)
        warm = cli("collect", campaign, "--now", now)
        assert warm.returncode == 0, warm.stderr[-2000:]
        assert any(line.endswith("started: collect energy-week-2023") for line in warm_lines())
        here = cli("collect", campaign, "--now", now, BULLETIN_WARM="0")
        assert here.returncode == 0, here.stderr[-2000:]
        assert json.loads(warm.stdout) == json.loads(here.stdout)
        assert "Beginning flow run" in warm.stderr  # the step's log reaches the terminal

        second = cli("serve")  # one serve per home
        assert second.returncode == 2 and "already running" in second.stderr, second.stderr[-2000:]
        bad = cli("status", "no-such-campaign")
        assert bad.returncode == 2 and "no-such-campaign" in bad.stderr
        handed = len(warm_lines())
        other = cli("status", campaign, "--json", PREFECT_LOGGING_LEVEL="WARNING")
        assert other.returncode == 0 and len(warm_lines()) == handed  # ran in its own process

        config = load_config(config_dir, campaign)
        unit = config.units[0]
        values = {f.key: (7 if f.kind == "count" else "开展了节能宣传活动。") for f in config.campaign.form.fields}
        inbox = home / "inbox" / campaign
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / f"{unit.name}报表.xlsx").write_bytes(fill_workbook(build_request_workbook(config.campaign, unit), values))
        killed = cli("collect", campaign, "--now", now, BULLETIN_FAULT="move:1")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert warm_lines()[-1].endswith("killed by signal 9")
        status = json.loads(cli("status", campaign, "--json").stdout)
        again = cli("collect", campaign, "--now", now)
        assert again.returncode == 0, again.stderr[-2000:]
        after = json.loads(cli("status", campaign, "--json").stdout)
        assert after["accepted"] == status["accepted"] + 1, (status, after)

        with socket.socket() as silent:  # a mailbox that never answers: the step waits on it
            silent.bind(("127.0.0.1", 0))
            silent.listen(4)
            silent.settimeout(120)
            imap = {"BULLETIN_IMAP_HOST": "127.0.0.1", "BULLETIN_IMAP_PORT": str(silent.getsockname()[1]),
                    "BULLETIN_IMAP_SECURITY": "none"}
            waiting = subprocess.Popen(args("collect", campaign, "--now", now), env=clean_env(**imap),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            first = silent.accept()[0]
            waiting.send_signal(signal.SIGINT)  # Ctrl+C
            assert waiting.wait(timeout=60) == 130
            gone = subprocess.Popen(args("collect", campaign, "--now", now), env=clean_env(**imap),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            held = silent.accept()[0]
            step = int(warm_lines()[-1].split()[2])
            gone.kill()
            gone.wait(timeout=30)
            deadline = time.monotonic() + 30
            while not any(line.endswith(f" {step} killed by signal 9") for line in warm_lines()):
                assert time.monotonic() < deadline, warm_lines()[-3:]
                time.sleep(0.2)
            first.close()
            held.close()
    finally:
        served.stop()

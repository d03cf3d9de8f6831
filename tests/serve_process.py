"""`bulletin serve` in its own process group, with its own Prefect server on 127.0.0.1, and the
Prefect REST API spoken as the UI speaks it (plain HTTP).

    served = ServeProcess(home, config_dir, env).start()
    run = served.create_run("publish-bulletin", "energy-week-2023", {"wait_for_approval": True})
    served.wait_for(run, lambda r: r["state"]["type"] == "PAUSED")
    served.post(f"/flow_runs/{run}/resume", {"run_input": {...}})
    served.stop()   # Ctrl+C, as a coordinator stops it; the server goes with it
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict:
    """This environment without Prefect's or bulletin's settings (the test harness sets some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BULLETIN_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


class PrefectRest:
    """The Prefect REST API at ``api`` (``http://127.0.0.1:PORT/api``), spoken as the UI does."""

    def __init__(self, api: str = "", env: dict | None = None):
        self.api, self.env = api, env or {}

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.env.get("PREFECT_SERVER_API_AUTH_STRING"):  # a server bound beyond loopback asks for it
            headers["Authorization"] = "Basic " + base64.b64encode(
                self.env["PREFECT_SERVER_API_AUTH_STRING"].encode()).decode()
        req = urllib.request.Request(self.api + path, data=data, method=method, headers=headers)
        for attempt in range(6):  # a busy server answers 503; Prefect's own clients retry those too
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    raw = r.read()
                    return r.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or attempt == 5:
                    return exc.code, json.loads(exc.read() or b"null")
            time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    def post(self, path: str, body: dict) -> object:
        status, answer = self.request("POST", path, body)
        assert status < 400, (path, status, answer)
        return answer

    def get(self, path: str) -> object:
        status, answer = self.request("GET", path)
        assert status < 400, (path, status, answer)
        return answer

    def create_run(self, flow: str, deployment: str, parameters: dict, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while (found := self.request("GET", f"/deployments/name/{flow}/{deployment}"))[0] == 404:
            assert time.monotonic() < deadline, f"{flow}/{deployment} not registered"
            time.sleep(1)  # serve registers its deployments after it has started
        status, dep = found
        assert status == 200, (status, dep)
        return self.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})["id"]

    def run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def wait_for(self, run_id: str, done: Callable[[dict], bool], timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if done(run):
                return run
            if run["state"]["type"] in ("FAILED", "CRASHED"):
                raise AssertionError(f"run {run_id} {run['state']}: {self.logs(run_id)[-20:]}")
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} still {self.run(run_id)['state']}")

    def logs(self, run_id: str) -> list[str]:
        rows = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        return [r["message"] for r in rows]

    def wait_log(self, run_id: str, text: str, timeout: float = 30) -> None:
        """Until the run's log has a line with *text* (a run ships its logs in batches)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.logs(run_id)):
            assert time.monotonic() < deadline, f"no log line with {text!r}: {self.logs(run_id)[-10:]}"
            time.sleep(0.5)

class ServeProcess(PrefectRest):
    def __init__(self, home: Path, config_dir: Path, env: dict, *args: str):
        super().__init__("", env)
        self.home, self.config_dir, self.args = home, config_dir, args
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 240) -> "ServeProcess":
        self.starts += 1
        log = self.home.parent / f"serve-{self.starts}.log"
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(BIN / "bulletin"), "serve", "--home", str(self.home), "--config", str(self.config_dir), *self.args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(encoding="utf-8", errors="replace")
            found = re.search(r"UI: (http://127\.0\.0\.1:\d+)", text)
            if found and "已注册" in text:
                self.api = found.group(1) + "/api"
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {text[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"serve did not start: {log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        """Ctrl+C (SIGINT to the group), as in a terminal; then make sure nothing is left."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def flow_processes(self) -> list[int]:
        """Processes below ``serve`` that run a flow (``python -m prefect.engine``, or a spawned
        child for a flow the runner holds in memory)."""
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                group = os.getpgid(int(pid))
            except (OSError, ProcessLookupError):
                continue
            if self.proc is not None and group == self.proc.pid and (b"prefect.engine" in cmd or b"spawn_main" in cmd):
                found.append(int(pid))
        return found


    def wait_idle(self, timeout: float = 30) -> None:
        """Until no flow process is left below ``serve`` (a suspended run's process exits
        a second or two after its state changes)."""
        deadline = time.monotonic() + timeout
        while self.flow_processes():
            assert time.monotonic() < deadline, f"flow processes still alive: {self.flow_processes()}"
            time.sleep(0.2)


def suspended(run: dict) -> bool:
    return run["state"]["type"] == "PAUSED" and run["state"]["name"] == "Suspended"


def final(run: dict) -> bool:
    return run["state"]["type"] in ("COMPLETED", "CANCELLED")

"""Coordinators' notices to WeCom and DingTalk group robots, against a local HTTP server on
127.0.0.1 that checks DingTalk's 加签 signature as DingTalk documents it and WeCom's key, and
that can fail or hang. A robot that fails is recorded; the step goes on."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import shutil
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tasks.core.config import ConfigError, Robot, load_config
from tasks.mail.robots import RobotError, post, robot_text

SECRET, KEY = "SEC-test-secret", "wecom-key-123"


class RobotServer:
    """``/robot/send?access_token=…&timestamp=…&sign=…`` (DingTalk) and
    ``/cgi-bin/webhook/send?key=…`` (WeCom); ``mode``: ok, refuse, hang."""

    def __init__(self):
        self.received: list[tuple[str, str]] = []  # (kind, text)
        self.mode = "ok"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's hook
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.mode == "hang":
                    time.sleep(8)
                if url.path == "/robot/send":
                    kind, ok = "dingtalk", outer.signed(query)
                else:
                    kind, ok = "wecom", query.get("key") == [KEY]
                if ok and outer.mode == "ok":
                    outer.received.append((kind, body["text"]["content"]))
                answer = {"errcode": 0 if ok and outer.mode == "ok" else 310000, "errmsg": "ok" if ok else "sign not match"}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a hung answer's client has gone (BrokenPipeError): expected, not news

        self.http = Quiet(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @staticmethod
    def signed(query: dict) -> bool:
        """DingTalk's check: timestamp within an hour; sign = base64(HMAC-SHA256(secret,
        timestamp + "\\n" + secret)), URL-decoded by the query parser."""
        try:
            timestamp = query["timestamp"][0]
            sign = query["sign"][0]
        except KeyError:
            return False
        if abs(time.time() * 1000 - int(timestamp)) > 3600 * 1000:
            return False
        expected = base64.b64encode(hmac.new(SECRET.encode(), f"{timestamp}\n{SECRET}".encode(),
                                             hashlib.sha256).digest()).decode()
        return hmac.compare_digest(sign, expected)

    def stop(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def robot_server():
    server = RobotServer()
    yield server
    server.stop()


def test_posts_signed_and_keyed_and_tells_failures_apart(robot_server):
    dingtalk = f"{robot_server.base}/robot/send?access_token=abc"
    post("dingtalk", dingtalk, "你好", SECRET)
    post("wecom", f"{robot_server.base}/cgi-bin/webhook/send?key={KEY}", "你好")
    assert robot_server.received == [("dingtalk", "你好"), ("wecom", "你好")]
    with pytest.raises(RobotError, match="310000"):
        post("dingtalk", dingtalk, "你好", "wrong-secret")
    with pytest.raises(RobotError, match="310000"):  # a signature older than an hour
        post("dingtalk", dingtalk, "你好", SECRET, now_ms=int(time.time() * 1000) - 2 * 3600 * 1000)
    with pytest.raises(RobotError, match="无法访问") as gone:
        post("wecom", "http://127.0.0.1:9/cgi-bin/webhook/send?key=secret-key", "你好", timeout=2)
    assert "secret-key" not in str(gone.value)  # the key is never in a message or log
    assert len(robot_text("某任务", "说明" * 2000).encode()) <= 2004


def test_the_config_names_where_the_url_is_never_the_url():
    Robot(kind="dingtalk", url_env="BULLETIN_DINGTALK_URL", secret_block="dingtalk-secret")
    for bad in ({"kind": "wecom", "url_env": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=x"},
                {"kind": "wecom", "url_env": "A", "url_block": "b"},
                {"kind": "wecom"},
                {"kind": "wecom", "url_env": "A", "secret_env": "B"}):
        with pytest.raises(ValueError):
            Robot(**bad)


def _campaign_with_robots(config_dir, tmp_path) -> str:
    copy = tmp_path / "config"
    shutil.copytree(config_dir, copy)
    path = copy / "campaigns" / "energy-week-2023.yaml"
    robots = [{"kind": "dingtalk", "url_env": "TEST_DINGTALK_URL", "secret_env": "TEST_DINGTALK_SECRET"},
              {"kind": "wecom", "url_env": "TEST_WECOM_URL"}]
    path.write_text(path.read_text(encoding="utf-8") + "\n" + yaml.safe_dump({"robots": robots}), encoding="utf-8")
    load_config(copy, "energy-week-2023")  # the section loads
    return str(copy)


def test_a_notice_reaches_both_robots_and_a_failing_robot_never_stops_the_step(
        prefect_harness, robot_server, config_dir, tmp_path, monkeypatch):
    from flows.collect_returns import collect_returns
    from tasks.core.ledger import Event, Ledger
    config = _campaign_with_robots(config_dir, tmp_path)
    monkeypatch.setenv("TEST_DINGTALK_URL", f"{robot_server.base}/robot/send?access_token=abc")
    monkeypatch.setenv("TEST_DINGTALK_SECRET", SECRET)
    monkeypatch.setenv("TEST_WECOM_URL", f"{robot_server.base}/cgi-bin/webhook/send?key={KEY}")
    home = tmp_path / "home"
    inbox = home / "inbox" / "energy-week-2023"
    inbox.mkdir(parents=True)
    (inbox / "来路不明的文件<script>.txt").write_text("不是报表", encoding="utf-8")
    now = dt.datetime(2023, 9, 20, 10, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    collect_returns("energy-week-2023", now=now, home=str(home), config_dir=config)
    texts = [text for _, text in robot_server.received]
    assert [kind for kind, _ in robot_server.received] == ["dingtalk", "wecom"], robot_server.received
    robot_server.received.clear()
    assert "需要人工处理" in texts[0] and texts[0] == texts[1]
    assert "来路不明" not in texts[0] and "script" not in texts[0] and "http" not in texts[0]

    from flows.send_reminders import send_reminders
    escalated = send_reminders("energy-week-2023", units=["210100", "210200"], now=dt.datetime(
        2023, 9, 30, 18, tzinfo=now.tzinfo), home=str(home), config_dir=config)  # 逾期督办 is due
    assert escalated["sent"] == 2, escalated
    assert robot_server.received[-1][1].endswith("已向 2 家单位发出督办（逾期督办，抄送其分管负责同志）。")

    robot_server.mode = "hang"  # longer than the 5 s a post waits
    (inbox / "又一个.txt").write_text("也不是报表", encoding="utf-8")
    monkeypatch.setenv("TEST_DINGTALK_SECRET", "wrong")
    started = time.monotonic()
    outcome = collect_returns("energy-week-2023", now=now, home=str(home), config_dir=config)
    assert outcome["taken_in"] == 1 and time.monotonic() - started < 60
    with Ledger(home).reading() as s:
        failures = [e.detail for e in s.query(Event).filter(Event.action == "robot_failed")]
    assert len(failures) == 2 and all("无法访问" in f or "310000" in f for f in failures), failures
    assert not any(SECRET in f or KEY in f for f in failures)


def test_robots_config_errors_name_the_line(config_dir, tmp_path):
    copy = tmp_path / "config"
    shutil.copytree(config_dir, copy)
    path = copy / "campaigns" / "energy-week-2023.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "\nrobots:\n  - {kind: wecom, url_env: 'https://x/y?key=1'}\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="robots"):
        load_config(copy, "energy-week-2023")


def test_a_failed_step_is_told_to_the_robots_without_its_error(prefect_harness, robot_server, config_dir, tmp_path,
                                                               monkeypatch):
    from flows.request_returns import request_returns
    from tasks.mail.mailer import MailError
    config = _campaign_with_robots(config_dir, tmp_path)
    monkeypatch.setenv("TEST_DINGTALK_URL", f"{robot_server.base}/robot/send?access_token=abc")
    monkeypatch.setenv("TEST_DINGTALK_SECRET", SECRET)
    monkeypatch.setenv("TEST_WECOM_URL", f"{robot_server.base}/cgi-bin/webhook/send?key={KEY}")
    monkeypatch.setenv("BULLETIN_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("BULLETIN_SMTP_USER", "someone")  # and no password: the send fails
    for name in ("BULLETIN_SMTP_PASSWORD", "BULLETIN_SMTP_PASSWORD_BLOCK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MailError):
        request_returns("energy-week-2023", units=["210100"], now="2023-09-18T09:00:00+08:00",
                        home=str(tmp_path / "home"), config_dir=config)
    texts = [text for _, text in robot_server.received]
    assert len(texts) == 2 and "步骤 request-returns 运行失败" in texts[0], texts
    assert "PASSWORD" not in texts[0] and "someone" not in texts[0]

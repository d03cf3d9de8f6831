"""``bulletin mail-test`` against real servers on 127.0.0.1 set up to produce each usual failure:
aiosmtpd plain, with STARTTLS and with SSL (a self-signed certificate), with and without a
login; dovecot with its plain (STARTTLS) and its SSL port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from imap_server import imap_server  # noqa: F401 - the fixture
from smtp_server import running_smtp_server

from tasks.core.settings import ImapSettings, SmtpSettings
from tasks.mail.diagnose import check_imap, check_smtp
from tasks.mail.message import Address

SENDER = Address("报送任务系统", "bulletin@example.com")
BIN = Path(sys.executable).parent


def failed(checks) -> tuple[str, str]:
    assert not checks[-1].ok, [c.line() for c in checks]
    assert all(c.ok for c in checks[:-1])
    return checks[-1].step, checks[-1].detail


def test_smtp_that_works_sends_one_test_message(monkeypatch):
    with running_smtp_server(auth={"office": "s3cret"}, tls="starttls") as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))
        settings = SmtpSettings(host=server.host, port=server.port, security="starttls", user="office", password="s3cret")
        checks = check_smtp(settings, SENDER, "me@example.org", timeout=5)
        assert all(c.ok for c in checks), [c.line() for c in checks]
        assert [c.step for c in checks] == ["连接", "建立会话", "登录", "发送测试邮件"]
        got = server.messages
        assert len(got) == 1 and got[0].login == "office" and "mail-test" in got[0].message()["Subject"]


def test_ssl_on_a_starttls_port_and_starttls_on_an_ssl_port_are_told_apart(monkeypatch):
    with running_smtp_server(tls="starttls") as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))
        step, detail = failed(check_smtp(SmtpSettings(host=server.host, port=server.port, security="ssl"),
                                         SENDER, None, timeout=5))
        assert step == "建立加密连接" and "SECURITY 设为 starttls" in detail and "465" in detail
    with running_smtp_server(tls="ssl") as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))
        step, detail = failed(check_smtp(SmtpSettings(host=server.host, port=server.port, security="starttls"),
                                         SENDER, None, timeout=2))
        assert step == "建立会话" and "SECURITY 设为 ssl" in detail and "没有发来问候" in detail
        ok = check_smtp(SmtpSettings(host=server.host, port=server.port, security="ssl"), SENDER, None, timeout=5)
        assert all(c.ok for c in ok), [c.line() for c in ok]


def test_untrusted_certificate_refused_password_and_unknown_host(monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with running_smtp_server(auth={"office": "s3cret"}, tls="ssl") as server:
        step, detail = failed(check_smtp(SmtpSettings(host=server.host, port=server.port, security="ssl"),
                                         SENDER, None, timeout=5))
        assert step == "建立加密连接" and "证书不受信任" in detail and "SSL_CERT_FILE" in detail
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))
        step, detail = failed(check_smtp(SmtpSettings(host=server.host, port=server.port, security="ssl",
                                                      user="office", password="wrong"), SENDER, None, timeout=5))
        assert step == "登录" and "授权码" in detail and "wrong" not in detail
    step, detail = failed(check_smtp(SmtpSettings(host="mail.no-such-host.invalid", security="ssl"), SENDER, None))
    assert step == "解析服务器地址" and "mail.no-such-host.invalid" in detail


def test_nothing_listening_on_the_port():
    from smtp_server import free_port
    step, detail = failed(check_smtp(SmtpSettings(host="127.0.0.1", port=free_port(), security="none"), SENDER, None))
    assert step == "连接" and "拒绝连接" in detail


def test_imap_folders_and_each_failure(imap_server, monkeypatch):  # noqa: F811
    s = imap_server
    monkeypatch.setenv("SSL_CERT_FILE", s.cafile)
    good = check_imap(ImapSettings(host=s.host, port=s.port, security="starttls", user=s.user, password=s.password),
                      timeout=5)
    assert all(c.ok for c in good) and "INBOX" in good[-1].detail, [c.line() for c in good]
    ssl_ok = check_imap(ImapSettings(host=s.host, port=s.tls_port, security="ssl", user=s.user, password=s.password))
    assert all(c.ok for c in ssl_ok), [c.line() for c in ssl_ok]

    step, detail = failed(check_imap(ImapSettings(host=s.host, port=s.port, security="starttls", user=s.user,
                                                  password=s.password, folder="报表收件"), timeout=5))
    assert step == "文件夹" and "报表收件" in detail and "INBOX" in detail
    step, detail = failed(check_imap(ImapSettings(host=s.host, port=s.port, security="starttls", user=s.user,
                                                  password="wrong"), timeout=5))
    assert step == "登录" and "授权码" in detail
    step, detail = failed(check_imap(ImapSettings(host=s.host, port=s.port, security="ssl", user=s.user,
                                                  password=s.password), timeout=5))
    assert step == "建立加密连接" and "starttls" in detail and "993" in detail
    step, detail = failed(check_imap(ImapSettings(host=s.host, port=s.tls_port, security="starttls", user=s.user,
                                                  password=s.password), timeout=2))
    assert step == "建立会话" and "SECURITY 设为 ssl" in detail
    monkeypatch.delenv("SSL_CERT_FILE")
    step, detail = failed(check_imap(ImapSettings(host=s.host, port=s.tls_port, security="ssl", user=s.user,
                                                  password=s.password), timeout=5))
    assert step == "建立加密连接" and "证书不受信任" in detail


def test_the_command_reports_each_service_and_exits_1_on_a_failure(tmp_path):
    import os
    with running_smtp_server() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BULLETIN_", "PREFECT_"))}
        env.update(BULLETIN_SMTP_HOST=server.host, BULLETIN_SMTP_PORT=str(server.port), BULLETIN_SMTP_SECURITY="none")
        ok = subprocess.run([str(BIN / "bulletin"), "mail-test", "--to", "me@example.org"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "[通过] SMTP 发送测试邮件" in ok.stdout and "IMAP" in ok.stdout and len(server.messages) == 1
        env["BULLETIN_SMTP_SECURITY"] = "ssl"
        bad = subprocess.run([str(BIN / "bulletin"), "mail-test"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and "[失败] SMTP 建立加密连接" in bad.stdout, bad.stdout + bad.stderr


def test_passwords_from_a_prefect_secret_block(prefect_harness, tmp_path, config_dir, monkeypatch):
    """The SMTP password in a Secret block on the (real, test) Prefect server, named by
    BULLETIN_SMTP_PASSWORD_BLOCK: a request goes out logged in with it; a missing block or both
    kinds of password set stop the send with a message naming the setting, the value never shown."""
    from prefect.blocks.system import Secret

    from flows.request_returns import request_returns
    from flows.secrets import SecretError, imap_settings, smtp_settings
    Secret(value="bl0ck-pw").save("bulletin-smtp-password", overwrite=True)
    with running_smtp_server(auth={"office": "bl0ck-pw"}) as server:
        for key, value in {"HOST": server.host, "PORT": str(server.port), "SECURITY": "none", "USER": "office",
                           "PASSWORD_BLOCK": "bulletin-smtp-password"}.items():
            monkeypatch.setenv(f"BULLETIN_SMTP_{key}", value)
        monkeypatch.delenv("BULLETIN_SMTP_PASSWORD", raising=False)
        assert smtp_settings().password.get_secret_value() == "bl0ck-pw"
        result = request_returns("energy-week-2023", units=["210100"], now="2023-09-18T09:00:00+08:00",
                                 home=str(tmp_path / "home"), config_dir=str(config_dir))
        assert result["sent"] == 1, result
        assert [m.login for m in server.messages] == ["office"]

        monkeypatch.setenv("BULLETIN_SMTP_PASSWORD", "also-set")
        with pytest.raises(SecretError, match="PASSWORD_BLOCK 只能设置一个"):
            smtp_settings()
        monkeypatch.setenv("BULLETIN_IMAP_PASSWORD_BLOCK", "no-such-block")
        with pytest.raises(SecretError, match="no-such-block") as missing:
            imap_settings()
        assert "bl0ck-pw" not in str(missing.value)

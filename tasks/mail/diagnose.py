"""``bulletin mail-test``: try the mail settings one step at a time (name, connection, TLS,
login, sending; the IMAP folders) and say what is wrong in the words a coordinator can act on.

Each step is a :class:`Check`; the first that fails ends its service's checks, with a message
naming the setting to change. Plain ``smtplib``/``imaplib`` are used for the probing, so that
each failure is told apart; the test message itself goes through the product's own mailer.
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass

from imap_tools.imap_utf7 import utf7_decode

from tasks.core.settings import ImapSettings, SmtpSettings

from .mailer import MailError, SmtpMailer
from .message import Address, OutgoingMessage

#: The usual port of each security, to suggest the other one when they do not match.
USUAL_PORTS = {"SMTP": {"ssl": 465, "starttls": 587, "none": 25},
               "IMAP": {"ssl": 993, "starttls": 143, "none": 143}}


@dataclass(frozen=True)
class Check:
    service: str  # SMTP or IMAP
    step: str  # what was tried, in Chinese
    ok: bool
    detail: str  # what was found, or what is wrong and what to change

    def line(self) -> str:
        return f"[{'通过' if self.ok else '失败'}] {self.service} {self.step}：{self.detail}"


class _Failed(Exception):
    def __init__(self, step: str, detail: str):
        super().__init__(detail)
        self.step, self.detail = step, detail


def _usual(service: str) -> str:
    ports = USUAL_PORTS[service]
    return f"{service} 通常 SSL 用 {ports['ssl']} 端口、STARTTLS 用 {ports['starttls']} 端口"


def _tls_problem(exc: ssl.SSLError, service: str, prefix: str, port: int, security: str) -> str:
    """A certificate that is not trusted, or a port that does not speak TLS as configured."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"服务器证书不受信任（{exc.verify_message}）。若单位邮件服务器使用自建证书，请把签发它的根证书文件路径"
                f"设为环境变量 SSL_CERT_FILE；不要关闭证书检查。Certificate not trusted.")
    if security == "ssl":
        return (f"端口 {port} 上的服务器没有以 SSL 应答，它可能要求先明文连接再升级（STARTTLS）。{_usual(service)}："
                f"请把 {prefix}SECURITY 设为 starttls，或把 {prefix}PORT 改为 SSL 端口。"
                f"Port {port} does not speak SSL ({exc.reason or exc}): try {prefix}SECURITY=starttls.")
    return f"TLS 握手失败：{exc}。TLS handshake failed."


def _connected(service: str, prefix: str, host: str, port: int, timeout: float) -> None:
    """The name resolves and the port accepts a connection (else a message saying which not)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Failed("解析服务器地址", f"找不到服务器 {host}（域名无法解析：{exc.strerror}）。请检查 {prefix}HOST 的拼写，"
                      f"以及本机能否解析外部域名。Host not found.") from None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        raise _Failed("连接", f"{host} 的 {port} 端口拒绝连接：端口不对，或该服务未开启。{_usual(service)}。"
                      f"Connection refused on port {port}.") from None
    except TimeoutError:
        raise _Failed("连接", f"{timeout:g} 秒内连不上 {host}:{port}：网络不通、被防火墙拦截，或端口不对。"
                      f"Connection timed out.") from None
    except OSError as exc:
        raise _Failed("连接", f"连不上 {host}:{port}：{exc}。Cannot connect.") from None


def _greeting_timeout(service: str, prefix: str, port: int, timeout: float) -> _Failed:
    return _Failed("建立会话", f"端口 {port} 上的服务器在 {timeout:g} 秒内没有发来问候，它可能要求一连上就使用 SSL。"
                   f"{_usual(service)}：请把 {prefix}SECURITY 设为 ssl，或把 {prefix}PORT 改为 STARTTLS 端口。"
                   f"No greeting on port {port}: try {prefix}SECURITY=ssl.")


def _password_refused(service: str, prefix: str, user: str, reply: str) -> _Failed:
    return _Failed("登录", f"用户名或密码被拒绝（{user}：{reply}）。企业邮箱多要求使用客户端专用密码（授权码），"
                   f"而非网页登录密码；也请确认管理员已为该邮箱开启 {service} 服务。检查 {prefix}USER 和 "
                   f"{prefix}PASSWORD（或 {prefix}PASSWORD_BLOCK）。Authentication refused.")


def _smtp_session(s: SmtpSettings, timeout: float) -> smtplib.SMTP:
    prefix, port, context = "BULLETIN_SMTP_", s.effective_port, ssl.create_default_context()
    try:
        if s.security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(s.host, port, timeout=timeout)
    except ssl.SSLError as exc:
        raise _Failed("建立加密连接", _tls_problem(exc, "SMTP", prefix, port, s.security)) from None
    except (TimeoutError, smtplib.SMTPServerDisconnected):
        raise _greeting_timeout("SMTP", prefix, port, timeout) from None
    try:
        smtp.ehlo()
        if s.security == "starttls":
            if not smtp.has_extn("starttls"):
                raise _Failed("建立加密连接", f"服务器不支持 STARTTLS。{_usual('SMTP')}：请把 {prefix}SECURITY 设为 ssl "
                              f"并使用 SSL 端口。The server offers no STARTTLS.")
            smtp.starttls(context=context)
            smtp.ehlo()
    except ssl.SSLError as exc:
        smtp.close()
        raise _Failed("建立加密连接", _tls_problem(exc, "SMTP", prefix, port, s.security)) from None
    except (smtplib.SMTPException, OSError) as exc:
        smtp.close()
        raise _Failed("建立会话", f"会话中断：{exc}。Session failed.") from None
    return smtp


def check_smtp(settings: SmtpSettings, sender: Address, to: str | None, *, timeout: float = 15.0) -> list[Check]:
    """Name, connection, TLS, login, then (with *to*) one test message through the product's
    own mailer. Stops at the first step that fails."""
    s, prefix, done = settings, "BULLETIN_SMTP_", []
    if not s.host:
        return [Check("SMTP", "设置", False, "未设置 BULLETIN_SMTP_HOST：邮件只会写入 outbox 文件夹，不会发出。"
                                                "No SMTP host: mail goes to the outbox folder.")]
    where = f"{s.host}:{s.effective_port}（{s.security}）"
    try:
        _connected("SMTP", prefix, s.host, s.effective_port, timeout)
        done.append(Check("SMTP", "连接", True, where))
        smtp = _smtp_session(s, timeout)
        try:
            done.append(Check("SMTP", "建立会话", True, "加密连接已建立" if s.security != "none" else "未加密（security none）"))
            if s.user:
                try:
                    smtp.login(s.user, s.password.get_secret_value() if s.password else "")
                except smtplib.SMTPAuthenticationError as exc:
                    raise _password_refused("SMTP", prefix, s.user, f"{exc.smtp_code} {exc.smtp_error!r}") from None
                except smtplib.SMTPNotSupportedError:
                    raise _Failed("登录", "服务器在此连接上不提供登录（AUTH）：通常需要先加密，请改用 ssl 或 starttls。"
                                  "The server offers no AUTH here.") from None
                done.append(Check("SMTP", "登录", True, s.user))
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
        if to:
            done.append(Check("SMTP", "发送测试邮件", True, _send_test(s, sender, to)))
    except _Failed as failed:
        done.append(Check("SMTP", failed.step, False, failed.detail))
    return done


def _send_test(settings: SmtpSettings, sender: Address, to: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    msg = OutgoingMessage(
        key=f"mail-test/{time.time_ns()}", to=(Address("", to),), subject=f"报送系统邮件设置测试 mail-test {stamp}",
        text=f"这是报送系统（bulletin mail-test）在 {stamp} 发出的测试邮件，说明发信设置可用，无需回复。\n"
             f"A test message from bulletin mail-test: the outgoing mail settings work.\n")
    try:
        with SmtpMailer(settings, sender) as mailer:
            message_id = mailer.send(msg)
    except MailError as exc:
        raise _Failed("发送测试邮件", f"服务器没有接受测试邮件：{exc}。常见原因：发件人地址 BULLETIN_MAIL_FROM 与登录账号不一致，"
                      f"或收件人被拒。The test message was refused.") from None
    return f"已发给 {to}（Message-ID {message_id}），请到该邮箱查收"


def _imap_session(s: ImapSettings, port: int, timeout: float) -> imaplib.IMAP4:
    prefix, context = "BULLETIN_IMAP_", ssl.create_default_context()
    try:
        if s.security == "ssl":
            box: imaplib.IMAP4 = imaplib.IMAP4_SSL(s.host, port, ssl_context=context, timeout=timeout)
        else:
            box = imaplib.IMAP4(s.host, port, timeout=timeout)
    except ssl.SSLError as exc:
        raise _Failed("建立加密连接", _tls_problem(exc, "IMAP", prefix, port, s.security)) from None
    except (TimeoutError, imaplib.IMAP4.abort, EOFError):
        raise _greeting_timeout("IMAP", prefix, port, timeout) from None
    if s.security == "starttls":
        try:
            box.starttls(ssl_context=context)
        except ssl.SSLError as exc:
            box.shutdown()
            raise _Failed("建立加密连接", _tls_problem(exc, "IMAP", prefix, port, s.security)) from None
        except imaplib.IMAP4.error as exc:
            box.shutdown()
            raise _Failed("建立加密连接", f"服务器不支持 STARTTLS（{exc}）。{_usual('IMAP')}：请把 {prefix}SECURITY 设为 ssl。"
                          f"The server offers no STARTTLS.") from None
    return box


def _folders(box: imaplib.IMAP4) -> list[str]:
    kind, lines = box.list()
    names = []
    for line in lines if kind == "OK" else []:
        if not line:
            continue
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
        name = text.rsplit(' "', 1)[-1].rstrip('"') if text.endswith('"') else text.rsplit(" ", 1)[-1]
        names.append(utf7_decode(name.encode()))  # modified UTF-7 (RFC 3501), e.g. &XfJT0ZAB- → 已发送
    return names


def check_imap(settings: ImapSettings, *, folder: str | None = None, timeout: float = 15.0) -> list[Check]:
    """Name, connection, TLS, login, then the folders: the one ``collect`` reads (*folder*,
    default the setting's) must exist; the done folder is made at the first collect."""
    s, prefix, done = settings, "BULLETIN_IMAP_", []
    if not s.host:
        return [Check("IMAP", "设置", True, "未设置 BULLETIN_IMAP_HOST：collect 只读取收件文件夹（drop folder），不读邮箱。"
                                                "No IMAP host: collect reads the drop folder only.")]
    port = s.port or (993 if s.security == "ssl" else 143)
    wanted = folder or s.folder
    try:
        _connected("IMAP", prefix, s.host, port, timeout)
        done.append(Check("IMAP", "连接", True, f"{s.host}:{port}（{s.security}）"))
        box = _imap_session(s, port, timeout)
        try:
            done.append(Check("IMAP", "建立会话", True, "加密连接已建立" if s.security != "none" else "未加密（security none）"))
            try:
                box.login(s.user or "", s.password.get_secret_value() if s.password else "")
            except imaplib.IMAP4.error as exc:
                raise _password_refused("IMAP", prefix, s.user or "(无用户名)", str(exc)) from None
            done.append(Check("IMAP", "登录", True, s.user or ""))
            names = _folders(box)
            shown = "、".join(names) or "（无）"
            if wanted not in names:
                raise _Failed("文件夹", f"收件文件夹“{wanted}”不存在。现有文件夹：{shown}。请修改 {prefix}FOLDER（或报送任务的 "
                              f"mailbox_folder），或在邮箱中新建该文件夹。Folder not found.")
            note = "" if s.done_folder in names else f"；已处理文件夹“{s.done_folder}”将在首次收取时创建"
            done.append(Check("IMAP", "文件夹", True, f"现有文件夹：{shown}{note}"))
        finally:
            try:
                box.logout()
            except (imaplib.IMAP4.error, OSError):
                pass
    except _Failed as failed:
        done.append(Check("IMAP", failed.step, False, failed.detail))
    return done

"""Mailers: deliver an ``OutgoingMessage`` over SMTP, or into a file outbox.

Why yagmail is only the connection: yagmail 0.16's message builder puts only the display
name in To/Cc for dict recipients, sends the raw HTML as text/plain, appends inline images
after ``</html>`` with uncontrollable CIDs, attaches content strings that are existing
paths and shares Message-IDs. So ``tasks.mail.message.build_mime`` builds the bytes and
``yagmail.SMTP`` only opens the connection (SSL / STARTTLS / login); we run MAIL, RCPT and
DATA ourselves on its smtplib connection ``yag.smtp``, which tells "refused" (safe to
retry) from "broke during DATA" (delivery uncertain).
Worked around too: smtplib (hence yagmail) does TLS without certificate checks unless
given a context, so we pass ``ssl.create_default_context()``; a login without ``@`` is
passed as ``{login: login}`` since yagmail appends ``@gmail.com`` to a plain string.

Durability: ``send`` may leave its work in the page cache; ``flush`` makes everything sent so
far durable, and a message counts as sent (in the ledger) only after ``flush`` returned. The
outbox writes each ``.eml`` to a temporary file and renames it into place without an fsync,
and ``flush`` syncs the whole file system once (``syncfs(2)``) plus the folder: one sync per
batch instead of one per file. SMTP has nothing to flush: the server's 250 reply is the commit.
``batch_size`` tells ``tasks.mail.delivery.deliver_many`` how many messages to claim per ledger
transaction: 500 for the outbox, 1 for SMTP (there the network dominates, and one message is
the largest crash window).
"""

from __future__ import annotations

import hashlib
import logging
import re
import smtplib
import ssl
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import yagmail

from tasks.core.durable import replace_file, sync_folder
from tasks.core.settings import AppSettings, SmtpSettings
from tasks.mail.message import Address, OutgoingMessage, mime_bytes, recipients

log = logging.getLogger(__name__)


class MailError(Exception):
    """Sending failed; what to do next depends on why:

    - ``uncertain``: the server may have accepted the message (the connection broke during
      DATA): record it as uncertain, do not resend blindly;
    - ``permanent``: the server refused it for good (a 5xx reply): never retried as it is;
    - ``unreachable``: the server could not be reached or logged into (or the outbox cannot be
      written): every other message would fail the same way, so the run stops trying;
    - none of them: a transient refusal (a 4xx reply, a dropped connection): retried later."""

    def __init__(self, message: str, *, uncertain: bool = False, permanent: bool = False,
                 unreachable: bool = False) -> None:
        super().__init__(message)
        self.uncertain, self.permanent, self.unreachable = uncertain, permanent, unreachable


def _permanent(*codes: int) -> bool:
    """Every reply a 5xx one (RFC 5321: permanent); any 4xx makes it worth another try."""
    return bool(codes) and all(500 <= c < 600 for c in codes)


class Mailer(Protocol):
    description: str  # for logs; never contains a password
    batch_size: int  # messages per ledger transaction in deliver_many (1: one at a time)

    def send(self, msg: OutgoingMessage) -> str: ...  # returns the Message-ID used

    def flush(self) -> None: ...  # makes every message sent so far durable; MailError if not

    def close(self) -> None: ...


class _ContextMixin:
    batch_size = 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def outbox_file_name(key: str) -> str:
    """``a/b c/v1`` → ``a__bc__v1-<hash>.eml``: safe characters only, unique per key."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "", key.replace("/", "__")).lstrip(".")[:120]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    return f"{safe or 'message'}-{digest}.eml"


class OutboxMailer(_ContextMixin):
    """Writes one ``.eml`` per message into a folder (atomic rename; a resend overwrites).

    ``send`` does not fsync; ``flush`` makes every file written so far durable at once. After
    a power cut before the flush, files of that batch may be missing or empty; the ledger
    still has their keys in ``sending`` (later ``uncertain``), never ``sent``."""

    batch_size = 500

    def __init__(self, outbox_dir: Path, sender: Address) -> None:
        self.outbox_dir, self.sender = Path(outbox_dir), sender
        self.description = f"outbox {self.outbox_dir}"
        self._folder_ready = False
        self._unflushed: list[Path] = []

    def path_for(self, key: str) -> Path:
        return self.outbox_dir / outbox_file_name(key)

    def send(self, msg: OutgoingMessage) -> str:
        data, message_id = mime_bytes(msg, self.sender)
        target = self.path_for(msg.key)
        try:
            if not self._folder_ready:
                self.outbox_dir.mkdir(parents=True, exist_ok=True)
                self._folder_ready = True
            replace_file(target, data)  # readers never see a partial file under the name
        except OSError as exc:
            self._folder_ready = False
            raise MailError(f"cannot write {target}: {exc}", unreachable=True) from exc
        self._unflushed.append(target)
        return message_id

    def flush(self) -> None:
        """Make every ``.eml`` written since the last flush durable; ``MailError`` (uncertain:
        the files are in place but may not survive a power cut) if the sync fails."""
        if not self._unflushed:
            return
        try:
            sync_folder(self.outbox_dir, self._unflushed)
        except OSError as exc:
            raise MailError(f"cannot make {self.outbox_dir} durable: {exc}", uncertain=True) from exc
        self._unflushed = []

    def close(self) -> None:
        """Flushes what ``send`` wrote (deliver_many has normally done so already)."""
        try:
            self.flush()
        except MailError as exc:
            log.warning("%s", exc)


class _Dropped(Exception):
    """The connection broke before any message data was sent (safe to retry)."""


class SmtpMailer(_ContextMixin):
    """One lazily opened yagmail connection reused for many messages, rate limited.

    ``batch_size`` 1 and a no-op ``flush``: a message is durable once the server said 250."""

    def __init__(self, settings: SmtpSettings, sender: Address, *, timeout: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not settings.host:
            raise MailError("SmtpMailer needs BULLETIN_SMTP_HOST")
        if settings.user and settings.password is None:
            raise MailError("BULLETIN_SMTP_USER is set but neither BULLETIN_SMTP_PASSWORD nor "
                            "BULLETIN_SMTP_PASSWORD_BLOCK (read by flows.secrets) gives the password")
        if settings.rate is not None and settings.rate <= 0:
            raise MailError(f"BULLETIN_SMTP_RATE must be > 0 messages per minute, not {settings.rate}")
        self.settings, self.sender, self.timeout = settings, sender, timeout
        self._sleep, self._clock = sleep, clock
        self._interval = 60.0 / settings.rate if settings.rate else 0.0
        self._last_start: float | None = None
        self._yag: yagmail.SMTP | None = None
        self.connections = 0  # connections opened so far
        self.last_refused: dict[str, tuple[int, str]] = {}  # recipients refused by the last send
        self.description = (
            f"SMTP {settings.host}:{settings.effective_port} ({settings.security})"
            + (f" as {settings.user}" if settings.user else "")
        )

    # -- connection ---------------------------------------------------------------------
    def _connection(self) -> smtplib.SMTP:
        if self._yag is not None:
            return self._yag.smtp
        s, ctx = self.settings, ssl.create_default_context()
        login = s.user or self.sender.email  # without a user it is only a label
        extra: dict[str, Any] = {"context": ctx} if s.security == "ssl" else {}  # SMTP_SSL kwarg
        yag = yagmail.SMTP(
            user={login: login},  # a dict is taken verbatim (a str without '@' gets '@gmail.com')
            password=s.password.get_secret_value() if s.password else None,
            host=s.host, port=s.effective_port, timeout=self.timeout,
            smtp_ssl=s.security == "ssl",
            smtp_starttls={"context": ctx} if s.security == "starttls" else False,
            smtp_skip_login=not s.user, soft_email_validation=False, **extra,
        )
        try:
            yag.login()
        except (smtplib.SMTPException, OSError) as exc:
            self._quiet_close(yag)
            raise MailError(f"无法连接或登录发信服务器 cannot connect to {self.description}: {_describe(exc)}",
                            unreachable=True) from exc
        self._yag = yag
        self.connections += 1
        log.info("connected to %s", self.description)
        return yag.smtp

    @staticmethod
    def _quiet_close(yag: yagmail.SMTP) -> None:
        yag.is_closed = True  # keeps yagmail's __del__ from trying QUIT again
        if yag.smtp is not None:
            yag.smtp.close()  # smtplib's close() swallows socket errors

    def _drop(self) -> None:
        yag, self._yag = self._yag, None
        if yag is not None:
            self._quiet_close(yag)

    def close(self) -> None:
        """QUIT and close; the next ``send`` reconnects."""
        if self._yag is not None:
            try:
                self._yag.smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self._drop()

    # -- sending ------------------------------------------------------------------------
    def _throttle(self) -> None:
        if self._interval and self._last_start is not None:
            wait = self._last_start + self._interval - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last_start = self._clock()

    def _reset(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _transaction(self, smtp: smtplib.SMTP, rcpts: list[str], data: bytes, key: str) -> None:
        try:
            smtp.ehlo_or_helo_if_needed()
            code, resp = smtp.mail(self.sender.email)
            if code != 250:
                self._reset(smtp)
                raise MailError(f"{self.description} refused sender {self.sender.email} "
                                f"for {key}: {code} {_text(resp)}", permanent=_permanent(code))
            refused: dict[str, tuple[int, str]] = {}
            for rcpt in rcpts:
                code, resp = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, _text(resp))
            if len(refused) == len(rcpts):
                self._reset(smtp)
                raise MailError(f"{self.description} refused every recipient of {key}: {refused}",
                                permanent=_permanent(*(c for c, _ in refused.values())))
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            raise _Dropped(_describe(exc)) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise MailError(f"sending {key} via {self.description} failed: {_describe(exc)}") from exc
        try:
            code, resp = smtp.data(data)
        except smtplib.SMTPDataError as exc:  # DATA itself refused: nothing was sent
            self._reset(smtp)
            raise MailError(f"{self.description} refused DATA for {key}: {_describe(exc)}",
                            permanent=_permanent(exc.smtp_code)) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise MailError(f"connection to {self.description} broke while sending {key}; "
                            f"delivery uncertain: {_describe(exc)}", uncertain=True) from exc
        if code != 250:
            self._reset(smtp)
            raise MailError(f"{self.description} rejected {key}: {code} {_text(resp)}",
                            permanent=_permanent(code))
        self.last_refused = refused
        for rcpt, (code, text) in refused.items():
            log.warning("%s: %s refused recipient %s: %s %s", key, self.description, rcpt, code, text)

    def send(self, msg: OutgoingMessage) -> str:
        """Send one message; reconnects once when the connection turns out to be dropped."""
        data, message_id = mime_bytes(msg, self.sender)
        rcpts = recipients(msg)
        self._throttle()
        for attempt in (1, 2):
            smtp = self._connection()
            try:
                self._transaction(smtp, rcpts, data, msg.key)
                break
            except _Dropped as exc:
                self._drop()
                if attempt == 2:
                    raise MailError(f"connection to {self.description} dropped again while "
                                    f"sending {msg.key} (nothing sent): {exc}", unreachable=True) from exc
                log.warning("connection to %s dropped (%s); reconnecting", self.description, exc)
        return message_id


def _text(resp: bytes | str) -> str:
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def mailer_from_env(home: Path, smtp: SmtpSettings | None = None) -> Mailer:
    """SMTP when ``BULLETIN_SMTP_HOST`` is set, else the file outbox ``<home>/outbox``
    (*smtp*: the settings with their password already read, see ``flows.secrets``)."""
    smtp, app = smtp or SmtpSettings(), AppSettings()
    sender = Address(app.mail_from_name, app.mail_from)
    if smtp.host:
        return SmtpMailer(smtp, sender)
    return OutboxMailer(Path(home) / "outbox", sender)

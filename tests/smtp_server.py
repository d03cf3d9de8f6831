"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, a free port, in this process.

    from smtp_server import running_smtp_server   # tests/ is on sys.path under pytest

    with running_smtp_server() as server:
        ... send to server.host / server.port (security "none") ...
        server.messages[0].rcpt_tos, server.messages[0].message()["Subject"]

Options: ``auth={"user": "pw"}`` (AUTH offered without TLS), ``handler=CollectingHandler(
refuse={"x@example.org"})`` (or a subclass), ``tls="starttls"`` / ``tls="ssl"`` with a fresh
self-signed certificate for 127.0.0.1 at ``server.cert_file`` (trust it with
``SSL_CERT_FILE``, which ``ssl.create_default_context()`` honours).

Each received message records the envelope (``mail_from``, ``rcpt_tos``), the raw bytes
and the client's ``peer`` (host, port): one peer for several messages means one
connection. ``server.restart()`` drops every open connection and listens again on the
same port (to exercise reconnects).
"""

from __future__ import annotations

import datetime as dt
import email
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any
    login: str | None = None  # the authenticated user, if any

    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class CollectingHandler:
    """Collects every message; refuses RCPT for addresses in ``refuse`` (``refuse_reply``,
    550 by default)."""

    messages: list[ReceivedMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    refuse: set[str] = field(default_factory=set)
    refuse_reply: str = "550 5.1.1 No such user here"  # a 4xx one makes the refusal temporary

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: N802
        if address.lower() in {a.lower() for a in self.refuse}:
            return self.refuse_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd hook)
        login = session.auth_data if session.authenticated else None
        received = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or envelope.content),
            peer=session.peer,
            login=login,
        )
        with self.lock:
            self.messages.append(received)
        return "250 Message accepted for delivery"


def make_self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throw-away certificate (and key) valid for the IP address *host*."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SmtpTestServer:
    """Start/stop wrapper around an aiosmtpd ``Controller`` with a collecting handler."""

    def __init__(
        self,
        auth: dict[str, str] | None = None,
        handler: CollectingHandler | None = None,
        tls: Literal["ssl", "starttls"] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.auth = auth
        self.tls = tls
        self.handler = handler or CollectingHandler()
        self._controller: Controller | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="smtp-test-") if tls else None
        self.cert_file: Path | None = None
        self._tls_context: ssl.SSLContext | None = None
        if self._tmp is not None:
            self.cert_file, key_file = make_self_signed_cert(Path(self._tmp.name), host)
            self._tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls_context.load_cert_chain(self.cert_file, key_file)

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self.handler.lock:
            return list(self.handler.messages)

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.auth is not None
            and self.auth.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None)

    def start(self) -> SmtpTestServer:
        kwargs: dict[str, Any] = {}
        if self.auth is not None:
            # AUTH offered without TLS (test only); the login is recorded per message
            kwargs = {"authenticator": self._authenticate, "auth_require_tls": False}
        if self.tls == "starttls":
            kwargs.update(tls_context=self._tls_context, require_starttls=True)
        elif self.tls == "ssl":
            kwargs["ssl_context"] = self._tls_context
        self._controller = Controller(self.handler, hostname=self.host, port=self.port, **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def restart(self) -> None:
        """Close all client connections, then listen again on the same port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


@contextmanager
def running_smtp_server(
    auth: dict[str, str] | None = None,
    handler: CollectingHandler | None = None,
    tls: Literal["ssl", "starttls"] | None = None,
) -> Iterator[SmtpTestServer]:
    """Start an ``SmtpTestServer`` (see the module docstring) and stop it afterwards."""
    server = SmtpTestServer(auth=auth, handler=handler, tls=tls)
    try:
        yield server.start()
    finally:
        server.cleanup()

"""Outgoing mail as plain data, and its MIME rendering with the standard library (no I/O).

``build_mime`` produces the exact bytes every mailer sends or stores:

* ``From``/``To``/``Cc``/``Reply-To`` with display names (RFC 2047 when not ASCII);
* a deterministic ``Message-ID`` derived from the ledger key, so a resend of the same
  message carries the same id;
* ``Auto-Submitted: auto-generated`` (RFC 3834) plus ``X-Auto-Response-Suppress: All``
  (honoured by Exchange) on automatic mail, so out-of-office robots stay quiet;
* body ``multipart/alternative`` (text/plain + text/html); inline images sit next to the
  HTML inside ``multipart/related``; attachments wrap it all in ``multipart/mixed`` with
  RFC 2231 UTF-8 file names;
* only 7-bit output (base64 / quoted-printable bodies), so any SMTP server takes it.

Any CR or LF in a subject, name, address, file name or header value raises ``ValueError``
(header injection).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address as _HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime

#: RFC 5322 SMTP policy (CRLF, 78-column folding), restricted to 7-bit bodies.
MIME_POLICY = policy.SMTP.clone(cte_type="7bit")

_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
_RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID",
        "Auto-Submitted", "X-Auto-Response-Suppress", "MIME-Version", "Sender",
    )
)


@dataclass(frozen=True)
class Address:
    name: str
    email: str


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes
    mime_type: str  # e.g. 'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet'


@dataclass(frozen=True)
class InlineImage:
    cid: str  # referenced in the HTML as src="cid:{cid}"
    filename: str
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class OutgoingMessage:
    key: str  # ledger key, e.g. 'energy-week-2023/request/210100/v1', unique per message
    to: tuple[Address, ...]
    subject: str
    text: str  # a real plain-text version
    html: str | None = None
    cc: tuple[Address, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    inline_images: tuple[InlineImage, ...] = ()
    auto_generated: bool = True  # adds 'Auto-Submitted: auto-generated' (RFC 3834)
    reply_to: Address | None = None
    headers: tuple[tuple[str, str], ...] = ()  # extra headers, e.g. ('X-Bulletin-Campaign', id)


def _check_line(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain CR or LF: {value!r}")
    return value


def _domain_of(email_addr: str) -> str:
    local, at, domain = email_addr.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an e-mail address: {email_addr!r}")
    return domain


def _header_address(addr: Address, what: str) -> _HeaderAddress:
    _check_line(addr.name, f"{what} name")
    _check_line(addr.email, f"{what} address")
    _domain_of(addr.email)
    if not addr.email.isascii() or any(c.isspace() for c in addr.email):
        raise ValueError(f"{what} address must be ASCII without spaces: {addr.email!r}")
    return _HeaderAddress(display_name=addr.name.strip(), addr_spec=addr.email)


def _split_type(mime_type: str) -> tuple[str, str]:
    maintype, slash, subtype = mime_type.strip().lower().partition("/")
    if not slash or not maintype or not subtype or "\r" in mime_type or "\n" in mime_type:
        raise ValueError(f"bad MIME type: {mime_type!r}")
    return maintype, subtype


def message_id_for(key: str, domain: str) -> str:
    """A deterministic ``<hash@domain>`` Message-ID: a resend of *key* gets the same id."""
    _check_line(domain, "Message-ID domain")
    if not domain or any(c in domain for c in "<>@ \t"):
        raise ValueError(f"bad Message-ID domain: {domain!r}")
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<bulletin.{digest}@{domain}>"


def recipients(msg: OutgoingMessage) -> list[str]:
    """Envelope recipients: To then Cc addresses, without duplicates (case-insensitive)."""
    seen: set[str] = set()
    out: list[str] = []
    for addr in (*msg.to, *msg.cc):
        if addr.email.lower() not in seen:
            seen.add(addr.email.lower())
            out.append(addr.email)
    return out


def build_mime(msg: OutgoingMessage, sender: Address, date: datetime | None = None) -> EmailMessage:
    """Render *msg* as a complete MIME message from *sender* (``date`` defaults to now)."""
    if not msg.to:
        raise ValueError(f"message {msg.key!r} has no To recipient")
    if msg.inline_images and msg.html is None:
        raise ValueError(f"message {msg.key!r} has inline images but no HTML")
    _check_line(msg.subject, "subject")

    mime = EmailMessage(policy=MIME_POLICY)
    mime["From"] = _header_address(sender, "From")
    mime["To"] = [_header_address(a, "To") for a in msg.to]
    if msg.cc:
        mime["Cc"] = [_header_address(a, "Cc") for a in msg.cc]
    if msg.reply_to is not None:
        mime["Reply-To"] = _header_address(msg.reply_to, "Reply-To")
    mime["Subject"] = msg.subject
    when = date or datetime.now(timezone.utc)
    mime["Date"] = format_datetime(when if when.tzinfo else when.astimezone())
    mime["Message-ID"] = message_id_for(msg.key, _domain_of(sender.email))
    if msg.auto_generated:
        mime["Auto-Submitted"] = "auto-generated"
        mime["X-Auto-Response-Suppress"] = "All"
    for name, value in msg.headers:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"bad header name: {name!r}")
        if name.lower() in _RESERVED_HEADERS or name.lower().startswith("content-"):
            raise ValueError(f"header {name!r} is set by build_mime, not by extra headers")
        mime[name] = _check_line(value, f"header {name}")

    mime.set_content(msg.text)
    if msg.html is not None:
        mime.add_alternative(msg.html, subtype="html")
        html_part = mime.get_payload()[1]
        seen_cids: set[str] = set()
        for img in msg.inline_images:
            cid = _check_line(img.cid, "inline image cid")
            if not cid or cid in seen_cids or any(c in cid for c in "<> \t\"'"):
                raise ValueError(f"bad or duplicate inline image cid: {cid!r}")
            if f"cid:{cid}" not in msg.html:
                raise ValueError(f"inline image cid {cid!r} is not referenced in the HTML")
            seen_cids.add(cid)
            maintype, subtype = _split_type(img.mime_type)
            html_part.add_related(
                img.data, maintype, subtype, cid=f"<{cid}>", disposition="inline",
                filename=_check_line(img.filename, "inline image file name"),
            )
    for att in msg.attachments:
        maintype, subtype = _split_type(att.mime_type)
        mime.add_attachment(
            att.data, maintype, subtype,
            filename=_check_line(att.filename, "attachment file name"),
        )
    # The stdlib stamps "MIME-Version" on sub-parts it creates; only the root needs it.
    for part in mime.walk():
        if part is not mime and "MIME-Version" in part:
            del part["MIME-Version"]
    return mime

"""Outgoing mail as plain data, and its MIME rendering (no I/O).

``mime_bytes`` produces the exact bytes every mailer sends or stores, and the Message-ID:

* ``From``/``To``/``Cc``/``Reply-To`` with display names (RFC 2047 when not ASCII);
* a deterministic ``Message-ID`` derived from the ledger key, so a resend of the same
  message carries the same id;
* ``Auto-Submitted: auto-generated`` (RFC 3834) plus ``X-Auto-Response-Suppress: All``
  (honoured by Exchange) on automatic mail, so out-of-office robots stay quiet;
* body ``multipart/alternative`` (text/plain + text/html); inline images sit next to the
  HTML inside ``multipart/related``; attachments wrap it all in ``multipart/mixed`` with
  RFC 2231 UTF-8 file names;
* only 7-bit output (base64 / quoted-printable bodies), CRLF line ends, header lines
  folded at 78 columns, so any SMTP server takes it.

Two renderers, equivalent once parsed (tests/test_message.py compares them):

* ``build_mime`` builds an ``EmailMessage`` with the standard library (``policy.SMTP``). It
  handles everything, but a receipt costs 2.4 ms, mostly header parsing and folding: 24 s for
  the 10,000 receipts of ``bench/collect.py --n 10000``, about as long as that whole collect
  step (22-25 s), where the rule for keeping hand-written infrastructure is a fifth.
* ``mime_bytes`` assembles the bytes directly for the common case (text, optional HTML, no
  attachments or inline images, plain dot-atom addresses): 0.03 ms for a receipt, 0.3 s for
  10,000 (measured 2026-12-02 on 2,000 real receipts of the demo campaign, 2 vCPUs shared
  with a test run).
  A message with attachments or inline images gets its own headers the same way on content
  (body and attachments) that ``build_mime`` rendered once and every copy of it reuses: the
  bulletin's copies cost one rendering, not one each (``bench/faults.py``'s ``send``).
  Anything else (unusual addresses or header values) goes through ``build_mime``. Both
  mailers send what ``mime_bytes`` returns.

Any CR or LF in a subject, name, address, file name or header value raises ``ValueError``
(header injection).
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address as _HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache

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


def _check_extra_header(name: str, value: str) -> str:
    """An extra header's value, after checking its name is legal and not one we set."""
    if not _HEADER_NAME.match(name):
        raise ValueError(f"bad header name: {name!r}")
    if name.lower() in _RESERVED_HEADERS or name.lower().startswith("content-"):
        raise ValueError(f"header {name!r} is set by build_mime, not by extra headers")
    return _check_line(value, f"header {name}")


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


def message_digest(key: str) -> str:
    """The part of a message's Message-ID that comes from its ledger key (not the domain)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def message_id_for(key: str, domain: str) -> str:
    """A deterministic ``<hash@domain>`` Message-ID: a resend of *key* gets the same id."""
    _check_line(domain, "Message-ID domain")
    if not domain or any(c in domain for c in "<>@ \t"):
        raise ValueError(f"bad Message-ID domain: {domain!r}")
    return f"<bulletin.{message_digest(key)}@{domain}>"


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
        mime[name] = _check_extra_header(name, value)

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
            params={"charset": "utf-8"} if maintype == "text" else None,  # our text files are UTF-8
        )
    # The stdlib stamps "MIME-Version" on sub-parts it creates; only the root needs it.
    for part in mime.walk():
        if part is not mime and "MIME-Version" in part:
            del part["MIME-Version"]
    return mime


# ---------------------------------------------------------------------------- fast path
_MAX_LINE = 78  # RFC 5322 recommended limit, before CRLF
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_ATOM = re.compile(f"[{_ATEXT}]+")
# dot-atom local part @ dot-atom domain of letters, digits and hyphens: rendered verbatim
_SIMPLE_EMAIL = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*@[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*")
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, single spaces
# extra headers the standard library parses as dates or addresses: left to it
_STRUCTURED = frozenset(("orig-date", "resent-date", "resent-from", "resent-sender", "resent-to",
                         "resent-cc", "resent-bcc"))
_EW_OVERHEAD = len("=?utf-8?b??=")


class _Fallback(Exception):
    """The fast renderer does not handle this message; ``build_mime`` does."""


def _encoded_words(text: str, first: int, rest: int) -> list[str]:
    """RFC 2047 base64 encoded-words for *text*: the first at most *first* characters long,
    the others at most *rest*; each holds whole characters (never a split UTF-8 sequence)."""
    data = text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError (a ValueError)
    words: list[str] = []
    limit = (first - _EW_OVERHEAD) // 4 * 3  # octets that fit
    start, size = 0, len(data)
    while start < size:
        end = start + limit
        if end >= size:
            end = size
        else:
            while end > start and data[end] & 0xC0 == 0x80:  # back to a character start
                end -= 1
            if end == start:  # not even one character fits: take one anyway
                end = start + 1
                while end < size and data[end] & 0xC0 == 0x80:
                    end += 1
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode("ascii") + "?=")
        start, limit = end, (rest - _EW_OVERHEAD) // 4 * 3
    return words


def _fold(name: str, tokens: list[str]) -> str:
    """``Name: tok tok`` folded before a token wherever the line would pass 78 columns."""
    lines: list[str] = []
    line = name + ":"
    for tok in tokens:
        if len(line) + 1 + len(tok) <= _MAX_LINE:
            line += " " + tok
        elif len(tok) + 1 <= _MAX_LINE:
            lines.append(line)
            line = " " + tok
        else:
            raise _Fallback
    lines.append(line)
    return "\r\n".join(lines)


def _unstructured(name: str, value: str) -> str:
    """An unstructured header (Subject, extra headers): plain ASCII words as they are,
    anything else as encoded-words sized to fit the line."""
    if len(name) + 2 > _MAX_LINE:
        raise _Fallback
    if not value:
        return name + ":"
    if "=?" not in value and _PLAIN_TEXT.fullmatch(value):
        words = value.split(" ")
        if max(map(len, words)) < _MAX_LINE:
            return _fold(name, words)
    room = _MAX_LINE - len(name) - 2
    return _fold(name, _encoded_words(value, room if room >= 24 else 75, 75))


@lru_cache(maxsize=2048)
def _mailbox(name: str, addr: str, what: str) -> tuple[str, ...]:
    """The tokens of ``name <addr>`` (cached: From and Reply-To repeat on every message)."""
    _check_line(name, f"{what} name")
    _check_line(addr, f"{what} address")
    if "=?" in addr or len(addr) > 70 or not _SIMPLE_EMAIL.fullmatch(addr):
        raise _Fallback  # the standard library validates and renders the unusual ones
    name = name.strip()
    if not name:
        return (addr,)
    if "=?" not in name and _PLAIN_TEXT.fullmatch(name):
        words = name.split(" ")
        if not all(_ATOM.fullmatch(w) for w in words):
            words = ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
        if max(map(len, words)) <= 60:
            return (*words, f"<{addr}>")
    # one encoded-word when it fits (up to 15 CJK characters): decoders differ on whether the
    # space between two encoded-words of a display name counts (RFC 2047: it does not)
    return (*_encoded_words(name, 75, 75), f"<{addr}>")


def _address_list(name: str, addrs: tuple[Address, ...], what: str) -> str:
    tokens: list[str] = []
    last = len(addrs) - 1
    for i, a in enumerate(addrs):
        toks = _mailbox(a.name, a.email, what)
        tokens.extend(toks if i == last else (*toks[:-1], toks[-1] + ","))
    return _fold(name, tokens)


def _text_part(text: str, *delimiters: bytes) -> tuple[str, bytes]:
    """(transfer encoding, body) as ``set_content`` makes them: line ends made CRLF and a
    final CRLF; 7bit when ASCII with lines <= 78 and no delimiter in it, else base64 in
    76-column lines."""
    lines = text.encode("utf-8").splitlines()
    body = b"\r\n".join(lines) + b"\r\n"
    if body.isascii() and max(map(len, lines), default=0) <= _MAX_LINE and not any(d in body for d in delimiters):
        return "7bit", body
    b64 = binascii.b2a_base64(body, newline=False)
    return "base64", b"\r\n".join([b64[i:i + 76] for i in range(0, len(b64), 76)]) + b"\r\n"


def _fast_head(msg: OutgoingMessage, sender: Address, when: datetime) -> tuple[list[str], str]:
    """The top-level header lines up to ``MIME-Version`` (no content headers), and the Message-ID."""
    if not msg.to:
        raise ValueError(f"message {msg.key!r} has no To recipient")
    head = [_address_list("From", (sender,), "From"), _address_list("To", msg.to, "To")]
    if msg.cc:
        head.append(_address_list("Cc", msg.cc, "Cc"))
    if msg.reply_to is not None:
        head.append(_address_list("Reply-To", (msg.reply_to,), "Reply-To"))
    head.append(_unstructured("Subject", _check_line(msg.subject, "subject")))
    head.append("Date: " + format_datetime(when if when.tzinfo else when.astimezone()))
    message_id = message_id_for(msg.key, _domain_of(sender.email))
    head.append("Message-ID: " + message_id)
    if msg.auto_generated:
        head += ("Auto-Submitted: auto-generated", "X-Auto-Response-Suppress: All")
    for name, value in msg.headers:
        value = _check_extra_header(name, value)
        if name.lower() in _STRUCTURED:
            raise _Fallback
        head.append(_unstructured(name, value))
    head.append("MIME-Version: 1.0")
    return head, message_id


def _fast_bytes(msg: OutgoingMessage, sender: Address, when: datetime) -> tuple[bytes, str]:
    if msg.attachments or msg.inline_images:
        raise _Fallback
    head, message_id = _fast_head(msg, sender, when)
    # "=_" never occurs in base64 (nor in quoted-printable); 7bit bodies are checked
    boundary = "=_" + hashlib.sha256(b"boundary:" + msg.key.encode("utf-8")).hexdigest()[:24]
    delimiter = b"--" + boundary.encode("ascii")
    cte, text = _text_part(msg.text, delimiter)
    if msg.html is None:
        head += ('Content-Type: text/plain; charset="utf-8"', f"Content-Transfer-Encoding: {cte}")
        return "\r\n".join(head).encode("ascii") + b"\r\n\r\n" + text, message_id
    html_cte, html = _text_part(msg.html, delimiter)
    head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    parts = [
        "\r\n".join(head).encode("ascii"), b"\r\n\r\n", delimiter,
        b'\r\nContent-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: ',
        cte.encode("ascii"), b"\r\n\r\n", text, b"\r\n", delimiter,
        b'\r\nContent-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: ',
        html_cte.encode("ascii"), b"\r\n\r\n", html, b"\r\n", delimiter, b"--\r\n",
    ]
    return b"".join(parts), message_id


_SKELETON_SENDER = Address("", "body@localhost.invalid")


_TEXT_SLOT, _HTML_SLOT = "bulletin-text-slot-3f9c", "bulletin-html-slot-3f9c"


@lru_cache(maxsize=4)
def _content_frame(has_html: bool, inline_images: tuple[InlineImage, ...],
                   attachments: tuple[Attachment, ...]) -> bytes:
    """The content headers and body of a message with attachments or inline images, rendered
    once by the standard library with a short ASCII slot where the text and the HTML go: every
    copy of a bulletin (the same photos and DOCX; a unit's copy has its own text) reuses it.
    Its boundaries are fixed at the first rendering, which is what a copy needs."""
    html = "\n".join([_HTML_SLOT] + [f"cid:{img.cid}" for img in inline_images]) if has_html else None
    skeleton = OutgoingMessage(key="content", to=(_SKELETON_SENDER,), subject="", text=_TEXT_SLOT, html=html,
                               inline_images=inline_images, attachments=attachments, auto_generated=False)
    raw = build_mime(skeleton, _SKELETON_SENDER, datetime(2000, 1, 1, tzinfo=timezone.utc)).as_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    content = [line for line in re.split(rb"\r\n(?![ \t])", head)
               if line.lower().startswith((b"content-type:", b"content-transfer-encoding:"))]
    return b"\r\n".join(content) + b"\r\n\r\n" + body


def _fill_slot(frame: bytes, slot: str, text: str) -> bytes:
    """*frame* with the part that holds *slot* carrying *text* instead (its own encoding)."""
    found = re.search(rb"Content-Transfer-Encoding: 7bit\r\n\r\n" + re.escape(slot.encode()) + rb".*?(?=\r\n--)",
                      frame, re.S)
    if found is None:
        raise RuntimeError(f"no {slot} in the rendered content")  # the stdlib changed how it writes parts
    cte, body = _text_part(text, *(b"--" + b for b in re.findall(rb'boundary="([^"]+)"', frame)))
    return (frame[:found.start()] + f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode("ascii") + body
            + frame[found.end():])


def _rendered_content(text: str, html: str | None, inline_images: tuple[InlineImage, ...],
                      attachments: tuple[Attachment, ...]) -> bytes:
    """The content headers and body of a message with attachments or inline images: its text
    and HTML in the frame rendered once for its images and attachments (:func:`_content_frame`)."""
    for img in inline_images:
        if f"cid:{img.cid}" not in (html or ""):
            raise ValueError(f"inline image cid {img.cid!r} is not referenced in the HTML")
    frame = _fill_slot(_content_frame(html is not None, inline_images, attachments), _TEXT_SLOT, text)
    return frame if html is None else _fill_slot(frame, _HTML_SLOT, html)


def _copy_bytes(msg: OutgoingMessage, sender: Address, when: datetime) -> tuple[bytes, str]:
    """A message with attachments or inline images: its own headers (fast path) on content
    rendered once (:func:`_rendered_content`)."""
    if msg.inline_images and msg.html is None:
        raise ValueError(f"message {msg.key!r} has inline images but no HTML")
    head, message_id = _fast_head(msg, sender, when)
    content = _rendered_content(msg.text, msg.html, msg.inline_images, msg.attachments)
    return "\r\n".join(head).encode("ascii") + b"\r\n" + content, message_id


def mime_bytes(msg: OutgoingMessage, sender: Address, date: datetime | None = None) -> tuple[bytes, str]:
    """The wire bytes of *msg* from *sender* and its Message-ID (``date`` defaults to now).

    Text (+ HTML) messages are assembled directly; the rest is rendered by ``build_mime``.
    Raises ``ValueError`` exactly where ``build_mime`` would."""
    when = date or datetime.now(timezone.utc)
    try:
        if msg.attachments or msg.inline_images:
            return _copy_bytes(msg, sender, when)
        return _fast_bytes(msg, sender, when)
    except _Fallback:
        mime = build_mime(msg, sender, when)
        return mime.as_bytes(), str(mime["Message-ID"])

"""build_mime: structure, encodings and headers, checked by parsing the bytes back."""

from __future__ import annotations

import email
from datetime import datetime, timezone
from email import policy
from email.header import decode_header, make_header

import pytest

from tasks.message import (
    Address,
    Attachment,
    InlineImage,
    OutgoingMessage,
    build_mime,
    message_id_for,
    recipients,
)

SENDER = Address("报送任务系统", "bulletin@stats.example.com")
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = (
    "<html><body><p>张三 同志：</p><p>请于 3 月 5 日前报送。</p>"
    '<img src="cid:logo"><img src="cid:chart-1"></body></html>'
)
TEXT = "张三 同志：\n\n请于 3 月 5 日前报送。\n"


def rich_message(key: str = "energy-week-2023/request/210100/v1", **kw) -> OutgoingMessage:
    fields = dict(
        key=key,
        to=(Address("张三", "a@example.org"),),
        cc=(Address("李四", "b@example.org"), Address("", "a@example.org")),
        subject="关于报送2023年节能宣传周活动情况的通知",
        text=TEXT,
        html=HTML,
        inline_images=(
            InlineImage("logo", "标志.png", b"\x89PNG\r\n\x1a\nlogo", "image/png"),
            InlineImage("chart-1", "chart.png", b"\x89PNG\r\n\x1a\nchart", "image/png"),
        ),
        attachments=(Attachment("2023年报表填报说明.docx", b"PK\x03\x04docx-bytes", DOCX),),
        reply_to=Address("王五", "coordinator@example.org"),
        headers=(("X-Bulletin-Campaign", "energy-week-2023"),),
    )
    fields.update(kw)
    return OutgoingMessage(**fields)


def parse(msg: OutgoingMessage, **kw):
    raw = build_mime(msg, SENDER, **kw).as_bytes()
    assert raw.isascii(), "output must be 7-bit clean"
    return raw, email.message_from_bytes(raw, policy=policy.default)


def test_headers_roundtrip_with_chinese_names_and_subject():
    raw, parsed = parse(rich_message(), date=datetime(2023, 3, 1, 9, 0, tzinfo=timezone.utc))
    (to,) = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == ("张三", "a@example.org")
    raw_to = email.message_from_bytes(raw, policy=policy.compat32)["To"]  # still encoded
    assert str(make_header(decode_header(raw_to))) == "张三 <a@example.org>"
    assert [(a.display_name, a.addr_spec) for a in parsed["Cc"].addresses] == [
        ("李四", "b@example.org"), ("", "a@example.org")]
    (frm,) = parsed["From"].addresses
    assert (frm.display_name, frm.addr_spec) == ("报送任务系统", "bulletin@stats.example.com")
    assert parsed["Reply-To"].addresses[0].addr_spec == "coordinator@example.org"
    assert parsed["Subject"] == "关于报送2023年节能宣传周活动情况的通知"
    assert b"=?utf-8?" in raw  # RFC 2047 encoded words, not raw UTF-8
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Bulletin-Campaign"] == "energy-week-2023"
    assert parsed["Date"].datetime == datetime(2023, 3, 1, 9, 0, tzinfo=timezone.utc)
    assert parsed["Message-ID"] == message_id_for(rich_message().key, "stats.example.com")


def test_body_structure_text_html_inline_images_attachment():
    _, parsed = parse(rich_message())
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, attachment = parsed.get_payload()
    assert alternative.get_content_type() == "multipart/alternative"
    plain, related = alternative.get_payload()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content().replace("\r\n", "\n") == TEXT  # canonical CRLF inside base64
    assert "<" not in plain.get_content() and "<br>" not in plain.get_content()
    assert related.get_content_type() == "multipart/related"
    html, *images = related.get_payload()
    assert html.get_content_type() == "text/html"
    assert 'src="cid:logo"' in html.get_content() and "张三" in html.get_content()
    by_cid = {img["Content-ID"]: img for img in images}
    assert set(by_cid) == {"<logo>", "<chart-1>"}
    logo = by_cid["<logo>"]
    assert logo.get_content_disposition() == "inline"
    assert logo.get_filename() == "标志.png"
    assert logo.get_content() == b"\x89PNG\r\n\x1a\nlogo"
    assert "MIME-Version" not in logo
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "2023年报表填报说明.docx"
    assert attachment.get_content_type() == DOCX
    assert attachment.get_content() == b"PK\x03\x04docx-bytes"
    # The body the user sees first is the HTML; the text version is its alternative.
    assert parsed.get_body(("html",)) is html
    assert parsed.get_body(("plain",)) is plain


def test_text_only_message_and_no_auto_submitted():
    msg = OutgoingMessage(key="k", to=(Address("Ann", "ann@example.org"),), subject="Hi",
                          text="hello\n", auto_generated=False)
    _, parsed = parse(msg)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content() == "hello\r\n"
    assert "Auto-Submitted" not in parsed


def test_message_id_is_deterministic_per_key():
    a1 = build_mime(rich_message("c/request/1/v1"), SENDER)["Message-ID"]
    a2 = build_mime(rich_message("c/request/1/v1"), SENDER)["Message-ID"]
    b = build_mime(rich_message("c/request/1/v2"), SENDER)["Message-ID"]
    assert a1 == a2 != b
    assert a1.startswith("<") and a1.endswith("@stats.example.com>")


def test_recipients_to_then_cc_deduplicated():
    assert recipients(rich_message()) == ["a@example.org", "b@example.org"]


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "hi\r\nBcc: evil@example.net"},
        {"subject": "hi\nthere"},
        {"to": (Address("张三\nBcc: x@example.net", "a@example.org"),)},
        {"to": (Address("x", "a@example.org\r\nBcc: e@example.net"),)},
        {"headers": (("X-Campaign", "a\r\nBcc: evil@example.net"),)},
        {"headers": (("X-Bad: name", "v"),)},
        {"headers": (("Message-ID", "<x@y>"),)},
        {"attachments": (Attachment("a\r\n.docx", b"", DOCX),)},
        {"reply_to": Address("x\r", "r@example.org")},
    ],
)
def test_header_injection_and_bad_headers_rejected(change):
    with pytest.raises(ValueError):
        build_mime(rich_message(**change), SENDER)


def test_inline_images_need_html_and_a_reference():
    with pytest.raises(ValueError, match="no HTML"):
        build_mime(rich_message(html=None), SENDER)
    with pytest.raises(ValueError, match="not referenced"):
        build_mime(rich_message(html="<p>no images</p>"), SENDER)


def test_sender_without_domain_rejected():
    with pytest.raises(ValueError):
        build_mime(rich_message(), Address("x", "no-domain"))

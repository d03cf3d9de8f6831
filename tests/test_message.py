"""build_mime: structure, encodings and headers, checked by parsing the bytes back."""

from __future__ import annotations

import dataclasses
import email
from datetime import datetime, timezone
from email import policy
from email.header import decode_header, make_header

import pytest

from tasks.mail.message import (
    Address,
    Attachment,
    InlineImage,
    OutgoingMessage,
    build_mime,
    message_id_for,
    mime_bytes,
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


# -- mime_bytes: the fast renderer against the standard library ------------------------------
WHEN = datetime(2023, 9, 25, 10, 0, 7, tzinfo=timezone.utc)
LONG_ZH = "关于报送2023年节能宣传周和低碳日活动情况统计表的通知（第二次提醒，请各单位务必在截止日期前完成报送）" * 2


def plain(key: str, **kw) -> OutgoingMessage:
    fields = dict(key=key, to=(Address("张三", "a@example.org"),), subject="回执", text=TEXT, html=None)
    fields.update(kw)
    return OutgoingMessage(**fields)


VARIED = [
    plain("ascii", subject="Receipt for your return", text="hello\n", to=(Address("Ann", "ann@example.org"),)),
    plain("receipt", subject="【回执】2023年节能宣传周活动情况统计：已通过（单位000001的报表.xlsx）",
          html="<p>张三 同志：</p>" * 40, reply_to=Address("王五", "coordinator@example.org"),
          headers=(("X-Bulletin-Campaign", "energy-week-2023"), ("X-Bulletin-Step", "receipt"))),
    plain("long-zh", subject=LONG_ZH, html=HTML.replace('<img src="cid:logo"><img src="cid:chart-1">', "")),
    plain("long-ascii", subject=" ".join(f"word{i}" for i in range(60)), html="<p>x</p>"),
    plain("long-word", subject="x" * 150, html="<p>x</p>"),  # no place to fold: encoded-words
    plain("mixed", subject="Re: 2023 energy week 节能周 — 😀 summary", html=""),
    plain("names", to=(Address('Smith, John', "john@example.org"), Address('O"Brien \\ Co', "ob@example.org"),
                       Address("Zhang San (张三)", "zs@example.org"), Address("", "bare@example.org"),
                       Address("  李四  ", "ls@example.org"), Address("a@b", "ab@example.org")),
          cc=(Address("王五", "w@example.org"), Address("Ann Lee", "al@example.org"),
              Address("很长的名字" * 3, "long.name@example.org"), Address("Dr. Who", "who@example.org")),
          reply_to=Address("Reply, Desk", "reply-desk+tag@example.org"), html="<p>hi</p>"),
    plain("headers", headers=(("X-Bulletin-Campaign", "energy-week-2023"), ("X-Unit-Name", "沈阳市节能监察中心"),
                              ("X-Long", " ".join(["token"] * 30)), ("X-Empty", ""),
                              ("X-A-Rather-Long-Header-Name-That-Leaves-Little-Room-On-Its-Line", "值" * 20))),
    plain("long-lines", text="a" * 200 + "\n" + "b" * 79 + "\n", html="<p>" + "c" * 300 + "</p>"),
    plain("line-ends", text="one\r\ntwo\nthree\rfour", html="<p>a</p>\r\n<p>b</p>\n"),
    plain("zh-line-ends", text="第一行\r\n第二行\n第三行", html="<p>一</p>\n"),
    plain("empty-text", text="", html="<p>only html</p>", auto_generated=False),
    plain("dots", text=".\n.leading dot\nFrom here\n-- \nsignature\n", html=None),
]


def summary(raw: bytes) -> dict:
    """What a mail client sees: decoded headers, content types and decoded bodies."""
    parsed = email.message_from_bytes(raw, policy=policy.default)
    out: dict = {}
    for name in ("From", "To", "Cc", "Reply-To"):
        header = parsed[name]
        out[name] = None if header is None else [(a.display_name, a.addr_spec) for a in header.addresses]
    for name in ("Subject", "Message-ID", "Auto-Submitted", "X-Auto-Response-Suppress", "MIME-Version",
                 "X-Bulletin-Campaign", "X-Bulletin-Step", "X-Unit-Name", "X-Long", "X-Empty"):
        out[name] = None if parsed[name] is None else str(parsed[name])
    out["Date"] = parsed["Date"].datetime
    out["headers"] = sorted(k.lower() for k in parsed.keys() if not k.lower().startswith("content-"))
    out["parts"] = [(p.get_content_type(), p.get_content_charset(),
                     None if p.is_multipart() else p.get_content()) for p in parsed.walk()]
    out["parts with MIME-Version"] = sum("MIME-Version" in p for p in parsed.walk())
    return out


def assert_wire_clean(raw: bytes) -> None:
    assert raw.isascii(), "7-bit only"
    assert raw.endswith(b"\r\n")
    lines = raw[:-2].split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "CRLF line ends only"
    assert max(map(len, lines)) <= 78, [line for line in lines if len(line) > 78]
    parsed = email.message_from_bytes(raw, policy=policy.default)
    for part in parsed.walk():
        assert not part.defects, part.defects
        for name, value in part.items():
            assert not value.defects, (name, value.defects)


@pytest.mark.parametrize("msg", VARIED, ids=[m.key for m in VARIED])
def test_mime_bytes_decodes_like_the_standard_library(msg):
    raw, message_id = mime_bytes(msg, SENDER, WHEN)
    assert b"===============" not in raw  # the fast path, not build_mime's boundaries
    assert_wire_clean(raw)
    reference = build_mime(msg, SENDER, WHEN)
    assert summary(raw) == summary(reference.as_bytes())
    assert message_id == str(reference["Message-ID"]) == message_id_for(msg.key, "stats.example.com")
    assert mime_bytes(msg, SENDER, WHEN) == (raw, message_id)  # deterministic


def test_mime_bytes_receipt_shape():
    msg = VARIED[1]
    raw, _ = mime_bytes(msg, SENDER, WHEN)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p["Content-Transfer-Encoding"] for p in parsed.iter_parts()] == ["base64", "base64"]
    assert parsed["Subject"] == msg.subject and b"=?utf-8?b?" in raw
    assert parsed.get_body(("plain",)).get_content() == TEXT.replace("\n", "\r\n")
    text_only = mime_bytes(VARIED[0], SENDER, WHEN)[0]
    assert b"Content-Transfer-Encoding: 7bit" in text_only and b"\r\n\r\nhello\r\n" in text_only


def test_mime_bytes_long_display_name_spans_encoded_words():
    name = "很长的名字" * 8  # 120 octets: more than one encoded-word can hold
    msg = plain("long-name", to=(Address(name, "a@example.org"), Address("李四", "b@example.org")))
    raw, _ = mime_bytes(msg, SENDER, WHEN)
    assert_wire_clean(raw)
    raw_to = email.message_from_bytes(raw, policy=policy.compat32)["To"]
    # RFC 2047 decoding (the space between adjacent encoded-words does not count) ...
    assert str(make_header(decode_header(raw_to))) == f"{name} <a@example.org>, 李四 <b@example.org>"
    # ... while policy.default keeps those spaces, for the standard library's own output too
    parsed = email.message_from_bytes(raw, policy=policy.default)
    reference = email.message_from_bytes(build_mime(msg, SENDER, WHEN).as_bytes(), policy=policy.default)
    for got in (parsed, reference):
        first, second = got["To"].addresses
        assert first.display_name.replace(" ", "") == name and first.addr_spec == "a@example.org"
        assert (second.display_name, second.addr_spec) == ("李四", "b@example.org")


def test_mime_bytes_boundary_in_an_ascii_body_switches_it_to_base64():
    msg = plain("collide", text="hi\n", html="<p>x</p>")
    boundary = email.message_from_bytes(mime_bytes(msg, SENDER, WHEN)[0]).get_boundary()
    evil = plain("collide", text=f"hi\n--{boundary}\nContent-Type: text/html\n\n<b>injected</b>\n", html="<p>x</p>")
    raw, _ = mime_bytes(evil, SENDER, WHEN)
    assert_wire_clean(raw)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert len(list(parsed.iter_parts())) == 2
    assert parsed.get_body(("plain",))["Content-Transfer-Encoding"] == "base64"
    assert summary(raw) == summary(build_mime(evil, SENDER, WHEN).as_bytes())


@pytest.mark.parametrize("msg", [
    rich_message(),  # attachments and inline images
    plain("odd-address", to=(Address("x", '"a,b"@example.org'), Address("y", "user@[192.168.0.1]")), html=""),
    plain("resent", headers=(("Resent-Date", "Mon, 25 Sep 2023 10:00:00 +0000"),), html=""),
], ids=["attachments", "odd-address", "structured-extra-header"])
def test_mime_bytes_falls_back_to_the_standard_library(msg):
    raw, message_id = mime_bytes(msg, SENDER, WHEN)
    assert b"===============" in raw  # build_mime's boundary or none at all
    reference = build_mime(msg, SENDER, WHEN).as_bytes()
    assert summary(raw) == summary(reference)
    assert message_id == message_id_for(msg.key, "stats.example.com")


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "hi\r\nBcc: evil@example.net"},
        {"to": (Address("张三\nBcc: x@example.net", "a@example.org"),)},
        {"to": (Address("x", "a@example.org\r\nBcc: e@example.net"),)},
        {"cc": (Address("x", "not-an-address"),)},
        {"to": (Address("x", "张伟@example.org"),)},
        {"to": (Address("x", "a b@example.org"),)},
        {"to": ()},
        {"headers": (("X-Campaign", "a\r\nBcc: evil@example.net"),)},
        {"headers": (("X-Bad: name", "v"),)},
        {"headers": (("Message-ID", "<x@y>"),)},
        {"headers": (("content-type", "text/html"),)},
        {"reply_to": Address("x\r", "r@example.org")},
    ],
)
def test_mime_bytes_refuses_what_build_mime_refuses(change):
    msg = plain("bad", **change)
    with pytest.raises(ValueError):
        build_mime(msg, SENDER)
    with pytest.raises(ValueError):
        mime_bytes(msg, SENDER)


def test_mime_bytes_sender_without_domain_rejected():
    with pytest.raises(ValueError):
        mime_bytes(plain("k"), Address("x", "no-domain"))


def test_copies_of_a_message_with_attachments_share_its_rendered_content():
    """The bulletin's copies: each its own headers, the content rendered once for all."""
    base = rich_message(key="energy-week-2023/bulletin/v1", cc=())
    copies = [dataclasses.replace(base, key=f"{base.key}/{to.email}", to=(to,))
              for to in (Address("张三", "a@example.org"), Address("Ann Lee", "ann@example.org"))]
    rendered = [mime_bytes(m, SENDER, WHEN) for m in copies]
    for msg, (raw, message_id) in zip(copies, rendered):
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert raw.isascii() and max(map(len, head.split(b"\r\n"))) <= 78
        assert summary(raw) == summary(build_mime(msg, SENDER, WHEN).as_bytes())
        assert message_id == message_id_for(msg.key, "stats.example.com")
    bodies = [raw.split(b"MIME-Version: 1.0\r\n", 1)[1] for raw, _ in rendered]
    assert bodies[0] == bodies[1]
    assert rendered[0][1] != rendered[1][1]
    odd = dataclasses.replace(base, to=(Address("x", '"a,b"@example.org'),))  # headers by the stdlib
    assert summary(mime_bytes(odd, SENDER, WHEN)[0]) == summary(build_mime(odd, SENDER, WHEN).as_bytes())


def test_a_copy_with_its_own_text_shares_the_images_and_attachments():
    """A unit's copy of the bulletin: its own text and HTML (a block on top) in the content
    rendered once for the photos and the DOCX; it reads exactly as the stdlib would write it."""
    base = rich_message(key="energy-week-2023/bulletin/v1", cc=())
    boundary_like = "--=_part \r\n--" + "x" * 10
    variants = [("【沈阳市：本单位报送情况】\n张贴宣传画：1123套\n" + TEXT, "<div>沈阳市</div>" + HTML),
                ("plain ascii\nshort lines\n", HTML + "\n<p>ascii</p>"),
                (boundary_like + TEXT, HTML)]
    for i, (text, html) in enumerate(variants):
        msg = dataclasses.replace(base, key=f"{base.key}/{i}@example.org", text=text, html=html)
        raw, _ = mime_bytes(msg, SENDER, WHEN)
        assert raw.isascii() and b"bulletin-text-slot" not in raw and b"bulletin-html-slot" not in raw
        assert summary(raw) == summary(build_mime(msg, SENDER, WHEN).as_bytes())
    unreferenced = dataclasses.replace(base, html="<p>no images</p>")
    with pytest.raises(ValueError, match="not referenced"):
        mime_bytes(unreferenced, SENDER, WHEN)

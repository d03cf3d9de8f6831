"""Coordinators' notices to a WeCom (企业微信) or DingTalk (钉钉) group robot.

A robot message is short, in Chinese, made only of what the product wrote (the notice's
subject, the campaign's name): nothing from a unit's input, no link. DingTalk's 加签 signature
is made as its documentation says: ``base64(HMAC-SHA256(secret, f"{timestamp}\\n{secret}"))``,
URL-encoded, added to the webhook as ``&timestamp=…&sign=…`` (milliseconds). A robot that
fails or times out raises :class:`RobotError`; the caller records it and goes on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request

#: WeCom's text messages are limited to 2,048 bytes; DingTalk's are longer. Ours stay short.
MAX_TEXT_BYTES = 2000


class RobotError(Exception):
    """The robot did not take the message (unreachable, timed out, or an error code)."""


def dingtalk_signed(url: str, secret: str, timestamp_ms: int) -> str:
    """The webhook URL with DingTalk's ``timestamp`` and ``sign`` parameters."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    sign = base64.b64encode(hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()).decode()
    joiner = "&" if urllib.parse.urlsplit(url).query else "?"
    return f"{url}{joiner}timestamp={timestamp_ms}&sign={urllib.parse.quote_plus(sign)}"


def robot_text(campaign_name: str, subject: str, mailed: bool = True) -> str:
    """``【报送系统】<campaign>：<subject>。详情见发给协调人的邮件。`` (the last sentence when the
    coordinators were mailed about it), cut to the robots' limit."""
    text = f"【报送系统】{campaign_name}：{subject}。" + ("详情见发给协调人的邮件。" if mailed else "")
    data = text.encode()
    return text if len(data) <= MAX_TEXT_BYTES else data[:MAX_TEXT_BYTES].decode("utf-8", "ignore") + "…"


def post(kind: str, url: str, text: str, secret: str | None = None, *, timeout: float = 5.0,
         now_ms: int | None = None) -> None:
    """Post one text message; :class:`RobotError` unless the robot answers ``errcode`` 0."""
    if kind == "dingtalk" and secret:
        url = dingtalk_signed(url, secret, now_ms if now_ms is not None else int(time.time() * 1000))
    body = json.dumps({"msgtype": "text", "text": {"content": text}}, ensure_ascii=False).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    where = urllib.parse.urlsplit(url).netloc  # never the path or query: they hold the key
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            reply = json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise RobotError(f"{kind} 机器人 {where} 返回 HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RobotError(f"{kind} 机器人 {where} 无法访问：{reason}") from None
    except ValueError:
        raise RobotError(f"{kind} 机器人 {where} 的应答不是 JSON") from None
    if reply.get("errcode") != 0:
        raise RobotError(f"{kind} 机器人 {where} 拒绝了消息：errcode {reply.get('errcode')} {reply.get('errmsg', '')}")

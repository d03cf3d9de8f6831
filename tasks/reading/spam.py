"""Spam-like text in a narrative: flagged for a coordinator, left out of the bulletin until accepted.

Links alone are not spam (they are defanged in every output); injected advertising is: the
gambling and "official site" phrases of hijacked pages, contact hooks, and a line repeated
over and over (as in the reference page, where one spam line recurs between every photo).
"""

from __future__ import annotations

import re
import unicodedata

_PHRASES = re.compile(
    r"官方网站|唯一官网|官网入口|娱乐城|博彩|赌场|百家乐|彩票|投注|下注|真人视讯|体育平台|棋牌|"
    r"开户|注册送|充值返|首存|代理招募|加微信|加V|QQ群|私彩|六合彩|bet365|casino|gambling",
    re.IGNORECASE)
_LINK = re.compile(r"(?i)(?:https?|ftp)(?::|\[:\])//|www\.")


def looks_like_spam(text: str) -> bool:
    """True when the text carries advertising phrases, or the same line three times or more."""
    norm = unicodedata.normalize("NFKC", text)
    if _PHRASES.search(norm):
        return True
    lines = [ln.strip() for ln in norm.splitlines() if ln.strip()]
    repeated = any(lines.count(ln) >= 3 for ln in set(lines))
    return repeated or len(_LINK.findall(norm)) >= 3

"""Match the labels units write in their sheets to the campaign form's fields.

A label matches a field by the field's label, key or one of its synonyms, after both sides
are normalised by :func:`normalize_label` (full-width → half-width, no whitespace, no
bracketed unit or note at the end, no trailing ``:``/``*``, no leading ``1.``/``一、``,
Latin in lower case). A label followed by the field's unit or ``数量`` also matches
(``张贴宣传画套``, ``宣传画数量``).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from tasks.core.config import Form

_TRAILING_BRACKET = re.compile(r"[(\[【〔<《][^()\[\]【】〔〕<>《》]*[)\]】〕>》]$")
_LEADING_NUMBER = re.compile(r"^(?:[0-9]{1,2}|[一二三四五六七八九十]{1,3})[.、)]"
                             r"|^\((?:[0-9]{1,2}|[一二三四五六七八九十]{1,3})\)")
_EDGE_MARKS = ":*※★"
_QUANTITY_SUFFIXES = ("数量", "总数", "数")


def normalize_label(text: object) -> str:
    """A cell's text as a comparable label: ``' 张贴宣传画（套）：'`` → ``'张贴宣传画'``."""
    if text is None:
        return ""
    return _normalize(text if isinstance(text, str) else str(text))


@lru_cache(maxsize=1 << 16)  # thousands of returns repeat the same few hundred labels
def _normalize(text: str) -> str:
    s = unicodedata.normalize("NFKC", text)
    s = "".join(s.split())
    for _ in range(3):  # '*宣传画(套):' needs marks, bracket, marks again
        before = s
        s = s.strip(_EDGE_MARKS)
        s = _LEADING_NUMBER.sub("", s)
        stripped = _TRAILING_BRACKET.sub("", s)
        s = stripped or s  # a label that is only a bracket stays as it is
        if s == before:
            break
    return s.lower()


class LabelMatcher:
    """Resolve a cell's text to a form field key (or a pseudo key from ``extra``)."""

    def __init__(self, form: Form, extra: dict[str, str] | None = None):
        self._names: dict[str, str] = {}
        self._units: dict[str, str] = {}
        self._memo: dict[str, str | None] = {}  # cell text → key: returns repeat their labels
        # Labels first, then keys, then synonyms: an earlier claim on a name wins.
        for attr in ("label", "key", "synonyms"):
            for f in form.fields:
                values = getattr(f, attr)
                for name in values if isinstance(values, list) else [values]:
                    self._names.setdefault(normalize_label(name), f.key)
        for name, key in (extra or {}).items():
            self._names.setdefault(normalize_label(name), key)
        for f in form.fields:
            if f.unit:
                self._units[f.key] = normalize_label(f.unit)

    def match(self, text: object) -> str | None:
        """The field key (or pseudo key) ``text`` names, or None."""
        if text is None or isinstance(text, (bool, int, float)):
            return None
        text = text if isinstance(text, str) else str(text)
        if text.isdigit():  # a CSV's numbers are text: never a label, and not worth a memo entry
            return None
        try:
            return self._memo[text]
        except KeyError:
            pass
        if len(self._memo) > 1 << 16:
            self._memo.clear()
        found = self._memo[text] = self._match(text)
        return found

    def _match(self, text: str) -> str | None:
        norm = normalize_label(text)
        if not norm:
            return None
        key = self._names.get(norm)
        if key is not None:
            return key
        for key, unit in self._units.items():  # '张贴宣传画套', '宣传画个'
            if norm.endswith(unit) and len(norm) > len(unit):
                if self._names.get(norm[: -len(unit)]) == key:
                    return key
        for suffix in _QUANTITY_SUFFIXES:  # '宣传画数量', '横幅数'
            if norm.endswith(suffix) and len(norm) > len(suffix):
                found = self._names.get(norm[: -len(suffix)])
                if found is not None and not found.startswith("_"):
                    return found
        return None

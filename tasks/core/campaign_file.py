"""The next round of a campaign, written from the previous one's file: its calendar moved (a
year on, or so that it opens on a given day, keeping every interval), ``previous`` pointing at
the round it came from, the bulletin's issue number one more, and the year in its name and
title moved with the calendar. Everything else, comments and order included, is kept: the
file is edited as text at the places YAML says the values are."""

from __future__ import annotations

import datetime as dt
import re

import yaml

CALENDAR_MOMENTS = ("opens", "deadline", "closes", "compile_at")


def inline_yaml(value: object) -> str:
    """*value* as YAML on one line (a mapping or a list in flow style, keys in their order): how
    files this project edits by hand write a value."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=1 << 16)
    return text.strip().removesuffix("...").strip()


def _mapping_value(node: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                return k, v
    return None


def _year_on(moment: dt.datetime) -> dt.datetime:
    try:
        return moment.replace(year=moment.year + 1)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + 1, day=28)


def next_round(text: str, previous_id: str, opens: dt.date | None = None) -> str:
    """The text of the next round's campaign file made from *text*, the file of *previous_id*."""
    root = yaml.compose(text)
    calendar = _mapping_value(root, "calendar")
    if calendar is None:
        raise ValueError("the campaign has no calendar")
    edits: list[tuple[int, int, str]] = []  # (start, end, new text) in the original text
    moments = {}
    for key in CALENDAR_MOMENTS:
        found = _mapping_value(calendar[1], key)
        if found is not None:
            moments[key] = (found[1], dt.datetime.fromisoformat(str(found[1].value)))
    if "opens" not in moments:
        raise ValueError("the campaign's calendar has no opens")
    first = moments["opens"][1]
    shift = (dt.datetime.combine(opens, first.time()) - first) if opens else None
    for node, moment in moments.values():
        moved = moment + shift if shift is not None else _year_on(moment)
        edits.append((node.start_mark.index, node.end_mark.index, moved.isoformat()))
    years = (moments["opens"][1].year, (moments["opens"][1] + shift).year if shift is not None
             else moments["opens"][1].year + 1)
    for path in (("name",), ("bulletin", "title")):
        node = root
        for key in path:
            found = _mapping_value(node, key)
            node = found[1] if found else None
        if isinstance(node, yaml.ScalarNode) and years[0] != years[1]:
            moved = re.sub(rf"(?<!\d){years[0]}(?!\d)", str(years[1]), node.value)
            edits.append((node.start_mark.index, node.end_mark.index, inline_yaml(moved)))
    bulletin = _mapping_value(root, "bulletin")
    day = _mapping_value(bulletin[1], "date") if bulletin else None
    if day is not None and str(day[1].value).strip():
        old = dt.datetime.combine(dt.date.fromisoformat(str(day[1].value)), first.time())
        new_day = (old + shift if shift is not None else _year_on(old)).date()
        edits.append((day[1].start_mark.index, day[1].end_mark.index, new_day.isoformat()))
    issue = _mapping_value(bulletin[1], "issue") if bulletin else None
    if issue is not None:
        edits.append((issue[1].start_mark.index, issue[1].end_mark.index, str(int(issue[1].value) + 1)))
    previous = _mapping_value(root, "previous")
    out = text
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    if previous is not None:
        out = re.sub(r"(?m)^previous:.*$", f"previous: {previous_id}", out, count=1)
    else:
        name = _mapping_value(root, "name")
        line_end = out.index("\n", name[1].end_mark.index if name else 0) + 1 if name else 0
        out = out[:line_end] + f"previous: {previous_id}\n" + out[line_end:]
    return out

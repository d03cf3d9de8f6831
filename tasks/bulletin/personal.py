"""A unit's own copy of the bulletin: a short block on top with its figures, its share of the
province total, its change against its own previous return, whether it was on time, and
what of its return the bulletin left out.

The blocks are rendered when the version is compiled, into ``personal/blocks.jsonl`` of the
version's folder (one line per unit: its code, the HTML fragment and the text) and all of them
in ``personal/index.html`` for the coordinator, so approving the version approves them;
sending finds each unit's line in the file and splices its block into its copy. (Until 2026-12 each
block was two files, ``personal/<code>.{html,txt}``: 20,000 files at 10,000 units; a version
compiled then is still read.)
"""

from __future__ import annotations

import html as html_lib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from ..core.formatting import chinese_datetime, percent_text
from ..core.render import render
from .timeliness import CORRECTED, UnitTimeliness
from .year_over_year import Change

#: Where the block goes in the bulletin's mail HTML (``bulletin.html.j2`` writes it).
SLOT = "<!--bulletin:personal-->"
FOLDER = "personal"
BLOCKS = "blocks.jsonl"


@dataclass(frozen=True)
class PersonalLine:
    label: str
    unit: str
    value: str  # exact figure, or — when left blank
    share: str  # 9.9% of the province total, or —
    change: Change | None  # against the unit's own previous return; None without one


@dataclass(frozen=True)
class PersonalBlock:
    unit_code: str
    unit_name: str
    timeliness: str  # 按时报送 / 逾期3天报送 / 截止后更正 / 未报送
    received: str  # 2023年9月25日10:00收到 (the return that counts), or empty
    lines: tuple[PersonalLine, ...]
    compared: bool  # the change column applies (the unit returned in the previous round)
    previous_note: str  # why there is no change column, when a previous round exists
    left_out: tuple[str, ...]


@dataclass(frozen=True)
class Figures:
    """What every block is computed from."""

    numbers: pd.DataFrame  # this round, index unit code
    totals: pd.Series  # province totals by key
    previous: pd.DataFrame | None  # the previous round's latest accepted, index unit code
    changes: dict[str, dict[str, Change]]  # unit -> key -> change against its own previous return

    @cached_property
    def rows(self) -> dict[str, dict[str, object]]:
        """``numbers`` as plain dicts, once: a block per unit would otherwise look each figure up
        in the frame (about 6 s of pandas indexing at 10,000 units)."""
        return self.numbers.to_dict("index")

    @cached_property
    def total_of(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.totals.items()}


def build_block(code: str, name: str, fields: list, figures: Figures, when: UnitTimeliness | None,
                tz, left_out: tuple[str, ...]) -> PersonalBlock:
    """One unit's block; *fields* are the form's counted fields (key, label, unit)."""
    row = figures.rows.get(code)
    returned = row is not None
    compared = returned and figures.previous is not None and code in figures.previous.index
    lines = []
    for f in fields if returned else []:
        value = row[f.key]
        blank = pd.isna(value)
        total = figures.total_of.get(f.key, 0)
        lines.append(PersonalLine(
            f.label, f.unit or "", "—" if blank else str(int(value)),
            "—" if blank else percent_text(int(value), total),
            figures.changes.get(code, {}).get(f.key, Change(None)) if compared else None))
    note = ""
    if returned and figures.previous is not None and not compared:
        note = "本单位上年未报送，不作比较。"
    received = ""
    if when and when.received:
        received = ("更正稿" if when.state == CORRECTED else "") + chinese_datetime(when.received.astimezone(tz)) + "收到"
    return PersonalBlock(code, name, when.label if when else "", received, tuple(lines), compared, note, left_out)


class Blocks(Sequence[PersonalBlock]):
    """Every unit's block in unit order, each made when asked for (never all held at once)."""

    def __init__(self, units: list[tuple[str, str]], make: Callable[[str, str], PersonalBlock]):
        self._units, self._make = units, make

    def __len__(self) -> int:
        return len(self._units)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._make(*u) for u in self._units[i]]
        return self._make(*self._units[i])

    def __iter__(self) -> Iterator[PersonalBlock]:
        return (self._make(*u) for u in self._units)


def write_blocks(blocks: Sequence[PersonalBlock], folder: Path, context: dict, override_dir: str | None) -> None:
    """``personal/blocks.jsonl`` (per unit: the HTML fragment spliced into the mail and the
    text), and an index page with every block for the coordinator to read before approving.
    Written a block at a time: at 100,000 units the two files are about 1 GB, and holding them
    whole took 3 GB of memory (bench/README.md). *folder* is the version's work folder, renamed
    into place when the version is recorded, so a reader never sees these files half written."""
    if not blocks:
        return
    out = folder / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    title = html_lib.escape(f"{context['b'].title}（第{context['b'].version}版）各单位个性化内容，共{len(blocks)}份")
    with (out / BLOCKS).open("w", encoding="utf-8") as jsonl, (out / "index.html").open("w", encoding="utf-8") as page:
        page.write(f'<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8"><title>{title}</title></head>'
                   f'<body style="max-width:760px;margin:0 auto"><h1 style="font-size:20px">{title}</h1>\n')
        for block in blocks:
            fragment = render("bulletin.personal.html.j2", override_dir, p=block, **context)
            text = render("bulletin.personal.txt.j2", override_dir, p=block, **context)
            jsonl.write(json.dumps({"unit": block.unit_code, "html": fragment, "text": text}, ensure_ascii=False) + "\n")
            page.write(fragment + "\n")
        page.write("</body></html>\n")


class BlockFile(Mapping[str, tuple[str, str]]):
    """A version's ``blocks.jsonl`` by unit code, each block read from the file when asked
    for: the file is scanned once for where each unit's line starts, so a send to 100,000
    units holds their codes and offsets, not the 600 MB of blocks."""

    def __init__(self, path: Path):
        self._path = path
        self._at: dict[str, int] = {}
        with path.open("rb") as fh:
            offset = 0
            for line in fh:
                if line.strip():
                    self._at[json.loads(line)["unit"]] = offset
                offset += len(line)

    def __getitem__(self, unit: str) -> tuple[str, str]:
        offset = self._at[unit]
        with self._path.open("rb") as fh:
            fh.seek(offset)
            row = json.loads(fh.readline())
        return row["html"], row["text"]

    def __contains__(self, unit: object) -> bool:
        return unit in self._at

    def __iter__(self) -> Iterator[str]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)


def read_blocks(folder: Path) -> Mapping[str, tuple[str, str]]:
    """unit code → (HTML fragment, text) of a compiled version's blocks; empty without them.
    A version compiled before ``blocks.jsonl`` has a pair of files per unit: read those."""
    path = folder / FOLDER / BLOCKS
    if path.is_file():
        return BlockFile(path)
    out = {}
    for text_path in sorted((folder / FOLDER).glob("*.txt")):
        html_path = text_path.with_suffix(".html")
        if html_path.is_file():
            out[text_path.stem] = (html_path.read_text(encoding="utf-8"), text_path.read_text(encoding="utf-8"))
    return out


def block_count(folder: Path) -> int:
    """How many units' blocks a compiled version holds."""
    path = folder / FOLDER / BLOCKS
    if path.is_file():
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    return len(list((folder / FOLDER).glob("*.txt")))


def splice(mail_html: str, fragment: str) -> str:
    """The bulletin's mail HTML with *fragment* at its slot (a template without the slot:
    right after ``<body>``)."""
    if SLOT in mail_html:
        return mail_html.replace(SLOT, fragment, 1)
    lower = mail_html.lower()
    at = lower.find("<body")
    end = lower.find(">", at) + 1 if at >= 0 else 0
    return mail_html[:end] + fragment + mail_html[end:]

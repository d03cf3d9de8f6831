"""Compile the bulletin: merge the latest accepted return of every unit, total, render.

The same accepted submissions, templates and settings give the existing version; anything
changed gives version N+1 in ``<home>/bulletins/<campaign>/v<N>/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import css_inline
import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..core.config import Config
from ..core.formatting import chinese_date, defang_links, round_down_prose
from ..core.ledger import ACCEPTED, Bulletin, Ledger, Submission, SubmissionFile, Value, audit_event, plain_row_batches
from ..core.render import render, template_files
from .bulletin_content import BulletinContent, Figure, Photo, Recipients, Story, UnitRow
from .charts import Chart, NoCJKFont, totals_chart, units_chart
from .exports import export_frame
from .personal import Blocks, Figures, PersonalBlock, build_block, write_blocks
from .readers import Readers, gather
from .render_docx import write_docx
from .render_pdf import write_pdf
from .timeliness import LATE, MISSING
from .timeliness import sentence as timeliness_sentence
from .timeliness import table as timeliness_table
from .year_over_year import Change, YearOverYear

log = logging.getLogger(__name__)
PHOTO_SIDES = (1280, 960, 640, 480)  # tried in turn until the bulletin mail fits its budget


@dataclass(frozen=True)
class Merged:
    """The accepted returns behind one bulletin."""

    submissions: list  # Submission rows (id, unit_code, fingerprint, late, decided_by), unit order
    numbers: pd.DataFrame  # index unit code, one column per count field
    texts: pd.DataFrame  # index unit code, one column per text field
    photos: list[SubmissionFile]
    held_back: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # unit -> text fields flagged, not yet reviewed


def merge_accepted(ledger: Ledger, config: Config) -> Merged:
    """The latest accepted submission of every expected unit, as frames.

    Plain columns, not ORM objects (a national campaign has millions of values); the
    campaign's accepted submissions are joined in SQL, never listed as bound parameters."""
    camp = config.campaign
    accepted = (Submission.campaign == camp.id, Submission.state == ACCEPTED)
    counts, texts = [f.key for f in camp.form.counts], [f.key for f in camp.form.texts]
    with ledger.reading() as s:
        conn = s.connection()
        subs = conn.execute(select(Submission.id, Submission.unit_code, Submission.fingerprint,
                                   Submission.late, Submission.decided_by)
                            .where(*accepted).order_by(Submission.id)).all()
        expected = config.unit_by_code
        latest = {x.unit_code: x for x in subs if x.unit_code in expected}  # later ids win
        order = [c for c in config.units.codes if c in latest]
        row_of = {latest[c].id: i for i, c in enumerate(order)}
        reviewed = {x.id for x in latest.values() if x.decided_by not in (None, "system")}
        number_col, text_col = {k: j for j, k in enumerate(counts)}, {k: j for j, k in enumerate(texts)}
        numbers = np.full((len(order), len(counts)), np.nan)
        text_cells = np.full((len(order), len(texts)), np.nan, dtype=object)
        held_back: dict[str, list[str]] = {}
        # millions of values at national scale: folded into the two tables a batch at a time
        for batch in plain_row_batches(conn, select(Value.submission_id, Value.field, Value.number, Value.text,
                                                    Value.flag)
                                       .join(Submission, Submission.id == Value.submission_id)
                                       .where(*accepted).order_by(Value.submission_id, Value.id)):
            for sid, key, number, text, flag in batch:
                i = row_of.get(sid)
                if i is None:
                    continue
                if flag and sid not in reviewed:  # spam-flagged: out until a coordinator accepted it by hand
                    held_back.setdefault(order[i], []).append(key)
                elif key in number_col and number is not None and np.isnan(numbers[i, number_col[key]]):
                    numbers[i, number_col[key]] = number  # the first value, as a pivot's "first"
                elif key in text_col and text is not None:
                    text_cells[i, text_col[key]] = text
        photos = list(s.scalars(select(SubmissionFile)
                                .join(Submission, Submission.id == SubmissionFile.submission_id)
                                .where(*accepted, SubmissionFile.role == "photo")
                                .order_by(SubmissionFile.submission_id, SubmissionFile.id)))
    photos = [f for f in photos if f.submission_id in row_of]
    index = pd.Index(order, name="unit")
    return Merged([latest[c] for c in order], pd.DataFrame(numbers, index=index, columns=counts),
                  pd.DataFrame(text_cells, index=index, columns=texts), photos, held_back)


#: Bulletin settings that do not change what it says: who approves it, how long a run waits.
_NOT_CONTENT = {"approvers", "approval_timeout_hours"}


#: The modules whose code shapes what a bulletin says.
_CONTENT_MODULES = ("compile.py", "render_docx.py", "personal.py", "readers.py", "timeliness.py",
                    "year_over_year.py", "charts.py", "render_pdf.py")


def fingerprint(config: Config, merged: Merged, override_dir: str | None, lead: str | None,
                readers: Readers) -> str:
    """What a bulletin says depends on: its submissions, what its readers are told besides
    (the previous round, timeliness), its own templates (``bulletin.*``, not the mails'), its
    settings (not who approves it) and lead."""
    h = hashlib.sha256()
    h.update(json.dumps([(x.id, x.fingerprint) for x in merged.submissions]).encode())
    h.update(readers.digest().encode())
    for path in template_files(override_dir):
        if path.name.startswith("bulletin."):
            h.update(path.name.encode() + path.read_bytes())
    settings = config.campaign.bulletin.model_dump(mode="json", exclude=_NOT_CONTENT)
    h.update(json.dumps([settings, config.campaign.form.model_dump(mode="json"), lead,
                         list(zip(config.units.codes, config.units.names))], sort_keys=True).encode())
    for name in _CONTENT_MODULES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def totals(numbers: pd.DataFrame) -> pd.Series:
    """Province totals: exact integer sums of the accepted returns (blank counts as 0)."""
    return numbers.fillna(0).sum(axis=0).round().astype("int64")


def build_content(config: Config, merged: Merged, version: int, day: dt.date, lead: str,
                  photos: tuple[Photo, ...], readers: Readers, charts: tuple[Chart, ...] = ()) -> BulletinContent:
    camp, b = config.campaign, config.campaign.bulletin
    sums = totals(merged.numbers)
    yoy = readers.comparison
    figures = tuple(Figure(f.key, f.label, f.unit or "", int(sums[f.key]),
                           round_down_prose(int(sums[f.key]), b.significant_figures), f.section,
                           _compare_cells(yoy, f.key), yoy.changes.get(f.key) if yoy else None)
                    for f in camp.form.counts)
    phrase = lambda fs: "、".join(f"{x.label}{x.prose}{x.unit}" for x in fs if x.exact)  # noqa: E731
    activity, media = phrase([f for f in figures if f.section == "activity"]), \
        phrase([f for f in figures if f.section == "media"])
    labels = lambda section: {f.key: f.label for f in camp.form.counts if (f.section == "media") == (section == "media")}  # noqa: E731
    units = config.units
    stories = _stories(config, merged)
    shown = merged.numbers.index if len(merged.numbers) <= b.max_table_rows else []
    change_keys = tuple(b.change_columns) if readers.previous is not None else ()
    rows = tuple(UnitRow(code, units.name_of(code),
                         tuple(None if pd.isna(v) else int(v) for v in merged.numbers.loc[code]),
                         b.name_units and readers.states[code].state == LATE,
                         {k: readers.changes[code][k] if code in readers.changes else Change(None, absent=True)
                          for k in change_keys})
                 for code in shown)
    reported, expected = len(merged.submissions), len(config.units)
    t_headers, t_rows = timeliness_table(readers.this_round, readers.previous_round) if b.timeliness else ((), ())
    completeness = _completeness(config, merged, readers, bool(rows))
    recipients, copies = _recipients(config)
    content = BulletinContent(
        campaign_id=camp.id, version=version, name=b.name, issue=b.issue, title=b.title,
        issuer=b.issuer, date=day, date_text=chinese_date(day), lead=lead,
        stories_regions=tuple(s for s in stories if s.kind != "department"),
        stories_departments=tuple(s for s in stories if s.kind == "department"),
        area=b.area, regions_heading=_region_group(config), departments_heading=_departments_group(b.area),
        figures=figures,
        totals_sentence=f"{b.area}各级公共机构共{activity}。" if activity else "",
        media_sentence=f"宣传报道方面，共计{media}。" if media else "",
        expected=expected, reported=reported, completeness_sentence=completeness,
        missing_names=tuple(name for code, name in zip(units.codes, units.names) if readers.states[code].state == MISSING)
        if b.name_units else (),
        table_headers=tuple(f"{f.label}（{f.unit}）" if f.unit else f.label for f in camp.form.counts),
        unit_rows=rows, photos=photos, recipients=recipients, copies=b.copies or copies,
        generated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        totals_change=yoy.sentence(labels("activity")) if yoy else "",
        media_change=yoy.sentence(labels("media"), coverage=False) if yoy else "",
        compare_headers=_compare_headers(yoy), change_keys=change_keys,
        timeliness_headers=t_headers, timeliness_rows=t_rows, charts=charts)
    if not b.personal_copies:
        return content
    return dataclasses.replace(content, personal=_personal_blocks(config, merged, readers, sums, content))


def _stories(config: Config, merged: Merged) -> list[Story]:
    """The narratives quoted, in unit order, up to ``max_stories``."""
    camp, units = config.campaign, config.units
    first = camp.form.texts[0].key if camp.form.texts else None
    rest = [t.key for t in camp.form.texts[1:]]
    stories = []
    for code, row in merged.texts.head(camp.bulletin.max_stories).iterrows():
        text = lambda k: _sentence(defang_links(str(row[k]))) if k in row and pd.notna(row[k]) else ""  # noqa: E731
        if first and text(first):
            stories.append(Story(code, units.name_of(code), units.kind_of(code), text(first),
                                 "；".join(text(k) for k in rest if text(k))))
    return stories


def _completeness(config: Config, merged: Merged, readers: Readers, table_shown: bool) -> str:
    """报送情况: counts (and rates), the 通报 names when the campaign wants them, and notes."""
    b, units = config.campaign.bulletin, config.units
    this = readers.this_round
    if b.timeliness:
        text = timeliness_sentence(this, readers.previous_round)
    else:
        text = f"本次应报{this.expected}家，已报{this.reported}家" + ("，全部按要求报送。" if not this.counts[MISSING] else "。")
    if b.name_units:
        cap = max(b.max_table_rows, 1)
        for state, label in ((LATE, "逾期报送"), (MISSING, "未报送")):
            named = [units.name_of(c) + (f"（逾期{u.late_by}）" if state == LATE else "")
                     for c, u in readers.states.items() if u.state == state]
            if named:
                more = f"等{len(named)}家" if len(named) > cap else ""
                text += f"{label}：{'、'.join(named[:cap])}{more}。"
    if len(merged.texts) > b.max_stories:
        text += f"活动情况摘录前{b.max_stories}家单位。"
    if not table_shown and len(merged.numbers):
        text += "各单位明细数据见附件汇总表。"
    return text


def _compare_headers(yoy: YearOverYear | None) -> tuple[str, ...]:
    if yoy is None:
        return ()
    return ("同口径本年", "同口径上年", "比上年") if yoy.basis == "same_units" else ("上年合计", "比上年")


def _compare_cells(yoy: YearOverYear | None, key: str) -> tuple[str, ...]:
    if yoy is None:
        return ()
    if key not in yoy.changes:  # a field the previous round did not have
        return ("—",) * len(_compare_headers(yoy))
    same = (str(yoy.current[key]),) if yoy.basis == "same_units" else ()
    return (*same, str(yoy.base[key]), yoy.changes[key].short)


def _personal_blocks(config: Config, merged: Merged, readers: Readers, sums: pd.Series,
                     content: BulletinContent) -> Blocks:
    """Every expected unit's block, with what of its return the bulletin left out (each made
    when it is written: at 100,000 units they took about 400 MB held together)."""
    camp = config.campaign
    figures = Figures(merged.numbers, sums, readers.previous, readers.changes)
    quoted = {s.unit_code for s in content.stories_regions + content.stories_departments}
    first = camp.form.texts[0].key if camp.form.texts else None
    narrated = set(merged.texts.index[merged.texts[first].notna()]) if first and len(merged.texts) else set()
    unit_of = {x.id: x.unit_code for x in merged.submissions}
    sent_photos: dict[str, int] = {}
    for f in merged.photos:
        sent_photos[unit_of[f.submission_id]] = sent_photos.get(unit_of[f.submission_id], 0) + 1
    used_photos: dict[str, int] = {}
    for p in content.photos:
        used_photos[p.unit_code] = used_photos.get(p.unit_code, 0) + 1
    labels = {f.key: f.label for f in camp.form.texts}

    def block(code: str, name: str) -> PersonalBlock:
        left_out = [f"“{labels.get(k, k)}”含待人工审核的内容，审核通过前本期简讯暂未收录。"
                    for k in merged.held_back.get(code, [])]
        if code in narrated and code not in quoted:
            left_out.append(f"本期简讯摘录前{camp.bulletin.max_stories}家单位的活动情况，本单位未摘录。")
        sent, used = sent_photos.get(code, 0), used_photos.get(code, 0)
        if used < sent:
            left_out.append(f"报送照片{sent}张，本期简讯选用{used}张。")
        return build_block(code, name, camp.form.counts, figures, readers.states.get(code),
                           camp.calendar.tz, tuple(left_out))
    return Blocks(list(zip(config.units.codes, config.units.names)), block)


def _sentence(text: str) -> str:
    """A narrative as a finished sentence: trimmed, ending in 。 unless it already ends in punctuation."""
    text = text.strip()
    return text if not text or text[-1] in "。！？；.!?…）)”\"" else text + "。"


def _recipients(config: Config) -> tuple[tuple[Recipients, ...], int]:
    by_role: dict[str, list[str]] = {}
    count = 0
    for list_id in config.campaign.bulletin.distribution:
        lst = config.lists[list_id]
        names = [lst.title] if lst.all_units else [m.name for m in lst.members]
        count += len(config.units) if lst.all_units else len(lst.members)
        by_role.setdefault(lst.role, []).extend(names)
    order = ("报", "送", "发")
    return tuple(Recipients(r, tuple(by_role[r])) for r in order if r in by_role), count


def mail_size(folder: Path) -> int:
    """What the bulletin email will weigh: body, inline photos and DOCX, base64-encoded."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    parts = [folder / "mail.html", folder / "bulletin.txt", folder / "bulletin.docx",
             *sorted((folder / "images").glob("*.jpg")), *sorted((folder / "charts").glob("*.png")),
             *([folder / "merged.xlsx"] if manifest.get("attach_table") else []),
             *([folder / "bulletin.pdf"] if manifest.get("attach_pdf") else [])]
    return int(sum(p.stat().st_size for p in parts if p.exists()) * 4 / 3) + 4096


def _render_within_budget(home: Path, merged: Merged, config: Config, folder: Path, version: int,
                          day: dt.date, lead: str, override_dir: str | None, readers: Readers) -> BulletinContent:
    """Render; while the mail is over ``max_mail_bytes``, shrink the photos, then use fewer."""
    budget = config.campaign.bulletin.max_mail_bytes
    limit = config.campaign.bulletin.max_photos
    charts = draw_charts(config, merged, readers, folder)
    for side in PHOTO_SIDES + (PHOTO_SIDES[-1],) * 8:
        if (folder / "images").exists():
            shutil.rmtree(folder / "images")
        photos = _copy_photos(home, merged, config, folder, side, limit)
        content = build_content(config, merged, version, day, lead, photos, readers, charts)
        render_files(content, folder, config, override_dir)
        if mail_size(folder) <= budget or not photos:
            break
        if side == PHOTO_SIDES[-1]:
            limit = len(photos) // 2
    else:
        log.warning("bulletin v%s is %d bytes, over max_mail_bytes %d", version, mail_size(folder), budget)
    render_blocks(content, folder, config, override_dir)  # once, with the photos that stayed
    return content


def draw_charts(config: Config, merged: Merged, readers: Readers, folder: Path) -> tuple[Chart, ...]:
    """charts/chart-N.png: the totals against the previous round (when there is one), then one
    chart per ``chart_fields`` key, regions and departments apart. None when switched off, or
    when no font on the machine draws Chinese (the log says how to install one)."""
    b = config.campaign.bulletin
    if not b.charts or not len(merged.numbers):
        return ()
    out: list[Chart] = []
    (folder / "charts").mkdir(parents=True, exist_ok=True)
    path = lambda: folder / "charts" / f"chart-{len(out) + 1}.png"  # noqa: E731
    cid = lambda: f"chart-{len(out) + 1}@bulletin"  # noqa: E731
    try:
        yoy = readers.comparison
        if yoy is not None:
            items = [(f.label, f.unit or "", yoy.base[f.key], yoy.current[f.key], yoy.changes[f.key].short)
                     for f in config.campaign.form.counts if f.key in yoy.changes]
            scope = "同口径" if yoy.basis == "same_units" else "全部单位"
            out.append(Chart(path(), cid(), f"{b.area}主要指标与上年对比（{scope}）",
                             totals_chart(path(), items, yoy.basis, b.area), "totals"))
        units = config.units
        for key in b.chart_fields:
            f = config.campaign.form.field(key)
            values = merged.numbers[key].rename(index=units.name_of)
            kinds = pd.Series([units.kind_of(c) for c in merged.numbers.index], index=values.index)
            panels = [(_region_group(config), values[kinds != "department"]),
                      (_departments_group(b.area), values[kinds == "department"])]
            title = f"各单位{f.label}（{f.unit}）" if f.unit else f"各单位{f.label}"
            alt, note = units_chart(path(), f.label, f.unit or "", panels)
            out.append(Chart(path(), cid(), title, alt, "units", note))
    except NoCJKFont as exc:
        log.warning("%s", exc)
        shutil.rmtree(folder / "charts", ignore_errors=True)
        return ()
    return tuple(out)


def _departments_group(area: str) -> str:
    """省直机关 for 全省, 市直机关 for 全市."""
    return f"{area.removeprefix('全')}直机关"


def _region_group(config: Config) -> str:
    """各市及沈抚示范区 (a province's round), 各区县 (a city's), from the units' kinds."""
    units = config.units
    zones = [name for name, kind in zip(units.names, units.kinds) if kind == "zone"]
    kinds = set(units.kinds) - {"zone", "department"}
    whole = "各区县" if kinds == {"district"} else "各市"
    return whole + (f"及{'、'.join(zones)}" if 0 < len(zones) <= 2 else "及各示范区" if zones else "")


def _copy_photos(home: Path, merged: Merged, config: Config, folder: Path, side: int,
                 limit: int) -> tuple[Photo, ...]:
    """Downscaled JPEG copies of the gallery photos (one name per photo, never the sender's)."""
    units = config.unit_by_code
    unit_of = {x.id: x.unit_code for x in merged.submissions}
    chosen = _one_per_unit_first(merged.photos, unit_of)[:limit]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for f in chosen:
        name = f"photo-{len(out) + 1:02d}.jpg"
        try:
            with Image.open(home / f.archive_path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((side, side))
                im.save(folder / "images" / name, "JPEG", quality=80, optimize=True)
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            log.warning("photo %s of submission %s skipped: %s", f.name, f.submission_id, exc)
            continue
        i = len(out) + 1
        code = unit_of[f.submission_id]
        out.append(Photo(folder / "images" / name, f.caption or "", units[code].name, f"photo-{i:02d}@bulletin", code))
    return tuple(out)


def _one_per_unit_first(photos: list[SubmissionFile], unit_of: dict[int, str]) -> list[SubmissionFile]:
    firsts, rest, seen = [], [], set()
    for p in photos:
        (rest if unit_of[p.submission_id] in seen else firsts).append(p)
        seen.add(unit_of[p.submission_id])
    return firsts + rest


def render_files(content: BulletinContent, folder: Path, config: Config, override_dir: str | None) -> None:
    """Write bulletin.{html,txt,md,docx}, the mail body and a manifest into ``folder``."""
    ctx = dict(b=content, units_label=_units_label(config))
    html = render("bulletin.html.j2", override_dir, image_src={x.cid: str(x.path.relative_to(folder))
                                                               for x in content.photos + content.charts}, **ctx)
    (folder / "bulletin.html").write_text(css_inline.inline(html), encoding="utf-8")
    (folder / "mail.html").write_text(mail_html(content, config, override_dir), encoding="utf-8")
    manifest = {"version": content.version, "title": content.title, "date": content.date_text,
                "attach_table": not content.unit_rows and content.reported > 0,
                "personal": len(content.personal),
                "attach_pdf": config.campaign.bulletin.pdf and config.campaign.bulletin.attach_pdf,
                "photos": [{"file": f"images/{p.path.name}", "cid": p.cid, "caption": p.caption}
                           for p in content.photos],
                "charts": [{"file": f"charts/{c.path.name}", "cid": c.cid, "title": c.title} for c in content.charts]}
    (folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1),
                                          encoding="utf-8")
    (folder / FIGURES_FILE).write_text(json.dumps(figures_record(content), ensure_ascii=False, indent=1),
                                       encoding="utf-8")
    (folder / "bulletin.txt").write_text(render("bulletin.txt.j2", override_dir, **ctx), encoding="utf-8")
    (folder / "bulletin.md").write_text(render("bulletin.md.j2", override_dir, **ctx), encoding="utf-8")
    write_docx(content, folder / "bulletin.docx")
    if config.campaign.bulletin.pdf:
        write_pdf(content, folder, ctx, override_dir)


def render_blocks(content: BulletinContent, folder: Path, config: Config, override_dir: str | None) -> None:
    """The units' blocks (``personal/``), for the content as it stands (they name what the
    bulletin left out, photos included)."""
    if (folder / "personal").exists():  # compiled again: blocks may differ
        shutil.rmtree(folder / "personal")
    write_blocks(content.personal, folder, dict(b=content, units_label=_units_label(config)), override_dir)


#: The version's figures and narrative as data, approved with it: what goes upward as this
#: office's return to a parent campaign (tasks/bulletin/upward.py).
FIGURES_FILE = "figures.json"


def figures_record(content: BulletinContent) -> dict:
    stories = content.stories_regions + content.stories_departments
    return {"version": content.version, "title": content.title, "expected": content.expected,
            "reported": content.reported, "totals": {f.key: f.exact for f in content.figures},
            "lead": content.lead,
            "highlights": [{"unit": s.unit_name, "text": s.highlights} for s in stories if s.highlights]}


def mail_html(content: BulletinContent, config: Config, override_dir: str | None) -> str:
    """The bulletin's HTML for the email body: inline CSS, images by Content-ID."""
    html = render("bulletin.html.j2", override_dir, b=content, units_label=_units_label(config),
                  image_src={x.cid: f"cid:{x.cid}" for x in content.photos + content.charts},
                  personal_slot=bool(content.personal))
    return css_inline.inline(html)


def _units_label(config: Config) -> list[str]:
    return [f.label for f in config.campaign.form.counts]


def _export_table(merged: Merged, config: Config, path: Path) -> None:
    """Every unit's exact figures as an .xlsx (text cells written as text, never formulas)."""
    table = merged.numbers.copy()
    table.columns = [f"{f.label}（{f.unit}）" if f.unit else f.label for f in config.campaign.form.counts]
    table.insert(0, "报送单位", [config.units.name_of(c) for c in table.index])
    export_frame(table.reset_index(names="单位代码"), path)


def compile_bulletin(ledger: Ledger, config: Config, now: dt.datetime, *, lead: str | None = None,
                     override_dir: str | None = None) -> tuple[Bulletin, bool]:
    """Return (bulletin, created): the existing version when nothing changed."""
    camp = config.campaign
    merged = merge_accepted(ledger, config)
    readers = gather(ledger, config, merged.numbers)
    fp = fingerprint(config, merged, override_dir, lead, readers)
    latest = ledger.latest_bulletin(camp.id)
    if latest is not None and latest.fingerprint == fp:
        return latest, False
    version = (latest.version if latest else 0) + 1
    final = ledger.home / "bulletins" / camp.id / f"v{version}"
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=final.parent))
    try:
        _export_table(merged, config, work / "merged.xlsx")
        day = camp.bulletin.date or now.astimezone(camp.calendar.tz).date()
        _render_within_budget(ledger.home, merged, config, work, version, day,
                              lead or camp.bulletin.lead, override_dir, readers)
        row = Bulletin(campaign=camp.id, version=version, fingerprint=fp,
                       submission_ids=[x.id for x in merged.submissions],
                       folder=str(final.relative_to(ledger.home)), created_at=now)
        with ledger.session() as s:  # the version, its event and its folder, or none of them
            s.add(row)
            s.add(audit_event(camp.id, "bulletin.compiled", subject=f"v{version}",
                        detail={"submissions": row.submission_ids}, at=now))
            s.flush()  # another run that made this version first fails here, before the rename
            if final.exists():  # left by a run that crashed before its commit
                shutil.rmtree(final)
            work.rename(final)
    except IntegrityError:
        shutil.rmtree(work, ignore_errors=True)
        return ledger.latest_bulletin(camp.id), False  # another run made this version first
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return row, True


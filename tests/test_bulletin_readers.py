"""What the bulletin tells its readers beyond the totals: year over year (like for like),
timeliness with 报送率 and 及时率, and each unit's own block; over a real ledger filled with
real workbooks for two rounds, a unit missing from each."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
from docx import Document
from test_processing import submit, write_return

from tasks.bulletin.compile import compile_bulletin
from tasks.bulletin.timeliness import CORRECTED, LATE, MISSING, ON_TIME, classify, late_by, summarize
from tasks.bulletin.timeliness import table as timeliness_table
from tasks.bulletin.year_over_year import change, compare_rounds, unit_changes
from tasks.core.config import load_config
from tasks.core.formatting import percent_half_up
from tasks.core.ledger import Ledger
from tasks.core.rounds import Timeline
from tasks.decisions.processing import process_received

# ------------------------------------------------------------------ plain functions


def test_percentages_round_half_up_exactly():
    assert percent_half_up(1, 8) == Decimal("12.5")
    assert percent_half_up(1, 800) == Decimal("0.1")  # 0.125 → 0.1; 0.15 → 0.2 below
    assert percent_half_up(3, 2000) == Decimal("0.2")
    assert percent_half_up(-1, 16) == Decimal("-6.3")  # halves away from zero
    assert percent_half_up(123, 1000) == Decimal("12.3")


def test_a_change_is_written_as_people_write_it():
    assert change(1123, 1000).phrase == "比上年增长12.3%"
    assert change(959, 1000).phrase == "比上年下降4.1%"
    assert change(10004, 10000).phrase == "与上年持平"  # 0.04% rounds to 0.0%
    assert change(9996, 10000).short == "持平"
    assert change(5, 0).phrase == "" and change(5, 0).short == "—"  # no base, no percentage
    assert change(None, 10).short == "—"
    assert "余" not in change(32237, 30000).phrase


def test_like_for_like_leaves_out_units_in_one_round_only():
    now = pd.DataFrame({"posters": [1123.0, 2000.0, 800.0]}, index=["a", "b", "new"])
    before = pd.DataFrame({"posters": [1000.0, 2000.0, 500.0]}, index=["a", "b", "gone"])
    same = compare_rounds(now, before, "prev")
    assert (same.both, same.new, same.dropped) == (2, 1, 1)
    assert (same.current["posters"], same.base["posters"]) == (3123, 3000)
    assert same.changes["posters"].phrase == "比上年增长4.1%"
    assert same.coverage == "其中2家单位两年均报送；本年新报送1家、上年报送而本年未报1家，不计入比较"
    whole = compare_rounds(now, before, "prev", "all_units")
    assert (whole.current["posters"], whole.base["posters"]) == (3923, 3500)
    assert whole.changes["posters"].phrase == "比上年增长12.1%"
    assert "本年报送3家，上年报送3家" in whole.sentence({"posters": "张贴宣传画"})
    per_unit = unit_changes(now, before, ["posters"])
    assert "new" not in per_unit  # never +100%
    assert per_unit["b"]["posters"].short == "持平"
    assert compare_rounds(now.loc[["new"]], before, "prev") is None  # nobody in both rounds


def test_each_unit_has_one_timeliness_state():
    tz = dt.timezone(dt.timedelta(hours=8))
    deadline = dt.datetime(2023, 9, 28, 17, 0, tzinfo=tz)
    before, after = deadline - dt.timedelta(days=1), deadline + dt.timedelta(days=3)
    timelines = {"on": Timeline(before, before), "fixed": Timeline(before, after),
                 "late": Timeline(after, after), "hours": Timeline(deadline + dt.timedelta(hours=4, minutes=1),
                                                                   deadline + dt.timedelta(hours=5)),
                 "refused": Timeline(before, None)}
    states = classify(["on", "fixed", "late", "hours", "refused", "silent"], timelines, deadline, tz)
    assert {k: v.state for k, v in states.items()} == {
        "on": ON_TIME, "fixed": CORRECTED, "late": LATE, "hours": LATE, "refused": MISSING, "silent": MISSING}
    assert (states["late"].label, states["hours"].label) == ("逾期3天报送", "逾期5小时报送")
    assert late_by(deadline + dt.timedelta(hours=8), deadline, tz) == "1天"  # past midnight: the next day
    summary = summarize(states)
    assert (summary.reported, summary.by_deadline) == (4, 2)
    assert (summary.reporting_rate, summary.on_time_rate, summary.longest_late) == ("66.7%", "33.3%", "3天")
    headers, rows = timeliness_table(summary, summary)
    assert headers == ("项目", "本次", "上年") and rows[3] == ("逾期报送", "2（最长逾期3天）", "2（最长逾期3天）")


# ------------------------------------------------------------------ two rounds on a real ledger

TZ = dt.timezone(dt.timedelta(hours=8))


@pytest.fixture
def two_rounds(tmp_path, config, config_dir):
    """2022: units 0, 1 (late) and 3. 2023: unit 0 on time, unit 1 on time then corrected after
    the deadline, unit 2 (new) three days late; unit 3 does not return."""
    previous = load_config(config_dir, "energy-week-2022")
    ledger = Ledger(tmp_path / "home")
    u = config.units
    inbox = tmp_path / "inbox"
    d22, d23 = previous.campaign.calendar.deadline_at, config.campaign.calendar.deadline_at
    for i, posters, at in ((0, 1000, d22 - dt.timedelta(days=1)), (3, 500, d22 - dt.timedelta(days=1)),
                           (1, 2000, d22 + dt.timedelta(days=1))):
        submit(ledger, previous, write_return(inbox / f"22-{i}", previous, u[i], campaign=previous.campaign,
                                              posters=posters), at)
        assert [o.state for o in process_received(ledger, previous, at)] == ["accepted"]
    for name, i, posters, at in (("a", 0, 1123, d23 - dt.timedelta(days=2)), ("b", 1, 1990, d23 - dt.timedelta(days=2)),
                                 ("b2", 1, 2000, d23 + dt.timedelta(days=1)), ("c", 2, 800, d23 + dt.timedelta(days=3))):
        submit(ledger, config, write_return(inbox / name, config, u[i], posters=posters), at)
        assert [o.state for o in process_received(ledger, config, at)] == ["accepted"]
    return ledger


def _compile(ledger, config, **settings):
    bulletin = config.campaign.bulletin.model_copy(update=settings)
    config = config.model_copy(update={"campaign": config.campaign.model_copy(update={"bulletin": bulletin})})
    row, created = compile_bulletin(ledger, config, dt.datetime(2023, 10, 9, 9, 0, tzinfo=TZ))
    return ledger.home / row.folder, created


def _docx_text(path) -> str:
    doc = Document(str(path))
    cells = [c.text for t in doc.tables for r in t.rows for c in r.cells]
    return "\n".join([p.text for p in doc.paragraphs] + cells)


def test_every_output_compares_like_for_like_and_tells_timeliness(two_rounds, config):
    folder, _ = _compile(two_rounds, config)
    u = config.units
    outputs = {name: (folder / name).read_text(encoding="utf-8")
               for name in ("bulletin.html", "mail.html", "bulletin.txt", "bulletin.md")}
    outputs["bulletin.docx"] = _docx_text(folder / "bulletin.docx")
    expected = len(config.units)
    for name, text in outputs.items():
        assert "其中2家单位两年均报送；本年新报送1家、上年报送而本年未报1家，不计入比较" in text, name
        assert "张贴宣传画比上年增长4.1%" in text, name  # (1123 + 2000) against (1000 + 2000)
        assert f"本次应报{expected}家，已报3家，报送率{percent_half_up(3, expected)}%" in text, name
        assert f"截止前报送2家，及时率{percent_half_up(2, expected)}%" in text, name
        assert f"上年分别为{percent_half_up(3, expected)}%和{percent_half_up(2, expected)}%" in text, name
        assert f"逾期报送：{u[2].name}（逾期3天）" in text, name  # the 2023 campaign names them (通报)
        assert "100.0%" not in text, name  # the new unit is never +100%
        assert "截止后更正" in text, name
    # the per-unit table's change column (posters is one of the 2023 campaign's change_columns)
    md_rows = {line.split("|")[1].strip(): line for line in outputs["bulletin.md"].splitlines()
               if line.startswith("| ") and "|" in line[2:]}
    assert "| 上年未报 |" in md_rows[f"{u[2].name}（逾期）"]
    assert "| 增长12.3% |" in md_rows[u[0].name] and "| 持平 |" in md_rows[u[1].name]


def test_each_unit_gets_its_own_block(two_rounds, config):
    from tasks.bulletin.personal import block_count, read_blocks

    folder, _ = _compile(two_rounds, config)
    u = config.units
    blocks = read_blocks(folder)
    assert set(blocks) == {x.code for x in config.units} and block_count(folder) == len(config.units)
    assert sorted(p.name for p in (folder / "personal").iterdir()) == ["blocks.jsonl", "index.html"], \
        "one file for every block, not two per unit"
    first = blocks[u[0].code][1]
    assert "按时报送" in first and "张贴宣传画：1123套，占全省28.6%，比上年增长12.3%" in first  # 1123 / 3923
    fixed = blocks[u[1].code][1]
    assert "截止前已报送，截止后更正（更正稿2023年9月29日17:00收到）" in fixed and "与上年持平" in fixed
    new = blocks[u[2].code][1]
    assert "逾期3天报送" in new and "本单位上年未报送，不作比较" in new and "比上年" not in new
    gone = blocks[u[3].code][1]
    assert "本单位未报送本次报表" in gone
    html = blocks[u[0].code][0]
    assert "增长12.3%" in html and "28.6%" in html
    index = (folder / "personal" / "index.html").read_text(encoding="utf-8")
    assert index.count("本单位报送情况") == len(config.units)
    assert "<!--bulletin:personal-->" in (folder / "mail.html").read_text(encoding="utf-8")
    assert "<!--bulletin:personal-->" not in (folder / "bulletin.html").read_text(encoding="utf-8")


def test_a_version_compiled_with_a_pair_of_files_per_block_is_still_read(tmp_path):
    """Versions compiled before blocks.jsonl (personal/<code>.html and .txt) send as before."""
    from tasks.bulletin.personal import block_count, read_blocks

    personal = tmp_path / "v1" / "personal"
    personal.mkdir(parents=True)
    for code in ("210100", "SZ001"):
        (personal / f"{code}.html").write_text(f"<p>{code}</p>", encoding="utf-8")
        (personal / f"{code}.txt").write_text(f"{code}：本单位报送情况", encoding="utf-8")
    (personal / "index.html").write_text("<html></html>", encoding="utf-8")
    assert read_blocks(tmp_path / "v1") == {"210100": ("<p>210100</p>", "210100：本单位报送情况"),
                                            "SZ001": ("<p>SZ001</p>", "SZ001：本单位报送情况")}
    assert block_count(tmp_path / "v1") == 2 and read_blocks(tmp_path / "none") == {}


def test_blocks_are_read_from_the_file_one_unit_at_a_time(tmp_path):
    """Sending finds a unit's line by its offset; what it reads equals the line decoded whole,
    whatever the block's text holds (the key names, quotes, other scripts)."""
    import json

    from tasks.bulletin.personal import BlockFile, block_count, read_blocks

    rows = [{"unit": "210100", "html": "<p>沈阳市</p>", "text": '含 , "html": 的文字'},
            {"unit": "SZ\"01", "html": '<p title="x">"引号"</p>', "text": "Ünïcødé ✓"},
            {"text": "t", "html": "h", "unit": "keys-in-another-order"}]
    personal = tmp_path / "v1" / "personal"
    personal.mkdir(parents=True)
    (personal / "blocks.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    blocks = read_blocks(tmp_path / "v1")
    assert isinstance(blocks, BlockFile) and len(blocks) == block_count(tmp_path / "v1") == 3
    assert blocks == {r["unit"]: (r["html"], r["text"]) for r in rows}
    assert "SZ\"01" in blocks and "210300" not in blocks and blocks.get("210300") is None


def test_a_narrative_held_back_is_told_to_its_unit(tmp_path, config):
    """A narrative flagged for review stays out of the bulletin, and the unit is told so."""
    ledger = Ledger(tmp_path / "home")
    unit = config.units[0]
    at = config.campaign.calendar.deadline_at - dt.timedelta(days=1)
    spam = "球盟会(中国)唯一官方网站 " * 3 + "http://spam.example.com 点击领取"
    submit(ledger, config, write_return(tmp_path / "in", config, unit, activities=spam), at)
    process_received(ledger, config, at)
    folder, _ = _compile(ledger, config)
    from tasks.bulletin.personal import read_blocks
    block = read_blocks(folder)[unit.code][1]
    assert "“主要活动情况”含待人工审核的内容，审核通过前本期简讯暂未收录。" in block
    assert "球盟会" not in (folder / "bulletin.txt").read_text(encoding="utf-8")


def test_each_part_switches_off_and_makes_a_new_version(two_rounds, config):
    on, _ = _compile(two_rounds, config)
    plain, created = _compile(two_rounds, config, year_over_year=False, timeliness=False, personal_copies=False,
                              name_units=False)
    assert created and plain != on
    text = (plain / "bulletin.txt").read_text(encoding="utf-8") + _docx_text(plain / "bulletin.docx")
    for absent in ("比上年", "上年", "报送率", "及时率", "逾期", config.units[2].name + "（"):
        assert absent not in text, absent
    assert "本次应报" in text and not (plain / "personal").exists()
    again, created = _compile(two_rounds, config, year_over_year=False, timeliness=False, personal_copies=False,
                              name_units=False)
    assert (again, created) == (plain, False)  # the same settings and returns: the same version


def test_the_previous_round_is_part_of_the_version(two_rounds, config, config_dir, tmp_path):
    first, _ = _compile(two_rounds, config)
    previous = load_config(config_dir, "energy-week-2022")
    at = previous.campaign.calendar.deadline_at - dt.timedelta(hours=2)
    submit(two_rounds, previous, write_return(tmp_path / "late22", previous, config.units[2],
                                              campaign=previous.campaign, posters=700), at)
    process_received(two_rounds, previous, at)
    second, created = _compile(two_rounds, config)
    assert created and second != first
    assert "其中3家单位两年均报送" in (second / "bulletin.txt").read_text(encoding="utf-8")


def test_a_previous_round_that_never_ran_compares_nothing(tmp_path, config):
    ledger = Ledger(tmp_path / "home")
    at = config.campaign.calendar.deadline_at - dt.timedelta(days=1)
    submit(ledger, config, write_return(tmp_path / "in", config, config.units[0], posters=100), at)
    process_received(ledger, config, at)
    folder, _ = _compile(ledger, config)
    text = (folder / "bulletin.txt").read_text(encoding="utf-8")
    assert "比上年" not in text and "上年" not in text and "报送率" in text


def test_compare_basis_all_units(two_rounds, config):
    folder, _ = _compile(two_rounds, config, compare_basis="all_units")
    text = (folder / "bulletin.txt").read_text(encoding="utf-8")
    assert "与上年相比（本年报送3家，上年报送3家），张贴宣传画比上年增长12.1%" in text  # 3923 against 3500


def test_unknown_change_column_is_a_config_error(config_dir, tmp_path):
    import shutil

    from tasks.core.config import ConfigError, load_config_afresh
    shutil.copytree(config_dir, tmp_path / "config")
    path = tmp_path / "config" / "campaigns" / "energy-week-2023.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("change_columns: [posters, trainings]",
                                                              "change_columns: [postres]"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bulletin\.change_columns\.0: 'postres' is not a counted field"):
        load_config_afresh(tmp_path / "config", "energy-week-2023")

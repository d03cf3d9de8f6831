"""Compiling the bulletin (tasks/bulletin/compile.py) over a ledger filled from real .xlsx returns:
versions, files, exact totals in tables and the 余 convention in prose."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import zipfile
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tasks.bulletin.compile import compile_bulletin, merge_accepted
from tasks.core.formatting import round_down_prose
from tasks.core.ledger import ACCEPTED, Bulletin, Ledger
from tasks.decisions.processing import process_received
from tasks.intake.intake import entry_files, take_in

TZ = ZoneInfo("Asia/Shanghai")
T1 = dt.datetime(2023, 9, 25, 10, 0, tzinfo=TZ)
T2 = dt.datetime(2023, 9, 26, 10, 0, tzinfo=TZ)
COMPILE = dt.datetime(2023, 10, 9, 9, 0, tzinfo=TZ)
FILES = {"bulletin.html", "bulletin.txt", "bulletin.md", "bulletin.docx", "mail.html", "manifest.json"}

# three accepted returns whose sums are the 2023 bulletin's figures
ACCEPTED_VALUES = [
    {"posters": 10000, "signs": 5000, "banners": 700, "boards": 300, "trainings": 20, "participants": 16000},
    {"posters": 12237, "signs": 6000, "banners": 900, "boards": 300, "trainings": 20, "participants": 16000},
    {"posters": 10000, "signs": 6634, "banners": 553, "boards": 234, "trainings": 23, "participants": 16650},
]


from test_processing import submit, write_return  # noqa: E402 - shared real-file helpers


@pytest.fixture(scope="module")
def prepared_home(tmp_path_factory, config):
    """Three accepted returns, one rejected, one needing an explanation: taken in and decided
    once per module; each test gets its own copy of the home (ledger + archive)."""
    home = tmp_path_factory.mktemp("prepared") / "home"
    ledger = Ledger(home)
    inbox, u = home.parent / "inbox", config.units
    ids = [submit(ledger, config, write_return(inbox / str(i), config, u[i], **v), T1)
           for i, v in enumerate(ACCEPTED_VALUES)]
    submit(ledger, config, write_return(inbox / "r", config, u[3], posters=-1, signs=99999), T1)
    submit(ledger, config, write_return(inbox / "n", config, u[4], posters=99999), T1)
    states = [o.state for o in process_received(ledger, config, T1)]
    assert states == ["accepted"] * 3 + ["rejected", "needs_explanation"]
    with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.engine.dispose()
    return home, ids


@pytest.fixture
def prepared(prepared_home, tmp_path):
    base, ids = prepared_home
    shutil.copytree(base, tmp_path / "home", ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    return ids


@pytest.fixture
def ledger(request, tmp_path) -> Ledger:
    if "prepared" in request.fixturenames:
        request.getfixturevalue("prepared")  # the prepared home is copied in first
    return Ledger(tmp_path / "home")


def md_totals(md: str) -> dict[str, int]:
    """The 活动成效 table of bulletin.md: label → exact total."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (\S+) \| \S+ \| (\d+) \|$", md, re.M)}


def folder_of(ledger: Ledger, b: Bulletin) -> Path:
    return ledger.home / b.folder


# ---------------------------------------------------------------- versions
def test_first_compile_creates_version_1_with_every_file(ledger, config, prepared):
    b, created = compile_bulletin(ledger, config, COMPILE)
    assert created and b.version == 1 and b.approval == "pending"
    folder = folder_of(ledger, b)
    assert folder == ledger.home / "bulletins" / config.campaign.id / "v1"
    assert FILES <= {p.name for p in folder.iterdir()}
    assert all((folder / name).stat().st_size > 0 for name in FILES)
    assert sorted(b.submission_ids) == sorted(prepared)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["version"] == 1 and manifest["title"] == config.campaign.bulletin.title
    assert manifest["date"] == "2023年10月9日" and manifest["photos"] == []
    with zipfile.ZipFile(folder / "bulletin.docx") as z:
        assert "word/document.xml" in z.namelist()
        assert "32200余" in z.read("word/document.xml").decode("utf-8")
    # no half-written work folders left behind
    assert [p.name for p in folder.parent.iterdir()] == ["v1"]


def test_compiling_again_gives_the_same_version(ledger, config, prepared):
    b1, created1 = compile_bulletin(ledger, config, COMPILE)
    before = {p.name: p.stat().st_mtime_ns for p in folder_of(ledger, b1).iterdir()}
    b2, created2 = compile_bulletin(ledger, config, COMPILE + dt.timedelta(hours=1))
    assert created1 and not created2
    assert (b2.id, b2.version, b2.fingerprint) == (b1.id, 1, b1.fingerprint)
    assert {p.name: p.stat().st_mtime_ns for p in folder_of(ledger, b2).iterdir()} == before
    assert ledger.latest_bulletin(config.campaign.id).version == 1


def test_only_what_the_bulletin_says_makes_a_new_version(ledger, config, prepared, tmp_path):
    """A mail template's override or another approver leaves the version as it is; the
    bulletin's own template makes a new one."""
    from tasks.bulletin.compile import fingerprint, merge_accepted
    from tasks.bulletin.readers import gather
    from tasks.core.config import Approver
    merged = merge_accepted(ledger, config)
    readers = gather(ledger, config, merged.numbers)
    overrides = tmp_path / "templates"
    overrides.mkdir()
    first = fingerprint(config, merged, str(overrides), None, readers)
    (overrides / "receipt.txt.j2").write_text("回执 {{ subject }}", encoding="utf-8")
    bulletin = config.campaign.bulletin.model_copy(update={"approvers": [Approver(name="赵", email="z@example.org",
                                                                                  level="审核")]})
    other = config.model_copy(update={"campaign": config.campaign.model_copy(update={"bulletin": bulletin})})
    assert fingerprint(other, merged, str(overrides), None, readers) == first
    (overrides / "bulletin.txt.j2").write_text("{{ b.title }}", encoding="utf-8")
    assert fingerprint(config, merged, str(overrides), None, readers) != first


def test_a_rejected_return_changes_nothing(ledger, config, prepared, tmp_path):
    b1, _ = compile_bulletin(ledger, config, COMPILE)
    submit(ledger, config, write_return(tmp_path / "x", config, config.units[5], posters="很多"), T2)
    assert [o.state for o in process_received(ledger, config, T2)] == ["rejected"]
    b2, created = compile_bulletin(ledger, config, COMPILE)
    assert not created and b2.version == 1


def test_new_accepted_submission_gives_version_2(ledger, config, prepared, tmp_path):
    b1, _ = compile_bulletin(ledger, config, COMPILE)
    new = submit(ledger, config, write_return(tmp_path / "x", config, config.units[5], posters=1000), T2)
    process_received(ledger, config, T2)
    b2, created = compile_bulletin(ledger, config, COMPILE)
    assert created and b2.version == 2 and new in b2.submission_ids
    assert folder_of(ledger, b2).name == "v2"
    assert folder_of(ledger, b1).is_dir()  # earlier versions are kept
    totals = md_totals((folder_of(ledger, b2) / "bulletin.md").read_text(encoding="utf-8"))
    assert totals["张贴宣传画"] == 32237 + 1000
    b3, created = compile_bulletin(ledger, config, COMPILE)
    assert not created and b3.version == 2


def test_a_new_lead_gives_a_new_version(ledger, config, prepared):
    compile_bulletin(ledger, config, COMPILE)
    b2, created = compile_bulletin(ledger, config, COMPILE, lead="协调人撰写的新导语。")
    assert created and b2.version == 2
    assert "协调人撰写的新导语。" in (folder_of(ledger, b2) / "bulletin.txt").read_text(encoding="utf-8")


def test_resubmission_replaces_values_in_totals(ledger, config, prepared, tmp_path):
    unit = config.units[0]
    submit(ledger, config, write_return(tmp_path / "again", config, unit,
                                        **{**ACCEPTED_VALUES[0], "posters": 10100}), T2)
    (o,) = process_received(ledger, config, T2)
    assert o.state == ACCEPTED and o.earlier_replaced
    b, _ = compile_bulletin(ledger, config, COMPILE)
    totals = md_totals((folder_of(ledger, b) / "bulletin.md").read_text(encoding="utf-8"))
    assert totals["张贴宣传画"] == 32337
    assert len(b.submission_ids) == 3


# ---------------------------------------------------------------- totals and prose
def test_totals_equal_sums_of_accepted_values(ledger, config, prepared):
    b, _ = compile_bulletin(ledger, config, COMPILE)
    md = (folder_of(ledger, b) / "bulletin.md").read_text(encoding="utf-8")
    totals = md_totals(md)
    expected = {}
    for f in config.campaign.form.counts:
        expected[f.label] = sum(v.get(f.key, 100 if f.key == "participants" else 10) for v in ACCEPTED_VALUES)
    assert totals == expected
    assert totals["张贴宣传画"] == 32237 and totals["张贴节能标识"] == 17634
    # the per-unit table's 合计 row carries the same exact totals
    total_row = next(line for line in md.splitlines() if line.startswith("| **合计** |"))
    assert [int(x) for x in re.findall(r"\*\*(\d+)\*\*", total_row)] == list(expected.values())
    # the rejected and the unexplained returns are not counted; the merge agrees
    merged = merge_accepted(ledger, config)
    assert list(merged.numbers.index) == [u.code for u in config.units[:3]]
    assert int(merged.numbers["posters"].sum()) == 32237


def test_yu_prose_in_the_totals_sentence(ledger, config, prepared):
    b, _ = compile_bulletin(ledger, config, COMPILE)
    folder = folder_of(ledger, b)
    md = (folder / "bulletin.md").read_text(encoding="utf-8")
    sentence = next(line for line in md.splitlines() if line.startswith("全省各级公共机构共"))
    for label, unit, total in (("张贴宣传画", "套", 32237), ("张贴节能标识", "个", 17634),
                               ("悬挂横幅", "条", 2153), ("展出展板", "块", 834)):
        assert f"{label}{round_down_prose(total)}{unit}" in sentence
    assert "张贴宣传画32200余套" in sentence and "展出展板834块" in sentence
    assert "32237" not in sentence  # exact figures belong to the tables
    for name in ("bulletin.txt", "bulletin.html", "mail.html"):
        text = (folder / name).read_text(encoding="utf-8")
        assert "张贴宣传画32200余套" in text and "32237" in text, name
    assert "本次应报24家，已报3家" in md


def test_outputs_are_what_they_claim(ledger, config, prepared):
    b, _ = compile_bulletin(ledger, config, COMPILE)
    folder = folder_of(ledger, b)
    txt = (folder / "bulletin.txt").read_text(encoding="utf-8")
    assert "<" not in txt and "&lt;" not in txt  # a real text version, not HTML source
    mail = (folder / "mail.html").read_text(encoding="utf-8")
    assert "<style" not in mail and 'style="' in mail  # CSS inlined for mail clients
    assert (folder / "bulletin.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


def test_compile_with_nothing_accepted(ledger, config):
    b, created = compile_bulletin(ledger, config, COMPILE)
    assert created and b.version == 1 and b.submission_ids == []
    md = (folder_of(ledger, b) / "bulletin.md").read_text(encoding="utf-8")
    assert "本次应报24家，已报0家" in md
    assert set(md_totals(md).values()) == {0}


# ---------------------------------------------------------------- photos
def _jpeg(size=(1600, 1200)) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _entry_with_photo(folder: Path, config, unit, photo_name: str, photo: bytes) -> Path:
    write_return(folder, config, unit)
    (folder / photo_name).write_bytes(photo)
    return folder


def test_photos_are_downscaled_into_the_bulletin(ledger, config, prepared, tmp_path):
    submit(ledger, config, _entry_with_photo(tmp_path / "p", config, config.units[6], "启动仪式.jpg", _jpeg()), T2)
    process_received(ledger, config, T2)
    b, _ = compile_bulletin(ledger, config, COMPILE)
    folder = folder_of(ledger, b)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    (photo,) = manifest["photos"]
    assert photo["file"] == "images/photo-01.jpg" and photo["caption"] == "启动仪式"
    from PIL import Image
    with Image.open(folder / photo["file"]) as im:
        assert max(im.size) <= 1280
    assert f'cid:{photo["cid"]}' in (folder / "mail.html").read_text(encoding="utf-8")
    assert 'src="images/photo-01.jpg"' in (folder / "bulletin.html").read_text(encoding="utf-8")


def test_a_corrupt_photo_does_not_stop_the_bulletin(ledger, config, prepared, tmp_path):
    submit(ledger, config, _entry_with_photo(tmp_path / "bad", config, config.units[6], "现场.jpg",
                                             b"\xff\xd8\xff\xe0" + bytes(60)), T2)
    assert [o.state for o in process_received(ledger, config, T2)] == ["accepted"]
    b, created = compile_bulletin(ledger, config, COMPILE)
    assert created and len(b.submission_ids) == 4


def test_bulletin_mail_is_kept_under_its_size_budget(tmp_path, config):
    """Large photos shrink (then fewer are used) until mail.html + photos + DOCX fit."""

    from PIL import Image
    from test_processing import BEFORE, write_return

    from tasks.bulletin.compile import compile_bulletin, mail_size
    from tasks.core.ledger import Ledger
    from tasks.decisions.processing import process_received
    ledger = Ledger(tmp_path / "home")
    for i, code in enumerate(["210100", "210200", "210300"]):
        entry = tmp_path / "in" / code
        write_return(entry, config, config.unit_by_code[code])
        noise = Image.effect_noise((2400, 1800), 80).convert("RGB")  # noise does not compress
        noise.save(entry / f"现场{i}.jpg", "JPEG", quality=95)
        take_in(ledger, config.campaign.id, entry.name, entry_files(entry), source="folder", sender=None,
                now=BEFORE, max_file_bytes=config.campaign.max_file_bytes)
    process_received(ledger, config, BEFORE)
    budget = 900_000
    small = config.campaign.model_copy(update={"bulletin": config.campaign.bulletin.model_copy(
        update={"max_mail_bytes": budget})})
    cfg = config.model_copy(update={"campaign": small})
    row, created = compile_bulletin(ledger, cfg, BEFORE)
    folder = ledger.home / row.folder
    assert created and mail_size(folder) <= budget
    photos = sorted((folder / "images").glob("*.jpg"))
    assert photos, "some photos still shown"
    assert max(Image.open(p).size[0] for p in photos) < 1280  # they had to shrink


def test_large_campaigns_bound_the_table_and_narratives(prepared, ledger, config):
    """Past max_table_rows the per-unit table leaves the bulletin and travels as an .xlsx;
    past max_stories only the first units' narratives are quoted."""
    from tasks.mail.notices import bulletin_message
    bulletin = config.campaign.bulletin.model_copy(update={"max_table_rows": 2, "max_stories": 1})
    cfg = config.model_copy(update={"campaign": config.campaign.model_copy(update={"bulletin": bulletin})})
    row, _ = compile_bulletin(ledger, cfg, COMPILE)
    folder = folder_of(ledger, row)
    md = (folder / "bulletin.md").read_text(encoding="utf-8")
    assert "各单位明细数据见附件汇总表" in md and "活动情况摘录前1家单位" in md
    assert sum(1 for line in md.splitlines() if line.startswith("**")) == 1  # one narrative quoted
    assert json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["attach_table"] is True
    names = [a.filename for a in bulletin_message(cfg, folder, row.version).attachments]
    assert any(n.endswith("各单位汇总表.xlsx") for n in names) and any(n.endswith(".docx") for n in names)

"""What comes with a return: photo zips (bombs refused), stamped PDFs, .docx narratives, size limits."""

from __future__ import annotations

import io
import zipfile

from docx import Document
from PIL import Image
from sqlalchemy import select
from test_processing import BEFORE, submit, write_return

from tasks.core.ledger import ACCEPTED, REJECTED, Ledger, SubmissionFile
from tasks.decisions.processing import process_received
from tasks.decisions.status import completeness
from tasks.intake.attachments import unpack_photos


def _jpeg(color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "JPEG")
    return buf.getvalue()


def test_zip_of_photos_is_unpacked_and_other_members_refused(tmp_path, config):
    ledger = Ledger(tmp_path / "home")
    entry = tmp_path / "in" / "丹东"
    write_return(entry, config, config.unit_by_code["210600"], photos=[("现场.jpg", "发放环保购物袋")])
    with zipfile.ZipFile(entry / "照片.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("../../现场.jpg", _jpeg())
        zf.writestr("sub/签名.png", _png())
        zf.writestr("run.exe", b"MZ...")
    sid = submit(ledger, config, entry, BEFORE)
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == ACCEPTED
    with ledger.session() as s:
        files = {f.name: f for f in s.scalars(select(SubmissionFile).where(SubmissionFile.submission_id == sid))}
    assert files["照片.zip/现场.jpg"].role == "photo" and files["照片.zip/现场.jpg"].caption == "发放环保购物袋"
    assert files["照片.zip/签名.png"].role == "photo"
    assert files["照片.zip/run.exe"].role == "refused"
    assert any("run.exe" in n for n in o.notes)
    assert not (tmp_path / "现场.jpg").exists() and not (tmp_path / "in" / "现场.jpg").exists()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), "blue").save(buf, "PNG")
    return buf.getvalue()


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.jpg", b"\0" * (30 * 2**20))  # 30 MB of zeros packs to ~30 KB
    (only,) = unpack_photos(tmp_path, bomb, "bomb.zip", max_photo_bytes=10 * 2**20, max_total_bytes=100 * 2**20)
    assert only.refused and "疑似恶意" in only.refused and only.sha256 is None
    assert not (tmp_path / "archive").exists()


def test_signed_pdf_is_kept_and_shown_by_status(tmp_path, config):
    ledger = Ledger(tmp_path / "home")
    entry = tmp_path / "in" / "锦州"
    write_return(entry, config, config.unit_by_code["210700"])
    (entry / "盖章扫描件.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    submit(ledger, config, entry, BEFORE)
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == ACCEPTED
    unit = next(u for u in completeness(ledger, config, BEFORE)["units"] if u["code"] == "210700")
    assert unit["signed_copy"] is True


def test_docx_fills_a_blank_narrative(tmp_path, config):
    ledger = Ledger(tmp_path / "home")
    entry = tmp_path / "in" / "铁岭"
    write_return(entry, config, config.unit_by_code["211200"], activities="")
    doc = Document()
    doc.add_paragraph("铁岭市组织开展节能宣传周启动仪式。")
    doc.add_paragraph("向干部职工发放节能倡议书。")
    doc.save(entry / "活动总结.docx")
    submit(ledger, config, entry, BEFORE)
    (o,) = process_received(ledger, config, BEFORE)
    assert o.state == ACCEPTED, o.errors
    from tasks.bulletin.compile import merge_accepted
    text = merge_accepted(ledger, config).texts.loc["211200", "activities"]
    assert "启动仪式" in text and "倡议书" in text


def test_return_over_the_size_limit_is_archived_and_refused(tmp_path, config):
    ledger = Ledger(tmp_path / "home")
    small = config.campaign.model_copy(update={"max_return_bytes": 1000})
    cfg = config.model_copy(update={"campaign": small})
    path = write_return(tmp_path / "in", config, config.unit_by_code["210100"])
    sid = submit(ledger, cfg, path, BEFORE)
    (o,) = process_received(ledger, cfg, BEFORE)
    assert o.state == REJECTED and any("超过报表文件上限" in e for e in o.errors)
    with ledger.session() as s:
        f = s.scalars(select(SubmissionFile).where(SubmissionFile.submission_id == sid)).one()
    assert (ledger.home / f.archive_path).read_bytes() == path.read_bytes()  # kept all the same

"""Photos that come with a return: each must be a real JPEG or PNG within the campaign's size
limit; a bad one is refused with a note to the submitter, never the whole return."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError


def photo_problem(path: Path) -> str | None:
    """Why a photo cannot be used, or None: it must be a real JPEG or PNG image."""
    try:
        with Image.open(path) as im:
            kind = im.format
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "无法识别为图片（支持 .jpg、.png）"
    if kind not in ("JPEG", "PNG"):
        return f"格式为 {kind}，请使用 .jpg 或 .png"
    return None


def caption_from_name(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    return stem.replace("_", " ").strip() or name


def check_photos(files: list, captions: dict[str, str], home: Path, max_photo_bytes: int) -> tuple[list[dict], list[str]]:
    """(file updates for the ledger: each photo's role and caption, notes for the submitter).
    Files refused earlier (oversized, odd zip members) are noted too."""
    updates: list[dict] = []
    notes: list[str] = []
    for f in files:
        if f.role == "refused" and f.note:
            notes.append(f"《{f.name}》{f.note}，未采用")
        if f.role != "photo":
            continue
        problem = (f"超过 {max_photo_bytes // 2**20} MB" if f.size > max_photo_bytes
                   else photo_problem(home / f.archive_path))
        if problem:
            updates.append({"b_id": f.id, "b_role": "refused", "b_caption": None})
            notes.append(f"照片《{f.name}》{problem}，未采用（其余材料照常处理）")
        else:
            base = f.name.rsplit("/", 1)[-1]  # photos from a zip are shown as 照片.zip/现场.jpg
            caption = captions.get(f.name) or captions.get(base) or caption_from_name(base)
            updates.append({"b_id": f.id, "b_role": "photo", "b_caption": caption})
    return updates, notes

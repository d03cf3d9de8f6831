"""What units attach beside the return: a .zip of photos, a stamped PDF scan, a .docx narrative.

Zips are unpacked in memory under limits checked before inflating (member count, declared
and actual sizes, compression ratio); only photos are kept, each archived by sha256 and
named by its display name, never written under a name from the zip.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .archive import archive_bytes

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}
MAX_MEMBERS = 100
MAX_RATIO = 100
MAX_DOCX_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Unpacked:
    name: str  # display name: "照片.zip/现场.jpg"
    sha256: str | None
    archive_path: str | None
    size: int
    refused: str | None = None  # why it was not kept (Chinese)


def unpack_photos(home: Path, zip_path: Path, zip_name: str, max_photo_bytes: int,
                  max_total_bytes: int) -> list[Unpacked]:
    """The photos of a zip, archived; everything else listed as refused with the reason."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        return [Unpacked(zip_name, None, None, 0, "不是有效的 .zip 压缩包")]
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        declared = sum(i.file_size for i in infos)
        packed = max(sum(i.compress_size for i in infos), 1)
        if len(infos) > MAX_MEMBERS or declared > max_total_bytes or declared / packed > MAX_RATIO:
            return [Unpacked(zip_name, None, None, declared,
                             f"压缩包内文件过多或解压后过大（上限 {MAX_MEMBERS} 个、"
                             f"{max_total_bytes // 2**20} MB），疑似恶意文件，已拒收")]
        out = []
        for info in infos:
            shown = f"{zip_name}/{PurePosixPath(info.filename.replace(chr(92), '/')).name}"
            if PurePosixPath(info.filename).suffix.lower() not in PHOTO_SUFFIXES:
                out.append(Unpacked(shown, None, None, info.file_size, "压缩包中只接收 .jpg、.png 照片"))
                continue
            if info.file_size > max_photo_bytes:
                out.append(Unpacked(shown, None, None, info.file_size,
                                    f"照片超过 {max_photo_bytes // 2**20} MB"))
                continue
            data = _read_bounded(zf, info, max_photo_bytes)
            if data is None:
                out.append(Unpacked(shown, None, None, info.file_size, "解压后大小与声明不符，已拒收"))
                continue
            sha, rel = archive_bytes(home, data)
            out.append(Unpacked(shown, sha, rel, len(data)))
        return out


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes | None:
    """Inflate one member, stopping as soon as it exceeds ``limit`` (headers can lie)."""
    buf = io.BytesIO()
    with zf.open(info) as member:
        while chunk := member.read(1 << 16):
            if buf.tell() + len(chunk) > limit:
                return None
            buf.write(chunk)
    return buf.getvalue()


def docx_text(path: Path) -> str | None:
    """The paragraphs of a .docx narrative as plain text, or None if it cannot be read safely."""
    try:
        with zipfile.ZipFile(path) as zf:
            if sum(i.file_size for i in zf.infolist()) > MAX_DOCX_BYTES:
                return None
        from docx import Document
        doc = Document(str(path))
    except Exception:  # noqa: BLE001 - a broken document is reported by the caller, not raised
        return None
    text = "\n".join(p.text.strip() for p in doc.paragraphs if p.text.strip())
    return text or None


def is_pdf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(5) == b"%PDF-"

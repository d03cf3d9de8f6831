"""Simulated reporting units for the demo: their figures, narratives, photos and file formats.

Figures are spread over the units from the province totals of the 2023 bulletin, so the
demo's bulletin reads like the real one. Every return is a real file written by a real
library (openpyxl, the csv module in GBK or UTF-8 with BOM, Pillow for photos).
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from openpyxl import Workbook
from PIL import Image, ImageDraw

from tasks.core.config import Campaign, Unit
from tasks.mail.workbook import build_request_workbook, fill_workbook

# Province totals as printed in the 2023 bulletin (the demo spreads them over the units).
SEED_TOTALS = {"posters": 32237, "signs": 17634, "banners": 2153, "boards": 834, "materials": 42120,
               "bags": 14213, "items": 45821, "trainings": 63, "news_provincial": 12, "news_city": 52,
               "videos": 20, "participants": 48650}

_REGION_ACTS = [
    "举办公共机构节能宣传周暨全国低碳日启动仪式，干部职工现场签名承诺绿色出行",
    "组织节能知识网上答题活动，参与人数较往年明显增加",
    "开展“反食品浪费”志愿签名和光盘行动宣传，倡导节约用餐",
    "在机关办公区设置节能宣传展板，向干部职工发放节能倡议书和环保购物袋",
    "利用门户网站、电子屏和工作群滚动播放节能宣传片，扩大宣传覆盖面",
    "组织节能低碳进社区、进学校活动，发放宣传手册和节能小礼品",
    "编制公共机构生活垃圾分类工作指引，开展分类投放现场培训",
    "开展办公区“能源紧缺体验日”活动，当天停开空调、减少电梯使用",
]
_DEPT_ACTS = {
    "SZ001": "把节约能源资源纳入各部门月度评优的考核内容，引导干部职工养成节约习惯",
    "SZ002": "在展厅集中展出低碳生活、污水处理、可持续发展等科普展品四十余件",
    "SZ003": "面向家庭开展绿色低碳环保知识培训，把节能理念融入家风建设",
    "SZ004": "组织干部职工沿生态廊道开展健步走活动，倡导绿色低碳出行",
    "SZ005": "会同有关部门开展绿色建筑主题宣传，进高校、进社区宣讲绿色建筑条例",
    "SZ006": "组织参加全省节能宣传周启动活动，开展重点用能单位节能政策宣讲",
    "SZ007": "在各级学校开展节能主题班会和手抄报评比，引导学生从小养成节约习惯",
}
PHOTO_SCENES = {"210600": "发放环保购物袋", "210700": "节能宣传周启动仪式现场",
                "211200": "向干部职工发放节能倡议书", "211300": "机关干部观看节能宣传展板",
                "SZ003": "举办低碳日主题活动"}


@dataclass
class SimulatedReturn:
    unit: Unit
    values: dict[str, object]  # what the unit writes (text, full-width digits, 余...)
    exact: dict[str, int]  # what it means, for checking the bulletin's totals
    narrative: dict[str, str]
    explanation: str | None = None
    photos: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)


def spread_totals(units: list[Unit], seed: int = 2023) -> dict[str, dict[str, int]]:
    """Deterministic per-unit figures whose sums over all units equal SEED_TOTALS."""
    rng = random.Random(seed)
    weights = {u.code: rng.uniform(0.5, 1.5) * (2.5 if u.kind == "city" else 1.0) for u in units}
    total_w = sum(weights.values())
    out: dict[str, dict[str, int]] = {u.code: {} for u in units}
    for key, total in SEED_TOTALS.items():
        shares = [int(total * weights[u.code] / total_w) for u in units]
        shares[0] += total - sum(shares)  # the remainder to the first (the capital)
        for u, v in zip(units, shares):
            out[u.code][key] = v
    return out


def narrative_for(unit: Unit, index: int) -> dict[str, str]:
    if unit.code in _DEPT_ACTS:
        acts = _DEPT_ACTS[unit.code]
    else:
        first, second = _REGION_ACTS[index % len(_REGION_ACTS)], _REGION_ACTS[(index + 3) % len(_REGION_ACTS)]
        acts = f"{first}；{second}。"
    if not acts.endswith("。"):
        acts += "。"
    highlight = "节能宣传与垃圾分类、反食品浪费工作结合推进，形成长效机制" if index % 3 == 0 else ""
    return {"activities": acts, "highlights": highlight}


def make_photo(path: Path, label: str, seed: int) -> Path:
    """A real JPEG (1600×1200) so the bulletin's downscaling has work to do."""
    rng = random.Random(seed)
    im = Image.new("RGB", (1600, 1200), (rng.randint(60, 200), rng.randint(90, 200), rng.randint(60, 180)))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.randint(0, 1400), rng.randint(0, 1000)
        draw.rectangle([x, y, x + rng.randint(80, 300), y + rng.randint(60, 220)],
                       fill=(rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)))
    draw.text((40, 40), label, fill=(255, 255, 255))
    im.save(path, "JPEG", quality=85)
    return path


# ----------------------------------------------------------------- file formats
def write_generated(campaign: Campaign, r: SimulatedReturn, path: Path) -> Path:
    """The workbook the system sent, filled in as a unit would."""
    data = build_request_workbook(campaign, r.unit)
    values = {**r.values, **r.narrative}
    path.write_bytes(fill_workbook(data, values, explanation=r.explanation, photos=r.photos))
    return path


def _labelled(campaign: Campaign, r: SimulatedReturn) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [("填报单位", r.unit.name)]
    for f in campaign.form.fields:
        label = (f.synonyms[0] if f.synonyms else f.label) + (f"（{f.unit}）" if f.unit else "")
        rows.append((label, {**r.values, **r.narrative}.get(f.key, "")))
    if r.explanation:
        rows.append((campaign.form.explanation_label, r.explanation))
    return rows


def write_wide_xlsx(campaign: Campaign, r: SimulatedReturn, path: Path) -> Path:
    """A unit's own sheet: a title row, then one header row and one row of values."""
    wb = Workbook()
    ws = wb.active
    ws.title = "统计表"
    rows = _labelled(campaign, r)
    ws.append([f"{r.unit.name}公共机构节能宣传周活动情况统计表"])
    ws.append([label for label, _ in rows])
    ws.append([value for _, value in rows])
    wb.save(path)
    return path


def write_long_xlsx(campaign: Campaign, r: SimulatedReturn, path: Path) -> Path:
    """A unit's own sheet laid out long, with a title and a blank row."""
    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(["节能宣传周活动开展情况"])
    ws.append([])
    ws.append(["项目", "数量"])
    for label, value in _labelled(campaign, r):
        ws.append([label, value])
    wb.save(path)
    return path


def write_csv(campaign: Campaign, r: SimulatedReturn, path: Path, *, encoding: str, wide: bool) -> Path:
    rows = _labelled(campaign, r)
    buf = io.StringIO()
    writer = csv.writer(buf)
    if wide:
        writer.writerow([label for label, _ in rows])
        writer.writerow([value for _, value in rows])
    else:
        writer.writerow(["项目", "数值"])
        writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path

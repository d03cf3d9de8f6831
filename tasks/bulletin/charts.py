"""Charts for readers who would rather look than read: the province totals against the previous
round, and the per-unit figures of the fields the campaign names.

Drawn with matplotlib's object API (no pyplot state), in a CJK font from the system (Debian's
fonts-noto-cjk, installed by ``make system-deps``). Greys and hatching, so a greyscale print
reads the same; every chart has alt text, and every number in it is also in a table.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
from matplotlib import font_manager  # noqa: E402 - after choosing the backend
from matplotlib.figure import Figure  # noqa: E402

log = logging.getLogger(__name__)

#: CJK families tried in turn (the first is what ``make system-deps`` installs).
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Micro Hei",
                "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei")
DARK, LIGHT = "#2b2b2b", "#c8c8c8"  # this round, the previous one: apart in greyscale too
TOP = 20  # bars per panel; the rest are one bar, 其他
WIDTH_IN, DPI = 7.2, 150  # 1080 px: sharp in a mail window, shrunk to fit a phone


class NoCJKFont(RuntimeError):
    """No font on this machine draws every character of a chart; ``make system-deps`` installs one."""


@dataclass(frozen=True)
class Chart:
    path: Path  # charts/chart-N.png inside the version's folder
    cid: str  # Content-ID in the mail
    title: str  # 图1 全省主要指标与上年对比
    alt: str  # every number the chart shows, in words
    section: str  # totals | units
    note: str = ""  # 其他N家合计 … (what the top-20 cut folded away)


@lru_cache(maxsize=1)
def cjk_family() -> str:
    """The first installed CJK family; fonts installed after matplotlib built its cache are
    added from the system's font folders."""
    def installed() -> set[str]:
        return {f.name for f in font_manager.fontManager.ttflist}
    names = installed()
    if not any(f in names for f in CJK_FAMILIES):
        for path in font_manager.findSystemFonts():
            if any(k in Path(path).name.lower() for k in ("cjk", "wqy", "sourcehan", "simhei", "msyh")):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        names = installed()
    for family in CJK_FAMILIES:
        if family in names:
            return family
    raise NoCJKFont("未找到可显示中文的字体，简讯不含图表（以 root 运行 make system-deps 安装 fonts-noto-cjk）")


def _figure(height_in: float) -> Figure:
    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    fig.set_layout_engine("constrained")
    return fig


def _save(fig: Figure, path: Path) -> None:
    """PNG; a glyph the font lacks (a box in place of a character) makes no chart at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    if missing:
        path.unlink(missing_ok=True)
        raise NoCJKFont(f"图表字体缺字，简讯不含图表：{missing[0]}")


def _bare(ax, value_axis: str, family: str, size: float) -> None:
    """Values are written on the bars: no value axis, no frame but the baseline; category
    labels in the CJK font."""
    (ax.set_yticks if value_axis == "y" else ax.set_xticks)([])
    for side in ("top", "right", "left" if value_axis == "y" else "bottom"):
        ax.spines[side].set_visible(False)
    for tick in (ax.get_xticklabels() if value_axis == "y" else ax.get_yticklabels()):
        tick.set_fontfamily(family)
        tick.set_fontsize(size)


def totals_chart(path: Path, items: list[tuple[str, str, int, int, str]], basis: str, area: str = "全省") -> str:
    """Small multiples, one pair of bars (上年, 本年) per field, each on its own scale.

    *items*: (label, unit, previous, current, change) per field. Returns the alt text."""
    family = cjk_family()
    cols = 4
    rows = math.ceil(len(items) / cols)
    fig = _figure(1.75 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.set_visible(False)
    for ax, (label, unit, before, now, change) in zip(axes.flat, items):
        bars = ax.bar(["上年", "本年"], [before, now], color=[LIGHT, DARK], edgecolor=DARK, linewidth=0.6,
                      width=0.62)
        bars[0].set_hatch("///")
        ax.set_title(f"{label}（{unit}）\n{change}" if unit else f"{label}\n{change}", fontsize=8.5,
                     family=family)
        top = max(before, now, 1)
        ax.set_ylim(0, top * 1.22)
        for bar, value in zip(bars, (before, now)):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + top * 0.03, f"{value}",
                    ha="center", va="bottom", fontsize=7.5, family=family)
        _bare(ax, "y", family, 8)
    scope = "同口径" if basis == "same_units" else "全部单位"
    fig.suptitle(f"{area}主要指标与上年对比（{scope}）", fontsize=11, family=family)
    _save(fig, path)
    return "；".join(f"{label}上年{before}{unit}、本年{now}{unit}（{change}）"
                    for label, unit, before, now, change in items) + "。"


def _top(values: pd.Series) -> tuple[pd.Series, str]:
    """The TOP largest, then 其他 (the rest summed) when there are more."""
    values = values.sort_values(ascending=False)
    if len(values) <= TOP:
        return values, ""
    rest = values.iloc[TOP:]
    shown = pd.concat([values.iloc[:TOP], pd.Series({f"其他{len(rest)}家": rest.sum()})])
    return shown, f"其他{len(rest)}家合计{int(rest.sum())}"


def units_chart(path: Path, label: str, unit: str, panels: list[tuple[str, pd.Series]]) -> tuple[str, str]:
    """Sorted horizontal bars of one field, one panel per group of units (各市、省直机关), the
    top 20 and 其他. *panels*: (group name, values by unit name). Returns (alt text, note)."""
    family = cjk_family()
    cut = [(name, *_top(values.dropna().astype("int64"))) for name, values in panels if len(values.dropna())]
    heights = [0.24 * len(shown) + 0.55 for _name, shown, _note in cut]
    fig = _figure(sum(heights) + 0.5)
    axes = fig.subplots(len(cut), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (name, shown, _note) in zip(axes, cut):
        order = shown.iloc[::-1]  # the largest at the top
        bars = ax.barh(list(order.index), list(order.values), color=DARK, height=0.66)
        for bar, name_of in zip(bars, order.index):
            if str(name_of).startswith("其他"):
                bar.set_color(LIGHT)
                bar.set_edgecolor(DARK)
                bar.set_hatch("///")
        top = max(int(order.max()), 1)
        ax.set_xlim(0, top * 1.15)
        for bar, value in zip(bars, order.values):
            ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, f"{int(value)}",
                    va="center", fontsize=7, family=family)
        ax.set_title(name, fontsize=9.5, family=family, loc="left")
        _bare(ax, "x", family, 7.5)
    fig.suptitle(f"各单位{label}（{unit}）" if unit else f"各单位{label}", fontsize=11, family=family)
    _save(fig, path)
    alt = "；".join(f"{name}：" + "、".join(f"{n}{int(v)}" for n, v in shown.items()) for name, shown, _ in cut) + "。"
    return alt, "；".join(note for _name, _shown, note in cut if note)

"""Human-readable output for the CLI (rich tables)."""

from __future__ import annotations

import datetime as dt

from rich.console import Console
from rich.table import Table

from tasks.decisions.status import STATE_LABELS, completeness_line

DECISION_LABELS = {"approved": "同意", "rejected": "不同意"}


def local_minute(at: str, tz: dt.tzinfo | None) -> str:
    """A ledger time (ISO, UTC when naive) as ``2023-10-09 10:00`` in *tz*."""
    moment = dt.datetime.fromisoformat(at)
    if tz is not None:
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).astimezone(tz)
    return f"{moment:%Y-%m-%d %H:%M}"


def chain_lines(chain: dict, tz: dt.tzinfo | None = None) -> list[str]:
    """Where a version stands in its chain: each decision (level, who, when in *tz*, what, why),
    then the level due and who may decide it."""
    lines = [f"{d['level']}：{d['by']} {DECISION_LABELS.get(d['decision'], d['decision'])}"
             f"（{local_minute(d['at'], tz)}）{'：' + d['note'] if d.get('note') else ''}"
             for d in chain.get("decisions", [])]
    if chain.get("due"):
        lines.append(f"待{chain['due']}：{'、'.join(chain['due_approvers'])}")
    return lines


def print_status(status: dict, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{status['campaign']} 报送情况（截止 {status['deadline']}）")
    for col in ("代码", "单位", "状态", "报送时间", "次数", "逾期", "盖章件"):
        table.add_column(col)
    late = set(status["late"])
    for u in status["units"]:
        table.add_row(u["code"], u["name"], STATE_LABELS.get(u["state"], u["state"]),
                      (u["submitted_at"] or "")[:16].replace("T", " "), str(u["version"] or ""),
                      "是" if u["code"] in late else "", "有" if u.get("signed_copy") else "")
    console.print(table)
    console.print(completeness_line(status))
    b = status["latest_bulletin"]
    if b:
        console.print(f"最新简讯：第{b['version']}版，{'已批准' if b['approved'] else '未批准'}"
                      f"{'，已有更新的报表（需重新编制）' if b['stale'] else ''}")
        for line in chain_lines(b.get("chain") or {}, dt.datetime.fromisoformat(status["now"]).tzinfo):
            console.print(f"  {line}")
    if status.get("undeliverable_deliveries"):
        console.print(f"[red]被对方服务器拒收的邮件 {len(status['undeliverable_deliveries'])} 封[/red]（更正地址后重新运行相应步骤）："
                      + "，".join(status["undeliverable_deliveries"]))
    if status.get("uncertain_deliveries"):
        console.print(f"[red]发送状态不确定的邮件 {len(status['uncertain_deliveries'])} 封[/red]："
                      + "，".join(status["uncertain_deliveries"]))

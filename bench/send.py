"""Time the send step alone: N receipt-like messages through the ledger and the file outbox.

    .venv/bin/python bench/send.py                 # N = 10,000
    .venv/bin/python bench/send.py --n 1000 --dir /tmp/x --keep

It builds N messages shaped like receipts (a Chinese subject of about 30 characters, one to
three recipients with Chinese names, Reply-To, two extra headers, text of about 600
characters, HTML of about 2 KB), then times what ``flows.common.send_messages`` does without
Prefect: ``deliver_many(Ledger(home), OutboxMailer(home / "outbox"), ...)`` on a real SQLite
ledger in a new folder. It then times a second pass (every key skipped), checks the ledger
(N rows ``sent`` with their Message-IDs) and parses every ``.eml`` back.

``--tree DIR`` imports ``tasks`` from another checkout instead (e.g. a ``git archive`` of an
older commit). On a tree without ``deliver_many`` (before the batched sender) it times the
loop of ``deliver`` calls that ``send_messages`` ran then, so the same script measures both.

``--floor`` also times the bare file work in the same folder (N temporary files written and
renamed, no MIME, no ledger, no fsync): on this kind of shared VM, creating a file costs from
0.03 ms to over 1 ms depending on the folder's ext4 block group and the load, so read the
send time next to that floor.
"""

from __future__ import annotations

import argparse
import email
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from email import policy
from pathlib import Path

from sqlalchemy import func, select


def _import_tree(tree: Path | None) -> None:
    """Import ``tasks`` from *tree* (ignoring the editable install) or from this checkout."""
    if tree is not None:
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                            and "editable" not in repr(f).lower()]
        sys.path.insert(0, str(tree.resolve()))
    global tasks, delivery, SENT, Delivery, Ledger, OutboxMailer, Address, OutgoingMessage
    global SENDER, COORDINATOR
    import tasks
    from tasks.core.ledger import SENT, Delivery, Ledger
    from tasks.mail import delivery
    from tasks.mail.mailer import OutboxMailer
    from tasks.mail.message import Address, OutgoingMessage
    SENDER = Address("报送任务系统", "bulletin@stats.example.com")
    COORDINATOR = Address("王五", "coordinator@stats.example.com")


CAMPAIGN = "energy-week-2023"


def receipt(n: int) -> OutgoingMessage:
    to = tuple(Address(f"联系人{n:06d}{c}", f"contact{c}.b{n:06d}@example.org") for c in "abc"[: 1 + n % 3])
    subject = f"【回执】2023年节能宣传周活动情况统计：已通过（单位{n:06d}）"
    text = (f"{to[0].name}同志：\n\n您单位（B{n:06d} 单位{n:06d}）于2023年9月25日10:00报送的"
            "《2023年节能宣传周活动情况统计表》已收到，经系统校验已通过。\n\n"
            + "".join(f"  {label}：{n % 97 + i}\n" for i, label in enumerate(
                ["张贴宣传画（套）", "发放宣传资料（份）", "举办讲座（场）", "参与人数（人）",
                 "媒体报道（篇）", "志愿者（人）", "节能产品展示（项）", "线上活动（场）"]))
            + "\n如有疑问，请回复本邮件或联系王五（电话 024-12345678）。\n\n"
            + "说明：本回执仅确认报表已收到并通过格式与逻辑校验，数据最终以汇总审核结果为准。"
              "如需更正，请在截止时间前重新报送完整的报表，系统将以最后一次报送为准。\n" * 4
            + "本邮件由报送任务系统自动发送，请勿直接转发。\n" * 2)
    rows = "".join(f"<tr><td>{label}</td><td style=\"text-align:right\">{n % 97 + i}</td></tr>"
                   for i, label in enumerate(["张贴宣传画（套）", "发放宣传资料（份）", "举办讲座（场）",
                                              "参与人数（人）", "媒体报道（篇）", "志愿者（人）",
                                              "节能产品展示（项）", "线上活动（场）"]))
    html = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>body{font-family:sans-serif}"
            "table{border-collapse:collapse}td{border:1px solid #ccc;padding:4px 8px}</style></head>"
            f"<body><p>{to[0].name}同志：</p><p>您单位（B{n:06d} 单位{n:06d}）于2023年9月25日10:00报送的"
            "《2023年节能宣传周活动情况统计表》已收到，经系统校验<strong>已通过</strong>。</p>"
            f"<table>{rows}</table><p>如有疑问，请回复本邮件或联系王五（电话 024-12345678）。</p>"
            + ("<p style=\"color:#555;font-size:90%\">说明：本回执仅确认报表已收到并通过格式与逻辑校验，"
               "数据最终以汇总审核结果为准。如需更正，请在截止时间前重新报送完整的报表，系统将以最后一次报送为准。</p>") * 6
            + "<p style=\"color:#888\">本邮件由报送任务系统自动发送，请勿直接转发。</p>" * 4
            + "</body></html>")
    return OutgoingMessage(key=f"{CAMPAIGN}/receipt/{n}/accepted", to=to, subject=subject, text=text,
                           html=html, reply_to=COORDINATOR,
                           headers=(("X-Bulletin-Campaign", CAMPAIGN), ("X-Bulletin-Step", "receipt")))


def floor(folder: Path, items: list) -> float:
    """Seconds to write and rename one file per message into *folder*, of about its size."""
    data = [b"x" * (len(m.text.encode()) * 4 // 3 + len(m.html.encode()) * 4 // 3 + 1500) for m, _ in items]
    t0 = time.perf_counter()
    for i, payload in enumerate(data):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, folder / f"floor-{i}.bin")
    return time.perf_counter() - t0


def send_all(ledger, mailer, items: list) -> Counter:
    if hasattr(delivery, "deliver_many"):
        return Counter(delivery.deliver_many(ledger, mailer, items, campaign=CAMPAIGN, step="receipt"))
    return Counter(delivery.deliver(ledger, mailer, msg, campaign=CAMPAIGN, step="receipt", unit_code=unit)
                   for msg, unit in items)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dir", type=Path, help="work folder (default: a new one under /tmp, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--tree", type=Path, help="import tasks from this checkout instead")
    ap.add_argument("--floor", action="store_true", help="also time bare file writes in the same folder")
    args = ap.parse_args()
    _import_tree(args.tree)
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-send-"))
    home = work / "home"
    if home.exists():
        shutil.rmtree(home)
    print(f"code: {Path(delivery.__file__).parent.parent}  deliver_many: {hasattr(delivery, 'deliver_many')}",
          file=sys.stderr)
    items = [(receipt(n), f"B{n:06d}") for n in range(1, args.n + 1)]
    text, html = (sum(len(getattr(m, a)) for m, _ in items[:100]) // 100 for a in ("text", "html"))
    print(f"messages: {args.n}, text ~{text} chars, html ~{html} chars", file=sys.stderr)
    ledger = Ledger(home)
    try:
        with OutboxMailer(home / "outbox", SENDER) as mailer:
            t0 = time.perf_counter()
            first = send_all(ledger, mailer, items)
            t1 = time.perf_counter()
            again = send_all(ledger, mailer, items)
            t2 = time.perf_counter()
        with ledger.session() as s:
            sent = s.scalar(select(func.count()).select_from(Delivery).where(
                Delivery.state == SENT, Delivery.message_id.is_not(None)))
        files = sorted((home / "outbox").glob("*.eml"))
        ids = {email.message_from_bytes(f.read_bytes(), policy=policy.default)["Message-ID"] for f in files}
        ok = first == Counter(sent=args.n) and again == Counter(skipped=args.n) and sent == args.n \
            and len(files) == args.n and len(ids) == args.n
        sys.stderr.flush()
        print(f"send {args.n}: {t1 - t0:.2f} s ({(t1 - t0) / args.n * 1000:.3f} ms each) {dict(first)}")
        print(f"again (all skipped): {t2 - t1:.2f} s {dict(again)}")
        print(f"ledger sent rows: {sent}, .eml files: {len(files)}, distinct Message-IDs: {len(ids)}, "
              f"{'OK' if ok else 'MISMATCH'}")
        if args.floor:
            bare = floor(home / "outbox", items)
            print(f"floor, bare file writes in the outbox: {bare:.2f} s ({bare / args.n * 1000:.3f} ms each)")
        return 0 if ok else 1
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

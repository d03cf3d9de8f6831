"""How long a unit waits for its receipt while ``bulletin serve`` runs.

    python bench/receipts.py                 # 50 returns: 5 bursts of 10, half by mail, half dropped
    python bench/receipts.py --returns 6 --bursts 2

Everything real, on 127.0.0.1: ``bulletin serve`` in its own process (its own Prefect server,
its arrival watcher), Debian's dovecot (tests/imap_server.py) and an aiosmtpd server
(tests/smtp_server.py) that stamps each message as it arrives. The campaign is the demo's
2027 one moved to open yesterday, so it is open now. A return arrives either by IMAP APPEND
of a unit contact's mail with the filled-in workbook attached, or by renaming the workbook
into the drop folder; its arrival is that moment, its receipt the moment the SMTP server
received the receipt to that contact (a unit's returns are paired with its receipts in order).

Prints p50, p95 and the slowest wait in seconds, and exits 1 when the slowest is over 60 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.message
import imaplib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from imap_server import running_dovecot  # noqa: E402
from serve_process import ServeProcess, clean_env  # noqa: E402
from smtp_server import CollectingHandler, running_smtp_server  # noqa: E402

from tasks.core.campaign_file import next_round  # noqa: E402
from tasks.core.config import load_config  # noqa: E402
from tasks.mail.workbook import build_request_workbook, fill_workbook  # noqa: E402

CAMPAIGN = "receipts-now"
TARGET = 60.0


class StampingHandler(CollectingHandler):
    """Keeps when each message arrived."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        answer = await super().handle_DATA(server, session, envelope)
        with self.lock:
            self.times.append(time.time())
        return answer


def _config_dir(root: Path) -> Path:
    """The repository's configuration plus a campaign that opened yesterday."""
    config_dir = root / "config"
    shutil.copytree(ROOT / "config", config_dir)
    text = (config_dir / "campaigns" / "energy-week-2027.yaml").read_text(encoding="utf-8")
    opens = dt.date.today() - dt.timedelta(days=1)
    (config_dir / "campaigns" / f"{CAMPAIGN}.yaml").write_text(next_round(text, "energy-week-2027", opens=opens),
                                                              encoding="utf-8")
    return config_dir


def _workbook(config, unit, n: int) -> bytes:
    values = {f.key: (10 + n if f.kind == "count" else f"{unit.name}开展了节能宣传活动（第{n}稿）。")
              for f in config.campaign.form.fields}
    values["participants"] = 500
    return fill_workbook(build_request_workbook(config.campaign, unit), values)


def _mail(unit, data: bytes, n: int) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = unit.contacts[0].email
    msg["To"] = "bulletin@example.com"
    msg["Subject"] = f"{unit.name}报送（第{n}稿）"
    msg["Message-ID"] = f"<{unit.code}.{n}.{time.time_ns()}@example.org>"
    msg.set_content("附件为本单位报表。")
    msg.add_attachment(data, maintype="application",
                       subtype="vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                       filename=f"{unit.name}报表{n}.xlsx")
    return bytes(msg)


def measure(returns: int = 50, bursts: int = 5, gap: float = 10.0, timeout: float = 240.0) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-receipts-"))
    try:
        config_dir = _config_dir(root)
        config = load_config(config_dir, CAMPAIGN)
        home = root / "home"
        handler = StampingHandler()
        with running_dovecot() as imap, running_smtp_server(handler=handler) as smtp:
            env = clean_env(
                BULLETIN_SMTP_HOST=smtp.host, BULLETIN_SMTP_PORT=str(smtp.port), BULLETIN_SMTP_SECURITY="none",
                BULLETIN_IMAP_HOST=imap.host, BULLETIN_IMAP_PORT=str(imap.port), BULLETIN_IMAP_USER=imap.user,
                BULLETIN_IMAP_PASSWORD=imap.password, BULLETIN_IMAP_SECURITY="none",
                BULLETIN_MAIL_FROM="bulletin@example.com")
            served = ServeProcess(home, config_dir, env).start()
            try:
                arrivals = _send(config, home, imap, returns, bursts, gap)
                waits = _waits(config, handler, arrivals, timeout)
                runs = served.post("/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["arrival"]}}, "limit": 200})
            finally:
                served.stop()
        return {**_summary(waits, returns), "runs_started_by_arrivals": len(runs)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _send(config, home: Path, imap, returns: int, bursts: int, gap: float) -> list[tuple[str, float]]:
    """(contact address, arrival time) per return, in order."""
    units = list(config.units)
    inbox = home / "inbox" / CAMPAIGN
    inbox.mkdir(parents=True, exist_ok=True)
    arrivals: list[tuple[str, float]] = []
    per_burst = max(1, returns // bursts)
    box = imaplib.IMAP4(imap.host, imap.port)
    box.login(imap.user, imap.password)
    try:
        for i in range(returns):
            unit = units[i % len(units)]
            n = i // len(units) + 1
            data = _workbook(config, unit, n)
            if i % 2:  # by mail
                raw = _mail(unit, data, n)
                at = time.time()
                box.append("INBOX", "", imaplib.Time2Internaldate(time.time()), raw)
            else:  # into the drop folder
                part = inbox / f".{unit.code}-{n}.part"
                part.write_bytes(data)
                at = time.time()
                os.rename(part, inbox / f"{unit.name}报表{n}.xlsx")
            arrivals.append((unit.contacts[0].email.lower(), at))
            if (i + 1) % per_burst == 0 and i + 1 < returns:
                time.sleep(gap)
    finally:
        box.logout()
    return arrivals


def _waits(config, handler: StampingHandler, arrivals: list[tuple[str, float]], timeout: float) -> list[float | None]:
    """Each return's wait for its receipt (None: none came within *timeout*)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(_receipts(handler)) >= len(arrivals):
            break
        time.sleep(0.5)
    receipts = _receipts(handler)
    by_contact: dict[str, list[float]] = {}
    for to, at in receipts:
        by_contact.setdefault(to, []).append(at)
    seen: dict[str, int] = {}
    waits: list[float | None] = []
    for to, at in arrivals:
        k = seen.get(to, 0)
        seen[to] = k + 1
        got = by_contact.get(to, [])
        waits.append(got[k] - at if k < len(got) else None)
    return waits


def _receipts(handler: StampingHandler) -> list[tuple[str, float]]:
    with handler.lock:
        pairs = list(zip(handler.messages, handler.times))
    out = []
    for m, at in pairs:
        msg = m.message()
        if msg["X-Bulletin-Step"] == "receipt":
            out.extend((r.lower(), at) for r in m.rcpt_tos)
    return out


def _summary(waits: list[float | None], returns: int) -> dict:
    got = sorted(w for w in waits if w is not None)
    q = statistics.quantiles(got, n=20, method="inclusive") if len(got) >= 2 else got * 19
    return {"returns": returns, "receipts": len(got), "missing": sum(w is None for w in waits),
            "p50": round(statistics.median(got), 1) if got else None,
            "p95": round(q[18], 1) if got else None, "max": round(got[-1], 1) if got else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--returns", type=int, default=50)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--gap", type=float, default=10.0, help="seconds between bursts")
    args = parser.parse_args()
    result = measure(args.returns, args.bursts, args.gap)
    print(json.dumps(result, ensure_ascii=False))
    ok = result["missing"] == 0 and result["max"] is not None and result["max"] <= TARGET
    print(f"receipts: p50 {result['p50']} s, p95 {result['p95']} s, slowest {result['max']} s "
          f"({'within' if ok else 'NOT within'} {TARGET:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

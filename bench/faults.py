"""Fault injection: kill a step with SIGKILL in every phase, run it again, compare.

    python bench/faults.py                      # make faults: 50 trials per step
    python bench/faults.py --trials 2 --returns 20 --phases decide,sent --pairs 0   # tests/test_faults.py

Steps: ``collect`` (the drop folder), ``imap`` (``collect`` from a mailbox on a real dovecot),
``send`` (an approved bulletin), ``request`` and ``remind`` (every unit, on a fresh home). For
each it prepares a home once (N synthetic units and returns from ``bench/collect.py``'s
generator, plus a second copy of some returns under another name), and runs the step once
uninterrupted on a copy: the reference. Every trial then copies the prepared home (and, for
``imap``, the prepared mailbox into folders of its own), runs the step as ``bulletin <step>`` in
its own process group with ``BULLETIN_FAULT=<phase>:<n>`` (``tasks/core/faults.py``: the *n*-th
arrival at *phase* SIGKILLs the group; phases and *n* cycle over what the reference run
reached), runs it again as an operator would (and once more with ``--resend-uncertain`` when
the ledger reports uncertain messages, as the coordinators' notice asks), and compares with
the reference:

- every submission recorded exactly once (name, fingerprint, state), nothing left in the inbox
  or the mailbox folder, every entry in ``processed/`` (or the done folder) once, every
  archived file the reference archived; one request workbook per unit;
- the same delivery keys (receipts, bulletin copies, requests, reminders), all ``sent``,
  nothing still owed;
- on the SMTP server (aiosmtpd on 127.0.0.1, counting per recipient and Message-ID): every
  message the reference delivered (lost: one missing), none twice unless the ledger had marked
  it ``uncertain`` and it was resent with the same Message-ID (duplicated: any other).

Then ``--pairs`` times per step it starts the step twice at once, as two processes (a scheduled
run beside a manual one), and compares the result with the reference directly: nothing lost,
nothing twice, and neither run reports "database is locked" or a traceback; with
``--postgres`` each pair is run once more with the ledger on PostgreSQL (a server of its own on
127.0.0.1, a database per home, copied from the prepared one as a template).

Trials share one Prefect server (``prefect server start`` on 127.0.0.1) and one dovecot; they
run ``--jobs`` at a time (default 2), each lane with an SMTP server of its own, so that what a
trial's server received is that trial's mail. Prints, per step and phase, the trials whose kill landed, the lost, the duplicated
and the uncertain-then-resent messages, and exits 1 on any loss, duplicate or problem.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import email
import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from email import policy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from collect import generate, unit_code  # noqa: E402  (bench/collect.py)
from imap_server import running_dovecot  # noqa: E402  (tests/imap_server.py)
from pg_server import running_postgres  # noqa: E402  (tests/pg_server.py)
from smtp_server import running_smtp_server  # noqa: E402  (tests/smtp_server.py)

CAMPAIGN = "energy-week-2023"
BIN = Path(sys.executable).parent / "bulletin"
NOW = {"collect": "2023-09-27T10:00:00+08:00", "imap": "2023-09-27T10:00:00+08:00",
       "send": "2023-10-09T12:00:00+08:00", "request": "2023-09-18T09:00:00+08:00",
       "remind": "2023-09-27T17:00:00+08:00"}
COMMAND = {"imap": "collect"}  # the CLI command of a step, when it is not the step's name
_INTAKE = ("archive", "record", "move", "decide", "claim", "smtp", "sent", "mark")
_SENDING = ("claim", "smtp", "sent", "mark")
PHASES = {"collect": _INTAKE, "imap": _INTAKE, "send": _SENDING, "request": _SENDING, "remind": _SENDING}
STEPS = tuple(PHASES)
COPIES = 5  # returns also sent a second time under another name
TEMPLATE = "Prepared"  # the mailbox folder every imap home's folder is copied from


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, root: Path, returns: int, smtp, api: str, imap=None, pg=None):
        self.root, self.n, self.smtp, self.api, self.imap, self.pg = root, returns, smtp, api, imap, pg
        self.config = root / "gen" / "config"
        self.keep_logs: Path | None = None  # where the logs of a pair with problems are kept

    def env(self, home: Path | None = None, step: str = "", **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BULLETIN_"))}
        env |= {"PREFECT_API_URL": self.api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "BULLETIN_CONFIG": str(self.config), "BULLETIN_SMTP_HOST": self.smtp.host,
                "BULLETIN_SMTP_PORT": str(self.smtp.port), "BULLETIN_SMTP_SECURITY": "none",
                "BULLETIN_WORKERS": "1"}
        if home is not None and self.url(home):
            env["BULLETIN_DB_URL"] = self.url(home)
        if step == "imap" and home is not None:
            inbox, done = _folders(home)
            env |= {"BULLETIN_IMAP_HOST": self.imap.host, "BULLETIN_IMAP_PORT": str(self.imap.port),
                    "BULLETIN_IMAP_USER": self.imap.user, "BULLETIN_IMAP_PASSWORD": self.imap.password,
                    "BULLETIN_IMAP_SECURITY": "none", "BULLETIN_IMAP_FOLDER": inbox,
                    "BULLETIN_IMAP_DONE_FOLDER": done}
        return env | extra

    def command(self, home: Path, step: str, *extra: str) -> list[str]:
        return [str(BIN), COMMAND.get(step, step), CAMPAIGN, "--home", str(home), "--now", NOW[step], *extra]

    def run(self, home: Path, step: str, *extra: str, **env: str) -> int:
        command = self.command(home, step, *extra)
        with open(home.parent / f"{home.name}-{step}.log", "ab") as log:
            proc = subprocess.run(command, env=self.env(home, step, **env), stdout=log, stderr=log,
                                  start_new_session=True, timeout=600)
        return proc.returncode

    def url(self, home: Path) -> str | None:
        """A home whose name starts with ``pg-`` keeps its ledger in a PostgreSQL database of
        its own; the others in ``ledger.db``."""
        return self.pg.url(_dbname(home)) if home.name.startswith("pg-") else None

    def copy_home(self, step: str, prepared: Path, name: str) -> Path:
        """A copy of the prepared home (its database, and the prepared mailbox for ``imap``)."""
        home = self.root / name
        shutil.copytree(prepared, home)
        if self.url(home):
            self._create_db(home, template=prepared)
        if step == "imap":
            inbox, done = _folders(home)
            with self.mailbox() as box:
                box.folder.create(inbox)
                box.folder.create(done)
                box.folder.set(TEMPLATE)
                box.copy(box.uids(), inbox)
        return home

    def _create_db(self, home: Path, template: Path | None = None) -> None:
        with self.pg.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{_dbname(home)}"'
                         + (f' TEMPLATE "{_dbname(template)}"' if template is not None else ""))

    def rows(self, home: Path, sql: str) -> list[tuple]:
        """The rows of a query on the home's ledger."""
        if self.url(home):
            with self.pg.connect(dbname=_dbname(home)) as conn:
                return [tuple(r) for r in conn.execute(sql.replace("%", "%%")).fetchall()]
        with sqlite3.connect(home / "ledger.db") as db:
            return db.execute(sql).fetchall()

    def drop_home(self, step: str, home: Path) -> None:
        if self.url(home):
            with self.pg.connect(autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{_dbname(home)}" WITH (FORCE)')
        if step == "imap":
            with self.mailbox() as box:
                for folder in _folders(home):
                    box.folder.delete(folder)
        shutil.rmtree(home)

    def mailbox(self):
        from imap_tools import MailBoxUnencrypted
        return MailBoxUnencrypted(self.imap.host, port=self.imap.port).login(self.imap.user, self.imap.password)

    # ------------------------------------------------------------------ prepared homes
    def prepare(self, steps: list[str]) -> dict[str, Path]:
        say(f"preparing {self.n} units and returns")
        generate(self.root / "gen", self.n, xlsx_share=0.5)
        returns = self.root / "gen" / "returns"
        originals = sorted(returns.iterdir())
        for path in originals[:COPIES]:
            shutil.copy(path, returns / f"副本-{path.name}")
        collect_home = self.root / "prepared-collect"
        inbox = collect_home / "inbox" / CAMPAIGN
        shutil.copytree(returns, inbox)
        empty_home = self.root / "prepared-empty"
        empty_home.mkdir()
        prepared = {"collect": collect_home, "imap": empty_home, "request": empty_home, "remind": empty_home}
        if "imap" in steps:
            self._prepare_mailbox(originals)
        if "send" in steps:
            prepared["send"] = self._prepare_send(collect_home, "prepared-send")
        return prepared

    def prepare_pg(self, prepared: dict[str, Path]) -> dict[str, Path]:
        """The prepared homes again, each with a PostgreSQL database (the template of its copies)."""
        out: dict[str, Path] = {}
        for step, home in prepared.items():
            if step == "send":
                out[step] = self._prepare_send(prepared["collect"], "pg-prepared-send")
            else:
                out[step] = self.root / f"pg-{home.name}"
                if not out[step].exists():
                    shutil.copytree(home, out[step])
                    self._create_db(out[step])
        return out

    def _prepare_mailbox(self, originals: list[Path]) -> None:
        """Each return mailed by its unit's contact (a few twice, under another subject)."""
        with self.mailbox() as box:
            box.folder.create(TEMPLATE)
            for i, path in enumerate(originals, 1):
                for subject in [f"{path.stem}"] + ([f"副本-{path.stem}"] if i <= COPIES else []):
                    box.append(_return_mail(f"{unit_code(i).lower()}@example.org", subject, path, i), TEMPLATE)

    def _prepare_send(self, collect_home: Path, name: str) -> Path:
        """A collected, compiled and approved campaign, no mail sent yet."""
        send_home = self.root / name
        shutil.copytree(collect_home, send_home)
        if self.url(send_home):
            self._create_db(send_home)
        env_file = {"BULLETIN_SMTP_HOST": ""}
        assert self.run(send_home, "collect", **env_file) in (0, 1)
        subprocess.run([str(BIN), "compile", CAMPAIGN, "--home", str(send_home), "--now", NOW["send"]],
                       env=self.env(send_home, **env_file), check=True, capture_output=True, timeout=600)
        self._approve_in_ledger(send_home)
        shutil.rmtree(send_home / "outbox", ignore_errors=True)
        return send_home

    def _approve_in_ledger(self, home: Path) -> None:
        """The decision alone (``bulletin approve`` would also send)."""
        code = ("import datetime as dt, os, sys; from pathlib import Path; from tasks.core.ledger import Ledger; "
                "from tasks.bulletin.approval import decide; decide(Ledger(Path(sys.argv[1]), os.environ.get('BULLETIN_DB_URL')), "
                "sys.argv[2], by='基准测试', approve=True, note=None, now=dt.datetime.now(dt.timezone.utc))")
        subprocess.run([sys.executable, "-c", code, str(home), CAMPAIGN], env=self.env(home), check=True, cwd=ROOT)

    # ------------------------------------------------------------------ one run, observed
    def observe(self, step: str, home: Path) -> dict:
        subs = Counter(self.rows(home, "SELECT original_name, fingerprint, state FROM submissions"))
        deliveries = dict(self.rows(home, "SELECT key, state FROM deliveries WHERE key NOT LIKE '%/notice/%'"))
        owed = self.rows(home, "SELECT COUNT(*) FROM owed_messages")[0][0]
        requests = Counter(u for (u,) in self.rows(home, "SELECT unit_code FROM requests"))
        inbox = home / "inbox" / CAMPAIGN
        processed = Counter(p.name.split("-", 1)[1] for p in (home / "processed" / CAMPAIGN).glob("*")) \
            if (home / "processed" / CAMPAIGN).exists() else Counter()
        archived = {p.name for p in (home / "archive").rglob("*") if p.is_file()} if (home / "archive").exists() else set()
        observed = {"subs": subs, "deliveries": deliveries, "owed": owed, "requests": requests,
                    "inbox": sorted(p.name for p in inbox.iterdir()) if inbox.exists() else [],
                    "processed": processed, "archived": archived, "mailbox": None}
        if step == "imap":
            with self.mailbox() as box:
                left, done = (_message_ids(box, folder) for folder in _folders(home))
            observed["inbox"] += sorted(left)
            observed["mailbox"] = done
        return observed

    def mail_since(self, start: int) -> Counter:
        seen: Counter = Counter()
        for m in self.smtp.messages[start:]:
            mid = email.message_from_bytes(m.data, policy=policy.default)["Message-ID"]
            for rcpt in m.rcpt_tos:
                seen[(rcpt, mid)] += 1
        return seen

    def uncertain_keys(self, home: Path) -> set[str]:
        return {k for (k,) in self.rows(home, "SELECT key FROM deliveries WHERE state = 'uncertain'")}

    def reference(self, step: str, prepared: Path) -> dict:
        home = self.copy_home(step, prepared, f"reference-{step}")
        start = len(self.smtp.messages)
        tally = self.root / f"tally-{step}.json"
        self.run(home, step, BULLETIN_FAULT_TALLY=str(tally))
        observed = self.observe(step, home)
        observed["mail"] = self.mail_since(start)
        observed["tally"] = json.loads(tally.read_text())
        self.drop_home(step, home)
        return observed

    def pair(self, step: str, prepared: Path, index: int, ref: dict) -> dict:
        """The same step started twice at once, as two processes (a scheduled run beside a
        manual one): compared with the reference directly, nothing run again."""
        pg = prepared.name.startswith("pg-")
        home = self.copy_home(step, prepared, f"{'pg-' if pg else ''}pair-{step}-{index}")
        start = len(self.smtp.messages)
        logs = [home.parent / f"{home.name}-{step}-{k}.log" for k in (1, 2)]
        command = self.command(home, step)
        procs = []
        for log in logs:
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(command, env=self.env(home, step), stdout=out, stderr=out, start_new_session=True))
        codes = [p.wait(timeout=600) for p in procs]
        text = "\n".join(log.read_text(encoding="utf-8", errors="replace") for log in logs)
        problems = compare(ref, self.observe(step, home))
        if "database is locked" in text or "Traceback" in text:
            problems.append("a run reported 'database is locked' or a traceback")
        if any(c not in (0, 1) for c in codes):
            problems.append(f"exit codes {codes}")
        mail = self.mail_since(start)
        lost = [k for k in ref["mail"] if mail.get(k, 0) == 0]
        duplicated = [k for k, n in mail.items() if n > 1]
        if problems and self.keep_logs:
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in logs:
                shutil.copy(log, self.keep_logs / log.name)
        self.drop_home(step, home)
        return {"phase": "pair-pg" if pg else "pair", "landed": all(c in (0, 1) for c in codes), "problems": problems,
                "lost": len(lost), "duplicated": len(duplicated), "uncertain": 0}

    def trial(self, step: str, prepared: Path, phase: str, nth: int, index: int, ref: dict) -> dict:
        began = time.monotonic()
        home = self.copy_home(step, prepared, f"trial-{step}-{index}")
        start = len(self.smtp.messages)
        code = self.run(home, step, BULLETIN_FAULT=f"{phase}:{nth}")
        killed_at = time.monotonic()
        landed = code == -signal.SIGKILL
        uncertain: set[str] = set()
        self.run(home, step)  # the operator runs the step again
        rerun_at = time.monotonic()
        uncertain = self.uncertain_keys(home)
        if uncertain:
            self.run(home, step, "--resend-uncertain")  # as the coordinators' notice asks
        got, mail = self.observe(step, home), self.mail_since(start)
        problems = compare(ref, got)
        reference_mail = set(ref["mail"])
        lost = [k for k in reference_mail if mail.get(k, 0) == 0]
        resent_ids = {_message_id(home, key) for key in uncertain}
        duplicated = [k for k, n in mail.items() if n > 1 and k[1] not in resent_ids]
        self.drop_home(step, home)
        return {"phase": phase, "landed": landed, "problems": problems, "lost": len(lost),
                "duplicated": len(duplicated), "uncertain": len(uncertain),
                "seconds": (killed_at - began, rerun_at - killed_at, time.monotonic() - rerun_at)}


def _on_lane(lanes: queue.Queue, what: str, step: str, *args) -> dict:
    """Run a trial or a pair on a free lane (its own SMTP server); print its outcome."""
    lane = lanes.get()
    try:
        outcome = getattr(lane, what)(step, *args)
    finally:
        lanes.put(lane)
    if what == "trial":
        phase, nth, index = args[1:4]
        say(f"  {step} #{index + 1} {phase}:{nth} landed={outcome['landed']} lost={outcome['lost']} "
            f"dup={outcome['duplicated']} uncertain={outcome['uncertain']} "
            f"s={'/'.join(f'{x:.0f}' for x in outcome['seconds'])} {outcome['problems'] or ''}")
    else:
        say(f"  {step} {outcome['phase']} #{args[1] + 1} lost={outcome['lost']} dup={outcome['duplicated']} "
            f"{outcome['problems'] or ''}")
    return outcome


def _dbname(home: Path) -> str:
    """The PostgreSQL database of a ``pg-`` home."""
    return re.sub(r"\W", "_", home.name)


def _folders(home: Path) -> tuple[str, str]:
    """The mailbox folders of one home (its inbox and its done folder)."""
    return f"In-{home.name}", f"Done-{home.name}"


def _message_ids(box, folder: str) -> Counter:
    box.folder.set(folder)
    return Counter(m.headers.get("message-id", ("",))[0] for m in box.fetch(headers_only=True, mark_seen=False))


def _return_mail(sender: str, subject: str, path: Path, index: int) -> bytes:
    from email.message import EmailMessage
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "reports@example.com", subject
    msg["Message-ID"] = f"<return-{index}-{len(subject)}@example.org>"
    msg["Date"] = "Wed, 27 Sep 2023 09:00:00 +0800"
    msg.set_content("附件为本单位报表，请查收。")
    kind = ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet") \
        if path.suffix == ".xlsx" else ("text", "csv")
    msg.add_attachment(path.read_bytes(), maintype=kind[0], subtype=kind[1], filename=path.name)
    return msg.as_bytes()


def _message_id(home: Path, key: str) -> str | None:
    with sqlite3.connect(home / "ledger.db") as db:
        row = db.execute("SELECT message_id FROM deliveries WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def compare(ref: dict, got: dict) -> list[str]:
    problems = []
    if got["subs"] != ref["subs"]:
        extra, missing = got["subs"] - ref["subs"], ref["subs"] - got["subs"]
        problems.append(f"submissions differ: extra {dict(extra)} missing {dict(missing)}")
    if set(got["deliveries"]) != set(ref["deliveries"]):
        problems.append(f"delivery keys differ: {sorted(set(got['deliveries']) ^ set(ref['deliveries']))[:5]}")
    not_sent = {k: v for k, v in got["deliveries"].items() if v != "sent"}
    if not_sent:
        problems.append(f"not sent: {dict(list(not_sent.items())[:5])}")
    if got["owed"]:
        problems.append(f"{got['owed']} messages still owed")
    if got["inbox"]:
        problems.append(f"left in the inbox: {got['inbox'][:5]}")
    if got["requests"] != ref["requests"]:
        problems.append(f"request workbooks differ: {dict(got['requests'] - ref['requests'])} more, "
                        f"{dict(ref['requests'] - got['requests'])} fewer")
    if got["mailbox"] != ref["mailbox"]:
        problems.append("the done folder differs (a message moved twice or not at all)")
    if got["processed"] != ref["processed"]:
        problems.append("processed/ differs (an entry moved twice or not at all)")
    if got["archived"] != ref["archived"]:
        problems.append(f"archive differs: {len(got['archived'] ^ ref['archived'])} files")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="trials per step (default 50)")
    parser.add_argument("--returns", type=int, default=300, help="units and returns (default 300)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"default {','.join(STEPS)}")
    parser.add_argument("--phases", default="", help="only these phases (comma-separated; default all)")
    parser.add_argument("--pairs", type=int, default=5, help="runs of two processes at once per step (default 5)")
    parser.add_argument("--jobs", type=int, default=2, help="trials run at once, each with its own SMTP server (default 2)")
    parser.add_argument("--postgres", action="store_true",
                        help="also run each pair with the ledger on PostgreSQL (a server of its own on 127.0.0.1)")
    parser.add_argument("--keep-logs", type=Path, help="keep the logs of pairs with problems in this folder")
    args = parser.parse_args(argv)
    from flows.serve import local_prefect_server
    started = time.monotonic()
    steps = args.steps.split(",")
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}: choose among {', '.join(STEPS)}")
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bulletin-faults-")))
        smtp = stack.enter_context(running_smtp_server())
        imap = stack.enter_context(running_dovecot()) if "imap" in steps else None
        (root / "prefect").mkdir()
        os.environ["PREFECT_HOME"] = str(root / "prefect" / "prefect")
        api = stack.enter_context(local_prefect_server(root / "prefect", port=4300))
        pg = stack.enter_context(running_postgres()) if args.postgres else None
        bench = Bench(root, args.returns, smtp, api, imap, pg)
        bench.keep_logs = args.keep_logs
        prepared = bench.prepare(steps)
        prepared_pg = bench.prepare_pg({step: prepared[step] for step in steps}) if pg else {}
        lanes: queue.Queue = queue.Queue()  # one SMTP server each: a lane's mail is its own
        for k in range(args.jobs):
            lane = copy.copy(bench)
            if k:
                lane.smtp = stack.enter_context(running_smtp_server())
            lanes.put(lane)
        results: dict[str, list[dict]] = defaultdict(list)
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=args.jobs))
        for step in steps:
            began = time.monotonic()
            ref = bench.reference(step, prepared[step])
            say(f"{step}: reference reached {ref['tally']}, {sum(ref['mail'].values())} messages, "
                f"{time.monotonic() - began:.0f} s")
            chosen = set(args.phases.split(",")) if args.phases else set(PHASES[step])
            phases = [p for p in PHASES[step] if ref["tally"].get(p) and p in chosen]
            runs = []
            for i in range(args.trials):
                phase = phases[i % len(phases)]
                nth = 1 + (i // len(phases) * 7919 + 13 * i) % ref["tally"][phase]  # spread over the run
                runs.append(pool.submit(_on_lane, lanes, "trial", step, prepared[step], phase, nth, i, ref))
            for i in range(args.pairs):
                runs.append(pool.submit(_on_lane, lanes, "pair", step, prepared[step], i, ref))
                if pg:
                    runs.append(pool.submit(_on_lane, lanes, "pair", step, prepared_pg[step], i, ref))
            results[step] = [r.result() for r in runs]
    print(report(results, time.monotonic() - started))
    bad = any(r["lost"] or r["duplicated"] or r["problems"] for rs in results.values() for r in rs)
    return 1 if bad else 0


def report(results: dict[str, list[dict]], seconds: float) -> str:
    lines = [f"fault injection: {sum(map(len, results.values()))} trials in {seconds:.0f} s",
             "step     phase     trials landed lost duplicated uncertain-resent problems"]
    for step, rows in results.items():
        by_phase: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_phase[r["phase"]].append(r)
        for phase, rs in by_phase.items():
            lines.append(f"{step:8} {phase:9} {len(rs):6} {sum(r['landed'] for r in rs):6} "
                         f"{sum(r['lost'] for r in rs):4} {sum(r['duplicated'] for r in rs):10} "
                         f"{sum(r['uncertain'] for r in rs):16} {sum(bool(r['problems']) for r in rs):8}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

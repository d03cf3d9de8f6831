"""The quick variant of the fault-injection suite (``make faults`` runs the whole one): collect
from the drop folder and from a mailbox killed with SIGKILL while moving what it took in, send
killed after a message was handed to the mail server, each run again and compared with an
uninterrupted run; and each started twice at once. Real processes, a real Prefect server, a
real SMTP server and a real dovecot on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from imap_server import dovecot_or_skip

ROOT = Path(__file__).resolve().parent.parent


def test_killed_steps_lose_nothing_and_send_nothing_twice():
    dovecot_or_skip()
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "faults.py"), "--trials", "1", "--returns", "20",
                          "--steps", "collect,imap,send", "--phases", "move,sent", "--pairs", "1", "--jobs", "2"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    table = run.stdout.splitlines()
    rows = [line.split() for line in table[2:]]
    assert {(r[0], r[1]) for r in rows} == {("collect", "move"), ("imap", "move"), ("send", "sent")} | {
        (step, "pair") for step in ("collect", "imap", "send")}
    assert all(r[2] == r[3] for r in rows), table  # every kill landed, every pair ran
    assert all(r[4] == r[5] == r[7] == "0" for r in rows), table  # nothing lost, duplicated, or wrong

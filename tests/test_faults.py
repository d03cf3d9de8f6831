"""The quick variant of the fault-injection suite (``make faults`` runs the whole one): collect
and send killed with SIGKILL after their decisions and after a message was handed to the mail
server, run again, compared with an uninterrupted run. Real processes, a real Prefect server
and a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_killed_steps_lose_nothing_and_send_nothing_twice():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "faults.py"), "--trials", "2", "--returns", "20",
                          "--phases", "decide,sent", "--pairs", "0"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    table = run.stdout.splitlines()
    rows = [line.split() for line in table[2:]]
    assert {(r[0], r[1]) for r in rows} == {("collect", "decide"), ("collect", "sent"), ("send", "sent")}
    assert all(r[2] == r[3] for r in rows), table  # every kill landed
    assert all(r[4] == r[5] == r[7] == "0" for r in rows), table  # nothing lost, duplicated, or wrong

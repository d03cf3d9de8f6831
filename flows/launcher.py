"""The ``bulletin`` command's entry point: hand a step to serve's warm process when one runs on
this home (:mod:`flows.warm`), else run it here (:mod:`flows.cli`).

Standard library only, so that handing over costs milliseconds, not the seconds of importing
Prefect and pandas. ``BULLETIN_WARM=0`` always runs the step in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

from .home import resolve_home

#: Commands that run in the warm process when there is one (the others always run here).
WARM_COMMANDS = frozenset({"request", "remind", "collect", "status", "review", "compile", "approve",
                           "request-approval", "send"})
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def home_of(args: list[str]) -> Path:
    """The home a command acts on: its ``--home`` read from *args*, as click would."""
    home = None
    for i, arg in enumerate(args):
        if arg == "--home" and i + 1 < len(args):
            home = args[i + 1]
        elif arg.startswith("--home="):
            home = arg.partition("=")[2]
    return resolve_home(home)


def hand_over(args: list[str]) -> int | None:
    """Run the command in serve's warm process; its exit status, or None to run it here."""
    if not args or args[0] not in WARM_COMMANDS or "--help" in args or os.environ.get("BULLETIN_WARM") == "0":
        return None
    path = home_of(args) / "prefect" / "cli.sock"
    if len(str(path)) > 100 or not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(2)
        conn.connect(str(path))
        umask = os.umask(0)
        os.umask(umask)
        request = {"argv": args, "env": dict(os.environ), "cwd": os.getcwd(), "umask": umask}
        socket.send_fds(conn, [b"R"], [0, 1, 2])
        conn.sendall(json.dumps(request).encode() + b"\n")
        answers = conn.makefile("rb")
        first = json.loads(answers.readline() or b"{}")
    except (OSError, ValueError):
        conn.close()
        return None  # no warm process there (a socket left behind), or it did not answer
    if "pid" not in first:
        conn.close()
        return None  # e.g. this command's Prefect settings differ from serve's
    group = int(first["pid"])

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    conn.settimeout(None)
    line = answers.readline()  # a forwarded signal interrupts it, and it goes on (PEP 475)
    outcome = json.loads(line) if line else {}
    if "signal" in outcome:  # the step was killed: so is this command, by the same signal
        if outcome["signal"] in FORWARDED:
            signal.signal(outcome["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), outcome["signal"])
    if "exit" not in outcome:
        print("bulletin: serve 的预热进程在命令结束前退出，请用 bulletin status 查看结果。"
              "serve's warm process ended before the command did.", file=sys.stderr)
        return 1
    return int(outcome["exit"])


def main() -> None:
    code = hand_over(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from flows.cli import main as run_here
    run_here()


if __name__ == "__main__":
    main()

"""Serve's warm process: command-line steps forked from a process that has already imported
Prefect, pandas and every step (about 3 s of a step's 4 to 6 s), so they answer quickly.

``serve`` starts it (``python -m flows.warm --home H``) once its server is up. It imports what a
step needs, then listens on ``<home>/prefect/cli.sock`` (this user only). The ``bulletin``
command (:mod:`flows.launcher`) hands it its arguments, environment, working folder and its
standard input, output and error; the warm process forks, and the child runs the command
exactly as ``python -m flows.cli`` would, in its own process group, writing straight to the
caller's terminal. The caller forwards Ctrl+C and SIGTERM to that group and exits with the
child's status (by the same signal when the child was killed); when the caller dies, the child
kills itself, as the step would have died with it.

A caller whose Prefect settings (``PREFECT_*``, as :func:`flows.context.prefect_environment`
makes them for this home) differ from the warm process's runs the step itself: Prefect reads
them once, at import.
"""

from __future__ import annotations

import array
import atexit
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from .context import configure_prefect_home, prefect_environment

SOCKET_NAME = "cli.sock"

#: What a step may import, loaded before the first fork (each is optional: a failure is logged).
WARM_MODULES = ("flows.cli", "flows.show", "flows.approval", "flows.request_returns", "flows.send_reminders",
                "flows.collect_returns", "flows.review_return", "flows.compile_bulletin",
                "flows.publish_bulletin", "tasks.decisions.status")


def socket_path(home: Path) -> Path:
    return home / "prefect" / SOCKET_NAME


def prefect_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PREFECT_")}


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[2]


def _send(conn: socket.socket, **message) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the caller is gone


def receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """A caller's three descriptors (stdin, stdout, stderr) and its request, one JSON line."""
    fds = array.array("i")
    _, ancillary, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    buffer = b""
    while not buffer.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return json.loads(buffer), list(fds)


class WarmProcess:
    """The accept loop: fork a child per caller, tell each caller its child's pid and status."""

    def __init__(self, home: Path, parent: int):
        self.home, self.parent = home, parent
        self.settings = prefect_settings(dict(os.environ))
        self.children: dict[int, socket.socket] = {}
        self.stopping = False

    def run(self) -> None:
        path = socket_path(self.home)
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is this user's alone
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        listener.listen(16)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        # a child's end wakes the loop at once (its caller is waiting for the status)
        self.wakeup = os.pipe()
        for fd in self.wakeup:
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wakeup[1])
        signal.signal(signal.SIGCHLD, lambda *_: None)
        _note(f"ready on {path}")
        try:
            while not self.stopping:
                ready, _, _ = select.select([listener, self.wakeup[0]], [], [], 1.0)
                if self.wakeup[0] in ready:
                    os.read(self.wakeup[0], 4096)
                if listener in ready:
                    conn, _ = listener.accept()
                    self._answer(conn, listener)
                self._reap()
                if os.getppid() != self.parent:  # serve is gone
                    break
        finally:
            listener.close()
            path.unlink(missing_ok=True)
        while self.children:  # steps under way finish; their callers get their status
            self._reap(block=True)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _answer(self, conn: socket.socket, listener: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(10)
            if _peer_uid(conn) != os.getuid():
                conn.close()
                return
            request, fds = receive_request(conn)
            if len(fds) != 3:
                raise ValueError(f"{len(fds)} descriptors")
            if prefect_environment(self.home, request["env"]) != self.settings:
                _send(conn, fallback="PREFECT_* settings differ from serve's")
                conn.close()
                return
            conn.settimeout(None)
            pid = os.fork()
            if pid == 0:
                listener.close()
                signal.set_wakeup_fd(-1)
                for fd in self.wakeup:
                    os.close(fd)
                _run_child(conn, fds, request)  # never returns
            self.children[pid] = conn
            _note(f"{pid} started: {' '.join(request['argv'][:2])}")
            _send(conn, pid=pid)
        except (OSError, ValueError, KeyError) as exc:
            _send(conn, fallback=f"bad request: {exc}")
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _reap(self, block: bool = False) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                _note(f"{pid} killed by signal {os.WTERMSIG(status)}")
                _send(conn, signal=os.WTERMSIG(status))
            else:
                _note(f"{pid} ended: exit {os.waitstatus_to_exitcode(status)}")
                _send(conn, exit=os.waitstatus_to_exitcode(status))
            conn.close()
            if block:
                return


def _note(line: str) -> None:
    """One line of the warm process's log (the command and campaign, never the environment)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)


def _run_child(conn: socket.socket, fds: list[int], request: dict) -> None:
    """In the forked child: become the caller's command, then exit with its status."""
    code = 1
    try:
        os.setpgid(0, 0)  # its own group: the caller signals it, a fault kills it alone
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["bulletin", *request["argv"]]
        from tasks.core import faults
        faults.configure_from_env()
        threading.Thread(target=_die_with_caller, args=(conn,), daemon=True).start()
        from flows.cli import main
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the caller gets a status
        print(f"bulletin: {type(exc).__name__}: {exc}", file=sys.stderr)
    # leave as a process that ran the command would: Prefect drains its logs and events at exit;
    # no unwinding into the accept loop, which would remove the socket
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _die_with_caller(conn: socket.socket) -> None:
    """The caller closed its end before the child ended: it was killed; so is the step."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m flows.warm")
    parser.add_argument("--home", required=True, type=Path)
    args = parser.parse_args(argv)
    home = args.home.resolve()
    configure_prefect_home(home)  # as the command line does: serve's server, before Prefect loads
    import importlib
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a step that cannot load fails in its own run
            print(f"warm process: {name} not loaded: {exc}", file=sys.stderr, flush=True)
    WarmProcess(home, os.getppid()).run()


if __name__ == "__main__":
    main()

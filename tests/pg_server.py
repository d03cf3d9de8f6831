"""A real PostgreSQL server for tests: the distribution's binaries on 127.0.0.1, a free port,
a cluster of its own.

    from pg_server import postgres_server, postgres_url   # pytest fixtures (tests/ is on sys.path)

    def test_x(postgres_url, tmp_path):
        ledger = Ledger(tmp_path / "home", url=postgres_url)   # a fresh database per test

``running_postgres()`` is the context manager behind the session-scoped ``postgres_server``;
``postgres_url`` creates an empty database per test and gives its SQLAlchemy URL
(``postgresql+psycopg://bulletin@127.0.0.1:PORT/NAME``). The cluster (data directory, unix
socket, log) lives in one temp folder that is removed afterwards; the system's clusters
(``/etc/postgresql``, port 5432) are neither read nor touched. Trust authentication, on
127.0.0.1 only: no secret. ``fsync`` and ``synchronous_commit`` are off (nothing here needs to
survive a power cut).

When ``initdb``/``postgres`` are missing the fixtures skip, except when ``CI`` is set: then
they fail, so a CI run cannot pass by silently skipping the PostgreSQL tests (``make test``
installs ``postgresql`` when run as root).

The binaries are found with ``pg_config --bindir`` or under ``/usr/lib/postgresql/*/bin``
(Debian, Ubuntu: the newest version). ``initdb`` and ``postgres`` refuse to run as root, so as
root they run as the ``postgres`` system user (the temp folder is given to it); as another user
everything runs as that user.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

USER = "bulletin"  # the cluster's superuser (trust authentication on 127.0.0.1)


class PostgresServer(NamedTuple):
    host: str
    port: int
    user: str

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of one database on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs):
        """A plain psycopg connection (e.g. ``autocommit=True`` for CREATE DATABASE)."""
        import psycopg
        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=dbname,
                               **{"connect_timeout": 5, **kwargs})


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def postgres_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: ``pg_config --bindir``, else the newest
    ``/usr/lib/postgresql/<version>/bin``."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _has_server(Path(out)):
            return Path(out)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    found = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_server(p)),
                   key=version, reverse=True)
    return found[0] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """subprocess arguments that run a command as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _wait_ready(server: PostgresServer, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import psycopg
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with server.connect(connect_timeout=2):
                return
        except psycopg.OperationalError:
            time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"postgres did not accept connections on 127.0.0.1:{server.port}\n{tail}")


@contextmanager
def running_postgres(bindir: Path | None = None, timeout: float = 30.0) -> Iterator[PostgresServer]:
    """initdb a cluster in a temp folder, run ``postgres`` as our child on 127.0.0.1 and a free
    port; stop it with ``pg_ctl stop -m fast`` and remove the folder."""
    bindir = bindir or postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    as_postgres = _run_as()
    root = Path(tempfile.mkdtemp(prefix="postgres-"))
    try:
        if as_postgres:
            os.chown(root, as_postgres["user"], as_postgres["group"])
        data, log = root / "data", root / "postgres.log"
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                        "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                       cwd=root, env=env, check=True, capture_output=True, timeout=120, **as_postgres)
        proc = None

        def start(port: int) -> subprocess.Popen:
            with open(log, "ab") as out:
                return subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                     "-c", "max_connections=100"],
                    cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, **as_postgres)

        def restart() -> None:
            """Stop the server (fast: every connection is terminated) and start it again."""
            nonlocal proc
            _stop(bindir, data, proc, env, as_postgres)
            proc = start(server.port)
            _wait_ready(server, proc, log, timeout)

        try:
            for attempt in range(3):  # a free port may be taken between probing and binding
                port = _free_port()
                proc = start(port)
                server = PostgresServer("127.0.0.1", port, USER)
                try:
                    _wait_ready(server, proc, log, timeout)
                    break
                except RuntimeError:
                    _stop(bindir, data, proc, env, as_postgres)
                    proc = None
                    if attempt == 2:
                        raise
            _restarts[server.port] = restart
            yield server
        finally:
            _restarts.pop(port, None)
            if proc is not None:
                _stop(bindir, data, proc, env, as_postgres)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the folder mkdtemp made above, nothing else


_restarts: dict[int, Callable[[], None]] = {}


def restart(server: PostgresServer) -> None:
    """Restart a server started by :func:`running_postgres` (same port, same data)."""
    _restarts[server.port]()


def _stop(bindir: Path, data: Path, proc: subprocess.Popen, env: dict, as_postgres: dict) -> None:
    if proc.poll() is None:
        subprocess.run([str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "30"],
                       cwd=data.parent, env=env, capture_output=True, timeout=60, **as_postgres)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # only our own child, by its handle
            proc.wait(timeout=10)


def postgres_or_skip() -> Path:
    """The PostgreSQL binaries' folder; skip the test without them (or without psycopg), but
    fail when ``CI`` is set."""
    bindir = postgres_bindir()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        reason = "psycopg is not installed (pip install -e '.[test]')"
    else:
        reason = ("" if bindir is not None else
                  "PostgreSQL is not installed: the PostgreSQL tests need a real server "
                  "(apt-get install postgresql, or run `make test` as root)")
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    return bindir  # type: ignore[return-value]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test session (initdb and start take ~1 s); each test gets a
    database of its own from ``postgres_url``."""
    with running_postgres(postgres_or_skip()) as server:
        yield server


_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """A fresh, empty database for this test; its SQLAlchemy URL. Afterwards the ledger's
    engine for it is disposed and the database dropped."""
    name = f"test_{os.getpid()}_{next(_numbers)}"
    with postgres_server.connect(autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres_server.url(name)
    yield url
    from tasks.core import ledger
    engine = ledger._engines.pop(url, None)  # one engine per URL per process: let it go
    ledger._checked.discard(url)
    if engine is not None:
        engine.dispose()
    with postgres_server.connect(autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""A real IMAP server for tests: Debian's dovecot on 127.0.0.1, a free port, its own config.

    from imap_server import imap_server   # a pytest fixture (tests/ is on sys.path)

    def test_x(imap_server):
        host, port, user, password = imap_server          # plain IMAP, LOGIN allowed
        with MailBoxUnencrypted(host, port=port).login(user, password) as box: ...

``running_dovecot()`` is the context manager behind it. Everything dovecot writes (runtime
sockets, state, log, the maildir) lives in one temp folder that is removed afterwards; the
system's dovecot (``/etc/dovecot``, port 143) is neither read nor touched.

When the ``dovecot`` binary is missing the fixture skips, except when ``CI`` is set: then it
fails, so a CI run cannot pass by silently skipping the IMAP tests (``make test`` installs
``dovecot-imapd`` when run as root).

Dovecot 2.3 (Debian 12, Ubuntu 24.04) and 2.4 (Debian 13) take different config syntax;
the version is read from ``dovecot --version``. imap-login refuses to run as root, hence
``default_login_user``/``default_internal_user``; as root the mail is owned by ``nobody``,
as another user everything runs as that user.
"""

from __future__ import annotations

import grp
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
from typing import NamedTuple

import pytest

USER, PASSWORD = "bulletin", "imap-test-secret"


class ImapServer(NamedTuple):
    host: str
    port: int  # IMAP, STARTTLS offered
    user: str
    password: str
    tls_port: int  # IMAPS (TLS from the first byte)
    cafile: str  # the self-signed certificate the server presents (for 127.0.0.1)


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)), None)


def _version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.match(r"\s*(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (2, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accounts() -> tuple[str, str, str, str]:
    """(login user, internal user, mail uid, mail gid) for the user we run as."""
    if os.geteuid() == 0:
        nogroup = "nogroup" if _group_exists("nogroup") else "nobody"
        return "dovenull", "dovecot", "nobody", nogroup
    me = pwd.getpwuid(os.geteuid()).pw_name
    return me, me, me, grp.getgrgid(os.getegid()).gr_name


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _certificate(root: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem), made with openssl."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem")],
                   check=True, capture_output=True, timeout=60)


def _config(root: Path, port: int, tls_port: int, version: tuple[int, int]) -> str:
    login_user, internal_user, uid, gid = _accounts()
    tls = (f"ssl_server_cert_file = {root}/cert.pem\nssl_server_key_file = {root}/key.pem\n"
           if version >= (2, 4) else f"ssl_cert = <{root}/cert.pem\nssl_key = <{root}/key.pem\n")
    common = f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
{tls}auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 1
default_login_user = {login_user}
default_internal_user = {internal_user}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
    ssl = yes
  }}
}}
"""
    if os.geteuid() != 0:  # no chroot, no chown, no privilege drop without root
        common += (f"default_internal_group = {gid}\n"
                   "service imap-login {\n  chroot =\n}\nservice auth {\n  chroot =\n}\n")
    if version >= (2, 4):
        return f"""\
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
{common}auth_allow_cleartext = yes
mail_driver = maildir
mail_path = ~/Maildir
namespace inbox {{
  inbox = yes
}}
passdb passwd-file {{
  passwd_file_path = {root}/passwd
}}
userdb static {{
  fields {{
    uid = {uid}
    gid = {gid}
    home = {root}/mail/%{{user}}
  }}
}}
"""
    return f"""\
{common}disable_plaintext_auth = no
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
}}
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
"""


def _wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(200).startswith(b"* OK"):
                    return
        except OSError:
            time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    out = proc.stdout.read().decode(errors="replace")[-2000:] if proc.poll() is not None else ""
    raise RuntimeError(f"dovecot did not accept connections on 127.0.0.1:{port}\n{out}\n{tail}")


@contextmanager
def running_dovecot(binary: str | None = None, timeout: float = 15.0) -> Iterator[ImapServer]:
    """Start dovecot in the foreground as our child; stop it with ``dovecot -c FILE stop``."""
    binary = binary or dovecot_binary()
    if binary is None:
        raise FileNotFoundError("dovecot is not installed (apt-get install dovecot-imapd)")
    version = _version(binary)
    root = Path(tempfile.mkdtemp(prefix="dovecot-"))
    os.chmod(root, 0o755)  # login and mail processes run as other users and must traverse it
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    os.chmod(root / "passwd", 0o644)
    home = root / "mail" / USER
    home.mkdir(parents=True)
    if os.geteuid() == 0:
        _, _, uid, gid = _accounts()
        for p in (root / "mail", home):
            shutil.chown(p, uid, gid)
    conf = root / "dovecot.conf"
    _certificate(root)
    proc = None
    try:
        for attempt in range(3):  # a free port may be taken between probing and binding
            port, tls_port = _free_port(), _free_port()
            conf.write_text(_config(root, port, tls_port, version))
            proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            try:
                _wait_ready(port, proc, root / "dovecot.log", timeout)
                break
            except RuntimeError:
                _stop(binary, conf, proc)
                if attempt == 2:
                    raise
        yield ImapServer("127.0.0.1", port, USER, PASSWORD, tls_port, str(root / "cert.pem"))
    finally:
        if proc is not None:
            _stop(binary, conf, proc)
        shutil.rmtree(root, ignore_errors=True)


def _stop(binary: str, conf: Path, proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        # `stop` polls until the master's pid is gone; ours stays a zombie until we reap it,
        # so reap it while `stop` runs (else `stop` waits its full 3 s timeout).
        stopper = subprocess.Popen([binary, "-c", str(conf), "stop"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # only our own child, by its handle
            proc.wait(timeout=5)
        stopper.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


def dovecot_or_skip() -> str:
    """The dovecot binary; skip the test without it, but fail when ``CI`` is set."""
    binary = dovecot_binary()
    if binary is None:
        reason = ("dovecot is not installed: the IMAP tests need a real server "
                  "(apt-get install dovecot-imapd, or run `make test` as root)")
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def imap_server() -> Iterator[ImapServer]:
    """One dovecot per test module (starting takes ~0.1 s, stopping ~1 s); give each test
    folders of its own for isolation."""
    with running_dovecot(dovecot_or_skip()) as server:
        yield server

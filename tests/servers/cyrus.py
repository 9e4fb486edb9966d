"""A private Cyrus IMAP 3.6 on 127.0.0.1 for tests, run from Debian's unpacked packages.

Fixtures
--------
``cyrus_server`` (session)
    One Cyrus per pytest process, started from Debian's cyrus-common/cyrus-imapd
    unpacked by ``make test-servers`` (tests/servers/sandbox.py says how and why it runs
    in private namespaces), with its own imapd.conf and cyrus.conf in a fresh
    ``/tmp/mailsync-cyrus-*`` directory; stopped at session end, also after failures.
    The directory is removed unless ``MAILSYNC_KEEP_SERVERS=1``.  If Cyrus fails to
    start, every test using it fails with the tail of its log.  Without the unpacked
    packages or without root the fixtures skip, except under ``CI=true`` where they fail.
``cyrus_user`` (function)
    A fresh user whose mailbox tree is only an empty INBOX.

Server API (``CyrusServer``), as DovecotServer's where it can be
-----------------------------------------------------------------
``server.host``, ``server.ports`` (``{"imap": N, "imaps": N}``: plain with STARTTLS,
and implicit TLS), ``server.cafile`` / ``server.ssl_context()`` (the private CA that
signed the certificate for ``localhost`` and ``127.0.0.1``), ``server.version``
(``3.6.1-4+deb12u5``), ``server.workdir``, ``server.log_tail(lines=40)`` (master's
output and Cyrus's syslog lines).
``server.add_user(name=None, password=None) -> User``
    ``User(name, password)``; the password goes into a private sasldb (``saslpasswd2``),
    so a wrong one is refused.  Names may not contain ``.`` (the hierarchy separator)
    or anything but letters, digits, ``-`` and ``_``.
``server.imap(user, *, tls=False) -> imapclient.IMAPClient``
    Logged in over the plain port (``tls=True``: imaps, verified).
``server.url(scheme, user) -> str``
    ``"imaps://NAME@127.0.0.1:PORT"`` for ``scheme`` in imap, imaps; add
    ``?cafile={server.cafile}`` for mailsync.
``server.tool(name, *args) -> subprocess.CompletedProcess``
    A Cyrus tool (``mbpath``, ``reconstruct``, ``cyr_ls``, ...) run with this
    configuration, as root in the server's namespace (it changes to the Cyrus user).

The configuration is Debian's /etc/imapd.conf as shipped (read from the unpacked
package), with only paths, the Cyrus user (``mailsynctest``), TLS files, the sasldb and
``servername: localhost`` changed: so ``altnamespace: no``, ``unixhierarchysep: no``,
``autocreate_quota: 0`` (INBOX is created at the first login), ``allowplaintext: yes``,
``sasl_pwcheck_method: auxprop``, ``hashimapspool: true``.  cyrus.conf runs only the
``recover`` start task and the two IMAP services (Debian's ``imapd -U 30``).

What Cyrus 3.6.1 (Debian 12) does with what it is given
------------------------------------------------------
Measured by tests/servers/test_cyrus_fixture.py, which fails if any of it changes.

* NAMESPACE: ``(("INBOX." ".")) (("user." ".")) (("" "."))``.  Personal folders are
  ``INBOX.Sent``, ``INBOX.A.B``; the delimiter is ``.``.  A fresh user's LIST is
  ``(\\HasNoChildren) "." INBOX`` (INBOX is created, and subscribed, at the first
  login).
* CREATE answers: ``Sent``, ``Other``, ``user.bob`` -> ``NO Permission denied``;
  ``INBOX.x/y``, ``INBOX/z`` -> ``NO Invalid mailbox name``; ``INBOX.Sent`` ->
  ``OK [MAILBOXID (...)] Completed``, again -> ``NO Mailbox already exists``.
  ``INBOX.A.B`` also creates ``INBOX.A`` as a real, selectable mailbox: LIST is then
  ``(\\HasChildren) "." INBOX``, ``(\\HasChildren) "." INBOX.A``,
  ``(\\HasNoChildren) "." INBOX.A.B`` (no ``\\Noselect`` anywhere).
* APPEND (the samples of servers/rewrites.py, FETCH BODY.PEEK[] compared byte for
  byte): every 8-bit byte in a header field becomes one ``X`` (``caf\\xc3\\xa9`` ->
  ``cafXX``; same length, text lost; Cyrus' ``munge8bit: yes`` default); a NUL anywhere is
  refused, ``NO Message contains NUL characters``; a lone LF is refused, ``NO Message
  contains bare newlines``.  8-bit bodies, lone CRs, a missing final CRLF, 10,000-byte
  header or body lines, an empty body and a message without the blank line come back
  identical.  RFC822.SIZE is the stored length; UID SEARCH HEADER Message-ID finds
  every stored sample.
* APPEND answers ``[APPENDUID <uidvalidity> <uid>] Completed``.  Flags and keywords
  (``$Forwarded``) are kept, with ``\\Recent``; INTERNALDATE keeps the instant, not
  the UTC offset.  SELECT reports UIDNEXT and HIGHESTMODSEQ.
* CAPABILITY after login: UIDPLUS, CONDSTORE, QRESYNC, OBJECTID (FETCH ``EMAILID``,
  STATUS ``MAILBOXID``), SPECIAL-USE, CREATE-SPECIAL-USE, LIST-STATUS, LIST-EXTENDED,
  MOVE, ESEARCH, BINARY, MULTIAPPEND, CATENATE, LITERAL+, UNSELECT, IDLE, and
  LOGINDISABLED (listed after login too); not UTF8=ACCEPT.
* A failed login answers ``NO Login failed: authentication failure``; Cyrus' 3 s
  ``failedloginpause`` is set to 0 here.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from servers.clients import IMAPClients
from servers.dovecot import ensure_mail_user, free_ports, make_certificates
from servers.sandbox import (
    HOST,
    Sandbox,
    ServerError,
    User,
    missing_reason,
    package_versions,
    packages_root,
    unavailable,
)

if TYPE_CHECKING:
    pass

MAIL_USER = "mailsynctest"
SERVICES = ("imap", "imaps")
BIN = "/usr/lib/cyrus/bin"
SERVERNAME = "localhost"
_CONFIG_ATTR = "_mailsync_cyrus_server"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


def debian_imapd_conf() -> list[tuple[str, str]]:
    """Debian's shipped /etc/imapd.conf as (key, value) pairs, comments dropped."""
    pairs = []
    for line in (packages_root() / "etc/imapd.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            pairs.append((key.strip(), value.strip()))
    return pairs


class CyrusServer(IMAPClients):
    """One private Cyrus instance; see the module docstring for the API."""

    host = HOST

    def __init__(self, workdir: Path | None = None):
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="mailsync-cyrus-"))
            self._own_workdir = True
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        self.workdir = workdir
        os.chmod(workdir, 0o711)
        self.imapd_conf = workdir / "imapd.conf"
        self.cyrus_conf = workdir / "cyrus.conf"
        self.sasldb = workdir / "sasldb2"
        self.ports: dict[str, int] = {}
        self.version = package_versions().get("cyrus-imapd", "")
        self.cafile = self.certfile = self.keyfile = Path()
        self.users: dict[str, User] = {}
        self._counter = itertools.count(1)
        self.sandbox = Sandbox(workdir)
        self.uid, self.gid = 0, 0

    # -- lifecycle --

    def start(self) -> CyrusServer:
        self.uid, self.gid = ensure_mail_user(MAIL_USER)
        self.cafile, self.certfile, self.keyfile = make_certificates(self.workdir)
        os.chmod(self.cafile, 0o644)
        # What Debian's `cyrus makedirs` creates in the configuration directory.
        control = ("db", "proc", "socket", "log", "msg", "user", "quota", "lock")
        for sub in [
            *(f"config/{d}" for d in control),
            "spool",
            "run/proc",
            "run/lock",
            "run/socket",
            "sieve",
        ]:
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._create_sasldb()
        last_error = ""
        for _ in range(3):  # a port picked free may be taken before Cyrus binds it
            self.ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
            self.imapd_conf.write_text(self._imapd_conf())
            self.cyrus_conf.write_text(self._cyrus_conf())
            for path in self.workdir.rglob("*"):
                os.chown(path, self.uid, self.gid, follow_symlinks=False)
            try:
                master = (
                    f"{BIN}/master -D -C {self.imapd_conf} -M {self.cyrus_conf}"
                    f" -p {self.workdir}/run/master.pid"
                )
                self.sandbox.start({"master": master}, list(self.ports.values()))
                return self
            except ServerError as exc:
                last_error = f"{exc}\n{self.log_tail()}"
                self.sandbox.stop()
                if "already in use" not in last_error:
                    break
        raise ServerError(last_error)

    def stop(self) -> None:
        self.sandbox.stop()
        if self._own_workdir and not os.environ.get("MAILSYNC_KEEP_SERVERS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> CyrusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration --

    def _imapd_conf(self) -> str:
        w = self.workdir
        overrides = {
            "configdirectory": f"{w}/config",
            "proc_path": f"{w}/run/proc",
            "mboxname_lockpath": f"{w}/run/lock",
            "partition-default": f"{w}/spool",
            "partition-news": f"{w}/spool-news",
            "newsspool": f"{w}/news",
            "sievedir": f"{w}/sieve",
            "lmtpsocket": f"{w}/run/socket/lmtp",
            "idlesocket": f"{w}/run/socket/idle",
            "notifysocket": f"{w}/run/socket/notify",
            "syslog_prefix": "mailsync-cyrus",
            # Not in Debian's file:
            "failedloginpause": "0",  # Cyrus' default, 3 s, slows every wrong-password test
            "servername": SERVERNAME,
            "cyrus_user": MAIL_USER,
            "cyrus_group": MAIL_USER,
            "sasl_sasldb_path": str(self.sasldb),
            "tls_server_cert": str(self.certfile),
            "tls_server_key": str(self.keyfile),
        }
        lines = ["# Debian's /etc/imapd.conf with private paths (tests/servers/cyrus.py)"]
        for key, value in debian_imapd_conf():
            lines.append(f"{key}: {overrides.pop(key, value)}")
        lines += [f"{key}: {value}" for key, value in overrides.items()]
        return "\n".join(lines) + "\n"

    def _cyrus_conf(self) -> str:
        conf = f"-C {self.imapd_conf}"  # master does not pass its -C on to services
        return (
            "START {\n"
            f'  recover cmd="ctl_cyrusdb {conf} -r"\n'
            "}\n"
            "SERVICES {\n"
            f'  imap cmd="imapd {conf} -U 30" listen="{HOST}:{self.ports["imap"]}" prefork=0\n'
            f'  imaps cmd="imapd {conf} -s -U 30" listen="{HOST}:{self.ports["imaps"]}"'
            " prefork=0\n"
            "}\n"
            "EVENTS {\n"
            f'  checkpoint cmd="ctl_cyrusdb {conf} -c" period=30\n'
            "}\n"
        )

    def _create_sasldb(self) -> None:
        # A throwaway entry creates the database file, so Cyrus can open it before the
        # first real user exists.
        self._saslpasswd("-c", "mailsync-placeholder", password="unused-placeholder")

    def _saslpasswd(self, *args: str, password: str) -> None:
        proc = subprocess.run(
            ["saslpasswd2", "-p", "-f", str(self.sasldb), "-u", SERVERNAME, *args],
            input=password,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ServerError(f"saslpasswd2 {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        os.chown(self.sasldb, self.uid, self.gid)
        os.chmod(self.sasldb, 0o600)

    # -- users --

    def add_user(self, name: str | None = None, password: str | None = None) -> User:
        if name is None:
            name = f"user{next(self._counter)}"
            while name in self.users:
                name = f"user{next(self._counter)}"
        if password is None:
            password = f"pw-{name}"
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"user name {name!r}: only letters, digits, - and _ on Cyrus")
        if not password or "\n" in password:
            raise ValueError("the password must be one non-empty line")
        if name in self.users:
            raise ValueError(f"user {name!r} exists already")
        self._saslpasswd("-c", name, password=password)
        user = User(name=name, password=password)
        self.users[name] = user
        return user

    def tool(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sandbox.run(f"{BIN}/{name}", "-C", str(self.imapd_conf), *args)

    # -- clients --

    def log_tail(self, lines: int = 40) -> str:
        return self.sandbox.log_tail(lines)


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def cyrus_server(request: pytest.FixtureRequest) -> CyrusServer:
    """The session's private Cyrus (one per pytest process, however many conftests)."""
    server = getattr(request.config, _CONFIG_ATTR, None)
    if server is None:
        reason = missing_reason(f"{BIN}/master", f"{BIN}/imapd", "etc/imapd.conf")
        if reason is None and shutil.which("saslpasswd2") is None:
            reason = "saslpasswd2 is missing (apt-get install sasl2-bin)"
        if reason:
            unavailable("Cyrus", reason)
        server = CyrusServer()
        request.config.add_cleanup(server.stop)
        try:
            server.start()
        except (ServerError, OSError) as exc:
            server = f"could not start the private Cyrus:\n{exc}"
        setattr(request.config, _CONFIG_ATTR, server)
    if isinstance(server, str):  # the start failed: fail every user at once, don't retry
        pytest.fail(server, pytrace=False)
    return server


@pytest.fixture
def cyrus_user(cyrus_server: CyrusServer) -> User:
    """A fresh user on the session's Cyrus; its INBOX appears at the first login."""
    return cyrus_server.add_user()

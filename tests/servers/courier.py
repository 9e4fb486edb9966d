"""A private Courier-IMAP 5 on 127.0.0.1 for tests, run from Debian's unpacked packages.

Fixtures
--------
``courier_server`` (session)
    One Courier per pytest process: authdaemond (authlib's userdb module) and two
    couriertcpd listeners (plain with STARTTLS, and implicit TLS through couriertls),
    started as Debian's init scripts start them, from Debian's courier-imap,
    courier-base and courier-authlib packages unpacked by ``make test-servers``
    (tests/servers/sandbox.py says how and why it runs in private namespaces).  Its
    files live in a fresh ``/tmp/mailsync-courier-*`` directory, removed at session end
    unless ``MAILSYNC_KEEP_SERVERS=1``.  If Courier fails to start, every test using it
    fails with the tail of its log.  Without the unpacked packages or without root the
    fixtures skip, except under ``CI=true`` where they fail.
``courier_user`` (function)
    A fresh user with an empty Maildir (only INBOX).

Server API (``CourierServer``), as DovecotServer's where it can be
-------------------------------------------------------------------
``server.host``, ``server.ports`` (``{"imap": N, "imaps": N}``), ``server.cafile`` /
``server.ssl_context()``, ``server.version`` (``5.0.13+1.0.16-3+b6``),
``server.workdir``, ``server.log_tail(lines=40)`` (authdaemond's and couriertcpd's
output: logins, failures, ``ERR:`` lines of imapd).
``server.add_user(name=None, password=None) -> User``
    ``User(name, password, maildir)``: a userdb entry (``systempw`` is a SHA-512 crypt
    hash, so a wrong password is refused) made with Courier's own ``makeuserdb``, and a
    Maildir++ ``HOME/Maildir`` owned by the mail user ``mailsynctest``.
``server.imap(user, *, tls=False)``, ``server.url(scheme, user)``
    As for Dovecot (``url`` has no ``?cafile=``; add it for mailsync).

The configuration is Debian's /etc/courier/{imapd,imapd-ssl,authdaemonrc} as shipped
(read from the unpacked packages), with overrides appended (the files are shell
assignments, the last one wins): address and ports, TLS certificate, no TLS session
cache or DH parameter file, ``authmodulelist="authuserdb"``.  So ``MAILDIRPATH=Maildir``
and Debian's IMAP_CAPABILITY.  In the namespace ``/etc/courier`` and ``/run/courier``
are private directories, and ``/etc/passwd`` has a ``courier`` user (Debian's postinst
creates one: STARTTLS runs couriertls as that user) with the mail user's ids.

What Courier-IMAP 5.0.13 (Debian 12) does with what it is given
---------------------------------------------------------------
Measured by tests/servers/test_courier_fixture.py, which fails if any of it changes.

* NAMESPACE: ``(("INBOX." ".")) NIL (("#shared." ".")("shared." "."))``.  A fresh
  user's LIST is ``(\\Unmarked \\HasNoChildren) "." "INBOX"`` (names quoted).
* CREATE answers: ``Sent``, ``Other``, ``user.bob``, ``INBOX.x/y``, ``INBOX/z`` ->
  ``NO Invalid mailbox name.``; ``INBOX.Sent`` -> ``OK "INBOX.Sent" created.``, again
  -> ``NO Cannot create this folder.``; ``INBOX.A.B`` -> ``OK "INBOX.A.B" created.``,
  stored as ``Maildir/.A.B`` only: LIST shows ``(\\Noselect \\HasChildren) "."
  "INBOX.A"``, and SELECT ``INBOX.A`` is ``NO Mailbox does not exist, or must be
  subscribed to.``
* APPEND (the samples of servers/rewrites.py, FETCH BODY.PEEK[] compared byte for
  byte): messages are kept with LF line ends on disk and served with CRLF, so a
  message without a final line end gains CRLF, a lone LF becomes CRLF and a lone CR
  is dropped (``one\\rtwo`` -> ``onetwo``).  NUL bytes, 8-bit headers and bodies,
  10,000-byte lines, an empty body and a message without the blank line come back
  identical.  Nothing is refused.  RFC822.SIZE is the served length; UID SEARCH
  HEADER Message-ID finds every stored sample.
* APPEND answers ``[APPENDUID <uidvalidity> <uid>] APPEND Ok.``.  Flags and keywords
  are kept (no ``\\Recent``); INTERNALDATE keeps the instant, not the UTC offset.
  SELECT reports no UIDNEXT (STATUS does) and no HIGHESTMODSEQ.
* CAPABILITY after login is exactly Debian's ``IMAP4rev1 UIDPLUS CHILDREN NAMESPACE
  THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE`` plus ``ACL ACL2=UNION
  ENABLE UTF8=ACCEPT``: no CONDSTORE, QRESYNC, OBJECTID, SPECIAL-USE, LIST-STATUS,
  MOVE, ESEARCH, UNSELECT, LITERAL+, BINARY.  Before login it adds STARTTLS, after
  STARTTLS (or on imaps) AUTH=PLAIN.
* A failed login answers ``NO Login failed.`` after 5 s (hard-coded in imaplogin).
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
CONFIG_FILES = ("imapd", "imapd-ssl", "authdaemonrc")
_CONFIG_ATTR = "_mailsync_courier_server"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")

# Debian's /usr/lib/courier/imapd and imapd-ssl init scripts, less courierlogger (output
# goes to the sandbox's log) and the access file (everything may connect).
_LISTENER = (
    "env -i /bin/sh -c 'set -a; prefix=/usr; exec_prefix=/usr; sbindir=/usr/sbin; "
    "bindir=/usr/bin; . /etc/courier/imapd; . /etc/courier/imapd-ssl; {extra} "
    'umask $IMAP_UMASK; if test -n "$IMAP_ULIMITD"; then ulimit -v $IMAP_ULIMITD; fi; '
    "exec /usr/sbin/couriertcpd -address={address} -maxprocs=$MAXDAEMONS "
    "-maxperip=$MAXPERIP $TCPDOPTS {port} {tls}/usr/lib/courier/courier/imaplogin "
    "/usr/bin/imapd $MAILDIRPATH'"
)


class CourierServer(IMAPClients):
    """One private Courier-IMAP instance; see the module docstring for the API."""

    host = HOST

    def __init__(self, workdir: Path | None = None):
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="mailsync-courier-"))
            self._own_workdir = True
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        self.workdir = workdir
        os.chmod(workdir, 0o711)
        self.etc = workdir / "etc-courier"  # /etc/courier in the namespace
        self.run_dir = workdir / "run-courier"  # /run/courier
        self.homes = workdir / "home"
        self.userdb = self.etc / "userdb"
        self.ports: dict[str, int] = {}
        self.version = package_versions().get("courier-imap", "")
        self.cafile = self.certfile = self.keyfile = Path()
        self.users: dict[str, User] = {}
        self._counter = itertools.count(1)
        self.uid, self.gid = 0, 0
        layer_etc, layer_run = workdir / "layer-etc", workdir / "layer-run"
        self.sandbox = Sandbox(
            workdir,
            layers={"/etc": layer_etc, "/run": layer_run},
            binds={"/etc/courier": self.etc, "/run/courier": self.run_dir},
        )
        self._layer_etc, self._layer_run = layer_etc, layer_run

    # -- lifecycle --

    def start(self) -> CourierServer:
        self.uid, self.gid = ensure_mail_user(MAIL_USER)
        self.cafile, self.certfile, self.keyfile = make_certificates(self.workdir)
        os.chmod(self.cafile, 0o644)
        self._make_layers()
        self.etc.mkdir(mode=0o755)
        (self.run_dir / "authdaemon").mkdir(parents=True, mode=0o750)
        self.homes.mkdir(mode=0o711)
        pem = self.etc / "imapd.pem"  # Debian: key and certificate, root:courier 0640
        pem.write_bytes(self.keyfile.read_bytes() + self.certfile.read_bytes())
        os.chown(pem, 0, self.gid)
        os.chmod(pem, 0o640)
        self.userdb.touch(mode=0o600)
        last_error = ""
        for _ in range(3):  # a port picked free may be taken before Courier binds it
            self.ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
            self._write_config()
            try:
                self.sandbox.start(
                    self._daemons(), list(self.ports.values()), setup="makeuserdb || exit 1"
                )
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

    def __enter__(self) -> CourierServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration --

    def _make_layers(self) -> None:
        """The entries the namespace adds to /etc and /run (see sandbox.py)."""
        (self._layer_etc / "courier").mkdir(parents=True)
        (self._layer_run / "courier").mkdir(parents=True)
        courier_user = f"courier:x:{self.uid}:{self.gid}:Courier:/nonexistent:/usr/sbin/nologin\n"
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if not re.search(r"^courier:", passwd, re.M):
            passwd = passwd.rstrip("\n") + "\n" + courier_user
        if not re.search(r"^courier:", group, re.M):
            group = group.rstrip("\n") + f"\ncourier:x:{self.gid}:\n"
        (self._layer_etc / "passwd").write_text(passwd)
        (self._layer_etc / "group").write_text(group)

    def _write_config(self) -> None:
        overrides = {
            "imapd": {
                "ADDRESS": HOST,
                "PORT": str(self.ports["imap"]),
                "PIDFILE": f"{self.run_dir}/imapd.pid",
            },
            "imapd-ssl": {
                "SSLADDRESS": HOST,
                "SSLPORT": str(self.ports["imaps"]),
                "SSLPIDFILE": f"{self.run_dir}/imapd-ssl.pid",
                "TLS_CERTFILE": "/etc/courier/imapd.pem",
                "TLS_DHPARAMS": "",  # Debian generates one at install; ECDHE needs none
                "TLS_CACHEFILE": "",
            },
            "authdaemonrc": {"authmodulelist": "authuserdb", "daemons": "2"},
        }
        for name in CONFIG_FILES:
            shipped = (packages_root() / "etc/courier" / name).read_text()
            extra = "".join(f'{key}="{value}"\n' for key, value in overrides[name].items())
            (self.etc / name).write_text(
                f"{shipped.rstrip()}\n\n# tests/servers/courier.py: private overrides\n{extra}"
            )

    def _daemons(self) -> dict[str, str]:
        plain = _LISTENER.format(
            extra="IMAP_STARTTLS=$IMAPDSTARTTLS;", address="$ADDRESS", port="$PORT", tls=""
        )
        tls = _LISTENER.format(
            extra="IMAP_TLS=1;",
            address="$SSLADDRESS",
            port="$SSLPORT",
            tls="$COURIERTLS -server -tcpd -user=courier ",
        )
        return {
            # Debian's authdaemond script, less courierlogger.
            "authdaemond": "(set -a; . /etc/courier/authdaemonrc; "
            "exec /usr/lib/courier/courier-authlib/authdaemond)",
            "couriertcpd imap": plain,
            "couriertcpd imaps": tls,
        }

    # -- users --

    def add_user(self, name: str | None = None, password: str | None = None) -> User:
        if name is None:
            name = f"user{next(self._counter)}"
            while name in self.users:
                name = f"user{next(self._counter)}"
        if password is None:
            password = f"pw-{name}"
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"user name {name!r}: only letters, digits, - and _")
        if not password or "\n" in password:
            raise ValueError("the password must be one non-empty line")
        if name in self.users:
            raise ValueError(f"user {name!r} exists already")
        home = self.homes / name
        maildir = home / "Maildir"
        for d in (home, maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))):
            d.mkdir(mode=0o700)
            os.chown(d, self.uid, self.gid)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=password,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        fields = f"uid={self.uid}|gid={self.gid}|home={home}|mail={maildir}|systempw={hashed}"
        with open(self.userdb, "a") as db:
            db.write(f"{name}\t{fields}\n")
        self.sandbox.run("makeuserdb")
        user = User(name=name, password=password, maildir=maildir)
        self.users[name] = user
        return user

    # -- clients --

    def log_tail(self, lines: int = 40) -> str:
        return self.sandbox.log_tail(lines)


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def courier_server(request: pytest.FixtureRequest) -> CourierServer:
    """The session's private Courier (one per pytest process, however many conftests)."""
    server = getattr(request.config, _CONFIG_ATTR, None)
    if server is None:
        reason = missing_reason(
            "/usr/sbin/couriertcpd",
            "/usr/bin/imapd",
            "/usr/lib/courier/courier-authlib/authdaemond",
            "etc/courier/imapd",
        )
        if reason:
            unavailable("Courier", reason)
        server = CourierServer()
        request.config.add_cleanup(server.stop)
        try:
            server.start()
        except (ServerError, OSError) as exc:
            server = f"could not start the private Courier:\n{exc}"
        setattr(request.config, _CONFIG_ATTR, server)
    if isinstance(server, str):  # the start failed: fail every user at once, don't retry
        pytest.fail(server, pytrace=False)
    return server


@pytest.fixture
def courier_user(courier_server: CourierServer) -> User:
    """A fresh user with an empty Maildir on the session's Courier."""
    return courier_server.add_user()

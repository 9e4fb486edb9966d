"""A private Dovecot (IMAP + POP3) on 127.0.0.1 for tests, with no system-wide changes.

Fixtures
--------
``dovecot_server`` (session)
    One Dovecot per pytest process (per xdist worker), started from its own config in a
    fresh ``/tmp/mailsync-dovecot-*`` directory (``dovecot -F -c CONF``, output to a file)
    and stopped at session end, also after failures or Ctrl-C; if pytest itself is killed,
    the master still gets SIGTERM (PR_SET_PDEATHSIG).  The directory is removed unless
    ``MAILSYNC_KEEP_DOVECOT=1``.  If Dovecot fails to start, every test using it fails
    with the tail of Dovecot's log.  Without Dovecot installed or without root the
    fixtures skip, except under ``CI=true`` where they fail.
``dovecot_user`` (function)
    A fresh user with an empty mailbox tree (only INBOX), so tests never see each
    other's mail.
``dovecot_prefixed_server`` (session), ``dovecot_prefixed_user`` (function)
    A second Dovecot (``DovecotServer(prefixed=True)``, its own directory
    ``/tmp/mailsync-dovecot-prefixed-*``) that presents folders as Courier and Cyrus do:
    ``namespace inbox { prefix = INBOX.  separator = . }`` over Maildir++ trees
    (``mail_location = maildir:~/Maildir``: INBOX is the Maildir itself, ``INBOX.A.B``
    is ``~/Maildir/.A.B``).  The API is the same; ``add_user(special_use=True)`` creates
    ``INBOX.Sent``... and ``serve_maildir`` serves a Maildir++ tree.
``dovecot_localized_server`` (session), ``dovecot_localized_user`` (function)
    A prefixed Dovecot (``INBOX.``, ``.``) whose special folders have Finnish names,
    none of them in mailsync's table of usual names (folder_names.COMMON_NAMES), so only
    their SPECIAL-USE attribute says what they are (``DovecotServer(prefixed=True,
    special_names=LOCALIZED_SPECIAL_USE)``, directory ``/tmp/mailsync-dovecot-localized-*``):
    ``INBOX.Lähetetyt`` is ``\\Sent``, ``INBOX.Roskakori`` ``\\Trash``, ``INBOX.Luonnokset``
    ``\\Drafts``, ``INBOX.Roskaposti`` ``\\Junk``, ``INBOX.Arkisto`` ``\\Archive``.  On the
    wire the non-ASCII names are modified UTF-7 (``INBOX.L&AOQ-hetetyt``); doveadm and the
    configuration take them in UTF-8.  ``dovecot_localized_user`` has them all (and INBOX).
``dovecot_oauth2_server`` (session), ``dovecot_oauth2_user`` (function)
    A third Dovecot (``DovecotServer(oauth2=INTROSPECTION_URL)``, directory
    ``/tmp/mailsync-dovecot-oauth2-*``) that also offers ``AUTH=XOAUTH2`` and
    ``AUTH=OAUTHBEARER`` (IMAP) / ``SASL ... XOAUTH2 OAUTHBEARER`` (POP3) and checks
    those tokens with the test authorization server; its fixtures live in
    tests/servers/oauth.py.  Dovecot 2.3's ``passdb { driver = oauth2 }`` POSTs
    ``token=...`` to the RFC 7662 introspection URL (``introspection_mode = post``) on
    every login and wants ``active: true`` and ``username`` equal to the SASL user.  A
    refused XOAUTH2 token gets the challenge ``{"status":"401","schemes":"bearer",
    "scope":...}``, a refused OAUTHBEARER token ``{"status":"invalid_token"}``; then a
    tagged ``NO [AUTHENTICATIONFAILED]`` (POP3: ``-ERR [AUTH]``).

How test directories get them
-----------------------------
This module is ``tests/servers/dovecot.py`` (no ``__init__.py`` anywhere: ``servers``
is a namespace package, ``tests/`` being on ``sys.path`` by pytest's ``pythonpath``
setting in setup.cfg).  The top-level ``tests/conftest.py`` registers it, with cyrus.py
and courier.py, for every test directory::

    pytest_plugins = ["servers.dovecot", "servers.cyrus", "servers.courier"]

Only one Dovecot is started per session (it is kept on ``pytest.Config``).  Test
modules can ``from servers.dovecot import User, ...``.

Server API (``DovecotServer``)
------------------------------
``server.host``
    ``"127.0.0.1"`` (the only address Dovecot listens on).
``server.ports``
    ``{"imap": N, "imaps": N, "pop3": N, "pop3s": N}``, free ports picked at start.
    ``imap`` and ``pop3`` are plain and offer STARTTLS/STLS (not required); ``imaps`` and
    ``pop3s`` are implicit TLS.  Plaintext logins are allowed on all four.
``server.cafile``
    PEM of the self-signed CA that issued the server certificate (SAN ``DNS:localhost``,
    ``IP:127.0.0.1``): ``ssl.create_default_context(cafile=server.cafile)`` verifies it.
``server.ssl_context()``
    That context, ready made.
``server.version``, ``server.uid``, ``server.gid``, ``server.workdir``, ``server.conf``,
``server.log_path``
    Dovecot's version string, the mail user's ids, where everything lives.
``server.add_user(name=None, password=None, *, special_use=False, settings=None) -> User``
    A new user (name defaults to ``userN``, password to ``pw-NAME``).  ``special_use=True``
    also creates Sent, Drafts, Trash, Junk and Archive (or the server's
    ``special_names``); those names carry their SPECIAL-USE attribute whenever they
    exist (a fresh user has only INBOX).
    ``settings``: Dovecot settings for this user only (userdb extra fields, values without
    spaces), e.g. ``{"mail_plugins": "quota", "quota": "count:User", "quota_vsizes":
    "yes", "quota_max_mail_size": "2k"}``: an APPEND above 2 KiB then gets ``NO [LIMIT]``.
``server.special_use``
    Folder name (without the prefix) -> its SPECIAL-USE attribute on this server.
``server.serve_maildir(path, name=None, password=None, *, copy=False) -> User``
    A user whose mail is the existing Maildir tree at ``path``, in mailsync's
    ``verbatim`` layout (``ROOT/INBOX/{cur,new,tmp}``, ``ROOT/Archive/2019/{cur,...}``),
    served in place: the tree is chowned to the mail user, and ancestor directories the
    mail user cannot search get ``o+x`` (restored when the server stops).  Dovecot's
    index, uidlist and subscription files go to a separate directory, so the tree only
    changes as a mail reader changes it (new/ -> cur/ on a read-write SELECT, flag
    renames, expunges; EXAMINE changes nothing).  ``copy=True`` serves a copy instead
    (``user.maildir`` says where).
``server.chown_maildir(user)``
    Re-chown ``user.maildir`` to the mail user after something running as root wrote
    into it (Dovecot cannot read root's 0600 files).
``server.doveadm(*args, check=True) -> subprocess.CompletedProcess``
    ``doveadm -c CONF ARGS`` with text output; DovecotError (with output) on failure.
``server.uidvalidity(user, mailbox="INBOX") -> int``
``server.change_uidvalidity(user, mailbox="INBOX", value=None) -> int``
    The latter runs ``doveadm mailbox update -u USER --uid-validity N MAILBOX`` (default
    N: current + 1) and returns N; clients see it on their next SELECT or STATUS, and the
    messages stay.
``server.imap(user, *, tls=False) -> imapclient.IMAPClient``
    Logged in over the plain port (``tls=True``: imaps, verified); use it as a context
    manager so it logs out.  For seeding: ``c.append("INBOX", raw_bytes,
    flags=[b"\\Seen"], msg_time=aware_datetime)``.
``server.pop3(user, *, tls=True) -> poplib.POP3``
    Logged in over pop3s (``tls=False``: plain pop3).  Call ``.quit()``.
``server.url(scheme, user) -> str``
    ``"imaps://NAME@127.0.0.1:PORT"`` for ``scheme`` in imap, imaps, pop3, pop3s.
``server.log_tail(lines=40) -> str``
    The end of Dovecot's output and log.

``User``: ``name``, ``password``, ``home``, ``maildir`` (the mail root; INBOX is
``maildir / "INBOX"``), ``mail_location``.  Names may not contain ``: / % \\`` or
spaces; passwords may not contain ``:`` or start with ``{``.

Dovecot behaviour worth knowing (checked on Dovecot 2.3.19.1, Debian 12)
----------------------------------------------------------------------
* ``mail_location = maildir:~/Maildir:LAYOUT=fs:INBOX=~/Maildir/INBOX``.  With
  ``LAYOUT=fs`` alone INBOX is the root directory itself; ``INBOX=ROOT/INBOX`` moves it
  to mailsync's verbatim place, and LIST still shows INBOX once.  A directory without
  cur/new/tmp (``ROOT/Archive`` above ``Archive/2019``) lists as ``\\Noselect``.
  Ordinary users keep Dovecot's ``dovecot*`` files inside their Maildir, as a real
  server does; served trees don't.
* ``disable_plaintext_auth = no`` (the 2.3 name; 2.4 calls it
  ``auth_allow_cleartext = yes``).  ``auth_failure_delay = 0``, and the anvil
  auth penalty is off: with it a second failed login from 127.0.0.1 takes 4.5 s; now
  every failed login still takes about 0.5 s, however many came before.
* Users live one per file (``passwd/NAME``, ``{PLAIN}`` passwords): Dovecot re-reads a
  changed passwd-file at most once a second, so a user appended to a shared file
  would stay unknown for up to a second.  ``auth_username_format = %u``: names are
  case-sensitive (the default lowercases them).
* Mail processes run as the system user ``mailsynctest`` (created with ``useradd
  --system`` when missing); Dovecot refuses to access mail as root.
* ``pop3_uidl_format = %08Xu%08Xv`` yields lower-case hex: ``000000016b091753``.
* Maildir keeps INTERNALDATE as the file's mtime: the instant survives an APPEND, its
  UTC offset does not (dates come back in the server's zone, UTC here).
* CONDSTORE, QRESYNC, SPECIAL-USE, MOVE, UIDPLUS, ESEARCH, LIST-STATUS, BINARY are in
  the default capability list; OBJECTID (RFC 8474) is not.
* What APPEND stores (test_dovecot_fixture.py, the samples of servers/rewrites.py): a
  NUL byte comes back as 0x80 and a lone LF as CRLF (RFC822.SIZE counts the CR);
  8-bit headers and bodies, lone CRs, a missing final CRLF, 10,000-byte lines and
  empty bodies come back byte for byte.  Nothing is refused.

The prefixed variant (tests/servers/test_dovecot_fixture.py checks each point)
------------------------------------------------------------------------------
* NAMESPACE: ``(("INBOX." ".")) NIL NIL``; a fresh user's LIST is
  ``(\\HasNoChildren) "." INBOX`` (``\\HasChildren`` once folders exist).
* CREATE ``Sent`` (or any name outside ``INBOX.``): ``NO Client tried to access
  nonexistent namespace. (Mailbox name should probably be prefixed with: INBOX.)``;
  ``INBOX.x/y``: ``NO [CANNOT] Invalid mailbox name: Name must not have '/'
  characters``; ``INBOX.A.B`` creates ``~/Maildir/.A.B`` and LIST shows ``INBOX.A`` as
  ``(\\Noselect \\HasChildren)``.
* The special-use names in the namespace block are relative to the prefix:
  ``INBOX.Sent`` is ``\\Sent``.
"""

from __future__ import annotations

import ctypes
import grp
import itertools
import os
import poplib
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from servers.clients import CLIENT_TIMEOUT, IMAPClients

if TYPE_CHECKING:
    pass

MAIL_USER = "mailsynctest"
HOST = "127.0.0.1"
SERVICES = ("imap", "imaps", "pop3", "pop3s")
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
#: The localized server's special folders (dovecot_localized_server): attribute -> name,
#: Finnish names that are not in folder_names.COMMON_NAMES.
LOCALIZED_SPECIAL_USE = {
    "\\Sent": "Lähetetyt",
    "\\Trash": "Roskakori",
    "\\Drafts": "Luonnokset",
    "\\Junk": "Roskaposti",
    "\\Archive": "Arkisto",
}
START_TIMEOUT = 10.0
STOP_GRACE = 0.3
_CONFIG_ATTR = "_mailsync_dovecot_server"
_PREFIXED_CONFIG_ATTR = "_mailsync_dovecot_prefixed_server"
_LOCALIZED_CONFIG_ATTR = "_mailsync_dovecot_localized_server"
_PR_SET_PDEATHSIG = 1


class DovecotError(RuntimeError):
    """Dovecot could not be started or a doveadm command failed."""


@dataclass
class User:
    name: str
    password: str
    home: Path
    maildir: Path
    mail_location: str


# -- helpers ------------------------------------------------------------------------


def dovecot_version() -> str:
    out = subprocess.run(["dovecot", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def ensure_mail_user(name: str = MAIL_USER) -> tuple[int, int]:
    """The (uid, gid) of system user `name`, created (idempotently) when missing."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            check=False,
        )
        pw = pwd.getpwnam(name)  # KeyError here means useradd failed (and lost a race)
    return pw.pw_uid, pw.pw_gid


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback TCP ports (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DovecotError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for localhost/127.0.0.1 signed by it.

    Returns (cafile, certfile, keyfile).
    """
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
        "-subj", "/CN=mailsync test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3650", "-extfile", "server.ext", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def _can_search(path: Path, uid: int, gids: set[int]) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def _check_field(what: str, value: str, forbidden: str) -> None:
    """Refuse values that would break a passwd-file line (or a mail_location)."""
    bad = [c for c in value if c in forbidden or not c.isprintable()]
    if not value or bad or value.startswith("{"):
        raise ValueError(f"{what} {value!r} cannot go into a passwd-file line")


# -- the server ---------------------------------------------------------------------


class DovecotServer(IMAPClients):
    """One private Dovecot instance; see the module docstring for the API."""

    host = HOST

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        prefixed: bool = False,
        oauth2: str | None = None,
        oauth2_cafile: Path | None = None,
        special_names: dict[str, str] | None = None,
    ):
        # prefixed: personal folders under "INBOX." with "." as the separator, in a
        # Maildir++ tree, as Courier and Cyrus present them (see the module docstring).
        # oauth2: the RFC 7662 introspection URL of an authorization server (with its
        # credentials): XOAUTH2 and OAUTHBEARER are offered and their tokens checked
        # there (tests/servers/oauth.py); oauth2_cafile: its CA, for https.
        # special_names: SPECIAL-USE attribute -> the folder name that carries it
        # (relative to the prefix), instead of Sent, Drafts, Trash, Junk, Archive.
        self.prefixed = prefixed
        self.oauth2 = oauth2
        self.oauth2_cafile = oauth2_cafile
        self.prefix = "INBOX." if prefixed else ""
        self.separator = "." if prefixed else "/"
        self.special_use = (
            {name: flag for flag, name in special_names.items()}
            if special_names
            else dict(SPECIAL_USE)
        )
        if workdir is None:
            kind = "dovecot-prefixed" if prefixed else "dovecot-oauth2" if oauth2 else "dovecot"
            if special_names:
                kind = "dovecot-localized"
            workdir = Path(tempfile.mkdtemp(prefix=f"mailsync-{kind}-"))
            self._own_workdir = True
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        self.workdir = workdir
        # The mail and auth processes run unprivileged and must reach files in here.
        os.chmod(workdir, 0o711)
        self.conf = workdir / "dovecot.conf"
        self.log_path = workdir / "dovecot.log"
        self.stdout_path = workdir / "dovecot.out"
        self.passwd_dir = workdir / "passwd"
        self.homes = workdir / "home"
        self.control_root = workdir / "control"
        self.ports: dict[str, int] = {}
        self.version = ""
        self.cafile = self.certfile = self.keyfile = Path()
        self.proc: subprocess.Popen[bytes] | None = None
        self.users: dict[str, User] = {}
        self._counter = itertools.count(1)
        self._chmodded: list[tuple[Path, int]] = []
        self.uid, self.gid = 0, 0

    # -- lifecycle --

    def start(self) -> DovecotServer:
        self.version = dovecot_version()
        if not self.version.startswith("2.3."):
            raise DovecotError(
                f"Dovecot {self.version} is installed; tests/servers/dovecot.py writes a "
                "Dovecot 2.3 configuration (2.4 renamed most settings)"
            )
        self.uid, self.gid = ensure_mail_user()
        self._mail_gids = {self.gid, *os.getgrouplist(MAIL_USER, self.gid)}
        self.cafile, self.certfile, self.keyfile = make_certificates(self.workdir)
        os.chmod(self.cafile, 0o644)
        for d in (self.homes, self.control_root):
            d.mkdir(mode=0o711, exist_ok=True)
        self._auth_gid = grp.getgrnam("dovecot").gr_gid
        self.passwd_dir.mkdir(mode=0o750)
        os.chown(self.passwd_dir, 0, self._auth_gid)
        last_error = ""
        for _ in range(3):  # a port picked free may be taken before Dovecot binds it
            self.ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
            self.conf.write_text(self._config())
            try:
                self._launch()
                return self
            except DovecotError as exc:
                last_error = str(exc)
                self._terminate()
                if "Address already in use" not in last_error:
                    break
        raise DovecotError(last_error)

    def _launch(self) -> None:
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_pdeathsig,
            )
        deadline = time.monotonic() + START_TIMEOUT
        waiting = set(SERVICES)
        while waiting:
            if self.proc.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with status {self.proc.returncode}\n{self.log_tail()}"
                )
            for service in sorted(waiting):
                try:
                    socket.create_connection((HOST, self.ports[service]), timeout=1).close()
                    waiting.discard(service)
                except OSError:
                    pass
            if waiting:
                if time.monotonic() > deadline:
                    raise DovecotError(
                        f"dovecot did not open {sorted(waiting)} in {START_TIMEOUT:.0f} s\n"
                        + self.log_tail()
                    )
                time.sleep(0.02)

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM makes the master stop its children at once, but it then waits about a
        # second for its log process; past a short grace the whole process group (made for
        # it by start_new_session) is killed instead.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the master is not reaped: the group is ours
            proc.wait()

    def stop(self) -> None:
        self._terminate()
        for path, mode in reversed(self._chmodded):
            try:
                os.chmod(path, mode)
            except OSError:
                pass
        self._chmodded.clear()
        if self._own_workdir and not os.environ.get("MAILSYNC_KEEP_DOVECOT"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration --

    def _config(self) -> str:
        w = self.workdir
        mailboxes = "".join(  # (quoted: a name may hold spaces; UTF-8 as it is)
            f'  mailbox "{name}" {{\n    special_use = {flag}\n    auto = no\n  }}\n'
            for name, flag in self.special_use.items()
        )

        def listeners(protocol: str) -> str:
            return (
                f"service {protocol}-login {{\n"
                f"  inet_listener {protocol} {{\n"
                f"    address = {HOST}\n    port = {self.ports[protocol]}\n  }}\n"
                f"  inet_listener {protocol}s {{\n"
                f"    address = {HOST}\n    port = {self.ports[protocol + 's']}\n"
                f"    ssl = yes\n  }}\n"
                f"  service_count = 0\n"
                f"}}\n"
            )

        return (
            f"# private Dovecot for mailsync's tests (tests/servers/dovecot.py)\n"
            f"instance_name = mailsync-test-{w.name}\n"
            f"base_dir = {w}/run\n"
            f"state_dir = {w}/state\n"
            f"log_path = {self.log_path}\n"
            f"info_log_path = {self.log_path}\n"
            f"debug_log_path = {self.log_path}\n"
            f"protocols = imap pop3\n"
            f"listen = {HOST}\n"
            f"shutdown_clients = yes\n"
            f"default_internal_user = dovecot\n"
            f"default_internal_group = dovecot\n"
            f"default_login_user = dovenull\n"
            f"ssl = yes\n"
            f"ssl_cert = <{self.certfile}\n"
            f"ssl_key = <{self.keyfile}\n"
            f"disable_plaintext_auth = no\n"
            f"auth_mechanisms = plain login apop{' xoauth2 oauthbearer' if self.oauth2 else ''}\n"
            f"auth_username_format = %u\n"
            f"auth_failure_delay = 0\n"
            f"auth_verbose = yes\n"
            f"{self._oauth2_passdb()}"
            f"passdb {{\n"
            f"  driver = passwd-file\n"
            f"  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u\n"
            f"{'  mechanisms = plain login apop' + chr(10) if self.oauth2 else ''}"
            f"}}\n"
            f"userdb {{\n"
            f"  driver = passwd-file\n"
            f"  args = username_format=%u {self.passwd_dir}/%u\n"
            f"}}\n"
            f"first_valid_uid = {self.uid}\n"
            f"last_valid_uid = {self.uid}\n"
            f"first_valid_gid = {self.gid}\n"
            f"mail_location = {self._location('~/Maildir')}\n"
            f"mail_max_userip_connections = 1000\n"
            f"pop3_uidl_format = %08Xu%08Xv\n"
            f"namespace inbox {{\n"
            f"  inbox = yes\n"
            f"  prefix = {self.prefix}\n"
            f"  separator = {self.separator}\n"
            f"{mailboxes}"
            f"}}\n"
            f"service anvil {{\n"
            f"  unix_listener anvil-auth-penalty {{\n    mode = 0\n  }}\n"  # no auth penalty
            f"}}\n"
            f"{listeners('imap')}"
            f"{listeners('pop3')}"
        )

    def _oauth2_passdb(self) -> str:
        """The oauth2 passdb (Dovecot 2.3: driver = oauth2, its settings in a file of
        their own) when the server checks OAuth2 tokens, else nothing.  Tokens are
        opaque: each login POSTs token=... to the introspection URL (RFC 7662), which
        must answer active: true and the user's name as username (compared with the
        SASL user; username_format %u keeps its case)."""
        if not self.oauth2:
            return ""
        settings = self.workdir / "dovecot-oauth2.conf.ext"
        lines = [
            "introspection_mode = post",
            f"introspection_url = {self.oauth2}",
            "force_introspection = yes",
            "username_attribute = username",
            "username_format = %u",
            "active_attribute = active",
            "active_value = true",
            "timeout_msecs = 10000",
        ]
        if self.oauth2_cafile:
            lines.append(f"tls_ca_cert_file = {self.oauth2_cafile}")
        settings.write_text("\n".join(lines) + "\n")
        os.chmod(settings, 0o600)  # it holds the introspection credentials; auth runs as root
        return (
            f"passdb {{\n"
            f"  driver = oauth2\n"
            f"  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {settings}\n"
            f"}}\n"
        )

    def _location(self, root: str) -> str:
        """The mail_location of a Maildir tree at `root`: mailsync's verbatim layout
        (INBOX in ROOT/INBOX, Archive/2019 in ROOT/Archive/2019), or Maildir++ (INBOX is
        ROOT itself, INBOX.Archive.2019 is ROOT/.Archive.2019) on a prefixed server."""
        if self.prefixed:
            return f"maildir:{root}"
        return f"maildir:{root}:LAYOUT=fs:INBOX={root}/INBOX"

    def _write_user(self, user: User, extra: str = "") -> None:
        line = f"{user.name}:{{PLAIN}}{user.password}:{self.uid}:{self.gid}::{user.home}::{extra}\n"
        # One file per user: Dovecot re-reads a changed passwd-file at most once a second,
        # so users added to one shared file would stay unknown for up to a second.
        path = self.passwd_dir / user.name
        path.write_text(line)
        os.chown(path, 0, self._auth_gid)
        os.chmod(path, 0o640)
        self.users[user.name] = user

    def _new_user(self, name: str | None, password: str | None) -> tuple[str, str, Path]:
        if name is None:
            name = f"user{next(self._counter)}"
            while name in self.users:
                name = f"user{next(self._counter)}"
        if password is None:
            password = f"pw-{name}"
        _check_field("user name", name, ":/%\\ ")
        _check_field("password", password, ":")
        if name.startswith("."):
            raise ValueError(f"user name {name!r} must not start with '.'")
        if name in self.users:
            raise ValueError(f"user {name!r} exists already")
        home = self.homes / name
        home.mkdir(mode=0o700)
        os.chown(home, self.uid, self.gid)
        return name, password, home

    # -- users --

    def add_user(
        self,
        name: str | None = None,
        password: str | None = None,
        *,
        special_use: bool = False,
        settings: dict[str, str] | None = None,
    ) -> User:
        extra = " ".join(f"userdb_{key}={value}" for key, value in (settings or {}).items())
        if any(c.isspace() or not c.isprintable() for c in extra.replace(" userdb_", "")):
            raise ValueError(f"per-user settings {settings!r} may not contain spaces")
        name, password, home = self._new_user(name, password)
        user = User(
            name=name,
            password=password,
            home=home,
            maildir=home / "Maildir",
            mail_location=self._location(f"{home}/Maildir"),
        )
        self._write_user(user, extra)
        if special_use:
            self.doveadm(
                "mailbox", "create", "-u", name, *(self.prefix + n for n in self.special_use)
            )
        return user

    def serve_maildir(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        password: str | None = None,
        *,
        copy: bool = False,
    ) -> User:
        root = Path(path).resolve()
        if not root.is_dir():
            raise ValueError(f"{root} is not a directory; expected ROOT/INBOX/{{cur,new,tmp}}")
        _check_field("maildir path", str(root), ": %")
        name, password, home = self._new_user(name, password)
        if copy:
            target = home / "Maildir"
            shutil.copytree(root, target, symlinks=True)
            root = target
        else:
            self._make_searchable(root.parent)
        _chown_tree(root, self.uid, self.gid)
        control = self.control_root / name
        control.mkdir(mode=0o700)
        os.chown(control, self.uid, self.gid)
        location = f"{self._location(str(root))}:CONTROL={control}:INDEX={control}"
        location += ":UTF-8"  # mailsync writes folder names in UTF-8, not modified UTF-7
        user = User(name=name, password=password, home=home, maildir=root, mail_location=location)
        self._write_user(user, f"userdb_mail={location}")
        return user

    def chown_maildir(self, user: User) -> None:
        """Give the mail user what was written into `user.maildir` since (e.g. by root)."""
        _chown_tree(user.maildir, self.uid, self.gid)

    def _make_searchable(self, directory: Path) -> None:
        for d in [directory, *directory.parents]:
            if not _can_search(d, self.uid, self._mail_gids):
                mode = stat.S_IMODE(d.stat().st_mode)
                os.chmod(d, mode | stat.S_IXOTH)
                self._chmodded.append((d, mode))

    # -- doveadm --

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["doveadm", "-c", str(self.conf), *args], capture_output=True, text=True
        )
        if check and proc.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}\n{self.log_tail(10)}"
            )
        return proc

    def uidvalidity(self, user: User | str, mailbox: str = "INBOX") -> int:
        name = user.name if isinstance(user, User) else user
        out = self.doveadm("-f", "flow", "mailbox", "status", "-u", name, "uidvalidity", mailbox)
        return int(out.stdout.strip().split("=", 1)[1])

    def change_uidvalidity(
        self, user: User | str, mailbox: str = "INBOX", value: int | None = None
    ) -> int:
        name = user.name if isinstance(user, User) else user
        if value is None:
            value = self.uidvalidity(name, mailbox) + 1
        self.doveadm("mailbox", "update", "-u", name, "--uid-validity", str(value), mailbox)
        return value

    # -- clients --

    def pop3(self, user: User, *, tls: bool = True) -> poplib.POP3:
        if tls:
            client: poplib.POP3 = poplib.POP3_SSL(
                self.host, self.ports["pop3s"], context=self.ssl_context(), timeout=CLIENT_TIMEOUT
            )
        else:
            client = poplib.POP3(self.host, self.ports["pop3"], timeout=CLIENT_TIMEOUT)
        client.user(user.name)
        client.pass_(user.password)
        return client

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for path in (self.stdout_path, self.log_path):
            try:
                content = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if content:
                text += f"--- {path} (last {lines} lines) ---\n"
                text += "\n".join(content[-lines:]) + "\n"
        return text or "(dovecot wrote no log)"


# -- fixtures -----------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"private Dovecot unavailable: {reason}", pytrace=False)
    pytest.skip(f"private Dovecot unavailable: {reason}")


def _session_server(request: pytest.FixtureRequest, attr: str, **settings) -> DovecotServer:
    """The session's private Dovecot of one kind (one per pytest process, however many
    conftests), kept on pytest.Config under `attr`; `settings` go to DovecotServer."""
    server = getattr(request.config, attr, None)
    if server is None:
        if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
            _unavailable("dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)")
        if os.geteuid() != 0:
            _unavailable("the tests must run as root to start Dovecot")
        server = DovecotServer(**settings)
        request.config.add_cleanup(server.stop)
        try:
            server.start()
        except DovecotError as exc:
            server = f"could not start the private Dovecot:\n{exc}"
        setattr(request.config, attr, server)
    if isinstance(server, str):  # the start failed: fail every user at once, don't retry
        pytest.fail(server, pytrace=False)
    return server


@pytest.fixture(scope="session")
def dovecot_server(request: pytest.FixtureRequest) -> DovecotServer:
    """The session's private Dovecot (one per pytest process, however many conftests)."""
    return _session_server(request, _CONFIG_ATTR, prefixed=False)


@pytest.fixture(scope="session")
def dovecot_prefixed_server(request: pytest.FixtureRequest) -> DovecotServer:
    """A second private Dovecot whose personal folders are INBOX.Sent, INBOX.A.B (prefix
    "INBOX.", separator "."), kept in Maildir++ trees."""
    return _session_server(request, _PREFIXED_CONFIG_ATTR, prefixed=True)


@pytest.fixture(scope="session")
def dovecot_localized_server(request: pytest.FixtureRequest) -> DovecotServer:
    """A prefixed private Dovecot (INBOX., ".") whose special folders have names
    mailsync's table does not know (LOCALIZED_SPECIAL_USE): INBOX.Lähetetyt is \\Sent."""
    return _session_server(
        request, _LOCALIZED_CONFIG_ATTR, prefixed=True, special_names=LOCALIZED_SPECIAL_USE
    )


@pytest.fixture
def dovecot_user(dovecot_server: DovecotServer) -> User:
    """A fresh user with an empty mailbox tree (only INBOX) on the session's Dovecot."""
    return dovecot_server.add_user()


@pytest.fixture
def dovecot_prefixed_user(dovecot_prefixed_server: DovecotServer) -> User:
    """A fresh user with an empty Maildir++ (only INBOX) on the prefixed Dovecot."""
    return dovecot_prefixed_server.add_user()


@pytest.fixture
def dovecot_localized_user(dovecot_localized_server: DovecotServer) -> User:
    """A fresh user of the localized Dovecot with INBOX and its five special folders."""
    return dovecot_localized_server.add_user(special_use=True)

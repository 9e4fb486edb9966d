"""The tools under test: one function per (protocol, tool) that writes the tool's config
and returns the command to time.

Every IMAP tool pulls the whole account over imaps (TLS verified against the private CA)
into an empty local Maildir tree in the same layout (``DEST/INBOX``,
``DEST/Archive/2019``, ...), with durability on: mailsync fsyncs every message before
recording it, mbsync runs with ``FSync yes`` (its default) and offlineimap with
``fsync = true`` (its default).  Each tool runs with its default concurrency: mbsync
one IMAP connection, offlineimap ``maxconnections = 1`` (its default), mailsync its
default ``--jobs`` (run.py --mailsync-args '--jobs 1' for one connection).

The POP tools (mailsync, getmail6) pull the INBOX over pop3s into ``DEST/INBOX``;
getmail6 runs as the unprivileged BENCH_USER (see the POP3 part below).

To add a tool: write ``def NAME_PROTO(setup: Setup) -> Command`` and list it in
``IMAP_TOOLS`` or ``POP_TOOLS``.  ``Command.dest`` must be the Maildir root the tool
fills, in the verbatim layout, so run.py can count what it copied.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

INSTALL_HINT = {
    "mbsync": "apt-get install -y isync",
    "offlineimap": "apt-get install -y offlineimap",
    "getmail": "apt-get install -y getmail6",
}


@dataclass
class Setup:
    """What a tool needs to know to pull one account."""

    host: str
    port: int  # the protocol's implicit-TLS port (imaps / pop3s)
    user: str
    password: str
    cafile: Path
    dest: Path  # the local Maildir root to fill (does not exist yet)
    workdir: Path  # the tool's own scratch directory (config, state, logs)
    repo_root: Path
    target: Target | None = None  # an IMAP-to-IMAP migration's destination (else `dest`)


@dataclass
class Target:
    """The destination account of an IMAP-to-IMAP migration (a second Dovecot)."""

    host: str
    port: int  # imaps
    user: str
    password: str
    cafile: Path


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]
    dest: Path
    notes: list[str] = field(default_factory=list)
    # A failed initial pull whose output matches retry_on hit a known bug of the tool
    # (retry_why says which): run.py starts it again from scratch instead of failing it.
    retry_on: re.Pattern[str] | None = None
    retry_why: str = ""
    # What the tool copied, per folder, when it is not the Maildir at `dest` (a migration:
    # counted on the destination server; run.py sets it).
    count: Callable[[], dict] | None = None


ToolFunc = Callable[[Setup], Command]


def _base_env(setup: Setup) -> dict[str, str]:
    """A clean environment: no user config of any tool is read."""
    home = setup.workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }
    return env


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# -- availability and versions ----------------------------------------------------------


def missing(tool: str) -> str | None:
    """None when the tool can run, else why not and how to install it."""
    if tool == "mailsync":
        return None
    exe = {"mbsync": "mbsync", "offlineimap": "offlineimap", "getmail": "getmail"}[tool]
    if shutil.which(exe) is None:
        return f"{exe} is not installed ({INSTALL_HINT[tool]})"
    return None


def version(tool: str) -> str:
    argv = {
        "mailsync": [sys.executable, "-m", "mailsync", "--version"],
        "mbsync": ["mbsync", "--version"],
        "offlineimap": ["offlineimap", "--version"],
        "getmail": ["getmail", "--version"],
    }[tool]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def _mbsync_version() -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", version("mbsync"))
    if not match:
        return (1, 4, 0)
    return tuple(int(g or 0) for g in match.groups())


# -- IMAP -------------------------------------------------------------------------------


def mailsync_imap(setup: Setup, extra: list[str] | None = None) -> Command:
    return _mailsync_pull(setup, "imaps", extra)


def _mailsync_pull(setup: Setup, scheme: str, extra: list[str] | None) -> Command:
    """`mailsync pull SCHEME://USER@HOST:PORT maildir:DEST` (imaps or pop3s)."""
    state = setup.workdir / "state"
    url = f"{scheme}://{setup.user}@{setup.host}:{setup.port}?cafile={setup.cafile}"
    env = _base_env(setup)
    env["MAILSYNC_PASSWORD"] = setup.password
    env["PYTHONPATH"] = str(setup.repo_root)
    argv = [
        sys.executable,
        "-m",
        "mailsync",
        "--state-dir",
        str(state),
        "-q",
        "pull",
        "--no-progress",
        *(extra or []),
        url,
        f"maildir:{setup.dest}",
    ]
    return Command(argv, env, setup.dest)


def mbsync_imap(setup: Setup) -> Command:
    major_minor = _mbsync_version()[:2]
    far, near = ("Far", "Near") if major_minor >= (1, 4) else ("Master", "Slave")
    tls = "TLSType" if major_minor >= (1, 5) else "SSLType"
    conf = setup.workdir / "mbsyncrc"
    password = setup.password.replace("\\", "\\\\").replace('"', '\\"')
    _write_private(
        conf,
        f"# generated by bench/run.py for isync {'.'.join(map(str, _mbsync_version()))}\n"
        "FSync yes\n\n"
        "IMAPAccount bench\n"
        # isync 1.4 checks only DNS names of the certificate (SAN DNS:localhost), not IP
        # addresses; localhost is 127.0.0.1 here, as the test server's certificate says.
        "Host localhost\n"
        f"Port {setup.port}\n"
        f"User {setup.user}\n"
        f'Pass "{password}"\n'
        f"{tls} IMAPS\n"
        f"CertificateFile {setup.cafile}\n\n"
        "IMAPStore far\n"
        "Account bench\n\n"
        "MaildirStore near\n"
        f"Path {setup.dest}/\n"
        f"Inbox {setup.dest}/INBOX\n"
        "SubFolders Verbatim\n\n"
        "Channel bench\n"
        f"{far} :far:\n"
        f"{near} :near:\n"
        "Patterns *\n"
        f"Create {near}\n"
        "Expunge None\n"
        "SyncState *\n"
        "Sync Pull\n",
    )
    setup.dest.mkdir(parents=True, exist_ok=True)  # mbsync wants Path to exist
    return Command(["mbsync", "-q", "-c", str(conf), "-a"], _base_env(setup), setup.dest)


def offlineimap_imap(setup: Setup) -> Command:
    conf = setup.workdir / "offlineimaprc"
    meta = setup.workdir / "metadata"
    password = setup.password.replace("%", "%%")
    _write_private(
        conf,
        "# generated by bench/run.py\n"
        "[general]\n"
        "accounts = bench\n"
        f"metadata = {meta}\n"
        "fsync = true\n"
        "maxsyncaccounts = 1\n\n"
        "[Account bench]\n"
        "localrepository = local\n"
        "remoterepository = remote\n\n"
        "[Repository local]\n"
        "type = Maildir\n"
        f"localfolders = {setup.dest}\n"
        "sep = /\n\n"
        "[Repository remote]\n"
        "type = IMAP\n"
        # offlineimap checks only DNS names of the certificate (SAN DNS:localhost), not IP
        # addresses; localhost is 127.0.0.1 here, as the test server's certificate says.
        "remotehost = localhost\n"
        f"remoteport = {setup.port}\n"
        f"remoteuser = {setup.user}\n"
        f"remotepass = {password}\n"
        "ssl = yes\n"
        "starttls = no\n"
        f"sslcacertfile = {setup.cafile}\n"
        "maxconnections = 1\n"
        "readonly = True\n"
        "folderfilter = lambda name: True\n",
    )
    setup.dest.mkdir(parents=True, exist_ok=True)  # offlineimap wants localfolders to exist
    argv = ["offlineimap", "-c", str(conf), "-u", "quiet", "-o"]
    return Command(argv, _base_env(setup), setup.dest)


IMAP_TOOLS: dict[str, ToolFunc] = {
    "mailsync": mailsync_imap,
    "mbsync": mbsync_imap,
    "offlineimap": offlineimap_imap,
}

# -- IMAP to IMAP (--accounts migrate) ----------------------------------------------------
#
# Each tool moves the whole source account into an empty account on a second private
# Dovecot, one-way, every folder, flags and dates kept, with its default concurrency.

#: mailsync's command for a migration, the one place to change: `mailsync migrate` (the
#: one-way copy, then its check that every message is in DEST).
MAILSYNC_MIGRATE = ["migrate"]


def _imaps_url(host: str, port: int, user: str, cafile: Path) -> str:
    return f"imaps://{user}@{host}:{port}?cafile={cafile}"


def mailsync_migrate(setup: Setup, extra: list[str] | None = None) -> Command:
    """`mailsync migrate imaps://SOURCE imaps://DEST` (MAILSYNC_MIGRATE), each password from
    its own file through password_command (mailsync refuses MAILSYNC_PASSWORD for two
    stores)."""
    target = setup.target
    assert target is not None
    env = _base_env(setup)
    env["PYTHONPATH"] = str(setup.repo_root)
    urls = []
    for side, host, port, user, password, cafile in (
        ("source", setup.host, setup.port, setup.user, setup.password, setup.cafile),
        ("dest", target.host, target.port, target.user, target.password, target.cafile),
    ):
        secret = setup.workdir / f"{side}.password"
        _write_private(secret, password)
        command = quote(f"cat {secret}", safe="")
        urls.append(f"{_imaps_url(host, port, user, cafile)}&password_command={command}")
    argv = [
        sys.executable,
        "-m",
        "mailsync",
        "--state-dir",
        str(setup.workdir / "state"),
        "-q",
        *MAILSYNC_MIGRATE,
        "--no-progress",
        *(extra or []),
        *urls,
    ]
    return Command(argv, env, setup.dest)


def mbsync_migrate(setup: Setup) -> Command:
    """An mbsync channel between two IMAPStores (Sync Pull, Create Near), its sync state
    in a directory of its own (SyncState * is for Maildir stores only)."""
    target = setup.target
    assert target is not None
    major_minor = _mbsync_version()[:2]
    far, near = ("Far", "Near") if major_minor >= (1, 4) else ("Master", "Slave")
    tls = "TLSType" if major_minor >= (1, 5) else "SSLType"
    state = setup.workdir / "mbsync-state"
    state.mkdir(parents=True, exist_ok=True)
    accounts = []
    for name, port, user, password, cafile in (
        ("src", setup.port, setup.user, setup.password, setup.cafile),
        ("dst", target.port, target.user, target.password, target.cafile),
    ):
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        accounts.append(
            f"IMAPAccount {name}\nHost localhost\nPort {port}\nUser {user}\n"
            f'Pass "{quoted}"\n{tls} IMAPS\nCertificateFile {cafile}\n\n'
            f"IMAPStore {name}\nAccount {name}\n\n"
        )
    conf = setup.workdir / "mbsyncrc"
    _write_private(
        conf,
        f"# generated by bench/run.py for isync {'.'.join(map(str, _mbsync_version()))}\n"
        + "".join(accounts)
        + "Channel bench\n"
        f"{far} :src:\n"
        f"{near} :dst:\n"
        "Patterns *\n"
        f"Create {near}\n"
        "Expunge None\n"
        f"SyncState {state}/\n"
        "Sync Pull\n",
    )
    return Command(["mbsync", "-q", "-c", str(conf), "-a"], _base_env(setup), setup.dest)


def offlineimap_migrate(setup: Setup) -> Command:
    """offlineimap with two IMAP repositories (remote to remote): the source read-only."""
    target = setup.target
    assert target is not None
    conf = setup.workdir / "offlineimaprc"
    repos = []
    for name, port, user, password, cafile, extra in (
        ("src", setup.port, setup.user, setup.password, setup.cafile, "readonly = True\n"),
        ("dst", target.port, target.user, target.password, target.cafile, ""),
    ):
        repos.append(
            f"[Repository {name}]\ntype = IMAP\nremotehost = localhost\n"
            f"remoteport = {port}\nremoteuser = {user}\n"
            f"remotepass = {password.replace('%', '%%')}\nssl = yes\nstarttls = no\n"
            f"sslcacertfile = {cafile}\nmaxconnections = 1\n{extra}"
            "folderfilter = lambda name: True\n\n"
        )
    _write_private(
        conf,
        "# generated by bench/run.py\n"
        "[general]\n"
        "accounts = bench\n"
        f"metadata = {setup.workdir / 'metadata'}\n"
        "fsync = true\n"
        "maxsyncaccounts = 1\n\n"
        "[Account bench]\n"
        "localrepository = dst\n"
        "remoterepository = src\n\n" + "".join(repos),
    )
    argv = ["offlineimap", "-c", str(conf), "-u", "quiet", "-o"]
    return Command(argv, _base_env(setup), setup.dest)


MIGRATE_TOOLS: dict[str, ToolFunc] = {
    "mailsync": mailsync_migrate,
    "mbsync": mbsync_migrate,
    "offlineimap": offlineimap_migrate,
}

# -- POP3 -------------------------------------------------------------------------------
#
# Both tools pull the INBOX over pop3s (verified against the private CA) into
# DEST/INBOX/{cur,new,tmp} and keep what they have seen (mailsync in its --state-dir,
# getmail in the oldmail-* file of its --getmaildir), so the rerun fetches nothing.
#
# Durability, checked in getmail6 6.18.11 (Debian 12, getmailcore/utilities.py,
# deliver_maildir): every message is written to tmp/, flushed and fsync()ed, then
# link()ed into new/ and unlinked from tmp/; the directories new/ and tmp/ are never
# fsynced, so a crash can still lose the link.  Each delivery runs in a fork()ed child
# (destinations.Maildir, ForkingBase).  The oldmail file is written once, at the end of
# the session (to_oldmail_on_each_mail defaults to false), through a temporary file that
# is fsynced and renamed (utilities.updatefile).  mailsync fsyncs every message before
# recording it.  So both are durable per message; getmail pays a fork per message too.


BENCH_USER = "mailsyncbench"  # getmail6 refuses to deliver into a Maildir as root


def bench_user() -> tuple[int, int]:
    """(uid, gid) of the unprivileged user the POP peers run as, created when missing."""
    import pwd

    try:
        pw = pwd.getpwnam(BENCH_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", BENCH_USER],
            capture_output=True,
            check=False,
        )  # fmt: skip
        pw = pwd.getpwnam(BENCH_USER)  # KeyError here: useradd failed (not root?)
    return pw.pw_uid, pw.pw_gid


def _run_as(uid: int, gid: int) -> list[str]:
    """An argv prefix that drops to uid/gid and execs the rest, environment untouched
    (setpriv execs directly: no PAM session, no extra process)."""
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    return ["runuser", "-u", BENCH_USER, "--"]


def _check_reachable(path: Path, uid: int, gid: int) -> None:
    """Every ancestor of path must be searchable by uid/gid (world or group x)."""
    import stat

    for d in path.parents:
        st = d.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise PermissionError(f"{d} is not searchable by {BENCH_USER}; chmod o+x {d}")


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def mailsync_pop(setup: Setup, extra: list[str] | None = None) -> Command:
    return _mailsync_pull(setup, "pop3s", extra)


def getmail_pop(setup: Setup) -> Command:
    """getmail6 run as BENCH_USER, with a generated getmailrc in its own --getmaildir
    (which also holds its oldmail file).  Its Delivered-To: and Received: lines are off,
    to keep the stored bytes close to the server's; getmail still rewrites Return-Path:
    and re-serialises every message with Python's email package, refolding long header
    lines, so most files differ by a few bytes.  Everything else is getmail's default."""
    uid, gid = bench_user()
    _check_reachable(setup.workdir, uid, gid)
    getmaildir = setup.workdir / "getmail"
    getmaildir.mkdir(parents=True, exist_ok=True)
    cafile = setup.workdir / "ca.crt"  # a copy the unprivileged user can surely read
    shutil.copyfile(setup.cafile, cafile)
    inbox = setup.dest / "INBOX"
    for sub in ("cur", "new", "tmp"):  # getmail delivers only into an existing Maildir
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    rc = getmaildir / "getmailrc"
    _write_private(
        rc,
        "# generated by bench/run.py\n"
        "[retriever]\n"
        "type = SimplePOP3SSLRetriever\n"
        "timeout = 30\n"  # bounds the stall of GETMAIL_FORK_RACE (default 180 s)
        f"server = {setup.host}\n"
        f"port = {setup.port}\n"
        f"username = {setup.user}\n"
        f"password = {setup.password}\n"  # RawConfigParser: no % interpolation
        f"ca_certs = {cafile}\n\n"
        "[destination]\n"
        "type = Maildir\n"
        f"path = {inbox}/\n\n"
        "[options]\n"
        "read_all = false\n"
        "delete = false\n"
        "verbose = 0\n"
        "delivered_to = false\n"
        "received = false\n",
    )
    env = _base_env(setup)  # creates workdir/home
    for path in (setup.workdir, setup.dest):
        _chown_tree(path, uid, gid)
    argv = [*_run_as(uid, gid), "getmail", f"--getmaildir={getmaildir}", f"--rcfile={rc}"]
    notes = [f"runs as {BENCH_USER} (getmail6 refuses to deliver as root)"]
    return Command(argv, env, setup.dest, notes, GETMAIL_FORK_RACE, GETMAIL_FORK_RACE_WHY)


# getmail6 6.18.11 (Debian 12's) forks a child per delivery and only then installs its
# SIGCHLD handler (baseclasses.ForkingBase.forkchild): a child that exits before the
# handler is in place, or before the parent waits, is never noticed, and getmail gives
# up after `timeout` seconds with "waiting child pid N timed out" (here: once in about
# 12,000 deliveries).  Upstream issue getmail6/getmail6#226 (against 6.19.05); newer
# getmail6 forks through multiprocessing instead.  `timeout = 30` in the getmailrc
# bounds the stall (default 180 s); run.py retries such a pull from an empty tree.
GETMAIL_FORK_RACE = re.compile(r"waiting child pid \d+ timed out")
GETMAIL_FORK_RACE_WHY = "getmail6's fork/SIGCHLD race (a known bug: child never reaped)"


POP_TOOLS: dict[str, ToolFunc] = {
    "mailsync": mailsync_pop,
    "getmail": getmail_pop,
}

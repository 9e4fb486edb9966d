"""Running a mail server from Debian packages that are extracted, not installed.

Cyrus and Courier (tests/servers/cyrus.py, courier.py) cannot be installed beside
dovecot-imapd: their packages conflict (all provide ``imap-server``).  ``make
test-servers`` therefore only downloads them (``apt-get download``) and unpacks them with
``dpkg-deb -x`` into ``.test-servers/root`` (``MAILSYNC_TEST_SERVERS`` names another
directory), installing just the shared libraries and tools they need with apt.

The unpacked programs keep the paths they were built with (Courier's authlib reads
``/etc/courier/authdaemonrc``, connects to ``/run/courier/authdaemon/socket`` and loads
modules from ``/usr/lib/courier-authlib``; none of that can be configured).  So each
server runs in private mount and PID namespaces (``unshare --mount --pid --fork``, root
only), where:

* ``/usr`` is an overlay of the unpacked ``usr/`` on the real one, so every program is
  found where the package put it;
* directories named in ``layers`` (``/etc``, ``/run``, ...) are overlays of a private
  directory on the real one, which adds entries without changing anything outside;
* ``binds`` then mount private, writable directories (or files) over those entries;
* ``/dev/log`` is a socket read by a small process that appends each syslog line to
  ``syslog.log`` in the work directory (Cyrus logs only to syslog).

Nothing is changed on the machine itself: the mounts exist only in the namespace and
vanish with it.  The namespace's first process dies with ``unshare`` (``--kill-child``),
and every other process in it dies with that one, so stopping the server is one SIGKILL
and nothing survives it; if pytest itself is killed, ``unshare`` gets SIGKILL
(PR_SET_PDEATHSIG) and the same follows.  (``unshare --fork`` ignores SIGTERM, hence
SIGKILL.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1

# The syslog reader started inside the namespace: one datagram, one line.
_SYSLOG_SINK = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)  # servers log after dropping root
with open(sys.argv[2], "ab", buffering=0) as log:
    while True:
        log.write(sock.recv(65536).rstrip(b"\\0\\n") + b"\\n")
"""


class ServerError(RuntimeError):
    """A private server could not be started, or one of its tools failed."""


@dataclass
class User:
    """A mail account on a private server; ``maildir`` is where its mail lives on disk
    when the server keeps Maildirs (Courier), else None (Cyrus)."""

    name: str
    password: str
    maildir: Path | None = None


def packages_root() -> Path:
    """Where ``make test-servers`` unpacked the packages (``usr/``, ``etc/`` below it)."""
    override = os.environ.get("MAILSYNC_TEST_SERVERS")
    base = Path(override) if override else REPO_ROOT / ".test-servers"
    return base / "root"


def package_versions() -> dict[str, str]:
    """package -> Debian version, as recorded by ``make test-servers``."""
    versions = {}
    try:
        text = (packages_root().parent / "VERSIONS").read_text()
    except OSError:
        return versions
    for line in text.splitlines():
        if line.strip():
            name, _, version = line.partition(" ")
            versions[name] = version.strip()
    return versions


def missing_reason(*programs: str) -> str | None:
    """Why a server made of `programs` (paths below the packages root) cannot run here,
    or None."""
    root = packages_root()
    if any(c in str(root) for c in ":,"):  # they would split mount's lowerdir= option
        return f"{root} contains ':' or ',', which an overlay mount cannot take"
    absent = [p for p in programs if not (root / p.lstrip("/")).exists()]
    if absent:
        return (
            f"{', '.join(absent)} not unpacked under {root} "
            "(run `make test-servers` as root: it downloads and unpacks the packages)"
        )
    if os.geteuid() != 0:
        return "the tests must run as root to start it in private namespaces"
    for tool in ("unshare", "nsenter"):
        if not any(Path(d, tool).exists() for d in ("/usr/bin", "/bin")):
            return f"{tool} (util-linux) is missing"
    return None


def unavailable(what: str, reason: str) -> None:
    """Skip the test, or fail it under CI=true, where every server must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"private {what} unavailable: {reason}", pytrace=False)
    pytest.skip(f"private {what} unavailable: {reason}")


def _kill_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def _alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def processes_mentioning(text: str) -> list[str]:
    """The command lines of running processes that contain `text` (ps would cut them)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args.strip())
    return found


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


class Sandbox:
    """A set of processes started by one shell script in private namespaces (see the
    module docstring).  `workdir` holds everything; `layers` maps a real directory to a
    private one overlaid on it; `binds` maps a path inside the namespace to the private
    file or directory mounted there (after the overlays)."""

    def __init__(
        self,
        workdir: Path,
        *,
        layers: dict[str, Path] | None = None,
        binds: dict[str, Path] | None = None,
    ):
        self.workdir = workdir
        self.layers = dict(layers or {})
        self.binds = dict(binds or {})
        self.stdout_path = workdir / "server.out"
        self.syslog_path = workdir / "syslog.log"
        self._syslog_socket = workdir / "syslog.sock"
        self._dev_layer = workdir / "layer-dev"
        self.proc: subprocess.Popen[bytes] | None = None
        self._init_pid = 0

    def _preamble(self) -> str:
        q = shlex.quote
        root = packages_root()
        self._dev_layer.mkdir(exist_ok=True)
        (self._dev_layer / "log").touch()
        lines = [
            "set -e",
            f"mount -t overlay overlay -o lowerdir={q(str(root / 'usr'))}:/usr /usr",
            f"mount -t overlay overlay -o lowerdir={q(str(self._dev_layer))}:/dev /dev",
        ]
        for target, layer in self.layers.items():
            lines.append(f"mount -t overlay overlay -o lowerdir={q(str(layer))}:{target} {target}")
        for target, source in self.binds.items():
            lines.append(f"mount --bind {q(str(source))} {q(target)}")
        sink = q(_SYSLOG_SINK)
        sock, log = q(str(self._syslog_socket)), q(str(self.syslog_path))
        lines += [
            f"rm -f {sock}",
            # In a subshell, so that it is no job of the script's `wait`.
            f"({q(sys.executable)} -c {sink} {sock} {log} &)",
            f"while [ ! -S {sock} ]; do sleep 0.01; done",
            f"mount --bind {sock} /dev/log",
            "set +e",
        ]
        return "\n".join(lines) + "\n"

    def start(self, daemons: dict[str, str], ports: list[int], *, setup: str = "") -> None:
        """Run `setup` (shell, after the mounts), then each of `daemons` (name -> shell
        command that stays in the foreground) in the background, and wait until every
        port in `ports` accepts connections; ServerError if a daemon exits first.

        The script itself stays the namespace's first process, waiting: had it exec'd a
        daemon, the kernel would clear that one's parent-death signal as soon as it
        changed its user ids (Cyrus' master does), and nothing would stop the namespace
        when unshare dies."""
        q = shlex.quote
        exited = self.workdir / "exited"
        exited.unlink(missing_ok=True)
        body = "".join(
            f"({command}\necho {q(name)} exited with status $? >> {q(str(exited))}) &\n"
            for name, command in daemons.items()
        )
        script = self.workdir / "start.sh"
        script.write_text(f"{self._preamble()}{setup}\n{body}wait\n")
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "/bin/sh",
                    str(script),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_kill_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT
        waiting = set(ports)
        while waiting:
            if exited.exists():
                raise ServerError(exited.read_text().strip())
            if self.proc.poll() is not None:
                if exited.exists():  # the script ends once its daemons have
                    raise ServerError(exited.read_text().strip())
                raise ServerError(f"the server's script exited with status {self.proc.returncode}")
            waiting = {port for port in waiting if not port_open(port)}
            if waiting:
                if time.monotonic() > deadline:
                    raise ServerError(f"ports {sorted(waiting)} not open in {START_TIMEOUT:.0f} s")
                time.sleep(0.02)
        self._init_pid = self._namespace_pid()

    def _namespace_pid(self, proc: subprocess.Popen[bytes] | None = None) -> int:
        """The host pid of the namespace's first process (unshare's only child)."""
        proc = proc or self.proc
        assert proc is not None
        pid = proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) != 1:
            raise ServerError(f"unshare {pid} has children {children}, expected one")
        return int(children[0])

    def run(self, *command: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`command` in the server's mount namespace (its /usr, /etc, ...), as root;
        ServerError with its output when it fails."""
        proc = subprocess.run(
            ["nsenter", "--target", str(self._init_pid), "--mount", "--", *command],
            input=input,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ServerError(
                f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if not self._init_pid:  # a start that failed before it was known
                with contextlib.suppress(OSError, ServerError):
                    self._init_pid = self._namespace_pid(proc)
            proc.kill()  # --kill-child takes the namespace's first process, the kernel the rest
        proc.wait()
        # Wait (briefly) for the namespace's first process to die, so its ports and files
        # are free when stop() returns.  Orphaned, it may stay a zombie for a while.
        deadline = time.monotonic() + 5
        while self._init_pid and _alive(self._init_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._init_pid = 0

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for path in (self.stdout_path, self.syslog_path):
            try:
                content = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if content:
                text += f"--- {path} (last {lines} lines) ---\n"
                text += "\n".join(content[-lines:]) + "\n"
        return text or "(the server wrote no log)"

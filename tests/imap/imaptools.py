"""Helpers for the IMAP tests: run mailsync, seed and read a server, read a Maildir."""

from __future__ import annotations

import base64
import imaplib
import os
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner, Result
from imapclient import IMAPClient

from mailsync.cli import cli
from mailsync.message import STANDARD_FLAGS, to_lf

LETTERS = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered", "S": "\\Seen"}
LETTERS["T"] = "\\Deleted"


@dataclass(frozen=True)
class Msg:
    body: bytes  # LF line ends (what mailsync keeps locally)
    flags: frozenset[str] = frozenset()
    date: datetime | None = None

    @property
    def wire(self) -> bytes:
        return self.body.replace(b"\n", b"\r\n")


# -- running mailsync ---------------------------------------------------------------------


def run(*args: str, password: str | None = None, env: dict | None = None) -> Result:
    """mailsync in-process (click's CliRunner); the password via MAILSYNC_PASSWORD."""
    environ = dict(env or {})
    if password is not None:
        environ["MAILSYNC_PASSWORD"] = password
    return CliRunner().invoke(cli, [str(a) for a in args], env=environ, catch_exceptions=False)


def run_process(
    *args: str,
    password: str,
    state: Path,
    crash_at: int = 0,
    timeout: float = 60,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """mailsync as a real process (python -m mailsync)."""
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(state),
        "MAILSYNC_PASSWORD": password,
        "MAILSYNC_CRASH_AT": str(crash_at or ""),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "mailsync", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_MEASURED = """
import sys, tracemalloc
from mailsync.cli import cli

tracemalloc.start()
try:
    cli.main(args=sys.argv[2:], prog_name="mailsync")
finally:
    with open(sys.argv[1], "w") as out:
        out.write(str(tracemalloc.get_traced_memory()[1]))
"""


def run_measured(
    *args: str, password: str, home: Path, timeout: float = 60
) -> tuple[subprocess.CompletedProcess, int]:
    """mailsync as a real process -> (its result, the peak of the memory Python allocated
    in it after start-up, in bytes: tracemalloc counts a buffer when it is allocated,
    whether or not its pages are touched).  XDG_* under `home`.  The process is killed
    after `timeout` seconds (subprocess.TimeoutExpired): a hang fails the test instead
    of stalling the suite."""
    peak_file = home / "peak"
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "MAILSYNC_PASSWORD": password,
    }
    for name in ("MAILSYNC_PASSWORD_COMMAND", "MAILSYNC_CRASH_AT", "MAILSYNC_NOW"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(peak_file), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    peak = int(peak_file.read_text()) if peak_file.exists() else -1
    return result, peak


class CommandSpy:
    """Records every IMAP command mailsync's connections send (imaplib level), the
    APPENDs sent pipelined (_GuardedIMAP4.append_pipelined, past imaplib) included."""

    def __init__(self, monkeypatch):
        from mailsync.stores.imap_wire import _GuardedIMAP4

        self.commands: list[str] = []
        original = imaplib.IMAP4._command
        original_pipelined = _GuardedIMAP4.append_pipelined
        spy = self

        def append_pipelined(imap, mailbox, messages, answers):
            name = mailbox.decode("ascii", "replace") if isinstance(mailbox, bytes) else mailbox

            def counted():
                for message in messages:  # (an iterator: each counted as it is sent)
                    spy.commands.append(f"APPEND {name}".upper())
                    yield message

            return original_pipelined(imap, mailbox, counted(), answers)

        monkeypatch.setattr(_GuardedIMAP4, "append_pipelined", append_pipelined)

        def _command(imap, name, *args):
            words = [name]
            for arg in args[:3]:
                if isinstance(arg, bytes):
                    arg = arg.decode("ascii", "replace")
                if isinstance(arg, str):
                    words.append(arg)
            spy.commands.append(" ".join(words).upper())
            return original(imap, name, *args)

        monkeypatch.setattr(imaplib.IMAP4, "_command", _command)

    def count(self, *names: str) -> int:
        return sum(1 for c in self.commands if c.split()[0] in names)

    def clear(self) -> None:
        self.commands.clear()


# -- server side --------------------------------------------------------------------------


def connect(server, user, *, tls: bool = False) -> IMAPClient:
    client = server.imap(user, tls=tls)
    client.normalise_times = False
    return client


def seed(server, user, folders: dict[str, list[Msg]]) -> None:
    with connect(server, user) as client:
        existing = {name for _, _, name in client.list_folders()}
        for folder, messages in folders.items():
            if folder not in existing:
                client.create_folder(folder)
            for msg in messages:
                client.append(folder, msg.wire, flags=sorted(msg.flags), msg_time=msg.date)


def server_messages(client: IMAPClient, folder: str) -> dict[int, Msg]:
    info = client.select_folder(folder, readonly=True)
    out = {}
    if not info[b"EXISTS"]:
        return out
    data = client.fetch(client.search(["ALL"]), ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])
    for uid, item in data.items():
        flags = frozenset(
            f.decode() if isinstance(f, bytes) else f
            for f in item[b"FLAGS"]
            if f not in (b"\\Recent", "\\Recent")
        )
        out[uid] = Msg(to_lf(item[b"BODY[]"]), flags, item[b"INTERNALDATE"])
    return out


def server_folders(client: IMAPClient) -> list[str]:
    return sorted(
        name
        for flags, _, name in client.list_folders()
        if b"\\Noselect" not in flags and b"\\NonExistent" not in flags
    )


def server_contents(server, user, *, std_only: bool = True) -> dict[str, Counter]:
    """folder -> Counter of (body LF, flags, INTERNALDATE seconds)."""
    out = {}
    with connect(server, user) as client:
        for folder in server_folders(client):
            messages = server_messages(client, folder)
            out[folder] = Counter(
                (
                    m.body,
                    m.flags & STANDARD_FLAGS if std_only else m.flags,
                    int(m.date.timestamp()),
                )
                for m in messages.values()
            )
    return out


def server_bodies(server, user) -> dict[str, Counter]:
    return {
        folder: Counter(body for body, _, _ in items.elements())
        for folder, items in server_contents(server, user).items()
    }


# -- local side ---------------------------------------------------------------------------


def maildir_files(root: Path) -> dict[str, list[Path]]:
    """folder -> message files, for a verbatim-layout Maildir tree."""
    out: dict[str, list[Path]] = {}
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
        path = Path(dirpath)
        if (path / "cur").is_dir() and (path / "new").is_dir():
            name = path.relative_to(root).as_posix()
            out[name] = [p for sub in ("cur", "new") for p in sorted((path / sub).iterdir())]
    return out


def file_flags(path: Path) -> frozenset[str]:
    _, sep, info = path.name.rpartition(":2,")
    return frozenset(LETTERS[c] for c in info if c in LETTERS) if sep else frozenset()


def maildir_contents(root: Path) -> dict[str, Counter]:
    """folder -> Counter of (body, flags, mtime seconds)."""
    return {
        folder: Counter((p.read_bytes(), file_flags(p), int(p.stat().st_mtime)) for p in files)
        for folder, files in maildir_files(root).items()
    }


def maildir_bodies(root: Path) -> dict[str, Counter]:
    return {
        folder: Counter(p.read_bytes() for p in files)
        for folder, files in maildir_files(root).items()
    }


def count_files(root: Path) -> int:
    return sum(len(files) for files in maildir_files(root).values())


def write_local(root: Path, folder: str, body: bytes, flags: str = "", mtime: float = 0) -> Path:
    """A message written by a 'mail reader' into a Maildir folder."""
    base = root / folder
    for sub in ("cur", "new", "tmp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    name = f"{random.getrandbits(48):x}.test"
    path = base / ("cur" if flags else "new") / (name + (f":2,{flags}" if flags else ""))
    path.write_bytes(body)
    if mtime:
        os.utime(path, (mtime, mtime))
    return path


def state_flags(state_home: Path) -> list[frozenset[str]]:
    """Every pair's recorded flags, over all state files under XDG_STATE_HOME."""
    out = []
    for db in (state_home / "mailsync").glob("*.db"):
        con = sqlite3.connect(db)
        try:
            out += [frozenset(row[0].split()) for row in con.execute("SELECT flags FROM pairs")]
        finally:
            con.close()
    return out


# -- sample mail --------------------------------------------------------------------------


def message(n: int, subject: str = "", extra: bytes = b"", *, sender="a@example.org") -> bytes:
    subject = subject or f"message {n}"
    return (
        (
            f"From: {sender}\nTo: b@example.org\nSubject: {subject}\n"
            f"Message-ID: <{n}.{subject.replace(' ', '-')}@example.org>\n"
            f"Date: Mon, 4 Mar 2019 05:06:07 +0000\n\n"
        ).encode()
        + b"Body of message %d.\n" % n
        + extra
    )


def big_attachment(megabytes: int = 5, seed: int = 7) -> bytes:
    data = random.Random(seed).randbytes(megabytes * 1024 * 1024)
    encoded = base64.encodebytes(data)
    return (
        b"From: big@example.org\nTo: b@example.org\nSubject: a big attachment\n"
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XYZ\n\n"
        b"--XYZ\nContent-Type: text/plain\n\nsee attached\n"
        b"--XYZ\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        + encoded
        + b"--XYZ--\n"
    )


def when(year, month=1, day=1, hour=12, minute=0, second=0, offset_hours=0) -> datetime:
    tz = UTC if not offset_hours else timezone(timedelta(hours=offset_hours))
    return datetime(year, month, day, hour, minute, second, tzinfo=tz)


@dataclass
class Corpus:
    folders: dict[str, list[Msg]] = field(default_factory=dict)

    def count(self) -> int:
        return sum(len(v) for v in self.folders.values())


def rich_corpus(big: bool = True) -> Corpus:
    """Several folders (nested, non-ASCII), flags with a keyword, dates with offsets,
    'From ' lines, 8-bit headers, no final newline, duplicates, a 5 MB attachment."""
    inbox = [
        Msg(message(1), frozenset({"\\Seen"}), when(2019, 3, 4, 5, 6, 7)),
        Msg(
            message(2, "from lines", b"From the start of a line\n>From quoted\nFrom \n"),
            frozenset({"\\Flagged", "\\Answered", "$Forwarded", "work"}),
            when(2020, 12, 31, 23, 59, 59, offset_hours=-5),
        ),
        Msg(
            "From: Zoë Müller <zoe@example.de>\nSubject: Grüße aus Köln ✓\n\nÄpfel\n".encode(),
            frozenset({"\\Draft"}),
            when(2001, 1, 1, 0, 0, 0, offset_hours=9),
        ),
        Msg(b"Subject: no final newline\n\nlast line without newline", frozenset(), when(2015)),
        Msg(message(1), frozenset(), when(2019, 3, 5)),  # same bytes as the first: both kept
        Msg(message(6, "already deleted"), frozenset({"\\Deleted", "\\Seen"}), when(2021)),
    ]
    if big:
        inbox.append(Msg(big_attachment(), frozenset({"\\Seen"}), when(2022, 6, 1)))
    return Corpus(
        {
            "INBOX": inbox,
            "Archive/2019": [
                Msg(message(100 + i, f"archived {i}"), frozenset({"\\Seen"}), when(2019, 1, i + 1))
                for i in range(3)
            ],
            "Entwürfe": [
                Msg(message(200, "Entwurf"), frozenset({"\\Draft"}), when(2023, 2, 2)),
                Msg(message(201, "Entwurf zwei"), frozenset({"\\Draft", "$Label1"}), when(2023)),
            ],
            "Sent": [
                Msg(message(300 + i, f"sent {i}"), frozenset({"\\Seen"}), when(2018, 5, i + 1))
                for i in range(2)
            ],
        }
    )


def expected(corpus: Corpus) -> dict[str, Counter]:
    """What a Maildir pulled from `corpus` holds: folder -> (body, std flags, seconds)."""
    return {
        folder: Counter(
            (m.body, m.flags & STANDARD_FLAGS, int(m.date.timestamp())) for m in messages
        )
        for folder, messages in corpus.folders.items()
    }

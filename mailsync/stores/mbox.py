"""mbox store: one mboxrd file per folder.

Layout under the root directory (Thunderbird style, so a folder and its subfolders can
both exist)::

    ROOT/INBOX          folder INBOX
    ROOT/A              folder A
    ROOT/A.sbd/B        folder A/B

Reading also accepts plain directories (mutt style: ``ROOT/lists/foo`` is ``lists/foo``),
and a root that is itself an mbox file is a store holding just INBOX.  A file that holds
mail but does not start with a From_ line (headers first, or text before the first From_
line; see classify()) is a folder too: its messages are read from the first From_ line
on, and its listing reports the bytes before it as a problem (exit 1) until the file is
fixed; rewrites keep them.  A Maildir, an unreadable directory or a mail file with an
unusable name inside the tree is a problem of the store: nothing is left out silently.

Format (mboxrd, reversible): a message is written as ``From SENDER ASCTIME\\n``, the
body with every line matching ``^>*From `` given one more ``>``, then one ``\\n``.  The
one change to a body: a message that does not end in a newline gets one (stored_form),
so a blank line always comes before the next From_ line, as mboxrd readers (GNU
mailutils) need; every other byte reads back as it was given.  Reading splits at lines
starting with ``From ``, strips that one ``\\n`` from each chunk and takes one ``>`` off
every ``^>+From `` line.  Files whose lines end in CRLF are read as LF.  The one message
LF framing cannot carry, one whose every line ends in CR CR LF (so still in CR after
CRLF -> LF), is written framed in CRLF instead.

Keys are content hashes: the first message with body hash ``h`` is ``h``, further
identical copies are ``h.1``, ``h.2``... in file order, so keys survive rewrites.  mbox
cannot keep flags without rewriting messages, so ``persists`` is false for every flag;
``list`` still reports the read state found in ``Status:``/``X-Status:`` headers.

Appends go to the end of the file under a journal (``.NAME.mailsync-journal`` holds the
size before the batch) so that a crash can be undone; deletions are batched and applied
by one rewrite (``.NAME.mailsync-new`` renamed over the file) in ``flush``.  Every access
holds a kernel lock (lockf and flock) and a ``FILE.lock`` dotlock, like mutt and Python's
``mailbox`` module.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import mmap
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mailsync import files
from mailsync.errors import ConfigError, FolderError, MessageError, RenameRefused, StoreError
from mailsync.message import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    SEEN,
    Info,
    fingerprint,
    header_value,
    to_lf,
)
from mailsync.stores.base import MAX_FOLDER_DEPTH, Folder, Store, path_creation_problem

__all__ = ["MboxStore", "MboxFolder"]

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".mailsync-journal"
NEW_SUFFIX = ".mailsync-new"
SUBDIR_SUFFIX = ".sbd"
LOCK_SUFFIX = ".lock"
COPY_BLOCK = 1 << 20
_MAX_TIME = 253402300799  # 9999-12-31 23:59:59 UTC: asctime keeps a four-digit year

# "\n" first rather than "^" with re.M: the regex engine then skips ahead to each newline.
_QUOTE = re.compile(rb"\n(?=>*From )")
_UNQUOTE = re.compile(rb"\n>(?=>*From )")
_QUOTED_START = re.compile(rb">*From ")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_STATUS = re.compile(rb"^(x-)?status:[ \t]*([^\r\n]*)", re.I | re.M)
_MONTHS = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}
_FROM_DATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s+(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb"\s+(\d{1,2})\s+(\d{1,2}):(\d\d)(?::(\d\d))?\s+"
    rb"(?:([+-]\d{4})\s+|[A-Za-z]{1,5}\s+)?(\d{4})(?:\s+([+-]\d{4}))?"
)
_STATUS_FLAGS = {"R": SEEN}
_X_STATUS_FLAGS = {"A": ANSWERED, "F": FLAGGED, "T": DRAFT, "D": DELETED}


# --- the format ----------------------------------------------------------------------


def quote(body: bytes) -> bytes:
    """mboxrd quoting: every line matching ``^>*From `` gets one more ``>``."""
    if b"From " not in body:
        return body
    out = _QUOTE.sub(b"\n>", body)
    return b">" + out if _QUOTED_START.match(out) else out


def unquote(body: bytes) -> bytes:
    """Undo `quote`: every line matching ``^>+From `` loses one ``>``."""
    if b">From " not in body:
        return body
    out = _UNQUOTE.sub(b"\n", body)
    return out[1:] if out[:1] == b">" and _QUOTED_START.match(out, 1) else out


def decode_chunk(raw: bytes, crlf_from: bool) -> bytes:
    """The message body from the bytes between its From_ line and the next one.

    One trailing line end is the separator and goes; the rest is unquoted.  The message
    is read as CRLF (and turned into LF) when its From_ line ends in CRLF, or when its
    first line does and no line ends in a bare LF (Python's mailbox module writes CRLF
    messages under LF From_ lines).
    """
    inner = raw[:-1] if raw.endswith(b"\n") else raw
    crlf = crlf_from
    if not crlf:
        nl = inner.find(b"\n")
        crlf = nl > 0 and inner[nl - 1] == 13 and _BARE_LF.search(inner) is None
    if crlf:
        if raw.endswith(b"\r\n"):
            inner = raw[:-2]
        inner = to_lf(inner)
    return unquote(inner)


def from_line(body: bytes, arrival: float) -> tuple[bytes, int]:
    """``From SENDER ASCTIME\\n`` and the whole-second arrival it records."""
    seconds = _clamp_time(arrival)
    stamp = time.asctime(time.gmtime(seconds)).encode("ascii")
    return b"From " + _sender(body) + b" " + stamp + b"\n", seconds


def stored_form(body: bytes) -> bytes:
    """The body as an mbox keeps it: a message that does not end in a newline gets one,
    so that a blank line always comes before the next From_ line (mboxrd readers such as
    GNU mailutils do not see a From_ line that follows text directly).  The engine knows
    a copy changed this way again by message.tolerant_fingerprint()."""
    return body + b"\n" if body and not body.endswith(b"\n") else body


def format_message(body: bytes, arrival: float) -> tuple[bytes, int, bool]:
    """One message as it goes into the file (From_ line, quoted body, separator), the
    whole seconds its From_ line records, and whether it is framed in CRLF.

    A body whose every line still ends in CR (the message had CR CR LF line ends) would
    read back as a foreign CRLF message and lose those CRs, so it is written in CRLF
    throughout, From_ line included: every LF becomes CRLF, which reading undoes exactly.
    """
    line, seconds = from_line(body, arrival)
    quoted = quote(body)
    if b"\r\n" in body and decode_chunk(quoted + b"\n", False) != body:
        crlf = (line + quoted + b"\n").replace(b"\n", b"\r\n")
        return crlf, seconds, True
    return line + quoted + b"\n", seconds, False


def _clamp_time(arrival: float) -> int:
    try:
        if not math.isfinite(arrival):
            return int(time.time())
        return min(max(int(arrival), 0), _MAX_TIME)
    except (TypeError, ValueError, OverflowError):
        return int(time.time())


def _sender(body: bytes) -> bytes:
    value = header_value(body, "Return-Path")
    if value:
        value = value.strip()
        if value.startswith("<"):
            end = value.find(">")
            value = value[1:end] if end > 0 else ""
        if value and value.isascii() and value.isprintable() and " " not in value:
            return value.encode("ascii")
    return b"MAILER-DAEMON"


def parse_from_date(line: bytes) -> float | None:
    """The date of a From_ line (asctime, UTC unless it names an offset), or None."""
    match = _FROM_DATE.search(line)
    if not match:
        return None
    mon, day, hour, minute, sec, zone1, year, zone2 = match.groups()
    try:
        seconds = calendar.timegm(
            (int(year), _MONTHS[mon], int(day), int(hour), int(minute), int(sec or 0), 0, 0, 0)
        )
    except (ValueError, OverflowError):
        return None
    zone = zone1 or zone2
    if zone:
        sign = -1 if zone[:1] == b"-" else 1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)
    return float(seconds)


def header_flags(body: bytes) -> frozenset[str]:
    """Flags from mutt/mailbox-style ``Status:`` (R) and ``X-Status:`` (A F T D) headers."""
    if body[:1] == b"\n":
        return frozenset()
    end = body.find(b"\n\n")
    head = body if end < 0 else body[:end]
    if b"tatus:" not in head and b"TATUS:" not in head:
        return frozenset()
    flags = set()
    for match in _STATUS.finditer(head):
        table = _X_STATUS_FLAGS if match.group(1) else _STATUS_FLAGS
        for letter in match.group(2).decode("latin-1"):
            if letter in table:
                flags.add(table[letter])
    return frozenset(flags)


def parse_key(key: str) -> tuple[str, int] | None:
    """``h`` -> (h, 0), ``h.n`` -> (h, n); None for anything that is not one of our keys."""
    digest, dot, number = key.partition(".")
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
        return None
    if not dot:
        return digest, 0
    if not (number.isascii() and number.isdigit()) or number[0] == "0":
        return None
    return digest, int(number)


def make_key(digest: str, n: int) -> str:
    return digest if n == 0 else f"{digest}.{n}"


# --- small OS helpers --------------------------------------------------------------------


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        part = os.pread(fd, min(size, 1 << 30), offset)
        if not part:
            break
        parts.append(part)
        size -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# What tells a file that holds mail from any other file in an mbox tree (a Thunderbird
# .msf index, a filter list, notes): a From_ line with a date, or a message header.
_SNIFF_BYTES = 64 * 1024
_ANY_FROM_LINE = re.compile(rb"(?:^|\n)(From [^\n]*)")
_HEADER_FIELD = re.compile(rb"[!-9;-~]+:")
_MAIL_FIELD = re.compile(
    rb"^(?:from|date|received|return-path|message-id|delivered-to|subject|to)[ \t]*:",
    re.I | re.M,
)

MBOX, DAMAGED, UNREADABLE = "mbox", "damaged", "unreadable"


def classify(path: str) -> str | None:
    """What the file at `path` is to an mbox tree, from its first 64 KiB:

    * MBOX: empty, or starts with a ``From `` line;
    * DAMAGED: holds mail but does not start with a From_ line (a From_ line with a date
      further down, or message headers first): a folder whose listing reports the bytes
      before its first From_ line as a problem, so they are never dropped silently;
    * UNREADABLE: cannot be read (it may hold mail: a problem of the tree);
    * None: anything else (not mail), left alone.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return UNREADABLE
    if not head or head[:5] == b"From ":
        return MBOX
    for match in _ANY_FROM_LINE.finditer(head):
        if parse_from_date(match.group(1)) is not None:
            return DAMAGED
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")  # a byte-order mark, blank lines
    if text[:5] == b"From ":
        return DAMAGED
    if _HEADER_FIELD.match(text):
        end = text.find(b"\n\n")
        if _MAIL_FIELD.search(text if end < 0 else text[:end]):
            return DAMAGED
    return None


def _is_maildir_with_mail(path: str) -> bool:
    """A Maildir (cur/ and new/) with a message in it: mail that is no mbox folder."""
    if not all(os.path.isdir(os.path.join(path, sub)) for sub in ("cur", "new")):
        return False
    for sub in ("cur", "new"):
        try:
            with os.scandir(os.path.join(path, sub)) as entries:
                if any(not entry.name.startswith(".") for entry in entries):
                    return True
        except OSError:
            continue
    return False


def _shorten(text: str, limit: int = 80) -> str:
    """A long path cut for an error line (a tree 1,000 levels deep)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_part(part: str) -> str | None:
    """Why `part` cannot be one component of a folder name, or None."""
    if part in ("", ".", ".."):
        return "it has an empty, '.' or '..' part"
    if any(ord(c) < 32 or ord(c) == 127 for c in part):
        return "it contains control characters"
    if part.endswith(SUBDIR_SUFFIX):
        return f"a part ends in {SUBDIR_SUFFIX!r}, which marks subfolder directories"
    if part.startswith("."):
        return "a part starts with '.', which would make a hidden file"
    if part.endswith(LOCK_SUFFIX):
        return f"a part ends in {LOCK_SUFFIX!r}, which marks lock files"
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    return None


def split_name(name: str) -> list[str]:
    """The parts of a folder name; FolderError if the name is unusable."""
    if not name:
        raise FolderError("invalid folder name '': it is empty")
    if name.startswith("/"):
        raise FolderError(f"invalid folder name {name!r}: it starts with '/'")
    parts = name.split("/")
    if len(parts) > MAX_FOLDER_DEPTH:
        raise FolderError(
            f"invalid folder name {_shorten(name)!r}: it is nested {len(parts)} levels deep, "
            f"and mailsync handles folders at most {MAX_FOLDER_DEPTH} levels deep"
        )
    for part in parts:
        why = _bad_part(part)
        if why:
            raise FolderError(f"invalid folder name {name!r}: {why}")
    return parts


# --- the folder ------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Entry:
    start: int  # offset of the From_ line
    body: int  # offset of the first byte after the From_ line
    end: int  # offset of the next From_ line, or the end of the file
    crlf: bool  # the From_ line ends in CRLF
    digest: str  # sha256 of the body, hex
    lf_clean: bool  # the body holds no CRLF, so digest is also its fingerprint
    size: int
    flags: frozenset[str]
    arrival: float
    deleted: bool = False


class _Stale(Exception):
    """A body read without the dotlock did not match the index."""


def _entry(start, body_at, end, crlf, body, arrival) -> _Entry:
    return _Entry(
        start=start,
        body=body_at,
        end=end,
        crlf=crlf,
        digest=hashlib.sha256(body).hexdigest(),
        lf_clean=b"\r\n" not in body,
        size=len(body),
        flags=header_flags(body),
        arrival=arrival,
    )


class MboxFolder(Folder):
    normalises = True  # a message without a final newline gets one (stored_form)
    #: Seconds to wait for another program's lock before giving up (tests shrink it).
    LOCK_TIMEOUT = 10.0
    #: A dotlock older than this is left over from a crash and is removed.
    STALE_LOCK_AGE = 300.0
    LOCK_POLL = 0.05
    #: No cursor for a file changed less than this many seconds ago: a change within the
    #: filesystem's timestamp resolution could otherwise go unseen.
    CURSOR_SETTLE = 2.0

    def __init__(self, store: MboxStore, name: str, path: str):
        self.store = store
        self.name = name
        self.path = path
        self.validity = ""
        self.read_only = store.read_only
        self.dir, base = os.path.split(path)
        self.lock_path = path + LOCK_SUFFIX
        self.journal_path = os.path.join(self.dir, "." + base + JOURNAL_SUFFIX)
        self.new_path = os.path.join(self.dir, "." + base + NEW_SUFFIX)
        self._entries: list[_Entry] = []
        self._live: dict[str, list[_Entry]] = {}  # key hash -> live copies, file order
        self._stray = 0  # bytes before the first From_ line (a damaged file)
        self._stamp: tuple | None = None
        self._listed: tuple | None = None  # the stamp the last list() described
        self._limit: int | None = None  # read-only view of a file with a crash journal
        self._dotlocked = False
        self._batch_fd: int | None = None
        self._journaled = False
        self._appended = False
        self._pending_deletes = 0
        self._verify = False  # check bodies read against their hashes (see _reading)
        self._torn = False  # a failed append could not be undone: keep the journal
        if not self.read_only and (
            os.path.lexists(self.journal_path) or os.path.lexists(self.new_path)
        ):
            # Repair a crashed run's leftovers now rather than at the first read.
            with self._locked(exclusive=True):
                pass

    # --- Folder interface -----------------------------------------------------------
    def list(self) -> dict[str, Info]:
        def listing(fd: int) -> dict[str, Info]:
            out = {}
            seen: dict[str, int] = {}
            for e in self._entries:
                if e.deleted:
                    continue
                short = e.digest[:32]
                n = seen.get(short, 0)
                seen[short] = n + 1
                out[make_key(short, n)] = Info(e.flags, e.size, e.arrival)
            # A listing with changes not yet flushed describes no file on disk.
            self._listed = self._stamp if self._batch_fd is None else None
            self.problems = self._stray_problem()
            return out

        return self._reading(listing)

    # The file is the whole folder (flags included), so its identity, size and times
    # tell whether anything changed.
    _CURSOR_FIELDS = ("dev", "ino", "size", "mtime_ns", "ctime_ns")

    def cursor(self) -> dict:
        stamp = self._listed
        if stamp is None or stamp[5] is not None:
            return {}
        if time.time_ns() - max(stamp[3], stamp[4]) < self.CURSOR_SETTLE * 1e9:
            return {}
        return {"mbox": 1, **dict(zip(self._CURSOR_FIELDS, stamp[:5], strict=True))}

    def unchanged(self, cursor: dict) -> bool:
        if not cursor or cursor.get("mbox") != 1 or self._batch_fd is not None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        if os.path.lexists(self.journal_path):
            return False
        now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return now == tuple(cursor.get(k) for k in self._CURSOR_FIELDS)

    def fetch(self, key: str) -> bytes:
        return self._reading(lambda fd: self._read(fd, self._lookup(key)))

    def fingerprints(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(keys)

        def prints(fd: int) -> dict[str, str]:
            out = {}
            for key in keys:
                try:
                    e = self._lookup(key)
                except MessageError:
                    continue
                out[key] = e.digest if e.lf_clean else fingerprint(self._read(fd, e))
            return out

        return self._reading(prints)

    def append(self, data: bytes, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        body = stored_form(to_lf(bytes(data)))
        fd = self._begin()
        if self._torn:
            raise FolderError(f"could not undo a failed append to {self.path}; rerun to repair it")
        end = os.fstat(fd).st_size
        if not self._journaled:
            self._write_journal(fd, end)
        prefix = b"" if end == 0 or os.pread(fd, 1, end - 1) == b"\n" else b"\n"
        chunk, seconds, crlf = format_message(body, arrival)
        try:
            os.lseek(fd, end, os.SEEK_SET)
            files.write_all(fd, prefix + chunk)
        except OSError as exc:
            self._undo_append(fd, end)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise MessageError(f"disk full appending to {self.path}: free space and rerun")
            raise MessageError(f"cannot append to {self.path}: {exc.strerror or exc}")
        self._appended = True
        if prefix and self._entries:
            self._entries[-1].end += len(prefix)
        elif prefix:
            self._stray += len(prefix)  # it ends the bytes before the first From_ line
        start = end + len(prefix)
        line_len = chunk.index(b"\n") + 1
        # format_message() framed the body so that reading gives it back exactly.
        e = _entry(start, start + line_len, start + len(chunk), crlf, body, float(seconds))
        self._entries.append(e)
        copies = self._live.setdefault(e.digest[:32], [])
        copies.append(e)
        self._stamp = self._stamp_of(os.fstat(fd))
        return make_key(e.digest[:32], len(copies) - 1)

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        self._writable()  # mbox keeps no flags: the engine keeps them in its state

    def delete(self, key: str) -> str:
        self._writable()
        parsed = parse_key(key)
        if parsed is None:
            return key
        self._begin()
        digest, n = parsed
        copies = self._live_copies(digest)
        if n >= len(copies):
            return key  # already gone
        # Identical copies are interchangeable: the last one goes, so no other key moves.
        e = copies.pop()
        e.deleted = True
        self._pending_deletes += 1
        return make_key(digest, len(copies))

    def flush(self) -> None:
        fd = self._batch_fd
        if fd is None:
            return
        try:
            if self._appended:
                os.fsync(fd)
            if self._torn:
                self._stamp = None
                raise FolderError(
                    f"could not undo a failed append to {self.path}; rerun to repair the file"
                )
            if self._journaled:
                os.unlink(self.journal_path)
                files.fsync_dir(self.dir)
            if self._pending_deletes:
                self._rewrite(fd)
        except OSError as exc:
            self._stamp = None  # the index no longer says what is on disk: reread it
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FolderError(f"disk full writing {self.path}: free space and rerun")
            raise FolderError(f"cannot write {self.path}: {exc.strerror or exc}; rerun")
        finally:
            self._batch_fd = None
            self._journaled = self._appended = self._torn = False
            self._pending_deletes = 0
            self._release(fd)

    def persists(self, flag: str) -> bool:
        return False

    # --- index --------------------------------------------------------------------
    def _stamp_of(self, st: os.stat_result) -> tuple:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, self._limit)

    def _refresh(self, fd: int) -> None:
        if fd == self._batch_fd:
            return  # we hold the locks and made every change: the index is right
        st = os.fstat(fd)
        stamp = self._stamp_of(st)
        if stamp != self._stamp:
            self._parse(fd, st)
            self._stamp = stamp

    def _parse(self, fd: int, st: os.stat_result) -> None:
        size = st.st_size if self._limit is None else min(self._limit, st.st_size)
        entries: list[_Entry] = []
        if size:
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            try:
                pos = 0
                if mm[:5] != b"From ":
                    # A damaged file (see classify()): what comes before its first From_
                    # line is in no message; list() reports it, rewrites keep it.
                    first = mm.find(b"\nFrom ", 0, size)
                    pos = size if first < 0 else first + 1
                while pos < size:
                    line_end = mm.find(b"\n", pos, size)
                    if line_end < 0:
                        line, body_at, nxt = mm[pos:size], size, size
                    else:
                        line, body_at = mm[pos:line_end], line_end + 1
                        nxt = mm.find(b"\nFrom ", line_end, size)
                        nxt = size if nxt < 0 else nxt + 1
                    crlf = line.endswith(b"\r")
                    body = decode_chunk(mm[body_at:nxt], crlf)
                    arrival = parse_from_date(line)
                    if arrival is None:
                        arrival = float(st.st_mtime)
                    entries.append(_entry(pos, body_at, nxt, crlf, body, arrival))
                    pos = nxt
            finally:
                mm.close()
        self._set_entries(entries)
        self._stray = entries[0].start if entries else size

    def _stray_problem(self) -> list[str]:
        """The bytes before the first From_ line, as a problem of the listing."""
        if not self._stray:
            return []
        if not self._entries:
            return [
                f'{self.path} holds no "From " line, so none of its {self._stray} bytes is '
                'synced as mail; make it an mbox file (a "From " line before each message) '
                "or move it out of the tree"
            ]
        return [
            f'{self.path} does not start with a "From " line: its first {self._stray} bytes '
            'are in no message and are not synced; add a "From " line before them or move '
            "them out (the messages after them are synced)"
        ]

    def _set_entries(self, entries: list[_Entry]) -> None:
        self._entries = entries
        live: dict[str, list[_Entry]] = {}
        for e in entries:
            if not e.deleted:
                live.setdefault(e.digest[:32], []).append(e)
        self._live = live

    def _live_copies(self, short: str) -> list[_Entry]:
        return self._live.get(short, [])

    def _lookup(self, key: str) -> _Entry:
        parsed = parse_key(key)
        if parsed is not None:
            copies = self._live_copies(parsed[0])
            if parsed[1] < len(copies):
                return copies[parsed[1]]
        raise MessageError(f"{self.name}: message {key} is gone")

    def _read(self, fd: int, e: _Entry) -> bytes:
        body = decode_chunk(_pread_all(fd, e.end - e.body, e.body), e.crlf)
        if self._verify and hashlib.sha256(body).hexdigest() != e.digest:
            raise _Stale
        return body

    def _reading(self, op):
        """Run op(fd) on a current index.

        Taking the dotlock costs a file creation, too slow to pay per fetch.  So when
        the index still matches the file (same inode, size, mtime and ctime) and no
        dotlock or journal is there, op runs under a shared kernel lock only, and every
        body it reads is checked against its content hash: keys are content hashes, so
        a verified body is the right one whatever another program did.  Otherwise op
        runs under every lock on a freshly loaded index.
        """
        if self._batch_fd is None and self._stamp is not None:
            fd = self._quick_open()
            if fd is not None:
                self._verify = True
                try:
                    return op(fd)
                except (_Stale, OSError):
                    self._stamp = None  # reload the index under every lock
                finally:
                    self._verify = False
                    os.close(fd)
        with self._locked() as fd:
            try:
                self._refresh(fd)
                return op(fd)
            except OSError as exc:
                raise FolderError(f"cannot read {self.path}: {exc.strerror or exc}")

    def _quick_open(self) -> int | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if (
                self._stamp_of(os.fstat(fd)) == self._stamp
                and not os.path.lexists(self.lock_path)
                and not os.path.lexists(self.journal_path)
            ):
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    # --- writing --------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise FolderError(f"cannot change folder {self.name}: the mbox store is read-only")

    def _begin(self) -> int:
        """Start a write batch: take the locks until `flush` and load the index."""
        if self._batch_fd is None:
            fd = self._acquire(exclusive=True)
            try:
                self._refresh(fd)
            except OSError as exc:
                self._release(fd)
                raise FolderError(f"cannot read {self.path}: {exc.strerror or exc}")
            except BaseException:
                self._release(fd)
                raise
            self._batch_fd = fd
        return self._batch_fd

    def _write_journal(self, fd: int, size: int) -> None:
        ino = os.fstat(fd).st_ino
        try:
            files.write_in_place(self.journal_path, b"%d %d\n" % (size, ino))
            files.fsync_dir(self.dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(self.journal_path)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise MessageError(f"disk full appending to {self.path}: free space and rerun")
            raise FolderError(f"cannot write {self.journal_path}: {exc.strerror or exc}")
        self._journaled = True

    def _undo_append(self, fd: int, size: int) -> None:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
            self._stamp = self._stamp_of(os.fstat(fd))
        except OSError as exc:
            # The journal still records `size`: the next open truncates.
            log.error("cannot truncate %s back to %d bytes: %s", self.path, size, exc)
            self._torn = True

    def _rewrite(self, fd: int) -> None:
        """Write the file again without the deleted messages and rename it into place."""
        mode = os.fstat(fd).st_mode & 0o7777
        out = os.open(
            self.new_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, files.FILE_MODE
        )
        try:
            try:
                os.fchmod(out, files.FILE_MODE)
                kept: list[tuple[_Entry, int]] = []
                # Bytes before the first From_ line are no message's: kept as they are.
                ranges: list[list[int]] = [[0, self._stray]] if self._stray else []
                pos = self._stray
                for e in self._entries:
                    if e.deleted:
                        continue
                    kept.append((e, pos - e.start))
                    if ranges and ranges[-1][1] == e.start:
                        ranges[-1][1] = e.end
                    else:
                        ranges.append([e.start, e.end])
                    pos += e.end - e.start
                for start, end in ranges:
                    while start < end:
                        block = os.pread(fd, min(COPY_BLOCK, end - start), start)
                        if not block:
                            raise OSError(errno.EIO, f"{self.path} is shorter than its index")
                        files.write_all(out, block)
                        start += len(block)
                os.fsync(out)
                os.fchmod(out, mode)  # keep the permissions the user gave the file
                os.rename(self.new_path, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(self.new_path)
                raise
            files.fsync_dir(self.dir)
            for e, shift in kept:
                e.start += shift
                e.body += shift
                e.end += shift
            self._set_entries([e for e, _ in kept])
            self._stamp = self._stamp_of(os.fstat(out))
        finally:
            os.close(out)

    # --- locking ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, exclusive: bool = False) -> Iterator[int]:
        if self._batch_fd is not None:
            yield self._batch_fd
            return
        fd = self._acquire(exclusive)
        try:
            yield fd
        finally:
            self._release(fd)

    def _acquire(self, exclusive: bool) -> int:
        """Open the file and lock it (kernel locks, then the dotlock); repair a crash."""
        deadline = time.monotonic() + self.LOCK_TIMEOUT
        while True:
            try:
                fd = os.open(self.path, (os.O_RDWR if exclusive else os.O_RDONLY) | os.O_CLOEXEC)
            except FileNotFoundError:
                raise FolderError(f"{self.path} has disappeared; rerun to sync the folder again")
            except OSError as exc:
                raise FolderError(f"cannot open {self.path}: {exc.strerror or exc}")
            try:
                outcome = self._lock_and_check(fd, exclusive, deadline)
            except OSError as exc:
                self._release(fd)
                raise FolderError(f"cannot lock or repair {self.path}: {exc.strerror or exc}")
            except BaseException:
                self._release(fd)
                raise
            if outcome == "ok":
                return fd
            self._release(fd)
            if outcome == "gone":
                raise FolderError(f"{self.path} has disappeared; rerun to sync the folder again")
            if outcome == "repair":
                exclusive = True  # a crash journal is there: take the lock that may fix it
            # "moved": another program renamed a new file into place while we waited
            if time.monotonic() >= deadline:
                raise FolderError(f"{self.path} keeps changing; try again later")

    def _lock_and_check(self, fd: int, exclusive: bool, deadline: float) -> str:
        self._kernel_lock(fd, exclusive, deadline)
        self._take_dotlock(exclusive, deadline)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "gone"
        st = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return "moved"
        if os.path.lexists(self.journal_path):
            if not exclusive and not self.read_only:
                return "repair"
            self._recover(fd, exclusive)
        else:
            self._limit = None
        if exclusive and os.path.lexists(self.new_path):
            log.info("removing %s left by an interrupted rewrite", self.new_path)
            os.unlink(self.new_path)
        return "ok"

    def _release(self, fd: int) -> None:
        if self._dotlocked:
            self._dotlocked = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
        os.close(fd)  # drops the lockf and flock locks

    def _kernel_lock(self, fd: int, exclusive: bool, deadline: float) -> None:
        for lock in (fcntl.lockf, fcntl.flock):
            mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            while True:
                try:
                    lock(fd, mode)
                    break
                except OSError as exc:
                    if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        break  # the filesystem has no such locks; the dotlock still holds
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise FolderError(f"cannot lock {self.path}: {exc.strerror or exc}")
                    if time.monotonic() >= deadline:
                        raise FolderError(
                            f"{self.path} is locked by another program; try again later"
                        )
                    time.sleep(self.LOCK_POLL)

    def _take_dotlock(self, exclusive: bool, deadline: float) -> None:
        while True:
            try:
                lfd = os.open(
                    self.lock_path,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    files.FILE_MODE,
                )
            except FileExistsError:
                if self._stale_dotlock():
                    continue
                if time.monotonic() >= deadline:
                    raise FolderError(
                        f"{self.path} is locked by another program ({self.lock_path}); "
                        "try again later"
                    )
                time.sleep(self.LOCK_POLL)
                continue
            except OSError as exc:
                if not exclusive and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return  # reading a directory we may not write: the kernel lock must do
                raise FolderError(
                    f"cannot create lock file {self.lock_path}: {exc.strerror or exc}"
                )
            self._dotlocked = True
            try:
                os.fchmod(lfd, files.FILE_MODE)
                files.write_all(lfd, b"%d\n" % os.getpid())
            except OSError:
                pass  # an empty dotlock still locks
            finally:
                os.close(lfd)
            return

    def _stale_dotlock(self) -> bool:
        """Remove the dotlock if it was left by a crash; True if it is (now) gone."""
        try:
            st = os.stat(self.lock_path)
            with open(self.lock_path, "rb") as f:
                text = f.read(32)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        why = None
        if time.time() - st.st_mtime > self.STALE_LOCK_AGE:
            why = f"older than {self.STALE_LOCK_AGE:.0f} s"
        else:
            fields = text.split()
            if fields and fields[0].isdigit() and int(fields[0]) > 0:
                pid = int(fields[0])
                if not files.pid_alive(pid):
                    why = f"process {pid} is gone"
        if why is None:
            return False
        log.warning("removing stale lock %s (%s)", self.lock_path, why)
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True

    def _recover(self, fd: int, exclusive: bool) -> None:
        """A journal means a run died mid-batch: cut the file back to its recorded size."""
        try:
            with open(self.journal_path, "rb") as f:
                fields = f.read(200).split()
            size = int(fields[0])
            ino = int(fields[1]) if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            size = ino = None
        st = os.fstat(fd)
        usable = size is not None and (ino is None or ino == st.st_ino) and size <= st.st_size
        if not exclusive:  # read-only: leave the file alone, ignore the torn tail
            self._limit = size if usable else None
            if usable and size < st.st_size:
                log.warning(
                    "%s: ignoring %d bytes after offset %d left by an interrupted run "
                    "(read-only store; open it writable once to repair the file)",
                    self.path,
                    st.st_size - size,
                    size,
                )
            return
        if usable:
            if st.st_size > size:
                log.warning(
                    "%s: an interrupted run left %d bytes after offset %d; truncating them",
                    self.path,
                    st.st_size - size,
                    size,
                )
                os.ftruncate(fd, size)
                os.fsync(fd)
        else:
            log.warning(
                "%s: ignoring journal %s, which does not match the file",
                self.path,
                self.journal_path,
            )
        os.unlink(self.journal_path)
        files.fsync_dir(self.dir)
        self._limit = None


# --- the store --------------------------------------------------------------------------


class MboxStore(Store):
    def __init__(self, path: str, read_only: bool = False):
        self.root = os.path.abspath(path)
        self.url = f"mbox:{path}"
        self.read_only = read_only
        self._folders: dict[str, MboxFolder] = {}

    # A root that is an mbox file is a one-folder store (mbox:~/mbox).
    def _single_file(self) -> bool:
        return os.path.isfile(self.root)

    def list_folders(self) -> list[str]:
        self.problems = []
        if self._single_file():
            return ["INBOX"]
        if not os.path.isdir(self.root):
            # A typo must not pass for an empty source: exit 2.  A missing root mailsync
            # writes to is made when the first folder is.
            if os.path.lexists(self.root):
                raise ConfigError(
                    f"{self.root} is neither an mbox file nor a directory of them; check the path"
                )
            if self.read_only:
                raise ConfigError(f"{self.root} does not exist; check the path")
            return []
        open_paths = {f.path for f in self._folders.values()}
        found: set[str] = set()
        self._walk(found, open_paths, self.problems)
        return sorted(found)

    def _walk(self, found: set[str], open_paths: set[str], problems: list[str]) -> None:
        """Every folder of the tree into `found`; what holds mail but is no folder into
        `problems`.  A loop rather than recursion: a tree a thousand levels deep is
        walked like any other, and what lies deeper than MAX_FOLDER_DEPTH is a problem."""
        pending = [(self.root, "", 0)]  # (directory, its folder name + "/", depth)
        while pending:
            directory, prefix, depth = pending.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                if directory == self.root:
                    raise StoreError(f"cannot read directory {directory}: {exc.strerror or exc}")
                problems.append(
                    f"cannot read directory {directory} ({exc.strerror or exc}): the folders "
                    "in it are not synced; check its permissions"
                )
                continue
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name.endswith(LOCK_SUFFIX):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_file = not is_dir and entry.is_file()
                except OSError:
                    continue
                if (is_dir or is_file) and depth >= MAX_FOLDER_DEPTH:
                    problems.append(
                        f"{_shorten(entry.path)} is nested deeper than {MAX_FOLDER_DEPTH} "
                        "folders: it is not synced; move it up"
                    )
                    continue
                if is_dir:
                    part = name[: -len(SUBDIR_SUFFIX)] if name.endswith(SUBDIR_SUFFIX) else name
                    if _is_maildir_with_mail(entry.path):
                        problems.append(
                            f"{entry.path} is a Maildir inside an mbox tree, which mailsync "
                            f"does not read as part of it; sync it as maildir:{entry.path}"
                        )
                        continue
                    if _bad_part(part):
                        log.warning("skipping %s: its name cannot be a folder name", entry.path)
                        continue
                    pending.append((entry.path, prefix + part + "/", depth + 1))
                elif is_file:
                    if why := _bad_part(name):
                        if classify(entry.path) in (MBOX, DAMAGED):
                            problems.append(
                                f"{entry.path} holds mail but is not synced: its name cannot "
                                f"be a folder name ({why}); rename it"
                            )
                        else:
                            log.warning("skipping %s: its name cannot be a folder name", entry.path)
                        continue
                    real = os.path.realpath(entry.path)
                    if real in open_paths:
                        found.add(prefix + name)
                        continue
                    kind = classify(entry.path)
                    if kind in (MBOX, DAMAGED):
                        found.add(prefix + name)  # (a damaged file's listing says what)
                    elif kind == UNREADABLE:
                        problems.append(
                            f"cannot read {entry.path}: if it is an mbox file, it is not "
                            "synced; check its permissions"
                        )

    def _existing(self, parts: list[str]) -> list[str]:
        """Paths where folder `parts` could be, in order of preference."""
        dirs = [self.root]
        for part in parts[:-1]:
            dirs = [
                cand
                for d in dirs
                for cand in (os.path.join(d, part), os.path.join(d, part + SUBDIR_SUFFIX))
                if os.path.isdir(cand)
            ]
        return [os.path.join(d, parts[-1]) for d in dirs]

    def _new_path(self, parts: list[str]) -> str:
        directory = self.root
        for part in parts[:-1]:
            plain = os.path.join(directory, part)
            directory = plain if os.path.isdir(plain) else plain + SUBDIR_SUFFIX
        return os.path.join(directory, parts[-1])

    def open_folder(self, name: str, create: bool = False, kind: str = "mail") -> MboxFolder:
        if kind != "mail":
            raise FolderError(
                f"{self.url}: cannot hold {kind} items; back them up into a Maildir tree"
            )
        cached = self._folders.get(name)
        if cached is not None and os.path.isfile(cached.path):
            return cached
        parts = split_name(name)
        if self._single_file():
            if name != "INBOX":
                raise FolderError(
                    f"{self.root} is a single mbox file, which holds only INBOX, not {name}"
                )
            path = self.root
        else:
            path = next((p for p in self._existing(parts) if os.path.isfile(p)), None)
            if path is None:
                path = self._new_path(parts)
                if os.path.isdir(path):
                    raise FolderError(
                        f"cannot use folder {name}: {path} is a directory of folders, not an "
                        "mbox file; pick another name"
                    )
                if not create:
                    raise FolderError(f"{self.url}: no folder {name}")
                if self.read_only:
                    raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
                self._create(path)
        path = os.path.realpath(path)
        if classify(path) not in (MBOX, DAMAGED):
            raise FolderError(
                f'{path} is not an mbox file (it does not start with a "From " line); '
                "mailsync leaves it alone"
            )
        folder = MboxFolder(self, name, path)
        self._folders[name] = folder
        return folder

    def _create(self, path: str) -> None:
        directory = os.path.dirname(path)
        try:
            files.make_private_dirs(directory)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, files.FILE_MODE)
            try:
                os.fchmod(fd, files.FILE_MODE)
            finally:
                os.close(fd)
            files.fsync_dir(directory)
        except FileExistsError:
            pass  # someone made it meanwhile
        except OSError as exc:
            raise FolderError(f"cannot create {path}: {exc.strerror or exc}")

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        if kind != "mail":
            return f"cannot hold {kind} items; back them up into a Maildir tree"
        if self.read_only:
            return "the store is read-only"
        try:
            parts = split_name(name)
        except FolderError as error:
            return str(error)
        if self._single_file():
            return None if name == "INBOX" else f"{self.root} is a single mbox file (INBOX only)"
        path = self._new_path(parts)
        if os.path.isdir(path):
            return f"{path} is a directory of folders, not an mbox file"
        return path_creation_problem(path)

    can_rename = True

    def rename_folder(self, old: str, new: str) -> None:
        """The folder's file and its subfolder directory (``OLD.sbd``) are renamed, so
        every message, and its key (a content hash), stays.  The directory goes first
        and the file last, holding the folder's locks after a crashed run's leftovers
        were repaired; a rerun moves whatever is still at the old name.  Parent
        directories left empty go."""
        if self.read_only:
            raise RenameRefused(f"{self.url}: cannot rename {old}, the store is read-only")
        if self._single_file():
            raise RenameRefused(f"{self.root} is a single mbox file, which holds only INBOX")
        if new.startswith(old + "/"):
            raise RenameRefused(f"{self.url}: cannot move {old} into itself ({new})")
        try:
            old_parts, new_parts = split_name(old), split_name(new)
        except FolderError as error:
            raise RenameRefused(str(error))
        src = next((p for p in self._existing(old_parts) if os.path.isfile(p)), None)
        if src is None:
            return  # moved already, or not there to move
        taken = [p for p in self._existing(new_parts) if os.path.lexists(p)]
        dst = taken[0] if taken else self._new_path(new_parts)
        moves = [(src + SUBDIR_SUFFIX, dst + SUBDIR_SUFFIX), (src, dst)]
        moves = [(a, b) for a, b in moves if os.path.lexists(a)]
        for _src, target in moves:
            if os.path.lexists(target):
                raise RenameRefused(
                    f"{self.url}: cannot rename {old} to {new}: {target} exists; move it away"
                )
        try:
            folder = self.open_folder(old)  # repairs what a crashed append or rewrite left
        except FolderError as error:
            raise RenameRefused(str(error))
        try:
            with folder._locked(exclusive=True):
                files.make_private_dirs(os.path.dirname(dst))
                for a, b in moves:
                    os.rename(a, b)
                    files.fsync_dir(os.path.dirname(a))
                    files.fsync_dir(os.path.dirname(b))
        except OSError as exc:
            raise FolderError(
                f"{self.url}: cannot rename {old} to {new} ({exc.strerror or exc}); fix it "
                "and rerun to finish the move"
            )
        finally:
            for name in [n for n in self._folders if n == old or n.startswith(old + "/")]:
                del self._folders[name]
        directory = os.path.dirname(src)
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    def close(self) -> None:
        error = None
        for folder in self._folders.values():
            try:
                folder.close()
            except Exception as exc:  # close the others first
                error = error or exc
        if error is not None:
            raise error

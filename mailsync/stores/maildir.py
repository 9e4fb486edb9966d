"""Maildir store: one directory per folder, one file per message.

Layouts (``maildir:PATH?layout=...``):

* ``verbatim``: folder ``Archive/2019`` is ``ROOT/Archive/2019/{cur,new,tmp}`` and
  INBOX is ``ROOT/INBOX``.  Dovecot reads this with
  ``mail_location = maildir:ROOT:LAYOUT=fs:INBOX=ROOT/INBOX`` (without ``INBOX=`` it
  takes ROOT itself for INBOX and shows it empty).
* ``maildir++``: INBOX is ``ROOT`` itself and ``Archive/2019`` is ``ROOT/.Archive.2019``
  (Courier, Dovecot's default).  Folder names containing "." cannot be represented.

Without ``?layout=``, the tree says (MaildirStore.detect_layout): a root that is itself
a Maildir is maildir++, anything else verbatim.  Whatever a layout does not read but
holds mail (a Maildir root under verbatim, verbatim folders under a maildir++ root,
names no folder can have) is reported as a problem of the listing, never dropped.

A message's key is its file's unique base name: everything before the ``:2,`` info
suffix, so Dovecot's ``,S=``/``,W=`` parts stay in the key and the key survives a mail
reader moving the file from new/ to cur/ or changing its flags.  The six standard flags
map to the info letters D F P R S T.  Keys never change, so ``validity`` is "".

IMAP keywords are kept the way Dovecot keeps them: the folder's ``dovecot-keywords`` file
(next to cur/new/tmp) has lines ``N keyword`` (N = 0..25), and info letter ``a`` + N in a
file name means that keyword (``:2,Sa`` = \\Seen and keyword 0).  A folder holds at most
26 keywords, and only names Dovecot accepts (RFC 3501 atoms: ASCII, no space, control
character or ``(){%*"\\]``, at most 50 characters).  A letter is written to
dovecot-keywords, durably, before any file name uses it, so a crash never leaves a
letter without its meaning.  Letters without a line in dovecot-keywords are kept
untouched but not reported, and an unreadable dovecot-keywords fails the listing rather
than make every keyword look removed.  Dovecot keeps $Forwarded as a keyword: its letter
reads as $Forwarded like P does, removing $Forwarded removes both, and adding it writes
P plus that letter where the folder has one.  mailsync processes adding keywords to one
folder at the same time take turns with flock() on the folder directory (Dovecot relies
on its own uidlist lock instead); every rewrite makes the file's mtime grow by at least
a second, which is how a running Dovecot notices it.  A Dovecot configured with a
separate CONTROL= directory looks for dovecot-keywords there, not in the Maildir.

Writes follow the Maildir protocol: write and fsync tmp/NAME, then rename it into new/
or cur/; ``flush`` fsyncs every directory whose entries changed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from mailsync import files
from mailsync.errors import ConfigError, FolderError, MessageError, RenameRefused, StoreError
from mailsync.message import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    FORWARDED,
    RECENT,
    SEEN,
    STANDARD_FLAGS,
    Info,
    to_lf,
)
from mailsync.stores.base import MAX_FOLDER_DEPTH, Folder, Store, path_creation_problem

LAYOUTS = ("verbatim", "maildir++")

FLAG_LETTERS = {DRAFT: "D", FLAGGED: "F", FORWARDED: "P", ANSWERED: "R", SEEN: "S", DELETED: "T"}
LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()}
_STD_LETTERS = frozenset(LETTER_FLAGS)

INFO_SEP = ":2,"
KEYWORDS_FILE = "dovecot-keywords"
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # keyword N is letter KEYWORD_LETTERS[N]
MAX_KEYWORD_LENGTH = 50  # Dovecot's default mail_max_keyword_length
# RFC 3501 atom-specials: ( ) { SP CTL % * " \ ]  (8-bit characters are no atoms either)
_ATOM_SPECIALS = re.compile(r'[\x00-\x20\x7f(){%*"\\\]]')
SUBDIRS = ("cur", "new", "tmp")
TMP_MAX_AGE = 36 * 3600  # the Maildir spec: stale tmp/ files may go after 36 hours

_counter = itertools.count(1)  # the Q part of unique names, per process


# -- names ----------------------------------------------------------------------------


def check_folder_name(name: str, layout: str = "verbatim") -> list[str]:
    """The name's parts; FolderError if it could escape the root or is unrepresentable."""
    if not isinstance(name, str) or not name:
        raise FolderError("empty folder name; name a folder like INBOX or Archive/2019")
    if name.startswith("/"):
        raise FolderError(f"folder name {name!r} starts with '/'; folder names are relative")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise FolderError(f"folder name {name!r} contains control characters; rename it")
    parts = name.split("/")
    if len(parts) > MAX_FOLDER_DEPTH:
        raise FolderError(
            f"folder name {_shorten(name)!r} is nested {len(parts)} levels deep; mailsync "
            f"handles folders at most {MAX_FOLDER_DEPTH} levels deep"
        )
    for part in parts:
        if part in ("", ".", ".."):
            raise FolderError(
                f"folder name {name!r} has an empty, '.' or '..' part; "
                "use '/'-separated names like Archive/2019"
            )
    if layout == "maildir++":
        if "." in name:
            raise FolderError(
                f"folder name {name!r} contains '.', which the maildir++ layout uses "
                "as its separator; rename the folder or use layout=verbatim"
            )
    elif any(part in SUBDIRS for part in parts):
        raise FolderError(
            f"folder name {name!r} has a part named cur, new or tmp, which the verbatim "
            "layout reserves for messages; rename the folder or use layout=maildir++"
        )
    return parts


def _shorten(text: str, limit: int = 80) -> str:
    """A long name or path cut for an error line (a folder 1,000 levels deep)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def split_name(filename: str) -> tuple[str, str | None]:
    """'KEY:2,FS' -> ('KEY', 'FS'); 'KEY' -> ('KEY', None)."""
    i = filename.rfind(INFO_SEP)
    if i < 0:
        return filename, None
    return filename[:i], filename[i + 3 :]


def info_flags(info: str | None, keywords: dict[str, str] | None = None) -> frozenset[str]:
    """Maildir info letters -> IMAP flags.  `keywords` maps keyword letters (a-z) to
    their names; other letters are not flags here."""
    if not info:
        return frozenset()
    out = {LETTER_FLAGS[c] for c in info if c in LETTER_FLAGS}
    if keywords:
        out.update(keywords[c] for c in info if c in keywords)
    return frozenset(out)


def flags_info(flags) -> str:
    """IMAP flags -> sorted Maildir info letters (flags without a letter are dropped)."""
    return "".join(sorted({FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS}))


def valid_keyword(flag: str) -> bool:
    """Whether Dovecot would take `flag` as a keyword: an IMAP atom (ASCII, none of the
    atom-specials, so no system flag either) of at most MAX_KEYWORD_LENGTH characters."""
    return (
        isinstance(flag, str)
        and 0 < len(flag) <= MAX_KEYWORD_LENGTH
        and flag.isascii()
        and not _ATOM_SPECIALS.search(flag)
    )


def _keyword_name(name: str) -> str:
    """A dovecot-keywords name as mailsync spells the flag ($forwarded -> $Forwarded)."""
    return FORWARDED if name.lower() == FORWARDED.lower() else name


def parse_keywords(text: str) -> dict[int, str]:
    """The lines of a dovecot-keywords file -> {index: name}, as Dovecot reads them: the
    index up to the first space, the name after it; bad lines are skipped and a later
    line for an index wins."""
    out: dict[int, str] = {}
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        number, space, name = line.partition(" ")
        if not space or not name or not number.isascii() or not number.isdigit():
            continue
        index = int(number)
        if index < len(KEYWORD_LETTERS):
            out[index] = name
    return out


def format_keywords(keywords: dict[int, str]) -> bytes:
    return "".join(f"{i} {keywords[i]}\n" for i in sorted(keywords)).encode("latin-1")


def size_in_name(key: str) -> int | None:
    """The ',S=NNN' size Dovecot and mailsync put in unique names, or None."""
    i = key.find(",S=")
    if i < 0:
        return None
    end = key.find(",", i + 3)
    value = key[i + 3 :] if end < 0 else key[i + 3 : end]
    if value and value.isascii() and value.isdigit():
        return int(value)
    return None


def safe_hostname(host: str) -> str:
    """The hostname as the Maildir spec wants it in unique names."""
    return host.replace("/", "\\057").replace(":", "\\072")


# The names mailsync gives the files it writes through tmp/: unique_name() and the
# dovecot-keywords rewrite (_write_keywords); each carries the writer's pid and host.
_OWN_TMP_NAME = re.compile(
    r"\d+\.M\d+P(?P<pid>\d+)Q\d+\.(?P<host>.+),S=\d+"
    r"|" + re.escape(KEYWORDS_FILE) + r"\.P(?P<kwpid>\d+)\.(?P<kwhost>.+)"
)


def _dead_writer(filename: str) -> bool:
    """Whether a tmp/ file is mailsync's own, written on this machine by a process that
    is gone (killed mid-write), so it can go at once.  A live process's file is never
    taken: not this run's, not another run's (whose pid is alive), and not one whose pid
    was reused meanwhile (it waits for the 36 hours).  Other hosts' files (a shared
    file system) wait too: their pids mean nothing here."""
    match = _OWN_TMP_NAME.fullmatch(filename)
    if match is None:
        return False
    host = match.group("host") or match.group("kwhost")
    if host != safe_hostname(socket.gethostname() or "localhost"):
        return False
    return not files.pid_alive(int(match.group("pid") or match.group("kwpid")))


def unique_name(size: int) -> str:
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    host = safe_hostname(socket.gethostname() or "localhost")
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{host},S={size}"


# -- filesystem helpers -------------------------------------------------------------


def _file_stamp(st: os.stat_result) -> list[int]:
    """What tells one version of a replaced-not-rewritten file from another (a list, as
    cursors go through JSON)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _is_maildir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cur")) and os.path.isdir(os.path.join(path, "new"))


def _has_entries(path: str) -> bool:
    """Whether the directory holds anything but dot files (False if unreadable too)."""
    try:
        with os.scandir(path) as entries:
            return any(not entry.name.startswith(".") for entry in entries)
    except OSError:
        return False


def _holds_messages(path: str) -> bool:
    return any(_has_entries(os.path.join(path, sub)) for sub in ("cur", "new"))


def _half_maildir(path: str) -> str | None:
    """A problem sentence if `path` has messages in cur/ or new/ but not both
    directories (no Maildir reader takes it for one), else None."""
    for sub, missing in (("cur", "new"), ("new", "cur")):
        if not os.path.isdir(os.path.join(path, missing)) and _has_entries(os.path.join(path, sub)):
            return (
                f"{_shorten(path)} has messages in {sub}/ but no {missing}/ directory, so it "
                f"is no Maildir and is not synced; create {missing}/ (and tmp/) in it"
            )
    return None


def _unreached(top: str, layout: str, hint: str) -> list[str]:
    """Problems for the Maildirs (and vdirs) at or below `top` that the `layout` does not
    read: the directory tree under a maildir++ root, say.  A loop, bounded in depth."""
    from mailsync.stores.vdir import vdir_kind

    out = []
    pending = [(top, 0)]
    seen: set[tuple[int, int]] = set()
    while pending:
        directory, depth = pending.pop()
        if (_is_maildir(directory) and _holds_messages(directory)) or vdir_kind(directory):
            out.append(
                f"{_shorten(directory)} holds mail but is not synced: the {layout} layout "
                f"does not read it there; use ?layout={hint} or move it"
            )
            continue
        if depth >= MAX_FOLDER_DEPTH:
            continue
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name not in SUBDIRS and entry.is_dir():
                        pending.append((entry.path, depth + 1))
        except OSError:
            continue
    return out


# -- folder -------------------------------------------------------------------------


_WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="maildir-write")
_MAX_PENDING = 256  # bound the memory held by queued messages: by count...
_MAX_PENDING_BYTES = 16 * 1024 * 1024  # ...and by size


def _write_message(tmp_dir, key, data, arrival, path, sub, filename) -> None:
    """tmp/ -> fsync -> new/ or cur/, per the Maildir spec; runs on a writer thread."""
    ns = int(arrival * 1_000_000_000)
    target = os.path.join(path, sub, filename)
    files.atomic_write(os.path.join(tmp_dir, key), target, data, where=path, mtime_ns=ns)


_GONE = object()  # MaildirFolder._on_file: the message's file is not there


class LazyInfo(Info):
    """An Info whose arrival date (the file's mtime) is read only when asked for: a
    listing of 100,000 messages then needs no stat() per file."""

    __slots__ = ("_folder", "_key")

    def __init__(self, flags: frozenset[str], size: int, folder: MaildirFolder, key: str):
        setattr_ = object.__setattr__  # Info is frozen
        setattr_(self, "flags", flags)
        setattr_(self, "size", size)
        setattr_(self, "_folder", folder)
        setattr_(self, "_key", key)

    @property
    def arrival(self) -> float:  # type: ignore[override]
        return self._folder.arrival(self._key)

    def __repr__(self) -> str:
        return f"LazyInfo({sorted(self.flags)}, {self.size}, {self._key!r})"


class MaildirFolder(Folder):
    # new/ holds the messages no mail reader has seen yet; they are listed with \Recent,
    # and append() puts a message given \Recent without letters there (see append).
    marks_recent = True
    _cursor: dict | None = None
    _verifiable = False  # _where is a complete picture: list() and our own changes only

    def __init__(self, store: MaildirStore, name: str, path: str, dirty: set[str] | None = None):
        self.store = store
        self.name = name
        self.path = path
        self.validity = ""
        self.read_only = store.read_only
        # key -> (subdir, filename), from the last listing and our own changes
        self._where: dict[str, tuple[str, str]] = {}
        self._dirty: set[str] = set(dirty or ())
        self._have_tmp = False
        self._pending: dict[str, Future] = {}  # key -> background write of an append
        self._pending_sizes: dict[str, int] = {}
        self._pending_bytes = 0
        # dovecot-keywords as last read or written (None: not read yet)
        self._kw_index: dict[int, str] | None = None  # every line, valid name or not
        self._kw_letters: dict[str, str] = {}  # letter -> flag, for valid names only
        self._kw_by_name: dict[str, list[str]] = {}  # flag -> its letters
        self._kw_folded: set[str] = set()  # lowercased names of every line
        self._kw_stamp: list | None = None  # identity of that version of the file
        # keywords persists() promised a letter to that have none yet
        self._kw_reserved: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"MaildirFolder({self.path!r})"

    # reading ------------------------------------------------------------------------

    # The directories' mtimes change with every file added, renamed or removed, so they
    # tell cheaply whether a folder changed.  A listing taken within the same second as
    # the last change gets no cursor: a later change could share the timestamp.
    CURSOR_SETTLE_NS = 2_000_000_000
    # After our own writes we check the whole directory ourselves; the wait only has to
    # outlast the kernel's timestamp granularity (a jiffy) on nanosecond filesystems.
    SETTLE_AFTER_WRITES_NS = 100_000_000

    def _raw_mtimes(self) -> dict | None:
        try:
            stamps: dict = {
                sub: os.stat(os.path.join(self.path, sub)).st_mtime_ns for sub in ("new", "cur")
            }
        except OSError:
            return None
        # The letters' meanings are part of the listing too.  No key without the file:
        # cursors saved before keywords were kept stay valid for such folders.
        try:
            stamps["keywords"] = _file_stamp(os.stat(self._keywords_path()))
        except FileNotFoundError:
            pass
        except OSError:
            return None
        return stamps

    def _dir_mtimes(self, settle_ns: int | None = None) -> dict | None:
        """The directories' mtimes as a cursor, or None while they are too recent to
        trust (a later change could still get the same timestamp)."""
        stamps = self._raw_mtimes()
        if stamps is None:
            return None
        # Only the directories can change in place; dovecot-keywords is always replaced
        # by a new file, whose inode, size and mtime together tell it apart.
        dirs = (stamps["new"], stamps["cur"])
        if settle_ns is None or all(v % 1_000_000_000 == 0 for v in dirs):
            settle_ns = self.CURSOR_SETTLE_NS  # a filesystem with whole-second times
        if time.time_ns() - max(dirs) < settle_ns:
            return None
        return stamps

    def cursor(self) -> dict:
        return dict(self._cursor or {})

    def unchanged(self, cursor: dict) -> bool:
        if not cursor:
            return False
        now = self._raw_mtimes()
        if now is None or now != cursor:
            return False
        self._cursor = now
        return True

    def list(self) -> dict[str, Info]:
        self._wait_all()
        self._cursor = self._dir_mtimes()
        self._verifiable = True
        problems: list[str] = []
        self.problems = problems
        # Read after the cursor, before the names: letters are only ever added, and each
        # one before a file name uses it, so every letter met below is in this version
        # unless it is newer than the cursor.
        self._read_keywords()
        keywords = self._kw_letters
        out: dict[str, Info] = {}
        where: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):  # cur last: it wins if a key is in both
            # info -> flags, few distinct; in new/ with \Recent, as Dovecot reports them
            parsed: dict[str, frozenset[str]] = {"": frozenset({RECENT} if sub == "new" else ())}
            directory = os.path.join(self.path, sub)
            try:
                entries = os.scandir(directory)
            except OSError as e:
                raise FolderError(
                    f"cannot read {directory} ({e.strerror}): is {self.path} still a Maildir?"
                )
            with entries:
                for entry in entries:
                    filename = entry.name
                    if filename.startswith("."):
                        continue  # the spec: readers skip dot files
                    i = filename.rfind(INFO_SEP)
                    if i < 0:
                        key, info = filename, ""
                    else:
                        key, info = filename[:i], filename[i + 3 :]
                    if not key:
                        problems.append(
                            f"{entry.path} has no unique name before its {INFO_SEP} info, so "
                            "it cannot be synced; rename it"
                        )
                        continue
                    flags = parsed.get(info)
                    if flags is None:
                        flags = parsed[info] = info_flags(info, keywords) | parsed[""]
                    size = size_in_name(key) if ",S=" in key else None
                    if size is not None and entry.is_file():
                        # No stat: the size is in the name, and the arrival date (the
                        # mtime) is read only if the message is copied.
                        out[key] = LazyInfo(flags, size, self, key)
                    else:
                        try:
                            st = entry.stat()
                        except FileNotFoundError:
                            if os.path.islink(entry.path):
                                problems.append(
                                    f"{entry.path} is a symbolic link to nothing, so it cannot "
                                    "be synced; restore its target or remove it"
                                )
                            continue  # else a mail reader moved it meanwhile
                        except OSError as e:
                            problems.append(
                                f"cannot read {entry.path} ({e.strerror}): check its permissions"
                            )
                            continue
                        if not stat.S_ISREG(st.st_mode):
                            problems.append(
                                f"{entry.path} is not a regular file, so it cannot be synced; "
                                f"move it out of {sub}/"
                            )
                            continue
                        out[key] = Info(flags, st.st_size if size is None else size, st.st_mtime)
                    where[key] = (sub, filename)
        self._where = where
        return out

    def _on_file(self, key: str, action):
        """action(sub, filename) on the message's file.  A FileNotFoundError (a mail
        reader renamed or deleted it meanwhile) looks the file up again, once.
        Returns _GONE if the message is not there."""
        if key in self._pending:
            self._wait(key)
        for attempt in (1, 2):
            loc = self._locate(key, rescan=attempt == 2)
            if loc is None:
                break
            try:
                return action(*loc)
            except FileNotFoundError:
                continue
        return _GONE

    def arrival(self, key: str) -> float:
        """The message's arrival date: its file's mtime (now, if the file vanished)."""
        mtime = self._on_file(key, lambda *loc: os.stat(os.path.join(self.path, *loc)).st_mtime)
        return time.time() if mtime is _GONE else mtime

    def fetch(self, key: str) -> bytes:
        def read(sub: str, filename: str) -> bytes:
            path = os.path.join(self.path, sub, filename)
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise
            except PermissionError as e:
                raise MessageError(f"cannot read {path} ({e.strerror}): check its permissions")
            except OSError as e:
                raise MessageError(f"cannot read {path} ({e.strerror}): check the file and rerun")

        data = self._on_file(key, read)
        if data is _GONE:
            raise MessageError(f"{self.name}: message {key} is gone")
        return data

    def persists(self, flag: str) -> bool:
        """The six standard flags; a keyword that has a letter in this folder, or gets
        the promise of one while letters are left (26 at most) and the folder is
        writable.  A keyword that differs only in case from one with a letter is not
        kept: Dovecot matches names case-insensitively, so it would read back as the
        other spelling."""
        if flag in STANDARD_FLAGS:
            return True
        if self._kw_index is None:
            self._read_keywords()
        if flag in self._kw_by_name or flag in self._kw_reserved:
            return True
        if self.read_only or not valid_keyword(flag):
            return False
        folded = flag.lower()
        if folded in self._kw_folded or any(folded == r.lower() for r in self._kw_reserved):
            return False
        if len(self._kw_index) + len(self._kw_reserved) >= len(KEYWORD_LETTERS):
            return False
        self._kw_reserved[flag] = None
        return True

    # keywords -----------------------------------------------------------------------

    def _keywords_path(self) -> str:
        return os.path.join(self.path, KEYWORDS_FILE)

    def _read_keywords(self) -> None:
        """(Re-)read dovecot-keywords; a missing file means no keywords."""
        path = self._keywords_path()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._set_keywords({}, None)
            return
        except OSError as e:
            raise FolderError(f"cannot read {path} ({e.strerror}): check its permissions")
        text = None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                with os.fdopen(fd, "rb") as f:
                    fd = -1  # f closes it
                    text = f.read().decode("latin-1")  # names are ASCII; keep any byte
        except OSError as e:
            raise FolderError(f"cannot read {path} ({e.strerror}): check the file and rerun")
        finally:
            if fd >= 0:
                os.close(fd)
        if text is None:
            # A subfolder of that name (verbatim layout): no keywords, and no room for any.
            self._set_keywords(dict.fromkeys(range(len(KEYWORD_LETTERS)), ""), None)
            return
        self._set_keywords(parse_keywords(text), _file_stamp(st))

    def _set_keywords(self, index: dict[int, str], stamp: list | None) -> None:
        self._kw_index = index
        self._kw_stamp = stamp
        letters: dict[str, str] = {}
        by_name: dict[str, list[str]] = {}
        for i, name in index.items():
            if valid_keyword(name):
                flag = _keyword_name(name)
                letters[KEYWORD_LETTERS[i]] = flag
                by_name.setdefault(flag, []).append(KEYWORD_LETTERS[i])
        self._kw_letters = letters
        self._kw_by_name = by_name
        self._kw_folded = {name.lower() for name in index.values()}
        for flag in list(self._kw_reserved):
            if flag in by_name:
                del self._kw_reserved[flag]

    def _keyword_letters(self, flags, create: bool) -> set[str]:
        """The letters of the keywords among `flags`.  With `create`, keywords that
        persists() allows but have no letter yet get one first: dovecot-keywords is
        rewritten and made durable before this returns."""
        keywords = [f for f in flags if f not in STANDARD_FLAGS]
        if FORWARDED in flags:
            keywords.append(FORWARDED)  # also as Dovecot writes it, where it has a letter
        if not keywords:
            return set()
        if self._kw_index is None:
            self._read_keywords()
        if create:
            missing = [
                f
                for f in keywords
                if f not in STANDARD_FLAGS and f not in self._kw_by_name and self.persists(f)
            ]
            if missing:
                self._add_keywords(sorted(missing))
        return {letter for f in keywords for letter in self._kw_by_name.get(f, ())}

    def _add_keywords(self, names: list[str]) -> None:
        """Give `names` letters in dovecot-keywords: under flock() on the folder directory,
        re-read the file, add the names still missing at the lowest free indexes, write
        tmp/, fsync, rename over dovecot-keywords and fsync the folder directory."""
        path = self._keywords_path()
        try:
            lock = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise MessageError(files.write_error(e, self.path))
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise MessageError(files.write_error(e, self.path))
                # a filesystem without flock(): go on unlocked, as Dovecot would
            try:
                old = os.stat(path)
            except FileNotFoundError:
                old = None
            except OSError as e:
                raise MessageError(files.write_error(e, path))
            self._read_keywords()  # another program may have added some meanwhile
            index = dict(self._kw_index or {})
            free = [i for i in range(len(KEYWORD_LETTERS)) if i not in index]
            folded = set(self._kw_folded)
            added = False
            for name in names:
                if name.lower() in folded:
                    continue  # there already, maybe spelt otherwise (then not kept)
                if not free:
                    break  # full: the rest stay unkept, in the sync state only
                index[free.pop(0)] = name
                folded.add(name.lower())
                added = True
            if added:
                self._write_keywords(index, old)
                self._set_keywords(index, _file_stamp(os.stat(path)))
        finally:
            os.close(lock)  # releases the flock
        for name in names:
            self._kw_reserved.pop(name, None)

    def _write_keywords(self, index: dict[int, str], old: os.stat_result | None) -> None:
        path = self._keywords_path()
        tmp_dir = os.path.join(self.path, "tmp")
        try:
            files.make_private_dirs(tmp_dir, self._dirty)
        except OSError as e:
            raise MessageError(files.write_error(e, tmp_dir))
        self._have_tmp = True
        host = safe_hostname(socket.gethostname() or "localhost")
        tmp = os.path.join(tmp_dir, f"{KEYWORDS_FILE}.P{os.getpid()}.{host}")  # _dead_writer
        # Dovecot re-reads the file only when its mtime (in seconds) grows.
        now = time.time_ns()
        if old is not None and now // 1_000_000_000 <= int(old.st_mtime):
            now = (int(old.st_mtime) + 1) * 1_000_000_000
        files.atomic_write(
            tmp,
            path,
            format_keywords(index),
            where=path,
            mtime_ns=now,
            # Keep the file Dovecot's, as it was (if we may: running as root).
            mode=files.FILE_MODE if old is None else stat.S_IMODE(old.st_mode),
            owner=None if old is None else (old.st_uid, old.st_gid),
            exclusive=False,  # a name per process: what a killed run left is reused
        )
        try:
            files.fsync_dir(self.path)
        except OSError as e:
            raise MessageError(files.write_error(e, self.path))

    # writing ------------------------------------------------------------------------

    def append(self, data: bytes, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        data = to_lf(data)
        if arrival is None:
            arrival = time.time()
        tmp_dir = os.path.join(self.path, "tmp")
        if not self._have_tmp:
            try:
                files.make_private_dirs(tmp_dir, self._dirty)
            except OSError as e:
                raise MessageError(files.write_error(e, tmp_dir))
            self._have_tmp = True
        # Before the message is queued: its letters must be in dovecot-keywords, durably,
        # before the writer thread renames it into place.
        letters = "".join(sorted(set(flags_info(flags)) | self._keyword_letters(flags, True)))
        key = unique_name(len(data))
        # new/ is for what no mail reader has seen (\Recent, which the engine passes on
        # from a source Maildir's new/, and for every message from sources that cannot
        # tell); a message with flags, or without \Recent, was seen: cur/, with an empty
        # info if need be, so mutt shows old unread mail as old, not as new.
        if letters or RECENT not in flags:
            sub, filename = "cur", key + INFO_SEP + letters
        else:
            sub, filename = "new", key
        self._dirty.add(os.path.join(self.path, sub))
        self._where[key] = (sub, filename)
        # The write, fsync and rename run on a small pool of threads: fsyncs issued
        # together share the filesystem's journal commits, and the network keeps
        # streaming meanwhile.  flush() waits for every one of them.
        self._pending[key] = _WRITERS.submit(
            _write_message, tmp_dir, key, data, arrival, self.path, sub, filename
        )
        self._pending_sizes[key] = len(data)
        self._pending_bytes += len(data)
        while self._pending and (
            len(self._pending) >= _MAX_PENDING or self._pending_bytes > _MAX_PENDING_BYTES
        ):
            self._wait(next(iter(self._pending)))
        return key

    def _wait(self, key: str) -> None:
        """Wait for a background write; its failure becomes a MessageError."""
        future = self._pending.pop(key, None)
        if future is None:
            return
        self._pending_bytes -= self._pending_sizes.pop(key, 0)
        error = future.exception()
        if error is not None:
            self._where.pop(key, None)
            if isinstance(error, MessageError):
                raise error
            raise MessageError(str(error))

    def _wait_all(self) -> None:
        failures = []
        for key in list(self._pending):
            try:
                self._wait(key)
            except MessageError as error:
                failures.append(str(error))
        if failures:
            raise FolderError(f"{len(failures)} message(s) could not be written: {failures[0]}")

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        self._writable()
        add_letters = {FLAG_LETTERS[f] for f in add if f in FLAG_LETTERS}
        add_letters |= self._keyword_letters(add, create=True)  # durable before the rename
        remove_letters = {FLAG_LETTERS[f] for f in remove if f in FLAG_LETTERS}
        remove_letters |= self._keyword_letters(remove, create=False)
        remove_letters -= add_letters
        if not add_letters and not remove_letters:
            return

        def rename(sub: str, filename: str) -> None:
            info = split_name(filename)[1] or ""
            old = set(info)
            new = (old - remove_letters) | add_letters
            if new == old:
                return
            new_name = key + INFO_SEP + "".join(sorted(new))
            src = os.path.join(self.path, sub, filename)
            try:
                os.rename(src, os.path.join(self.path, "cur", new_name))
            except FileNotFoundError:
                raise
            except OSError as e:
                raise MessageError(files.write_error(e, src))
            self._dirty.add(os.path.join(self.path, sub))
            self._dirty.add(os.path.join(self.path, "cur"))
            self._where[key] = ("cur", new_name)

        if self._on_file(key, rename) is _GONE:
            raise MessageError(f"{self.name}: message {key} is gone")

    def delete(self, key: str) -> str:
        self._writable()

        def unlink(sub: str, filename: str) -> None:
            path = os.path.join(self.path, sub, filename)
            try:
                os.unlink(path)
            except FileNotFoundError:
                raise
            except OSError as e:
                raise MessageError(files.write_error(e, path))
            self._dirty.add(os.path.join(self.path, sub))

        self._on_file(key, unlink)
        self._where.pop(key, None)  # already gone counts as deleted
        return key

    def flush(self) -> None:
        self._wait_all()
        for directory in sorted(self._dirty):
            try:
                files.fsync_dir(directory)
            except OSError as e:
                raise FolderError(
                    f"cannot sync {directory} ({e.strerror}): check the disk and rerun"
                )
            self._dirty.discard(directory)

    # internals ----------------------------------------------------------------------

    def _locate(self, key: str, rescan: bool) -> tuple[str, str] | None:
        if not rescan:
            loc = self._where.get(key)
            if loc is not None:
                return loc
        self._rescan()
        return self._where.get(key)

    def cursor_after_writes(self) -> dict:
        """A cursor for the folder as it is now, after this object's own writes, if
        nothing else changed it since list(): the files on disk must be exactly the
        listing plus our own appends, renames and deletions."""
        if not self._verifiable:
            return {}
        self.flush()
        stamps = self._dir_mtimes(settle_ns=self.SETTLE_AFTER_WRITES_NS)
        if stamps is None:
            time.sleep(self.SETTLE_AFTER_WRITES_NS / 1e9)
            stamps = self._dir_mtimes(settle_ns=self.SETTLE_AFTER_WRITES_NS)
        if stamps is None:
            return {}
        if stamps.get("keywords") != self._kw_stamp:
            return {}  # dovecot-keywords is not the version we last read or wrote
        now: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):
            try:
                now.update(self._names(sub))
            except OSError:
                return {}
        return stamps if now == self._where else {}

    def _names(self, sub: str) -> Iterator[tuple[str, tuple[str, str]]]:
        """(key, (sub, file name)) for each message in new/ or cur/, by name alone (no
        stat); OSError when the directory cannot be read."""
        with os.scandir(os.path.join(self.path, sub)) as entries:
            for entry in entries:
                filename = entry.name
                if not filename.startswith("."):
                    key = split_name(filename)[0]
                    if key:
                        yield key, (sub, filename)

    def _rescan(self) -> None:
        """Re-read new/ and cur/ names (no stat) to follow files a mail reader moved."""
        self._verifiable = False  # files moved under us: only a new list() can vouch
        where: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):
            try:
                where.update(self._names(sub))
            except OSError:
                continue
        self._where = where

    def _writable(self) -> None:
        if self.read_only:
            raise FolderError(f"{self.name} in {self.store.url} is read-only")

    def _clean_tmp(self) -> None:
        """Remove what killed writers left in tmp/: at once, files of mailsync's own
        whose process is gone (see _dead_writer); others' files once untouched for 36
        hours, as the Maildir spec says.  A file in tmp/ was never renamed into new/ or
        cur/, so it is no message yet: nothing is lost."""
        cutoff = time.time() - TMP_MAX_AGE
        try:
            with os.scandir(os.path.join(self.path, "tmp")) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                        if not stat.S_ISREG(st.st_mode):
                            continue
                        untouched = max(st.st_atime, st.st_mtime, st.st_ctime) < cutoff
                        if untouched or _dead_writer(entry.name):
                            os.unlink(entry.path)
                    except OSError:
                        continue
        except OSError:
            pass


# -- store --------------------------------------------------------------------------


class MaildirStore(Store):
    def __init__(self, path: str, layout: str | None = None, read_only: bool = False):
        """`layout` None: the tree's own (see detect_layout)."""
        self.path = path
        self.root = os.path.abspath(path)
        # Whether the tree chose its layout (see former_names).
        self.detected = layout is None
        if layout is None:
            layout = self.detect_layout()
        elif isinstance(layout, str) and layout.replace(" ", "+") in LAYOUTS:
            # URL queries are form-decoded, which turns ?layout=maildir++ into "maildir  "
            layout = layout.replace(" ", "+")
        if layout not in LAYOUTS:
            raise ConfigError(
                f"unknown Maildir layout {layout!r}; choose one of: {', '.join(LAYOUTS)}"
            )
        self.layout = layout
        self.read_only = read_only
        self.url = f"maildir:{path}" + ("" if layout == "verbatim" else f"?layout={layout}")
        self._opened: list[MaildirFolder] = []  # flushed on close: writes run in background
        self._kinds: dict[str, str] | None = None  # vdir folders seen by the last listing

    def detect_layout(self) -> str:
        """The layout of a tree whose URL names none.  A root that is itself a Maildir
        (cur/ and new/ in it) is maildir++: a standard ~/Maildir, INBOX at the root and
        .Sent beside it, or one folder given on its own (OUT/INBOX), which holds just
        INBOX.  Anything else is verbatim, and trees mailsync writes in the verbatim
        layout never have cur/ at the root, so their layout never changes under them.
        A root Maildir holding messages next to verbatim folders is refused (ConfigError):
        either reading would leave mail out, so the URL must say which."""
        if not _is_maildir(self.root):
            return "verbatim"
        verbatim = []
        try:
            with os.scandir(self.root) as entries:
                children = [
                    e.path
                    for e in entries
                    if not e.name.startswith(".") and e.name not in SUBDIRS and e.is_dir()
                ]
        except OSError:
            children = []
        for child in sorted(children):
            if _unreached(child, "maildir++", "verbatim"):
                verbatim.append(os.path.basename(child))
        if not verbatim:
            return "maildir++"
        if not _holds_messages(self.root):
            return "verbatim"  # an empty Maildir at the root leaves nothing out
        raise ConfigError(
            f"{self.root} is itself a Maildir with messages (INBOX in the maildir++ layout) "
            f"and also holds folders in the verbatim layout ({', '.join(verbatim[:3])}"
            f"{', ...' if len(verbatim) > 3 else ''}); say which: "
            f"maildir:{self.path}?layout=maildir++ or maildir:{self.path}?layout=verbatim"
        )

    def close(self) -> None:
        folders, self._opened = self._opened, []
        for folder in folders:
            folder.flush()

    def folder_path(self, name: str) -> str:
        """Where folder `name` lives on disk (FolderError for names that cannot be)."""
        parts = check_folder_name(name, self.layout)
        if self.layout == "maildir++":
            if name == "INBOX":
                return self.root
            return os.path.join(self.root, "." + ".".join(parts))
        return os.path.join(self.root, *parts)

    def list_folders(self) -> list[str]:
        self._check_root()
        problems: list[str] = []
        if self.layout == "maildir++":
            names = self._list_maildirpp(problems)
            self._kinds = {}  # vdirs need layout=verbatim
        else:
            names = self._list_verbatim(problems)
        self.problems = problems
        return sorted(names)

    def _check_root(self) -> None:
        """ConfigError (exit 2) for a root that is no directory, or is missing on a side
        the run only reads: a typo must not pass for an empty source.  A root mailsync
        writes to is made when the first folder is."""
        if os.path.isdir(self.root):
            return
        if os.path.lexists(self.root):
            hint = ""
            try:
                with open(self.root, "rb") as f:
                    if f.read(5) == b"From ":
                        hint = f"; it looks like an mbox file: write mbox:{self.path}"
            except OSError:
                pass
            raise ConfigError(f"{self.root} is not a directory, so no Maildir tree{hint}")
        if self.read_only:
            raise ConfigError(f"{self.root} does not exist; check the path")

    def _unnamable(self, name: str, path: str) -> str | None:
        """Why the directory `path`, found as folder `name`, cannot be that folder."""
        try:
            if self.folder_path(name) == path:
                return None
        except FolderError as error:
            return str(error)
        return f"it would be folder {name!r}, which lives elsewhere"

    def _check(self, name: str, path: str, problems: list[str]) -> bool:
        """Whether the Maildir at `path` is folder `name`.  One that cannot be but holds
        messages becomes a problem: mail is never left out silently."""
        why = self._unnamable(name, path)
        if why is None:
            return True
        if _holds_messages(path):
            problems.append(f"{_shorten(path)} holds mail but is not synced: {why}")
        return False

    def _list_maildirpp(self, problems: list[str]) -> list[str]:
        names = []
        if _is_maildir(self.root):
            names.append("INBOX")
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return names  # no tree yet
        except OSError as e:
            raise StoreError(f"cannot read {self.root} ({e.strerror}): check its permissions")
        for entry in entries:
            try:
                if not entry.is_dir():
                    continue
            except OSError:
                continue
            if not entry.name.startswith("."):
                if entry.name not in SUBDIRS:
                    problems.extend(_unreached(entry.path, "maildir++", "verbatim"))
                continue
            if entry.name in (".", ".."):
                continue
            name = entry.name[1:].replace(".", "/")
            if _is_maildir(entry.path):
                if name == "INBOX":
                    if _holds_messages(entry.path):
                        problems.append(
                            f"{entry.path} holds mail but is not synced: INBOX is the root "
                            "itself in the maildir++ layout; move its messages there"
                        )
                elif self._check(name, entry.path, problems):
                    names.append(name)
            elif half := _half_maildir(entry.path):
                problems.append(half)
        return names

    def _list_verbatim(self, problems: list[str]) -> list[str]:
        from mailsync.stores.vdir import vdir_kind  # (vdir builds on this module)

        names = []
        kinds: dict[str, str] = {}
        seen: set[tuple[int, int]] = set()
        # (directory, its folder name, "" for the root): a loop rather than recursion, so
        # a tree a thousand levels deep is walked like any other.
        if _is_maildir(self.root) and _holds_messages(self.root):
            problems.append(
                f"{self.root} itself holds mail (in its cur/ and new/), which the verbatim "
                "layout does not read; use ?layout=maildir++ (the root is INBOX)"
            )
        pending = [(self.root, "")]
        while pending:
            directory, name = pending.pop()
            if name:
                if name.count("/") >= MAX_FOLDER_DEPTH:
                    problems.append(
                        f"{_shorten(directory)} is nested deeper than {MAX_FOLDER_DEPTH} "
                        "folders: it and its subfolders are not synced; move them up"
                    )
                    continue
                if _is_maildir(directory):
                    if self._check(name, directory, problems):
                        names.append(name)
                elif kind := vdir_kind(directory):
                    if self._check(name, directory, problems):
                        names.append(name)  # a calendar or address book (see stores/vdir.py)
                        kinds[name] = kind
                elif half := _half_maildir(directory):
                    problems.append(half)
            try:
                st = os.stat(directory)
                if (st.st_dev, st.st_ino) in seen:
                    continue  # a symlink loop
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(directory) as it:
                    entries = [e for e in it if e.name not in SUBDIRS]
            except FileNotFoundError:
                continue  # no tree yet, or removed meanwhile
            except OSError as e:
                if not name:
                    raise StoreError(
                        f"cannot read {self.root} ({e.strerror}): check its permissions"
                    )
                problems.append(
                    f"cannot read {directory} ({e.strerror}): the folders in it are not "
                    "synced; check its permissions"
                )
                continue
            for entry in entries:
                try:
                    if entry.is_dir():
                        pending.append((entry.path, f"{name}/{entry.name}" if name else entry.name))
                except OSError:
                    continue
        self._kinds = kinds
        return names

    def open_folder(self, name: str, create: bool = False, kind: str = "mail"):
        from mailsync.stores.vdir import vdir_kind

        path = self.folder_path(name)
        existing = vdir_kind(path)
        if existing is not None or kind != "mail":
            return self._open_vdir(name, path, existing, create, kind)
        dirty: set[str] = set()
        if not _is_maildir(path):
            if not create:
                raise FolderError(f"{self.url}: no folder {name} (no Maildir at {path})")

            def make(path: str) -> None:
                files.make_private_dirs(path, dirty)
                for sub in SUBDIRS:
                    files.make_private_dirs(os.path.join(path, sub), dirty)

            self._create(name, path, make)
        folder = MaildirFolder(self, name, path, dirty)
        if not self.read_only:
            folder._clean_tmp()
            self._opened.append(folder)
        return folder

    def _open_vdir(self, name: str, path: str, existing: str | None, create: bool, kind: str):
        """Calendars and contacts (EWS) live in vdirs inside the tree."""
        from mailsync.stores.vdir import VdirFolder, make_vdir

        if self.layout != "verbatim":
            raise FolderError(f"{self.url}: {kind} folders need layout=verbatim")
        if existing is None:
            if _is_maildir(path):
                raise FolderError(f"{self.url}: {name} is a mail folder, not a {kind} folder")
            if not create:
                raise FolderError(f"{self.url}: no folder {name}")
            self._create(name, path, lambda path: make_vdir(path, kind))
            existing = kind
        return VdirFolder(name, path, existing, read_only=self.read_only)

    def _create(self, name: str, path: str, make) -> None:
        """A missing folder made with make(path), or a FolderError saying why not."""
        if self.read_only:
            raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
        try:
            make(path)
        except OSError as e:
            raise FolderError(f"cannot create {path} ({e.strerror}): check the permissions")

    def folder_kinds(self) -> dict[str, str]:
        if self._kinds is None:
            self.list_folders()
        return dict(self._kinds or {})

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        if self.read_only:
            return "the store is read-only"
        if kind != "mail" and self.layout != "verbatim":
            return f"{kind} folders need layout=verbatim"
        try:
            path = self.folder_path(name)
        except FolderError as error:
            return str(error)
        return path_creation_problem(path)

    def former_names(self) -> dict[str, str]:
        """A tree whose layout was detected as maildir++ (a standard ~/Maildir given
        without ?layout=) was read as verbatim by mailsync 0.1.0, which named its
        folder .Archive.2019 ".Archive.2019" (and left INBOX out): those are the former
        names, so a state from then is moved to the new names, nothing copied twice."""
        if not self.detected or self.layout != "maildir++":
            return {}
        return {
            name: "." + name.replace("/", ".") for name in self.list_folders() if name != "INBOX"
        }

    can_rename = True

    def rename_folder(self, old: str, new: str) -> None:
        """A folder's directory is renamed, so its files (and with them keys, flags and
        dovecot-keywords) stay as they are.  Verbatim: one rename(2) of ROOT/OLD, which
        takes the subfolders (and vdirs) inside it along.  Maildir++: ROOT/.OLD and each
        ROOT/.OLD.* sibling in turn, the folder itself last; a rerun moves whatever is
        still at the old names.  Parent directories left empty (no Maildir) go."""
        if self.read_only:
            raise RenameRefused(f"{self.url}: cannot rename {old}, the store is read-only")
        if "INBOX" in (old, new):
            raise RenameRefused(f"{self.url}: INBOX is not renamed")
        if new.startswith(old + "/"):
            raise RenameRefused(f"{self.url}: cannot move {old} into itself ({new})")
        try:
            moves = self._moves(old, new)
        except FolderError as error:
            raise RenameRefused(str(error))
        for _src, dst in moves:
            if os.path.lexists(dst):
                raise RenameRefused(
                    f"{self.url}: cannot rename {old} to {new}: {dst} exists; move it away"
                )
        try:
            for src, dst in moves:
                dirty: set[str] = set()
                files.make_private_dirs(os.path.dirname(dst), dirty)
                os.rename(src, dst)
                for directory in sorted(dirty | {os.path.dirname(src), os.path.dirname(dst)}):
                    files.fsync_dir(directory)
        except OSError as e:
            raise FolderError(
                f"{self.url}: cannot rename {old} to {new} ({e.strerror or e}); fix it and "
                "rerun to finish the move"
            )
        if self.layout == "verbatim" and moves:
            self._remove_empty_parents(os.path.dirname(moves[0][0]))

    def _moves(self, old: str, new: str) -> list[tuple[str, str]]:
        """(source, destination) of each directory of folder `old` still to be moved
        to `new`, subfolders first."""
        src, dst = self.folder_path(old), self.folder_path(new)  # FolderError for bad names
        if self.layout == "verbatim":
            return [(src, dst)] if os.path.lexists(src) else []
        base_src, base_dst = os.path.basename(src), os.path.basename(dst)
        moves = []
        try:
            with os.scandir(self.root) as entries:
                names = sorted(e.name for e in entries)
        except OSError as e:
            raise FolderError(f"{self.url}: cannot read {self.root} ({e.strerror})")
        for name in names:
            if name.startswith(base_src + "."):
                moves.append(
                    (
                        os.path.join(self.root, name),
                        os.path.join(self.root, base_dst + name[len(base_src) :]),
                    )
                )
        if base_src in names:
            moves.append((src, dst))
        return moves

    def _remove_empty_parents(self, directory: str) -> None:
        """rmdir each directory from `directory` up to the root while it is empty."""
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)
            with contextlib.suppress(OSError):
                files.fsync_dir(directory)

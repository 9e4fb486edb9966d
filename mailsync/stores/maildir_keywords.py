"""IMAP keywords in a Maildir folder, kept the way Dovecot keeps them.

The folder's ``dovecot-keywords`` file (next to cur/new/tmp) has lines ``N keyword``
(N = 0..25), and info letter ``a`` + N in a message file's name means that keyword
(``:2,Sa`` = \\Seen and keyword 0).  A folder holds at most 26 keywords, and only names
Dovecot accepts (RFC 3501 atoms: ASCII, no space, control character or ``(){%*"\\]``, at
most 50 characters).  A letter is written to dovecot-keywords, durably, before any file
name uses it, so a crash never leaves a letter without its meaning.  Letters without a
line in dovecot-keywords are kept untouched but not reported, and an unreadable
dovecot-keywords fails the listing rather than make every keyword look removed.  Dovecot
keeps $Forwarded as a keyword: its letter reads as $Forwarded like P does, removing
$Forwarded removes both, and adding it writes P plus that letter where the folder has
one.  mailsync processes adding keywords to one folder at the same time take turns with
flock() on the folder directory (Dovecot relies on its own uidlist lock instead); every
rewrite makes the file's mtime grow by at least a second, which is how a running Dovecot
notices it.  A Dovecot configured with a separate CONTROL= directory looks for
dovecot-keywords there, not in the Maildir.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Callable

from mailsync import files
from mailsync.errors import FolderError, MessageError
from mailsync.message import FORWARDED, STANDARD_FLAGS

KEYWORDS_FILE = "dovecot-keywords"
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # keyword N is letter KEYWORD_LETTERS[N]
MAX_KEYWORD_LENGTH = 50  # Dovecot's default mail_max_keyword_length
# RFC 3501 atom-specials: ( ) { SP CTL % * " \ ]  (8-bit characters are no atoms either)
_ATOM_SPECIALS = re.compile(r'[\x00-\x20\x7f(){%*"\\\]]')


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


def file_stamp(st: os.stat_result) -> list[int]:
    """What tells one version of a replaced-not-rewritten file from another (a list, as
    cursors go through JSON)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]


class DovecotKeywords:
    """One folder's dovecot-keywords, as last read or written.

    `folder` is the folder's directory; `tmp_path()` names the file a rewrite is written
    to before its rename (in the folder's tmp/, made if need be)."""

    def __init__(self, folder: str, tmp_path: Callable[[], str], read_only: bool):
        self.folder = folder
        self.path = os.path.join(folder, KEYWORDS_FILE)
        self._tmp_path = tmp_path
        self._read_only = read_only
        self._index: dict[int, str] | None = None  # every line, valid name or not
        #: letter -> flag, for valid names only
        self.letters: dict[str, str] = {}
        self._by_name: dict[str, list[str]] = {}  # flag -> its letters
        self._folded: set[str] = set()  # lowercased names of every line
        #: The identity of the version of the file read or written last (None: none).
        self.stamp: list | None = None
        # keywords persists() promised a letter to that have none yet
        self._reserved: dict[str, None] = {}

    def read(self) -> None:
        """(Re-)read dovecot-keywords; a missing file means no keywords."""
        path = self.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._set({}, None)
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
            self._set(dict.fromkeys(range(len(KEYWORD_LETTERS)), ""), None)
            return
        self._set(parse_keywords(text), file_stamp(st))

    def _set(self, index: dict[int, str], stamp: list | None) -> None:
        self._index = index
        self.stamp = stamp
        letters: dict[str, str] = {}
        by_name: dict[str, list[str]] = {}
        for i, name in index.items():
            if valid_keyword(name):
                flag = _keyword_name(name)
                letters[KEYWORD_LETTERS[i]] = flag
                by_name.setdefault(flag, []).append(KEYWORD_LETTERS[i])
        self.letters = letters
        self._by_name = by_name
        self._folded = {name.lower() for name in index.values()}
        for flag in list(self._reserved):
            if flag in by_name:
                del self._reserved[flag]

    def persists(self, keyword: str) -> bool:
        """Whether the folder can keep `keyword` (no standard flag): it has a letter, or
        gets the promise of one while letters are left (26 at most) and the folder is
        writable.  A keyword that differs only in case from one with a letter is not
        kept: Dovecot matches names case-insensitively, so it would read back as the
        other spelling."""
        if self._index is None:
            self.read()
        assert self._index is not None
        if keyword in self._by_name or keyword in self._reserved:
            return True
        if self._read_only or not valid_keyword(keyword):
            return False
        folded = keyword.lower()
        if folded in self._folded or any(folded == r.lower() for r in self._reserved):
            return False
        if len(self._index) + len(self._reserved) >= len(KEYWORD_LETTERS):
            return False
        self._reserved[keyword] = None
        return True

    def letters_of(self, flags, create: bool) -> set[str]:
        """The letters of the keywords among `flags`.  With `create`, keywords that
        persists() allows but have no letter yet get one first: dovecot-keywords is
        rewritten and made durable before this returns."""
        keywords = [f for f in flags if f not in STANDARD_FLAGS]
        if FORWARDED in flags:
            keywords.append(FORWARDED)  # also as Dovecot writes it, where it has a letter
        if not keywords:
            return set()
        if self._index is None:
            self.read()
        if create:
            missing = [
                f
                for f in keywords
                if f not in STANDARD_FLAGS and f not in self._by_name and self.persists(f)
            ]
            if missing:
                self._add(sorted(missing))
        return {letter for f in keywords for letter in self._by_name.get(f, ())}

    def _add(self, names: list[str]) -> None:
        """Give `names` letters in dovecot-keywords: under flock() on the folder directory,
        re-read the file, add the names still missing at the lowest free indexes, write
        tmp/, fsync, rename over dovecot-keywords and fsync the folder directory."""
        path = self.path
        try:
            lock = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise MessageError(files.write_error(e, self.folder))
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise MessageError(files.write_error(e, self.folder))
                # a filesystem without flock(): go on unlocked, as Dovecot would
            try:
                old = os.stat(path)
            except FileNotFoundError:
                old = None
            except OSError as e:
                raise MessageError(files.write_error(e, path))
            self.read()  # another program may have added some meanwhile
            index = dict(self._index or {})
            free = [i for i in range(len(KEYWORD_LETTERS)) if i not in index]
            folded = set(self._folded)
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
                self._write(index, old)
                self._set(index, file_stamp(os.stat(path)))
        finally:
            os.close(lock)  # releases the flock
        for name in names:
            self._reserved.pop(name, None)

    def _write(self, index: dict[int, str], old: os.stat_result | None) -> None:
        path = self.path
        tmp = self._tmp_path()
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
            files.fsync_dir(self.folder)
        except OSError as e:
            raise MessageError(files.write_error(e, self.folder))

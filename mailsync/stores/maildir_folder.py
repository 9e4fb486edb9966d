"""Maildir folders: one directory with cur/, new/ and tmp/, one file per message.

A message's key is its file's unique base name: everything before the ``:2,`` info
suffix, so Dovecot's ``,S=``/``,W=`` parts stay in the key and the key survives a mail
reader moving the file from new/ to cur/ or changing its flags.  The six standard flags
map to the info letters D F P R S T; keywords to the letters a-z that the folder's
dovecot-keywords file names (stores/maildir_keywords.py).  Keys never change, so
``validity`` is "".

Writes follow the Maildir protocol: write and fsync tmp/NAME, then rename it into new/
or cur/ (on a small pool of writer threads); ``flush`` fsyncs every directory whose
entries changed.  What killed writers left in tmp/ is removed when the folder is opened.
Where folders are in a tree, and which names they have, is the store's (maildir.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from mailsync import files
from mailsync.errors import FolderError, MessageError
from mailsync.message import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    FORWARDED,
    RECENT,
    SEEN,
    STANDARD_FLAGS,
    Body,
    Info,
    to_lf,
)
from mailsync.stores.base import Folder
from mailsync.stores.maildir_keywords import KEYWORDS_FILE, DovecotKeywords, file_stamp

if TYPE_CHECKING:
    from mailsync.stores.maildir import MaildirStore

log = logging.getLogger("mailsync")

FLAG_LETTERS = {DRAFT: "D", FLAGGED: "F", FORWARDED: "P", ANSWERED: "R", SEEN: "S", DELETED: "T"}
LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()}
_STD_LETTERS = frozenset(LETTER_FLAGS)

INFO_SEP = ":2,"
TMP_MAX_AGE = 36 * 3600  # the Maildir spec: stale tmp/ files may go after 36 hours

_counter = itertools.count(1)  # the Q part of unique names, per process


# -- file names -------------------------------------------------------------------------


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
# dovecot-keywords rewrite (_keywords_tmp); each carries the writer's pid and host.
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


# -- folder ---------------------------------------------------------------------------


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
    _folder: MaildirFolder
    _key: str

    def __init__(self, flags: frozenset[str], size: int, folder: MaildirFolder, key: str):
        setattr_ = object.__setattr__  # Info is frozen
        setattr_(self, "flags", flags)
        setattr_(self, "size", size)
        setattr_(self, "account_id", None)
        setattr_(self, "_folder", folder)
        setattr_(self, "_key", key)

    @property
    def arrival(self) -> float:
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
        self.keywords = DovecotKeywords(path, self._keywords_tmp, self.read_only)

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
            stamps["keywords"] = file_stamp(os.stat(self.keywords.path))
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
        self.keywords.read()
        keywords = self.keywords.letters
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
        """The six standard flags, and the keywords dovecot-keywords has or can get a
        letter for (DovecotKeywords.persists)."""
        return flag in STANDARD_FLAGS or self.keywords.persists(flag)

    def _tmp_dir(self) -> str:
        """tmp/, made if it is missing (MessageError if it cannot be)."""
        tmp_dir = os.path.join(self.path, "tmp")
        try:
            files.make_private_dirs(tmp_dir, self._dirty)
        except OSError as e:
            raise MessageError(files.write_error(e, tmp_dir))
        self._have_tmp = True
        return tmp_dir

    def _keywords_tmp(self) -> str:
        """Where dovecot-keywords is written before its rename: tmp/, under a name of this
        process's (see _dead_writer)."""
        host = safe_hostname(socket.gethostname() or "localhost")
        return os.path.join(self._tmp_dir(), f"{KEYWORDS_FILE}.P{os.getpid()}.{host}")

    # writing ------------------------------------------------------------------------

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        data = to_lf(data)
        if arrival is None:
            arrival = time.time()
        tmp_dir = os.path.join(self.path, "tmp") if self._have_tmp else self._tmp_dir()
        # Before the message is queued: its letters must be in dovecot-keywords, durably,
        # before the writer thread renames it into place.
        key, sub, filename = self._new_name(flags, len(data))
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

    def _new_name(self, flags: frozenset[str], size: int) -> tuple[str, str, str]:
        """(key, new/ or cur/, file name) of a message to be added with these flags, the
        letters of its keywords made durable in dovecot-keywords first."""
        letters = "".join(sorted(set(flags_info(flags)) | self.keywords.letters_of(flags, True)))
        key = unique_name(size)
        # new/ is for what no mail reader has seen (\Recent, which the engine passes on
        # from a source Maildir's new/, and for every message from sources that cannot
        # tell); a message with flags, or without \Recent, was seen: cur/, with an empty
        # info if need be, so mutt shows old unread mail as old, not as new.
        if letters or RECENT not in flags:
            return key, "cur", key + INFO_SEP + letters
        return key, "new", key

    def append_copy(
        self, data: Body, flags: frozenset[str], arrival: float, origin: Folder, origin_key: str
    ) -> str:
        """A hard link to the origin's file (durable already: the engine records a copy
        only after its flush), under a new name with its own flags, in new/ or cur/ as
        append() would file it.  A link is made whole at once, so it needs no tmp/; only
        the directory is fsynced (flush).  Where no link can be made (another file
        system, a file system without hard links, the origin's file gone), append()."""
        if not isinstance(origin, MaildirFolder):
            return self.append(data, flags, arrival)
        self._writable()
        where = origin._on_file(origin_key, lambda sub, name: os.path.join(origin.path, sub, name))
        if where is _GONE:
            return self.append(data, flags, arrival)
        key, sub, filename = self._new_name(flags, len(to_lf(data)))
        try:
            os.link(where, os.path.join(self.path, sub, filename))
        except OSError as error:  # EXDEV, EPERM, EMLINK, ENOENT (renamed meanwhile): copy
            log.debug("%s: no hard link to %s (%s); copying", self.name, where, error)
            return self.append(data, flags, arrival)
        self._dirty.add(os.path.join(self.path, sub))
        self._where[key] = (sub, filename)
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
        add_letters |= self.keywords.letters_of(add, create=True)  # durable before the rename
        remove_letters = {FLAG_LETTERS[f] for f in remove if f in FLAG_LETTERS}
        remove_letters |= self.keywords.letters_of(remove, create=False)
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
        if stamps.get("keywords") != self.keywords.stamp:
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

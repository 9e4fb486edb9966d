"""mbox folders: one mboxrd file, indexed, appended to under a journal, rewritten to delete.

Keys are content hashes: the first message with body hash ``h`` is ``h``, further
identical copies are ``h.1``, ``h.2``... in file order, so keys survive rewrites.  mbox
cannot keep flags without rewriting messages, so ``persists`` is false for every flag;
``list`` still reports the read state found in ``Status:``/``X-Status:`` headers.

Appends go to the end of the file under a journal (``.NAME.mailsync-journal`` holds the
size before the batch) so that a crash can be undone; deletions are batched and applied
by one rewrite (``.NAME.mailsync-new`` renamed over the file) in ``flush``.  Every access
holds a kernel lock (lockf and flock) and a ``FILE.lock`` dotlock, like mutt and Python's
``mailbox`` module.

The file format is mbox_format.py's, the locks mbox_lock.py's; where folders are in a
tree, and which names they have, is the store's (mbox.py).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailsync import files
from mailsync.errors import FolderError, MessageError
from mailsync.message import Body, Info, fingerprint, to_lf
from mailsync.stores.base import Folder
from mailsync.stores.mbox_format import (
    decode_chunk,
    format_message,
    header_flags,
    parse_from_date,
    stored_form,
)
from mailsync.stores.mbox_lock import MboxLocks

if TYPE_CHECKING:
    from mailsync.stores.mbox import MboxStore

log = logging.getLogger("mailsync.stores.mbox")

JOURNAL_SUFFIX = ".mailsync-journal"
NEW_SUFFIX = ".mailsync-new"
COPY_BLOCK = 1 << 20


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
        self._locks = MboxLocks(path)
        self.lock_path = self._locks.lock_path
        self.journal_path = os.path.join(self.dir, "." + base + JOURNAL_SUFFIX)
        self.new_path = os.path.join(self.dir, "." + base + NEW_SUFFIX)
        self._entries: list[_Entry] = []
        self._live: dict[str, list[_Entry]] = {}  # key hash -> live copies, file order
        self._stray = 0  # bytes before the first From_ line (a damaged file)
        self._stamp: tuple | None = None
        self._listed: tuple | None = None  # the stamp the last list() described
        self._limit: int | None = None  # read-only view of a file with a crash journal
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
            with self.locked(exclusive=True):
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

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
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

    def _stray_problem(self) -> builtins.list[str]:
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

    def _set_entries(self, entries: builtins.list[_Entry]) -> None:
        self._entries = entries
        live: dict[str, list[_Entry]] = {}
        for e in entries:
            if not e.deleted:
                live.setdefault(e.digest[:32], []).append(e)
        self._live = live

    def _live_copies(self, short: str) -> builtins.list[_Entry]:
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
        with self.locked() as fd:
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
    def locked(self, exclusive: bool = False) -> Iterator[int]:
        """The file, open, under every lock (shared or exclusive), a crashed run's
        leftovers repaired; inside a write batch, the batch's own descriptor."""
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
        self._locks.take(fd, exclusive, deadline, self.LOCK_POLL, self.STALE_LOCK_AGE)
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
        self._locks.release_dotlock()
        os.close(fd)  # drops the lockf and flock locks

    def _recover(self, fd: int, exclusive: bool) -> None:
        """A journal means a run died mid-batch: cut the file back to its recorded size."""
        size: int | None
        ino: int | None
        try:
            with open(self.journal_path, "rb") as f:
                fields = f.read(200).split()
            size = int(fields[0])
            ino = int(fields[1]) if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            size = ino = None
        st = os.fstat(fd)
        if size is not None and (ino is None or ino == st.st_ino) and size <= st.st_size:
            recorded: int | None = size  # the journal is of this file
        else:
            recorded = None
        if not exclusive:  # read-only: leave the file alone, ignore the torn tail
            self._limit = recorded
            if recorded is not None and recorded < st.st_size:
                log.warning(
                    "%s: ignoring %d bytes after offset %d left by an interrupted run "
                    "(read-only store; open it writable once to repair the file)",
                    self.path,
                    st.st_size - recorded,
                    recorded,
                )
            return
        if recorded is not None:
            if st.st_size > recorded:
                log.warning(
                    "%s: an interrupted run left %d bytes after offset %d; truncating them",
                    self.path,
                    st.st_size - recorded,
                    recorded,
                )
                os.ftruncate(fd, recorded)
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

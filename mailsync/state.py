"""Sync state: one SQLite file per channel, private, locked while a run uses it.

Per folder: each side's folder name and validity token (IMAP UIDVALIDITY), protocol
cursors (MODSEQ, UIDL, SyncState) as JSON, and the pairs of keys with the flags last
synced and the content hash.  A pair whose key on one side is NULL is a tombstone: the
message was deleted on that side and kept on the other (delete = keep), so it is not
copied back.

Messages the other side refused for good (errors.RefusedError: too big, malformed) are
kept per folder by their side and key, with their content hash, what names them
(message.summary()), the destination's reason and when it was first and last refused, so
later runs do not offer them again unless asked (--retry-refused) and status shows them.

Copies under way (the pending table) are the source keys of a batch of copies, recorded
in one transaction before the batch is sent and removed in the transaction that records
its pairs: after a crash, what is left names the messages that may be on the destination
without a pair, so the next run may recognise their copies by their headers
(message.header_identity) where a server rewrote them beyond what
message.tolerant_fingerprint() knows.  Only keys are kept: the message is read again
from its source on the next run anyway (it is still to be copied), and its keys do not
change while the side's validity does not (the entries of a side whose validity changed
are dropped).

The engine writes a pair only after the message is durable on the destination
(Folder.flush), so a crash leaves at worst a durable but unrecorded copy, which the next
run finds again by its content hash.

Versions: the layout of a state file has a number and named migrations
(mailsync/state_schema.py); opening a State brings an older file up to date and refuses
one from a newer mailsync.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from mailsync.errors import ConfigError, LockedError, StoreError
from mailsync.message import format_flags, parse_flags
from mailsync.state_schema import (
    SCHEMA_VERSION,
    bring_up_to_date,
    newer_error,
    stored_version,
    unreadable_error,
)

if TYPE_CHECKING:
    from mailsync.stores.base import Cursor

log = logging.getLogger("mailsync")

#: Meta entries kept per folder, named NOTE:FOLDER_ID (folder_sync.py, copies.py).
FOLDER_NOTES = ("clean", "refused", "account-ids", "unconfirmed")
# The columns of a pairs row that Pair takes, in its order (Pair(*row) after the flags).
_PAIR_COLUMNS = "id, key_a, key_b, flags, hash, ident, added, version_a, account_id_a"


@dataclass
class Pair:
    id: int | None
    key_a: str | None
    key_b: str | None
    flags: frozenset[str]
    hash: str | None = None  # message.fingerprint(): the content hash
    ident: str | None = None  # message.header_digest(): header + size, for cheap re-matching
    # When the pair was first recorded (POP3 delete_after_days); not part of its identity.
    added: float | None = field(default=None, compare=False)
    # The remote message's own version when the pair was last written (EWS ChangeKey).
    version_a: str | None = field(default=None, compare=False)
    # The remote message's id across its account's folders (Info.account_id: Gmail's
    # X-GM-MSGID), so that another folder's copy of it is found (State.local_copies).
    account_id_a: str | None = field(default=None, compare=False)

    def key(self, side: str) -> str | None:
        return self.key_a if side == "a" else self.key_b

    def set_key(self, side: str, key: str | None) -> None:
        if side == "a":
            self.key_a = key
        else:
            self.key_b = key


@dataclass
class FolderState:
    id: int
    name_a: str
    name_b: str
    validity_a: str | None
    validity_b: str | None
    cursor_a: Cursor
    cursor_b: Cursor
    last_sync: float | None
    ident_a: str | None = None  # the remote folder's own id, where it has one (EWS)

    def validity(self, side: str) -> str | None:
        return self.validity_a if side == "a" else self.validity_b

    def set_validity(self, side: str, validity: str) -> None:
        if side == "a":
            self.validity_a = validity
        else:
            self.validity_b = validity

    def cursor(self, side: str) -> Cursor:
        return self.cursor_a if side == "a" else self.cursor_b

    def set_cursor(self, side: str, cursor: Cursor) -> None:
        if side == "a":
            self.cursor_a = cursor
        else:
            self.cursor_b = cursor


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "mailsync")


def state_file_name(channel: str | None, url_a: str, url_b: str) -> str:
    """Channels by name; ad-hoc pairs by a hash of their two canonical URLs."""
    if channel:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", channel)
        return f"channel-{safe}.db"
    digest = hashlib.sha256(f"{url_a}\0{url_b}".encode()).hexdigest()[:16]
    return f"adhoc-{digest}.db"


def private_dir(path: str) -> None:
    """Create the state directory (0700), or check an existing one as ssh checks ~/.ssh: it
    must belong to this user and be writable by nobody else.  Otherwise someone else may
    have planted files in it (a lock file that is a link to /etc/shadow) that a run, as
    root perhaps, would truncate or chmod: refused, exit 2."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"state directory {path} belongs to {_user_name(st.st_uid)}, not to "
            f"{_user_name(os.geteuid())}, who runs mailsync; files in it could be planted by "
            "its owner: use a directory of your own (--state-dir) or chown it"
        )
    if st.st_mode & 0o022:
        who = "others" if st.st_mode & 0o002 else "its group"
        raise ConfigError(
            f"state directory {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"check that nobody else planted files in it, then chmod 700 {path}"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _open_private(path: str, flags: int) -> int:
    """Open a state file (the database, its -wal/-shm, the lock) without following a
    symbolic link, check that it is a plain file of this user's, and make it 0600."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigError(
                f"state file {path} is a symbolic link; mailsync follows no links in its state "
                "directory: find out who made it, and remove it"
            )
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink > 1:
            raise ConfigError(
                f"state file {path} is not a plain file of {_user_name(os.geteuid())}'s "
                "(a device, another user's file or a hard link); find out who made it, and "
                "remove it"
            )
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


class State:
    """The state of one channel.  Use as a context manager: it holds the channel lock."""

    def __init__(self, path: str, *, lock: bool = True, create: bool = True):
        self.path = path
        self._lock_fd: int | None = None
        directory = os.path.dirname(path) or "."
        if not create and not os.path.exists(path):
            raise StoreError(f"no state at {path}: this channel has never been synced")
        private_dir(directory)
        if lock:
            self._lock()
        try:
            os.close(_open_private(path, os.O_CREAT | os.O_RDWR))
            self._check_companions()
        except BaseException:
            self._unlock()
            raise
        self._in_tx = False
        try:
            # check_same_thread off: a worker thread's handle is closed by the main thread
            # after the worker is done; no handle is ever used by two threads at once.
            self.db = sqlite3.connect(
                path, isolation_level=None, timeout=30, check_same_thread=False
            )
            self.db.execute("PRAGMA synchronous=FULL")
            # The version before anything is written: a file of a newer mailsync, or one
            # that is no mailsync state, is refused as it is (the journal mode included).
            version = stored_version(self.db)
            if version > SCHEMA_VERSION:
                raise newer_error(path, version)
            if version != SCHEMA_VERSION:
                bring_up_to_date(self.db, path)
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as error:
            self.close()
            raise unreadable_error(path, error)
        except BaseException:
            self.close()
            raise
        self._check_companions()

    def _check_companions(self) -> None:
        """SQLite's -wal and -shm files: plain, private, never a planted link (SQLite itself
        would follow one)."""
        for suffix in ("-wal", "-shm"):
            if os.path.lexists(self.path + suffix):
                os.close(_open_private(self.path + suffix, os.O_RDONLY | os.O_NONBLOCK))

    # locking ------------------------------------------------------------------
    def _lock(self) -> None:
        lock_path = self.path + ".lock"
        fd = _open_private(lock_path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode().strip()
            except OSError:
                holder = "?"
            os.close(fd)
            raise LockedError(
                f"another mailsync run (pid {holder or '?'}) is using this channel "
                f"({lock_path}); wait for it to finish"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        # (No db yet if connecting failed; none any more after a first close.)
        if getattr(self, "db", None) is not None:
            if self._in_tx:
                self.db.execute("ROLLBACK")
            self.db.close()
            del self.db
        self._unlock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # transactions ---------------------------------------------------------------
    def begin(self) -> None:
        if not self._in_tx:
            # IMMEDIATE: take the write lock up front, so parallel workers wait for each
            # other (busy timeout) instead of failing on a lock upgrade.
            self.db.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False

    def rollback(self) -> None:
        """Drop what the open transaction (if any) wrote."""
        if self._in_tx:
            self.db.execute("ROLLBACK")
            self._in_tx = False

    # meta -----------------------------------------------------------------------
    def get_meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    # folders --------------------------------------------------------------------
    def folders(self) -> list[FolderState]:
        rows = self.db.execute(
            "SELECT id, name_a, name_b, validity_a, validity_b, cursor_a, cursor_b, last_sync, "
            "ident_a "
            "FROM folders ORDER BY name_a"
        ).fetchall()
        return [self._folder(row) for row in rows]

    def folder(self, name_a: str, name_b: str) -> FolderState:
        """The folder's state, created empty if it is new."""
        sql = (
            "SELECT id, name_a, name_b, validity_a, validity_b, cursor_a, cursor_b, last_sync, "
            "ident_a "
            "FROM folders WHERE name_a = ? AND name_b = ?"
        )
        row = self.db.execute(sql, (name_a, name_b)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO folders (name_a, name_b) VALUES (?, ?)", (name_a, name_b))
            row = self.db.execute(sql, (name_a, name_b)).fetchone()
        return self._folder(row)

    @staticmethod
    def _folder(row: Any) -> FolderState:
        return FolderState(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            json.loads(row[5]),
            json.loads(row[6]),
            row[7],
            row[8],
        )

    def save_folder(self, folder: FolderState) -> None:
        self.db.execute(
            "UPDATE folders SET validity_a = ?, validity_b = ?, cursor_a = ?, cursor_b = ?, "
            "last_sync = ?, ident_a = ? WHERE id = ?",
            (
                folder.validity_a,
                folder.validity_b,
                json.dumps(folder.cursor_a, sort_keys=True),
                json.dumps(folder.cursor_b, sort_keys=True),
                folder.last_sync,
                folder.ident_a,
                folder.id,
            ),
        )

    def rename_folder(self, folder: FolderState, name_a: str) -> None:
        """The remote folder was renamed (same id): its state stays; only the remote
        name changes (the local folder follows through a move, below)."""
        self.db.execute("UPDATE folders SET name_a = ? WHERE id = ?", (name_a, folder.id))
        folder.name_a = name_a

    def rename_local(self, folder: FolderState, name_b: str) -> None:
        """Only the local name changes (the local store names the same folder anew)."""
        self.db.execute("UPDATE folders SET name_b = ? WHERE id = ?", (name_b, folder.id))
        folder.name_b = name_b

    def holds_nothing(self, folder_id: int) -> bool:
        """No pair, no copy under way, no refused message: the folder's state knows no
        message (a folder created but never filled, or a dry run's)."""
        one = "SELECT 1 FROM {} WHERE folder_id = ? LIMIT 1"
        tables = ("pairs", "pending", "refused")
        return not any(self.db.execute(one.format(t), (folder_id,)).fetchone() for t in tables)

    def unconfirmed(self, folder_id: int, add: Sequence[str] = ()) -> set[str]:
        """Local keys of messages paired by their headers, not their content (adopted:
        mail the destination had of its own); `add` some (within a transaction)."""
        name = f"unconfirmed:{folder_id}"
        keys = set(json.loads(self.get_meta(name) or "[]")) | set(add)
        if add:
            self.set_meta(name, json.dumps(sorted(keys)))
        return keys

    def forget_folder(self, folder: FolderState) -> None:
        """Drop the state of a folder that holds nothing (holds_nothing)."""
        for table in ("pairs", "pending", "refused"):
            self.db.execute(f"DELETE FROM {table} WHERE folder_id = ?", (folder.id,))
        self.db.execute("DELETE FROM folders WHERE id = ?", (folder.id,))
        # Its notes too: SQLite gives the next new folder this id again (no AUTOINCREMENT).
        self.db.executemany(
            "DELETE FROM meta WHERE name = ?", [(f"{n}:{folder.id}",) for n in FOLDER_NOTES]
        )

    # Moves of local folders (a remote folder was renamed) go through a journal: the move
    # is recorded before the disk is touched, and done with (every local name below the
    # old one rewritten) in one transaction after it, so a run killed in between finds
    # the move here and finishes it (Store.rename_folder completes a partial move).
    def add_move(self, old_b: str, new_b: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO folder_moves (old_b, new_b) VALUES (?, ?)", (old_b, new_b)
        )
        assert cursor.lastrowid is not None  # (an INSERT sets it)
        return cursor.lastrowid

    def drop_move(self, move_id: int) -> None:
        """A journaled move that did not happen (the store refused it at once)."""
        self.db.execute("DELETE FROM folder_moves WHERE id = ?", (move_id,))

    def moves(self) -> list[tuple[int, str, str]]:
        """Unfinished moves (id, old local name, new local name), oldest first."""
        return self.db.execute("SELECT id, old_b, new_b FROM folder_moves ORDER BY id").fetchall()

    def finish_move(self, move_id: int, old_b: str, new_b: str) -> None:
        """The local folder `old_b` and those below it are now under `new_b`."""
        self.db.execute(
            "UPDATE folders SET name_b = ? || substr(name_b, ?) "
            "WHERE name_b = ? OR substr(name_b, 1, ?) = ?",
            (new_b, len(old_b) + 1, old_b, len(old_b) + 1, old_b + "/"),
        )
        self.db.execute("DELETE FROM folder_moves WHERE id = ?", (move_id,))

    # pairs ------------------------------------------------------------------------
    def pairs(self, folder_id: int) -> list[Pair]:
        rows = self.db.execute(
            f"SELECT {_PAIR_COLUMNS} FROM pairs WHERE folder_id = ?",
            (folder_id,),
        )
        return [Pair(r[0], r[1], r[2], parse_flags(r[3]), *r[4:]) for r in rows]

    def pairs_for(self, folder_id: int, keys_a: list[str]) -> list[Pair]:
        """The pairs of these side-a keys (a page of changes), without loading them all."""
        out: list[Pair] = []
        for start in range(0, len(keys_a), 500):
            chunk = keys_a[start : start + 500]
            rows = self.db.execute(
                f"SELECT {_PAIR_COLUMNS} FROM pairs "
                f"WHERE folder_id = ? AND key_a IN ({','.join('?' * len(chunk))})",
                (folder_id, *chunk),
            )
            out += [Pair(r[0], r[1], r[2], parse_flags(r[3]), *r[4:]) for r in rows]
        return out

    def count_pairs(self, folder_id: int) -> tuple[int, int]:
        row = self.db.execute(
            "SELECT COUNT(key_a), COUNT(key_b) FROM pairs WHERE folder_id = ?", (folder_id,)
        ).fetchone()
        return row[0], row[1]

    def add_pair(self, folder_id: int, pair: Pair) -> None:
        if pair.added is None:
            pair.added = time.time()
        cursor = self.db.execute(
            "INSERT INTO pairs (folder_id, key_a, key_b, flags, hash, ident, added, version_a, "
            "account_id_a) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                folder_id,
                pair.key_a,
                pair.key_b,
                format_flags(pair.flags),
                pair.hash,
                pair.ident,
                pair.added,
                pair.version_a,
                pair.account_id_a,
            ),
        )
        pair.id = cursor.lastrowid

    def update_pair(self, pair: Pair) -> None:
        self.db.execute(
            "UPDATE pairs SET key_a = ?, key_b = ?, flags = ?, hash = ?, ident = ?, version_a = ?, "
            "account_id_a = ? WHERE id = ?",
            (
                pair.key_a,
                pair.key_b,
                format_flags(pair.flags),
                pair.hash,
                pair.ident,
                pair.version_a,
                pair.account_id_a,
                pair.id,
            ),
        )

    def local_copies(
        self, account_ids: Iterable[str]
    ) -> dict[str, list[tuple[str, str, str | None]]]:
        """Account id (Pair.account_id_a) -> the local copies the state records of that
        message, in any folder of the channel: (local folder name, local key, the
        fingerprint of what was copied), each recorded only once durable locally."""
        ids = sorted(set(account_ids))
        out: dict[str, list[tuple[str, str, str | None]]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self.db.execute(
                "SELECT pairs.account_id_a, folders.name_b, pairs.key_b, pairs.hash FROM pairs "
                "JOIN folders ON folders.id = pairs.folder_id "
                f"WHERE pairs.account_id_a IN ({','.join('?' * len(chunk))}) "
                "AND pairs.key_b IS NOT NULL ORDER BY pairs.id",
                chunk,
            )
            for account_id, name_b, key_b, digest in rows:
                out.setdefault(account_id, []).append((name_b, key_b, digest))
        return out

    def lacks_account_ids(self, folder_id: int) -> bool:
        """Whether a pair of the folder with both keys has no account_id_a."""
        row = self.db.execute(
            "SELECT 1 FROM pairs WHERE folder_id = ? AND key_a IS NOT NULL "
            "AND key_b IS NOT NULL AND account_id_a IS NULL LIMIT 1",
            (folder_id,),
        ).fetchone()
        return row is not None

    def delete_pair(self, pair: Pair) -> None:
        self.db.execute("DELETE FROM pairs WHERE id = ?", (pair.id,))

    def forget_pairs(self, folder_id: int) -> None:
        """Forget every pair of a folder, and its copies under way: used when one side's
        folder was re-created, so the other side's messages are copied into it again."""
        self.db.execute("DELETE FROM pairs WHERE folder_id = ?", (folder_id,))
        self.forget_pending(folder_id)

    # copies under way -------------------------------------------------------------
    def pending_keys(self, folder_id: int, side: str) -> set[str]:
        """Keys on `side` whose copy to the other side was about to be sent by a run
        that did not record it (it was interrupted, or the copy failed)."""
        rows = self.db.execute(
            "SELECT key FROM pending WHERE folder_id = ? AND side = ?", (folder_id, side)
        )
        return {row[0] for row in rows}

    def record_pending(self, folder_id: int, side: str, keys: Iterable[str]) -> None:
        """These keys on `side` are about to be copied to the other side."""
        self.db.executemany(
            "INSERT OR IGNORE INTO pending (folder_id, side, key) VALUES (?, ?, ?)",
            [(folder_id, side, key) for key in keys],
        )

    def forget_pending(
        self, folder_id: int, side: str | None = None, keys: list[str] | None = None
    ) -> None:
        """Copies no longer under way: these keys of `side` (recorded as pairs, or
        refused), every key of `side`, or of both sides (`side` None)."""
        if keys is not None:
            self.db.executemany(
                "DELETE FROM pending WHERE folder_id = ? AND side = ? AND key = ?",
                [(folder_id, side, key) for key in keys],
            )
        elif side is not None:
            self.db.execute(
                "DELETE FROM pending WHERE folder_id = ? AND side = ?", (folder_id, side)
            )
        else:
            self.db.execute("DELETE FROM pending WHERE folder_id = ?", (folder_id,))

    # messages the other side refused ----------------------------------------------
    def refused_keys(self, folder_id: int, side: str) -> set[str]:
        """Keys on `side` whose message the other side refused for good."""
        rows = self.db.execute(
            "SELECT key FROM refused WHERE folder_id = ? AND side = ?", (folder_id, side)
        )
        return {row[0] for row in rows}

    def record_refusal(
        self,
        folder_id: int,
        side: str,
        key: str,
        digest: str,
        summary: dict[str, str | None],
        reason: str,
    ) -> None:
        """The message `key` on `side` was refused (again) by the other side."""
        now = time.time()
        self.db.execute(
            "INSERT INTO refused (folder_id, side, key, hash, summary, reason, first, last) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (folder_id, side, key) DO UPDATE "
            "SET hash = excluded.hash, summary = excluded.summary, reason = excluded.reason, "
            "last = excluded.last",
            (folder_id, side, key, digest, json.dumps(summary), reason, now, now),
        )

    def forget_refusals(self, folder_id: int, side: str, keys: list[str] | None = None) -> None:
        """Forget refusals of these keys (copied after all, or gone), or of every key on
        `side` (its keys became void: a new UIDVALIDITY)."""
        if keys is None:
            self.db.execute(
                "DELETE FROM refused WHERE folder_id = ? AND side = ?", (folder_id, side)
            )
            return
        self.db.executemany(
            "DELETE FROM refused WHERE folder_id = ? AND side = ? AND key = ?",
            [(folder_id, side, key) for key in keys],
        )

    def refusals(self) -> list[dict[str, Any]]:
        """Every recorded refusal, for status: folder (side a's name), side, key, the
        message's summary, reason, first and last."""
        rows = self.db.execute(
            "SELECT f.name_a, r.side, r.key, r.summary, r.reason, r.first, r.last "
            "FROM refused r JOIN folders f ON f.id = r.folder_id ORDER BY f.name_a, r.first"
        )
        return [
            {
                "folder": row[0],
                "side": row[1],
                "key": row[2],
                **json.loads(row[3] or "{}"),
                "reason": row[4],
                "first": row[5],
                "last": row[6],
            }
            for row in rows
        ]

    # runs -------------------------------------------------------------------------
    def record_run(
        self, command: str, started: float, exit_code: int, report: dict[str, Any]
    ) -> None:
        self.db.execute(
            "INSERT INTO runs (command, started, finished, exit_code, report) "
            "VALUES (?, ?, ?, ?, ?)",
            (command, started, time.time(), exit_code, json.dumps(report)),
        )
        self.db.execute(
            "DELETE FROM runs WHERE id NOT IN (SELECT id FROM runs ORDER BY id DESC LIMIT 50)"
        )

    def overview(self) -> dict[str, Any]:
        """What `mailsync status` shows of this state: the two sides, each folder's pair
        counts, the last run (with the errors that stopped it, if any), whether a run ever
        got as far as syncing (a run that never connected leaves a state with only failed
        attempts: synced is False), and the messages refused for good."""
        folders = []
        for folder in self.folders():
            count_a, count_b = self.count_pairs(folder.id)
            folders.append(
                {
                    "folder": folder.name_a,
                    "remote": count_a,
                    "local": count_b,
                    "last_sync": folder.last_sync,
                }
            )
        last = self.last_run()
        if last is not None:
            last["errors"] = (last.pop("report") or {}).get("errors") or []
        completed = any(
            not (json.loads(row[0] or "{}").get("errors"))
            for row in self.db.execute("SELECT report FROM runs")
        )
        return {
            "remote": self.get_meta("url_a"),
            "local": self.get_meta("url_b"),
            "synced": bool(folders) or completed,
            "folders": folders,
            "last_run": last,
            "refused": self.refusals(),
        }

    def last_run(self) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT command, started, finished, exit_code, report FROM runs "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return {
            "command": row[0],
            "started": row[1],
            "finished": row[2],
            "exit_code": row[3],
            "report": json.loads(row[4]) if row[4] else None,
        }

    # deletions in stores whose identical copies are interchangeable ------------------
    def repoint(self, pair: Pair, side: str, named: str, removed: str) -> None:
        """Deleting `pair`'s message `named` on `side` removed `removed`, an identical
        copy (mbox: identical copies are interchangeable): the other pair of the same
        folder that pointed at `removed` now points at `named`, which is still there."""
        column = {"a": "key_a", "b": "key_b"}[side]
        self.db.execute(
            f"UPDATE pairs SET {column} = ? WHERE {column} = ? AND id != ? AND folder_id = "
            "(SELECT folder_id FROM pairs WHERE id = ?)",
            (named, removed, pair.id, pair.id),
        )

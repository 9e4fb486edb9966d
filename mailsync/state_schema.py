"""The state file's layout (SCHEMA) and its versions: the named steps (MIGRATIONS) that
bring a file of any earlier layout to this one.

The file's layout has a number, kept in SQLite's header (PRAGMA user_version);
this mailsync writes version SCHEMA_VERSION, the SCHEMA below.  Each later layout is one
named step in MIGRATIONS that brings a file of the version before to its own.  A released
step is never edited, since files of its version exist: a change of layout is a new step,
SCHEMA_VERSION + 1, SCHEMA changed to match, and a frozen copy of the new layout among
the tests' fixtures (tests/unit/state_schemas/).  Opening a state reads the version (one
PRAGMA, nothing more when it is current).  An older file is brought up to date by
whoever opens it (status too), step by step in one transaction: a run killed in the
middle leaves the file as it was.  Files written before versions were recorded
(user_version 0: every mailsync before versions, layouts 1 to 8) are recognised by what
they have (_UNVERSIONED_ADDITIONS), the one place where columns are probed.  A file of a
version above SCHEMA_VERSION was written by a newer mailsync: it is refused (ConfigError,
exit 2: upgrade) and left untouched, since this mailsync cannot know what the newer one
keeps in it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from mailsync.errors import ConfigError, StoreError

log = logging.getLogger("mailsync")

# The version of the layout below: the version of every state file this mailsync writes.
SCHEMA_VERSION = 9

# The layout of a new state file (version SCHEMA_VERSION).  Older files get the same
# tables and columns through MIGRATIONS (tests/unit/test_state_versions.py compares them).
SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE folders (
    id INTEGER PRIMARY KEY,
    name_a TEXT NOT NULL,
    name_b TEXT NOT NULL,
    validity_a TEXT,
    validity_b TEXT,
    cursor_a TEXT NOT NULL DEFAULT '{}',
    cursor_b TEXT NOT NULL DEFAULT '{}',
    last_sync REAL,
    ident_a TEXT,
    UNIQUE (name_a, name_b)
);
CREATE TABLE pairs (
    id INTEGER PRIMARY KEY,
    folder_id INTEGER NOT NULL REFERENCES folders(id),
    key_a TEXT,
    key_b TEXT,
    flags TEXT NOT NULL DEFAULT '',
    hash TEXT,
    ident TEXT,
    added REAL,
    version_a TEXT,
    account_id_a TEXT
);
CREATE INDEX pairs_folder ON pairs (folder_id);
CREATE INDEX pairs_account_id_a ON pairs (account_id_a) WHERE account_id_a IS NOT NULL;
CREATE TABLE folder_moves (
    id INTEGER PRIMARY KEY,
    old_b TEXT NOT NULL,
    new_b TEXT NOT NULL
);
CREATE TABLE refused (
    id INTEGER PRIMARY KEY,
    folder_id INTEGER NOT NULL REFERENCES folders(id),
    side TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT,
    summary TEXT NOT NULL DEFAULT '{}',
    reason TEXT NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL,
    UNIQUE (folder_id, side, key)
);
CREATE TABLE pending (
    folder_id INTEGER NOT NULL REFERENCES folders(id),
    side TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (folder_id, side, key)
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    command TEXT,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    report TEXT
);
"""


@dataclass(frozen=True)
class Migration:
    """One step from version - 1 to `version`: `apply` changes the layout inside the
    transaction the caller holds, and never commits."""

    version: int
    apply: Callable[[sqlite3.Connection], None]

    @property
    def name(self) -> str:
        return self.apply.__name__


# In order of version; version 1, the first layout (3f8e3cf, 2026-11-27: meta, folders,
# pairs of id, folder_id, key_a, key_b, flags, hash, and runs), has no step.
MIGRATIONS: list[Migration] = []


def _step(
    version: int,
) -> Callable[[Callable[[sqlite3.Connection], None]], Callable[[sqlite3.Connection], None]]:
    def register(
        apply: Callable[[sqlite3.Connection], None],
    ) -> Callable[[sqlite3.Connection], None]:
        MIGRATIONS.append(Migration(version, apply))
        return apply

    return register


@_step(2)
def _add_pair_ident(db: sqlite3.Connection) -> None:
    """ee0cf45: the header digest, for re-matching after a UIDVALIDITY change."""
    db.execute("ALTER TABLE pairs ADD COLUMN ident TEXT")


@_step(3)
def _add_pair_added(db: sqlite3.Connection) -> None:
    """6290b62: when a pair was first recorded (POP3 delete_after_days)."""
    db.execute("ALTER TABLE pairs ADD COLUMN added REAL")


@_step(4)
def _add_folder_ident_a(db: sqlite3.Connection) -> None:
    """f56b054: the remote folder's own id (EWS), which follows renames."""
    db.execute("ALTER TABLE folders ADD COLUMN ident_a TEXT")


@_step(5)
def _add_pair_version_a(db: sqlite3.Connection) -> None:
    """74361a6: the remote message's version (EWS ChangeKey)."""
    db.execute("ALTER TABLE pairs ADD COLUMN version_a TEXT")


# Development branches of the time created the tables below in another order
# (folder_moves before refused and pending); IF NOT EXISTS keeps such a file's table.
@_step(6)
def _add_refused_table(db: sqlite3.Connection) -> None:
    """3c4a4b5: messages the other side refused for good."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY,
    folder_id INTEGER NOT NULL REFERENCES folders(id),
    side TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT,
    summary TEXT NOT NULL DEFAULT '{}',
    reason TEXT NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL,
    UNIQUE (folder_id, side, key)
)"""
    )


@_step(7)
def _add_pending_table(db: sqlite3.Connection) -> None:
    """4920510: the journal of copies under way."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS pending (
    folder_id INTEGER NOT NULL REFERENCES folders(id),
    side TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (folder_id, side, key)
)"""
    )


@_step(8)
def _add_folder_moves_table(db: sqlite3.Connection) -> None:
    """6862d51: the journal of local folder moves."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS folder_moves (
    id INTEGER PRIMARY KEY,
    old_b TEXT NOT NULL,
    new_b TEXT NOT NULL
)"""
    )


@_step(9)
def _add_pair_account_id_a(db: sqlite3.Connection) -> None:
    """The remote message's id across its account's folders (Gmail's X-GM-MSGID), so that
    a message with several labels is downloaded once (copies.py)."""
    db.execute("ALTER TABLE pairs ADD COLUMN account_id_a TEXT")
    db.execute(
        "CREATE INDEX pairs_account_id_a ON pairs (account_id_a) WHERE account_id_a IS NOT NULL"
    )


def stored_version(db: sqlite3.Connection) -> int:
    """The layout version the file says it has (0: new, or written before versions)."""
    return db.execute("PRAGMA user_version").fetchone()[0]


# Files written before versions were recorded (user_version 0) have the layout of
# version 1 and what each later version up to 8 added: (version, table, column or None).
_FIRST_TABLES = ("meta", "folders", "pairs", "runs")
_UNVERSIONED_ADDITIONS = (
    (2, "pairs", "ident"),
    (3, "pairs", "added"),
    (4, "folders", "ident_a"),
    (5, "pairs", "version_a"),
    (6, "refused", None),
    (7, "pending", None),
    (8, "folder_moves", None),
)


def _unversioned_layout(db: sqlite3.Connection) -> int | None:
    """The version of a file that records none, from what it has: 0 for a new, empty
    file; else the last version whose addition, and those of every version before it,
    it has.  None: it has tables, but not those of a mailsync state."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return 0
    if not tables.issuperset(_FIRST_TABLES):
        return None
    columns = {
        table: {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for table in ("folders", "pairs")
    }
    version = 1
    for added_in, table, column in _UNVERSIONED_ADDITIONS:
        if table not in tables or (column is not None and column not in columns[table]):
            break
        version = added_in
    return version


def newer_error(path: str, version: int) -> ConfigError:
    """A file of a newer mailsync: exit 2, as for a wrong setup (a rerun will not help)."""
    return ConfigError(
        f"state file {path} was written by a newer mailsync (state version {version}, this "
        f"one knows up to {SCHEMA_VERSION}); upgrade mailsync to use this channel (the file "
        "is left as it is)"
    )


def unreadable_error(path: str, why: object) -> StoreError:
    return StoreError(
        f"state file {path} is unreadable ({why}); move it aside and rerun: "
        "messages already copied are found again by content, not copied twice"
    )


def bring_up_to_date(db: sqlite3.Connection, path: str) -> None:
    """Give the file the layout of SCHEMA_VERSION in one transaction: a new file SCHEMA,
    an older one the steps it lacks, and the version number.  The version is read again
    under the write lock: another process may have done it meanwhile."""
    db.execute("BEGIN IMMEDIATE")
    try:
        stored = stored_version(db)
        if stored > SCHEMA_VERSION:
            raise newer_error(path, stored)
        version = stored
        if stored == 0:
            layout = _unversioned_layout(db)
            if layout is None:
                raise unreadable_error(path, "it has tables, but not those of a mailsync state")
            version = layout
            if version == 0:
                # One statement at a time: executescript() would commit the transaction.
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                version = SCHEMA_VERSION
        steps = [step for step in MIGRATIONS if step.version > version]
        for step in steps:
            step.apply(db)
        if stored != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
        if steps:
            log.info(
                "state file %s: layout %d brought up to %d (%s)",
                path,
                version,
                SCHEMA_VERSION,
                ", ".join(step.name for step in steps),
            )
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise

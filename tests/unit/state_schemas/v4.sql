-- State layout version 4, as mailsync f56b054 (2026-11-27, on main) created it: folders.ident_a, the remote folder's own id.
-- Its SCHEMA, verbatim; such files carry no version number (PRAGMA user_version 0).
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS folders (
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
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    folder_id INTEGER NOT NULL REFERENCES folders(id),
    key_a TEXT,
    key_b TEXT,
    flags TEXT NOT NULL DEFAULT '',
    hash TEXT,
    ident TEXT,
    added REAL
);
CREATE INDEX IF NOT EXISTS pairs_folder ON pairs (folder_id);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    command TEXT,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    report TEXT
);

-- State layout version 6, as mailsync dff0964 (2026-12-04, on main) created it: the refused table (3c4a4b5).
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
    added REAL,
    version_a TEXT
);
CREATE INDEX IF NOT EXISTS pairs_folder ON pairs (folder_id);
CREATE TABLE IF NOT EXISTS refused (
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
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    command TEXT,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    report TEXT
);

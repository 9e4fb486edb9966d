-- State layout version 9, as mailsync i12-gmail-pull (2026-12-04) created it: pairs.account_id_a
-- (Gmail's X-GM-MSGID, so that a message in several labels is downloaded once).
-- Its SCHEMA, verbatim; such files carry their version (PRAGMA user_version 9).
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

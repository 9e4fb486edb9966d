"""State file versions (state.py, "Versions"): a file of every earlier layout opens, is
brought to the current layout in one transaction, keeps every row it had and works; a
run killed during that leaves the old file as it was; a file of a newer mailsync is
refused and left byte for byte; opening a current file reads its version and nothing else.

state_schemas/vN.sql is the SCHEMA of the mailsync that created layout N, verbatim.  A
change of layout adds the next one (a copy of the new SCHEMA): the tests below fail until
it is there and until a migration step brings every older file to it."""

from __future__ import annotations

import dataclasses
import json
import logging
import mailbox
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsync import state as state_module
from mailsync import state_schema
from mailsync.cli import cli
from mailsync.errors import ConfigError, StoreError
from mailsync.state import Pair, State
from mailsync.state_schema import MIGRATIONS, SCHEMA_VERSION
from mailsync.stores import open_store

SCHEMAS = Path(__file__).parent / "state_schemas"
# Files written before versions were recorded carry user_version 0; later ones their own.
UNVERSIONED = range(1, 9)
EARLIER = [(v, False) for v in UNVERSIONED] + [(v, True) for v in range(1, SCHEMA_VERSION)]
EARLIER_IDS = [f"v{v}-{'stamped' if stamped else 'unversioned'}" for v, stamped in EARLIER]

# Rows in every table and column any layout had; a layout gets those it has columns for.
ROWS: dict[str, list[dict]] = {
    "meta": [
        {"name": "url_a", "value": "imaps://alice@mail.example.org"},
        {"name": "url_b", "value": "maildir:/home/alice/Mail"},
        {"name": "channel", "value": "work"},
    ],
    "folders": [
        {
            "id": 1,
            "name_a": "INBOX",
            "name_b": "INBOX",
            "validity_a": "1700000000",
            "validity_b": None,
            "cursor_a": '{"modseq": 4242}',
            "cursor_b": "{}",
            "last_sync": 1764000000.5,
            "ident_a": "AAMkAD-inbox",
        },
        {
            "id": 3,
            "name_a": "Archive/2024",
            "name_b": "Archive/2024",
            "validity_a": "17",
            "validity_b": "9",
            "cursor_a": '{"uidl": ["u1", "u2"]}',
            "cursor_b": "{}",
            "last_sync": None,
            "ident_a": None,
        },
    ],
    "pairs": [
        {
            "id": 1,
            "folder_id": 1,
            "key_a": "1700000000:1",
            "key_b": "m1",
            "flags": "\\Seen",
            "hash": "h1",
            "ident": "i1",
            "added": 1764000000.0,
            "version_a": "ck1",
            "account_id_a": "1650000000000000001",
        },
        # deleted on b and kept on a: a tombstone
        {
            "id": 2,
            "folder_id": 1,
            "key_a": "1700000000:2",
            "key_b": None,
            "flags": "",
            "hash": "h2",
            "ident": "i2",
            "added": 1764000001.0,
            "version_a": None,
        },  # fmt: skip
        {
            "id": 5,
            "folder_id": 1,
            "key_a": None,
            "key_b": "m3",
            "flags": "\\Flagged work",
            "hash": None,
            "ident": None,
            "added": None,
            "version_a": None,
        },  # fmt: skip
        {
            "id": 6,
            "folder_id": 3,
            "key_a": "17:1",
            "key_b": "m4",
            "flags": "\\Answered \\Seen",
            "hash": "h4",
            "ident": "i4",
            "added": 1764000002.0,
            "version_a": "ck4",
        },  # fmt: skip
    ],
    "runs": [
        {
            "id": 7,
            "command": "pull",
            "started": 1.0,
            "finished": 2.0,
            "exit_code": 0,
            "report": '{"folders": [], "errors": []}',
        },  # fmt: skip
        {
            "id": 8,
            "command": "pull",
            "started": 3.0,
            "finished": 4.0,
            "exit_code": 1,
            "report": '{"folders": [], "errors": ["Archive/2024: gone"]}',
        },  # fmt: skip
    ],
    "refused": [
        {
            "id": 1,
            "folder_id": 1,
            "side": "a",
            "key": "1700000000:9",
            "hash": "h9",
            "summary": '{"subject": "big"}',
            "reason": "[TOOBIG] no",
            "first": 10.0,
            "last": 20.0,
        },  # fmt: skip
    ],
    "pending": [{"folder_id": 1, "side": "a", "key": "1700000000:10"}],
    "folder_moves": [{"id": 1, "old_b": "Old", "new_b": "New"}],
}


def layout_sql(version: int) -> str:
    return (SCHEMAS / f"v{version}.sql").read_text()


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def tables(db: sqlite3.Connection) -> list[str]:
    return [
        row[0]
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]


def layout(path) -> dict:
    """Tables, columns (name, type, not null, default, primary key), indexes and foreign
    keys: what the queries see, whatever SQL made them."""
    db = sqlite3.connect(path)
    try:
        out = {}
        for table in tables(db):
            indexes = {
                row[1]: (row[2], [r[2] for r in db.execute(f"PRAGMA index_info({row[1]})")])
                for row in db.execute(f"PRAGMA index_list({table})")
            }
            out[table] = {
                "columns": [row[1:] for row in db.execute(f"PRAGMA table_info({table})")],
                "indexes": indexes,
                "foreign keys": [
                    row[2:] for row in db.execute(f"PRAGMA foreign_key_list({table})")
                ],
            }
        return out
    finally:
        db.close()


def old_state(path, version: int, *, stamped: bool = False, extra_sql: str = "") -> None:
    """A state file as the mailsync of layout `version` left it: its SCHEMA, in WAL mode
    as it set it, with ROWS in every table it had (and user_version `version` if
    stamped, as a versioned mailsync would have written it)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(layout_sql(version) + extra_sql)
        for table in tables(db):
            names = columns(db, table)
            for row in ROWS[table]:
                kept = {k: v for k, v in row.items() if k in names}
                marks = ", ".join("?" * len(kept))
                db.execute(
                    f"INSERT INTO {table} ({', '.join(kept)}) VALUES ({marks})",
                    tuple(kept.values()),
                )
        if stamped:
            db.execute(f"PRAGMA user_version = {version}")
    finally:
        db.close()


def rows_of(path) -> dict[str, list[dict]]:
    db = sqlite3.connect(path)
    try:
        return {
            table: [
                dict(zip(columns(db, table), row, strict=True))
                for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid")
            ]
            for table in tables(db)
        }
    finally:
        db.close()


def stored_version(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def dump(path) -> tuple[int, list[str]]:
    """Everything a file holds: its version, schema and rows."""
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0], list(db.iterdump())
    finally:
        db.close()


@pytest.fixture
def current_layout(tmp_path) -> dict:
    path = tmp_path / "fresh" / "channel-fresh.db"
    with State(str(path)):
        pass
    assert stored_version(path) == SCHEMA_VERSION
    return layout(path)


@pytest.fixture
def state_path(tmp_path) -> str:
    return str(tmp_path / "state" / "channel-work.db")


# -- the steps and their fixtures -------------------------------------------------------------


def test_each_version_has_one_named_step_and_a_fixture():
    assert [step.version for step in MIGRATIONS] == list(range(2, SCHEMA_VERSION + 1))
    names = [step.name for step in MIGRATIONS]
    assert len(set(names)) == len(names) and all(name.startswith("_") for name in names)
    assert sorted(p.name for p in SCHEMAS.glob("v*.sql")) == sorted(
        f"v{v}.sql" for v in range(1, SCHEMA_VERSION + 1)
    )


def test_a_new_state_has_the_layout_of_the_newest_fixture(tmp_path, current_layout):
    """SCHEMA changed without a new version (and its fixture) fails here."""
    frozen = tmp_path / "frozen.db"
    db = sqlite3.connect(frozen)
    db.executescript(layout_sql(SCHEMA_VERSION))
    db.close()
    assert layout(frozen) == current_layout


# -- every earlier layout -------------------------------------------------------------------


@pytest.mark.parametrize(("version", "stamped"), EARLIER, ids=EARLIER_IDS)
def test_an_earlier_state_is_brought_up_to_date_and_keeps_its_rows(
    state_path, current_layout, version, stamped
):
    old_state(state_path, version, stamped=stamped)
    before = rows_of(state_path)
    with State(state_path) as state:
        assert stored_version(state_path) == SCHEMA_VERSION
        assert layout(state_path) == current_layout
        # every row, with the columns the layout lacked empty, and no other row
        after = rows_of(state_path)
        for table, rows in after.items():
            names = columns(state.db, table)
            assert rows == [
                {name: row.get(name) for name in names} for row in before.get(table, [])
            ], table
        # and the state reads them as it reads its own
        inbox, archive = sorted(state.folders(), key=lambda folder: folder.id)
        assert (inbox.name_a, inbox.validity_a, inbox.cursor_a, inbox.last_sync) == (
            "INBOX",
            "1700000000",
            {"modseq": 4242},
            1764000000.5,
        )
        assert archive.cursor_a == {"uidl": ["u1", "u2"]} and archive.validity_b == "9"
        assert inbox.ident_a == ("AAMkAD-inbox" if version >= 4 else None)
        pairs = {pair.id: pair for pair in state.pairs(inbox.id)}
        assert sorted(pairs) == [1, 2, 5]
        assert pairs[1].flags == frozenset({"\\Seen"}) and pairs[1].hash == "h1"
        assert pairs[2].key_b is None and pairs[5].key_a is None  # tombstones
        assert pairs[5].flags == frozenset({"\\Flagged", "work"})
        assert pairs[1].ident == ("i1" if version >= 2 else None)
        assert pairs[1].added == (1764000000.0 if version >= 3 else None)
        assert pairs[1].version_a == ("ck1" if version >= 5 else None)
        assert pairs[1].account_id_a == ("1650000000000000001" if version >= 9 else None)
        assert state.count_pairs(inbox.id) == (2, 2)
        assert state.last_run()["report"]["errors"] == ["Archive/2024: gone"]
        assert state.overview()["remote"] == "imaps://alice@mail.example.org"
        assert state.refused_keys(inbox.id, "a") == ({"1700000000:9"} if version >= 6 else set())
        assert state.pending_keys(inbox.id, "a") == ({"1700000000:10"} if version >= 7 else set())
        assert state.moves() == ([(1, "Old", "New")] if version >= 8 else [])
        # and takes what this mailsync writes, in every table
        state.begin()
        inbox.ident_a = "AAMkAD-inbox-2"
        state.save_folder(inbox)
        state.add_pair(
            inbox.id, Pair(None, "1700000000:11", "m11", frozenset(), "h", "i", None, "v", "77")
        )
        state.record_refusal(inbox.id, "a", "1700000000:12", "h12", {"subject": "x"}, "no")
        state.record_pending(inbox.id, "a", ["1700000000:13"])
        move = state.add_move("Older", "Newer")
        state.record_run("pull", 5.0, 0, {"folders": [], "errors": []})
        state.commit()
    with State(state_path) as state:
        assert state.folder("INBOX", "INBOX").ident_a == "AAMkAD-inbox-2"
        assert any(pair.version_a == "v" for pair in state.pairs(inbox.id))
        assert state.local_copies(["77"]) == {"77": [("INBOX", "m11", "h")]}
        assert "1700000000:12" in state.refused_keys(inbox.id, "a")
        assert "1700000000:13" in state.pending_keys(inbox.id, "a")
        assert (move, "Older", "Newer") in state.moves()
        assert state.last_run()["command"] == "pull"


@pytest.mark.parametrize(
    ("version", "branch_tables"),
    [(5, ("folder_moves",)), (6, ("folder_moves",))],
    ids=["6862d51-moves-before-refused", "71cbbc0-moves-before-pending"],
)
def test_an_unversioned_state_of_a_development_branch_keeps_its_tables(
    state_path, current_layout, version, branch_tables
):
    """Branches of issue 10 created folder_moves before refused and pending existed."""
    moves = layout_sql(8).split("CREATE TABLE IF NOT EXISTS folder_moves")[1].split(";")[0]
    old_state(state_path, version, extra_sql=f"CREATE TABLE folder_moves {moves};")
    with State(state_path) as state:
        assert layout(state_path) == current_layout
        assert state.moves() == [(1, "Old", "New")]
        assert stored_version(state_path) == SCHEMA_VERSION


def write_layout(current: str, version: int, target: str) -> None:
    """Rewrite the state at `current` as the mailsync of layout `version` would have
    kept it: its SCHEMA, the rows, the columns it had (a state made by a real run)."""
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    db = sqlite3.connect(target, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(layout_sql(version))
        db.execute("ATTACH DATABASE ? AS now", (current,))
        for table in tables(db):
            names = ", ".join(columns(db, table))
            db.execute(f"INSERT INTO main.{table} ({names}) SELECT {names} FROM now.{table}")
        db.execute("DETACH DATABASE now")
    finally:
        db.close()


def seed_maildir(root: Path, folders: dict[str, int]) -> None:
    root.mkdir(parents=True)
    for folder, count in folders.items():
        box = mailbox.Maildir(str(root / folder), create=True)
        for i in range(count):
            box.add(
                f"From: a@example.org\nSubject: {folder} {i}\nMessage-ID: <{folder}.{i}@x>\n\n"
                f"body {i}\n".encode()
            )


def bodies(url: str) -> dict[str, list[bytes]]:
    with open_store(url, read_only=True) as store:
        out = {}
        for name in store.list_folders():
            folder = store.open_folder(name)
            out[name] = sorted(folder.fetch(key) for key in folder.list())
            folder.close()
        return out


@pytest.mark.parametrize("version", UNVERSIONED, ids=[f"v{v}" for v in UNVERSIONED])
def test_a_pull_over_an_earlier_state_copies_nothing_twice(mailenv, version):
    """A real state (pairs, a tombstone, cursors, runs) rewritten in an earlier layout:
    the next pull knows every message, and does not bring back the one deleted locally
    (only the tombstone in the state keeps it away)."""
    src, dst, state_dir = mailenv / "src", mailenv / "dst", mailenv / "state-dir"
    seed_maildir(src, {"INBOX": 3, "Archive": 2})

    def pull():
        result = CliRunner().invoke(
            cli, ["--state-dir", str(state_dir), "pull", str(src), str(dst)]
        )
        assert result.exit_code == 0, result.output
        return result

    pull()
    with open_store(str(dst)) as store:
        inbox = store.open_folder("INBOX")
        for key in inbox.list():
            if b"Subject: INBOX 1\n" in inbox.fetch(key):
                inbox.delete(key)
        inbox.close()
    pull()  # records the tombstone
    expected = bodies(str(dst))
    assert len(expected["INBOX"]) == 2 and len(expected["Archive"]) == 2
    (name,) = [entry for entry in os.listdir(state_dir) if entry.endswith(".db")]
    path = str(state_dir / name)
    kept = rows_of(path)
    os.rename(path, path + ".new")
    write_layout(path + ".new", version, path)
    assert stored_version(path) == 0

    pull()
    assert bodies(str(dst)) == expected
    assert stored_version(path) == SCHEMA_VERSION
    after = rows_of(path)
    assert [(p["id"], p["key_a"], p["key_b"]) for p in after["pairs"]] == [
        (p["id"], p["key_a"], p["key_b"]) for p in kept["pairs"]
    ]
    assert any(p["key_b"] is None for p in after["pairs"])  # the tombstone is still there
    assert len(after["runs"]) == len(kept["runs"]) + 1
    assert json.loads(after["runs"][-1]["report"])["errors"] == []


# -- a migration killed half-way -----------------------------------------------------------

# Runs in a child: State() on argv[1], stopping for good after the step to argv[2].
HALT_AFTER_STEP = """
import dataclasses, sys
from mailsync import state, state_schema

def halting(step):
    def apply(db):
        step.apply(db)
        print("migrating", flush=True)
        sys.stdin.read()  # until killed
    return apply

after = int(sys.argv[2])
state_schema.MIGRATIONS[:] = [
    dataclasses.replace(step, apply=halting(step)) if step.version == after else step
    for step in state_schema.MIGRATIONS
]
state.State(sys.argv[1])
print("finished", flush=True)
"""


@pytest.mark.parametrize("step", [2, 5, SCHEMA_VERSION], ids=lambda step: f"after-step-{step}")
def test_a_migration_killed_half_way_leaves_the_old_state(state_path, current_layout, step):
    old_state(state_path, 1)
    before = dump(state_path)
    child = subprocess.Popen(
        [sys.executable, "-c", HALT_AFTER_STEP, state_path, str(step)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "migrating\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        child.stdin.close()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert dump(state_path) == before  # version 0, the layout and rows of version 1
    with State(state_path) as state:
        assert layout(state_path) == current_layout
        assert sorted(pair.id for pair in state.pairs(1)) == [1, 2, 5]


def test_a_failing_step_leaves_the_old_state_and_says_what_to_do(
    state_path, monkeypatch, current_layout
):
    old_state(state_path, 3)
    before = dump(state_path)

    def disk_full(db):
        raise sqlite3.OperationalError("database or disk is full")

    last = MIGRATIONS[-1]
    failing = [*MIGRATIONS[:-1], dataclasses.replace(last, apply=disk_full)]
    monkeypatch.setattr(state_schema, "MIGRATIONS", failing)
    with pytest.raises(StoreError) as failed:
        State(state_path)
    assert "database or disk is full" in str(failed.value)
    assert dump(state_path) == before
    monkeypatch.undo()
    with State(state_path):
        assert layout(state_path) == current_layout


# -- a state of a newer mailsync, and files that are no state -----------------------------------


def newer_state(path: str) -> None:
    with State(path) as state:
        state.begin()
        state.set_meta("url_a", "imaps://alice@mail.example.org")
        state.commit()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.execute("CREATE TABLE of_the_future (x)")
    db.commit()
    db.close()


@pytest.mark.parametrize("options", [{}, {"lock": False, "create": False}], ids=["run", "status"])
def test_a_state_of_a_newer_mailsync_is_refused_and_left_byte_for_byte(state_path, options):
    newer_state(state_path)
    directory = os.path.dirname(state_path)
    before = Path(state_path).read_bytes()
    files = sorted(name for name in os.listdir(directory) if not name.endswith(".lock"))
    with pytest.raises(ConfigError) as refused:
        State(state_path, **options)
    message = str(refused.value)
    assert message == (
        f"state file {state_path} was written by a newer mailsync (state version "
        f"{SCHEMA_VERSION + 1}, this one knows up to {SCHEMA_VERSION}); upgrade mailsync to "
        "use this channel (the file is left as it is)"
    )
    assert refused.value.exit_code == 2
    assert Path(state_path).read_bytes() == before
    assert sorted(n for n in os.listdir(directory) if not n.endswith(".lock")) == files
    # and the lock was let go: the same refusal again, not "another run is using it"
    with pytest.raises(ConfigError):
        State(state_path)


def test_a_pull_with_a_state_of_a_newer_mailsync_exits_2_in_one_line(mailenv):
    src, state_dir = mailenv / "src", mailenv / "state-dir"
    seed_maildir(src, {"INBOX": 1})
    args = ["--state-dir", str(state_dir), "pull", str(src), str(mailenv / "dst")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    (name,) = [entry for entry in os.listdir(state_dir) if entry.endswith(".db")]
    newer_state(str(state_dir / name))
    before = (state_dir / name).read_bytes()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert "written by a newer mailsync" in result.output and "upgrade mailsync" in result.output
    assert (state_dir / name).read_bytes() == before


def test_a_file_with_other_tables_is_no_state_and_is_left_alone(state_path):
    os.makedirs(os.path.dirname(state_path), mode=0o700)
    db = sqlite3.connect(state_path)
    db.executescript("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
    db.close()
    before = Path(state_path).read_bytes()
    with pytest.raises(StoreError) as refused:
        State(state_path)
    assert "not those of a mailsync state" in str(refused.value)
    assert "move it aside and rerun" in str(refused.value)
    assert Path(state_path).read_bytes() == before


# -- opening a current state stays cheap -------------------------------------------------------


def test_opening_a_current_state_reads_its_version_and_nothing_else(state_path, monkeypatch):
    with State(state_path) as state:
        state.folder("INBOX", "INBOX")
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(state_module.sqlite3, "connect", traced)
    with State(state_path):
        opened = list(statements)
    assert opened.count("PRAGMA user_version") == 1
    schema_work = ("CREATE", "ALTER", "table_info", "sqlite_master", "BEGIN")
    assert not [s for s in opened if any(word in s for word in schema_work)], opened
    assert len(opened) <= 3, opened  # the version, the journal mode, synchronous


def test_bringing_a_state_up_to_date_is_said_at_verbose(state_path):
    old_state(state_path, 5)
    said: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("mailsync")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with State(state_path):
            pass
        with State(state_path):  # up to date: nothing to say
            pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    steps = [step.name for step in MIGRATIONS if step.version > 5]
    assert steps[:3] == ["_add_refused_table", "_add_pending_table", "_add_folder_moves_table"]
    assert said == [
        f"state file {state_path}: layout 5 brought up to {SCHEMA_VERSION} ({', '.join(steps)})"
    ]

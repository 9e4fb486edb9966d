"""The SQLite state: private files, the channel lock, pairs and tombstones, a corrupt
file, and the run history."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from mailsync.errors import ConfigError, LockedError, StoreError
from mailsync.state import Pair, State, state_file_name

SEEN = "\\Seen"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def state_path(tmp_path):
    return str(tmp_path / "state" / "channel-test.db")


@pytest.fixture
def state(state_path):
    with State(state_path) as opened:
        yield opened


@pytest.fixture
def umask():
    """Set a umask for the test; the old one comes back afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


# -- private files -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_state_file_is_private(tmp_path, umask, value):
    umask(value)
    path = tmp_path / "deep" / "state" / "channel-x.db"
    with State(str(path)) as state:
        state.begin()
        state.set_meta("channel", "x")
        state.commit()
        assert mode(path.parent) == 0o700
        assert mode(path) == 0o600
        assert mode(str(path) + ".lock") == 0o600
        for suffix in ("-wal", "-shm"):
            if os.path.exists(str(path) + suffix):
                assert mode(str(path) + suffix) == 0o600, suffix


@pytest.mark.parametrize("value", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_existing_loose_state_dir_and_file_are_tightened(tmp_path, umask, value):
    umask(value)
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # readable by others; writable by them is refused (below)
    path = directory / "channel-x.db"
    path.write_bytes(b"")
    os.chmod(path, 0o666)
    with State(str(path)):
        assert mode(directory) == 0o700
        assert mode(path) == 0o600


# -- a state directory someone else could write to ----------------------------------------


def nobody() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_state_directory_of_another_user_is_refused_and_left_alone(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o644)
    (directory / "channel-x.db.lock").symlink_to(victim)  # planted by the directory's owner
    os.chown(directory, *nobody())
    with pytest.raises(ConfigError) as refused:
        State(str(directory / "channel-x.db"))
    message = str(refused.value)
    assert f"state directory {directory} belongs to nobody" in message
    assert "--state-dir" in message and "\n" not in message
    assert victim.read_bytes() == b"precious\n" and mode(victim) == 0o644
    assert sorted(os.listdir(directory)) == ["channel-x.db.lock"]


@pytest.mark.parametrize("loose", [0o770, 0o707, 0o1777])
def test_a_state_directory_others_can_write_to_is_refused(tmp_path, loose):
    directory = tmp_path / "state"
    directory.mkdir()
    os.chmod(directory, loose)
    with pytest.raises(ConfigError) as refused:
        State(str(directory / "channel-x.db"))
    assert f"state directory {directory} is writable by" in str(refused.value)
    assert f"chmod 700 {directory}" in str(refused.value)
    assert os.listdir(directory) == []
    assert mode(directory) == loose  # not "fixed" behind the user's back: they must look


@pytest.mark.parametrize(
    "name", ["channel-x.db", "channel-x.db.lock", "channel-x.db-wal", "channel-x.db-shm"]
)
def test_a_planted_link_in_the_state_directory_is_never_followed(tmp_path, name):
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o644)
    (directory / name).symlink_to(victim)
    with pytest.raises(ConfigError) as refused:
        State(str(directory / "channel-x.db"))
    assert f"state file {directory / name} is a symbolic link" in str(refused.value)
    assert victim.read_bytes() == b"precious\n" and mode(victim) == 0o644
    # and the lock is not left held: a later State (once the link is gone) opens
    os.unlink(directory / name)
    with State(str(directory / "channel-x.db")) as state:
        assert state.folders() == []


def test_a_hard_link_planted_as_the_lock_is_refused(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.link(victim, directory / "channel-x.db.lock")
    with pytest.raises(ConfigError) as refused:
        State(str(directory / "channel-x.db"))
    assert "is not a plain file" in str(refused.value)
    assert victim.read_bytes() == b"precious\n"


# -- the lock ------------------------------------------------------------------------------


def test_second_state_on_the_same_file_is_locked_out(state_path):
    with State(state_path):
        with pytest.raises(LockedError) as caught:
            State(state_path)
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message
        assert state_path + ".lock" in message
        assert "wait for it to finish" in message


def test_lock_is_released_on_close(state_path):
    first = State(state_path)
    with pytest.raises(LockedError):
        State(state_path)
    first.close()
    second = State(state_path)
    second.close()


def test_lock_is_released_when_the_context_manager_exits(state_path):
    with State(state_path):
        pass
    with State(state_path) as again:
        assert again.db is not None


def test_close_twice_is_harmless(state_path):
    opened = State(state_path)
    opened.close()
    opened.close()
    with State(state_path):
        pass


def test_unlocked_reader_does_not_block_a_run(state_path):
    with State(state_path):
        reader = State(state_path, lock=False)
        try:
            assert reader.folders() == []
        finally:
            reader.close()


def test_missing_state_without_create_says_never_synced(tmp_path):
    path = str(tmp_path / "state" / "nothing.db")
    with pytest.raises(StoreError, match="never been synced"):
        State(path, create=False)
    assert not os.path.exists(path)


# -- pairs and tombstones ----------------------------------------------------------------------


def test_pairs_and_tombstones_round_trip(state_path):
    with State(state_path) as state:
        folder = state.folder("INBOX", "INBOX")
        state.begin()
        full = Pair(None, "1", "11", frozenset({SEEN, "work"}), "h1")
        gone_on_b = Pair(None, "2", None, frozenset(), "h2")
        gone_on_a = Pair(None, None, "13", frozenset({"\\Flagged"}), None)
        for pair in (full, gone_on_b, gone_on_a):
            state.add_pair(folder.id, pair)
        state.commit()
        assert all(p.id is not None for p in (full, gone_on_b, gone_on_a))
        folder_id = folder.id
    with State(state_path) as state:
        pairs = sorted(state.pairs(folder_id), key=lambda p: p.id)
        assert pairs == [full, gone_on_b, gone_on_a]
        assert pairs[1].key("b") is None and pairs[2].key("a") is None
        assert state.count_pairs(folder_id) == (2, 2)


def test_update_and_delete_pair(state):
    folder = state.folder("INBOX", "INBOX")
    state.begin()
    pair = Pair(None, "1", "11", frozenset(), "h")
    other = Pair(None, "2", "12", frozenset(), "h2")
    state.add_pair(folder.id, pair)
    state.add_pair(folder.id, other)
    pair.key_b = None
    pair.flags = frozenset({SEEN})
    state.update_pair(pair)
    state.delete_pair(other)
    state.commit()
    assert state.pairs(folder.id) == [Pair(pair.id, "1", None, frozenset({SEEN}), "h")]


def test_folder_state_round_trip(state_path):
    with State(state_path) as state:
        folder = state.folder("INBOX", "Inbox")
        assert (folder.validity_a, folder.validity_b, folder.cursor_a) == (None, None, {})
        folder.validity_a = "42"
        folder.validity_b = "7"
        folder.cursor_a = {"modseq": 99}
        folder.last_sync = 123.5
        state.begin()
        state.save_folder(folder)
        state.commit()
    with State(state_path) as state:
        [again] = state.folders()
        assert again == folder
        assert state.folder("INBOX", "Inbox").id == folder.id


def test_uncommitted_changes_are_rolled_back_on_close(state_path):
    with State(state_path) as state:
        folder = state.folder("INBOX", "INBOX")
        state.begin()
        state.add_pair(folder.id, Pair(None, "1", "1", frozenset()))
    with State(state_path) as state:
        assert state.pairs(folder.id) == []


def test_forget_pairs_only_touches_that_folder(state):
    inbox = state.folder("INBOX", "INBOX")
    archive = state.folder("Archive", "Archive")
    state.begin()
    for folder in (inbox, archive):
        state.add_pair(folder.id, Pair(None, "1", "2", frozenset()))
        state.add_pair(folder.id, Pair(None, None, "3", frozenset()))
    state.forget_pairs(inbox.id)
    state.commit()
    assert state.pairs(inbox.id) == []
    assert len(state.pairs(archive.id)) == 2
    assert {f.name_a for f in state.folders()} == {"INBOX", "Archive"}


# -- a corrupt state file ---------------------------------------------------------------------


def test_corrupt_state_file_says_what_to_do(state_path):
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    with open(state_path, "wb") as f:
        f.write(b"\x00garbage, not SQLite\xff" * 512)
    with pytest.raises(StoreError) as caught:
        State(state_path)
    message = str(caught.value)
    assert state_path in message
    assert "move it aside and rerun" in message
    assert "not copied twice" in message
    # The failed open left no lock behind: the same error again, not LockedError.
    with pytest.raises(StoreError) as again:
        State(state_path)
    assert not isinstance(again.value, LockedError)


def test_state_moved_aside_starts_fresh(state_path):
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    with open(state_path, "wb") as f:
        f.write(b"garbage" * 1000)
    with pytest.raises(StoreError):
        State(state_path)
    os.rename(state_path, state_path + ".bad")
    with State(state_path) as state:
        assert state.folders() == []


# -- runs -------------------------------------------------------------------------------------


def test_last_run_is_none_before_any_run(state):
    assert state.last_run() is None


def test_record_run_keeps_the_last_50(state):
    for i in range(60):
        state.begin()
        state.record_run(f"sync {i}", 1000.0 + i, i % 3, {"n": i})
        state.commit()
    (count,) = state.db.execute("SELECT COUNT(*) FROM runs").fetchone()
    assert count == 50
    commands = [row[0] for row in state.db.execute("SELECT command FROM runs ORDER BY id")]
    assert commands == [f"sync {i}" for i in range(10, 60)]
    last = state.last_run()
    assert last["command"] == "sync 59"
    assert last["started"] == 1059.0
    assert last["exit_code"] == 59 % 3
    assert last["report"] == {"n": 59}
    assert last["finished"] >= last["started"]


def test_runs_survive_reopening(state_path):
    with State(state_path) as state:
        state.begin()
        state.record_run("pull", 5.0, 0, {"folders": []})
        state.commit()
    with State(state_path) as state:
        assert state.last_run()["report"] == {"folders": []}


def test_meta_round_trip(state):
    assert state.get_meta("url_a") is None
    state.set_meta("url_a", "imaps://example.org")
    state.set_meta("url_a", "imaps://example.com")
    assert state.get_meta("url_a") == "imaps://example.com"


def test_state_is_sqlite_in_wal_mode(state_path):
    with State(state_path):
        db = sqlite3.connect(state_path)
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            db.close()


@pytest.mark.parametrize(
    ("channel", "expected"),
    [("work", "channel-work.db"), ("my mail/x", "channel-my_mail_x.db"), ("a.b-c", None)],
)
def test_state_file_name_for_channels(channel, expected):
    name = state_file_name(channel, "imap://x", "maildir:y")
    assert name == (expected or f"channel-{channel}.db")
    assert "/" not in name


def test_state_file_name_for_adhoc_pairs_depends_on_both_urls():
    one = state_file_name(None, "imap://x", "maildir:y")
    assert one.startswith("adhoc-") and one.endswith(".db")
    assert one == state_file_name(None, "imap://x", "maildir:y")
    assert one != state_file_name(None, "maildir:y", "imap://x")


# -- refused messages, and state files from before they were kept ------------------------------

# The schema of the state files mailsync wrote before refusals were recorded (and before
# pairs had ident/added/version_a and folders ident_a): such files must keep working.
OLD_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE folders (
    id INTEGER PRIMARY KEY, name_a TEXT NOT NULL, name_b TEXT NOT NULL, validity_a TEXT,
    validity_b TEXT, cursor_a TEXT NOT NULL DEFAULT '{}', cursor_b TEXT NOT NULL DEFAULT '{}',
    last_sync REAL, UNIQUE (name_a, name_b)
);
CREATE TABLE pairs (
    id INTEGER PRIMARY KEY, folder_id INTEGER NOT NULL REFERENCES folders(id), key_a TEXT,
    key_b TEXT, flags TEXT NOT NULL DEFAULT '', hash TEXT
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, command TEXT, started REAL, finished REAL, exit_code INTEGER,
    report TEXT
);
INSERT INTO meta VALUES ('url_a', 'maildir:/a'), ('url_b', 'maildir:/b');
INSERT INTO folders (id, name_a, name_b) VALUES (1, 'INBOX', 'INBOX');
INSERT INTO pairs (folder_id, key_a, key_b, flags, hash) VALUES (1, 'k1', 'k2', '\\Seen', 'h');
INSERT INTO runs (command, started, finished, exit_code, report)
    VALUES ('pull', 1.0, 2.0, 0, '{"folders": [], "errors": []}');
"""


def test_an_old_state_file_opens_and_keeps_refusals_from_then_on(state_path):
    os.makedirs(os.path.dirname(state_path), mode=0o700)
    con = sqlite3.connect(state_path)
    con.executescript(OLD_SCHEMA)
    con.close()
    with State(state_path) as state:
        (folder,) = state.folders()
        assert [(p.key_a, p.key_b, p.flags) for p in state.pairs(folder.id)] == [
            ("k1", "k2", frozenset({SEEN}))
        ]
        assert state.refused_keys(folder.id, "a") == set()
        state.begin()
        state.record_refusal(folder.id, "b", "k9", "h9", {"subject": "big"}, "[TOOBIG] no")
        state.commit()
    with State(state_path) as state:
        assert state.refused_keys(folder.id, "b") == {"k9"}
        overview = state.overview()
        assert overview["synced"] is True and overview["folders"][0]["remote"] == 1
        (refusal,) = overview["refused"]
        assert refusal["folder"] == "INBOX" and refusal["subject"] == "big"
        assert refusal["reason"] == "[TOOBIG] no" and refusal["first"] == refusal["last"]


def test_a_refusal_met_again_keeps_its_first_time_and_updates_the_rest(state):
    folder = state.folder("INBOX", "INBOX")
    state.begin()
    state.record_refusal(folder.id, "a", "7", "h", {"subject": "x"}, "first reason")
    state.commit()
    (first,) = state.refusals()
    state.begin()
    state.record_refusal(folder.id, "a", "7", "h", {"subject": "x"}, "second reason")
    state.commit()
    (second,) = state.refusals()
    assert second["first"] == first["first"] and second["last"] >= first["last"]
    assert second["reason"] == "second reason"
    state.begin()
    state.forget_refusals(folder.id, "a", ["7"])
    state.commit()
    assert state.refusals() == []


def test_an_old_state_file_gets_the_journal_of_copies_under_way(state_path):
    os.makedirs(os.path.dirname(state_path), mode=0o700)
    con = sqlite3.connect(state_path)
    con.executescript(OLD_SCHEMA)
    con.close()
    with State(state_path) as state:
        (folder,) = state.folders()
        assert state.pending_keys(folder.id, "b") == set()
        state.begin()
        state.record_pending(folder.id, "b", ["k1", "k2", "k3"])
        state.record_pending(folder.id, "b", ["k3"])  # journaled again: still once
        state.record_pending(folder.id, "a", ["r1"])
        state.commit()
    with State(state_path) as state:
        assert state.pending_keys(folder.id, "b") == {"k1", "k2", "k3"}
        state.begin()
        state.forget_pending(folder.id, "b", ["k1"])
        state.commit()
        assert state.pending_keys(folder.id, "b") == {"k2", "k3"}
        state.begin()
        state.forget_pending(folder.id, "b")
        state.commit()
        assert state.pending_keys(folder.id, "b") == set()
        assert state.pending_keys(folder.id, "a") == {"r1"}
        state.begin()
        state.forget_pairs(folder.id)  # the folder is copied afresh: nothing is under way
        state.commit()
        assert state.pending_keys(folder.id, "a") == set()
        assert [(p.key_a, p.key_b) for p in state.pairs(folder.id)] == []

"""The state directory and what `mailsync status` makes of it, through the command line."""

from __future__ import annotations

import json
import os
import pwd

import pytest
from click.testing import CliRunner
from test_cli import make_maildir

from mailsync.cli import cli


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_state_directory_of_another_user_is_exit_2_for_every_command(mailenv):
    make_maildir(mailenv / "src", {"INBOX": 1})
    state = mailenv / "shared-state"
    state.mkdir(mode=0o700)
    victim = mailenv / "victim"
    victim.write_bytes(b"precious\n")
    nobody = pwd.getpwnam("nobody")
    planted = state / f"adhoc-{'0' * 16}.db"
    planted.symlink_to(victim)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    for args in (
        ["pull", mailenv / "src", mailenv / "out"],
        ["status"],
        ["status", "--json"],
    ):
        result = invoke("--state-dir", state, *args)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1
        assert f"state directory {state} belongs to nobody" in result.output
    assert victim.read_bytes() == b"precious\n"
    assert not (mailenv / "out").exists()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_status_shows_a_run_that_never_connected_for_what_it_is(mailenv):
    make_maildir(mailenv / "src", {"INBOX": 2})
    assert invoke("pull", mailenv / "src", mailenv / "backup").exit_code == 0
    port = free_port()
    url = f"imap://alice@127.0.0.1:{port}?tls=none"
    failed = invoke("pull", url, mailenv / "out", env={"MAILSYNC_PASSWORD": "pw"})
    assert failed.exit_code == 3, failed.output
    # A state file from an older mailsync that a failed run left without anything in it.
    from mailsync.state import State

    with State(str(mailenv / "state" / "mailsync" / f"adhoc-{'0' * 16}.db")):
        pass
    lines = invoke("status").output.splitlines()
    assert "None" not in "\n".join(lines)
    never = [line for line in lines if line.startswith(f"imap://alice@127.0.0.1:{port} <-> ")]
    assert len(never) == 1, lines
    assert "never synced; last attempt" in never[0]
    assert "failed (exit 3): cannot connect to 127.0.0.1" in never[0]
    assert any(
        line.endswith(f"adhoc-{'0' * 16}.db: never synced (no run recorded)") for line in lines
    )
    good = [line for line in lines if line.startswith(f"maildir:{mailenv / 'src'} <-> ")]
    assert len(good) == 1 and "(pull, exit 0)" in good[0]
    assert "  INBOX\t2 remote\t2 local" in lines
    data = {c["remote"]: c for c in json.loads(invoke("status", "--json").output)["channels"]}
    attempt = data[f"imap://alice@127.0.0.1:{port}"]
    assert attempt["synced"] is False and attempt["folders"] == []
    assert attempt["last_run"]["exit_code"] == 3
    assert "cannot connect" in attempt["last_run"]["errors"][0]
    assert data[f"maildir:{mailenv / 'src'}"]["synced"] is True


def test_status_names_a_state_file_it_cannot_read_and_shows_the_others(mailenv):
    """One state file from a newer mailsync (or a damaged one) made the whole status exit
    2: now that file is named, the others shown, and the exit code is 1."""
    import sqlite3

    from mailsync.state_schema import SCHEMA_VERSION

    make_maildir(mailenv / "src", {"INBOX": 2})
    assert invoke("pull", mailenv / "src", mailenv / "backup").exit_code == 0
    newer = mailenv / "state" / "mailsync" / "channel-newer.db"
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    db.commit()
    db.close()
    os.chmod(newer, 0o600)
    before = newer.read_bytes()
    result = invoke("status")
    assert result.exit_code == 1, result.output
    assert f"mailsync: error: state file {newer} was written by a newer mailsync" in result.output
    assert "  INBOX\t2 remote\t2 local" in result.output
    data = json.loads(invoke("status", "--json").stdout)
    assert data["exit_code"] == 1
    (bad,) = [c for c in data["channels"] if "error" in c]
    assert bad["state"] == str(newer)
    assert newer.read_bytes() == before

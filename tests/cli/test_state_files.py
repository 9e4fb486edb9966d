"""The state directory and what `mailsync status` makes of it, through the command line."""

from __future__ import annotations

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

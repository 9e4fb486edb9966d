"""Local stores on the command line: a source that is not there, or not what it seems,
is never taken for an empty one."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from mailsync.cli import cli

MSG = b"From: a@example.org\nSubject: hi\n\nbody\n"


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def make_maildir(path, messages: int = 1, sub: str = "cur", info: str = ":2,S") -> None:
    for name in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, name), exist_ok=True)
    for i in range(messages):
        with open(os.path.join(path, sub, f"{i}.M{i}P1.host{info}"), "wb") as f:
            f.write(MSG.replace(b"body", b"body %d" % i))


@pytest.mark.parametrize("scheme", ["", "maildir:", "mbox:"])
def test_a_missing_source_is_exit_2_and_nothing_is_made(mailenv, scheme):
    missing = mailenv / "no" / "such" / "path"
    out = mailenv / "out"
    result = run("pull", f"{scheme}{missing}", str(out))
    assert result.exit_code == 2
    assert result.output.strip() == f"mailsync: error: {missing} does not exist; check the path"
    assert not out.exists()
    listed = run("list", f"{scheme}{missing}")
    assert listed.exit_code == 2 and "does not exist" in listed.output
    verified = run("verify", f"{scheme}{missing}", str(out))
    assert verified.exit_code == 2


def test_a_missing_destination_is_made(mailenv):
    make_maildir(mailenv / "src" / "INBOX")
    for scheme in ("", "mbox:"):
        out = mailenv / f"out-{scheme}" / "deeper"
        result = run("pull", str(mailenv / "src"), f"{scheme}{out}")
        assert result.exit_code == 0, result.output
        assert out.is_dir()


def test_a_file_given_as_a_maildir_says_what_it_is(mailenv):
    box = mailenv / "box"
    box.write_bytes(b"From MAILER-DAEMON Sun Sep  9 01:46:40 2001\n" + MSG)
    result = run("list", str(box))
    assert result.exit_code == 2
    assert f"it looks like an mbox file: write mbox:{box}" in result.output
    fifo = mailenv / "fifo"
    os.mkfifo(fifo)
    result = run("list", f"mbox:{fifo}")
    assert result.exit_code == 2 and "neither an mbox file nor a directory" in result.output

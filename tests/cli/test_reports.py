"""What the reports say when a run does less than asked: folder patterns that match
nothing, a source with no folders."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_cli import make_maildir, write_config

from mailsync.cli import cli


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def test_a_folder_pattern_that_matches_nothing_is_named(mailenv):
    make_maildir(mailenv / "src", {"INBOX": 1, "Archive/2019": 1, "Trash": 1})
    args = ["--folders", "Archiv/*", "--folders", "INBOX", "--folders", "!Trsh"]
    result = invoke("pull", *args, mailenv / "src", mailenv / "dst")
    assert result.exit_code == 0, result.output
    assert "mailsync: folder pattern 'Archiv/*' matches no folder" in result.stderr
    assert "mailsync: folder pattern '!Trsh' excludes no folder" in result.stderr
    assert "'INBOX'" not in result.stderr
    report = json.loads(invoke("pull", "--json", *args, mailenv / "src", mailenv / "dst").stdout)
    assert report["channels"][0]["warnings"] == [
        "folder pattern 'Archiv/*' matches no folder",
        "folder pattern '!Trsh' excludes no folder",
    ]
    quiet = invoke("-q", "pull", *args, mailenv / "src", mailenv / "dst")
    assert quiet.output == ""


def test_a_channel_folders_pattern_that_matches_nothing_is_named(mailenv):
    make_maildir(mailenv / "src", {"INBOX": 1})
    write_config(
        mailenv,
        f'[channel.c]\nremote = "{mailenv / "src"}"\nlocal = "{mailenv / "dst"}"\n'
        'folders = ["INBOX", "Sent*"]\n',
    )
    result = invoke("pull", "c")
    assert result.exit_code == 0
    assert "folder pattern 'Sent*' matches no folder" in result.stderr


def test_a_source_without_folders_says_so(mailenv):
    (mailenv / "empty").mkdir()
    result = invoke("pull", mailenv / "empty", mailenv / "dst")
    assert result.exit_code == 0
    assert f"found no folder in maildir:{mailenv / 'empty'}; nothing to sync" in result.stderr

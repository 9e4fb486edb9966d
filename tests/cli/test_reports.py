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


# -- verify ----------------------------------------------------------------------------------


def drop_one(folder_dir) -> None:
    """A message lost from a Maildir folder (the first file of new/)."""
    victim = sorted((folder_dir / "new").iterdir())[0]
    victim.unlink()


def test_verify_names_every_missing_message_and_a_missing_folder(mailenv):
    src, dst = mailenv / "src", mailenv / "dst"
    make_maildir(src, {"INBOX": 3, "Archive": 2, "Drafts": 0})
    assert invoke("pull", src, dst).exit_code == 0
    drop_one(dst / "INBOX")
    for sub in ("cur", "new", "tmp"):
        (dst / "Drafts" / sub).rmdir()
    (dst / "Drafts").rmdir()
    make_maildir(src, {"Archive": 1}, tag=" late")
    (src / "Archive" / "new").joinpath("dated").write_bytes(
        b"From: Zo\xc3\xab <z@example.org>\nDate: Mon, 4 Mar 2019 05:06:07 +0000\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\nMessage-ID: <dated@x>\n\nhello\n"
    )
    result = invoke("verify", src, dst)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert "INBOX: 3 messages, 1 MISSING" in lines
    assert "Archive: 4 messages, 2 MISSING" in lines
    assert "Drafts: 0 messages, folder Drafts NOT ON THE DESTINATION" in lines
    assert '  missing: no date, from a@example.org, "Archive 0 late", <Archive.0@x>' in lines
    assert (
        '  missing: Mon, 4 Mar 2019 05:06:07 +0000, from Zoë <z@example.org>, "Grüße", <dated@x>'
        in lines
    )
    assert "3 messages of the source are not in the destination" in result.stderr
    report = json.loads(invoke("verify", "--json", src, dst).stdout)
    assert report["exit_code"] == 1 and report["missing"] == 3
    folders = {f["folder"]: f for f in report["folders"]}
    assert folders["Drafts"]["on_destination"] is False and folders["Drafts"]["messages"] == 0
    (lost,) = folders["INBOX"]["missing_messages"]
    assert lost["folder"] == "INBOX" and lost["from"] == "a@example.org"
    assert lost["subject"].startswith("INBOX ") and lost["message_id"].startswith("<INBOX.")
    assert lost["key"] and lost["date"] is None


def test_verify_counts_identical_messages_one_by_one(mailenv):
    src, dst = mailenv / "src", mailenv / "dst"
    make_maildir(src, {"INBOX": 1})
    make_maildir(src, {"INBOX": 1})  # the same bytes again
    assert invoke("pull", src, dst).exit_code == 0
    assert invoke("verify", src, dst).exit_code == 0
    drop_one(dst / "INBOX")
    result = invoke("verify", src, dst)
    assert result.exit_code == 1 and "INBOX: 2 messages, 1 MISSING" in result.stdout


def test_verify_an_empty_folder_missing_on_the_destination_is_not_ok(mailenv):
    src, dst = mailenv / "src", mailenv / "dst"
    make_maildir(src, {"INBOX": 1})
    make_maildir(src, {"Empty": 0})
    assert invoke("pull", src, dst, "--folders", "INBOX").exit_code == 0
    result = invoke("verify", src, dst)
    assert result.exit_code == 1
    assert "Empty: 0 messages, folder Empty NOT ON THE DESTINATION" in result.stdout
    assert "INBOX: 1 messages, ok" in result.stdout


def test_verify_a_channel_follows_its_folder_map_as_the_sync_does(mailenv):
    make_maildir(mailenv / "src", {"INBOX": 2})
    write_config(
        mailenv,
        f'[channel.c]\nremote = "{mailenv / "src"}"\nlocal = "{mailenv / "dst"}"\n'
        'folder = "POP/provider"\n',
    )
    assert invoke("pull", "c").exit_code == 0
    result = invoke("verify", "c")
    assert result.exit_code == 0, result.output
    assert result.stdout == "INBOX: 2 messages, ok\n"


# -- the dry run and folders it cannot create -------------------------------------------------


def test_dry_run_says_which_folders_cannot_be_created_as_the_real_run_finds(mailenv):
    src = mailenv / "src"
    make_maildir(src, {"INBOX": 1, "Lists.python": 2, "Sent": 1})
    dst = f"maildir:{mailenv / 'dst'}?layout=maildir++"
    dry = invoke("pull", "--dry-run", src, dst)
    assert dry.exit_code == 1, dry.output
    assert (
        "mailsync: Lists.python: cannot be created on the local side: folder name "
        "'Lists.python' contains '.'" in dry.stderr
    )
    assert "Lists.python: would copy 2 to local, 0 to remote, flags 0, delete 0, errors 1" in (
        dry.stdout
    )
    assert "Sent: would be created on the local side" in dry.stdout
    assert not (mailenv / "dst").exists()
    real = invoke("pull", src, dst)
    assert real.exit_code == 1
    assert "Lists.python" in real.stderr and "Sent: copied 1" in real.stdout


def test_dry_run_into_mbox_names_what_mbox_cannot_hold(mailenv):
    src = mailenv / "src"
    make_maildir(src, {"INBOX": 1, "Archive.lock": 1, "Sub/x": 1})
    (mailenv / "box").mkdir()
    (mailenv / "box" / "Sub").write_bytes(b"")  # an empty mbox folder named Sub, a file
    dry = invoke("pull", "--dry-run", src, f"mbox:{mailenv / 'box'}")
    assert dry.exit_code == 1
    assert "Archive.lock: cannot be created on the local side" in dry.stderr
    assert "ends in '.lock'" in dry.stderr
    assert "INBOX: would be created on the local side" in dry.stdout
    # Sub/x goes into Sub.sbd/ beside the mbox file Sub: nothing in the way
    assert "Sub/x: would be created on the local side" in dry.stdout


def test_dry_run_a_file_where_a_parent_folder_would_go(mailenv):
    src = mailenv / "src"
    make_maildir(src, {"Archive/2019": 1})
    (mailenv / "dst").mkdir()
    (mailenv / "dst" / "Archive").write_bytes(b"not a folder")
    dry = invoke("pull", "--dry-run", src, mailenv / "dst")
    assert dry.exit_code == 1
    assert f"{mailenv / 'dst' / 'Archive'} is not a directory" in dry.stderr

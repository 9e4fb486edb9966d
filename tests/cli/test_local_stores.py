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


def make_maildir(path, messages: int = 1) -> None:
    for name in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, name), exist_ok=True)
    for i in range(messages):
        with open(os.path.join(path, "cur", f"{i}.M{i}P1.host:2,S"), "wb") as f:
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


# -- Maildir layouts: the tree says which, and nothing that holds mail is dropped ------------


def counts(root) -> dict[str, int]:
    """Folder -> number of messages, of a verbatim tree mailsync wrote."""
    out = {}
    for dirpath, dirnames, _ in os.walk(root):
        if "cur" in dirnames and "new" in dirnames:
            name = os.path.relpath(dirpath, root)
            out[name] = sum(len(os.listdir(os.path.join(dirpath, s))) for s in ("cur", "new"))
    return out


def test_a_standard_maildir_is_pulled_with_its_inbox(mailenv):
    home = mailenv / "Maildir"
    make_maildir(home, 2)  # INBOX: cur/new/tmp at the root
    (home / "new" / "9.M9P1.host").write_bytes(MSG)  # and one nobody has seen yet
    make_maildir(home / ".Sent", 3)
    make_maildir(home / ".Archive.2019", 1)
    listed = run("list", str(home))
    assert listed.exit_code == 0
    assert [line.split("\t")[:2] for line in listed.output.splitlines()[:3]] == [
        ["Archive/2019", "1"],
        ["INBOX", "3"],
        ["Sent", "3"],
    ]
    result = run("pull", str(home), str(mailenv / "out"))
    assert result.exit_code == 0, result.output
    assert counts(mailenv / "out") == {"INBOX": 3, "Sent": 3, "Archive/2019": 1}
    again = run("pull", str(home), str(mailenv / "out"))
    assert again.exit_code == 0 and "copied 0 to local" in again.output


def test_a_standard_maildir_backed_up_by_0_1_0_is_not_copied_again(mailenv):
    """mailsync 0.1.0 read a standard ~/Maildir as verbatim: its .Sent became a folder
    named ".Sent" in the backup (and INBOX was left out).  A channel that did that keeps
    its mail after the upgrade: the backup's folders move to the new names, INBOX is
    copied, nothing else is copied again."""
    home = mailenv / "Maildir"
    make_maildir(home, 2)
    make_maildir(home / ".Sent", 3)
    make_maildir(home / ".Archive.2019", 1)
    config = mailenv / "config.toml"

    def channel(url: str) -> None:
        config.write_text(
            f'[channel.box]\nremote = "{url}"\nlocal = "maildir:{mailenv / "out"}"\n'
            'direction = "pull"\n'
        )

    channel(f"maildir:{home}?layout=verbatim")  # read as 0.1.0 read it (exit 1: INBOX)
    old = run("--config", str(config), "pull", "box")
    assert counts(mailenv / "out") == {".Sent": 3, ".Archive.2019": 1}, old.output
    channel(f"maildir:{home}")
    result = run("--config", str(config), "pull", "box")
    assert result.exit_code == 0, result.output
    assert counts(mailenv / "out") == {"INBOX": 2, "Sent": 3, "Archive/2019": 1}
    assert "copied 2 to local" in result.output  # INBOX, and nothing else
    assert result.output.count("copied 0 to local") == 2, result.output
    again = run("--config", str(config), "pull", "box")
    assert again.exit_code == 0 and again.output.count("copied 0 to local") == 3


def test_one_maildir_folder_is_a_store_holding_inbox(mailenv):
    make_maildir(mailenv / "src" / "Sent", 2)
    assert run("pull", str(mailenv / "src"), str(mailenv / "out")).exit_code == 0
    listed = run("list", str(mailenv / "out" / "Sent"))
    assert listed.exit_code == 0
    assert listed.output.splitlines() == ["INBOX\t2\t80 B", "1 folders, 2 messages, 80 B"]


def test_a_maildir_root_beside_verbatim_folders_is_refused_until_the_url_says(mailenv):
    mixed = mailenv / "mixed"
    make_maildir(mixed, 2)
    make_maildir(mixed / "Sent", 1)
    result = run("pull", str(mixed), str(mailenv / "out"))
    assert result.exit_code == 2
    assert f"{mixed} is itself a Maildir with messages" in result.output
    assert f"maildir:{mixed}?layout=maildir++ or maildir:{mixed}?layout=verbatim" in (result.output)
    assert not (mailenv / "out").exists()

    verbatim = run("pull", f"maildir:{mixed}?layout=verbatim", str(mailenv / "out1"))
    assert verbatim.exit_code == 1
    assert "itself holds mail (in its cur/ and new/)" in verbatim.output
    assert counts(mailenv / "out1") == {"Sent": 1}
    maildirpp = run("pull", f"maildir:{mixed}?layout=maildir++", str(mailenv / "out2"))
    assert maildirpp.exit_code == 1
    assert f"{mixed / 'Sent'} holds mail but is not synced" in maildirpp.output
    assert counts(mailenv / "out2") == {"INBOX": 2}


def test_an_empty_maildir_root_beside_verbatim_folders_is_verbatim(mailenv):
    tree = mailenv / "tree"
    make_maildir(tree, 0)  # Dovecot with LAYOUT=fs and no INBOX= makes these
    make_maildir(tree / "INBOX", 1)
    make_maildir(tree / "Sent", 1)
    result = run("pull", str(tree), str(mailenv / "out"))
    assert result.exit_code == 0, result.output
    assert counts(mailenv / "out") == {"INBOX": 1, "Sent": 1}


def test_a_pull_into_a_standard_maildir_keeps_its_layout(mailenv):
    make_maildir(mailenv / "src" / "INBOX", 2)
    make_maildir(mailenv / "src" / "Lists" / "python", 1)
    home = mailenv / "Maildir"
    make_maildir(home, 0)
    result = run("pull", str(mailenv / "src"), str(home))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(home)) == [".Lists.python", "cur", "new", "tmp"]
    assert len(os.listdir(home / "cur")) == 2
    assert len(os.listdir(home / ".Lists.python" / "cur")) == 1
    again = run("pull", str(mailenv / "src"), str(home))
    assert again.exit_code == 0 and "copied 0 to local" in again.output


def test_a_pull_clears_what_a_killed_run_left_in_tmp(mailenv):
    import socket
    import subprocess
    import sys

    from mailsync.stores.maildir_folder import safe_hostname

    make_maildir(mailenv / "src" / "INBOX", 1)
    assert run("pull", str(mailenv / "src"), str(mailenv / "out")).exit_code == 0
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host = safe_hostname(socket.gethostname())
    leftover = mailenv / "out" / "INBOX" / "tmp" / f"1700000000.M1P{dead}Q3.{host},S=40"
    leftover.write_bytes(MSG)
    make_maildir(mailenv / "src" / "INBOX", 2)  # something to do
    result = run("pull", str(mailenv / "src"), str(mailenv / "out"))
    assert result.exit_code == 0, result.output
    assert not leftover.exists()


def test_verify_knows_mbox_copies_that_gained_a_final_newline(mailenv):
    src = mailenv / "src" / "INBOX"
    make_maildir(src, 2)
    (src / "cur" / "7.M7P1.host:2,S").write_bytes(b"Subject: bare\n\nno final newline")
    assert run("pull", str(mailenv / "src"), f"mbox:{mailenv / 'out'}").exit_code == 0
    result = run("verify", str(mailenv / "src"), f"mbox:{mailenv / 'out'}")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "INBOX: 3 messages, ok (1 differ only by the destination's normalisation)"
    ]


@pytest.mark.parametrize("names", [("1", "2"), ("2", "1")])
def test_verify_matches_exact_copies_first_and_names_the_message_really_missing(mailenv, names):
    """Two source messages that differ only where a normalising destination may (an
    8-bit header byte against an "X"), one of them copied: the exact copy counts for
    its own message, so the other is the one named missing, whichever is listed first;
    a copy that gained its final newline counts apart, as normalised."""
    import json

    from mailsync.stores import open_store

    sources = {
        names[0]: b"Subject: cafXX\n\nbody\n",
        names[1]: b"Subject: caf\xc3\xa9\n\nbody\n",
        "3": b"Subject: plain\n\nno final newline",
    }
    make_maildir(mailenv / "src" / "INBOX", 0)
    for name, body in sources.items():
        (mailenv / "src" / "INBOX" / "cur" / f"{name}.M1P1.host:2,S").write_bytes(body)
    with open_store(f"mbox:{mailenv / 'out'}") as store:
        box = store.open_folder("INBOX", create=True)
        box.append(sources[names[0]], frozenset(), 0)
        box.append(sources["3"], frozenset(), 0)  # stored with a final newline
        box.close()
    result = run("verify", "--json", str(mailenv / "src"), f"mbox:{mailenv / 'out'}")
    assert result.exit_code == 1, result.output
    (folder,) = json.loads(result.stdout)["folders"]
    assert [m["subject"] for m in folder["missing_messages"]] == ["café"]
    assert folder["normalised"] == 1


def test_what_a_destination_cannot_read_is_a_warning_and_a_source_an_error(mailenv):
    """Mail a pull's destination holds but cannot read is nothing missing from the
    copy: a warning, exit 0.  The same tree as the source of a run: exit 1."""
    make_maildir(mailenv / "src" / "INBOX", 1)
    tree = mailenv / "mbox"
    make_maildir(tree / "lists" / "python", 1)  # a Maildir inside an mbox tree
    (tree / "INBOX").write_bytes(  # text before the first From_ line
        b"a note\n\nFrom MAILER-DAEMON Sun Sep  9 01:46:40 2001\n" + MSG + b"\n"
    )
    pulled = run("pull", str(mailenv / "src"), f"mbox:{tree}")
    assert pulled.exit_code == 0, pulled.output
    assert "is a Maildir inside an mbox tree" in pulled.output
    assert 'INBOX does not start with a "From " line' in pulled.output
    assert "INBOX: copied 1 to local" in pulled.output
    pushed = run("push", f"mbox:{tree}", str(mailenv / "back"))
    assert pushed.exit_code == 1
    assert "is a Maildir inside an mbox tree" in pushed.output
    assert 'INBOX does not start with a "From " line' in pushed.output


def test_list_names_what_it_cannot_read_and_exits_1(mailenv):
    """An mbox file with text before its first From_ line, listed: its readable mail is
    counted, the stray text named, and the exit code says not everything was read."""
    root = mailenv / "mboxes"
    root.mkdir()
    (root / "INBOX").write_bytes(b"From a@b Sun Sep  9 01:46:40 2001\n" + MSG)
    (root / "Notes").write_bytes(
        b"a note someone typed first\n\nFrom a@b Sun Sep  9 01:46:40 2001\n" + MSG
    )
    result = run("list", f"mbox:{root}")
    assert result.exit_code == 1, result.output
    assert "Notes" in result.output and "does not start with" in result.output
    assert "Notes\t1\t" in result.output
    listed = run("list", "--json", f"mbox:{root}")
    assert listed.exit_code == 1
    import json

    report = json.loads(listed.stdout)
    assert report["exit_code"] == 1 and len(report["errors"]) == 1
    assert {row["folder"]: row["messages"] for row in report["folders"]} == {
        "INBOX": 1,
        "Notes": 1,
    }
    clean = run("list", f"mbox:{root / 'INBOX'}")
    assert clean.exit_code == 0, clean.output

"""What mailsync writes, read by other programs: GNU mailutils (frm, messages) on its mbox
files, notmuch on its Maildir trees.  ``make test`` installs both (as root); without
them these tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from mailsync.stores import open_store


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    why = f"{', '.join(missing)} not installed (make test installs mailutils and notmuch)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def mailsync(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailsync", *args], env=env, capture_output=True, text=True
    )


@pytest.fixture
def env(mailenv):
    return {**os.environ, "XDG_STATE_HOME": str(mailenv / "state")}


# -- GNU mailutils on mbox files --------------------------------------------------------------


def awkward(i: int) -> bytes:
    """Message i of 100: every tenth without a final newline, others with From_ lines in
    the body, CRLF line ends, CR CR LF line ends, a lone CR at the end, an empty body."""
    head = b"From: User %d <user%d@example.org>\nSubject: message %d\n" % (i, i, i)
    kind = i % 10
    if kind == 0:
        return head + b"\nno final newline %d" % i
    if kind == 1:
        return head + b"\nFrom the start of a line\n>From a quoted one\nFrom \n"
    if kind == 2:
        return (head + b"\nsent with CRLF\n").replace(b"\n", b"\r\n")
    if kind == 3:
        return (head + b"\nCR CR LF all along\n").replace(b"\n", b"\r\r\n")
    if kind == 4:
        return head + b"\nends in a lone CR\r"
    if kind == 5:
        return head + b"\n"
    if kind == 6:
        return head + b"\nFrom the last line, no newline"
    return head + b"\nan ordinary body %d\n" % i


def test_mailutils_reads_every_message_of_an_mbox_mailsync_wrote(mailenv, env):
    need("frm", "messages")
    with open_store(f"maildir:{mailenv / 'src'}") as store:
        inbox = store.open_folder("INBOX", create=True)
        for i in range(100):
            inbox.append(awkward(i), frozenset(), 1_700_000_000 + i)
        inbox.close()
    out = mailenv / "out"
    pulled = mailsync("pull", str(mailenv / "src"), f"mbox:{out}", env=env)
    assert pulled.returncode == 0, pulled.stderr
    box = str(out / "INBOX")

    count = subprocess.run(["messages", box], capture_output=True, text=True, check=True)
    assert count.stdout.strip() == f"Number of messages in {box}: 100"
    # (frm shows the sender's name; it exits 1 whatever it found)
    listed = subprocess.run(["frm", box], capture_output=True, text=True)
    assert sorted(listed.stdout.splitlines()) == sorted(
        f"User {i}\tmessage {i}" for i in range(100)
    ), listed.stderr
    # and after a second run that appends to the same file
    with open_store(f"maildir:{mailenv / 'src'}") as store:
        store.open_folder("INBOX").append(awkward(100), frozenset(), 1_700_000_100)
    again = mailsync("pull", str(mailenv / "src"), f"mbox:{out}", env=env)
    assert again.returncode == 0, again.stderr
    count = subprocess.run(["messages", box], capture_output=True, text=True, check=True)
    assert count.stdout.strip() == f"Number of messages in {box}: 101"


# -- notmuch on Maildir trees --------------------------------------------------------------------


def notmuch(config, *args: str) -> str:
    done = subprocess.run(
        ["notmuch", *args],
        env={**os.environ, "NOTMUCH_CONFIG": str(config)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_notmuch_reads_a_maildir_tree_mailsync_wrote(mailenv, env):
    need("notmuch")
    src = mailenv / "src"
    for folder in ("INBOX", "Sent"):
        for sub in ("cur", "new", "tmp"):
            os.makedirs(src / folder / sub)

    def put(folder, name, sender, subject):
        data = f"From: {sender}\nSubject: {subject}\nMessage-ID: <{name}@x>\n\nbody\n"
        (src / folder / name).write_bytes(data.encode())

    put("INBOX", "new/1.M1P1.host", "a@example.org", "new, nobody has seen it")
    put("INBOX", "cur/2.M1P1.host:2,", "b@example.org", "seen by mutt, not read")
    put("INBOX", "cur/3.M1P1.host:2,S", "c@example.org", "read")
    put("INBOX", "cur/4.M1P1.host:2,FS", "d@example.org", "read and flagged")
    put("Sent", "cur/5.M1P1.host:2,S", "me@example.org", "sent")
    out = mailenv / "out"
    pulled = mailsync("pull", str(src), str(out), env=env)
    assert pulled.returncode == 0, pulled.stderr

    config = mailenv / "notmuch-config"
    config.write_text(
        f"[database]\npath={out}\n[user]\nname=Test\nprimary_email=me@example.org\n"
        "[new]\ntags=unread;inbox;\nignore=\n[search]\nexclude_tags=\n"
        "[maildir]\nsynchronize_flags=true\n"
    )
    notmuch(config, "new")
    assert notmuch(config, "count", "*") == "5"
    assert notmuch(config, "count", "folder:INBOX") == "4"
    assert notmuch(config, "count", "folder:Sent") == "1"
    # notmuch tags by the S flag: the message in new/ (still in new/, as in the
    # source) and the one mutt saw but nobody read (still in cur/, so mutt says old)
    unread = notmuch(config, "search", "--output=files", "tag:unread").splitlines()
    assert sorted(os.path.relpath(f, out).split(os.sep)[1] for f in unread) == ["cur", "new"]
    assert notmuch(config, "count", "tag:flagged") == "1"
    assert notmuch(config, "count", "tag:unread", "and", "subject:mutt") == "1"

    # notmuch's database inside the tree is no folder, and no problem, to mailsync
    again = mailsync("pull", str(src), str(out), env=env)
    assert again.returncode == 0, again.stderr
    with open_store(f"maildir:{out}", read_only=True) as tree:
        assert tree.list_folders() == ["INBOX", "Sent"] and tree.problems == []

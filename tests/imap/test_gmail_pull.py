"""Pulls from Gmail (FakeGmail, fakegmail.py): each message downloaded once however many
labels (folders) show it, the other local copies made on disk (hard links on Maildir);
Gmail's folders mapped to local Sent, Trash, Drafts, Junk, Archive by SPECIAL-USE, and
Important and Starred left out unless asked for.  FakeGmail.body_downloads counts the
whole-body downloads of each message (X-GM-MSGID)."""

from __future__ import annotations

import json
import mailbox
import os
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from fakegmail import IMPORTANT, INBOX, SENT, TRASH, FakeGmail
from imapclient import IMAPClient
from imaptools import file_flags, maildir_files, run, run_process

# Gmail's folders as a pull with the default folder patterns maps them locally.
LOCAL_SYSTEM = {"Archive", "Drafts", "Junk", "Sent", "Trash"}


def mail(n: int, extra: str = "") -> bytes:
    """A message as Gmail stores and sends it (CRLF)."""
    return (
        f"From: a{n}@example.org\r\nTo: alice@gmail.com\r\nMessage-ID: <m{n}@example.org>\r\n"
        f"Subject: message {n}\r\n\r\nbody of message {n}\r\n{extra}"
    ).encode()


def lf(body: bytes) -> bytes:
    return body.replace(b"\r\n", b"\n")


def pull(gmail: FakeGmail, dest: str, *args: str):
    result = run("pull", *args, gmail.url(), dest, password=gmail.password)
    assert result.exit_code == 0, result.output
    return result


def imap(gmail: FakeGmail) -> IMAPClient:
    client = IMAPClient(gmail.host, port=gmail.port, ssl=False, timeout=10)
    client.login(gmail.user, gmail.password)
    return client


def bodies(root: Path) -> dict[str, Counter]:
    return {
        name: Counter(p.read_bytes() for p in paths) for name, paths in maildir_files(root).items()
    }


def inodes(root: Path) -> dict[str, dict[bytes, int]]:
    """Local folder -> body -> the inode of its file."""
    return {
        name: {p.read_bytes(): p.stat().st_ino for p in paths}
        for name, paths in maildir_files(root).items()
    }


def file_of(root: Path, folder: str, body: bytes) -> Path:
    """The one file of local folder `folder` that holds `body`."""
    (path,) = [p for p in maildir_files(root)[folder] if p.read_bytes() == body]
    return path


# The local folders of a message labelled INBOX, Work and Later (All Mail: Archive).
FOLDERS = ("INBOX", "Work", "Later", "Archive")


@pytest.fixture
def gmail(mailenv):
    with FakeGmail(labels=("Work", "Later")) as server:
        yield server


def three_labels(gmail: FakeGmail, count: int = 4) -> list:
    """Messages each in INBOX, Work and Later (and All Mail), the first one starred and
    read, the others unread."""
    return [
        gmail.deliver(
            mail(n),
            labels=(INBOX, "Work", "Later"),
            flags=("\\Seen", "\\Flagged") if n == 0 else (),
        )
        for n in range(count)
    ]


# -- download once -------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_each_message_is_downloaded_once_however_many_labels_it_has(gmail, mailenv, jobs):
    """Three labels and All Mail: four folders, one download per message (also with four
    folders synced at once), the other copies hard links of the first, with their flags."""
    messages = three_labels(gmail)
    root = mailenv / "Mail"
    result = pull(gmail, f"maildir:{root}", "--jobs", jobs, "--json")
    assert gmail.body_downloads == Counter({m.msgid: 1 for m in messages})
    reported = json.loads(result.output)["channels"][0]["folders"]
    assert sum(f["copied_a_to_b"] for f in reported) == 4 * len(messages)
    assert sum(f["from_local_copies"] for f in reported) == 3 * len(messages)
    expected = Counter(lf(m.body) for m in messages)
    found = bodies(root)
    for folder in FOLDERS:
        assert found[folder] == expected, folder
    # one file on disk per message, linked into every folder
    for m in messages:
        files = [file_of(root, folder, lf(m.body)) for folder in FOLDERS]
        assert len({f.stat().st_ino for f in files}) == 1
        assert files[0].stat().st_nlink == len(FOLDERS)
    # flags are each copy's own: the starred one is flagged and read everywhere, and a
    # mail reader changing one copy's flags leaves the others alone
    first = lf(messages[0].body)
    for folder in FOLDERS:
        assert file_flags(file_of(root, folder, first)) == {"\\Seen", "\\Flagged"}
    work_copy = file_of(root, "Work", first)
    work_copy.rename(work_copy.with_name(work_copy.name.replace(":2,FS", ":2,S")))
    assert file_flags(file_of(root, "Work", first)) == {"\\Seen"}
    for folder in ("INBOX", "Later", "Archive"):
        assert file_flags(file_of(root, folder, first)) == {"\\Seen", "\\Flagged"}


def test_x_gm_msgid_comes_with_the_flags_in_one_fetch(gmail, mailenv):
    three_labels(gmail)
    pull(gmail, f"maildir:{mailenv / 'Mail'}")
    fetches = [c for c in gmail.commands() if "FETCH" in c.upper()]
    listings = [c for c in fetches if "FLAGS" in c.upper()]
    assert listings and all("X-GM-MSGID" in c.upper() for c in listings)
    assert not [c for c in fetches if "X-GM-MSGID" in c.upper() and c not in listings]


def test_a_rerun_downloads_nothing_and_a_new_label_downloads_nothing(gmail, mailenv):
    messages = three_labels(gmail)
    root = mailenv / "Mail"
    pull(gmail, f"maildir:{root}")
    before = Counter(gmail.body_downloads)
    pull(gmail, f"maildir:{root}")
    assert gmail.body_downloads == before
    # an old message gets a new label: a new folder, its copy a link of the local one
    client = imap(gmail)
    client.select_folder("INBOX")
    client.add_gmail_labels([gmail.uid("INBOX", messages[2].msgid)], ["Receipts"])
    client.logout()
    pull(gmail, f"maildir:{root}")
    assert gmail.body_downloads == before
    assert bodies(root)["Receipts"] == Counter([lf(messages[2].body)])
    links = inodes(root)
    assert links["Receipts"][lf(messages[2].body)] == links["INBOX"][lf(messages[2].body)]
    # a new message with two labels: one download
    new = gmail.deliver(mail(9), labels=(INBOX, "Work"))
    pull(gmail, f"maildir:{root}")
    assert gmail.body_downloads == before + Counter({new.msgid: 1})
    for folder in ("INBOX", "Work", "Archive"):
        assert bodies(root)[folder][lf(new.body)] == 1


def test_messages_copied_before_account_ids_were_recorded_serve_new_labels(gmail, mailenv):
    """A state whose pairs have no X-GM-MSGID (a pull of an earlier mailsync) learns them
    from the next listing: a new label of an old message then downloads nothing."""
    messages = three_labels(gmail)
    root = mailenv / "Mail"
    pull(gmail, f"maildir:{root}", "--folders", "INBOX")
    (path,) = (mailenv / "state" / "mailsync").glob("*.db")
    db = sqlite3.connect(path)
    db.execute("UPDATE pairs SET account_id_a = NULL")
    db.execute("DELETE FROM meta WHERE name LIKE 'account-ids:%'")
    db.commit()
    db.close()
    pull(gmail, f"maildir:{root}", "--folders", "INBOX")
    pull(gmail, f"maildir:{root}", "--folders", "INBOX", "--folders", "Work")
    assert gmail.body_downloads == Counter({m.msgid: 1 for m in messages})
    assert bodies(root)["Work"] == bodies(root)["INBOX"]


def test_an_mbox_destination_gets_each_message_once_from_one_download(gmail, mailenv):
    messages = three_labels(gmail)
    root = mailenv / "mbox"
    pull(gmail, f"mbox:{root}")
    assert gmail.body_downloads == Counter({m.msgid: 1 for m in messages})
    for folder in FOLDERS:
        box = mailbox.mbox(str(root / folder), create=False)
        subjects = sorted(str(message["Subject"]) for message in box)
        assert subjects == sorted(f"message {n}" for n in range(len(messages))), folder
        box.close()


def test_a_changed_local_copy_is_not_copied_the_message_is_downloaded(gmail, mailenv):
    """A local copy whose bytes are no longer what was copied (edited by hand) is not the
    source of another folder's copy: the message comes from Gmail again."""
    message = gmail.deliver(mail(1), labels=(INBOX,))
    root = mailenv / "Mail"
    pull(gmail, f"maildir:{root}", "--folders", "INBOX")
    (copy,) = maildir_files(root)["INBOX"]
    copy.write_bytes(lf(message.body).replace(b"body of", b"BODY OF"))
    pull(gmail, f"maildir:{root}", "--folders", "INBOX", "--folders", "*All Mail")
    assert gmail.body_downloads[message.msgid] == 2
    assert bodies(root)["Archive"] == Counter([lf(message.body)])


@pytest.mark.parametrize("command", [("pull", "--mirror"), ("sync",)])
def test_a_message_removed_from_one_label_goes_from_that_folder_only(gmail, mailenv, command):
    messages = three_labels(gmail)
    root = mailenv / "Mail"
    pull(gmail, f"maildir:{root}")
    client = imap(gmail)
    client.select_folder("Work")
    client.remove_gmail_labels([gmail.uid("Work", messages[1].msgid)], ["Work"])
    client.logout()
    assert gmail.uid("Work", messages[1].msgid) is None
    result = run(*command, gmail.url(), f"maildir:{root}", password=gmail.password)
    assert result.exit_code == 0, result.output
    found = bodies(root)
    assert lf(messages[1].body) not in found["Work"]
    for folder in ("INBOX", "Later", "Archive"):
        assert found[folder][lf(messages[1].body)] == 1, folder
    assert sum(found["Work"].values()) == len(messages) - 1
    assert gmail.body_downloads == Counter({m.msgid: 1 for m in messages})


def test_a_label_taken_away_and_given_back_leaves_one_copy(gmail, mailenv):
    """Gmail gives a message a new UID in a folder it comes back to: a pull that keeps
    deletions still has its old copy there, which the message is linked to again."""
    messages = three_labels(gmail)
    root = mailenv / "Mail"
    pull(gmail, f"maildir:{root}")
    client = imap(gmail)
    client.select_folder("INBOX")
    uid = gmail.uid("INBOX", messages[1].msgid)
    client.remove_gmail_labels([uid], ["Work"])
    client.logout()
    pull(gmail, f"maildir:{root}")
    client = imap(gmail)
    client.select_folder("INBOX")
    client.add_gmail_labels([uid], ["Work"])
    client.logout()
    pull(gmail, f"maildir:{root}")
    assert bodies(root)["Work"] == Counter(lf(m.body) for m in messages)
    assert gmail.body_downloads == Counter({m.msgid: 1 for m in messages})


# -- folders -------------------------------------------------------------------------------


def test_special_folders_map_by_their_attributes_in_a_localized_account(mailenv):
    names = {"sent": "Gesendet", "trash": "Papierkorb", "all": "Alle Nachrichten"}
    names |= {"drafts": "Entwürfe", "spam": "Spam", "important": "Wichtig"}
    with FakeGmail(prefix="[Google Mail]", names=names) as gmail:
        sent = gmail.deliver(mail(1), labels=(SENT,))
        trashed = gmail.deliver(mail(2), labels=(TRASH,))
        gmail.deliver(mail(3), labels=(INBOX, IMPORTANT))
        listed = run("list", "--json", gmail.url(), password=gmail.password)
        assert listed.exit_code == 0, listed.output
        rows = {row["folder"]: row for row in json.loads(listed.output)["folders"]}
        assert rows["[Google Mail]/Gesendet"]["local"] == "Sent"
        assert rows["[Google Mail]/Alle Nachrichten"]["local"] == "Archive"
        assert "left_out" not in rows["INBOX"] and "local" not in rows["INBOX"]
        assert "left_out" in rows["[Google Mail]/Wichtig"]
        root = mailenv / "Mail"
        dry = run("pull", "--dry-run", gmail.url(), f"maildir:{root}", password=gmail.password)
        assert "[Google Mail]/Papierkorb: would be created on the local side as Trash" in dry.output
        assert not root.exists()
        pull(gmail, f"maildir:{root}")
        assert set(maildir_files(root)) == {"INBOX"} | LOCAL_SYSTEM
        assert bodies(root)["Sent"] == Counter([lf(sent.body)])
        assert bodies(root)["Trash"] == Counter([lf(trashed.body)])
        verified = run("verify", gmail.url(), f"maildir:{root}", password=gmail.password)
        assert verified.exit_code == 0, verified.output
        assert "[Google Mail]/Gesendet: 1 messages, ok" in verified.output


def test_important_and_starred_are_left_out_unless_named(gmail, mailenv):
    messages = three_labels(gmail)
    gmail.deliver(mail(7), labels=(INBOX, IMPORTANT))
    root = mailenv / "Mail"
    pull(gmail, f"maildir:{root}")
    assert set(maildir_files(root)) == {"INBOX", "Work", "Later"} | LOCAL_SYSTEM
    downloads = Counter(gmail.body_downloads)
    pull(gmail, f"maildir:{root}", "--folders", "*", "--folders", "[Gmail]/Starred")
    assert bodies(root)["[Gmail]/Starred"] == Counter([lf(messages[0].body)])
    assert "[Gmail]/Important" not in maildir_files(root)
    assert gmail.body_downloads == downloads  # the starred copy came from a local one


def test_a_folder_synced_under_its_own_name_before_keeps_it(gmail, mailenv):
    """A channel whose state knows [Gmail]/Sent Mail under that local name (a pull of an
    earlier mailsync) goes on syncing it there: nothing is copied twice."""
    gmail.deliver(mail(1), labels=(SENT,))
    root = mailenv / "Mail"
    pull(gmail, f"maildir:{root}")
    state = next((mailenv / "state" / "mailsync").glob("*.db"))
    db = sqlite3.connect(state)
    db.execute("UPDATE folders SET name_b = name_a")
    db.commit()
    db.close()
    (root / "[Gmail]").mkdir(mode=0o700)
    os.rename(root / "Sent", root / "[Gmail]" / "Sent Mail")
    pull(gmail, f"maildir:{root}", "--folders", "[Gmail]/Sent Mail")
    assert "Sent" not in maildir_files(root)
    assert sum(bodies(root)["[Gmail]/Sent Mail"].values()) == 1


def test_without_hard_links_the_local_copy_is_copied(gmail, mailenv, monkeypatch):
    """Another file system, or one without hard links (EXDEV, EPERM): the bytes of the local
    copy are written again; still one download, and files of their own."""
    import errno

    def no_link(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    messages = three_labels(gmail)
    root = mailenv / "Mail"
    pull(gmail, f"maildir:{root}")
    assert gmail.body_downloads == Counter({m.msgid: 1 for m in messages})
    links = inodes(root)
    for m in messages:
        assert len({links[f][lf(m.body)] for f in FOLDERS}) == len(FOLDERS)


# -- crashes -------------------------------------------------------------------------------

CRASHED = 137


def recorded_downloads(state: Path) -> set[int]:
    """The X-GM-MSGIDs of which the state records a local copy."""
    (path,) = (state / "mailsync").glob("*.db")
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT account_id_a FROM pairs WHERE account_id_a IS NOT NULL AND key_b IS NOT NULL"
        )
        return {int(row[0]) for row in rows}
    finally:
        db.close()


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_kill_9_at_every_step_of_a_pull_then_a_rerun(mailenv, jobs):
    """The crash hook at step 1, 2, ... of a pull of an account whose messages have several
    labels, then a rerun: each message exactly once in each folder, no run downloads a
    body twice, and the rerun downloads none that the state recorded a local copy of.
    With four folders at once the steps come in another order each time; the same holds."""
    with FakeGmail(labels=("Work", "Later")) as gmail:
        three_labels(gmail, 3)
        gmail.deliver(mail(5), labels=("Work",))
        expected = {
            folder: Counter(lf(m.body) for m in gmail.folder_messages(server))
            for folder, server in (
                ("INBOX", "INBOX"),
                ("Work", "Work"),
                ("Later", "Later"),
                ("Archive", "[Gmail]/All Mail"),
            )
        }
        for crash_at in range(1, 200):
            root, state = mailenv / f"Mail{crash_at}", mailenv / f"state{crash_at}"
            args = ("pull", "--jobs", jobs, gmail.url(), f"maildir:{root}")
            gmail.body_downloads.clear()
            done = run_process(*args, password=gmail.password, state=state, crash_at=crash_at)
            assert done.returncode in (0, CRASHED), done.stderr
            first = Counter(gmail.body_downloads)
            assert set(first.values()) <= {1}, (crash_at, first)
            recorded = recorded_downloads(state) if (state / "mailsync").is_dir() else set()
            rerun = run_process(*args, password=gmail.password, state=state)
            assert rerun.returncode == 0, rerun.stderr
            again = Counter(gmail.body_downloads) - first
            assert set(again.values()) <= {1}, (crash_at, again)
            assert not recorded & set(again), (crash_at, recorded, again)
            found = bodies(root)
            for folder, wanted in expected.items():
                assert found[folder] == wanted, (crash_at, folder)
            if done.returncode == 0:
                break
        else:
            pytest.fail("the pull never finished")
        assert crash_at > 10  # (the hook did stop it at every step on the way)

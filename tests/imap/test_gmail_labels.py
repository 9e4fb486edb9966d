"""Gmail's labels against the fake Gmail (fakegmail.py): gmail_labels = "keywords" (one
copy of each message in All Mail, its labels as keywords, both ways), restoring such a
backup, and pushing a message that sits in several local folders with one APPEND, also
when the push is killed at any step (mailsync/stores/imap_gmail.py)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from fakegmail import FLAGGED, IMPORTANT, INBOX, SEEN, SENT, STARRED, FakeGmail
from imaptools import run, run_process, write_local

from mailsync.message import header_value
from mailsync.stores import open_store
from mailsync.stores.imap_gmail import keyword_label, label_keyword
from mailsync.stores.maildir_keywords import valid_keyword

#: User labels with what a keyword cannot hold: spaces, nesting, non-ASCII, IMAP's
#: specials, the escape character, a leading "$".
ODD_LABELS = (
    "Work",
    "My Label/Sub ü",
    "Réunions 2024",
    "日本",
    "$money",
    "50% (off) {now}*",
    'say "hi" \\ [x]',
    "a=b",
    "2024",
)


def mail(n: int, extra: str = "") -> bytes:
    return (
        f"From: a{n}@example.org\r\nTo: alice@gmail.com\r\nMessage-ID: <m{n}@example.org>\r\n"
        f"Subject: message {n}\r\n{extra}\r\nbody of message {n}\r\n"
    ).encode()


def keywords_url(gmail: FakeGmail) -> str:
    return gmail.url(query="tls=none&gmail_labels=keywords")


def mailsync(state: Path, *args, gmail: FakeGmail, code: int = 0):
    result = run("--state-dir", state, *args, "--jobs", "1", password=gmail.password)
    assert result.exit_code == code, result.output
    return result


def local_messages(root: Path) -> dict[str, dict[str, frozenset[str]]]:
    """Local folder -> Message-ID -> flags, read with mailsync's own Maildir store."""
    store = open_store(f"maildir:{root}")
    out = {}
    for name in store.list_folders():
        folder = store.open_folder(name)
        out[name] = {
            header_value(folder.fetch(key), "Message-ID") or key: info.flags
            for key, info in folder.list().items()
        }
    return out


def the_archive(local: dict[str, dict]) -> str:
    """The local folder of All Mail: the one that is neither Spam (Junk) nor Trash
    (whatever its local name: the special folders' mapping is folders.py's)."""
    names = [n for n in local if not any(w in n for w in ("Spam", "Junk", "Trash"))]
    assert len(names) == 1, local
    return names[0]


def labels_from(flags: frozenset[str]) -> set[str]:
    return {label for flag in flags if (label := keyword_label(flag)) is not None}


def gmail_labels(gmail: FakeGmail, msgid: int) -> set[str]:
    """A message's labels as keywords mode keeps them (\\Starred is the \\Flagged flag)."""
    return gmail.labels_of(msgid) - {STARRED}


def appends(gmail: FakeGmail) -> list[str]:
    return [line for line in gmail.commands() if line.upper().startswith("APPEND")]


def writes(gmail: FakeGmail) -> list[str]:
    """The commands that change the account: APPEND and (UID) STORE."""
    return [c for c in gmail.commands() if c.upper().startswith(("APPEND", "STORE", "UID STORE"))]


def sqlite_keys(state: Path) -> list[str]:
    """The remote keys of every pair in the state files under XDG_STATE_HOME `state`."""
    keys = []
    for db in (state / "mailsync").glob("*.db"):
        with contextlib.closing(sqlite3.connect(db)) as con:
            rows = con.execute("SELECT folder_id, key_a FROM pairs WHERE key_a IS NOT NULL")
            keys += [f"{folder}/{key}" for folder, key in rows]
    return keys


def by_message_id(gmail: FakeGmail) -> dict[str, list]:
    out: dict[str, list] = {}
    for msg in gmail.messages.values():
        out.setdefault(msg.header("Message-ID"), []).append(msg)
    return out


# -- the encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("label", ODD_LABELS + ("\\Inbox", "\\Important", "\\Sent", "\\Draft"))
def test_every_label_is_a_keyword_that_maps_back_exactly(label):
    keyword = label_keyword(label)
    assert keyword is not None and valid_keyword(keyword)  # Dovecot and IMAP take it
    assert keyword_label(keyword) == label


def test_keywords_that_are_no_labels_stay_keywords():
    for keyword in ("$Forwarded", "$Junk", "$label1", "$MDNSent", "\\Seen", "a=4", "a=41"):
        assert keyword_label(keyword) is None, keyword
    assert label_keyword("\\Starred") is None  # it is \Flagged
    assert label_keyword("\\Inbox") == "$Inbox"
    assert label_keyword("My Label/Sub ü") == "My=20Label/Sub=20=C3=BC"


# -- keywords mode: pull, and label changes both ways -------------------------------------


def test_keywords_mode_pulls_one_copy_of_each_message_with_its_labels(tmp_path):
    with FakeGmail() as gmail:
        several = gmail.deliver(mail(1), labels=(INBOX, IMPORTANT, *ODD_LABELS), flags=(SEEN,))
        archived = gmail.deliver(mail(2), labels=("Work",), flags=(FLAGGED,))
        sent = gmail.deliver(mail(3), labels=(SENT,))
        bare = gmail.deliver(mail(4), labels=())
        spam = gmail.deliver(mail(5), labels=("\\Spam",))
        trash = gmail.deliver(mail(6), labels=("\\Trash",))
        mailsync(tmp_path / "state", "pull", keywords_url(gmail), tmp_path / "m", gmail=gmail)

        local = local_messages(tmp_path / "m")
        assert len(local) == 3, local  # All Mail, Spam, Trash; no folder per label
        archive = the_archive(local)
        assert sorted(local[archive]) == [f"<m{n}@example.org>" for n in (1, 2, 3, 4)]
        for msg in (several, archived, sent, bare):
            flags = local[archive][msg.header("Message-ID")]
            assert labels_from(flags) == gmail_labels(gmail, msg.msgid), msg.header("Subject")
        assert labels_from(local[archive]["<m1@example.org>"]) >= set(ODD_LABELS)
        assert "\\Seen" in local[archive]["<m1@example.org>"]
        assert "\\Flagged" in local[archive]["<m2@example.org>"]
        assert [list(local[n]) for n in local if "Spam" in n or "Junk" in n] == [
            ["<m5@example.org>"]
        ]
        assert [list(local[n]) for n in local if "Trash" in n] == [["<m6@example.org>"]]
        # One download per message, however many labels it has.
        assert all(gmail.body_downloads[m.msgid] == 1 for m in (several, spam, trash))
        # Nothing to do on a rerun: the labels are not taken for changes.
        gmail.log.clear()
        mailsync(tmp_path / "state", "sync", keywords_url(gmail), tmp_path / "m", gmail=gmail)
        assert not writes(gmail)


def test_label_changes_are_keyword_changes_both_ways(tmp_path):
    state, root = tmp_path / "state", tmp_path / "m"
    with FakeGmail() as gmail:
        one = gmail.deliver(mail(1), labels=(INBOX, "Work"))
        two = gmail.deliver(mail(2), labels=(INBOX,))
        mailsync(state, "sync", keywords_url(gmail), root, gmail=gmail)
        archive = the_archive(local_messages(root))

        # Gmail -> local: a label added, \Inbox taken away (archived).
        with gmail.lock:
            gmail._add_labels(one, ["Réunions 2024"])
            gmail._changed(one)
            gmail._remove_labels(two, [INBOX])
            gmail._changed(two)
        mailsync(state, "sync", keywords_url(gmail), root, gmail=gmail)
        local = local_messages(root)[archive]
        assert labels_from(local["<m1@example.org>"]) == {"\\Inbox", "Work", "Réunions 2024"}
        assert labels_from(local["<m2@example.org>"]) == set()

        # local -> Gmail: keywords added and removed by a mail reader.
        store = open_store(f"maildir:{root}")
        folder = store.open_folder(archive)
        keys = {header_value(folder.fetch(k), "Message-ID"): k for k in folder.list()}
        folder.set_flags(
            keys["<m1@example.org>"],
            frozenset({label_keyword("My Label/Sub ü")}),
            frozenset({"Work"}),
        )
        folder.set_flags(keys["<m2@example.org>"], frozenset({"$Inbox", "$Important"}), frozenset())
        folder.close()
        gmail.log.clear()
        mailsync(state, "sync", keywords_url(gmail), root, gmail=gmail)
        assert gmail_labels(gmail, one.msgid) == {"\\Inbox", "Réunions 2024", "My Label/Sub ü"}
        assert gmail_labels(gmail, two.msgid) == {"\\Inbox", "\\Important"}
        stores = [
            c for c in gmail.commands() if "X-GM-LABELS" in c.upper() and "STORE" in c.upper()
        ]
        assert stores and not appends(gmail)
        assert len(gmail.messages) == 2


def test_restoring_a_keywords_backup_into_an_empty_gmail_recreates_the_labels(tmp_path):
    root = tmp_path / "m"
    with FakeGmail() as old:
        delivered = [
            old.deliver(mail(1), labels=(INBOX, "Work", "My Label/Sub ü"), flags=(SEEN,)),
            old.deliver(mail(2), labels=(SENT, "日本"), flags=(SEEN, FLAGGED)),
            old.deliver(mail(3), labels=()),
            old.deliver(mail(4), labels=(INBOX, IMPORTANT, "$money")),
            old.deliver(mail(5), labels=("\\Spam",)),
            old.deliver(mail(6), labels=("\\Trash",)),
        ]
        wanted = {
            m.header("Message-ID"): (gmail_labels(old, m.msgid), set(m.flags)) for m in delivered
        }
        mailsync(tmp_path / "s1", "pull", keywords_url(old), root, gmail=old)
    with FakeGmail() as new:
        mailsync(tmp_path / "s2", "push", root, keywords_url(new), gmail=new)
        restored = by_message_id(new)
        assert {k: len(v) for k, v in restored.items()} == {k: 1 for k in wanted}
        for message_id, (labels, flags) in wanted.items():
            msg = restored[message_id][0]
            assert gmail_labels(new, msg.msgid) == labels, message_id
            assert msg.flags == flags, message_id
        assert len(appends(new)) == len(wanted)  # one upload each, the labels by STORE
        label_stores = [c for c in new.commands() if "+X-GM-LABELS" in c.upper()]
        assert label_stores and all('"\\' not in c for c in label_stores)  # \Inbox: an atom
        # (Spam and Trash, which All Mail does not show, back into their own folders)
        uploaded_to = {line.split('"')[1] for line in appends(new)}
        assert uploaded_to == {"[Gmail]/All Mail", "[Gmail]/Spam", "[Gmail]/Trash"}


# -- pushing a folders tree: one APPEND per message ---------------------------------------


def folders_tree(root: Path) -> None:
    """A local tree (as a folders-mode backup or another server has it): message 1 in
    three folders, message 2 in two (flagged in the second), message 3 in one."""
    for folder in ("INBOX", "Work", "Projects/2024"):
        write_local(root, folder, mail(1).replace(b"\r\n", b"\n"), "S")
    write_local(root, "INBOX", mail(2).replace(b"\r\n", b"\n"))
    write_local(root, "Work", mail(2).replace(b"\r\n", b"\n"), "F")  # flagged there only
    write_local(root, "Projects/2024", mail(3).replace(b"\r\n", b"\n"), "F")


FOLDERS_WANTED = {
    "<m1@example.org>": {"\\Inbox", "Work", "Projects/2024"},
    "<m2@example.org>": {"\\Inbox", "Work"},
    "<m3@example.org>": {"Projects/2024"},
}


def assert_pushed(gmail: FakeGmail) -> None:
    """Each message once in Gmail, with every label of the local folders it is in."""
    pushed = by_message_id(gmail)
    assert {k: len(v) for k, v in pushed.items()} == {k: 1 for k in FOLDERS_WANTED}
    for message_id, labels in FOLDERS_WANTED.items():
        assert gmail.labels_of(pushed[message_id][0].msgid) - {STARRED} == labels, message_id
    assert SEEN in pushed["<m1@example.org>"][0].flags
    assert FLAGGED in pushed["<m3@example.org>"][0].flags
    assert FLAGGED in pushed["<m2@example.org>"][0].flags  # (flags are per message at Gmail)


def assert_nothing_left_to_do(gmail: FakeGmail, state: Path, root: Path) -> None:
    """A rerun sends nothing: the state records every copy, in every folder."""
    gmail.log.clear()
    done = run_process(
        "push", root, gmail.url(), "--jobs", "1", password=gmail.password, state=state
    )
    assert done.returncode == 0, done.stderr
    assert not writes(gmail)


def test_pushing_a_message_in_three_folders_uploads_it_once(tmp_path):
    root, state = tmp_path / "m", tmp_path / "state"
    folders_tree(root)
    with FakeGmail(dedupe_appends=False) as gmail:  # (Gmail's own dedupe would hide a 2nd)
        # (--jobs 4, the default: workers pushing one message to two folders take turns)
        done = run_process("push", root, gmail.url(), password=gmail.password, state=state)
        assert done.returncode == 0, done.stderr
        assert_pushed(gmail)
        assert len(appends(gmail)) == len(FOLDERS_WANTED)
        assert any("+X-GM-LABELS" in c.upper() for c in gmail.commands())
        assert_nothing_left_to_do(gmail, state, root)


def test_a_push_killed_at_any_step_leaves_each_message_once_with_all_its_labels(tmp_path):
    for crash_at in range(1, 80):
        root, state = tmp_path / f"m{crash_at}", tmp_path / f"state{crash_at}"
        folders_tree(root)
        with FakeGmail(dedupe_appends=False) as gmail:
            args = ("push", root, gmail.url(), "--jobs", "1")
            killed = run_process(*args, password=gmail.password, state=state, crash_at=crash_at)
            assert killed.returncode in (0, 137), killed.stderr
            if killed.returncode == 0:
                assert crash_at > 1  # the crash hook did stop earlier runs
                break
            rerun = run_process(*args, password=gmail.password, state=state)
            assert rerun.returncode == 0, f"step {crash_at}: {rerun.stderr}"
            assert_pushed(gmail)
            assert len(appends(gmail)) == len(FOLDERS_WANTED), f"step {crash_at}"
            assert_nothing_left_to_do(gmail, state, root)
    else:
        pytest.fail("the push never finished without reaching a crash step")


def test_a_keywords_restore_killed_between_append_and_labels_finishes_the_labels(tmp_path):
    root = tmp_path / "m"
    with FakeGmail() as old:
        first = old.deliver(mail(1), labels=(INBOX, "Work", "My Label/Sub ü"))
        second = old.deliver(mail(2), labels=("日本",))
        wanted = {m.header("Message-ID"): gmail_labels(old, m.msgid) for m in (first, second)}
        mailsync(tmp_path / "s1", "pull", keywords_url(old), root, gmail=old)
    for crash_at in range(1, 40):
        state = tmp_path / f"s{crash_at}"
        with FakeGmail() as new:
            args = ("push", root, keywords_url(new), "--jobs", "1")
            killed = run_process(*args, password=new.password, state=state, crash_at=crash_at)
            assert killed.returncode in (0, 137), killed.stderr
            if killed.returncode == 0:
                break
            rerun = run_process(*args, password=new.password, state=state)
            assert rerun.returncode == 0, f"step {crash_at}: {rerun.stderr}"
            restored = by_message_id(new)
            assert {k: len(v) for k, v in restored.items()} == {k: 1 for k in wanted}
            for message_id, labels in wanted.items():
                assert gmail_labels(new, restored[message_id][0].msgid) == labels, crash_at
            assert len(appends(new)) == len(wanted), f"step {crash_at}"
    else:
        pytest.fail("the restore never finished without reaching a crash step")


def test_a_second_local_copy_in_one_folder_is_refused_not_paired_twice(tmp_path):
    """Gmail keeps one copy of a message per account: a local folder holding a message
    twice cannot be pushed as it is.  The second copy is refused (named, exit 1, not
    offered again), never paired with the first copy's message at Gmail (a later
    deletion of one local copy would then delete the other's)."""
    root, state = tmp_path / "m", tmp_path / "state"
    write_local(root, "INBOX", mail(1).replace(b"\r\n", b"\n"), "S")
    write_local(root, "INBOX", mail(1).replace(b"\r\n", b"\n"), "S")
    write_local(root, "INBOX", mail(2).replace(b"\r\n", b"\n"))
    with FakeGmail() as gmail:
        args = ("push", root, gmail.url(), "--jobs", "1")
        done = run_process(*args, password=gmail.password, state=state)
        assert done.returncode == 1, done.stderr
        assert "Gmail keeps one copy" in done.stderr
        assert sorted(by_message_id(gmail)) == ["<m1@example.org>", "<m2@example.org>"]
        assert len(appends(gmail)) == 2
        again = run_process(*args, password=gmail.password, state=state)
        assert again.returncode == 0, again.stderr
        assert "refused for good" in again.stderr
        keys = sqlite_keys(state)
        assert len(keys) == len(set(keys)) == 2  # each Gmail message paired once


def test_a_message_deleted_locally_in_keywords_mode_goes_to_gmails_trash(tmp_path):
    """An EXPUNGE in All Mail deletes nothing at Gmail (it archives, by default): a local
    deletion becomes the \\Trash label, so the message leaves All Mail for good and the
    next run does not bring it back."""
    state, root = tmp_path / "state", tmp_path / "m"
    with FakeGmail() as gmail:
        gone = gmail.deliver(mail(1), labels=(INBOX, "Work"))
        gmail.deliver(mail(2), labels=(INBOX,))
        mailsync(state, "sync", keywords_url(gmail), root, gmail=gmail)
        archive = the_archive(local_messages(root))
        folder = open_store(f"maildir:{root}").open_folder(archive)
        key = next(k for k in folder.list() if b"<m1@" in folder.fetch(k))
        folder.delete(key)
        folder.close()
        mailsync(state, "sync", keywords_url(gmail), root, gmail=gmail)
        assert gmail.labels_of(gone.msgid) == {"\\Trash"}
        mailsync(state, "sync", keywords_url(gmail), root, gmail=gmail)
        local = local_messages(root)
        assert list(local[archive]) == ["<m2@example.org>"]
        assert [list(local[n]) for n in local if "Trash" in n] == [["<m1@example.org>"]]
        assert len(gmail.messages) == 2


def test_a_message_deleted_locally_from_all_mail_in_folders_mode_goes_to_trash(tmp_path):
    """The same in folders mode: deleted from the local Archive (All Mail), a message gets
    the \\Trash label (an EXPUNGE would only archive it, and the next run would copy it
    back into Archive); a deletion in a label's folder only takes that label away."""
    state, root = tmp_path / "state", tmp_path / "m"
    with FakeGmail() as gmail:
        gone = gmail.deliver(mail(1), labels=("Work",))
        kept = gmail.deliver(mail(2), labels=(INBOX, "Work"))
        gmail.deliver(mail(3), labels=("Work",))  # (so Work is not emptied: a safety stop)
        url = gmail.url(query="tls=none")
        mailsync(state, "sync", url, root, gmail=gmail)
        for name, wanted in (("Archive", b"<m1@"), ("Work", b"<m2@")):
            folder = open_store(f"maildir:{root}").open_folder(name)
            folder.delete(next(k for k in folder.list() if wanted in folder.fetch(k)))
            folder.close()
        mailsync(state, "sync", url, root, gmail=gmail)
        assert gmail.labels_of(gone.msgid) == {"\\Trash"}
        assert gmail.labels_of(kept.msgid) == {"\\Inbox"}
        mailsync(state, "sync", url, root, gmail=gmail)
        local = local_messages(root)
        assert sorted(local["Archive"]) == ["<m2@example.org>", "<m3@example.org>"]
        assert list(local["Trash"]) == ["<m1@example.org>"]
        assert list(local["Work"]) == ["<m3@example.org>"]
        assert len(gmail.messages) == 3


def test_gmail_labels_takes_folders_or_keywords_and_needs_all_mail(tmp_path):
    with FakeGmail(show_all_mail=False) as gmail:
        bad = run(
            "--state-dir",
            tmp_path / "s",
            "pull",
            gmail.url(query="tls=none&gmail_labels=labels"),
            tmp_path / "m",
            password=gmail.password,
        )
        assert bad.exit_code == 2
        assert "gmail_labels must be one of folders, keywords" in bad.output
        hidden = run(
            "--state-dir",
            tmp_path / "s",
            "pull",
            keywords_url(gmail),
            tmp_path / "m",
            password=gmail.password,
        )
        assert hidden.exit_code == 2, hidden.output
        assert "'Show in IMAP' for All Mail" in hidden.output
        assert not (tmp_path / "m").exists() or not list((tmp_path / "m").rglob("cur"))


def test_switching_an_existing_backup_to_keywords_mode_brings_the_labels(tmp_path):
    """A folders-mode backup switched to keywords: All Mail is listed again in full (its
    cursor was taken in the other mode), though nothing changed at Gmail."""
    state, root = tmp_path / "state", tmp_path / "m"
    with FakeGmail() as gmail:
        msg = gmail.deliver(mail(1), labels=(INBOX, "Work", "My Label/Sub ü"))
        mailsync(state, "pull", gmail.url(), root, gmail=gmail)
        before, downloads = local_messages(root), gmail.body_downloads[msg.msgid]
        mailsync(state, "pull", keywords_url(gmail), root, gmail=gmail)
        local = local_messages(root)
        archive = next(n for n in local if "All Mail" in n or n == "Archive")
        assert labels_from(before[archive]["<m1@example.org>"]) == set()
        assert labels_from(local[archive]["<m1@example.org>"]) == gmail_labels(gmail, msg.msgid)
        assert gmail.body_downloads[msg.msgid] == downloads  # nothing downloaded again

"""Unchanged folders are not listed again: the state stands in for them."""

from __future__ import annotations

import os

from mailsync.policy import Policy
from mailsync.state import State
from mailsync.stores import open_store
from mailsync.stores.maildir import MaildirFolder
from mailsync.sync import Syncer


def backdate(root) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.utime(os.path.join(dirpath, name), (1_600_000_000, 1_600_000_000))


PULL = Policy("pull", "keep")


def pull(tmp_path, policy=PULL):
    src = open_store(f"maildir:{tmp_path / 'src'}", read_only=True)
    dst = open_store(f"mbox:{tmp_path / 'dst'}")
    with State(str(tmp_path / "state.db")) as state:
        return Syncer(src, dst, state, policy).run()


def test_unchanged_maildir_is_not_listed_and_a_change_is_seen(tmp_path, monkeypatch):
    with open_store(f"maildir:{tmp_path / 'src'}") as store:
        inbox = store.open_folder("INBOX", create=True)
        for i in range(3):
            inbox.append(b"Subject: %d\n\nbody\n" % i, frozenset(), 1_700_000_000)
        inbox.flush()
    backdate(tmp_path / "src")
    assert pull(tmp_path).folders[0].copied_a_to_b == 3

    listed = []
    real_list = MaildirFolder.list

    def spy(self):
        listed.append(self.name)
        return real_list(self)

    monkeypatch.setattr(MaildirFolder, "list", spy)
    report = pull(tmp_path)
    assert listed == [] and report.folders[0].copied_a_to_b == 0

    # a new message changes the directory's mtime: listed again and copied
    with open_store(f"maildir:{tmp_path / 'src'}") as store:
        store.open_folder("INBOX").append(b"Subject: new\n\nbody\n", frozenset(), 1_700_000_000)
    report = pull(tmp_path)
    assert listed == ["INBOX"] and report.folders[0].copied_a_to_b == 1


def test_a_failed_message_keeps_the_folder_listed_until_it_is_copied(tmp_path, monkeypatch):
    with open_store(f"maildir:{tmp_path / 'src'}") as store:
        inbox = store.open_folder("INBOX", create=True)
        for i in range(2):
            inbox.append(b"Subject: %d\n\nbody\n" % i, frozenset(), 1_700_000_000)
    backdate(tmp_path / "src")
    real_fetch = MaildirFolder.fetch
    from mailsync.errors import MessageError

    def failing(self, key):
        raise MessageError("unreadable")

    monkeypatch.setattr(MaildirFolder, "fetch", failing)
    report = pull(tmp_path)
    assert len(report.folders[0].errors) == 2
    monkeypatch.setattr(MaildirFolder, "fetch", real_fetch)
    report = pull(tmp_path)  # the folder is unchanged, but the last run was not clean
    assert report.folders[0].copied_a_to_b == 2


def test_a_folder_written_by_this_run_alone_is_not_listed_next_time(tmp_path, monkeypatch):
    from mailsync.stores.memory import MemoryStore

    src = MemoryStore("src-cursor")
    for i in range(3):
        src.folder("INBOX").add(b"Subject: %d\n\nbody\n" % i)
    dst_url = f"maildir:{tmp_path / 'dst'}"

    def run():
        with State(str(tmp_path / "state.db")) as state:
            dst = open_store(dst_url)
            report = Syncer(src, dst, state, PULL).run()
            dst.close()
            return report

    assert run().folders[0].copied_a_to_b == 3
    listed = []
    real_list = MaildirFolder.list

    def spy(self):
        listed.append(self.name)
        return real_list(self)

    monkeypatch.setattr(MaildirFolder, "list", spy)
    assert run().folders[0].copied_a_to_b == 0
    assert listed == []  # the destination was vouched for after the first run's writes

    # A mail reader delivering into the destination during a run: no cursor is saved.
    real_append = MaildirFolder.append

    def append_and_deliver(self, data, flags, arrival):
        key = real_append(self, data, flags, arrival)
        with open(os.path.join(self.path, "new", "1.foreign.host"), "wb") as handle:
            handle.write(b"Subject: foreign\n\nhello\n")
        return key

    monkeypatch.setattr(MaildirFolder, "append", append_and_deliver)
    src.folder("INBOX").add(b"Subject: new\n\nbody\n")
    assert run().folders[0].copied_a_to_b == 1
    listed.clear()
    monkeypatch.setattr(MaildirFolder, "append", real_append)
    run()
    assert listed == ["INBOX"]  # listed again: the foreign message was seen


def test_a_folder_unchanged_on_both_sides_is_skipped_without_loading_pairs(tmp_path, monkeypatch):
    with open_store(f"maildir:{tmp_path / 'src'}") as store:
        inbox = store.open_folder("INBOX", create=True)
        for i in range(3):
            inbox.append(b"Subject: %d\n\nbody\n" % i, frozenset(), 1_700_000_000)
    backdate(tmp_path / "src")

    def run(policy=PULL):
        with State(str(tmp_path / "state.db")) as state:
            src = open_store(f"maildir:{tmp_path / 'src'}", read_only=True)
            dst = open_store(f"maildir:{tmp_path / 'dst'}")
            report = Syncer(src, dst, state, policy).run()
            dst.close()
            return report

    assert run().folders[0].copied_a_to_b == 3
    loaded = []
    real_pairs = State.pairs

    def spy(self, folder_id):
        loaded.append(folder_id)
        return real_pairs(self, folder_id)

    monkeypatch.setattr(State, "pairs", spy)
    run()
    assert loaded == []
    run(Policy("pull", "propagate"))  # another policy: planned again
    assert loaded != []

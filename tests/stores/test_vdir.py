"""vdir folders (calendars and address books from Exchange) inside a Maildir tree."""

from __future__ import annotations

import os

import pytest

from mailsync.errors import FolderError, MessageError
from mailsync.stores.maildir import MaildirStore
from mailsync.stores.mbox import MboxStore
from mailsync.stores.vdir import MARKER

ICS = b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:1@x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"


def test_vdir_round_trip_inside_a_maildir_tree(tmp_path):
    store = MaildirStore(str(tmp_path / "Mail"))
    store.open_folder("INBOX", create=True)
    cal = store.open_folder("Calendar", create=True, kind="calendar")
    key = cal.append(ICS, frozenset({"\\Seen"}), 1_600_000_000)
    cal.flush()
    assert key.endswith(".ics")
    path = tmp_path / "Mail" / "Calendar" / key
    assert path.read_bytes() == ICS.replace(b"\r\n", b"\n")
    assert path.stat().st_mtime == 1_600_000_000
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "Mail" / "Calendar" / MARKER).read_text().strip() == "calendar"
    assert cal.list() == {key: cal.list()[key]} and cal.list()[key].flags == frozenset()
    assert cal.fetch(key) == ICS.replace(b"\r\n", b"\n")
    # Listed with the mail folders, reopened as a vdir, told apart by its kind.
    again = MaildirStore(str(tmp_path / "Mail"))
    assert again.list_folders() == ["Calendar", "INBOX"]
    assert again.folder_kinds() == {"Calendar": "calendar"}
    assert set(again.open_folder("Calendar").list()) == {key}
    cal.delete(key)
    cal.flush()
    assert cal.list() == {}
    with pytest.raises(MessageError):
        cal.fetch(key)


def test_a_mail_folder_is_not_turned_into_a_vdir(tmp_path):
    store = MaildirStore(str(tmp_path / "Mail"))
    store.open_folder("Calendar", create=True)
    with pytest.raises(FolderError, match="is a mail folder"):
        store.open_folder("Calendar", create=True, kind="calendar")


def test_only_maildir_trees_hold_calendars(tmp_path):
    with pytest.raises(FolderError, match="cannot hold calendar items"):
        MboxStore(str(tmp_path / "mbox")).open_folder("Calendar", create=True, kind="calendar")
    store = MaildirStore(str(tmp_path / "pp"), layout="maildir++")
    with pytest.raises(FolderError, match="layout=verbatim"):
        store.open_folder("Contacts", create=True, kind="contacts")


@pytest.mark.parametrize("umask", [0, 0o277])
def test_private_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = MaildirStore(str(tmp_path / "Mail"))
        folder = store.open_folder("Contacts", create=True, kind="contacts")
        key = folder.append(b"BEGIN:VCARD\nEND:VCARD\n", frozenset(), 0)
    finally:
        os.umask(old)
    assert (tmp_path / "Mail" / "Contacts").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "Mail" / "Contacts" / key).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "Mail" / "Contacts" / MARKER).stat().st_mode & 0o777 == 0o600

"""Store.rename_folder (stores/base.py) on the local stores that can rename: Maildir in
both layouts (vdirs included) and mbox.  A folder moves with every folder below it, its
messages keep their keys, bytes and flags; a refusal (RenameRefused) changes nothing;
a move cut short by a crash is completed by calling it again."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from mailsync.errors import RenameRefused
from mailsync.message import SEEN
from mailsync.stores import open_store
from mailsync.stores.memory import MemoryStore
from mailsync.stores.vdir import make_vdir

KINDS = {
    "maildir": "maildir:{root}",
    "maildirpp": "maildir:{root}?layout=maildir++",
    "mbox": "mbox:{root}",
}
TREE = {
    "INBOX": [b"Subject: inbox\n\none\n"],
    "Old": [b"Subject: old 1\n\nFrom here\n", b"Subject: old 2\n\ntwo\n"],
    "Old/Kid": [b"Subject: kid\n\nthree\n"],
    "Old/Kid/Baby": [b"Subject: baby\n\nfour\n"],
    "Oldies": [b"Subject: not below Old\n\nfive\n"],
}


def build(url: str) -> dict[str, dict[str, bytes]]:
    """The TREE in a store; returns folder -> key -> body (the first message \\Seen)."""
    out = {}
    with open_store(url) as store:
        for name, bodies in TREE.items():
            box = store.open_folder(name, create=True)
            keys = [
                box.append(data, frozenset({SEEN}) if i == 0 else frozenset(), 1_600_000_000)
                for i, data in enumerate(bodies)
            ]
            box.close()
            out[name] = dict(zip(keys, bodies, strict=True))
    return out


def read(url: str) -> dict[str, dict[str, tuple[bytes, frozenset]]]:
    """folder -> key -> (body, flags)."""
    with open_store(url, read_only=True) as store:
        out = {}
        for name in store.list_folders():
            box = store.open_folder(name)
            out[name] = {k: (box.fetch(k), info.flags) for k, info in box.list().items()}
            box.close()
        return out


@pytest.fixture(params=list(KINDS))
def url(request, tmp_path):
    return KINDS[request.param].format(root=tmp_path / "mail")


def renamed(before: dict, old: str, new: str) -> dict:
    out = {}
    for name, messages in before.items():
        if name == old or name.startswith(old + "/"):
            name = new + name[len(old) :]
        out[name] = messages
    return out


def test_rename_moves_the_folder_and_those_below_it(url):
    build(url)
    before = read(url)
    with open_store(url) as store:
        assert store.can_rename
        store.rename_folder("Old", "New/Name")
    assert read(url) == renamed(before, "Old", "New/Name")
    with open_store(url) as store:
        store.rename_folder("Old", "New/Name")  # done already: nothing happens
    assert read(url) == renamed(before, "Old", "New/Name")


def test_rename_out_of_inbox(url):
    """The namespace upgrade: INBOX/Sent (below INBOX) becomes Sent."""
    with open_store(url) as store:
        for name in ("INBOX", "INBOX/Sent", "INBOX/Sent/2019"):
            box = store.open_folder(name, create=True)
            box.append(f"Subject: {name}\n\nbody\n".encode(), frozenset(), 1_600_000_000)
            box.close()
    before = read(url)
    with open_store(url) as store:
        store.rename_folder("INBOX/Sent", "Sent")
    assert read(url) == renamed(before, "INBOX/Sent", "Sent")


@pytest.mark.parametrize("taken", ["New", "New/Kid"])
def test_a_taken_name_is_refused_and_nothing_moves(url, taken):
    build(url)
    with open_store(url) as store:
        store.open_folder(taken, create=True).close()
    before = read(url)
    with open_store(url) as store, pytest.raises(RenameRefused, match="exists; move it away"):
        store.rename_folder("Old", "New")
    assert read(url) == before


def test_a_folder_cannot_move_into_itself(url):
    build(url)
    before = read(url)
    with open_store(url) as store, pytest.raises(RenameRefused, match="into itself"):
        store.rename_folder("Old", "Old/Kid/New")
    assert read(url) == before


def test_a_read_only_store_refuses(url):
    build(url)
    with open_store(url, read_only=True) as store, pytest.raises(RenameRefused):
        store.rename_folder("Old", "New")


def test_the_memory_store_cannot_rename():
    store = MemoryStore()
    assert not store.can_rename
    with pytest.raises(RenameRefused, match="cannot rename folders"):
        store.rename_folder("A", "B")


def test_maildir_plus_plus_names_with_dots_are_refused(tmp_path):
    url = KINDS["maildirpp"].format(root=tmp_path / "mail")
    build(url)
    with open_store(url) as store, pytest.raises(RenameRefused, match="contains '.'"):
        store.rename_folder("Old", "New v1.2")
    assert "Old" in read(url)


def test_maildir_plus_plus_move_cut_short_is_completed(tmp_path):
    """A crash after the first sibling moved: .Old.Kid.Baby is at its new name, the
    others are not.  Calling again moves the rest."""
    root = tmp_path / "mail"
    url = KINDS["maildirpp"].format(root=root)
    build(url)
    before = read(url)
    (root / ".Old.Kid.Baby").rename(root / ".New.Kid.Baby")
    with open_store(url) as store:
        store.rename_folder("Old", "New")
    assert read(url) == renamed(before, "Old", "New")
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [
        ".New",
        ".New.Kid",
        ".New.Kid.Baby",
        ".Oldies",
    ]


def test_mbox_move_cut_short_is_completed(tmp_path):
    """A crash after the subfolder directory moved, before the file did."""
    root = tmp_path / "mail"
    url = KINDS["mbox"].format(root=root)
    build(url)
    before = read(url)
    (root / "Old.sbd").rename(root / "New.sbd")
    with open_store(url) as store:
        store.rename_folder("Old", "New")
    assert read(url) == renamed(before, "Old", "New")
    assert not (root / "Old").exists() and not (root / "Old.sbd").exists()


def test_mbox_repairs_an_interrupted_append_before_moving(tmp_path):
    """A crashed append's journal is applied (the torn tail cut) under the old name,
    not left behind for a file that has gone."""
    root = tmp_path / "mail"
    url = KINDS["mbox"].format(root=root)
    build(url)
    before = read(url)
    size = (root / "Old").stat().st_size
    (root / ".Old.mailsync-journal").write_text(f"{size} {(root / 'Old').stat().st_ino}\n")
    with open(root / "Old", "ab") as f:
        f.write(b"From torn\nSubject: half a messa")
    with open_store(url) as store:
        store.rename_folder("Old", "New")
    assert read(url) == renamed(before, "Old", "New")
    assert sorted(p.name for p in root.iterdir()) == ["INBOX", "New", "New.sbd", "Oldies"]


def test_mbox_rename_out_of_a_mutt_style_directory(tmp_path):
    """Reading accepts plain directories (lists/foo); a rename to a new parent makes a
    .sbd directory, and the directory left empty goes."""
    root = tmp_path / "mail"
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "foo").write_bytes(b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\ny\n\n")
    url = f"mbox:{root}"
    before = read(url)
    with open_store(url) as store:
        store.rename_folder("lists/foo", "archive/foo")
    assert read(url) == renamed(before, "lists/foo", "archive/foo")
    assert (root / "archive.sbd" / "foo").is_file() and not (root / "lists").exists()


def test_verbatim_rename_takes_vdirs_along_and_removes_empty_parents(tmp_path):
    root = tmp_path / "mail"
    url = KINDS["maildir"].format(root=root)
    with open_store(url) as store:
        box = store.open_folder("A/B/Mail", create=True)
        box.append(b"Subject: m\n\nx\n", frozenset(), 1_600_000_000)
        box.close()
    make_vdir(str(root / "A" / "B" / "Mail" / "Calendar"), "calendar")
    (root / "A" / "B" / "Mail" / "Calendar" / "e.ics").write_bytes(b"BEGIN:VCALENDAR\n")
    with open_store(url) as store:
        store.rename_folder("A/B/Mail", "Mail")
        assert store.folder_kinds() == {"Mail/Calendar": "calendar"}
    assert (root / "Mail" / "Calendar" / "e.ics").read_bytes() == b"BEGIN:VCALENDAR\n"
    assert not (root / "A").exists()  # A/B held nothing else
    assert Counter(read(url)["Mail"].values()) == Counter([(b"Subject: m\n\nx\n", frozenset())])


def test_new_directories_are_private_whatever_the_umask(url, tmp_path):
    build(url)
    old = os.umask(0o022)
    try:
        with open_store(url) as store:
            store.rename_folder("Old", "Deep/Er/New")
    finally:
        os.umask(old)
    root = tmp_path / "mail"
    made = [p for p in root.rglob("*") if p.is_dir() and p.name.startswith(("Deep", ".Deep"))]
    assert made and all(p.stat().st_mode & 0o777 == 0o700 for p in made)


def test_vdir_folder_keeps_its_items(tmp_path):
    root = tmp_path / "mail"
    url = KINDS["maildir"].format(root=root)
    with open_store(url) as store:
        cal = store.open_folder("Calendar/Team", create=True, kind="calendar")
        key = cal.append(b"BEGIN:VCALENDAR\nEND:VCALENDAR\n", frozenset(), 1_600_000_000)
        cal.close()
        store.rename_folder("Calendar/Team", "Calendar/Crew")
    with open_store(url) as store:
        assert store.folder_kinds() == {"Calendar/Crew": "calendar"}
        assert store.open_folder("Calendar/Crew").fetch(key) == b"BEGIN:VCALENDAR\nEND:VCALENDAR\n"
    assert not Path(root / "Calendar" / "Team").exists()

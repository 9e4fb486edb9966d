"""Maildir store: layouts, names, flags, durability, modes and mail-reader races."""

from __future__ import annotations

import errno
import mailbox
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from mailsync import files as filesmod
from mailsync.errors import ConfigError, FolderError, MessageError
from mailsync.message import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    FORWARDED,
    RECENT,
    SEEN,
    STANDARD_FLAGS,
)
from mailsync.stores import maildir_folder as md
from mailsync.stores import maildir_keywords, open_store
from mailsync.stores.maildir import MaildirStore

MSG = b"From: a@example.org\nSubject: hi\n\nbody\n"
ARRIVAL = 1_500_000_000.0
NEW = frozenset({RECENT})  # append() puts a message with just this into new/


def files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def make_maildir(path) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)


def put(path, sub: str, filename: str, data: bytes = MSG, mtime: float = ARRIVAL) -> str:
    full = os.path.join(path, sub, filename)
    with open(full, "wb") as f:
        f.write(data)
    os.utime(full, (mtime, mtime))
    return full


@pytest.fixture
def store(tmp_path):
    return MaildirStore(str(tmp_path / "Mail"))


@pytest.fixture
def inbox(store):
    return store.open_folder("INBOX", create=True)


# -- layouts and folder names ----------------------------------------------------------


def test_verbatim_layout_paths(tmp_path):
    root = tmp_path / "Mail"
    store = MaildirStore(str(root))
    store.open_folder("INBOX", create=True)
    store.open_folder("Archive/2019", create=True)
    for folder in (root / "INBOX", root / "Archive" / "2019"):
        assert files(folder) == ["cur", "new", "tmp"]
    assert not (root / "cur").exists()
    assert not (root / "Archive" / "cur").exists()  # the parent is not itself a folder
    assert store.list_folders() == ["Archive/2019", "INBOX"]


def test_maildirpp_layout_paths(tmp_path):
    root = tmp_path / "Mail"
    store = MaildirStore(str(root), layout="maildir++")
    store.open_folder("INBOX", create=True)
    store.open_folder("Archive/2019", create=True)
    store.open_folder("Sent", create=True)
    assert files(root) == [".Archive.2019", ".Sent", "cur", "new", "tmp"]
    assert files(root / ".Archive.2019") == ["cur", "new", "tmp"]
    assert store.list_folders() == ["Archive/2019", "INBOX", "Sent"]


def test_maildirpp_refuses_dots(tmp_path):
    store = MaildirStore(str(tmp_path / "Mail"), layout="maildir++")
    with pytest.raises(FolderError, match="maildir\\+\\+"):
        store.open_folder("v1.2", create=True)
    assert not (tmp_path / "Mail").exists()


def test_maildirpp_skips_unmappable_dirs(tmp_path):
    root = tmp_path / "Mail"
    for name in (".a..b", ".INBOX", ".ok", ".trailing."):
        make_maildir(root / name)
    assert MaildirStore(str(root), layout="maildir++").list_folders() == ["ok"]


def test_unknown_layout_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="verbatim.*maildir\\+\\+"):
        MaildirStore(str(tmp_path), layout="fs")


def test_open_store_passes_layout(tmp_path):
    store = open_store(f"maildir:{tmp_path}?layout=maildir++")
    assert isinstance(store, MaildirStore) and store.layout == "maildir++"
    store.open_folder("INBOX", create=True)
    assert (tmp_path / "cur").is_dir()


BAD_NAMES = [
    "",
    "/etc",
    "a//b",
    "a/",
    "..",
    "../x",
    "a/../../x",
    ".",
    "a/./b",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "a\tb",
]


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_folder_names_refused(tmp_path, layout, name):
    root = tmp_path / "root" / "Mail"
    store = MaildirStore(str(root), layout=layout)
    with pytest.raises(FolderError):
        store.open_folder(name, create=True)
    assert os.listdir(tmp_path) == []  # nothing was created, inside the root or out


@pytest.mark.parametrize("name", ["cur", "a/new", "tmp/x"])
def test_verbatim_refuses_reserved_parts(tmp_path, name):
    store = MaildirStore(str(tmp_path / "Mail"))
    with pytest.raises(FolderError, match="cur, new or tmp"):
        store.open_folder(name, create=True)


def test_nested_folders_listed(tmp_path):
    root = tmp_path / "Mail"
    store = MaildirStore(str(root))
    for name in ["INBOX", "INBOX/Sub", "Lists/python/dev", "Lists/rust", "Zed"]:
        store.open_folder(name, create=True)
    (root / "NotAFolder" / "cur").mkdir(parents=True)  # no new/: not a folder
    (root / "Lists" / "python" / "dev" / "cur" / "junkdir").mkdir()  # never walked
    (root / "Lists" / "plainfile").write_bytes(b"x")
    assert store.list_folders() == [
        "INBOX",
        "INBOX/Sub",
        "Lists/python/dev",
        "Lists/rust",
        "Zed",
    ]


def test_symlink_loop_does_not_hang(tmp_path):
    root = tmp_path / "Mail"
    store = MaildirStore(str(root))
    store.open_folder("A", create=True)
    os.symlink(root / "A", root / "A" / "loop")
    names = store.list_folders()
    assert "A" in names and len(names) <= 2


def test_missing_root_lists_nothing(tmp_path):
    assert MaildirStore(str(tmp_path / "nope")).list_folders() == []
    assert MaildirStore(str(tmp_path / "nope"), layout="maildir++").list_folders() == []


def test_open_missing_folder_without_create(store):
    with pytest.raises(FolderError, match="no folder"):
        store.open_folder("INBOX")


# -- flags ----------------------------------------------------------------------------

LETTERS = [
    (DRAFT, "D"),
    (FLAGGED, "F"),
    (FORWARDED, "P"),
    (ANSWERED, "R"),
    (SEEN, "S"),
    (DELETED, "T"),
]


@pytest.mark.parametrize(("flag", "letter"), LETTERS)
def test_flag_written_as_letter(inbox, flag, letter):
    key = inbox.append(MSG, frozenset({flag}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,{letter}"]
    assert files(os.path.join(inbox.path, "new")) == []


@pytest.mark.parametrize(("flag", "letter"), LETTERS)
def test_letter_read_as_flag(inbox, flag, letter):
    put(inbox.path, "cur", f"123.M1P1.host:2,{letter}")
    assert inbox.list()["123.M1P1.host"].flags == {flag}


def test_all_flags_sorted_letters(inbox):
    key = inbox.append(MSG, STANDARD_FLAGS | {"work", "$Label1"}, ARRIVAL)
    inbox.flush()  # appends are durable after flush
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,DFPRSTab"]
    assert inbox.list()[key].flags == STANDARD_FLAGS | {"work", "$Label1"}


def test_persists_standard_flags_and_keywords(inbox):
    for flag in STANDARD_FLAGS:
        assert inbox.persists(flag)
    for flag in ("work", "$Junk", "$Label1"):
        assert inbox.persists(flag)
    assert not inbox.persists("\\Recent")


def test_new_vs_cur_placement(inbox):
    """new/ is for what no mail reader has seen: a message given \\Recent and no flag
    with a letter.  Anything else goes to cur/, with an empty info if need be."""
    unseen = inbox.append(MSG, frozenset({RECENT}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    unkept = inbox.append(MSG, frozenset({RECENT, "not a keyword"}), ARRIVAL)
    old = inbox.append(MSG, frozenset(), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    seen = inbox.append(MSG, frozenset({SEEN, RECENT}), ARRIVAL)
    keyword_only = inbox.append(MSG, frozenset({"work"}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    assert files(os.path.join(inbox.path, "new")) == sorted([unseen, unkept])
    assert files(os.path.join(inbox.path, "cur")) == sorted(
        [f"{old}:2,", f"{seen}:2,S", f"{keyword_only}:2,a"]
    )
    assert files(os.path.join(inbox.path, "tmp")) == []
    listing = inbox.list()
    assert listing[unseen].flags == listing[unkept].flags == frozenset({RECENT})
    assert listing[old].flags == frozenset()
    assert listing[seen].flags == {SEEN}
    assert listing[keyword_only].flags == {"work"}
    assert not inbox.persists(RECENT)
    inbox.set_flags(unseen, frozenset(), frozenset({RECENT}))  # no flag: nothing moves
    assert files(os.path.join(inbox.path, "new")) == sorted([unseen, unkept])


def test_set_flags_moves_new_to_cur_and_keeps_key(inbox):
    key = inbox.append(MSG, frozenset(), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    inbox.set_flags(key, frozenset({SEEN, FLAGGED}), frozenset())
    assert files(os.path.join(inbox.path, "new")) == []
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,FS"]
    inbox.set_flags(key, frozenset(), frozenset({SEEN, FLAGGED}))
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,"]
    assert inbox.list()[key].flags == frozenset()
    assert inbox.fetch(key) == MSG


def test_set_flags_preserves_keyword_letters(inbox):
    put(inbox.path, "cur", "1.M1P1.host:2,Sab")
    inbox.list()
    inbox.set_flags("1.M1P1.host", frozenset({FLAGGED}), frozenset({SEEN}))
    assert files(os.path.join(inbox.path, "cur")) == ["1.M1P1.host:2,Fab"]
    assert inbox.list()["1.M1P1.host"].flags == {FLAGGED}


def test_set_flags_sorts_existing_unsorted_info(inbox):
    put(inbox.path, "cur", "1.x:2,zSa")
    inbox.list()
    inbox.set_flags("1.x", frozenset({ANSWERED}), frozenset())
    assert files(os.path.join(inbox.path, "cur")) == ["1.x:2,RSaz"]


def test_set_flags_noop_and_unpersisted_flags(inbox, monkeypatch):
    key = inbox.append(MSG, frozenset({SEEN}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    renames = []
    monkeypatch.setattr(md.os, "rename", lambda *a: renames.append(a))
    # "$Junk" has no letter to remove; "a b" and "(x)" are no IMAP atoms
    inbox.set_flags(key, frozenset({SEEN, "a b"}), frozenset({"$Junk", DRAFT}))
    inbox.set_flags(key, frozenset({"(x)"}), frozenset())
    assert renames == []
    assert not os.path.exists(os.path.join(inbox.path, "dovecot-keywords"))
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,S"]


def test_set_flags_add_wins_over_remove(inbox):
    key = inbox.append(MSG, frozenset(), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    inbox.set_flags(key, frozenset({SEEN}), frozenset({SEEN}))
    assert inbox.list()[key].flags == {SEEN}


def test_name_without_info_in_cur(inbox):
    put(inbox.path, "cur", "99.noinfo.host")
    assert inbox.list()["99.noinfo.host"].flags == frozenset()
    inbox.set_flags("99.noinfo.host", frozenset({SEEN}), frozenset())
    assert files(os.path.join(inbox.path, "cur")) == ["99.noinfo.host:2,S"]


# -- keywords (Dovecot's dovecot-keywords) ---------------------------------------------


def keywords_file(folder) -> str:
    return os.path.join(folder.path, "dovecot-keywords")


def read_keywords(folder) -> str:
    with open(keywords_file(folder)) as f:
        return f.read()


def write_keywords(folder, text: str, mtime: float | None = None) -> None:
    path = keywords_file(folder)
    with open(path, "w") as f:
        f.write(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_keywords_get_letters_in_dovecot_keywords(inbox):
    key = inbox.append(MSG, frozenset({SEEN, "work", "$Label1"}), ARRIVAL)
    inbox.flush()
    assert read_keywords(inbox) == "0 $Label1\n1 work\n"
    assert stat.S_IMODE(os.stat(keywords_file(inbox)).st_mode) == 0o600
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,Sab"]
    assert files(os.path.join(inbox.path, "tmp")) == []
    again = MaildirStore(inbox.store.path).open_folder("INBOX")
    assert again.list()[key].flags == {SEEN, "work", "$Label1"}
    other = inbox.append(MSG, frozenset({"work", "todo"}), ARRIVAL)  # one old, one new
    inbox.flush()
    assert read_keywords(inbox) == "0 $Label1\n1 work\n2 todo\n"
    assert files(os.path.join(inbox.path, "cur")) == sorted([f"{key}:2,Sab", f"{other}:2,bc"])


def test_keywords_read_from_dovecot_keywords(inbox):
    write_keywords(inbox, "0 work\n1 $Label1\r\n3 later\n")
    put(inbox.path, "cur", "1.x:2,Sa")
    put(inbox.path, "cur", "2.x:2,bd")
    put(inbox.path, "cur", "3.x:2,Fc")  # c (2) has no line: kept, not reported
    put(inbox.path, "new", "4.x")
    listing = inbox.list()
    assert listing["1.x"].flags == {SEEN, "work"}
    assert listing["2.x"].flags == {"$Label1", "later"}
    assert listing["3.x"].flags == {FLAGGED}
    assert listing["4.x"].flags == NEW  # new/: no reader saw it
    inbox.set_flags("3.x", frozenset({"work"}), frozenset({FLAGGED}))
    assert "3.x:2,ac" in files(os.path.join(inbox.path, "cur"))
    assert inbox.list()["3.x"].flags == {"work"}


def test_missing_keywords_file_means_no_keywords(inbox):
    put(inbox.path, "cur", "1.x:2,Sab")
    assert inbox.list()["1.x"].flags == {SEEN}
    inbox.set_flags("1.x", frozenset({"work"}), frozenset())
    # letters a and b had no meaning: they stay, and "work" takes the next free one
    assert read_keywords(inbox) == "0 work\n"
    assert files(os.path.join(inbox.path, "cur")) == ["1.x:2,Sab"]
    assert inbox.list()["1.x"].flags == {SEEN, "work"}


def test_keywords_file_read_once_per_list(inbox, monkeypatch):
    write_keywords(inbox, "0 work\n")
    for i in range(50):
        put(inbox.path, "cur", f"{i}.x:2,{'Sa' if i % 2 else 'a'}")
    opened = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        if str(path).endswith("dovecot-keywords"):
            opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(md.os, "open", spy)
    listing = inbox.list()
    assert all("work" in info.flags for info in listing.values())
    assert len(opened) == 1
    inbox.list()
    assert len(opened) == 2


def test_unreadable_keywords_file_fails_the_listing(inbox, monkeypatch):
    """Listing without the meanings would make every keyword look removed."""
    write_keywords(inbox, "0 work\n")
    put(inbox.path, "cur", "1.x:2,Sa")
    real_open = os.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("dovecot-keywords"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(md.os, "open", deny)
    with pytest.raises(FolderError, match="dovecot-keywords.*permissions"):
        inbox.list()


def test_subfolder_named_like_the_keywords_file(store):
    """Verbatim layout: folder X/dovecot-keywords takes the place of X's file."""
    folder = store.open_folder("X", create=True)
    store.open_folder("X/dovecot-keywords", create=True)
    put(folder.path, "cur", "1.x:2,Sa")
    assert folder.list()["1.x"].flags == {SEEN}
    assert not folder.persists("work")
    key = folder.append(MSG, frozenset({SEEN, "work"}), ARRIVAL)
    folder.flush()
    assert folder.list()[key].flags == {SEEN}
    assert store.list_folders() == ["X", "X/dovecot-keywords"]


def test_keyword_file_lines_dovecot_ignores(inbox):
    write_keywords(inbox, "garbage\n1 two words\n30 toolate\nx y\n2 \n3 \\Seen\n4 later\n")
    put(inbox.path, "cur", "1.x:2,bcde")
    assert inbox.list()["1.x"].flags == {"later"}  # b and d mean names that are no atoms
    assert not inbox.persists("two words")
    inbox.set_flags("1.x", frozenset({"new1", "new2"}), frozenset())
    # indexes 1 and 3 stay taken; lines Dovecot skips are dropped as Dovecot drops them
    assert read_keywords(inbox) == "0 new1\n1 two words\n2 new2\n3 \\Seen\n4 later\n"
    assert files(os.path.join(inbox.path, "cur")) == ["1.x:2,abcde"]
    assert inbox.list()["1.x"].flags == {"later", "new1", "new2"}


BAD_KEYWORDS = [
    "two words",
    "(paren",
    "paren)",
    "brace{",
    "per%cent",
    "star*",
    'quo"te',
    "back\\slash",
    "bracket]",
    "tab\there",
    "nl\nhere",
    "del\x7f",
    "caf\xe9",
    "",
    "x" * 51,
    "\\Recent",
    "\\Custom",
]


@pytest.mark.parametrize("flag", BAD_KEYWORDS)
def test_keywords_dovecot_rejects_are_not_kept(inbox, flag):
    assert not inbox.persists(flag)
    key = inbox.append(MSG, frozenset({flag, SEEN}), ARRIVAL)
    inbox.flush()
    inbox.set_flags(key, frozenset({flag}), frozenset())
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,S"]
    assert not os.path.exists(keywords_file(inbox))


@pytest.mark.parametrize("flag", ["work", "$Label1", "x" * 50, "[open", "a.b-c_d+e/f:g~!#&'"])
def test_keywords_that_are_atoms_are_kept(inbox, flag):
    assert inbox.persists(flag)
    key = inbox.append(MSG, frozenset({flag}), ARRIVAL)
    inbox.flush()
    assert read_keywords(inbox) == f"0 {flag}\n"
    assert MaildirStore(inbox.store.path).open_folder("INBOX").list()[key].flags == {flag}


def test_twenty_six_keywords_at_most(inbox):
    write_keywords(inbox, "".join(f"{i} k{i}\n" for i in range(24)))
    assert inbox.persists("k3")  # has a letter
    assert inbox.persists("one")  # promised one of the two letters left
    assert inbox.persists("two")
    assert not inbox.persists("three")  # none left for it
    assert inbox.persists("one") and inbox.persists("two")  # promises hold
    key = inbox.append(MSG, frozenset({"three", "two", "k3", "one"}), ARRIVAL)
    inbox.flush()
    assert read_keywords(inbox).endswith("23 k23\n24 one\n25 two\n")
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,dyz"]
    assert inbox.list()[key].flags == {"k3", "one", "two"}
    assert not inbox.persists("three")
    inbox.set_flags(key, frozenset({"three"}), frozenset())
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,dyz"]


def test_keyword_differing_only_in_case_is_not_kept(inbox):
    """Dovecot looks names up case-insensitively: "Todo" would come back as "todo"."""
    write_keywords(inbox, "0 todo\n")
    assert inbox.persists("todo")
    assert not inbox.persists("Todo") and not inbox.persists("TODO")
    assert inbox.persists("Later")
    assert not inbox.persists("later")  # promised "Later" already
    key = inbox.append(MSG, frozenset({"Todo", "todo", "Later"}), ARRIVAL)
    inbox.flush()
    assert read_keywords(inbox) == "0 todo\n1 Later\n"
    assert inbox.list()[key].flags == {"todo", "Later"}


def test_read_only_folder_keeps_only_keywords_with_letters(tmp_path):
    root = tmp_path / "Mail"
    writable = MaildirStore(str(root)).open_folder("INBOX", create=True)
    writable.append(MSG, frozenset({"work"}), ARRIVAL)
    writable.flush()
    folder = MaildirStore(str(root), read_only=True).open_folder("INBOX")
    assert folder.persists("work") and folder.persists(SEEN)
    assert not folder.persists("other")
    assert read_keywords(folder) == "0 work\n"


def test_set_flags_adds_and_removes_keywords(inbox):
    key = inbox.append(MSG, frozenset({SEEN}), ARRIVAL)
    inbox.flush()
    cur = os.path.join(inbox.path, "cur")
    inbox.set_flags(key, frozenset({"zeta", "alpha", FLAGGED}), frozenset())
    assert read_keywords(inbox) == "0 alpha\n1 zeta\n"
    assert files(cur) == [f"{key}:2,FSab"]  # upper case before lower case
    inbox.set_flags(key, frozenset({"mid"}), frozenset({"alpha", SEEN}))
    assert files(cur) == [f"{key}:2,Fbc"]
    assert inbox.list()[key].flags == {FLAGGED, "zeta", "mid"}
    inbox.set_flags(key, frozenset(), frozenset({"zeta", "mid", FLAGGED, "never-had"}))
    assert files(cur) == [f"{key}:2,"]
    inbox.set_flags(key, frozenset({"alpha"}), frozenset({"alpha"}))  # add wins
    assert files(cur) == [f"{key}:2,a"]
    assert read_keywords(inbox) == "0 alpha\n1 zeta\n2 mid\n"  # letters are never reused


def test_forwarded_as_dovecot_writes_it(inbox):
    """Dovecot keeps $Forwarded as a keyword letter, mailsync as P: both read as it."""
    write_keywords(inbox, "0 $forwarded\n1 work\n")
    put(inbox.path, "cur", "1.x:2,Sa")
    put(inbox.path, "cur", "2.x:2,P")
    put(inbox.path, "cur", "3.x:2,b")
    listing = inbox.list()
    assert listing["1.x"].flags == {SEEN, FORWARDED}
    assert listing["2.x"].flags == {FORWARDED}
    inbox.set_flags("1.x", frozenset(), frozenset({FORWARDED}))
    inbox.set_flags("3.x", frozenset({FORWARDED}), frozenset())
    cur = os.path.join(inbox.path, "cur")
    assert files(cur) == ["1.x:2,S", "2.x:2,P", "3.x:2,Pab"]
    assert inbox.persists(FORWARDED)
    assert read_keywords(inbox) == "0 $forwarded\n1 work\n"


def test_maildirpp_keywords_file_places(tmp_path):
    root = tmp_path / "Mail"
    store = MaildirStore(str(root), layout="maildir++")
    for name in ("INBOX", "Archive/2019"):
        folder = store.open_folder(name, create=True)
        key = folder.append(MSG, frozenset({"work"}), ARRIVAL)
        folder.flush()
        assert folder.list()[key].flags == {"work"}
    assert (root / "dovecot-keywords").read_text() == "0 work\n"
    assert (root / ".Archive.2019" / "dovecot-keywords").read_text() == "0 work\n"
    assert store.list_folders() == ["Archive/2019", "INBOX"]
    verbatim = MaildirStore(str(tmp_path / "V"))
    verbatim.open_folder("A/B", create=True).append(MSG, frozenset({"x"}), ARRIVAL)
    verbatim.close()
    assert (tmp_path / "V" / "A" / "B" / "dovecot-keywords").read_text() == "0 x\n"
    assert verbatim.list_folders() == ["A/B"]


def test_keywords_file_written_before_the_message_is_renamed(inbox, monkeypatch):
    """A crash at any point never leaves a letter without its line."""
    events = []
    real_fsync, real_rename, real_fsync_dir = os.fsync, os.rename, filesmod.fsync_dir

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            events.append(("fsync", st.st_ino))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", os.stat(src).st_ino, os.path.basename(dst)))
        real_rename(src, dst)

    def fsync_dir(path):
        events.append(("fsync_dir", path))
        real_fsync_dir(path)

    monkeypatch.setattr(md.os, "fsync", fsync)
    monkeypatch.setattr(md.os, "rename", rename)
    monkeypatch.setattr(filesmod, "fsync_dir", fsync_dir)
    key = inbox.append(MSG, frozenset({"work"}), ARRIVAL)
    inbox.flush()
    kw = os.stat(keywords_file(inbox)).st_ino
    msg = os.stat(os.path.join(inbox.path, "cur", f"{key}:2,a")).st_ino
    assert events[:5] == [
        ("fsync", kw),
        ("rename", kw, "dovecot-keywords"),
        ("fsync_dir", inbox.path),
        ("fsync", msg),
        ("rename", msg, f"{key}:2,a"),
    ]
    events.clear()
    inbox.set_flags(key, frozenset({"todo"}), frozenset())
    kw = os.stat(keywords_file(inbox)).st_ino
    assert events == [
        ("fsync", kw),
        ("rename", kw, "dovecot-keywords"),
        ("fsync_dir", inbox.path),
        ("rename", msg, f"{key}:2,ab"),
    ]


def test_failed_keywords_write_changes_nothing(inbox, monkeypatch):
    write_keywords(inbox, "0 work\n")
    key = inbox.append(MSG, NEW, ARRIVAL)
    inbox.flush()
    real_fsync = os.fsync

    def full(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(md.os, "fsync", full)
    with pytest.raises(MessageError, match="disk full"):
        inbox.append(MSG, frozenset({SEEN, "todo"}), ARRIVAL)
    with pytest.raises(MessageError, match="disk full"):
        inbox.set_flags(key, frozenset({"todo"}), frozenset())
    monkeypatch.undo()
    inbox.flush()
    assert read_keywords(inbox) == "0 work\n"
    assert files(os.path.join(inbox.path, "tmp")) == []
    assert files(os.path.join(inbox.path, "new")) == [key]
    assert files(os.path.join(inbox.path, "cur")) == []
    inbox.set_flags(key, frozenset({"todo"}), frozenset())  # works once there is room
    assert inbox.list()[key].flags == {"todo"}


def test_keywords_file_mtime_grows_by_whole_seconds(inbox):
    """Dovecot re-reads dovecot-keywords only when its mtime, in seconds, grows."""
    now = int(time.time())
    write_keywords(inbox, "0 work\n", mtime=now + 0.9)
    inbox.append(MSG, frozenset({"todo"}), ARRIVAL)
    first = os.stat(keywords_file(inbox)).st_mtime
    assert int(first) == now + 1
    inbox.append(MSG, frozenset({"later"}), ARRIVAL)
    assert int(os.stat(keywords_file(inbox)).st_mtime) == now + 2
    write_keywords(inbox, read_keywords(inbox), mtime=ARRIVAL)  # long ago
    inbox.append(MSG, frozenset({"again"}), ARRIVAL)
    assert os.stat(keywords_file(inbox)).st_mtime == pytest.approx(time.time(), abs=2)
    inbox.flush()
    assert read_keywords(inbox) == "0 work\n1 todo\n2 later\n3 again\n"


def test_keywords_file_keeps_owner_and_mode(inbox):
    write_keywords(inbox, "0 work\n")
    os.chmod(keywords_file(inbox), 0o640)
    inbox.append(MSG, frozenset({"todo"}), ARRIVAL)
    assert stat.S_IMODE(os.stat(keywords_file(inbox)).st_mode) == 0o640


def test_two_writers_do_not_give_one_letter_two_meanings(tmp_path):
    root = str(tmp_path / "Mail")
    one = MaildirStore(root).open_folder("INBOX", create=True)
    two = MaildirStore(root).open_folder("INBOX")
    assert one.persists("x") and two.persists("y")  # both read an empty folder
    a = one.append(MSG, frozenset({"x"}), ARRIVAL)
    b = two.append(MSG, frozenset({"y"}), ARRIVAL)
    one.flush()
    two.flush()
    assert read_keywords(one) == "0 x\n1 y\n"  # two re-read the file before adding
    listing = MaildirStore(root).open_folder("INBOX").list()
    assert listing[a].flags == {"x"} and listing[b].flags == {"y"}
    c = one.append(MSG, frozenset({"y"}), ARRIVAL)  # one learns y's letter
    one.flush()
    assert one.list()[c].flags == {"y"}
    assert read_keywords(one) == "0 x\n1 y\n"


def test_keywords_file_locked_while_rewritten(inbox, monkeypatch):
    calls = []
    real_flock = maildir_keywords.fcntl.flock
    monkeypatch.setattr(
        maildir_keywords.fcntl, "flock", lambda fd, op: calls.append(op) or real_flock(fd, op)
    )
    inbox.append(MSG, frozenset({"work"}), ARRIVAL)
    inbox.append(MSG, frozenset({"work"}), ARRIVAL)  # has its letter: no rewrite, no lock
    assert calls == [maildir_keywords.fcntl.LOCK_EX]


def test_cursor_sees_a_change_of_the_keywords_file_only(inbox):
    put(inbox.path, "cur", "1.x:2,Sa")
    for sub in ("cur", "new"):
        os.utime(os.path.join(inbox.path, sub), (ARRIVAL, ARRIVAL))
    assert inbox.list()["1.x"].flags == {SEEN}
    cursor = inbox.cursor()
    assert set(cursor) == {"new", "cur"}  # no file, no entry: older cursors stay good
    assert inbox.unchanged(cursor)
    write_keywords(inbox, "0 work\n")  # letter a gets its meaning
    assert not inbox.unchanged(cursor)
    assert inbox.list()["1.x"].flags == {SEEN, "work"}
    cursor = inbox.cursor()
    assert "keywords" in cursor and inbox.unchanged(cursor)
    write_keywords(inbox, "0 work\n1 more\n")
    assert not inbox.unchanged(cursor)


def test_cursor_after_writes_that_added_keywords(inbox):
    key = inbox.append(MSG, frozenset(), ARRIVAL)
    inbox.flush()
    for sub in ("cur", "new"):
        os.utime(os.path.join(inbox.path, sub), (ARRIVAL, ARRIVAL))
    inbox.list()
    inbox.set_flags(key, frozenset({"work"}), frozenset())
    cursor = inbox.cursor_after_writes()
    assert cursor and "keywords" in cursor
    assert inbox.unchanged(cursor)
    inbox.list()
    inbox.set_flags(key, frozenset({"todo"}), frozenset())
    write_keywords(inbox, read_keywords(inbox) + "5 theirs\n")  # another program
    assert inbox.cursor_after_writes() == {}


# -- metadata, modes, durability -------------------------------------------------------


@pytest.mark.parametrize("arrival", [ARRIVAL, 1_234_567_890.25, 86_400.0])
def test_mtime_is_arrival(inbox, arrival):
    key = inbox.append(MSG, frozenset({SEEN}), arrival)
    inbox.flush()  # appends are durable after flush
    st = os.stat(os.path.join(inbox.path, "cur", f"{key}:2,S"))
    assert st.st_mtime == pytest.approx(arrival, abs=1e-6)
    assert inbox.list()[key].arrival == pytest.approx(arrival, abs=1e-6)


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_modes_ignore_umask(tmp_path, umask, layout):
    old = os.umask(umask)
    try:
        root = tmp_path / "deep" / "Mail"
        store = MaildirStore(str(root), layout=layout)
        folder = store.open_folder("Lists/rust", create=True)
        new_key = folder.append(MSG, frozenset(), ARRIVAL)
        folder.flush()  # appends are durable after flush
        cur_key = folder.append(MSG, frozenset({SEEN}), ARRIVAL)
        folder.flush()  # appends are durable after flush
        folder.set_flags(new_key, frozenset({FLAGGED}), frozenset())
        folder.flush()
    finally:
        os.umask(old)
    dirs = [tmp_path / "deep", root, folder.path]
    if layout == "verbatim":
        dirs.append(root / "Lists")
    dirs += [os.path.join(folder.path, sub) for sub in ("cur", "new", "tmp")]
    for d in dirs:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    for name in (f"{new_key}:2,F", f"{cur_key}:2,S"):
        path = os.path.join(folder.path, "cur", name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_existing_dirs_modes_untouched(tmp_path):
    root = tmp_path / "Mail"
    root.mkdir()
    root.chmod(0o755)
    MaildirStore(str(root)).open_folder("INBOX", create=True)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755


def test_flush_fsyncs_dirty_dirs(inbox, monkeypatch):
    inbox.flush()  # the dirs open_folder created
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append(st.st_ino)
        real_fsync(fd)

    monkeypatch.setattr(md.os, "fsync", spy)
    ino = {sub: os.stat(os.path.join(inbox.path, sub)).st_ino for sub in ("cur", "new")}
    key = inbox.append(MSG, NEW, ARRIVAL)
    assert synced == []  # buffered until flush
    inbox.flush()
    assert synced == [ino["new"]]
    synced.clear()
    inbox.flush()
    assert synced == []
    inbox.set_flags(key, frozenset({SEEN}), frozenset())
    inbox.flush()
    assert sorted(synced) == sorted([ino["cur"], ino["new"]])
    synced.clear()
    inbox.delete(key)
    inbox.close()
    assert synced == [ino["cur"]]


def test_message_file_fsynced_before_rename(inbox, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            events.append(("fsync", st.st_ino, st.st_size, st.st_mtime))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", os.stat(src).st_ino))
        real_rename(src, dst)

    monkeypatch.setattr(md.os, "fsync", fsync)
    monkeypatch.setattr(md.os, "rename", rename)
    key = inbox.append(MSG, frozenset({SEEN}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    ino = os.stat(os.path.join(inbox.path, "cur", f"{key}:2,S")).st_ino
    assert events == [("fsync", ino, len(MSG), ARRIVAL), ("rename", ino)]


def test_created_folder_parents_are_synced(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(filesmod, "fsync_dir", synced.append)
    root = tmp_path / "Mail"
    folder = MaildirStore(str(root)).open_folder("A/B", create=True)
    folder.flush()
    assert set(synced) == {str(tmp_path), str(root), str(root / "A"), folder.path}


def test_disk_full_cleans_tmp(inbox, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(md.os, "write", full)
    # the write runs in the background: the error surfaces at the latest on flush()
    with pytest.raises(
        (MessageError, FolderError), match="disk full writing to .*free space and rerun"
    ):
        inbox.append(MSG, frozenset({SEEN}), ARRIVAL)
        inbox.flush()
    monkeypatch.undo()
    for sub in ("cur", "new", "tmp"):
        assert files(os.path.join(inbox.path, sub)) == []
    assert inbox.list() == {}


def test_short_writes_are_completed(inbox, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(md.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    key = inbox.append(MSG, frozenset(), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    monkeypatch.undo()
    assert inbox.fetch(key) == MSG


def test_unique_keys_and_name_format(inbox, monkeypatch):
    monkeypatch.setattr(md.socket, "gethostname", lambda: "my/host:1")
    keys = [inbox.append(MSG, frozenset(), ARRIVAL) for _ in range(200)]
    assert len(set(keys)) == 200
    for key in keys:
        assert key.endswith(f".my\\057host\\0721,S={len(MSG)}")
        assert "/" not in key and ":" not in key
    assert set(inbox.list()) == set(keys)


def test_tmp_cleanup(store, monkeypatch):
    folder = store.open_folder("INBOX", create=True)
    put(folder.path, "tmp", "stale", mtime=ARRIVAL)
    put(folder.path, "tmp", "fresh", mtime=time.time())
    now = time.time()
    monkeypatch.setattr(md.time, "time", lambda: now + 35 * 3600)
    store.open_folder("INBOX")
    assert files(os.path.join(folder.path, "tmp")) == ["fresh", "stale"]  # ctime is recent
    monkeypatch.setattr(md.time, "time", lambda: now + 37 * 3600)
    store.open_folder("INBOX")
    assert files(os.path.join(folder.path, "tmp")) == []


def gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def test_tmp_leftovers_of_a_dead_mailsync_go_at_once(store):
    folder = store.open_folder("INBOX", create=True)
    tmp = os.path.join(folder.path, "tmp")
    host = md.safe_hostname(socket.gethostname())
    dead, now = gone_pid(), int(time.time())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f"{now}.M1P{dead}Q1.{host},S=12",
            "dead keywords": f"dovecot-keywords.P{dead}.{host}",
            "live": f"{now}.M1P{live.pid}Q1.{host},S=12",
            "ours": f"{now}.M1P{os.getpid()}Q7.{host},S=12",
            "other host": f"{now}.M1P{dead}Q1.elsewhere,S=12",
            "not ours": f"{now}.M1P{dead}.{host}",  # Dovecot's names have no Q
        }
        for name in names.values():
            put(folder.path, "tmp", name, mtime=now)
        store.open_folder("INBOX")
        left = set(files(tmp))
    finally:
        live.kill()
        live.wait()
    assert left == {names[k] for k in ("live", "ours", "other host", "not ours")}


KILLED_MID_WRITE = """
import os, sys
from mailsync.stores.maildir import MaildirStore
folder = MaildirStore(sys.argv[1]).open_folder("INBOX", create=True)
os.rename = lambda *a: os._exit(137)  # killed after the write, before the rename
folder.append(b"Subject: lost\\n\\nbody\\n", frozenset(), 1_500_000_000)
folder.flush()
"""


def test_a_run_killed_mid_write_leaves_nothing_after_the_next_open(tmp_path):
    root = str(tmp_path / "Mail")
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, root])
    assert killed.returncode == 137
    tmp = os.path.join(root, "INBOX", "tmp")
    assert len(files(tmp)) == 1 and files(os.path.join(root, "INBOX", "new")) == []
    MaildirStore(root, read_only=True).open_folder("INBOX")  # a reader removes nothing
    assert len(files(tmp)) == 1
    folder = MaildirStore(root).open_folder("INBOX")
    assert files(tmp) == [] and folder.list() == {}


# -- reader races ---------------------------------------------------------------------


def test_after_external_new_to_cur_move(inbox):
    """mutt moves a message it has shown from new/ to cur/ with an empty info."""
    key = inbox.append(MSG, NEW, ARRIVAL)
    inbox.flush()  # appends are durable after flush
    inbox.list()
    os.rename(os.path.join(inbox.path, "new", key), os.path.join(inbox.path, "cur", key + ":2,"))
    assert inbox.fetch(key) == MSG
    inbox.set_flags(key, frozenset({SEEN}), frozenset())
    assert files(os.path.join(inbox.path, "cur")) == [f"{key}:2,S"]
    assert inbox.delete(key) == key
    assert files(os.path.join(inbox.path, "cur")) == []


def test_after_external_flag_rename(inbox):
    key = inbox.append(MSG, frozenset({SEEN}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    inbox.list()
    cur = os.path.join(inbox.path, "cur")
    os.rename(os.path.join(cur, f"{key}:2,S"), os.path.join(cur, f"{key}:2,RS"))
    assert inbox.fetch(key) == MSG
    inbox.set_flags(key, frozenset({FLAGGED}), frozenset())
    assert files(cur) == [f"{key}:2,FRS"]  # the reader's R is kept
    os.rename(os.path.join(cur, f"{key}:2,FRS"), os.path.join(cur, f"{key}:2,FRST"))
    assert inbox.delete(key) == key
    assert files(cur) == []


def test_external_rename_without_listing(store):
    """Keys from a previous run work even before this folder object listed anything."""
    folder = store.open_folder("INBOX", create=True)
    key = folder.append(MSG, NEW, ARRIVAL)
    folder.flush()  # appends are durable after flush
    os.rename(os.path.join(folder.path, "new", key), os.path.join(folder.path, "cur", key + ":2,S"))
    again = store.open_folder("INBOX")
    assert again.fetch(key) == MSG


def test_delete_already_deleted(inbox):
    key = inbox.append(MSG, NEW, ARRIVAL)
    inbox.flush()  # appends are durable after flush
    inbox.list()
    os.unlink(os.path.join(inbox.path, "new", key))
    assert inbox.delete(key) == key
    assert inbox.delete(key) == key
    assert inbox.delete("never-existed") == "never-existed"
    with pytest.raises(MessageError, match="gone"):
        inbox.fetch(key)
    with pytest.raises(MessageError, match="gone"):
        inbox.set_flags(key, frozenset({SEEN}), frozenset())


def test_delete_removes_file(inbox):
    keep = inbox.append(MSG, NEW, ARRIVAL)
    inbox.flush()  # appends are durable after flush
    key = inbox.append(MSG, frozenset({SEEN}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    assert inbox.delete(key) == key
    assert set(inbox.list()) == {keep}
    assert files(os.path.join(inbox.path, "cur")) == []


# -- bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (b"Subject: x\r\n\r\nline\r\n", b"Subject: x\n\nline\n"),
        (b"Subject: x\n\nno trailing newline", b"Subject: x\n\nno trailing newline"),
        (b"Subject: x\r\n\r\nlone\rcr\r\n", b"Subject: x\n\nlone\rcr\n"),
        (bytes(range(256)), bytes(range(256))),
        (b"Subject: \xe9t\xe9\n\n\xff\xfe\x00\x80", b"Subject: \xe9t\xe9\n\n\xff\xfe\x00\x80"),
        (b"", b""),
    ],
)
def test_byte_exact(inbox, given, stored):
    key = inbox.append(given, NEW, ARRIVAL)
    inbox.flush()  # appends are durable after flush
    assert inbox.fetch(key) == stored
    with open(os.path.join(inbox.path, "new", key), "rb") as f:
        assert f.read() == stored
    assert inbox.list()[key].size == len(stored)


def test_fifty_megabytes(inbox):
    line = b"".join(bytes([33 + i % 90]) for i in range(75)) + b"\r\n"
    data = b"Subject: big\r\n\r\n" + line * (50 * 1024 * 1024 // len(line))
    key = inbox.append(data, frozenset({SEEN}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    got = inbox.fetch(key)
    assert len(got) == len(data) - data.count(b"\r\n")
    assert got == data.replace(b"\r\n", b"\n")
    assert inbox.list()[key].size == len(got)


# -- interoperability -----------------------------------------------------------------


def test_reads_stdlib_maildir(tmp_path):
    root = tmp_path / "Mail"
    root.mkdir()
    box = mailbox.Maildir(str(root / "INBOX"), create=True)
    plain = mailbox.MaildirMessage(b"Subject: plain\n\nnew mail\n")
    seen = mailbox.MaildirMessage(b"Subject: seen\n\nread \xe9 mail\n")
    seen.set_flags("RS")
    flagged = mailbox.MaildirMessage(b"Subject: draft\n\nd\n")
    flagged.set_subdir("cur")
    flagged.set_flags("DF")
    flagged.set_date(ARRIVAL)
    ids = {name: box.add(m) for name, m in [("plain", plain), ("seen", seen), ("f", flagged)]}
    box.close()

    store = MaildirStore(str(root))
    assert store.list_folders() == ["INBOX"]
    folder = store.open_folder("INBOX")
    listing = folder.list()
    assert set(listing) == set(ids.values())
    assert listing[ids["plain"]].flags == NEW  # in new/
    assert listing[ids["seen"]].flags == {ANSWERED, SEEN, RECENT}  # (new/, with an info)
    assert listing[ids["f"]].flags == {DRAFT, FLAGGED}
    assert listing[ids["f"]].arrival == pytest.approx(ARRIVAL)
    assert folder.fetch(ids["seen"]) == b"Subject: seen\n\nread \xe9 mail\n"
    folder.set_flags(ids["plain"], frozenset({FORWARDED}), frozenset())
    assert mailbox.Maildir(str(root / "INBOX"), create=False)[ids["plain"]].get_flags() == "P"


def test_stdlib_reads_what_we_write(tmp_path):
    store = MaildirStore(str(tmp_path / "Mail"), layout="maildir++")
    inbox = store.open_folder("INBOX", create=True)
    a = inbox.append(b"Subject: a\r\n\r\nA\r\n", frozenset({SEEN, FLAGGED}), ARRIVAL)
    inbox.flush()  # appends are durable after flush
    b = inbox.append(b"Subject: b\n\nB\n", NEW, ARRIVAL)
    c = inbox.append(b"Subject: c\n\nC\n", frozenset(), ARRIVAL)  # seen, not read
    inbox.flush()  # appends are durable after flush
    store.open_folder("Archive", create=True).append(MSG, frozenset(), ARRIVAL)
    box = mailbox.Maildir(str(tmp_path / "Mail"), factory=None, create=False)
    assert sorted(box.keys()) == sorted([a, b, c])
    assert box[a].get_flags() == "FS" and box[a].get_subdir() == "cur"
    assert box[b].get_flags() == "" and box[b].get_subdir() == "new"
    assert box[c].get_flags() == "" and box[c].get_subdir() == "cur"
    assert box.get_bytes(a) == b"Subject: a\n\nA\n"
    assert box[a].get_date() == pytest.approx(ARRIVAL)
    assert box.list_folders() == ["Archive"]


def test_reads_stdlib_maildirpp_folders(tmp_path):
    box = mailbox.Maildir(str(tmp_path / "Mail"), create=True)
    box.add_folder("Sent").add(b"Subject: s\n\nsent\n")
    store = MaildirStore(str(tmp_path / "Mail"), layout="maildir++")
    assert store.list_folders() == ["INBOX", "Sent"]
    sent = store.open_folder("Sent")
    (key,) = sent.list()
    assert sent.fetch(key) == b"Subject: s\n\nsent\n"


def test_dovecot_names(inbox):
    name = "1700000000.M123456P789.mailhost,S=12,W=13"
    put(inbox.path, "cur", name + ":2,RS", data=b"header: x\n\n")  # 11 bytes on disk
    put(inbox.path, "new", "1700000001.M1P2.mailhost,W=99,S=7", data=b"abc")
    listing = inbox.list()
    assert set(listing) == {name, "1700000001.M1P2.mailhost,W=99,S=7"}
    assert listing[name].size == 12  # taken from the name, not from stat
    assert listing[name].flags == {ANSWERED, SEEN}
    assert listing["1700000001.M1P2.mailhost,W=99,S=7"].size == 7
    inbox.set_flags(name, frozenset({FLAGGED}), frozenset({ANSWERED}))
    assert files(os.path.join(inbox.path, "cur")) == [name + ":2,FS"]


def test_size_falls_back_to_stat(inbox):
    put(inbox.path, "new", "1.M1P1.host,S=notanumber", data=b"12345")
    put(inbox.path, "new", "2.M1P1.host", data=b"123")
    listing = inbox.list()
    assert listing["1.M1P1.host,S=notanumber"].size == 5
    assert listing["2.M1P1.host"].size == 3


def test_odd_entries_skipped(inbox):
    put(inbox.path, "cur", "good:2,S")
    put(inbox.path, "cur", ".hidden:2,S")
    put(inbox.path, "cur", ":2,S")  # no unique part
    put(inbox.path, "new", ".DS_Store")
    os.mkdir(os.path.join(inbox.path, "cur", "subdir:2,S"))
    os.symlink("/nonexistent/target", os.path.join(inbox.path, "new", "dangling"))
    assert set(inbox.list()) == {"good"}


def test_listing_a_vanished_folder(store, tmp_path):
    folder = store.open_folder("INBOX", create=True)
    os.rmdir(os.path.join(folder.path, "cur"))
    with pytest.raises(FolderError, match="still a Maildir"):
        folder.list()


def test_unreadable_file(inbox, monkeypatch):
    """Listed (so the engine does not think it was deleted), but fetch is a MessageError."""
    put(inbox.path, "cur", "locked:2,S")
    put(inbox.path, "cur", "fine:2,S")

    def deny(path, mode="r"):
        if "locked" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open(path, mode)

    monkeypatch.setattr(md, "open", deny, raising=False)
    assert set(inbox.list()) == {"locked", "fine"}
    assert inbox.fetch("fine") == MSG
    with pytest.raises(MessageError, match="check its permissions"):
        inbox.fetch("locked")


# -- Dovecot reads and writes the same keywords ----------------------------------------
# Ordinary users of the private Dovecot (tests/servers/dovecot.py) keep dovecot-keywords
# inside their Maildir, as a default Dovecot does: mailsync and Dovecot share the files.
# (serve_maildir() users have a separate CONTROL= directory, where Dovecot looks for
# dovecot-keywords instead, so those trees do not show keywords written here.)


def dovecot_flags(server, user, folder: str) -> dict[bytes, frozenset[str]]:
    """body (LF) -> flags, as Dovecot reports them over IMAP (without \\Recent)."""
    with server.imap(user) as client:
        client.select_folder(folder, readonly=True)
        fetched = client.fetch(client.search("ALL"), ["FLAGS", "BODY.PEEK[]"])
    return {
        data[b"BODY[]"].replace(b"\r\n", b"\n"): frozenset(
            f.decode() for f in data[b"FLAGS"] if f != b"\\Recent"
        )
        for data in fetched.values()
    }


def mailsync_flags(folder) -> dict[bytes, frozenset[str]]:
    return {folder.fetch(key): info.flags for key, info in folder.list().items()}


def body(n: int) -> bytes:
    return f"From: a@example.org\nSubject: message {n}\n\nbody {n}\n".encode()


def test_dovecot_reads_the_keywords_mailsync_writes(dovecot_server, dovecot_user):
    server, user = dovecot_server, dovecot_user
    store = MaildirStore(str(user.maildir))
    inbox = store.open_folder("INBOX", create=True)
    inbox.append(body(1), frozenset({SEEN, "work", "$Label1"}), ARRIVAL)
    inbox.append(body(2), frozenset({"todo"}), ARRIVAL)
    third = inbox.append(body(3), frozenset({FLAGGED}), ARRIVAL)
    inbox.flush()
    inbox.set_flags(third, frozenset({"later", "work"}), frozenset({FLAGGED}))
    archive = store.open_folder("Archive/2019", create=True)
    archive.append(body(4), frozenset({ANSWERED, "old"}), ARRIVAL)
    store.close()
    server.chown_maildir(user)
    assert dovecot_flags(server, user, "INBOX") == {
        body(1): {SEEN, "work", "$Label1"},
        body(2): {"todo"},
        body(3): {"later", "work"},
    }
    assert dovecot_flags(server, user, "Archive/2019") == {body(4): {ANSWERED, "old"}}


def test_mailsync_reads_the_keywords_dovecot_writes(dovecot_server, dovecot_user):
    server, user = dovecot_server, dovecot_user
    with server.imap(user) as client:
        client.append("INBOX", body(1), flags=[b"\\Seen", b"work", b"$Label1"])
        client.append("INBOX", body(2), flags=[b"$Forwarded", b"todo"])
        client.append("INBOX", body(3), flags=[])
        client.select_folder("INBOX")
        first, second, third = client.search("ALL")
        client.add_flags([third], [b"later", b"\\Flagged"])
        client.remove_flags([first], [b"$Label1"])
    assert (user.maildir / "INBOX" / "dovecot-keywords").exists()  # Dovecot's own
    inbox = MaildirStore(str(user.maildir)).open_folder("INBOX")
    assert mailsync_flags(inbox) == {
        body(1): {SEEN, "work"},
        body(2): {FORWARDED, "todo"},
        body(3): {FLAGGED, "later"},
    }
    for flag in ("work", "todo", "later", "$Label1"):
        assert inbox.persists(flag)


def test_keywords_go_both_ways_while_dovecot_has_the_folder_open(dovecot_server, dovecot_user):
    """mailsync adds keywords to Dovecot's file while a session has the folder selected,
    within the second Dovecot last wrote it: Dovecot must notice (the mtime grows)."""
    server, user = dovecot_server, dovecot_user
    with server.imap(user) as client:
        client.append("INBOX", body(1), flags=[b"\\Seen", b"work"])
        client.select_folder("INBOX")
        (uid,) = client.search("ALL")
        client.add_flags([uid], [b"dovecot"])
        store = MaildirStore(str(user.maildir))
        inbox = store.open_folder("INBOX")
        (key,) = inbox.list()
        inbox.set_flags(key, frozenset({"mailsync", "$Label2"}), frozenset({"work"}))
        inbox.append(body(2), frozenset({"mailsync", "more"}), ARRIVAL)
        store.close()
        server.chown_maildir(user)
        client.noop()
        seen = {
            data[b"SEQ"]: frozenset(f.decode() for f in data[b"FLAGS"] if f != b"\\Recent")
            for data in client.fetch(client.search("ALL"), ["FLAGS"]).values()
        }
        assert seen == {
            1: {SEEN, "dovecot", "mailsync", "$Label2"},
            2: {"mailsync", "more"},
        }
        client.add_flags(client.search("ALL"), [b"both"])
    assert mailsync_flags(MaildirStore(str(user.maildir)).open_folder("INBOX")) == {
        body(1): {SEEN, "dovecot", "mailsync", "$Label2", "both"},
        body(2): {"mailsync", "more", "both"},
    }
    with open(user.maildir / "INBOX" / "dovecot-keywords") as f:
        assert not any("unknown-" in line for line in f)


# -- read-only ------------------------------------------------------------------------


def test_read_only_store(tmp_path):
    root = tmp_path / "Mail"
    writable = MaildirStore(str(root))
    writable_inbox = writable.open_folder("INBOX", create=True)
    key = writable_inbox.append(MSG, frozenset(), ARRIVAL)
    writable_inbox.flush()
    put(os.path.join(root, "INBOX"), "tmp", "stale", mtime=ARRIVAL)
    before = {p: files(os.path.join(root, "INBOX", p)) for p in ("cur", "new", "tmp")}

    store = MaildirStore(str(root), read_only=True)
    folder = store.open_folder("INBOX", create=True)  # exists: opening is fine
    assert folder.read_only
    assert folder.fetch(key) == MSG
    with pytest.raises(FolderError, match="read-only"):
        folder.append(MSG, frozenset(), ARRIVAL)
    with pytest.raises(FolderError, match="read-only"):
        folder.set_flags(key, frozenset({SEEN}), frozenset())
    with pytest.raises(FolderError, match="read-only"):
        folder.delete(key)
    with pytest.raises(FolderError, match="read-only"):
        store.open_folder("Other", create=True)
    folder.close()
    assert {p: files(os.path.join(root, "INBOX", p)) for p in ("cur", "new", "tmp")} == before
    assert not (root / "Other").exists()


def test_validity_is_empty(inbox):
    assert inbox.validity == ""

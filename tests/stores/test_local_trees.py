"""Local trees (Maildir, mbox, vdir) as a whole: nothing that looks like mail is left out
without a word, and deep trees are walked without recursion and within bounds."""

from __future__ import annotations

import errno
import os

import pytest

from mailsync.errors import FolderError
from mailsync.message import FLAGGED, RECENT, SEEN
from mailsync.policy import Policy
from mailsync.state import State
from mailsync.stores import maildir as maildir_module
from mailsync.stores import open_store
from mailsync.stores.base import MAX_FOLDER_DEPTH
from mailsync.stores.maildir import MaildirStore
from mailsync.stores.mbox import MboxStore
from mailsync.stores.vdir import make_vdir, vdir_kind
from mailsync.sync import Syncer

MSG = b"From: a@example.org\nSubject: hi\n\nbody\n"
FROM_LINE = b"From MAILER-DAEMON Sun Sep  9 01:46:40 2001\n"
DEEP = 1_100  # beyond Python's recursion limit (1,000)
PULL = Policy("pull", "keep")


def remove_tree(top) -> None:
    """shutil.rmtree in a loop: Python 3.11's recursion fails on a 1,100-level tree."""
    order, pending = [], [str(top)]
    while pending:
        directory = pending.pop()
        order.append(directory)
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    os.unlink(entry.path)
    for directory in reversed(order):
        os.rmdir(directory)


@pytest.fixture(autouse=True)
def _remove_deep_trees(tmp_path):
    """pytest's own clean-up of old temporary directories recurses: remove them here."""
    yield
    for entry in os.scandir(tmp_path):
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)


def make_maildir(path, messages: int = 0) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    for i in range(messages):
        with open(os.path.join(path, "cur", f"{i}.M1P1.host:2,S"), "wb") as f:
            f.write(MSG)


def write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def nest(top, depth: int, part: str = "d") -> str:
    """top/d/d/.../d, `depth` levels below top, made in a loop (os.makedirs recurses)."""
    path = str(top)
    os.makedirs(path, exist_ok=True)
    for _ in range(depth):
        path = os.path.join(path, part)
        os.mkdir(path)
    return path


def pull(src_url: str, dst_url: str, state_path) -> object:
    src = open_store(src_url, read_only=True)
    dst = open_store(dst_url)
    try:
        with State(str(state_path)) as state:
            return Syncer(src, dst, state, PULL).run()
    finally:
        src.close()
        dst.close()


# -- depth: walks are loops, and bounded -----------------------------------------------------


def test_maildir_tree_deeper_than_the_recursion_limit(tmp_path):
    root = tmp_path / "Mail"
    make_maildir(root / "INBOX", 1)
    make_maildir(nest(root / "d", 49), 1)  # folder d/d/.../d, 50 levels: listed
    make_maildir(nest(root / "deep", DEEP - 1), 1)  # 1,100 levels: a problem, no crash
    store = MaildirStore(str(root))
    names = store.list_folders()
    assert names == sorted(["INBOX", "/".join(["d"] * 50)])
    assert len(store.problems) == 1
    assert f"deeper than {MAX_FOLDER_DEPTH} folders" in store.problems[0]
    assert store.problems[0].startswith(str(root / "deep"))


def test_mbox_tree_deeper_than_the_recursion_limit(tmp_path):
    root = tmp_path / "mail"
    write(str(root / "INBOX"), FROM_LINE + MSG)
    write(os.path.join(nest(root / "d", 49), "box"), FROM_LINE + MSG)
    write(os.path.join(nest(root / "deep", DEEP - 1), "box"), FROM_LINE + MSG)
    store = MboxStore(str(root))
    assert store.list_folders() == sorted(["INBOX", "/".join(["d"] * 50 + ["box"])])
    assert len(store.problems) == 1
    assert f"deeper than {MAX_FOLDER_DEPTH} folders" in store.problems[0]


@pytest.mark.parametrize("scheme", ["maildir", "mbox"])
def test_folder_names_deeper_than_the_limit_are_refused(tmp_path, scheme):
    store = open_store(f"{scheme}:{tmp_path / 'store'}")
    ok = "/".join(["a"] * MAX_FOLDER_DEPTH)
    store.open_folder(ok, create=True).close()
    with pytest.raises(FolderError, match="levels deep"):
        store.open_folder(ok + "/a", create=True)
    assert store.list_folders() == [ok]


def test_a_destination_root_a_thousand_levels_below_nothing(tmp_path):
    """Missing parents are made in a loop: Maildir folders, vdirs and mbox files."""
    deep = os.path.join(str(tmp_path), *(["p"] * DEEP))
    folder = MaildirStore(os.path.join(deep, "maildir")).open_folder("INBOX", create=True)
    assert os.path.isdir(os.path.join(folder.path, "cur"))
    assert oct(os.stat(os.path.join(deep, "maildir")).st_mode & 0o777) == "0o700"
    make_vdir(os.path.join(deep, "vdir", "Calendar"), "calendar")
    assert vdir_kind(os.path.join(deep, "vdir", "Calendar")) == "calendar"
    box = MboxStore(os.path.join(deep, "mbox")).open_folder("A/B", create=True)
    assert os.path.isfile(box.path)


def test_a_deep_tree_fails_alone_and_the_rest_is_copied(tmp_path):
    src = tmp_path / "src"
    make_maildir(src / "INBOX", 2)
    make_maildir(nest(src / "deep", DEEP - 1), 1)
    report = pull(f"maildir:{src}", f"mbox:{tmp_path / 'dst'}", tmp_path / "state.db")
    assert [f.folder for f in report.folders] == ["INBOX"]
    assert report.folders[0].copied_a_to_b == 2
    assert report.failed and any("deeper than" in e for e in report.errors)


# -- Maildir trees: what holds mail is a folder or a problem ----------------------------------


def test_maildir_problems_name_what_is_not_synced(tmp_path):
    root = tmp_path / "Mail"
    make_maildir(root / "INBOX", 1)
    make_maildir(root / "bad\x01name", 1)  # a name no folder can have, holding mail
    make_maildir(root / "bad\x02empty")  # ... holding nothing: no problem
    os.makedirs(root / "Half" / "cur")  # half a Maildir holding a message
    write(str(root / "Half" / "cur" / "1.M1P1.host:2,S"), MSG)
    os.makedirs(root / "EmptyHalf" / "new")  # half a Maildir, empty: not mail
    store = MaildirStore(str(root))
    assert store.list_folders() == ["INBOX"]
    problems = sorted(store.problems)
    assert len(problems) == 2, problems
    assert "Half has messages in cur/ but no new/" in problems[0]
    assert "bad\x01name holds mail but is not synced" in problems[1]
    assert "control characters" in problems[1]


def test_maildirpp_problems_name_what_is_not_synced(tmp_path):
    root = tmp_path / "Mail"
    make_maildir(root, 1)
    make_maildir(root / ".Sent", 1)
    make_maildir(root / ".INBOX", 1)  # INBOX is the root itself
    make_maildir(root / ".a..b", 1)  # empty part
    make_maildir(root / ".empty..name")  # no mail: no problem
    make_maildir(root / "Archive" / "2019", 1)  # verbatim-style, below a maildir++ root
    store = MaildirStore(str(root), layout="maildir++")
    assert store.list_folders() == ["INBOX", "Sent"]
    problems = sorted(store.problems)
    assert len(problems) == 3, problems
    assert ".INBOX holds mail" in problems[0] and "root itself" in problems[0]
    assert ".a..b holds mail" in problems[1]
    assert "Archive/2019 holds mail" in problems[2] and "layout=verbatim" in problems[2]


def test_unreadable_directories_are_problems(tmp_path, monkeypatch):
    """(Tests run as root, which reads any directory: the refusal is simulated.)"""
    root = tmp_path / "Mail"
    make_maildir(root / "INBOX", 1)
    make_maildir(root / "Locked" / "Sub", 1)
    mbox_root = tmp_path / "mbox"
    write(str(mbox_root / "INBOX"), FROM_LINE + MSG)
    write(str(mbox_root / "Locked" / "Sub"), FROM_LINE + MSG)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(str(path)) == "Locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for store in (MaildirStore(str(root)), MboxStore(str(mbox_root))):
        assert store.list_folders() == ["INBOX"]
        assert len(store.problems) == 1
        assert "Locked (Permission denied): the folders in it are not synced" in (store.problems[0])


def test_odd_files_in_a_maildir_folder_are_problems(tmp_path):
    store = MaildirStore(str(tmp_path / "Mail"))
    folder = store.open_folder("INBOX", create=True)
    write(os.path.join(folder.path, "cur", "good:2,S"), MSG)
    write(os.path.join(folder.path, "cur", ".hidden:2,S"), MSG)  # the spec: skipped
    write(os.path.join(folder.path, "cur", ":2,S"), MSG)  # no unique part
    os.mkdir(os.path.join(folder.path, "cur", "subdir:2,S"))
    os.symlink("/nonexistent/target", os.path.join(folder.path, "new", "dangling"))
    assert set(folder.list()) == {"good"}
    problems = sorted(folder.problems)
    assert len(problems) == 3, problems
    assert problems[0].endswith(
        "cur/:2,S has no unique name before its :2, info, so it cannot be synced; rename it"
    )
    assert "subdir:2,S is not a regular file" in problems[1]
    assert "dangling is a symbolic link to nothing" in problems[2]
    folder.list()
    assert len(folder.problems) == 3  # each listing says it again, not twice


# -- mbox trees ------------------------------------------------------------------------------


def test_a_maildir_inside_an_mbox_tree_is_a_problem(tmp_path):
    root = tmp_path / "mail"
    write(str(root / "INBOX"), FROM_LINE + MSG)
    make_maildir(root / "lists" / "python", 1)
    make_maildir(root / "lists" / "empty")
    store = MboxStore(str(root))
    assert store.list_folders() == ["INBOX"]
    assert store.problems == [
        f"{root / 'lists' / 'python'} is a Maildir inside an mbox tree, which mailsync does "
        f"not read as part of it; sync it as maildir:{root / 'lists' / 'python'}"
    ]


HEADERS_FIRST = b"Return-Path: <a@example.org>\nFrom: a@example.org\nSubject: no From_\n\nbody\n"
JUNK = b"\n\nsome text a program left before the mail\n"
THUNDERBIRD = {  # files beside the mbox files of a Thunderbird profile: not mail
    "Inbox.msf": b'// <!-- <mdb:mork:z v="1.4"/> -->\n< <(a=c)> // (f=iso-8859-1)\n',
    "msgFilterRules.dat": b'version="9"\nlogging="no"\n',
    "popstate.dat": b"# POP3 State File\n# This is a generated file!  Do not edit.\n",
    "notes.txt": b"Subject of the meeting: none\nFrom what I hear, nothing.\n",
}


def test_mbox_files_that_do_not_start_with_a_from_line(tmp_path):
    root = tmp_path / "mail"
    write(str(root / "headers-first"), HEADERS_FIRST)
    write(str(root / "junk-first"), JUNK + (FROM_LINE + MSG + b"\n") * 2)
    write(str(root / "blank-line-first"), b"\n" + FROM_LINE + MSG + b"\n")
    for name, data in THUNDERBIRD.items():
        write(str(root / name), data)
    store = MboxStore(str(root), read_only=True)
    assert store.list_folders() == ["blank-line-first", "headers-first", "junk-first"]
    assert store.problems == []

    headers = store.open_folder("headers-first")
    assert headers.list() == {}
    assert headers.problems == [
        f'{headers.path} holds no "From " line, so none of its {len(HEADERS_FIRST)} bytes '
        'is synced as mail; make it an mbox file (a "From " line before each message) or '
        "move it out of the tree"
    ]
    junk = store.open_folder("junk-first")
    assert [junk.fetch(k) for k in junk.list()] == [MSG, MSG]
    assert len(junk.problems) == 1
    assert f"its first {len(JUNK)} bytes are in no message" in junk.problems[0]
    blank = store.open_folder("blank-line-first")
    assert [blank.fetch(k) for k in blank.list()] == [MSG]
    assert "its first 1 bytes" in blank.problems[0]


def test_writes_keep_the_bytes_before_the_first_from_line(tmp_path):
    root = tmp_path / "mail"
    path = root / "INBOX"
    write(str(path), HEADERS_FIRST.rstrip(b"\n"))  # no From_ line, no final newline
    folder = MboxStore(str(root)).open_folder("INBOX")
    folder.list()
    one = folder.append(MSG, frozenset(), 1_000_000_000)
    two = folder.append(MSG.replace(b"hi", b"two"), frozenset(), 1_000_000_000)
    folder.flush()
    folder.delete(one)
    folder.flush()
    data = path.read_bytes()
    assert data.startswith(HEADERS_FIRST.rstrip(b"\n") + b"\nFrom ")
    again = MboxStore(str(root)).open_folder("INBOX")
    assert list(again.list()) == [two]
    assert again.problems and "first" in again.problems[0]


def test_an_mbox_file_with_an_unusable_name_is_a_problem(tmp_path):
    root = tmp_path / "mail"
    write(str(root / "INBOX"), FROM_LINE + MSG)
    write(str(root / "bad\x01name"), FROM_LINE + MSG)
    write(str(root / "bad\x02notes"), b"not mail\n")  # only a warning, as before
    store = MboxStore(str(root))
    assert store.list_folders() == ["INBOX"]
    assert len(store.problems) == 1
    assert "bad\x01name holds mail but is not synced" in store.problems[0]


def test_a_damaged_mbox_file_is_copied_as_far_as_it_can_be_read(tmp_path):
    src = tmp_path / "src"
    write(str(src / "INBOX"), JUNK + FROM_LINE + MSG)
    write(str(src / "Sent"), HEADERS_FIRST)
    report = pull(f"mbox:{src}", f"maildir:{tmp_path / 'dst'}", tmp_path / "state.db")
    by_name = {f.folder: f for f in report.folders}
    assert by_name["INBOX"].copied_a_to_b == 1 and len(by_name["INBOX"].errors) == 1
    assert by_name["Sent"].copied_a_to_b == 0 and len(by_name["Sent"].errors) == 1
    assert report.failed


# -- the engine --------------------------------------------------------------------------------


def test_folder_problems_are_errors_and_keep_the_folder_listed(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_maildir(src / "INBOX", 2)
    os.symlink("/nonexistent/target", src / "INBOX" / "new" / "dangling")
    for d in ("cur", "new", "tmp", ""):  # old enough for a cursor
        os.utime(src / "INBOX" / d, (1_600_000_000, 1_600_000_000))
    dst, state = f"mbox:{tmp_path / 'dst'}", tmp_path / "state.db"
    report = pull(f"maildir:{src}", dst, state)
    inbox = report.folders[0]
    assert inbox.copied_a_to_b == 2
    assert len(inbox.errors) == 1 and "dangling is a symbolic link" in inbox.errors[0]
    assert report.failed

    listed = []
    real_list = maildir_module.MaildirFolder.list

    def spy(self):
        listed.append(self.name)
        return real_list(self)

    monkeypatch.setattr(maildir_module.MaildirFolder, "list", spy)
    again = pull(f"maildir:{src}", dst, state)  # not vouched for: listed and reported again
    assert listed == ["INBOX"]
    assert again.folders[0].copied_a_to_b == 0 and len(again.folders[0].errors) == 1


def test_store_problems_are_errors_of_the_run(tmp_path):
    src = tmp_path / "src"
    write(str(src / "INBOX"), FROM_LINE + MSG)
    make_maildir(src / "python", 1)
    report = pull(f"mbox:{src}", f"maildir:{tmp_path / 'dst'}", tmp_path / "state.db")
    assert report.folders[0].copied_a_to_b == 1
    assert report.failed and len(report.errors) == 1
    assert "is a Maildir inside an mbox tree" in report.errors[0]


# -- cur/ and new/ between Maildirs ------------------------------------------------------------


def put(path, sub: str, filename: str, body: bytes) -> None:
    with open(os.path.join(path, sub, filename), "wb") as f:
        f.write(body)


def placement(root, folder="INBOX") -> dict[bytes, str]:
    """Body -> "new/" or "cur/:2,INFO" of each message of a verbatim folder."""
    out = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(root, folder, sub)):
            with open(os.path.join(root, folder, sub, name), "rb") as f:
                body = f.read()
            out[body] = f"{sub}/" + (name[name.index(":2,") :] if ":2," in name else "")
    return out


def body(n: int) -> bytes:
    return b"From: a@example.org\nSubject: %d\n\nbody %d\n" % (n, n)


def seed_cur_and_new(src) -> None:
    make_maildir(src / "INBOX")
    put(src / "INBOX", "new", "1.M1P1.host", body(1))  # no reader has seen it
    put(src / "INBOX", "cur", "2.M1P1.host:2,", body(2))  # seen by mutt, not read
    put(src / "INBOX", "cur", "3.M1P1.host:2,S", body(3))  # read
    put(src / "INBOX", "cur", "4.M1P1.host", body(4))  # cur/ without an info


def test_a_copy_between_maildirs_keeps_new_and_cur(tmp_path):
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state.db"
    seed_cur_and_new(src)
    report = pull(f"maildir:{src}", f"maildir:{dst}", state)
    assert not report.failed and report.folders[0].copied_a_to_b == 4
    assert placement(dst) == {
        body(1): "new/",
        body(2): "cur/:2,",
        body(3): "cur/:2,S",
        body(4): "cur/:2,",
    }
    # mutt opens the source: new/ -> cur/.  No flag change anywhere, nothing recorded.
    os.rename(src / "INBOX" / "new" / "1.M1P1.host", src / "INBOX" / "cur" / "1.M1P1.host:2,")
    again = pull(f"maildir:{src}", f"maildir:{dst}", state)
    assert again.folders[0].flags_a + again.folders[0].flags_b == 0
    assert placement(dst)[body(1)] == "new/"  # the backup's own reader has not seen it
    with State(str(state)) as db:
        for folder in db.folders():
            assert all(RECENT not in pair.flags for pair in db.pairs(folder.id))


def test_recent_reaches_only_folders_that_mark_it(tmp_path):
    """From a Maildir to mbox and to a memory store (which keeps any flag it is given):
    no \\Recent; from a store that cannot tell (memory, like IMAP) to a Maildir: new/
    for unseen mail without flags, as before."""
    src = tmp_path / "src"
    seed_cur_and_new(src)
    memory = open_store(f"memory:recent-target-{tmp_path.name}")
    with State(str(tmp_path / "s1.db")) as db:
        Syncer(open_store(f"maildir:{src}", read_only=True), memory, db, PULL).run()
    inbox = memory.open_folder("INBOX")
    assert len(inbox.messages) == 4
    assert all(RECENT not in flags for _, flags, _ in inbox.messages.values())

    source = open_store(f"memory:recent-source-{tmp_path.name}")
    box = source.open_folder("INBOX", create=True)
    box.add(body(5))
    box.add(body(6), flags={SEEN})
    box.add(body(7), flags={FLAGGED})
    with State(str(tmp_path / "s2.db")) as db:
        Syncer(source, open_store(f"maildir:{tmp_path / 'dst'}"), db, PULL).run()
    assert placement(tmp_path / "dst") == {
        body(5): "new/",
        body(6): "cur/:2,S",
        body(7): "cur/:2,F",
    }


def test_a_long_path_in_a_problem_keeps_the_folder_it_names(tmp_path):
    """Problems name a path cut to 160 characters in the middle: its end (the folder)
    must survive, as under a deep temporary directory."""
    root = tmp_path.joinpath(*["deep-directory"] * 12) / "Mail"
    make_maildir(root, 1)
    make_maildir(root / "Archive" / "2019", 1)
    store = MaildirStore(str(root), layout="maildir++")
    assert store.list_folders() == ["INBOX"]
    (problem,) = store.problems
    assert "...rectory/deep-directory/Mail/Archive/2019 holds mail" in problem, problem
    assert problem.startswith(str(tmp_path))

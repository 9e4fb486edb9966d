"""mbox store: mboxrd format, content-addressed keys, locking, journaled appends."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mailbox
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsync.errors import ConfigError, FolderError, MessageError
from mailsync.message import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    SEEN,
    STANDARD_FLAGS,
    Info,
    fingerprint,
    to_lf,
)
from mailsync.stores import mbox as mbox_module
from mailsync.stores import open_store
from mailsync.stores.mbox import MboxFolder, MboxStore
from mailsync.stores.mbox_format import stored_form

NOFLAGS = frozenset()
T0 = 1_000_000_000  # Sun Sep  9 01:46:40 2001 UTC
FROM_T0 = b"From MAILER-DAEMON Sun Sep  9 01:46:40 2001\n"


def key_of(body: bytes, n: int = 0) -> str:
    digest = hashlib.sha256(body).hexdigest()[:32]
    return digest if n == 0 else f"{digest}.{n}"


def msg(i: int, extra: bytes = b"") -> bytes:
    return b"From: a@example.com\nSubject: message %d\n\nbody %d\n" % (i, i) + extra


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


@pytest.fixture
def fast_locks(monkeypatch):
    monkeypatch.setattr(MboxFolder, "LOCK_TIMEOUT", 0.3)
    monkeypatch.setattr(MboxFolder, "LOCK_POLL", 0.01)


def fresh(root, name="INBOX", **kw) -> MboxFolder:
    """The folder through a new store object: nothing cached."""
    return MboxStore(root, **kw).open_folder(name)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# --- byte-exact round trips --------------------------------------------------------------

BODIES = {
    "from_lines": b"Subject: x\n\nFrom here\nFrom there\nFrom \n",
    "from_first_line": b"From nobody\n\nbody\n",
    "quoted": b"Subject: q\n\n>From a\n>>From b\n>>>From c\n> From d\n>From\n",
    "quoted_first_line": b">>From x\n\n",
    "no_newline": b"Subject: n\n\nlast line",
    "no_newline_from": b"Subject: n\n\nFrom last",
    "blank_lines": b"Subject: b\n\nbody\n\n\n\n",
    "empty": b"",
    "newline": b"\n",
    "two_newlines": b"\n\n",
    "eight_bit": b"Subject: caf\xc3\xa9 \xff\xfe\x00\nX-Bin: \x80\x81\n\n\xe9t\xe9\n",
    "lone_cr": b"Subject: r\n\nline\rmore\r",
    "cr_only": b"x\r",
    "fromage": b"Fromage\n>Fromage\nFrom\n",
    "from_mid_line": b"a From b\n",
    "return_path": b"Return-Path: <a@b.example>\nSubject: r\n\nhi\n",
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_single_message_round_trip(root, name):
    body = BODIES[name]
    # Byte for byte, but for the final newline a message without one is given.
    want = body + b"\n" if body and not body.endswith(b"\n") else body
    folder = MboxStore(root).open_folder("INBOX", create=True)
    key = folder.append(body, NOFLAGS, T0)
    folder.flush()
    assert key == key_of(want)
    again = fresh(root)
    assert list(again.list()) == [key]
    assert again.list()[key].size == len(want)
    assert again.list()[key].arrival == T0
    assert again.fetch(key) == want


def test_all_messages_in_one_file_round_trip(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    bodies = list(BODIES.values()) + list(reversed(BODIES.values()))
    keys = [folder.append(b, NOFLAGS, T0 + i) for i, b in enumerate(bodies)]
    folder.flush()
    again = fresh(root)
    listing = again.list()
    assert list(listing) == keys  # file order; repeated bodies get .1
    for i, (key, body) in enumerate(zip(keys, bodies, strict=True)):
        assert again.fetch(key) == stored_form(body)
        assert listing[key].arrival == T0 + i
    assert again.fingerprints(keys) == {
        k: fingerprint(stored_form(b)) for k, b in zip(keys, bodies, strict=True)
    }


def test_file_bytes_are_mboxrd(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    folder.append(b"Return-Path: <x@y.example>\n\nFrom a\n>From b\n", NOFLAGS, 365 * 86400)
    folder.append(b"tail", NOFLAGS, T0)
    folder.append(b"Return-Path: <with space@y>\n\nz\n", NOFLAGS, T0)
    folder.flush()
    assert read(os.path.join(root, "INBOX")) == (
        b"From x@y.example Fri Jan  1 00:00:00 1971\n"
        b"Return-Path: <x@y.example>\n\n>From a\n>>From b\n\n"
        + FROM_T0
        + b"tail\n\n"  # a final newline added: the next From_ line follows a blank line
        + FROM_T0
        + b"Return-Path: <with space@y>\n\nz\n\n"
    )


def test_crlf_input_is_stored_as_lf(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    key = folder.append(b"Subject: c\r\n\r\nline\r\nFrom x\r\n", NOFLAGS, T0)
    folder.flush()
    lf = b"Subject: c\n\nline\nFrom x\n"
    assert key == key_of(lf)
    assert b"\r" not in read(os.path.join(root, "INBOX"))
    assert fresh(root).fetch(key) == lf


def test_crlf_file_reads_as_lf(root):
    write(
        os.path.join(root, "INBOX"),
        b"From a@b Sun Sep  9 01:46:40 2001\r\nSubject: one\r\n\r\n>From x\r\nend\r\n\r\n"
        b"From a@b Sun Sep  9 01:46:41 2001\r\nSubject: two\r\n\r\nno newline\r\n",
    )
    folder = fresh(root)
    one, two = b"Subject: one\n\nFrom x\nend\n", b"Subject: two\n\nno newline"
    assert folder.list() == {
        key_of(one): Info(NOFLAGS, len(one), T0),
        key_of(two): Info(NOFLAGS, len(two), T0 + 1),
    }
    assert folder.fetch(key_of(one)) == one
    assert folder.fetch(key_of(two)) == two


def test_python_mailbox_crlf_messages_read_as_lf(root):
    path = os.path.join(root, "INBOX")
    os.makedirs(root)
    box = mailbox.mbox(path)
    box.add(b"Subject: crlf\r\n\r\nbody\r\n")
    box.add(b"Subject: lf\n\nbody\n")
    box.close()
    folder = fresh(root)
    assert sorted(folder.fetch(k) for k in folder.list()) == [
        b"Subject: crlf\n\nbody\n",
        b"Subject: lf\n\nbody\n",
    ]


def test_unparsable_from_date_falls_back_to_mtime(root):
    path = os.path.join(root, "INBOX")
    write(path, b"From someone yesterday\nSubject: a\n\nx\n\n")
    os.utime(path, (T0 + 5, T0 + 5))
    assert [i.arrival for i in fresh(root).list().values()] == [T0 + 5]


def test_from_date_with_zone(root):
    write(
        os.path.join(root, "INBOX"),
        b"From a Sun Sep  9 03:46:40 2001 +0200\nSubject: a\n\nx\n\n"
        b"From b Sun Sep 9 01:46 2001\nSubject: b\n\nx\n\n",
    )
    assert sorted(i.arrival for i in fresh(root).list().values()) == [T0 - 40, T0]


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    bodies=st.lists(
        st.lists(
            st.sampled_from([b"From ", b">", b"\n", b"\r", b"\r\n", b"x", b" ", b"F", b"\xff"]),
            max_size=12,
        ).map(b"".join),
        min_size=1,
        max_size=6,
    )
)
def test_random_bodies_round_trip(tmp_path_factory, bodies):
    # Bodies whose LF form still holds CR LF (from CR CR LF) included: they are framed in
    # CRLF when LF framing would misread them.
    root = str(tmp_path_factory.mktemp("mbox"))
    folder = MboxStore(root).open_folder("INBOX", create=True)
    keys = [folder.append(b, NOFLAGS, T0) for b in bodies]
    folder.flush()
    again = fresh(root)
    assert list(again.list()) == keys
    assert [again.fetch(k) for k in keys] == [stored_form(to_lf(b)) for b in bodies]


def test_cr_cr_lf_body_is_framed_in_crlf_and_exact(root):
    # to_lf(b"...\r\r\n") leaves "\r\n" line ends, which under an LF From_ line read as a
    # foreign CRLF message and would lose their CRs: such a message is framed in CRLF.
    cr_cr_lf = b"From: a@example.org\r\r\nSubject: x\r\r\n\r\r\nFrom here\r\r\nbody\r\r\n"
    body = to_lf(cr_cr_lf)
    folder = MboxStore(root).open_folder("INBOX", create=True)
    first = folder.append(BODIES["from_lines"], NOFLAGS, T0)
    key = folder.append(cr_cr_lf, NOFLAGS, T0)
    last = folder.append(BODIES["quoted"], NOFLAGS, T0)
    assert folder.fetch(key) == body
    folder.flush()
    raw = read(os.path.join(root, "INBOX"))
    assert b"\r\n\r\r\n>From here\r\r\nbody\r\r\n\r\n" in raw  # CRLF framing, quoted
    again = fresh(root)
    assert list(again.list()) == [first, key, last]
    assert again.list()[key].size == len(body)
    assert again.fetch(key) == body and key == key_of(body)
    assert again.fetch(last) == BODIES["quoted"]
    again.delete(first)  # the rewrite copies it as it is
    again.flush()
    assert fresh(root).fetch(key) == body
    assert len(mailbox.mbox(os.path.join(root, "INBOX"))) == 2
    mixed = b"a\r\r\nb\n"  # a bare LF line: read as LF, so LF framing is exact
    key = again.append(mixed, NOFLAGS, T0)
    again.flush()
    assert fresh(root).fetch(key) == to_lf(mixed)
    assert read(os.path.join(root, "INBOX")).endswith(b" 2001\na\r\nb\n\n")  # LF-framed


# --- size --------------------------------------------------------------------------------


def test_50_mb_message(root, monkeypatch):
    big = (
        b"Subject: big\n\nFrom the start\n"
        + (b"x" * 75 + b"\n") * (50_000_000 // 76)
        + b">From inside\nno newline"
    )
    folder = MboxStore(root).open_folder("INBOX", create=True)
    small_before = folder.append(msg(1), NOFLAGS, T0)
    big_key = folder.append(big, NOFLAGS, T0)
    small_after = folder.append(msg(2), NOFLAGS, T0)
    folder.flush()
    again = fresh(root)
    listing = again.list()
    assert list(listing) == [small_before, big_key, small_after]
    assert listing[big_key].size == len(big) + 1  # it ends with "no newline": given one
    # fetch reads only the message's byte range, never the whole file
    read_sizes = []
    real_pread = os.pread

    def pread(fd, n, offset):
        read_sizes.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(mbox_module.os, "pread", pread)
    assert again.fetch(small_after) == msg(2)
    assert again.fetch(small_before) == msg(1)
    assert sum(read_sizes) < 1000
    monkeypatch.undo()
    assert again.fetch(big_key) == big + b"\n"


def test_many_messages(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    bodies = [msg(i, b"From line %d\n" % i * (i % 3)) for i in range(3000)]
    keys = [folder.append(b, NOFLAGS, T0 + i) for i, b in enumerate(bodies)]
    folder.flush()
    assert len(set(keys)) == 3000
    again = fresh(root)
    listing = again.list()
    assert list(listing) == keys
    for i, (key, body) in enumerate(zip(keys, bodies, strict=True)):
        assert listing[key].size == len(body)
        assert listing[key].arrival == T0 + i
        assert again.fetch(key) == body


def test_index_is_cached_until_the_file_changes(root, monkeypatch):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    key = folder.append(msg(1), NOFLAGS, T0)
    folder.flush()
    folder.list()
    parses = []
    real_parse = MboxFolder._parse

    def counting_parse(self, fd, st):
        parses.append(1)
        return real_parse(self, fd, st)

    monkeypatch.setattr(MboxFolder, "_parse", counting_parse)
    folder.list()
    folder.fetch(key)
    folder.list()
    assert parses == []
    # another program appends: the next call sees it
    with open(os.path.join(root, "INBOX"), "ab") as f:
        f.write(FROM_T0 + msg(2) + b"\n")
    assert list(folder.list()) == [key, key_of(msg(2))]
    assert parses == [1]


def test_fetch_checks_the_body_against_its_hash(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    one = folder.append(msg(1), NOFLAGS, T0)
    two = folder.append(msg(2), NOFLAGS, T0)
    folder.flush()
    folder.list()
    # Another program changes a byte in place within the index's timestamp resolution:
    # size and times look the same, so only the content hash can tell.
    data = read(folder.path)
    write(folder.path, data.replace(b"body 1", b"BODY 1"))
    folder._stamp = folder._stamp_of(os.stat(folder.path))
    with pytest.raises(MessageError):
        folder.fetch(one)
    assert folder.fetch(two) == msg(2)
    assert folder.fetch(key_of(msg(1).replace(b"body 1", b"BODY 1"))).endswith(b"BODY 1\n")


def test_cursor_says_unchanged_only_for_the_same_file(root, monkeypatch):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    key = folder.append(msg(1), NOFLAGS, T0)
    folder.flush()
    assert folder.cursor() == {}  # no list() yet
    folder.list()
    assert folder.cursor() == {}  # the file changed a moment ago
    monkeypatch.setattr(MboxFolder, "CURSOR_SETTLE", 0.0)
    folder.list()
    cursor = json.loads(json.dumps(folder.cursor()))
    later = fresh(root)
    assert later.unchanged(cursor)
    assert not later.unchanged({})
    # a listing with unflushed changes describes no file on disk
    later.delete(key)
    later.list()
    assert later.cursor() == {}
    assert not later.unchanged(cursor)  # pending changes
    later.flush()
    assert not fresh(root).unchanged(cursor)
    # a same-size rewrite in place (a mail reader marking a message read), even with
    # the modification time put back
    path = folder.path
    write(path, FROM_T0 + b"Status: O\n\nx\n\n")
    st = os.stat(path)
    listed = fresh(root)
    listed.list()
    cursor = listed.cursor()
    assert fresh(root).unchanged(cursor)
    time.sleep(0.05)
    write(path, FROM_T0 + b"Status: R\n\nx\n\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    assert not fresh(root).unchanged(cursor)


# --- other writers and readers --------------------------------------------------------------

MUTT_FILE = (
    b"From alice@example.com Sun Sep  9 01:46:40 2001\n"
    b"From: alice@example.com\nSubject: read and answered\nStatus: RO\nX-Status: A\n"
    b"Content-Length: 5\nLines: 1\n\nhello\n\n"
    b"From bob@example.com Sun Sep  9 01:46:41 2001\n"
    b"From: bob@example.com\nSubject: new\n\n>From the body\n\n"
    b"From carol@example.com Sun Sep  9 01:46:42 2001\n"
    b"Subject: flagged draft deleted\nStatus: O\nX-Status: FTD\n\nbody\nStatus: R\n\n"
)
MUTT_BODIES = [
    b"From: alice@example.com\nSubject: read and answered\nStatus: RO\nX-Status: A\n"
    b"Content-Length: 5\nLines: 1\n\nhello\n",
    b"From: bob@example.com\nSubject: new\n\nFrom the body\n",
    b"Subject: flagged draft deleted\nStatus: O\nX-Status: FTD\n\nbody\nStatus: R\n",
]


def test_mutt_file_reads_with_flags(root):
    write(os.path.join(root, "INBOX"), MUTT_FILE)
    folder = fresh(root)
    listing = folder.list()
    assert list(listing) == [key_of(b) for b in MUTT_BODIES]
    assert [folder.fetch(k) for k in listing] == MUTT_BODIES
    assert [i.flags for i in listing.values()] == [
        {SEEN, ANSWERED},
        set(),
        {FLAGGED, DRAFT, DELETED},  # the Status: R in the body is not a header
    ]
    assert [i.arrival for i in listing.values()] == [T0, T0 + 1, T0 + 2]


def test_python_mailbox_file_reads_right(root):
    path = os.path.join(root, "INBOX")
    os.makedirs(root)
    box = mailbox.mbox(path)
    expected = {}
    for text, flags in [
        (b"Subject: one\n\nbody one\n", "RA"),
        (b"Subject: two\n\nbody two\n\n", ""),
        (b"Subject: three\n\nno newline", "F"),
    ]:
        m = mailbox.mboxMessage(text)
        m.set_flags(flags)
        m.set_from("sender@example.com", time.gmtime(T0))
        expected[box.add(m)] = flags
    box.flush()
    folder = fresh(root)
    listing = folder.list()
    assert len(listing) == 3
    letters = {SEEN: "R", ANSWERED: "A", FLAGGED: "F"}
    got = {
        folder.fetch(k): "".join(sorted(letters[f] for f in i.flags)) for k, i in listing.items()
    }
    want = {box.get_bytes(k): "".join(sorted(f)) for k, f in expected.items()}
    assert got == want
    assert {i.arrival for i in listing.values()} == {T0}
    box.close()


def test_python_mailbox_reads_our_file(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    plain = [msg(1), msg(2, b"\n\n"), b"Subject: x\n\n\xe9\n"]
    for body in plain:
        folder.append(body, NOFLAGS, T0)
    folder.append(b"Subject: f\n\nFrom here\n>From there\n", NOFLAGS, T0)
    folder.append(b"Subject: n\n\nno newline", NOFLAGS, T0)
    folder.flush()
    box = mailbox.mbox(os.path.join(root, "INBOX"))
    got = [box.get_bytes(k) for k in box.iterkeys()]
    box.close()
    assert got[:3] == plain
    # mailbox does not unquote mboxrd and ends every message with a newline
    assert got[3:] == [b"Subject: f\n\n>From here\n>>From there\n", b"Subject: n\n\nno newline\n"]


def test_foreign_file_without_final_newline_then_append(root):
    write(os.path.join(root, "INBOX"), FROM_T0 + b"Subject: a\n\nno end")
    folder = fresh(root)
    first = key_of(b"Subject: a\n\nno end")
    assert list(folder.list()) == [first]
    second = folder.append(msg(2), NOFLAGS, T0)
    folder.flush()
    again = fresh(root)
    assert list(again.list()) == [first, second]
    assert again.fetch(first) == b"Subject: a\n\nno end"
    assert again.fetch(second) == msg(2)


def test_file_that_is_not_mbox_is_refused(root):
    write(os.path.join(root, "notes"), b"just some text\n")
    store = MboxStore(root)
    assert store.list_folders() == []
    with pytest.raises(FolderError, match="not an mbox file"):
        store.open_folder("notes")


# --- duplicates and deletion ---------------------------------------------------------------


def test_duplicates_get_numbered_keys_and_delete_takes_the_last(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    body = msg(7)
    h = key_of(body)
    other = folder.append(msg(1), NOFLAGS, T0)
    assert [folder.append(body, NOFLAGS, T0 + i) for i in range(3)] == [h, f"{h}.1", f"{h}.2"]
    folder.flush()
    folder = fresh(root)
    assert list(folder.list()) == [other, h, f"{h}.1", f"{h}.2"]
    assert folder.delete(h) == f"{h}.2"
    listing = folder.list()
    assert list(listing) == [other, h, f"{h}.1"]
    assert [listing[h].arrival, listing[f"{h}.1"].arrival] == [T0, T0 + 1]  # the last went
    with pytest.raises(MessageError):
        folder.fetch(f"{h}.2")
    folder.flush()
    from_t1 = FROM_T0.replace(b":40", b":41")
    assert read(os.path.join(root, "INBOX")) == (
        FROM_T0 + msg(1) + b"\n" + FROM_T0 + body + b"\n" + from_t1 + body + b"\n"
    )
    again = fresh(root)
    assert list(again.list()) == [other, h, f"{h}.1"]
    # keys that are already gone come back unchanged and delete nothing
    assert again.delete(f"{h}.2") == f"{h}.2"
    assert again.delete(key_of(b"never stored")) == key_of(b"never stored")
    assert again.delete("not-a-key") == "not-a-key"
    assert again.delete(f"{h}.1") == f"{h}.1"
    assert again.delete(f"{h}.1") == f"{h}.1"  # gone now
    again.flush()
    assert list(fresh(root).list()) == [other, h]


def test_appends_and_deletes_in_one_batch(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    dup, gone, kept = msg(1), msg(2), msg(3)
    h = key_of(dup)
    for body in (dup, gone, dup, kept):
        folder.append(body, NOFLAGS, T0)
    folder.flush()
    folder = fresh(root)
    assert folder.delete(h) == f"{h}.1"
    assert folder.append(dup, NOFLAGS, T0) == f"{h}.1"  # takes the freed number
    assert folder.delete(key_of(gone)) == key_of(gone)
    new = folder.append(msg(4), NOFLAGS, T0)
    assert folder.delete(new) == new  # appended and deleted before the flush
    assert list(folder.list()) == [h, key_of(kept), f"{h}.1"]
    folder.flush()
    assert list(folder.list()) == [h, key_of(kept), f"{h}.1"]
    assert not os.path.exists(folder.journal_path)
    assert not os.path.exists(folder.new_path)
    again = fresh(root)
    assert list(again.list()) == [h, key_of(kept), f"{h}.1"]
    assert [again.fetch(k) for k in again.list()] == [dup, kept, dup]


def test_delete_keeps_foreign_bytes_of_other_messages(root):
    path = os.path.join(root, "INBOX")
    write(path, MUTT_FILE)
    folder = fresh(root)
    folder.delete(key_of(MUTT_BODIES[1]))
    folder.flush()
    first, rest = MUTT_FILE.split(b"From bob", 1)
    assert read(path) == first + b"From carol" + rest.split(b"From carol", 1)[1]
    folder = fresh(root)
    folder.delete(key_of(MUTT_BODIES[2]))
    folder.flush()
    assert read(path) == first
    assert [fresh(root).fetch(k) for k in fresh(root).list()] == [MUTT_BODIES[0]]


# --- folder tree --------------------------------------------------------------------------


def test_folder_and_subfolder_both_exist(root):
    store = MboxStore(root)
    for name in ("INBOX", "A", "A/B", "A/B/C", "Z/Y"):
        store.open_folder(name, create=True).append(name.encode(), NOFLAGS, T0)
        store.open_folder(name).flush()
    for name, rel in [
        ("INBOX", "INBOX"),
        ("A", "A"),
        ("A/B", "A.sbd/B"),
        ("A/B/C", "A.sbd/B.sbd/C"),
        ("Z/Y", "Z.sbd/Y"),
    ]:
        assert read(os.path.join(root, rel)) == FROM_T0 + name.encode() + b"\n\n"
    assert not os.path.exists(os.path.join(root, "Z"))
    store2 = MboxStore(root)
    assert store2.list_folders() == ["A", "A/B", "A/B/C", "INBOX", "Z/Y"]
    for name in store2.list_folders():
        folder = store2.open_folder(name)
        assert [folder.fetch(k) for k in folder.list()] == [name.encode() + b"\n"]
    with pytest.raises(FolderError, match="no folder"):
        store2.open_folder("A/nope")


def test_mutt_style_plain_directories(root):
    write(os.path.join(root, "lists", "foo"), MUTT_FILE)
    write(os.path.join(root, "lists", "empty"), b"")
    write(os.path.join(root, "lists", "notes.txt"), b"not mail\n")
    write(os.path.join(root, "lists", "deep", "bar"), FROM_T0 + b"x\n\n")
    write(os.path.join(root, ".hidden"), FROM_T0 + b"x\n\n")
    write(os.path.join(root, "INBOX"), b"")
    write(os.path.join(root, "INBOX.lock"), b"")
    write(os.path.join(root, ".INBOX.mailsync-journal"), b"0 0\n")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, "maildir", sub))
    write(os.path.join(root, "maildir", "cur", "1:2,S"), FROM_T0 + b"x\n")
    store = MboxStore(root)
    assert store.list_folders() == ["INBOX", "lists/deep/bar", "lists/empty", "lists/foo"]
    assert [store.open_folder("lists/foo").fetch(k) for k in store.open_folder("lists/foo").list()]
    # new subfolders of a plain directory go into that directory
    store.open_folder("lists/new", create=True).append(b"n", NOFLAGS, T0)
    store.open_folder("lists/new").flush()
    assert read(os.path.join(root, "lists", "new")) == FROM_T0 + b"n\n\n"
    assert not os.path.exists(os.path.join(root, "lists.sbd"))
    with pytest.raises(FolderError, match="is a directory"):
        store.open_folder("lists", create=True)
    assert "lists/new" in MboxStore(root).list_folders()


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "a//b", "a/", "a/./b", "../x", "a/..", "a\x01b", "tab\t", "x.sbd", "a/b.sbd/c"]
    + [".hidden", "a/.b", "x.lock"],
)
def test_bad_folder_names_are_refused(root, name):
    with pytest.raises(FolderError, match="invalid folder name"):
        MboxStore(root).open_folder(name, create=True)
    assert not os.path.exists(root)


def test_single_file_root(tmp_path):
    path = str(tmp_path / "mbox")
    write(path, MUTT_FILE)
    store = open_store(f"mbox:{path}")
    assert store.list_folders() == ["INBOX"]
    folder = store.open_folder("INBOX")
    assert len(folder.list()) == 3
    with pytest.raises(FolderError, match="single mbox file"):
        store.open_folder("Other", create=True)


def test_missing_root(root):
    assert MboxStore(root).list_folders() == []
    with pytest.raises(ConfigError, match="does not exist"):  # a source: exit 2
        MboxStore(root, read_only=True).list_folders()
    with pytest.raises(FolderError, match="no folder"):
        MboxStore(root).open_folder("INBOX")


# --- flags, read-only --------------------------------------------------------------------------


def test_flags_are_not_persisted(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    assert folder.validity == ""
    assert not any(folder.persists(f) for f in STANDARD_FLAGS | {"work", "$Label1"})
    key = folder.append(msg(1), frozenset({SEEN, FLAGGED}), T0)
    folder.flush()
    before = read(folder.path)
    folder.set_flags(key, frozenset({ANSWERED}), frozenset({SEEN}))
    folder.flush()
    assert read(folder.path) == before
    assert fresh(root).list()[key].flags == frozenset()


def test_read_only_store_refuses_writes(root):
    write(os.path.join(root, "INBOX"), MUTT_FILE)
    store = MboxStore(root, read_only=True)
    folder = store.open_folder("INBOX")
    key = next(iter(folder.list()))
    for call in (
        lambda: folder.append(msg(1), NOFLAGS, T0),
        lambda: folder.delete(key),
        lambda: folder.set_flags(key, frozenset({SEEN}), NOFLAGS),
        lambda: store.open_folder("New", create=True),
    ):
        with pytest.raises(FolderError, match="read-only"):
            call()
    folder.flush()
    assert read(os.path.join(root, "INBOX")) == MUTT_FILE
    assert sorted(os.listdir(root)) == ["INBOX"]


# --- crash recovery and failures ------------------------------------------------------------

CRASHER = textwrap.dedent(
    """
    import os, sys
    from mailsync.stores.mbox import MboxStore
    folder = MboxStore(sys.argv[1]).open_folder("INBOX")
    for i in range(3):
        folder.append(b"Subject: lost %d\\n\\nbody\\n" % i, frozenset(), 0)
    # the fourth message only half written when the power goes
    fd = os.open(folder.path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\\nSubject: half of a mess")
    os._exit(1)
    """
)


def crash(root) -> None:
    result = subprocess.run([sys.executable, "-c", CRASHER, root], capture_output=True)
    assert result.returncode == 1, result.stderr.decode()


def seeded(root) -> tuple[str, bytes, list[str]]:
    folder = MboxStore(root).open_folder("INBOX", create=True)
    keys = [folder.append(msg(i), NOFLAGS, T0) for i in range(2)]
    folder.flush()
    return folder.path, read(folder.path), keys


def test_crash_mid_batch_is_truncated_on_open(root, caplog):
    path, before, keys = seeded(root)
    crash(root)
    journal = os.path.join(root, ".INBOX.mailsync-journal")
    assert os.path.exists(journal)
    assert os.path.exists(path + ".lock")  # left by the dead process
    assert read(path).startswith(before) and len(read(path)) > len(before)
    assert read(path).endswith(b"half of a mess")
    with caplog.at_level(logging.WARNING, logger="mailsync.stores.mbox"):
        folder = fresh(root)
    assert read(path) == before
    assert not os.path.exists(journal)
    assert any("interrupted run" in r.getMessage() for r in caplog.records)
    assert list(folder.list()) == keys
    assert not os.path.exists(path + ".lock")
    key = folder.append(msg(9), NOFLAGS, T0)
    folder.flush()
    assert list(fresh(root).list()) == keys + [key]


def test_crash_seen_by_a_read_only_store(root):
    path, before, keys = seeded(root)
    crash(root)
    after_crash = read(path)
    folder = fresh(root, read_only=True)
    assert list(folder.list()) == keys  # the torn tail is ignored
    assert read(path) == after_crash  # but left alone
    assert list(fresh(root).list()) == keys  # a writable open repairs it
    assert read(path) == before


def test_journal_of_a_replaced_file_is_dropped(root):
    path, before, keys = seeded(root)
    write(os.path.join(root, ".INBOX.mailsync-journal"), b"10 1\n")  # wrong inode
    assert list(fresh(root).list()) == keys
    assert read(path) == before
    assert not os.path.exists(os.path.join(root, ".INBOX.mailsync-journal"))


def test_leftover_rewrite_file_is_removed(root):
    path, before, keys = seeded(root)
    write(os.path.join(root, ".INBOX.mailsync-new"), b"From partial")
    assert list(fresh(root).list()) == keys
    assert not os.path.exists(os.path.join(root, ".INBOX.mailsync-new"))


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EIO])
def test_failed_append_leaves_the_file_as_it_was(root, monkeypatch, errno_):
    path, _, keys = seeded(root)
    folder = fresh(root)
    first = folder.append(msg(5), NOFLAGS, T0)  # the batch and its journal exist now
    before = read(path)
    real_write = os.write
    calls = []

    def failing_write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(mbox_module.os, "write", failing_write)
    with pytest.raises(MessageError) as info:
        folder.append(msg(6) * 100, NOFLAGS, T0)
    monkeypatch.undo()
    assert len(calls) == 2
    if errno_ == errno.ENOSPC:
        assert str(info.value) == f"disk full appending to {path}: free space and rerun"
    assert read(path) == before
    assert list(folder.list()) == keys + [first]
    last = folder.append(msg(7), NOFLAGS, T0)
    folder.flush()
    assert list(fresh(root).list()) == keys + [first, last]


# --- locking ----------------------------------------------------------------------------------


def test_locks_are_held_from_first_write_until_flush(root):
    folder = MboxStore(root).open_folder("INBOX", create=True)
    lock = folder.path + ".lock"
    folder.list()
    assert not os.path.exists(lock)
    folder.append(msg(1), NOFLAGS, T0)
    assert read(lock) == b"%d\n" % os.getpid()
    assert os.path.exists(folder.journal_path)
    folder.flush()
    assert not os.path.exists(lock)
    assert not os.path.exists(folder.journal_path)


def test_dotlock_of_a_live_process_times_out(root, fast_locks):
    path, _, keys = seeded(root)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write(path + ".lock", b"%d\n" % other.pid)
        folder = fresh(root)
        started = time.monotonic()
        with pytest.raises(FolderError) as info:
            folder.list()
        assert time.monotonic() - started >= 0.3
        assert str(info.value) == (
            f"{path} is locked by another program ({path}.lock); try again later"
        )
        with pytest.raises(FolderError, match="locked"):
            folder.append(msg(3), NOFLAGS, T0)
        assert os.path.exists(path + ".lock")
    finally:
        other.kill()
        other.wait()
    assert list(folder.list()) == keys  # a dead process's lock is stale
    assert not os.path.exists(path + ".lock")


def test_the_dotlock_holds_the_pid_from_the_moment_it_exists(root, monkeypatch):
    """A run killed right after its dotlock appeared must leave a lock that names it (an
    empty one would be respected as live for STALE_LOCK_AGE): the lock is written beside
    it first and then linked into place."""
    folder = MboxStore(root).open_folder("INBOX", create=True)
    lock = folder.path + ".lock"
    seen = []
    real_link = os.link

    def link(src, dst, *args, **kwargs):
        real_link(src, dst, *args, **kwargs)
        seen.append(read(dst))  # what a crash at this instant would leave

    monkeypatch.setattr(os, "link", link)
    folder.append(msg(1), NOFLAGS, T0)
    assert seen == [b"%d\n" % os.getpid()]
    assert read(lock) == b"%d\n" % os.getpid()
    folder.flush()
    assert sorted(os.listdir(root)) == ["INBOX"]  # nothing left beside it


def test_a_crashed_holders_dotlock_and_its_leftover_go(root, fast_locks):
    path, _, keys = seeded(root)
    other = subprocess.Popen([sys.executable, "-c", "pass"])
    other.wait()
    write(path + ".lock", b"%d\n" % other.pid)
    leftover = os.path.join(root, f".INBOX.lock.{other.pid}.1234")
    write(leftover, b"%d\n" % other.pid)
    assert list(fresh(root).list()) == keys
    assert not os.path.exists(path + ".lock") and not os.path.exists(leftover)


def test_old_dotlock_is_stale(root, fast_locks):
    path, _, keys = seeded(root)
    write(path + ".lock", b"")
    folder = fresh(root)
    with pytest.raises(FolderError, match="locked"):
        folder.list()  # fresh and without a pid: respected
    old = time.time() - 600
    os.utime(path + ".lock", (old, old))
    assert list(folder.list()) == keys
    assert not os.path.exists(path + ".lock")


def test_kernel_lock_of_another_process_times_out(root, fast_locks):
    path, _, keys = seeded(root)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'r+b'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(60)",
            path,
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(FolderError, match="locked by another program"):
            fresh(root).list()
    finally:
        holder.kill()
        holder.wait()
    assert list(fresh(root).list()) == keys


def test_second_writer_in_the_same_process_waits(root, fast_locks):
    path, _, keys = seeded(root)
    first = fresh(root)
    first.append(msg(3), NOFLAGS, T0)
    with pytest.raises(FolderError, match="locked"):
        fresh(root).list()
    first.flush()
    assert len(fresh(root).list()) == 3


# --- permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0, 0o277])
def test_modes_ignore_the_umask(root, umask):
    old = os.umask(umask)
    try:
        store = MboxStore(root)
        folder = store.open_folder("A/B", create=True)
        folder.append(msg(1), NOFLAGS, T0)
        assert stat.S_IMODE(os.stat(folder.journal_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(folder.path + ".lock").st_mode) == 0o600
        key = folder.append(msg(2), NOFLAGS, T0)
        folder.flush()
        store.open_folder("C", create=True)
        for rel, mode in [("", 0o700), ("A.sbd", 0o700), ("A.sbd/B", 0o600), ("C", 0o600)]:
            assert stat.S_IMODE(os.stat(os.path.join(root, rel)).st_mode) == mode, rel
        folder.delete(key)
        folder.flush()  # rewritten through .A.mailsync-new
        assert stat.S_IMODE(os.stat(folder.path).st_mode) == 0o600
        os.chmod(folder.path, 0o640)  # a mode the user chose survives a rewrite
        folder.append(msg(3), NOFLAGS, T0)
        folder.delete(key_of(msg(3)))
        folder.flush()
        assert stat.S_IMODE(os.stat(folder.path).st_mode) == 0o640
        assert list(fresh(root, "A/B").list()) == [key_of(msg(1))]
    finally:
        os.umask(old)

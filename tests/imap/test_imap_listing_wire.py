"""Listings are read by mailsync's own FETCH reader (imap_wire._GuardedIMAP4.
uid_fetch_listing): ``* n FETCH (UID u FLAGS (...) INTERNALDATE "..." RFC822.SIZE s ...)``
lines parsed without imaplib's line handling or imapclient's lexer, any other shape (a
literal, an item of another name or form) handed to imapclient with the rest of the
answer.  Every test runs both paths over the same responses: what the reader made of a
listing against imapclient's parse_fetch_response of the very data imaplib collected
(ListingSpy), on Dovecot, Cyrus and Courier (where their fixtures run), the fake Gmail,
the hostile server, scripted shapes, and generated lines (Hypothesis)."""

from __future__ import annotations

from collections import Counter

import pytest
from fakegmail import INBOX, FakeGmail
from fakeimap import FakeIMAPServer
from hostile import HostileIMAPServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from imapclient.response_parser import _convert_INTERNALDATE, parse_fetch_response
from imaptools import Msg, maildir_bodies, message, run_measured, seed, when

from mailsync import net as netmod
from mailsync.errors import FolderError
from mailsync.message import to_crlf, to_lf
from mailsync.stores import imap_wire
from mailsync.stores.imap import IMAPStore
from mailsync.stores.imap_gmail import label_keyword

PASSWORD = "secret"


class ListingSpy:
    """Beside every listing the reader made, imapclient's parse of the same data: each
    listing counted as `read` (by the reader) or `handed_on` (to imapclient), and any
    difference between the two kept in `differences`."""

    def __init__(self, monkeypatch):
        self.read = 0
        self.handed_on = 0
        self.differences: list[tuple] = []
        self.names: set[bytes] = set()  # the items the reader read
        original = imap_wire._GuardedIMAP4.uid_fetch_listing

        def spy(imap, *args, literal_budget=None):
            typ, data, parsed = original(imap, *args, literal_budget=literal_budget)
            if literal_budget is not None:  # (a body piece: imaplib's, not a listing)
                pass
            elif parsed is None:
                self.handed_on += 1
            else:
                self.read += 1
                self.names.update(name for record in parsed.values() for name in record)
                expected = parse_fetch_response(data, False, False)
                if parsed != expected:
                    self.differences.append((data, parsed, dict(expected)))
            return typ, data, parsed

        monkeypatch.setattr(imap_wire._GuardedIMAP4, "uid_fetch_listing", spy)


def open_store(url: str, password: str, read_only: bool = True) -> IMAPStore:
    netmod._PASSWORDS.clear()
    store = IMAPStore(url, read_only=read_only)
    store._password = password
    return store


# -- real servers ----------------------------------------------------------------------------

FLAGGED = {
    1: frozenset(),
    2: frozenset({"\\Seen"}),
    3: frozenset({"\\Answered", "\\Flagged", "\\Seen", "$Forwarded"}),
    4: frozenset({"\\Draft", "todo-1", "Junk", "$label1"}),
}


@pytest.fixture(params=["dovecot", "cyrus", "courier"])
def server(request):
    return request.getfixturevalue(f"{request.param}_server")


def test_real_servers_listings_are_read_by_the_reader_as_imapclient_reads_them(server, monkeypatch):
    """Dovecot, Cyrus and Courier: every listing (and, with CONDSTORE, the listing of
    what changed, MODSEQ and all) is read by our reader, with imapclient's result."""
    user = server.add_user()
    seed(
        server,
        user,
        {
            "INBOX": [
                Msg(message(n), flags, when(2020, 1, n, offset_hours=n - 2))
                for n, flags in FLAGGED.items()
            ]
        },
    )
    spy = ListingSpy(monkeypatch)
    url = f"{server.url('imaps', user)}?cafile={server.cafile}"
    with open_store(url, user.password, read_only=False) as store:
        folder = store.open_folder("INBOX")
        listing = folder.list()
        cursor = folder.cursor()
        keys = sorted(listing, key=int)
        folder.set_flags(keys[0], frozenset({"\\Flagged", "later"}), frozenset())
        folder.flush()
        again = folder.list_since(cursor, {k: info.flags for k, info in listing.items()})
        condstore = store.has("CONDSTORE")
    assert [listing[k].flags - {"\\Recent"} for k in keys] == list(FLAGGED.values())
    assert [listing[k].arrival for k in keys] == [
        when(2020, 1, n, offset_hours=n - 2).timestamp() for n in FLAGGED
    ]
    assert again[keys[0]].flags >= {"\\Flagged", "later"}
    assert spy.differences == []
    assert spy.read >= 2 and spy.handed_on == 0, (spy.read, spy.handed_on)
    assert (b"MODSEQ" in spy.names) == condstore, spy.names


# -- the fake Gmail: labels, quoted and escaped -------------------------------------------


def test_gmail_labels_quoted_and_escaped_are_read_as_imapclient_reads_them(monkeypatch):
    """X-GM-LABELS as Gmail sends them: system labels (\\\\Important), atoms, quoted
    strings with spaces, escaped quotes and backslashes, modified UTF-7; X-GM-MSGID."""
    labels = ["Work", "two words", 'say "hi"', "back\\slash", "Zürich", "a(b)"]
    with FakeGmail(labels=labels) as gmail:
        for n, label in enumerate(labels):
            gmail.deliver(to_crlf(message(n)), labels=(INBOX, label, "\\Important"))
        spy = ListingSpy(monkeypatch)
        url = gmail.url(query="tls=none&gmail_labels=keywords")
        with open_store(url, gmail.password) as store:
            listings = {name: store.open_folder(name).list() for name in store.list_folders()}
    (listing,) = [found for found in listings.values() if len(found) == len(labels)]
    keywords = Counter(flag for info in listing.values() for flag in info.flags)
    assert all(keywords[label_keyword(label)] == 1 for label in labels), keywords
    assert all(info.account_id for info in listing.values())
    assert spy.differences == []
    assert spy.read >= 1 and spy.handed_on == 0, (spy.read, spy.handed_on)


# -- scripted shapes: what the reader reads, what it hands on --------------------------------

DATE = b'"02-Jan-2020 03:04:05 +0100"'


def answer_with(lines: list[bytes]):
    """A fault for FakeIMAPServer answering the listing FETCH (FLAGS asked for) with
    these lines, and everything else as usual."""

    def fault(server, conn, command, args):
        if command == "UID FETCH" and "FLAGS" in str(args):

            def act(send, tag, session):
                for line in lines:
                    send(line)
                send(f"{tag} OK done\r\n")

            return act
        return None

    return fault


SHAPES = {
    # Items in another order, a keyword and an escaped quoted date; an unsolicited FETCH
    # about message 1 between (no UID: merged into message 1, as imapclient does).
    "any order": (
        [
            b"* 1 FETCH (FLAGS (\\Seen $Forwarded) RFC822.SIZE 10 UID 1 INTERNALDATE "
            + DATE
            + b")\r\n",
            b"* 1 FETCH (FLAGS (\\Seen \\Flagged))\r\n",
            b'* 2 FETCH (INTERNALDATE "02-Jan-2020 03:04:05 +0000" UID 2 RFC822.SIZE 20 '
            b"FLAGS ())\r\n",
        ],
        True,
    ),
    "NIL date, MODSEQ": (
        [b"* 1 FETCH (UID 1 MODSEQ (12345678901) FLAGS () RFC822.SIZE 10 INTERNALDATE NIL)\r\n"],
        True,
    ),
    # A date as a literal: imapclient's, with the rest of the answer.
    "a literal": (
        [
            b"* 1 FETCH (UID 1 FLAGS (\\Seen) RFC822.SIZE 10)\r\n",
            b"* 2 FETCH (UID 2 FLAGS () RFC822.SIZE 20 INTERNALDATE {26}\r\n"
            b"02-Jan-2020 03:04:05 +0100)\r\n",
        ],
        False,
    ),
    "an item of another name": (
        [b"* 1 FETCH (UID 1 FLAGS () RFC822.SIZE 10 X-UNKNOWN 5)\r\n"],
        False,
    ),
    "a UID of a leading zero": ([b"* 1 FETCH (UID 01 FLAGS () RFC822.SIZE 10)\r\n"], False),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_scripted_shapes_read_or_handed_on_give_imapclients_result(shape, monkeypatch):
    lines, ours = SHAPES[shape]
    spy = ListingSpy(monkeypatch)
    boxes = {"INBOX": [to_crlf(message(1)), to_crlf(message(2))]}
    with (
        FakeIMAPServer(boxes, fault=answer_with(lines)) as fake,
        open_store(fake.url(), PASSWORD) as store,
    ):
        listing = store.open_folder("INBOX").list()
    assert spy.differences == []
    assert (spy.read, spy.handed_on) == ((1, 0) if ours else (0, 1))
    assert "1" in listing
    if shape == "any order":
        assert listing["1"].flags == {"\\Seen", "\\Flagged"}
        assert listing["1"].arrival == when(2020, 1, 2, 3, 4, 5, offset_hours=1).timestamp()
        assert listing["2"].size == 20
    if shape == "a literal":
        assert listing["2"].arrival == when(2020, 1, 2, 3, 4, 5, offset_hours=1).timestamp()


def test_hostile_invalid_uids_and_garbage_go_to_imapclient_as_before(monkeypatch, mailenv):
    """UID -1 is not the reader's (imapclient's int() reads it; the message is left out
    with a warning, as before); UID 0 is (the same warning); a response that does not
    parse fails the folder with imapclient's error, as before."""
    spy = ListingSpy(monkeypatch)
    boxes = {"INBOX": [to_crlf(message(1))]}
    with (
        HostileIMAPServer(boxes, invalid_uids={"INBOX": ["0", "-1"]}) as hostile,
        open_store(hostile.url(), PASSWORD) as store,
    ):
        listing = store.open_folder("INBOX").list()
    assert list(listing) == ["1"]
    assert spy.differences == [] and spy.handed_on == 1

    def garbage(server, conn, command, args):
        return "garbage" if command == "UID FETCH" and "FLAGS" in str(args) else None

    with (
        FakeIMAPServer(boxes, fault=garbage) as fake,
        open_store(fake.url(), PASSWORD) as store,
        pytest.raises(FolderError, match="a response mailsync cannot read"),
    ):
        store.open_folder("INBOX").list()


def test_endless_listing_responses_are_bounded_as_any_untagged(mailenv):
    """The reader charges each response to the command's untagged-response limit as
    imaplib does: a server answering a listing with endless responses fails that folder
    alone, past the limit (without the charge: an endless read, killed at the timeout)."""

    def flood(send):
        line = b"* 1 FETCH (UID %d FLAGS (\\Seen) RFC822.SIZE 10 INTERNALDATE " + DATE + b")\r\n"
        chunk = b"".join(line % uid for uid in range(3, 5003))
        while True:
            send(chunk)  # raises once the client has gone

    def fault(server, conn, command, args):
        if command != "UID FETCH" or "FLAGS" not in str(args):
            return None

        def act(send, tag, session):
            if session["selected"].name == "Bad":
                flood(send)
            server.dispatch(send, tag, session, command, args)

        return act

    body = to_crlf(message(1))
    with FakeIMAPServer({"INBOX": [body], "Bad": [body]}, fault=fault) as fake:
        result, peak = run_measured(
            "pull", fake.url(query="tls=none&timeout=5"), f"maildir:{mailenv / 'm'}",
            password=PASSWORD, home=mailenv, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "bytes of untagged responses" in result.stderr
    assert peak < 100 * 1000 * 1000, peak
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter([to_lf(body)])


# -- generated lines ---------------------------------------------------------------------

# Mostly what the reader reads, some of what it must hand on: names it does not know;
# atoms with what imapclient's lexer treats specially (backslash, ] [ { } % * ", digits
# with leading zeros or too many, NIL, 8-bit and control bytes, tabs); quoted strings
# with escapes; nested lists; double spaces, or none.
KNOWN = sorted(name.decode() for name in imap_wire.LISTING_ITEMS)
NAMES = st.sampled_from(KNOWN * 3 + ["BODY[]", "uid", "ENVELOPE", "X-UNKNOWN"])
GOOD_ATOM = [b"a", b"Z", b"\\", b"$", b"]", b"}", b"*", b"0", b"7", b"-", b".", b"\x80", b"\x7f"]
BAD_ATOM = [b"[", b"{", b"%", b"\t", b"\x01", b"\x00"]
ATOM_BYTES = st.sampled_from(GOOD_ATOM * 3 + BAD_ATOM + [b"NIL", b"Seen", b"1" * 23])
QUOTED_BYTES = st.sampled_from(
    [b"a", b" ", b"\\\\", b'\\"', b"\\x", b"(", b")", b"{5}", b"\x80", b"NIL", b"0", b"%"]
)
atom = st.lists(ATOM_BYTES, min_size=1, max_size=4).map(b"".join)
quoted = st.lists(QUOTED_BYTES, max_size=4).map(lambda parts: b'"' + b"".join(parts) + b'"')
word = st.one_of(atom, quoted)
space = st.sampled_from([b" "] * 8 + [b"  ", b""])
listed = st.lists(word, max_size=4).map(lambda words: b"(" + b" ".join(words) + b")")
value = st.one_of(word, listed, st.just(b"((a) b)"), st.just(DATE), st.just(b"NIL"))
item = st.tuples(NAMES.map(str.encode), space, value)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.sampled_from([b"1", b"12", b"007", b"99999999999"]),
    items=st.lists(item, max_size=5),
)
@example(seq=b"1", items=[(b"FLAGS", b" ", b"({5} a{ \\Seen)")])  # { starts a literal
@example(seq=b"1", items=[(b"X-GM-LABELS", b" ", b'("a\\\\b" "q\\"" "\\x" "")')])
@example(seq=b"007", items=[(b"X-GM-MSGID", b" ", b"007"), (b"FLAGS", b" ", b"(NIL 0 01)")])
@example(seq=b"1", items=[(b"UID", b" ", b"5"), (b"UID", b" ", b"6"), (b"MODSEQ", b" ", b"(9)")])
def test_generated_lines_the_reader_reads_equal_imapclients_reading(seq, items):
    """Whatever the reader accepts, imapclient reads without error and to the same
    result; whatever else it refuses (None), never raises."""
    inner = b" ".join(name + sep + val for name, sep, val in items)
    line = b"* " + seq + b" FETCH (" + inner + b")\r\n"
    read = imap_wire.listing_response(line, _convert_INTERNALDATE)
    if read is None:
        return
    number, kept, record = read
    assert kept == line[2:-2].replace(b" FETCH", b"", 1)  # what imaplib keeps
    assert {number: record} == parse_fetch_response([kept], False, False)


def test_the_usual_shapes_are_the_readers():
    """Dovecot's, Gmail's and CONDSTORE's lines are read (not handed on): the generated
    test above is not vacuous."""
    lines = [
        b"* 3 FETCH (UID 7 FLAGS (\\Seen \\Recent $Forwarded) RFC822.SIZE 945 "
        b'INTERNALDATE "05-Jan-2020 03:39:33 +0000")\r\n',
        b"* 3 FETCH (UID 7 MODSEQ (45) FLAGS ())\r\n",
        b'* 1 FETCH (X-GM-MSGID 1278455344230334865 X-GM-LABELS ("\\\\Important" "two words" Work '
        b'"say \\"hi\\"") UID 1 FLAGS () RFC822.SIZE 3 '
        b'INTERNALDATE "05-Jan-2020 03:39:33 -0800")\r\n',
    ]
    for line in lines:
        read = imap_wire.listing_response(line, _convert_INTERNALDATE)
        assert read is not None, line
        assert {read[0]: read[2]} == parse_fetch_response([read[1]], False, False)
    gmail = imap_wire.listing_response(lines[2], _convert_INTERNALDATE)[2]
    assert gmail[b"X-GM-LABELS"] == (b"\\Important", b"two words", b"Work", b'say "hi"')

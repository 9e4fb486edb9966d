"""Bodies in a batch are read off the wire by mailsync's own FETCH reader
(imap_wire._GuardedIMAP4.uid_fetch_bodies): literals straight from the socket's buffered
reader, CRLF -> LF as they arrive, never through imapclient's lexer.  Byte for byte
whatever the shape of the response and however the bytes are split across reads: a
literal split in mid-CRLF, one of 0 bytes, BODY[] before UID, items before or after the
body, a NIL body, untagged responses about other messages in between (the scripted fake,
fakeimap.py), and on a real Dovecot with the reader's chunk made tiny."""

from __future__ import annotations

import time
from collections import Counter

import imapclient.response_parser
import pytest
from fakeimap import FakeIMAPServer
from imaptools import maildir_bodies, message, run, run_measured
from test_imap_large import append_raw, server_wire, store_for

from mailsync.errors import MessageError
from mailsync.message import to_crlf, to_lf
from mailsync.stores import imap_wire
from mailsync.stores.imap import IMAPStore

PASSWORD = "secret"

# Bodies with the CR/LF cases the reader's chunking can split: CRLF, lone CRs, CRLF CRLF,
# a lone CR at the very end.  (CR CR LF: see the last test; the Maildir store turns it
# into LF on its own, a second to_lf.)
BODY_ONE = to_crlf(message(1)) + b"lone\rcr\r\nand \r\n\r\n\rx\r"
BODY_TWO = to_crlf(message(2, extra=b"y" * 300 + b"\n"))


class ParserSpy:
    """What imapclient's FETCH parser is given: the BODY[] literals among it."""

    def __init__(self, monkeypatch):
        self.literals: list[bytes] = []
        original = imapclient.response_parser.parse_fetch_response

        def parse(text, *args, **kwargs):
            self.literals += [item[1] for item in text if isinstance(item, tuple)]
            return original(text, *args, **kwargs)

        monkeypatch.setattr(imapclient.response_parser, "parse_fetch_response", parse)


# -- the scripted fake: every shape, split across reads --------------------------------------


def split_sends(send, data: bytes, cuts: list[int]) -> None:
    """data in several writes, a pause between them so that they arrive as separate reads."""
    start = 0
    for cut in [*cuts, len(data)]:
        send(data[start:cut])
        start = cut
        time.sleep(0.02)


def literal(body: bytes) -> bytes:
    return b"{%d}\r\n" % len(body) + body


# case -> (how the server answers the body FETCH of messages 1 and 2, what lands in INBOX)
def answer_split(send, tag):
    one = b"* 1 FETCH (UID 1 BODY[] " + literal(BODY_ONE) + b")\r\n"
    crlf = one.index(b"\r\n", 40)  # a CRLF inside the body, split between two reads
    split_sends(send, one, [10, crlf + 1, crlf + 2, len(one) - 4, len(one) - 3])
    split_sends(send, b"* 2 FETCH (UID 2 BODY[] " + literal(BODY_TWO) + b")\r\n", [30])
    send(f"{tag} OK done\r\n")


def answer_shapes(send, tag):
    send(b"* 1 FETCH (BODY[] " + literal(BODY_ONE) + b" UID 1)\r\n")  # BODY[] before UID
    send(b"* 2 FETCH (FLAGS (\\Seen) UID 2 BODY[] " + literal(BODY_TWO) + b")\r\n")
    send(f"{tag} OK done\r\n")


def answer_items_after(send, tag):
    # Items after the body, one of them a second literal.
    send(b"* 1 FETCH (UID 1 BODY[] " + literal(BODY_ONE) + b" FLAGS (\\Seen))\r\n")
    header = BODY_TWO[: BODY_TWO.index(b"\r\n\r\n") + 4]
    send(b"* 2 FETCH (UID 2 BODY[] " + literal(BODY_TWO) + b" BODY[HEADER] ")
    send(literal(header) + b" RFC822.SIZE %d)\r\n" % len(BODY_TWO))
    send(f"{tag} OK done\r\n")


def answer_others_between(send, tag):
    send(b"* 3 EXISTS\r\n* 3 FETCH (FLAGS (\\Seen))\r\n")  # (no UID: about another message)
    send(b"* 1 FETCH (UID 1 BODY[] " + literal(BODY_ONE) + b")\r\n")
    send(b"* 3 FETCH (UID 9 FLAGS ())\r\n* 3 EXPUNGE\r\n* OK [ALERT] still here\r\n")
    send(b"* 2 FETCH (UID 2 BODY[] " + literal(BODY_TWO) + b")\r\n")
    send(f"{tag} OK done\r\n")


def answer_empty(send, tag):
    send(b"* 1 FETCH (UID 1 BODY[] {0}\r\n)\r\n")
    send(b"* 2 FETCH (UID 2 BODY[] " + literal(BODY_TWO) + b")\r\n")
    send(f"{tag} OK done\r\n")


def answer_nil(send, tag):
    send(b"* 1 FETCH (UID 1 BODY[] NIL)\r\n")
    send(b"* 2 FETCH (UID 2 BODY[] " + literal(BODY_TWO) + b")\r\n")
    send(f"{tag} OK done\r\n")


CASES = {
    "split": (answer_split, [BODY_ONE, BODY_TWO]),
    "body first, items before": (answer_shapes, [BODY_ONE, BODY_TWO]),
    "items after, a second literal": (answer_items_after, [BODY_ONE, BODY_TWO]),
    "other messages between": (answer_others_between, [BODY_ONE, BODY_TWO]),
    "empty literal": (answer_empty, [b"", BODY_TWO]),
    "NIL": (answer_nil, [BODY_TWO]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_shape_of_a_body_response_is_read_byte_for_byte(case, mailenv):
    answer, expected = CASES[case]

    def fault(server, conn, command, args):
        if command == "UID FETCH" and "BODY.PEEK[]" in str(args):
            return lambda send, tag, session: answer(send, tag)
        return None

    with FakeIMAPServer({"INBOX": [BODY_ONE, BODY_TWO]}, fault=fault) as fake:
        result = run("pull", fake.url(), f"maildir:{mailenv / 'm'}", password=PASSWORD)
        assert any("BODY.PEEK[]" in line for line in fake.commands())
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter(to_lf(b) for b in expected)
    if case == "NIL":
        assert result.exit_code == 1, result.output
        assert "INBOX: the server sent no body for UID 1" in result.stderr
    else:
        assert result.exit_code == 0, result.output


def test_a_connection_lost_in_mid_literal_is_retried(mailenv):
    """EOF inside a body literal (our reader's, not imaplib's) is a lost connection:
    reconnect, fetch again, every message arrives once."""
    dropped = []

    def fault(server, conn, command, args):
        if command == "UID FETCH" and "BODY.PEEK[]" in str(args) and not dropped:
            dropped.append(conn)
            return "drop"
        return None

    with FakeIMAPServer({"INBOX": [BODY_ONE, BODY_TWO]}, fault=fault) as fake:
        result = run("pull", fake.url(), f"maildir:{mailenv / 'm'}", password=PASSWORD)
    assert result.exit_code == 0, result.output
    assert "connection lost during fetch" in result.stderr
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter([to_lf(BODY_ONE), to_lf(BODY_TWO)])


# -- Dovecot: chunk boundaries everywhere ------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_bodies_from_dovecot_equal_to_lf_whatever_the_chunk(chunk, dovecot_server, monkeypatch):
    """Dovecot sends "* n FETCH (UID u BODY[] {size}": every body of the batch comes
    through our reader (imapclient's parser sees no literal), and reading it `chunk`
    bytes at a time puts every CRLF, CR CR LF and lone CR of it across a chunk boundary
    somewhere, byte-exact all the same."""
    user = dovecot_server.add_user()
    bodies = [BODY_ONE[:-1] + b"x", BODY_TWO, b"Subject: s\r\n\r\n\r\n\r\r\n" * 9 + b"end"]
    for body in bodies:
        append_raw(dovecot_server, user, body)
    wire = server_wire(dovecot_server, user)
    monkeypatch.setattr(imap_wire, "LITERAL_CHUNK", chunk)
    spy = ParserSpy(monkeypatch)
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        keys = sorted(folder.list(), key=int)
        got = dict(folder.fetch_many(keys))
    assert len(keys) == 3
    for key in keys:
        assert not isinstance(got[key], MessageError), got[key]
        assert got[key] == to_lf(wire[int(key)]), key
    assert spy.literals == []


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_cr_cr_lf_and_a_final_cr_across_chunks(chunk, monkeypatch):
    """What Dovecot will not store (CR CR LF, which it turns into CRLF): read `chunk`
    bytes at a time, the result is to_lf() of the whole literal (the fake's server)."""
    bodies = [b"a\r\r\nb\r\r\r\n\r\n\rc\r", b"\r\n" * 5, b"\r", b"x\r\r"]
    monkeypatch.setattr(imap_wire, "LITERAL_CHUNK", chunk)
    spy = ParserSpy(monkeypatch)
    with FakeIMAPServer({"INBOX": bodies}) as fake:
        store = IMAPStore(fake.url(), read_only=True)
        store._password = PASSWORD
        with store:
            folder = store.open_folder("INBOX")
            got = dict(folder.fetch_many(sorted(folder.list(), key=int)))
    assert [got[key] for key in sorted(got, key=int)] == [to_lf(b) for b in bodies]
    assert spy.literals == []


def test_endless_body_responses_are_bounded_as_any_untagged(mailenv):
    """Our reader charges each body response to the command's untagged-response limit,
    as imaplib's path does: a server answering a body FETCH with endless empty bodies
    for UIDs nobody asked for fails that folder alone, past the limit (without the
    charge: an endless read, the child killed at the timeout)."""

    def flood(send, tag):
        chunk = b"".join(b"* 1 FETCH (UID %d BODY[] {0}\r\n)\r\n" % uid for uid in range(3, 5003))
        while True:
            send(chunk)  # raises once the client has gone

    def fault(server, conn, command, args):
        if command != "UID FETCH" or "BODY.PEEK[]" not in str(args):
            return None

        def act(send, tag, session):
            if session["selected"].name == "Bad":
                flood(send, tag)
            server.dispatch(send, tag, session, command, args)

        return act

    boxes = {"INBOX": [BODY_TWO], "Bad": [BODY_ONE, BODY_TWO]}
    with FakeIMAPServer(boxes, fault=fault) as fake:  # (a process: a hang fails the test)
        result, peak = run_measured(
            "pull", fake.url(query="tls=none&timeout=5"), f"maildir:{mailenv / 'm'}",
            password=PASSWORD, home=mailenv, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "bytes of untagged responses" in result.stderr
    assert peak < 60 * 1000 * 1000, peak
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter([to_lf(BODY_TWO)])
    assert not maildir_bodies(mailenv / "m").get("Bad")

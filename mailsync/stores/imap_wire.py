"""The IMAP wire, bounded: imaplib's connection made safe against a hostile server (or
anyone on the path before STARTTLS) from the first byte it reads, so that it can neither
hang a run nor fill its memory.  Every line and literal has a deadline that grows with
the bytes that arrive (net.Pace); lines, literals and the untagged responses to one
command have size limits, small ones before login.  Breaking a limit is _Malformed (the
connection is dropped); a literal beyond the budget a command set is _Oversized (the
caller asks again in bounded pieces).  Two kinds of FETCH response, the bulk of a pull,
are read here rather than by imaplib and imapclient, under the same bounds: bodies in a
batch (uid_fetch_bodies) and listings (uid_fetch_listing), any shape they do not know
left to imapclient.  UID sets are written and read here too, a set the server sends
counted before it is expanded.  imap_connection.py builds on this.
"""

from __future__ import annotations

import functools
import imaplib
import io
import re
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from mailsync.crashhook import step
from mailsync.net import Pace

if TYPE_CHECKING:  # (imapclient is imported late: _client_class)
    from _typeshed import WriteableBuffer
    from imapclient import IMAPClient

# What one connection accepts from the server (a hostile one included), from the first
# byte it reads: see _GuardedIMAP4.
MAX_LITERAL = 1 << 30  # one literal, and all literals of one response together
MAX_LINE = 32 * 1024 * 1024  # one line (imaplib's 1 MB is too small for big SEARCH results)
PREAUTH_LIMIT = 64 * 1024  # a line, a literal, a response, before login
RESPONSE_BYTES = 16 * 1024 * 1024  # untagged responses to one command (lines, plus
RESPONSE_PER_MESSAGE = 1024  # this for each message the selected folder holds, up to
MAX_RESPONSE = 1 << 30  # this)
RESPONSE_ENTRY = 64  # what imaplib keeps per untagged response besides its bytes
MAX_UID = 2**32 - 1  # UIDs are 32-bit non-zero numbers (RFC 3501)
LITERAL_CHUNK = 1 << 20  # a body literal is read and turned CRLF -> LF this much at a time

# A listing response, "* 12 FETCH (UID 34 FLAGS (\\Seen) ...)" on one line, no literal:
# the sequence number, then what imaplib keeps of it ("(UID 34 ...)") and its items.
_LISTING_RESPONSE = re.compile(rb"\* (\d{1,10}) FETCH (\((.+)\))\r\n")
# Its items, as imapclient's lexer reads them (response_lexer.py), and no other shape: a
# name, a space, a value (an atom, NIL or a number; a quoted string, escapes and all; a
# list of those), a space or the end.  An atom is what the lexer takes for one word: any
# byte but controls, space and ( ) % " [ (so never a nested list); and no { either, which
# imapclient reads as a literal's size wherever it starts a word.
_ATOM = rb'[^\x00-\x20()%"\[{]+'
_QUOTED = rb'"(?:[^"\\]|\\.)*"'
_WORD = _QUOTED + rb"|" + _ATOM
_LISTING_ITEM = re.compile(
    rb"([A-Z0-9.-]+) ("
    + _WORD
    + rb"|\((?:(?:"
    + _WORD
    + rb")(?: (?:"
    + _WORD
    + rb"))*)?\))(?: |\Z)",
    re.S,
)
_LIST_WORD = re.compile(_WORD, re.S)
_ESCAPED = re.compile(rb'\\([\\"])')
# The items a listing asks for (imap_folder, imap_gmail): any other name (BODY[...],
# ENVELOPE, ...) is imapclient's to read.
LISTING_ITEMS = frozenset(
    {
        b"UID",
        b"FLAGS",
        b"INTERNALDATE",
        b"RFC822.SIZE",
        b"MODSEQ",
        b"X-GM-MSGID",
        b"X-GM-THRID",
        b"X-GM-LABELS",
    }
)

# A body in a batch as Dovecot and most servers send it, "* 12 FETCH (UID 34 BODY[] {5678}"
# (numbers bounded: a line of a million digits is not a number to convert).  Any other
# shape (BODY[] before UID, other items first, NIL) goes through imaplib's reader.
_BODY_RESPONSE = re.compile(rb"\* (\d{1,10}) FETCH \(UID (\d{1,10}) BODY\[\] \{(\d{1,12})\}\r\n")


def _listing_word(word: bytes) -> Any:
    """One word of a listing item as imapclient's parser makes it (response_parser.atom):
    a quoted string unquoted, its backslash escapes of \\ and " undone (any other
    backslash kept); NIL None; digits an int (but not with a leading 0); an atom bytes.
    _NotListing for a number of over 20 digits (imapclient's to refuse as it sees fit)."""
    if word[:1] == b'"':
        inner = word[1:-1]
        return _ESCAPED.sub(rb"\1", inner) if b"\\" in inner else inner
    if word == b"NIL":
        return None
    if word.isdigit() and (word[:1] != b"0" or len(word) == 1):
        if len(word) > 20:
            raise _NotListing
        return int(word)
    return word


class _NotListing(Exception):
    """A FETCH response the listing reader leaves to imaplib and imapclient."""


def listing_response(line: bytes, internaldate: Any) -> tuple[int, bytes, dict] | None:
    """(seq, what imaplib keeps of it, {b"SEQ": seq, item: value}) of one line read off
    the wire (CRLF included) if it is a FETCH response of a listing's shape, else None:
    see _listing_items."""
    match = _LISTING_RESPONSE.fullmatch(line)
    if match is None:
        return None
    seq = int(match.group(1))
    try:
        record = _listing_items(match.group(3), seq, internaldate)
    except _NotListing:
        return None
    return seq, match.group(1) + b" " + match.group(2), record  # ("12 (UID 34 ...)")


def _listing_items(items: bytes, seq: int, internaldate: Any) -> dict[bytes, Any]:
    """{b"SEQ": seq, item: value} of the items of one listing response, exactly as
    imapclient's parse_fetch_response(normalise_times=False, uid_is_key=False) makes
    them (`internaldate`: its _convert_INTERNALDATE); _NotListing for any item of
    another shape or name (LISTING_ITEMS)."""
    record: dict[bytes, Any] = {b"SEQ": seq}
    pos, end = 0, len(items)
    while pos < end:
        match = _LISTING_ITEM.match(items, pos)
        if match is None or match.group(1) not in LISTING_ITEMS:
            raise _NotListing
        name, value = match.group(1, 2)
        pos = match.end()
        if value[:1] == b"(":
            record[name] = tuple(
                _listing_word(w) for w in _LIST_WORD.findall(value, 1, len(value) - 1)
            )
            if name in (b"UID", b"INTERNALDATE"):
                raise _NotListing  # (a list there: imapclient's error)
            continue
        word = _listing_word(value)
        if name == b"UID":
            if not isinstance(word, int):  # (-1, 007: imapclient's int(), or its error)
                raise _NotListing
        elif name == b"INTERNALDATE":
            if word is not None and not isinstance(word, bytes):
                raise _NotListing
            word = internaldate(word, False)
        record[name] = word
    return record


class _Listing:
    """What uid_fetch_listing's reader has read so far."""

    def __init__(self, internaldate: Any):
        self.internaldate = internaldate  # imapclient's _convert_INTERNALDATE
        self.parsed: dict[int, dict[bytes, Any]] = {}
        self.count = 0  # responses read


class _Malformed(Exception):
    """The server sent something mailsync cannot parse."""


class _Oversized(Exception):
    """A literal larger than the command that asked for it allows (see
    _GuardedIMAP4.literal_budget).  Raised before any of it is read: the connection is
    dropped, and the caller asks again in bounded pieces."""


class _PacedReader(io.RawIOBase):
    """The socket as imaplib reads it, every recv under the connection's Pace (a deadline
    that grows with the bytes that arrive): a server dripping a byte at a time, each
    within the socket timeout, is given up instead of waited for forever."""

    def __init__(self, sock: socket.socket, pace: Pace, replaced: io.BufferedReader):
        self._sock, self._pace, self._replaced = sock, pace, replaced

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        return self._pace.recv_into(self._sock, buffer)

    def close(self) -> None:
        if not self.closed:
            self._replaced.close()  # the makefile() this replaces holds the socket open
        super().close()


class _GuardedIMAP4(imaplib.IMAP4):
    """imaplib's connection, bounded from the first byte it reads (the greeting comes
    before STARTTLS, so from anyone on the path):

    * every line and literal is read under a Pace (net.MIN_RATE after the first
      `timeout` seconds);
    * before login a line, a literal and all untagged responses to one command are at
      most PREAUTH_LIMIT bytes; after it a line is at most MAX_LINE, a literal and the
      literals of one response together at most MAX_LITERAL, or `literal_budget` when
      the command sets one (bodies fetched in a batch: _Oversized);
    * the untagged responses to one command cost at most RESPONSE_BYTES plus
      RESPONSE_PER_MESSAGE for each message of the selected folder (EXISTS), never more
      than MAX_RESPONSE; of those older commands left unclaimed only the newest of each
      kind is kept.

    Breaking a limit raises _Malformed (the caller drops the connection)."""

    file: io.BufferedReader  # (imaplib's makefile(), then _pace_reads' reader on it)

    def __init__(
        self, host: str, port: int, timeout: float, ssl_context: ssl.SSLContext | None = None
    ):
        self._implicit_tls = ssl_context  # None: plain text (STARTTLS may follow)
        self._pace = Pace(timeout)
        self.folder_messages = 0  # the selected folder's EXISTS, the highest seen
        self.literal_budget: int | None = None  # for the next command only
        self._literals_left = PREAUTH_LIMIT
        self._budgeted = False  # the command set a literal_budget
        self._response_cost = 0
        self._bodies: dict[int, bytes | bytearray] | None = None  # see uid_fetch_bodies
        self._listing: _Listing | None = None  # see uid_fetch_listing
        self._pushed_line: bytes | None = None  # a line read ahead, given back to imaplib
        super().__init__(host, port, timeout)

    # the socket -----------------------------------------------------------------------
    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout)
        # imaplib sends an APPEND's literal and the line end after it as two writes: with
        # Nagle's algorithm the second waits for the server's delayed ACK of the first,
        # 40 ms an APPEND on Cyrus and Courier (ten times what the APPEND takes).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._implicit_tls is None:
            return sock
        try:
            return self._implicit_tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def _pace_reads(self) -> None:
        self.file = io.BufferedReader(_PacedReader(self.sock, self._pace, self.file))

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        super().open(host, port, timeout)
        self._pace_reads()

    def starttls(
        self, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[Literal["OK"], list[None]]:
        typ, data = super().starttls(ssl_context)
        if typ == "OK":
            self._pace_reads()  # the new TLS socket
        return typ, data

    @property
    def authenticated(self) -> bool:
        return self.state in ("AUTH", "SELECTED")

    # reading ----------------------------------------------------------------------------
    def readline(self) -> bytes:
        pushed, self._pushed_line = self._pushed_line, None
        if pushed is not None:
            return pushed
        limit = MAX_LINE if self.authenticated else PREAUTH_LIMIT
        self._pace.restart()
        line = self.file.readline(limit + 1)
        if len(line) > limit:
            raise _Malformed(f"the server sent a line of more than {limit} bytes")
        return line

    def read(self, size: int) -> bytes:
        """A literal of `size` bytes, refused before anything is allocated for it."""
        self._take_literal(size)
        return self.file.read(size)

    def read_lf(self, size: int) -> bytes | bytearray:
        """A literal of `size` bytes turned CRLF -> LF as it arrives, LITERAL_CHUNK bytes
        at a time (so a big one is never held twice, raw and LF, whole), under the same
        bounds as read().  A CRLF split between two chunks is joined: the CR that ended
        one chunk goes when the next starts with LF.  EOF before the end is an abort
        (imaplib's lost connection)."""
        self._take_literal(size)
        if size <= LITERAL_CHUNK:
            data = self.file.read(size)
            if len(data) < size:
                raise self.abort("socket error: EOF in a literal")
            return data.replace(b"\r\n", b"\n") if b"\r" in data else data
        out = bytearray()
        left = size
        while left:
            chunk = self.file.read(min(left, LITERAL_CHUNK))
            if not chunk:
                raise self.abort("socket error: EOF in a literal")
            left -= len(chunk)
            if out and out[-1] == 13 and chunk[0] == 10:  # CR | LF: the CR goes
                del out[-1]
            out += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        return out

    def _take_literal(self, size: int) -> None:
        """Refuses a literal of `size` bytes that breaks a limit (before anything is
        allocated for it), or counts it against the command's budget."""
        if not self.authenticated and size > self._literals_left:
            raise _Malformed(
                f"the server announced a literal of {size} bytes before login; refusing"
            )
        if size > MAX_LITERAL:
            raise _Malformed(f"the server announced a literal of {size} bytes; refusing")
        if size > self._literals_left:
            if self._budgeted:
                raise _Oversized(size)
            raise _Malformed(f"the server sent over {MAX_LITERAL} bytes of literals at once")
        self._literals_left -= size
        self._pace.restart()

    # bodies in a batch: our own reader --------------------------------------------------
    def uid_fetch_bodies(
        self, uid_set: str, literal_budget: int
    ) -> tuple[str, list, dict[int, bytes | bytearray]]:
        """``UID FETCH uid_set (UID BODY.PEEK[])`` -> (typ, data, bodies).  `bodies` holds
        {uid: LF body} for the responses of the usual shape (_BODY_RESPONSE, then ")"),
        read straight off the wire by _get_response without imaplib's line handling or
        imapclient's parse (which cost a quarter of an initial pull's CPU); `data` is
        what imaplib collected of every other FETCH response (another shape, other
        messages' FLAGS, a NIL body), for imapclient to parse.  Every bound of the
        connection holds for both (lines, literals, the literal budget, the untagged
        responses of one command); other untagged responses (EXISTS, EXPUNGE, BYE) are
        imaplib's as ever."""
        self.literal_budget = literal_budget
        bodies: dict[int, bytes | bytearray] = {}
        self._bodies = bodies
        try:
            typ, data = self._simple_command("UID", "FETCH", uid_set, "(UID BODY.PEEK[])")
            typ, data = self._untagged_response(typ, data, "FETCH")
        finally:
            self._bodies = None
        return typ, data, bodies

    # listings: our own reader ----------------------------------------------------------
    def uid_fetch_listing(
        self, *args: str, literal_budget: int | None = None
    ) -> tuple[str, list, dict[int, dict] | None]:
        """``UID FETCH *args`` -> (typ, data, parsed).  The FETCH responses of the usual
        listing shape (_LISTING_RESPONSE, items of LISTING_ITEMS) are read by
        _read_listing_response without imaplib's line handling and parsed without
        imapclient's lexer (which cost most of a listing's CPU); `parsed` is then what
        imapclient's parse_fetch_response(data, False, False) would make of `data`,
        {seq: {b"SEQ": seq, item: value}}.  If any FETCH response in `data` is not of
        that shape (a literal in it, an item of another name or form, one left over
        from an earlier command), `parsed` is None: the caller hands all of `data` to
        imapclient, so that nothing is guessed.  `data` is what imaplib would collect
        either way, under the same bounds (lines, untagged responses of one command).
        With a `literal_budget` (a body or a piece of one) imaplib reads it all: `parsed`
        is None."""
        if literal_budget is not None:
            self.literal_budget = literal_budget
            typ, data = self.uid("FETCH", *args)
            return typ, data, None
        from imapclient.response_parser import _convert_INTERNALDATE

        listing = _Listing(_convert_INTERNALDATE)
        self._listing = listing
        try:
            typ, data = self._simple_command("UID", "FETCH", *args)
            typ, data = self._untagged_response(typ, data, "FETCH")
        finally:
            self._listing = None
        read = sum(1 for entry in data if entry is not None)
        return typ, data, listing.parsed if read == listing.count else None

    def _read_listing_response(self, listing: _Listing) -> bytes | None:
        line = self.readline()
        read = listing_response(line, listing.internaldate)
        if read is None:
            self._pushed_line = line
            return super()._get_response()  # type: ignore[misc]
        seq, kept, record = read
        self._append_untagged("FETCH", kept)  # (counted as imaplib's)
        if __debug__ and self.debug >= 4:
            self._mesg(f"< {line[:-2]!r}")
        listing.count += 1
        known = listing.parsed.get(seq)
        if known is None:
            listing.parsed[seq] = record
        else:  # (as imapclient merges two responses about one message)
            known.update(record)
        return line[:-2]

    def _get_response(self) -> bytes | None:
        if self._listing is not None:
            return self._read_listing_response(self._listing)
        if self._bodies is None:
            return super()._get_response()  # type: ignore[misc]
        line = self.readline()
        match = _BODY_RESPONSE.fullmatch(line)
        uid = int(match.group(2)) if match else 0
        if match is None or not 0 < uid <= MAX_UID:  # (invalid UIDs: imaplib's, reported)
            self._pushed_line = line
            return super()._get_response()  # type: ignore[misc]
        line = line[:-2]
        self._charge_response("FETCH", line)
        if __debug__ and self.debug >= 4:
            self._mesg(f"< {line!r}")
        self._bodies[uid] = self.read_lf(int(match.group(3)))
        trailer = self._get_line()
        if trailer == b")":
            return line
        # More items after the body: imaplib's way from here, the body (kept above)
        # standing as NIL in what it collects ("12 (UID 34 BODY[] NIL FLAGS ()...").
        dat = b"%s (UID %d BODY[] NIL%s" % (match.group(1), uid, trailer)
        while self._match(self.Literal, dat):
            literal = self.read(int(self.mo.group("size")))
            self._append_untagged("FETCH", (dat, literal))
            dat = self._get_line()
        self._append_untagged("FETCH", dat)
        return line

    # responses --------------------------------------------------------------------------
    def _command(self, name: str, *args: Any) -> bytes:
        self._new_command(name)
        # (typeshed leaves imaplib's private methods out.)
        return super()._command(name, *args)  # type: ignore[misc]

    def _new_command(self, name: str) -> None:
        """The bounds start afresh for a command (see the class)."""
        # Unclaimed responses to earlier commands: the newest of each kind is all that
        # anything reads (imaplib itself only asks whether there was a BYE).
        for entries in self.untagged_responses.values():
            del entries[:-1]
        self._response_cost = 0
        budget, self.literal_budget = self.literal_budget, None
        self._budgeted = budget is not None and self.authenticated
        if not self.authenticated:
            self._literals_left = PREAUTH_LIMIT
        else:
            self._literals_left = MAX_LITERAL if budget is None else min(budget, MAX_LITERAL)
        if name in ("SELECT", "EXAMINE"):
            self.folder_messages = 0

    # APPENDs pipelined ----------------------------------------------------------------
    def append_pipelined(
        self, mailbox: bytes, messages: Iterable[tuple[str, str | None, bytes]], answers: list
    ) -> None:
        """One APPEND to `mailbox` per (flags, date, wire) of `messages`, all sent before
        any answer is read, each literal non-synchronizing (``{n+}``, LITERAL+, RFC 7888:
        the caller checks that the server offers it), so a batch costs one round trip,
        not one each.  Each is a command of its own (not MULTIAPPEND, RFC 3502, which
        is all or nothing: one refused message would fail the batch).  The answers,
        (typ, text) in the order given, go into `answers` as they are read, so that
        after a lost connection (imaplib's abort, OSError) the caller knows which
        arrived.  The untagged responses to the batch are bounded as one command's."""
        self._new_command("APPEND")
        tags = []
        failed: OSError | None = None
        try:
            for flags, date, wire in messages:
                tag = self._new_tag()
                words = [tag, b"APPEND", mailbox, flags.encode()]
                line = b" ".join(words + ([date.encode()] if date else []))
                line += b" {%d+}" % len(wire)
                if __debug__ and self.debug >= 4:
                    self._mesg(f"> {line!r}")
                self.send(line + b"\r\n")
                self.send(wire)
                self.send(b"\r\n")
                tags.append(tag)
        except OSError as error:  # the answers to those sent may have come all the same
            failed = error
        step("appends sent")  # (a crash point: the server has them, unanswered, unrecorded)
        for tag in tags:
            typ, data = self._get_tagged_response(tag)
            answers.append((typ, data[-1] if data else b""))
        if failed is not None:
            raise failed

    def _append_untagged(self, typ: str, dat: bytes | tuple[bytes, bytes] | None) -> None:
        self._charge_response(typ, dat[0] if isinstance(dat, tuple) else dat or b"")
        super()._append_untagged(typ, dat)  # type: ignore[misc]  # (as _command's)

    def _charge_response(self, typ: str, line: bytes) -> None:
        """Counts an untagged response against the command's limit (_Malformed beyond)."""
        self._response_cost += len(line) + RESPONSE_ENTRY
        if typ == "EXISTS" and line.isdigit():
            self.folder_messages = max(self.folder_messages, min(int(line), MAX_UID))
        if self.authenticated:
            limit = min(MAX_RESPONSE, RESPONSE_BYTES + RESPONSE_PER_MESSAGE * self.folder_messages)
        else:
            limit = PREAUTH_LIMIT
        if self._response_cost > limit:
            raise _Malformed(
                f"the server sent more than {limit} bytes of untagged responses "
                f"({len(self.untagged_responses.get(typ, ()))}+ {typ}) to one command"
            )


@functools.cache
def _client_class() -> type[IMAPClient]:
    """IMAPClient on a _GuardedIMAP4 (made on first use: imapclient is imported late)."""
    from imapclient import IMAPClient

    class GuardedClient(IMAPClient):
        def _create_IMAP4(self) -> _GuardedIMAP4:
            context = (self.ssl_context or ssl.create_default_context()) if self.ssl else None
            return _GuardedIMAP4(self.host, self.port, self._timeout.read, context)

    return GuardedClient


# -- UID sets ---------------------------------------------------------------------------


def _uid_ranges(uids: Iterable[int]) -> str:
    """[1,2,3,7] -> '1:3,7' (short commands for long lists)."""
    out, run = [], None
    for uid in sorted(set(uids)):
        if run and uid == run[1] + 1:
            run[1] = uid
        else:
            if run:
                out.append(f"{run[0]}:{run[1]}" if run[1] > run[0] else str(run[0]))
            run = [uid, uid]
    if run:
        out.append(f"{run[0]}:{run[1]}" if run[1] > run[0] else str(run[0]))
    return ",".join(out)


_UID_RANGE = re.compile(r"(-?\d+)(?::(-?\d+))?")


def _parse_uid_set(text: str, most: int) -> tuple[list[int], list[str]]:
    """'1:3,7' -> ([1, 2, 3, 7], []) (ESEARCH ALL results); the second list holds the
    parts that are not valid UIDs (0, -1, beyond 32 bits), left out.  The ranges are
    counted before any is expanded: _Malformed if they hold more than `most` UIDs."""
    ranges: list[tuple[int, int]] = []
    invalid: list[str] = []
    count = 0
    for part in filter(None, text.split(",")):
        match = _UID_RANGE.fullmatch(part)
        if not match:
            raise _Malformed(f"{part[:40]!r} in a UID set")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        low, high = min(low, high), max(low, high)
        if low < 1 or high > MAX_UID:
            invalid.append(part)
            continue
        count += high - low + 1
        if count > most:
            raise _Malformed(
                f"the server sent a UID set of over {most} UIDs for a folder that holds fewer"
            )
        ranges.append((low, high))
    return [uid for low, high in ranges for uid in range(low, high + 1)], invalid

"""The IMAP wire, bounded: imaplib's connection made safe against a hostile server (or
anyone on the path before STARTTLS) from the first byte it reads, so that it can neither
hang a run nor fill its memory.  Every line and literal has a deadline that grows with
the bytes that arrive (net.Pace); lines, literals and the untagged responses to one
command have size limits, small ones before login.  Breaking a limit is _Malformed (the
connection is dropped); a literal beyond the budget a command set is _Oversized (the
caller asks again in bounded pieces).  UID sets are written and read here too, a set the
server sends counted before it is expanded.  imap_connection.py builds on this.
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

# A body in a batch as Dovecot and most servers send it, "* 12 FETCH (UID 34 BODY[] {5678}"
# (numbers bounded: a line of a million digits is not a number to convert).  Any other
# shape (BODY[] before UID, other items first, NIL) goes through imaplib's reader.
_BODY_RESPONSE = re.compile(rb"\* (\d{1,10}) FETCH \(UID (\d{1,10}) BODY\[\] \{(\d{1,12})\}\r\n")


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

    def _get_response(self) -> bytes | None:
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

"""IMAP message bodies off the wire: a batch of bodies in one UID FETCH (fetch_batch),
and a big body in pieces (fetch_large), each bounded by the bytes that arrive rather than
by what the server announces, and turned CRLF -> LF as it comes.  Which bodies are
batched together, by RFC822.SIZE, is the folder's (imap_folder.IMAPFolder.fetch_many).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mailsync.errors import MessageError
from mailsync.message import Body
from mailsync.stores.imap_wire import MAX_LITERAL, _Oversized, _uid_ranges

if TYPE_CHECKING:
    from mailsync.stores.imap_folder import IMAPFolder

log = logging.getLogger("mailsync")

FETCH_LARGE_BYTES = 4 * 1024 * 1024  # bodies above this (RFC822.SIZE) are fetched in pieces
FETCH_PIECE_BYTES = 4 * 1024 * 1024  # one BODY.PEEK[]<offset.length> of such a body
PRESIZE_FACTOR = 16  # RFC822.SIZE sizes a big body's buffer up to this x its first piece


def fetch_batch(folder: IMAPFolder, uids: list[int]) -> Iterator[tuple[str, Body | MessageError]]:
    """Bodies of a batch in one UID FETCH, whose literals may hold twice what
    RFC822.SIZE announced for the batch (FETCH_LARGE_BYTES for a message without
    one) and 1 MiB more: room for servers whose sizes are estimates (Exchange).  A
    server that sends more (RFC822.SIZE understated, by mistake or on purpose) is cut
    off before the excess is read, and the batch is fetched again one message at a
    time in pieces (fetch_large): memory follows the bytes that arrive, not what the
    server claims."""
    announced = sum(folder._sizes.get(uid, FETCH_LARGE_BYTES) for uid in uids)
    budget = 2 * announced + (1 << 20)
    try:
        response = folder.store.call(
            "fetch",
            _uid_ranges(uids),
            ["UID", "BODY.PEEK[]"],
            folder=folder,
            literal_budget=budget,
            bodies=True,
        )
    except _Oversized as error:
        log.warning(
            "%s: the server sent a body of %s bytes in a batch of %d messages it said "
            "hold %d bytes together (RFC822.SIZE); fetching them one at a time, in pieces",
            folder.name,
            error,
            len(uids),
            announced,
        )
        for uid in uids:
            yield str(uid), fetch_large(folder, uid)
        return
    for uid in uids:
        data = response.get(uid, {}).get(b"BODY[]")
        if isinstance(data, bytes | bytearray):  # (LF already: bodies=True)
            yield str(uid), data
        elif uid in response or data is not None:
            yield str(uid), MessageError(f"{folder.name}: the server sent no body for UID {uid}")
        else:
            yield (
                str(uid),
                MessageError(f"{folder.name}: message UID {uid} is gone from the server"),
            )


def fetch_large(folder: IMAPFolder, uid: int) -> bytearray | MessageError:
    """One big body in pieces of FETCH_PIECE_BYTES (``UID FETCH uid (RFC822.SIZE
    BODY.PEEK[]<offset.length>)``), each turned CRLF -> LF straight into one bytearray.
    At most the buffer plus one piece and its LF copy are alive, never the whole
    literal next to a whole LF copy; a piece longer than asked for is refused before
    it is read.

    RFC822.SIZE is the server's word: it sizes the buffer (one block, filled in place:
    allocating it piece by piece costs glibc's heap a third more memory) only as far
    as the first piece proves, PRESIZE_FACTOR times the bytes that arrived in it; a
    body longer than that grows the buffer as it arrives.  So 1 GB announced for a
    small message costs nothing, and for a 4 MB one at most 64 MB.

    The result equals to_lf() of the whole body.  CRs ending a piece are not taken
    from it: the next piece starts at the first of them, so a CRLF split by a piece
    boundary is seen whole, and no piece ever starts right after a CR (Dovecot 2.3
    then drops the byte after a lone CR, serves a short body and renames its own file
    as broken).  The end is the first short piece (never RFC822.SIZE: some servers
    report it inexactly).  A message that vanishes, or whose RFC822.SIZE changes, in
    mid-read is this message's MessageError; a lost connection is retried once per
    piece."""
    where = f"{folder.name}: message UID {uid}"
    buf: bytearray | None = None  # sized once the first piece has arrived
    end = 0  # bytes of buf filled so far
    offset = 0  # wire bytes taken so far
    length = FETCH_PIECE_BYTES
    announced: int | None = None
    while True:
        items = ["RFC822.SIZE", f"BODY.PEEK[]<{offset}.{length}>"]
        try:
            response = folder.store.call(
                "fetch", str(uid), items, folder=folder, message_level=True, literal_budget=length
            )
        except MessageError as error:
            return MessageError(f"{where}: {error}")
        except _Oversized as error:
            return MessageError(
                f"{where}: the server sent {error} bytes where at most {length} were asked for"
            )
        record = response.pop(uid, None)
        del response
        if record is None:
            if offset:
                return MessageError(f"{where} vanished from the server while being read")
            return MessageError(f"{where} is gone from the server")
        piece = record.pop(f"BODY[]<{offset}>".encode(), None)
        reported = record.get(b"RFC822.SIZE")
        del record
        if isinstance(reported, int):
            if announced is None:
                announced = reported
            elif reported != announced:
                if not reported:  # Dovecot, after another client expunged it
                    return MessageError(f"{where} vanished from the server while being read")
                return MessageError(
                    f"{where} changed size while being read ({announced} -> {reported} "
                    "bytes); rerun"
                )
        if not isinstance(piece, bytes):
            return MessageError(f"{folder.name}: the server sent no body for UID {uid}")
        if len(piece) > length:
            return MessageError(
                f"{where}: the server sent {len(piece)} bytes where at most {length} were asked for"
            )
        last = len(piece) < length
        take = len(piece)
        if not last:
            while take and piece[take - 1] == 13:  # trailing CRs: the next piece's
                take -= 1
            if not take:  # nothing but CRs: ask for more at once, not after a CR
                del piece
                length *= 2
                if length > MAX_LITERAL:
                    return MessageError(f"{where}: over {MAX_LITERAL} CRs in a row; refusing")
                continue
            length = FETCH_PIECE_BYTES
        offset += take
        if offset > MAX_LITERAL:
            return MessageError(f"{where} is larger than {MAX_LITERAL} bytes; refusing")
        held = len(piece) - take  # the CRs left for the next piece
        lf = piece.replace(b"\r\n", b"\n") if b"\r\n" in piece else piece
        del piece
        n = len(lf) - held  # replace() leaves the trailing CRs (no LF after them) alone
        if buf is None:
            proven = PRESIZE_FACTOR * offset
            buf = bytearray(n if last else min(max(announced or 0, n), proven))
        buf[end : end + n] = memoryview(lf)[:n]  # grows buf past what was presized
        end += n
        del lf
        if last:
            break
    if announced is not None and announced != offset:
        log.debug("%s: RFC822.SIZE says %d bytes, the body had %d", where, announced, offset)
    del buf[end:]  # the CRs that went (a small shrink keeps the block: no copy)
    return buf

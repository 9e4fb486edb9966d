"""What a copy may already be on the destination, for copies.py's "match or append":
the index of destination messages by content, by content as the destination stores it,
by header block and size (without bodies, on IMAP), and by Message-ID, Date and From
(for copies an earlier run may have sent), built once per copier (match_index), and
the sizes a destination may list a message with (stored_sizes)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailsync.errors import MessageError
from mailsync.message import (
    Body,
    fingerprint,
    header_digest,
    header_identity,
    tolerant_fingerprint,
)
from mailsync.policy import other
from mailsync.state import Pair

if TYPE_CHECKING:
    from collections.abc import Callable

    from mailsync.folder_sync import FolderSync

#: A destination message a copy may turn out to be: its key, and its pair if the state
#: knows it (a tombstone, a message that vanished and came back), else None.
Candidate = tuple[str, Pair | None]


@dataclass
class Matches:
    """Destination messages a copy may be, each as (destination key, pair or None), in
    lists per digest: see match_index."""

    exact: dict[str, list[Candidate]] = field(default_factory=dict)  # message.fingerprint()
    # message.tolerant_fingerprint(), message.header_identity():
    loose: dict[str, list[Candidate]] = field(default_factory=dict)
    headers: dict[str, list[Candidate]] = field(default_factory=dict)
    unreadable: set[int] = field(default_factory=set)  # sizes of unreadable unknown ones
    # Unknown destination messages by message.header_digest() (header block and size),
    # where the folder tells it without bodies (Folder.header_digests: IMAP); their
    # bodies are read (read_unread) only when a copy finds none of them.
    by_header: dict[str, list[Candidate]] = field(default_factory=dict)
    unread: list[str] = field(default_factory=list)
    read_unread: Callable[[list[str]], None] | None = None

    def find(
        self, data: Body, digest: str, sent_before: bool, used: set[str]
    ) -> tuple[Candidate | None, str]:
        """(destination key, pair or None) for a source message whose fingerprint is
        `digest`, taken out of the lists, and how it was found; (None, "") if none is
        left.  Exact content first (a message known before whose source is gone), then
        an unknown destination message of the same header block (with a Message-ID)
        and size, whose body need not be read; then, all bodies read, exact content,
        then as the destination stores it; by headers only for a message an earlier
        run may have sent (`sent_before`), never for mail the destination had of its
        own."""
        match = _unused(self.exact.get(digest), used)
        if match is not None:
            return match, "same content"
        if self.by_header and _MESSAGE_ID.search(_header_block(data)):
            match = _unused(self.by_header.get(header_digest(data)), used)
            if match is not None:
                return match, "same header (Message-ID) and size"
        if self.unread and self.read_unread is not None:
            # (Read once: this copy, or one before it, is not among the cheap matches.)
            unread, self.unread = [k for k in self.unread if k not in used], []
            self.read_unread(unread)
            match = _unused(self.exact.get(digest), used)
            if match is not None:
                return match, "same content"
        if self.loose:
            match = _unused(self.loose.get(tolerant_fingerprint(data)), used)
            if match is not None:
                return match, "same content as the destination stores it"
        if sent_before and self.headers:
            identity = header_identity(data)
            match = _unused(self.headers.get(identity), used) if identity else None
            if match is not None:
                return match, "sent before but not recorded: same Message-ID, Date and From"
        return None, ""


_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*<")


def _header_block(data: Body) -> bytes:
    end = data.find(b"\n\n")
    return bytes(data[: end if end >= 0 else len(data)])


def match_index(fs: FolderSync, src: str, paired_now: set[str], by_headers: bool) -> Matches:
    """What a copy from `src` may turn out to be on the other side of `fs`: by content
    hash, unknown messages (an interrupted copy, a first sync of two full folders, mail
    the destination had before: adopted) and known ones whose source message is gone (a
    tombstone, or a message that vanished and came back); for a destination that
    normalises, the unknown ones by message.tolerant_fingerprint() (a copy it stored
    changed), and, with `by_headers` (an earlier run may have sent copies it did not
    record), by message.header_identity(); and the sizes of unknown ones that cannot
    be read.  Where the destination gives header digests without bodies (IMAP), the
    unknown ones are first indexed by them, and their bodies are read only when a copy
    finds none of them by its header and size (Matches.find).
    `paired_now`: destination keys this run paired already."""
    dst = other(src)
    target, listings = fs.folders[dst], fs.listings
    assert target is not None  # (as Copier's)
    matches = Matches()
    known = set()
    for pair in fs.pairs:
        key = pair.key(dst)
        if key is None:
            continue
        known.add(key)
        src_key = pair.key(src)
        gone = src_key is None or src_key not in listings[src]
        if gone and key in listings[dst] and pair.hash:
            matches.exact.setdefault(pair.hash, []).append((key, pair))
    unknown = [k for k in listings[dst] if k not in known and k not in paired_now]

    def read(keys: list[str]) -> None:
        for key, data in target.fetch_many(keys) if keys else ():  # one read each
            if isinstance(data, MessageError):
                matches.unreadable.add(listings[dst][key].size)
                continue
            matches.exact.setdefault(fingerprint(data), []).append((key, None))
            if target.normalises:
                matches.loose.setdefault(tolerant_fingerprint(data), []).append((key, None))
                identity = header_identity(data) if by_headers else None
                if identity is not None:
                    matches.headers.setdefault(identity, []).append((key, None))
            del data  # not kept alive while the next (maybe 50 MB) body is read

    digests = target.header_digests(unknown) if unknown else None
    if digests is None:
        read(unknown)
    else:
        for key, ident in digests.items():
            matches.by_header.setdefault(ident, []).append((key, None))
        matches.unread, matches.read_unread = unknown, read
    return matches


def _unused(candidates: list[Candidate] | None, used: set[str]) -> Candidate | None:
    """The last (destination key, pair) of `candidates` whose key no copy took yet (a
    message is in both match indexes), taken out of the list; None if there is none."""
    while candidates:
        candidate = candidates.pop()
        if candidate[0] not in used:
            return candidate
    return None


def stored_sizes(data: Body) -> set[int]:
    """The sizes a destination may list `data` with: LF or CRLF (IMAP), with the one
    final line end a store may add, and without lone CRs (the changes of size
    message.tolerant_fingerprint tolerates)."""
    lf, crlf = len(data), len(data) + data.count(b"\n")
    sizes = {lf, lf + 1, crlf, crlf + 2}
    lone_crs = data.count(b"\r") - data.count(b"\r\n")
    return sizes | {size - lone_crs for size in sizes} if lone_crs > 0 else sizes

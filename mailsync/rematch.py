"""After a side's validity changed (a new IMAP UIDVALIDITY), every key of that side is
void: the messages the state knew there are found again, so that none is taken for
deleted (a deletion that a two-way sync or --mirror would propagate) or copied again.

By header and size first where the folder can tell without bodies (IMAP), then by
content hash; in a folder that normalises what it stores (a server that rewrote the
copies mailsync gave it), also as it stores them, against the other side's copy
(message.tolerant_fingerprint).  A pair whose message is found gets the new key; one
whose message is not is a tombstone, or forgotten if the other side lost it too.
"""

from __future__ import annotations

import logging

from mailsync.errors import FolderError, MessageError
from mailsync.message import Info, tolerant_fingerprint
from mailsync.policy import SIDE_NAMES, other
from mailsync.report import FolderReport
from mailsync.state import FolderState, Pair, State
from mailsync.stores.base import Folder

log = logging.getLogger("mailsync")


def rematch(
    state: State,
    fstate: FolderState,
    side: str,
    folders: dict[str, Folder | None],
    listings: dict[str, dict[str, Info]],
    report: FolderReport,
) -> None:
    """Re-key the pairs of `side` (whose folder is there) against its new listing, record
    them and the side's new validity in one transaction, and say what was found in a
    note.  FolderError, with nothing changed, if a message that may be one of them
    cannot be read."""
    folder = folders[side]
    assert folder is not None
    listing = listings[side]
    # Pairs whose other side still has its message go first: of two identical
    # messages of which one survived, the survivor belongs to the live pair.
    there = listings[other(side)]
    pairs = sorted(
        (p for p in state.pairs(fstate.id) if p.key(side) is not None),
        key=lambda p: p.key(other(side)) not in there,
    )
    assigned: dict[int, str] = {}  # id(pair) -> new key
    remaining = set(listing)
    # Cheap first: header + size where the store can tell without bodies (IMAP).
    idents = folder.header_digests(listing) or {}
    if idents:
        by_ident: dict[str, list[str]] = {}
        for key, ident in idents.items():
            by_ident.setdefault(ident, []).append(key)
        wanted = [p.ident for p in pairs if p.ident]
        for pair in pairs:
            if not pair.ident:
                continue
            keys = by_ident.get(pair.ident)
            if keys and len(keys) == 1 and wanted.count(pair.ident) == 1:
                assigned[id(pair)] = keys[0]
                remaining.discard(keys[0])
    # The rest by content hash, which needs the bodies.
    rest = [p for p in pairs if id(p) not in assigned]
    if rest and remaining:
        prints = folder.fingerprints(sorted(remaining))
        if len(prints) < len(remaining):
            # An unreadable message would pass for a deleted one, and a deletion may
            # propagate: better to stop here and try again next run.
            raise FolderError(
                f"{fstate.name_a}: the {SIDE_NAMES[side]} side's validity changed and "
                f"{len(remaining) - len(prints)} of its messages cannot be read to "
                "re-match them; nothing was changed, rerun when they can be read"
            )
        by_hash: dict[str, list[str]] = {}
        for key, digest in prints.items():
            by_hash.setdefault(digest, []).append(key)
        for pair in rest:
            keys = by_hash.get(pair.hash or "")
            if keys:
                assigned[id(pair)] = keys.pop()
                remaining.discard(assigned[id(pair)])
        rest = [p for p in rest if id(p) not in assigned]
        if folder.normalises and rest and remaining:
            _rematch_tolerant(rest, side, folders, there, remaining, assigned)
    found = lost = 0
    state.begin()
    for pair in pairs:
        new_key = assigned.get(id(pair))
        pair.set_key(side, new_key)
        if new_key is None:
            lost += 1
            if pair.key(other(side)) is None:
                state.delete_pair(pair)
                continue
        else:
            found += 1
        state.update_pair(pair)
    fstate.set_validity(side, folder.validity)
    state.save_folder(fstate)
    state.commit()
    report.notes.append(
        f"validity of the {SIDE_NAMES[side]} side changed: {found} messages re-matched "
        f"by content, {lost} no longer there"
    )
    log.warning("%s: %s", fstate.name_a, report.notes[-1])


def _rematch_tolerant(
    rest: list[Pair],
    side: str,
    folders: dict[str, Folder | None],
    there: dict[str, Info],
    remaining: set[str],
    assigned: dict[int, str],
) -> None:
    """Pairs still unmatched whose message the other side still has: that copy's
    tolerant digest against those of `side`'s unclaimed messages, each taken once.
    (Their bodies are read a second time: only a server that rewrote them gets here.)"""
    source, own = folders[other(side)], folders[side]
    if source is None or own is None:
        return
    by_digest: dict[str, list[str]] = {}
    for key, data in own.fetch_many(sorted(remaining)):
        if not isinstance(data, MessageError):
            by_digest.setdefault(tolerant_fingerprint(data), []).append(key)
        del data  # not kept alive while the next (maybe 50 MB) body is fetched
    wanted: dict[str, Pair] = {}  # other side's key -> pair
    for pair in rest:
        there_key = pair.key(other(side))
        if there_key is not None and there_key in there:
            wanted[there_key] = pair
    for key, data in source.fetch_many(list(wanted)):
        if isinstance(data, MessageError):
            continue
        keys = by_digest.get(tolerant_fingerprint(data))
        del data
        if keys:
            assigned[id(wanted[key])] = keys.pop(0)

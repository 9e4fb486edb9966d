"""Copies of one folder pair, from one side to the other, with "match or append".

Before a message is appended, the destination is searched for a copy of it that the
state does not record (a run killed after the append and before the state commit, a
first sync of two full folders, a message that vanished and came back): by content
(message.fingerprint), then, in a folder that normalises what it stores, as it stores
it (message.tolerant_fingerprint), and for a message an earlier run may have sent (the
journal of copies under way, state.py) by its Message-ID, Date and From
(message.header_identity).  A copy found is linked, with the source's flags; else the
message is appended.  Copies go in batches each made durable (Folder.flush) and then
recorded in one transaction; to a destination that normalises, each batch's source
keys are journaled first, in a transaction of their own.

A message the destination refuses for good (errors.RefusedError) is named, recorded
(never as copied) and not offered again unless asked (--retry-refused).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailsync.crashhook import step
from mailsync.errors import MessageError, RefusedError
from mailsync.message import (
    RECENT,
    Body,
    Info,
    arrival_date,
    fingerprint,
    header_digest,
    header_identity,
    summary,
    summary_line,
    tolerant_fingerprint,
)
from mailsync.planner import Copy, Plan, flag_changes
from mailsync.policy import SIDE_NAMES, other
from mailsync.state import Pair
from mailsync.stores.base import Folder

if TYPE_CHECKING:  # (folder_sync imports this module)
    from mailsync.folder_sync import FolderSync

log = logging.getLogger("mailsync")

BATCH_MESSAGES = 200
BATCH_BYTES = 64 * 1024 * 1024

#: A destination message a copy may turn out to be: its key, and its pair if the state
#: knows it (a tombstone, a message that vanished and came back), else None.
Candidate = tuple[str, Pair | None]


def copy_all(fs: FolderSync, the_plan: Plan) -> None:
    """The plan's copies, a -> b, then b -> a; a message the first direction linked or
    copied is not copied back (a pair re-linked by content drops its planned copy)."""
    paired: dict[str, set[str]] = {"a": set(), "b": set()}
    for src in ("a", "b"):
        copies = [
            c
            for c in the_plan.copies
            if c.src == src
            and c.key not in paired[src]
            and (c.pair is None or c.pair.id not in fs.relinked)
        ]
        if copies:
            Copier(fs, src, copies, paired).run()


class Copier:
    """The copies of folder pair `fs` from side `src` to the other side.  `paired`: the
    keys of each side that this run's copies have paired already (shared by both
    directions, so a destination message is taken by one copy only)."""

    def __init__(self, fs: FolderSync, src: str, copies: list[Copy], paired: dict[str, set[str]]):
        self.fs = fs
        self.src, self.dst = src, other(src)
        source, target = fs.folders[src], fs.folders[self.dst]
        # (A copy is planned only from a folder that is there, to one that is written.)
        assert source is not None and target is not None
        self.source: Folder = source
        self.target: Folder = target
        self.by_key = {c.key: c for c in copies}
        self.paired = paired
        self.matches: Matches | None = None  # built on first use
        self.pending: list[Pair] = []  # copied or linked, not recorded yet
        self.pending_bytes = 0
        self.obsolete: list[Pair] = []  # pairs to forget when the batch is recorded
        self.accepted: list[str] = []  # source keys refused before, copied after all (a retry)
        # Copies an earlier run may have sent without recording them, and how far this
        # run's journal reaches (in the order the bodies are fetched).
        self.journal = self.target.normalises
        self.sent_before: set[str] = set()
        self.order = list(self.by_key)
        self.journaled_to = 0  # order[:journaled_to] is in the journal

    def run(self) -> None:
        """Copy (or link) each message, committing every batch."""
        fs, src, dst = self.fs, self.src, self.dst
        report = fs.report
        bar = fs.options.progress(len(self.by_key), f"{fs.fstate.name_a} -> {SIDE_NAMES[dst]}")
        if self.journal:
            self.sent_before = fs.state.pending_keys(fs.fstate.id, src)
        try:
            items = self.source.fetch_many(self.order)
            position = {key: n for n, key in enumerate(self.order)}
            while True:
                data = None  # let the last body go before the next is fetched (50 MB mail)
                try:
                    key, data = next(items)
                except StopIteration:
                    break
                copy = self.by_key[key]
                bar.update(1)
                if isinstance(data, MessageError):
                    report.errors.append(str(data))
                    log.error("%s", data)
                    continue
                if not self._copy(copy, key, data, position[key]):
                    continue
                if len(self.pending) >= BATCH_MESSAGES or self.pending_bytes >= BATCH_BYTES:
                    self._commit()
            self._commit()
        finally:
            bar.close()

    def _copy(self, copy: Copy, key: str, data: Body, position: int) -> bool:
        """One message: linked to its copy on the destination, or appended; then pending
        (True).  False if it was not (an error, in the report; a refusal)."""
        fs, src, dst, target = self.fs, self.src, self.dst, self.target
        report, paired, name = fs.report, self.paired, fs.fstate.name_a
        digest = fingerprint(data)
        if self.matches is None:
            self.matches = match_index(fs, src, paired[dst], bool(self.sent_before))
        matches = self.matches
        match, how = matches.find(data, digest, key in self.sent_before, paired[dst])
        if match is None and matches.unreadable and matches.unreadable & stored_sizes(data):
            error = (
                f"{name}: cannot tell whether message {key} is already on the "
                f"{SIDE_NAMES[dst]} side: a message of its size there is unreadable; "
                "not copying it until that message can be read"
            )
            report.errors.append(error)
            log.error("%s", error)
            return False
        flags = copy.flags - {RECENT}  # (see append_flags)
        if match is not None:
            dst_key, pair = match
            if pair is not None and pair.id is not None:
                fs.relinked.add(pair.id)
            self._link(flags, dst_key)
            if pair is not None and copy.pair is not None and pair is not copy.pair:
                self.obsolete.append(copy.pair)  # a resurrected message met its tombstone
            pair = pair or copy.pair or self._new_pair(copy, digest)
            paired[dst].add(dst_key)
            report.linked += 1
            log.info(
                "%s: linked %s %s to %s %s (%s)",
                name,
                SIDE_NAMES[src],
                key,
                SIDE_NAMES[dst],
                dst_key,
                how,
            )
        else:
            if self.journal and position >= self.journaled_to:
                self._write_journal(position)
            # Sources that do not know when a message arrived (POP3): its headers.
            arrival = copy.arrival or arrival_date(data) or fs.options.clock()
            listing = fs.listings[src]
            try:
                dst_key = target.append(
                    data, append_flags(flags, key, self.source, target, listing), arrival
                )
            except RefusedError as error:
                self._refused(key, digest, data, error)
                return False
            except MessageError as error:
                report.errors.append(str(error))
                log.error("%s", error)
                return False
            step("append")
            fs.written.add(dst)
            if dst == "b":
                fs.arrived.add(dst_key)
            pair = copy.pair or self._new_pair(copy, digest)
            report.copied(src)
            log.info(
                "%s: copied %s %s to %s %s", name, SIDE_NAMES[src], key, SIDE_NAMES[dst], dst_key
            )
        pair.set_key(src, key)
        pair.set_key(dst, dst_key)
        pair.flags, pair.hash, pair.ident = flags, digest, header_digest(data)
        if key in fs.refused[src]:
            self.accepted.append(key)
        paired[src].add(key)
        paired[dst].add(dst_key)
        self.pending.append(pair)
        self.pending_bytes += len(data)
        return True

    def _write_journal(self, position: int) -> None:
        """Record the next batch of source keys from `position` on, before any of them
        is sent: as many as a batch of copies holds, by count and listed size."""
        fs, order, listing = self.fs, self.order, self.fs.listings[self.src]
        end, size = position, 0
        while end < len(order) and end - position < BATCH_MESSAGES and size < BATCH_BYTES:
            size += listing[order[end]].size if order[end] in listing else 0
            end += 1
        fs.state.begin()
        fs.state.record_pending(fs.fstate.id, self.src, order[position:end])
        fs.state.commit()
        step("journal")
        self.journaled_to = end

    def _commit(self) -> None:
        """Make the batch durable on the destination, then record it in one transaction."""
        if not self.pending:
            return
        fs, state, folder_id = self.fs, self.fs.state, self.fs.fstate.id
        self.target.flush()
        step("flush")
        state.begin()
        for pair in self.obsolete:
            state.delete_pair(pair)
        self.obsolete.clear()
        state.forget_refusals(folder_id, self.src, self.accepted)
        self.accepted.clear()
        remote = fs.folders["a"]
        copied_from: list[str] = []
        for pair in self.pending:
            key_a, key_src = pair.key_a, pair.key(self.src)
            assert key_a is not None and key_src is not None  # (_copy set both keys)
            if remote is not None:  # after flush: what the writes made of it
                pair.version_a = remote.version(key_a)
            if pair.id is None:
                state.add_pair(folder_id, pair)
            else:
                state.update_pair(pair)
            copied_from.append(key_src)
        if self.journal:
            state.forget_pending(folder_id, self.src, copied_from)
        state.commit()
        step("commit")
        self.pending, self.pending_bytes = [], 0

    def _refused(self, key: str, digest: str, data: Body, error: RefusedError) -> None:
        """The destination refused a message for good: named, recorded (not as copied),
        and not offered again on later runs unless --retry-refused."""
        fs, src = self.fs, self.src
        name = fs.fstate.name_a
        about = summary(data)
        dst = SIDE_NAMES[self.dst]
        fs.state.begin()
        fs.state.record_refusal(fs.fstate.id, src, key, digest, about, error.reason)
        fs.state.forget_pending(fs.fstate.id, src, [key])  # not on the destination
        fs.state.commit()
        fs.refused[src].add(key)
        fs.report.refused_messages.append(
            {"folder": name, "key": key, **about, "reason": error.reason}
        )
        text = (
            f"{name}: the {dst} side refuses {SIDE_NAMES[src]} message {key} "
            f"({summary_line(about)}): {error.reason}; recorded, later runs will not offer it "
            "again (--retry-refused does)"
        )
        fs.report.errors.append(text)
        log.error("%s", text)

    def _new_pair(self, copy: Copy, digest: str) -> Pair:
        return Pair(None, None, None, copy.flags, digest, added=self.fs.options.clock())

    def _link(self, flags: frozenset[str], dst_key: str) -> None:
        """Adopt an existing destination message; the source's flags win."""
        listing, target = self.fs.listings[self.dst], self.target
        now = listing[dst_key].flags if dst_key in listing else frozenset()
        add, remove = flag_changes(now, flags, target.persists, target.exclusive_flags)
        if add or remove:
            target.set_flags(dst_key, add, remove)
            self.fs.written.add(self.dst)


def append_flags(
    flags: frozenset[str], key: str, source: Folder, target: Folder, listing: dict[str, Info]
) -> frozenset[str]:
    """The flags a copy is appended with.  \\Recent (unseen by any mail reader) goes
    only to folders that mark it (Maildir: new/ or cur/), so it never reaches a
    server or the state: from a source that marks it too, as that source listed the
    message (a Maildir's new/ stays new/, its cur/ stays cur/); from any other source
    always, so such a folder files the copy as it always did (new/ unless it has
    flags)."""
    if not target.marks_recent:
        return flags
    info = listing.get(key)
    if not source.marks_recent or (info is not None and RECENT in info.flags):
        return flags | {RECENT}
    return flags


@dataclass
class Matches:
    """Destination messages a copy may be, each as (destination key, pair or None), in
    lists per digest: see match_index."""

    exact: dict[str, list[Candidate]] = field(default_factory=dict)  # message.fingerprint()
    # message.tolerant_fingerprint(), message.header_identity():
    loose: dict[str, list[Candidate]] = field(default_factory=dict)
    headers: dict[str, list[Candidate]] = field(default_factory=dict)
    unreadable: set[int] = field(default_factory=set)  # sizes of unreadable unknown ones

    def find(
        self, data: Body, digest: str, sent_before: bool, used: set[str]
    ) -> tuple[Candidate | None, str]:
        """(destination key, pair or None) for a source message whose fingerprint is
        `digest`, taken out of the lists, and how it was found; (None, "") if none is
        left.  Exact content first, then as the destination stores it; by headers only
        for a message an earlier run may have sent (`sent_before`), never for mail the
        destination had of its own."""
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


def match_index(fs: FolderSync, src: str, paired_now: set[str], by_headers: bool) -> Matches:
    """What a copy from `src` may turn out to be on the other side of `fs`: by content
    hash, unknown messages (an interrupted copy, a first sync of two full folders) and
    known ones whose source message is gone (a tombstone, or a message that vanished and
    came back); for a destination that normalises, the unknown ones by
    message.tolerant_fingerprint() (a copy it stored changed), and, with `by_headers`
    (an earlier run may have sent copies it did not record), by
    message.header_identity(); and the sizes of unknown ones that cannot be read.
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
    for key, data in target.fetch_many(unknown) if unknown else ():  # one read each
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

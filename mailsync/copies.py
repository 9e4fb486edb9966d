"""Copies of one folder pair, from one side to the other, with "match or append".

Before a message is appended, the destination is searched for a copy of it that the
state does not record (a run killed after the append and before the state commit, a
first sync of two full folders, a message that vanished and came back): by content
(message.fingerprint), then, in a folder that normalises what it stores, as it stores it
(message.tolerant_fingerprint), and for a message an earlier run may have sent (the
journal of copies under way, state.py) by its Message-ID, Date and From
(message.header_identity): the index of these is matches.py's.  A copy found is linked,
with the source's flags; else the message is appended.  Copies go in batches each made
durable (Folder.flush) and then recorded in one transaction; to a destination that
normalises, each batch's source keys are journaled first, in a transaction of their own.
Appends are queued and sent together in one Folder.append_many, as many as the
destination takes at once (Folder.appends_at_once: IMAP with LITERAL+ pipelines 100 in
one round trip; a server known to throttle, and every other store, one at a time) and at
most QUEUE_BYTES of them; a queued message is in the journal before it is sent, and each
is recorded, refused or reported on its own answer.

A message that is in several folders of its account at once (Gmail: a label is a
folder), known in each by the same Info.account_id (X-GM-MSGID), is downloaded once: when
the state records a local copy of it in any folder of the channel (made durable and
recorded by this run or an earlier one), a copy from the remote side takes its bytes from
that local copy (Folder.append_copy: a hard link on Maildir), provided they are still
what was recorded (their fingerprint); else, as for any message, from the remote side.
Folders synced at once (--jobs) take turns on a message both need (Downloads): one
downloads it, the other copies the local copy once it is recorded; a message is
downloaded again only where that failed.  Each folder gets it once in any case.

A message the destination refuses for good (errors.RefusedError) is named, recorded
(never as copied) and not offered again unless asked (--retry-refused).  A destination
that can create no message (errors.CannotCreate: Graph) refuses so in a two-way run; a
one-way run into it stops with ConfigError (exit 2).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailsync.crashhook import step
from mailsync.errors import (
    CannotCreate,
    ConfigError,
    MailsyncError,
    MessageError,
    RefusedError,
)
from mailsync.matches import Matches, match_index, stored_sizes
from mailsync.message import (
    RECENT,
    Body,
    Info,
    arrival_date,
    fingerprint,
    header_digest,
    summary,
    summary_line,
)
from mailsync.planner import Copy, Plan, flag_changes
from mailsync.policy import SIDE_NAMES, other
from mailsync.report import NullProgress
from mailsync.state import Pair
from mailsync.stores.base import Folder

if TYPE_CHECKING:  # (folder_sync imports this module)
    from mailsync.folder_sync import FolderSync

log = logging.getLogger("mailsync")

BATCH_MESSAGES = 200
BATCH_BYTES = 64 * 1024 * 1024
# The bytes of the appends sent together (Folder.append_many), at most: what is in
# flight, and held in memory until it is sent (a bigger message goes alone).
QUEUE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Queued:
    """A message to append, with what is recorded once it is."""

    copy: Copy
    key: str  # the source's
    data: Body
    digest: str
    flags: frozenset[str]  # the source's (the pair's)
    given: frozenset[str]  # what it is appended with (append_flags)
    arrival: float


#: A local copy the state records of a message: (local folder, key, fingerprint).
LocalCopy = tuple[str, str, str | None]


class Downloads:
    """The messages (by Info.account_id) each copier of a run is downloading now, shared
    by the folders a run syncs at once (--jobs): a copier leaves a message another has
    claimed for last, and waits until that one has recorded its copy (or given up),
    then copies the local copy.  A copier waits only after releasing all its claims, so
    no two wait for each other."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._owners: dict[str, object] = {}  # account id -> the copier downloading it

    def claim(self, owner: object, account_ids: set[str]) -> set[str]:
        """Claim these for `owner`; returns those another owner holds."""
        with self._changed:
            taken = {i for i in account_ids if self._owners.get(i, owner) is not owner}
            for account_id in account_ids - taken:
                self._owners[account_id] = owner
            return taken

    def release(self, owner: object, account_ids: set[str | None] | None) -> None:
        """Release these claims of `owner` (None: all of them)."""
        with self._changed:
            mine = {i for i, o in self._owners.items() if o is owner}
            for account_id in mine if account_ids is None else mine.intersection(account_ids):
                del self._owners[account_id]
            if mine:
                self._changed.notify_all()

    def wait_for_any(self, account_ids: set[str | None]) -> set[str | None]:
        """Until some of these are claimed by no copier; returns those."""
        with self._changed:
            self._changed.wait_for(lambda: bool(account_ids - self._owners.keys()))
            return account_ids - self._owners.keys()


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
        # Destination keys linked by headers, not content (State.unconfirmed): migrate's
        # check reads them rather than take the state's word.
        self.unconfirmed: list[str] = []
        self.pending_bytes = 0
        self.queued: list[Queued] = []  # to append, in the journal, not sent yet
        self.queued_bytes = 0
        self.obsolete: list[Pair] = []  # pairs to forget when the batch is recorded
        # Pending pairs whose new copy replaces an old one, and the old one's key: deleted
        # once the new copies are durable, before the batch is recorded.
        self.replacing: list[tuple[Pair, str]] = []
        self.accepted: list[str] = []  # source keys refused before, copied after all (a retry)
        # Copies an earlier run may have sent without recording them, and how far this
        # run's journal reaches (in the order the bodies are fetched).
        self.journal = self.target.normalises
        self.sent_before: set[str] = set()
        self.order = list(self.by_key)
        self.journaled_to = 0  # order[:journaled_to] is in the journal
        # Source key -> the local copy its bytes were read from (Folder.append_copy).
        self.origin_of: dict[str, tuple[Folder, str]] = {}
        self.origin_folders: dict[str, Folder] = {}  # local folders opened for that
        # Local folders that failed as a whole (cannot be opened, locked by another
        # worker's batch: mbox): not asked again by this copier, whose messages then
        # come from other local copies or from the source.
        self.unusable_origins: set[str] = set()

    def run(self) -> None:
        """Copy (or link) each message, committing every batch.  Messages another copier
        of this run is downloading now (Downloads) come last, once it is done, from its
        local copy."""
        fs, src, dst = self.fs, self.src, self.dst
        bar = fs.options.progress(len(self.by_key), f"{fs.fstate.name_a} -> {SIDE_NAMES[dst]}")
        if self.journal:
            self.sent_before = fs.state.pending_keys(fs.fstate.id, src)
        downloads = fs.options.downloads
        try:
            origins = self._local_origins(list(self.by_key))
            later = self._claim(origins)
            # Another copier may have recorded a copy of one of ours, and let go of its
            # claim, between the look-up and the claim: looked up again, now it shows.
            claimed = [k for k in self.by_key if k not in origins and k not in later]
            origins.update(self._local_origins(claimed))
            self._pass([k for k in self.by_key if k not in later], origins, bar)
            self._commit()
            downloads.release(self, None)
            while later:  # as their downloads are recorded, a batch at a time
                ready = downloads.wait_for_any({self._account_id(key) for key in later})
                now = [key for key in later if self._account_id(key) in ready]
                later = [key for key in later if key not in now]
                self._pass(now, self._local_origins(now), bar)
                self._commit()
        finally:
            downloads.release(self, None)
            bar.close()
            for folder in self.origin_folders.values():
                if folder is not self.target:
                    folder.close()

    def _pass(
        self, keys: list[str], origins: dict[str, list[LocalCopy]], bar: NullProgress
    ) -> None:
        """Copy these source keys: those with a local copy first (read from it), then
        the others (fetched from the source in one pipelined stream)."""
        report = self.fs.report
        self.order = [k for k in keys if k in origins] + [k for k in keys if k not in origins]
        self.journaled_to = 0  # (the journal follows self.order: the bodies come in it)
        items = self._bodies(origins) if origins else self.source.fetch_many(self.order)
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

    def _account_id(self, key: str) -> str | None:
        """The source message's Info.account_id (copies from the remote side only)."""
        if self.src != "a":
            return None
        info = self.fs.listings["a"].get(key)
        return info.account_id if info is not None else None

    def _claim(self, origins: dict[str, list[LocalCopy]]) -> list[str]:
        """Claim the downloads of the messages with an account id and no local copy;
        returns those another copier has claimed (to be copied last)."""
        wanted = {}
        for key in self.by_key:
            account_id = self._account_id(key)
            if account_id and key not in origins:
                wanted[key] = account_id
        if not wanted:
            return []
        taken = self.fs.options.downloads.claim(self, set(wanted.values()))
        return [key for key, account_id in wanted.items() if account_id in taken]

    def _local_origins(self, keys: list[str]) -> dict[str, list[LocalCopy]]:
        """Source key -> the local copies the state records of the same message (by its
        Info.account_id) in any folder of the channel.  Only for copies from the remote
        side, whose listing has account ids (Gmail)."""
        ids = {key: account_id for key in keys if (account_id := self._account_id(key))}
        if not ids:
            return {}
        copies = self.fs.state.local_copies(ids.values())
        return {key: copies[account_id] for key, account_id in ids.items() if account_id in copies}

    def _bodies(
        self, origins: dict[str, list[LocalCopy]]
    ) -> Iterator[tuple[str, Body | MessageError]]:
        """fetch_many() of self.order, the messages with a local copy (first in the
        order) read from it, falling back to the source one by one."""
        remote = []
        for key in self.order:
            if key not in origins:
                remote.append(key)
                continue
            data = self._local_body(key, origins[key])
            if data is None:
                yield from self.source.fetch_many([key])
            else:
                yield key, data
        yield from self.source.fetch_many(remote)

    def _local_body(self, key: str, copies: list[LocalCopy]) -> Body | None:
        """The bytes of the first local copy of source message `key` that can be read and
        is still what was copied (its fingerprint as recorded, a size the source's
        listing allows), remembered in origin_of; None if there is none."""
        listed = self.fs.listings[self.src].get(key)
        for name, local_key, digest in copies:
            if name in self.unusable_origins:
                continue
            try:
                folder = self._origin_folder(name)
                data = folder.fetch(local_key)
            except (MailsyncError, OSError) as error:  # (then from elsewhere: never fatal)
                log.debug("%s: local copy %s %s unusable: %s", self.fs.name, name, local_key, error)
                if not isinstance(error, MessageError):
                    self.unusable_origins.add(name)
                continue
            if digest is None or fingerprint(data) != digest:
                continue
            if listed is not None and listed.size and listed.size not in stored_sizes(data):
                continue
            self.origin_of[key] = (folder, local_key)
            log.debug("%s: %s read from its local copy in %s", self.fs.name, key, name)
            return data
        return None

    def _origin_folder(self, name: str) -> Folder:
        """Local folder `name`, opened once per copier (the destination itself if it is
        that folder)."""
        folder = self.origin_folders.get(name)
        if folder is None:
            if name == self.fs.local:
                folder = self.target
            else:
                folder = self.fs.stores[self.dst].open_folder(name)
            self.origin_folders[name] = folder
        return folder

    def _copy(self, copy: Copy, key: str, data: Body, position: int) -> bool:
        """One message: linked to its copy on the destination, or appended (maybe queued,
        to be sent with others: _send_queued); then pending (True).  False if it was not
        (an error, in the report; a refusal)."""
        fs, src, dst, target = self.fs, self.src, self.dst, self.target
        report, paired, name = fs.report, self.paired, fs.fstate.name_a
        digest = fingerprint(data)
        if copy.replaces is not None and copy.pair is not None and digest == copy.pair.hash:
            # A new version at the source, with the content of the copy there already (a
            # change the copy does not show): the copy stays, the new version is recorded.
            paired[src].add(key)
            paired[dst].add(copy.replaces)
            self.pending.append(copy.pair)
            return True
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
        origin = self.origin_of.pop(key, None)  # the local copy `data` was read from
        if match is not None:
            dst_key, pair = match
            recorded = pair is not None  # (the state knew the destination message)
            if pair is not None and pair.id is not None:
                fs.relinked.add(pair.id)
            self._link(flags, dst_key)
            if not how.startswith("same content"):
                self.unconfirmed.append(dst_key)
            if pair is not None and copy.pair is not None and pair is not copy.pair:
                self.obsolete.append(copy.pair)  # a resurrected message met its tombstone
            pair = pair or copy.pair or self._new_pair(copy, digest)
            paired[dst].add(dst_key)
            report.linked += 1
            if not recorded and key not in self.sent_before:
                report.adopted += 1  # (see FolderReport.adopted)
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
                self._write_journal(position)  # (before it is sent, queued or not)
            # Sources that do not know when a message arrived (POP3): its headers.
            arrival = copy.arrival or arrival_date(data) or fs.options.clock()
            listing = fs.listings[src]
            given = append_flags(flags, key, self.source, target, listing)
            if fs.options.pace is not None:  # --max-rate: the one place every copy passes
                fs.options.pace(len(data))
            queued = Queued(copy, key, data, digest, flags, given, arrival)
            if origin is None:
                self._queue(queued)
                return True
            try:
                dst_key = target.append_copy(data, given, arrival, *origin)
            except MessageError as error:
                return self._not_appended(queued, error)
            return self._appended(queued, dst_key, origin)
        self._paired(pair, copy, key, dst_key, flags, digest, data)
        return True

    def _queue(self, queued: Queued) -> None:
        """Queue an append; send the queue when it holds as many messages as the
        destination takes at once (one, with --max-rate or --max-messages-per-second:
        the pace is the copies', not their batches') or QUEUE_BYTES."""
        size = len(queued.data)
        if self.queued and self.queued_bytes + size > QUEUE_BYTES:
            self._send_queued()  # (at most QUEUE_BYTES in flight, or one bigger message)
        self.queued.append(queued)
        self.queued_bytes += size
        at_once = 1 if self.fs.options.pace is not None else self.target.appends_at_once
        if len(self.queued) >= at_once or self.queued_bytes >= QUEUE_BYTES:
            self._send_queued()

    def _send_queued(self) -> None:
        """Append the queued messages in one Folder.append_many (IMAP with LITERAL+: one
        round trip); then each is pending, or refused, or its error reported."""
        queued, self.queued, self.queued_bytes = self.queued, [], 0
        if not queued:
            return
        keys = self.target.append_many([(q.data, q.given, q.arrival) for q in queued])
        for entry, dst_key in zip(queued, keys, strict=True):
            if isinstance(dst_key, MessageError):
                self._not_appended(entry, dst_key)
            else:
                self._appended(entry, dst_key, None)

    def _not_appended(self, entry: Queued, error: MessageError) -> bool:
        """A message the destination did not take: refused for good, or its error
        reported (the next run tries again).  False (not pending)."""
        if isinstance(error, RefusedError):
            if isinstance(error, CannotCreate) and not self.fs.policy.writes(self.src):
                raise ConfigError(str(error)) from None  # (one-way: nothing could arrive)
            self._refused(entry.key, entry.digest, entry.data, error)
        else:
            self.fs.report.errors.append(str(error))
            log.error("%s", error)
        return False

    def _appended(self, entry: Queued, dst_key: str, origin: tuple[Folder, str] | None) -> bool:
        """A message the destination took as `dst_key` (from the local copy `origin`, or
        downloaded): pending.  True."""
        fs, src, dst, copy = self.fs, self.src, self.dst, entry.copy
        step("append")
        fs.written.add(dst)
        if dst == "b":
            fs.arrived.add(dst_key)
        pair = copy.pair or self._new_pair(copy, entry.digest)
        fs.report.copied(src)
        fs.report.from_local_copies += origin is not None
        log.info(
            "%s: copied %s %s to %s %s%s",
            fs.fstate.name_a,
            SIDE_NAMES[src],
            entry.key,
            SIDE_NAMES[dst],
            dst_key,
            f" (from its copy in {origin[0].name}, not downloaded)" if origin else "",
        )
        self._paired(pair, copy, entry.key, dst_key, entry.flags, entry.digest, entry.data)
        return True

    def _paired(
        self,
        pair: Pair,
        copy: Copy,
        key: str,
        dst_key: str,
        flags: frozenset[str],
        digest: str,
        data: Body,
    ) -> None:
        """Source message `key` is destination message `dst_key` now (linked or
        appended): pending, and the old copy it replaces (Copy.replaces) to be deleted
        once the batch is durable."""
        fs, src, dst, paired = self.fs, self.src, self.dst, self.paired
        if copy.replaces is not None and copy.replaces != dst_key:
            self.replacing.append((pair, copy.replaces))
        pair.set_key(src, key)
        pair.set_key(dst, dst_key)
        pair.flags, pair.hash, pair.ident = flags, digest, header_digest(data)
        listed = fs.listings["a"].get(pair.key_a or "")
        if listed is not None and listed.account_id:
            pair.account_id_a = listed.account_id
        if key in fs.refused[src]:
            self.accepted.append(key)
        paired[src].add(key)
        paired[dst].add(dst_key)
        self.pending.append(pair)
        self.pending_bytes += len(data)

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
        """Send what is queued; make the batch durable on the destination, then record it
        in one transaction."""
        self._send_queued()
        if not self.pending:
            return
        fs, state, folder_id = self.fs, self.fs.state, self.fs.fstate.id
        self.target.flush()
        step("flush")
        self._delete_replaced()
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
        if self.unconfirmed and self.dst == "b":
            state.unconfirmed(folder_id, add=self.unconfirmed)
        self.unconfirmed = []
        state.commit()
        step("commit")
        fs.options.downloads.release(self, {p.account_id_a for p in self.pending})
        self.pending, self.pending_bytes = [], 0

    def _delete_replaced(self) -> None:
        """Delete the old copies the batch's new ones replace (these are durable), and
        make that durable too.  Crash safety: killed before, the old copy is still the
        recorded one and the next run finds the new one by its content ("match or
        append"); killed after, the next run sees the version still differs and the old
        copy gone, copies again, and finds the new one the same way.  A pair whose old
        copy cannot be deleted is not recorded: the next run tries again."""
        if not self.replacing:
            return
        fs, target, undone = self.fs, self.target, set()
        for pair, old_key in self.replacing:
            try:
                target.delete(old_key)
            except MessageError as error:
                fs.report.errors.append(str(error))
                log.error("%s", error)
                undone.add(id(pair))
                continue
            fs.written.add(self.dst)
            log.info("%s: replaced %s %s", fs.fstate.name_a, SIDE_NAMES[self.dst], old_key)
        self.replacing.clear()
        self.pending = [pair for pair in self.pending if id(pair) not in undone]
        target.flush()
        step("delete replaced")

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


def changed_at_source(
    remote: Folder, pairs: Iterable[Pair], listing: Mapping[str, Info]
) -> set[str]:
    """The keys of the remote folder's listed items whose content changed since their
    pairs were recorded: where it has ``mutable_items``, its version() of the item is
    known (after recall_versions()) and is not the pair's version_a.  A pair without one
    (recorded by a mailsync before Graph items had versions) counts as changed: the item
    is downloaded once more, and its file is rewritten only if its content changed
    (Copier._copy); an incremental listing names only items that changed anyway."""
    if not remote.mutable_items:
        return set()
    changed = set()
    for pair in pairs:
        key = pair.key_a
        if key is None or key not in listing:
            continue
        version = remote.version(key)
        if version is not None and version != pair.version_a:
            changed.add(key)
    return changed


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

"""verify: is every message of SOURCE in DEST, and what differs?

Messages are compared by content, as many times as they occur: two identical messages
in the source need two in the destination.  Each source message is paired with one
destination message (pair_by_content): exact content first (message.fingerprint); then,
against a destination that normalises what it stores (mbox, IMAP servers), the source
messages left over are paired with the destination messages left over by
message.tolerant_fingerprint, and counted apart (`normalised`): there, but not byte for
byte.  Folders are chosen and paired as the sync chooses and pairs them
(folders.FolderMap: the patterns, the channel's folder = "POP/provider" for INBOX, the
local names the state keeps for renamed folders; channel.verify builds it as the sync
does).  The result names (folder, date, sender, subject, Message-ID) each source
message with no copy (missing: the only kind that is an error), each destination
message that pairs with none (extra), and each pair whose flags differ in the flags
both folders keep (changed flags; flags come from the listings, no body is read for
them), a source folder that is not on the destination at all (also an empty one: a
sync creates every folder it copies), and what could not be read: nothing is reported
as fine that was not checked.  Only the messages listed are read again for their
summary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailsync.errors import FolderError, MessageError
from mailsync.folders import FolderMap
from mailsync.message import RECENT, fingerprint, summary, tolerant_fingerprint
from mailsync.policy import Selection
from mailsync.stores.base import Folder, Store


@dataclass
class FolderCheck:
    folder: str  # the source folder
    dest_folder: str
    messages: int = 0  # in the source folder
    bytes: int = 0  # their sizes as the source lists them
    on_destination: bool = True
    missing: list[dict[str, str | None]] = field(
        default_factory=list
    )  # folder, key and summary() of each
    #: DEST messages no SOURCE message of the folder pairs with (folder, key, summary):
    #: reported, no error (mail that arrived in DEST, or was left out by a selection).
    extra: list[dict[str, str | None]] = field(default_factory=list)
    #: Messages in both whose flags differ, in the flags both folders keep: the DEST
    #: message's entry, with source_key, source_flags, dest_flags and pending (SOURCE's
    #: flags not copied yet, rather than DEST's changed since: verify()).  Reported, no
    #: error for verify (DEST's reader may have read the mail since); migrate decides.
    changed_flags: list[dict[str, Any]] = field(default_factory=list)
    normalised: int = 0  # there only as the destination normalised them (not exact)
    unreadable: int = 0  # source messages that could not be read, so not checked
    error: str | None = None  # the folder could not be checked at all
    #: Source keys whose content was found in the destination (exactly or normalised):
    #: what `mailsync migrate --delete-source` may delete.  Not in as_dict().
    present: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.on_destination and not self.missing and not self.unreadable and not self.error


@dataclass
class Verification:
    folders: list[FolderCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. patterns that match nothing

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.folders)

    @property
    def missing(self) -> int:
        return sum(len(check.missing) for check in self.folders)

    @property
    def extra(self) -> int:
        return sum(len(check.extra) for check in self.folders)

    @property
    def changed_flags(self) -> int:
        return sum(len(check.changed_flags) for check in self.folders)

    def as_dict(self) -> dict[str, Any]:
        """For JSON: each folder's check with its counts of missing, extra and
        changed-flags messages and the messages themselves (missing_messages,
        extra_messages, changed_flags_messages), the totals, the warnings."""
        lists = {"missing": "missing_messages", "extra": "extra_messages"}
        lists["changed_flags"] = "changed_flags_messages"
        folders = []
        for f in self.folders:
            entry: dict[str, Any] = {k: v for k, v in vars(f).items() if k != "present"}
            for name, listed in lists.items():
                entry[listed] = entry[name]
                entry[name] = len(entry[listed])
            folders.append(entry)
        return {
            "folders": folders,
            "missing": self.missing,
            "extra": self.extra,
            "changed_flags": self.changed_flags,
            "warnings": self.warnings,
        }


#: The flags the state recorded as last synced for each pair of messages: SOURCE folder
#: -> (SOURCE key, DEST key) -> flags.
SyncedFlags = Mapping[str, Mapping[tuple[str, str], frozenset[str]]]


@dataclass(frozen=True)
class Recorded:
    """What the state recorded for one SOURCE folder: the validities it knew both
    folders by, and the DEST key of each SOURCE key it copied or matched."""

    validity_a: str | None
    validity_b: str | None
    copies: Mapping[str, str]


#: SOURCE folder -> Recorded: pairs the check may take without reading (verify(trust)).
Trusted = Mapping[str, Recorded]


def verify(
    source: Store,
    dest: Store,
    mapping: FolderMap,
    selection: Selection | None = None,
    synced: SyncedFlags | None = None,
    trusted: Trusted | None = None,
) -> Verification:
    """Check every folder of `source` that `mapping` covers against the destination
    folder it pairs it with in `dest` (both stores opened read-only): each message of it
    that `selection` selects (--since, --before, --max-size: what a run would copy).
    `synced`: the state's record, by which a changed-flags entry says whether SOURCE's
    flags are still to be copied (`pending`: DEST has what was last synced, or the pair
    is not recorded) or DEST's were changed since the last run (not pending).
    `trusted`: pairs the state recorded (not those adopted by their headers), taken as
    they are where both keys are still listed under the validities it recorded
    (migrate's check after its own copies: the copy was made from bytes read and the
    server named the new key, and under one validity an IMAP key's content never
    changes); only the other messages are read.
    Without it (the verify command) every message is compared by content."""
    result = Verification()
    names = source.list_folders()
    selected = mapping.choose(names, set(names).__contains__)
    result.warnings.extend(mapping.warnings(names))
    dest_names = set(dest.list_folders())
    for name in selected:
        check = FolderCheck(name, mapping.local_name(name))
        check.on_destination = check.dest_folder in dest_names
        try:
            recorded = (synced or {}).get(name, {})
            known = (trusted or {}).get(name)
            _check_folder(source, dest, check, selection or Selection(), recorded, known)
        except FolderError as error:
            check.error = str(error)
        result.folders.append(check)
    return result


def _check_folder(
    source: Store,
    dest: Store,
    check: FolderCheck,
    selection: Selection,
    recorded: Mapping[tuple[str, str], frozenset[str]],
    known: Recorded | None = None,
) -> None:
    src = source.open_folder(check.folder)
    try:
        listing = {
            key: info
            for key, info in src.list().items()
            if selection.reason(info.size, info.arrival) is None
        }
        keys = list(listing)
        check.messages = len(keys)
        check.bytes = sum(info.size for info in listing.values())
        dst = dest.open_folder(check.dest_folder) if check.on_destination else None
        if dst is None:
            prints = _digests(src, keys, False)
            check.unreadable = len(keys) - len(prints)
            check.missing.extend(_entries(src, check.folder, [k for k in keys if k in prints]))
            return
        try:
            tolerant = dst.normalises
            dest_listing = dst.list()
            taken = _taken_as_recorded(known, src, dst, listing, dest_listing)
            to_read = [key for key in keys if key not in taken]
            prints = _digests(src, to_read, tolerant)
            check.unreadable = len(to_read) - len(prints)
            dest_taken = set(taken.values())
            dest_to_read = [key for key in dest_listing if key not in dest_taken]
            dest_prints = _digests(dst, dest_to_read, tolerant)
            readable = [key for key in to_read if key in prints]
            read_pairs, missing, extra = pair_by_content(
                readable,
                prints,
                {key: listing[key].flags for key in readable},
                dest_prints,
                {key: dest_listing[key].flags for key in dest_to_read},
            )
            pairs: list[tuple[str, str, bool | None]] = [
                (key, taken[key], None) for key in keys if key in taken
            ]
            pairs += read_pairs
            check.normalised = sum(exact is False for _, _, exact in pairs)
            check.present.extend(key for key, _, _ in pairs)
            check.missing.extend(_entries(src, check.folder, missing))
            compared = compared_flags(src, dst)
            groups = src.exclusive_flags | dst.exclusive_flags
            differ: dict[str, dict[str, Any]] = {}  # DEST key -> what differs
            for key, dest_key, _ in pairs:
                mine = compared(listing[key].flags)
                theirs = compared(dest_listing[dest_key].flags)
                if flags_agree(mine, theirs, groups):
                    continue
                last = recorded.get((key, dest_key))
                differ[dest_key] = {
                    "source_key": key,
                    "source_flags": sorted(mine),
                    "dest_flags": sorted(theirs),
                    "pending": last is None or flags_agree(compared(last), theirs, groups),
                }
            # One pass over DEST for the summaries of what is listed (pipelined where
            # the store can): only these messages are read again.
            listed = _entries(dst, check.dest_folder, [*extra, *differ])
            check.extra.extend(listed[: len(extra)])
            for entry in listed[len(extra) :]:
                check.changed_flags.append({**entry, **differ[str(entry["key"])]})
        finally:
            dst.close()
    finally:
        src.close()


def _taken_as_recorded(
    known: Recorded | None,
    src: Folder,
    dst: Folder,
    listing: Mapping[str, Any],
    dest_listing: Mapping[str, Any],
) -> dict[str, str]:
    """SOURCE key -> DEST key of the recorded pairs both of whose keys are listed, if
    the state knew both folders by the validities they have now (else none)."""
    if known is None or not known.validity_a or not known.validity_b:
        return {}
    if (known.validity_a, known.validity_b) != (str(src.validity), str(dst.validity)):
        return {}
    taken: dict[str, str] = {}
    used: set[str] = set()
    for key, dest_key in known.copies.items():
        if key in listing and dest_key in dest_listing and dest_key not in used:
            taken[key] = dest_key
            used.add(dest_key)
    return taken


def pair_by_content(
    keys: list[str],
    prints: dict[str, tuple[str, str | None]],
    flags: dict[str, frozenset[str]],
    dest_prints: dict[str, tuple[str, str | None]],
    dest_flags: dict[str, frozenset[str]],
) -> tuple[list[tuple[str, str, bool]], list[str], list[str]]:
    """Pair each source message (`keys`, in order) with a destination message of the
    same content, each destination message taken once: exact fingerprints first for
    every message, then the tolerant ones (second element of a print, None where not
    computed) for the rest.  Among identical copies a destination message with the
    same flags is taken first, so that duplicates are not reported as changed flags
    just by the order of pairing.  -> ([(key, dest key, exact?)], source keys left
    (missing), destination keys left (extra), in listing order)."""
    pairs: list[tuple[str, str, bool]] = []
    free = dict.fromkeys(dest_prints)  # destination keys not taken yet, in order
    left = list(keys)
    for position, exact in ((0, True), (1, False)):
        waiting: dict[str, list[str]] = {}
        for dest_key in free:
            digest = dest_prints[dest_key][position]
            if digest is not None:
                waiting.setdefault(digest, []).append(dest_key)
        unmatched = []
        for key in left:
            digest = prints[key][position]
            candidates = waiting.get(digest) if digest is not None else None
            if not candidates:
                unmatched.append(key)
                continue
            same = [k for k in candidates if dest_flags[k] == flags[key]]
            dest_key = same[0] if same else candidates[0]
            candidates.remove(dest_key)
            del free[dest_key]
            pairs.append((key, dest_key, exact))
        left = unmatched
    return pairs, left, list(free)


def compared_flags(src: Folder, dst: Folder) -> Callable[[frozenset[str]], frozenset[str]]:
    """The flags verify compares: those both folders keep (persists()); \\Recent, which
    is no flag, never."""

    def compared(flags: frozenset[str]) -> frozenset[str]:
        return frozenset(f for f in flags if f != RECENT and src.persists(f) and dst.persists(f))

    return compared


def flags_agree(
    mine: frozenset[str], theirs: frozenset[str], exclusive: frozenset[frozenset[str]]
) -> bool:
    """Whether a source message's flags and its copy's agree.  A group of which one
    side keeps one flag at most (Folder.exclusive_flags: EWS keeps \\Answered or
    $Forwarded) agrees when both sides have none of it, or the flags one side has of it
    are among the other's (a message answered and forwarded is kept as one of them)."""
    for group in exclusive:
        a, b = mine & group, theirs & group
        if bool(a) != bool(b) or not (a <= b or b <= a):
            return False
        mine, theirs = mine - group, theirs - group
    return mine == theirs


def _digests(folder: Folder, keys: list[str], tolerant: bool) -> dict[str, tuple[str, str | None]]:
    """key -> (fingerprint, tolerant_fingerprint or None) of each readable message; the
    second only with `tolerant` (a destination that normalises), read in one pass."""
    if not tolerant:
        return {key: (digest, None) for key, digest in folder.fingerprints(keys).items()}
    return {
        key: (fingerprint(data), tolerant_fingerprint(data))
        for key, data in folder.fetch_many(keys)
        if not isinstance(data, MessageError)
    }


def _entries(folder: Folder, name: str, keys: list[str]) -> list[dict[str, str | None]]:
    """The listed messages, in the order of `keys`: folder, key and summary() of each,
    read in one fetch_many() pass (pipelined by network stores).  One that cannot be
    read (gone since it was listed) is named by its key alone."""
    summaries = {
        key: summary(data)
        for key, data in folder.fetch_many(keys)
        if not isinstance(data, MessageError)
    }
    unknown = {"date": None, "from": None, "subject": None, "message_id": None}
    return [{"folder": name, "key": key, **summaries.get(key, unknown)} for key in keys]


def flags_difference(entry: dict[str, Any]) -> str:
    """A changed-flags entry's flags as one line: 'SOURCE \\Seen, DEST \\Flagged \\Seen'."""
    return ", ".join(
        f"{side} {' '.join(entry[name]) or '(none)'}"
        for side, name in (("SOURCE", "source_flags"), ("DEST", "dest_flags"))
    )

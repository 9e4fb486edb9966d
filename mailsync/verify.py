"""verify: is every message of SOURCE in DEST?

Messages are compared by content, as many times as they occur: two identical messages
in the source need two in the destination.  As the sync recognises a copy, exact
content first (message.fingerprint); then, against a destination that normalises what
it stores (mbox, IMAP servers), the source messages left over are matched to the
destination messages left over by message.tolerant_fingerprint, and counted apart
(`normalised`): there, but not byte for byte.  Flags are not compared.  Folders are
chosen and paired as the sync chooses and pairs them (folders.FolderMap: the patterns,
the channel's folder = "POP/provider" for INBOX, the local names the state keeps for
renamed folders; channel.verify builds it as the sync does).  The result names each
missing message (date, sender, subject, Message-ID), a source folder that is not on the
destination at all (also an empty one: a sync creates every folder it copies), and
what could not be read: nothing is reported as fine that was not checked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mailsync.errors import FolderError, MessageError
from mailsync.folders import FolderMap
from mailsync.message import fingerprint, summary, tolerant_fingerprint
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

    def as_dict(self) -> dict[str, Any]:
        """For JSON: each folder's check with its count of missing messages (and the
        messages as missing_messages), the total missing, the warnings."""
        folders = [
            {
                **{k: v for k, v in vars(f).items() if k != "present"},
                "missing": len(f.missing),
                "missing_messages": f.missing,
            }
            for f in self.folders
        ]
        return {"folders": folders, "missing": self.missing, "warnings": self.warnings}


def verify(
    source: Store, dest: Store, mapping: FolderMap, selection: Selection | None = None
) -> Verification:
    """Check every folder of `source` that `mapping` covers against the destination
    folder it pairs it with in `dest` (both stores opened read-only): each message of it
    that `selection` selects (--since, --before, --max-size: what a run would copy)."""
    result = Verification()
    names = source.list_folders()
    selected = mapping.choose(names, set(names).__contains__)
    result.warnings.extend(mapping.warnings(names))
    dest_names = set(dest.list_folders())
    for name in selected:
        check = FolderCheck(name, mapping.local_name(name))
        check.on_destination = check.dest_folder in dest_names
        try:
            _check_folder(source, dest, check, selection or Selection())
        except FolderError as error:
            check.error = str(error)
        result.folders.append(check)
    return result


def _check_folder(source: Store, dest: Store, check: FolderCheck, selection: Selection) -> None:
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
        try:
            tolerant = dst is not None and dst.normalises
            prints = _digests(src, keys, tolerant)
            check.unreadable = len(keys) - len(prints)
            got: Counter[tuple[str, str | None]] = Counter()
            if dst is not None:
                got = Counter(_digests(dst, list(dst.list()), tolerant).values())
        finally:
            if dst is not None:
                dst.close()
        # Exact copies first, each destination message counted once ...
        have = Counter(exact for exact, _ in prints.values())
        there = Counter(exact for exact, _ in got.elements())
        short = have - there  # fingerprint -> how many exact copies are lacking
        taken = have & there  # fingerprint -> destination messages exact copies took
        spare: Counter[str] = Counter()  # tolerant digest -> destination messages left over
        for exact, loose in got.elements():
            if taken[exact] > 0:
                taken[exact] -= 1
            elif loose is not None:
                spare[loose] += 1
        # ... then the rest as the destination normalised them.
        for key in keys:
            if key not in prints:
                continue
            exact, loose = prints[key]
            if short[exact] <= 0:
                check.present.append(key)
                continue
            short[exact] -= 1
            if loose is not None and spare[loose] > 0:
                spare[loose] -= 1
                check.normalised += 1
                check.present.append(key)
            else:
                check.missing.append({"folder": check.folder, "key": key, **_summary(src, key)})
    finally:
        src.close()


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


def _summary(folder: Folder, key: str) -> dict[str, str | None]:
    try:
        return summary(folder.fetch(key))
    except MessageError:  # read a moment ago: gone since
        return {"date": None, "from": None, "subject": None, "message_id": None}

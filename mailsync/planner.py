"""The pure planner: two listings + the state + a policy -> actions.  No I/O.

Sides are "a" (the channel's remote side, or SOURCE of an ad-hoc pull) and "b" (the
local side).  The decision table, for each pair of keys recorded in the state:

==========================  =====================================================
present on a and b          three-way flag merge against the last synced flags
present on a only           b deleted it: propagate (delete = propagate and a is
                            writable) or remember a tombstone (keep); if a changed
                            its flags since, two-way sync copies it back instead
present on b only           the mirror image
present on neither          forget the pair
==========================  =====================================================

Messages no pair knows are copied to the other side when the direction allows, except
those the other side refused for good before (``refused``: side -> keys on that side,
from the state): they are held back in ``withheld`` instead, and those the run's
``selection`` leaves out (--since, --before, --max-size, by the listing's arrival date
and size: nothing is downloaded to decide), which go to ``left_out`` with the reason.

Items whose content changed at the source since the pair was recorded (``changed``: side
-> keys, from Folder.mutable_items and version(); the engine finds them) are copied again
when the other side is written: the new copy replaces the old one (Copy.replaces), or
fills in for it if it is gone (a run killed between the two steps).

Flags merge per flag: a change on one side wins over no change on the other; both
sides changing the same flag always agree, so there is no conflict to resolve.  One-way
runs apply the source's changes and leave the destination's own changes alone.

Safety: deletions on a side are refused (the plan keeps them in ``refused``) when they
would remove more than half of a folder of 10 or more messages, or when the side they
come from is now empty although the state knew messages there.  A refusal sticks: the
engine hands the refused sides back (``refused_before``) and later runs refuse deletions
there too, even if new mail has since made the folder look safe, until a run with
--force-delete or until nothing there is to be deleted.  --force-delete lifts it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from mailsync.message import DELETED, Info
from mailsync.policy import SIDE_NAMES, Policy, Selection, other
from mailsync.state import Pair

Persists = Callable[[str], bool]
#: Folder.exclusive_flags: groups of flags of which a side keeps one at most.
Groups = frozenset[frozenset[str]]


@dataclass
class Copy:
    src: str  # side the message is on
    key: str
    flags: frozenset[str]
    arrival: float
    pair: Pair | None = None  # set when re-filling a known pair (a resurrected message)
    # The destination key of the old copy this copy replaces (an item whose content
    # changed at the source: Folder.mutable_items), deleted once the new one is durable.
    replaces: str | None = None


@dataclass
class SetFlags:
    pair: Pair
    changes: dict[str, tuple[frozenset[str], frozenset[str]]]  # side -> (add, remove)
    new_flags: frozenset[str]  # what the state records afterwards


@dataclass
class Delete:
    side: str
    key: str
    pair: Pair


@dataclass
class Tombstone:
    """The message vanished from `side`; the other side keeps it and it stays known."""

    pair: Pair
    side: str


@dataclass
class Forget:
    pair: Pair


@dataclass
class Plan:
    copies: list[Copy] = field(default_factory=list)
    flags: list[SetFlags] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)
    bookkeeping: list[Tombstone | Forget] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one sentence per refused side
    refused_deletes: list[Delete] = field(default_factory=list)
    # Copies not offered because the destination refused the message before.
    withheld: list[Copy] = field(default_factory=list)
    # New messages the run's Selection leaves out (--since, --before, --max-size), and why.
    left_out: list[tuple[Copy, str]] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.copies or self.flags or self.deletes or self.bookkeeping)

    def count(self) -> dict[str, int]:
        return {
            "copy_a_to_b": sum(1 for c in self.copies if c.src == "a"),
            "copy_b_to_a": sum(1 for c in self.copies if c.src == "b"),
            "flags_a": sum(1 for f in self.flags if "a" in f.changes),
            "flags_b": sum(1 for f in self.flags if "b" in f.changes),
            "delete_a": sum(1 for d in self.deletes if d.side == "a"),
            "delete_b": sum(1 for d in self.deletes if d.side == "b"),
        }


def _all(flag: str) -> bool:
    return True


def effective_flags(
    listed: frozenset[str],
    synced: frozenset[str],
    persists: Persists,
    exclusive: Groups = frozenset(),
) -> frozenset[str]:
    """A side's flags as far as it can tell: what it keeps itself, and for the flags it
    cannot keep (keywords in Maildir, everything in mbox) what was last synced.  Of a
    group it keeps one flag of at most (`exclusive`, Folder.exclusive_flags), the flags
    last synced count as still there while the listing shows any flag of the group."""
    flags = frozenset(f for f in listed if persists(f)) | frozenset(
        f for f in synced if not persists(f)
    )
    for group in exclusive:
        if flags & group:
            flags |= synced & group
    return flags


def flag_changes(
    now: frozenset[str], target: frozenset[str], persists: Persists, exclusive: Groups
) -> tuple[frozenset[str], frozenset[str]]:
    """-> (add, remove) that take a side from `now` to `target`, in the flags it keeps.
    A change touching a group of `exclusive` adds every flag of the group that is to stay,
    so that the side keeps one of those (Folder.exclusive_flags)."""
    add = frozenset(f for f in target - now if persists(f))
    remove = frozenset(f for f in now - target if persists(f))
    for group in exclusive:
        if (add | remove) & group:
            add |= target & group
    return add, remove


def merge_flags(
    synced: frozenset[str], fa: frozenset[str], fb: frozenset[str], direction: str
) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """-> (target flags on a, target flags on b, flags to record)."""
    if direction == "pull":
        target_b = (fb | (fa - synced)) - (synced - fa)
        return fa, target_b, fa
    if direction == "push":
        target_a = (fa | (fb - synced)) - (synced - fb)
        return target_a, fb, fb
    merged = (fa & fb) | ((fa - fb) - synced) | ((fb - fa) - synced)
    return merged, merged, merged


def plan(
    listing_a: Mapping[str, Info],
    listing_b: Mapping[str, Info],
    pairs: list[Pair],
    policy: Policy,
    persists_a: Persists = _all,
    persists_b: Persists = _all,
    refused_before: frozenset[str] = frozenset(),
    refused: Mapping[str, AbstractSet[str]] | None = None,
    exclusive_a: Groups = frozenset(),
    exclusive_b: Groups = frozenset(),
    selection: Selection | None = None,
    changed: Mapping[str, AbstractSet[str]] | None = None,
) -> Plan:
    result = Plan()
    changed = changed or {}
    listings = {"a": listing_a, "b": listing_b}
    persists = {"a": persists_a, "b": persists_b}
    exclusive = {"a": exclusive_a, "b": exclusive_b}
    known: dict[str, set[str]] = {"a": set(), "b": set()}

    for pair in pairs:
        info: dict[str, Info | None] = {}
        for side in ("a", "b"):
            key = pair.key(side)
            if key is not None:
                known[side].add(key)
            info[side] = listings[side].get(key) if key is not None else None
        info_a, info_b = info["a"], info["b"]

        replace = [
            side
            for side, there in (("a", info_a), ("b", info_b))
            if there is not None and pair.key(side) in changed.get(side, ())
        ]
        if replace and policy.writes(other(replace[0])) and pair.key(other(replace[0])):
            # Content changed at the source: copy it again over the old copy, or in its
            # place if that is gone (a copy cut short between its append and its record).
            src = replace[0]
            src_key, src_info = pair.key(src), info[src]
            assert src_key is not None and src_info is not None
            now = effective_flags(src_info.flags, pair.flags, persists[src], exclusive[src])
            old = pair.key(other(src)) if info[other(src)] is not None else None
            result.copies.append(Copy(src, src_key, now, src_info.arrival, pair, old))
            continue

        if info_a is not None and info_b is not None:
            fa = effective_flags(info_a.flags, pair.flags, persists_a, exclusive_a)
            fb = effective_flags(info_b.flags, pair.flags, persists_b, exclusive_b)
            target_a, target_b, record = merge_flags(pair.flags, fa, fb, policy.direction)
            changes: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
            for side, now, target in (("a", fa, target_a), ("b", fb, target_b)):
                add, remove = flag_changes(now, target, persists[side], exclusive[side])
                if (add or remove) and policy.writes(side):
                    changes[side] = (add, remove)
            if changes or record != pair.flags:
                result.flags.append(SetFlags(pair, changes, record))
            continue

        if info_a is None and info_b is None:
            result.bookkeeping.append(Forget(pair))
            continue

        present, present_info = ("a", info_a) if info_a is not None else ("b", info_b)
        # (A side has an Info only for a key the pair has there.)
        present_key = pair.key(present)
        assert present_info is not None and present_key is not None
        gone = other(present)
        if policy.refill and policy.writes(gone) and not policy.writes(present):
            now = effective_flags(
                present_info.flags, pair.flags, persists[present], exclusive[present]
            )
            result.copies.append(Copy(present, present_key, now, present_info.arrival, pair))
            continue
        if pair.key(gone) is None:
            # An earlier deletion on `gone` that was kept; a later --mirror propagates it.
            if policy.propagates_to(present):
                result.deletes.append(Delete(present, present_key, pair))
            continue
        if policy.propagates_to(present):
            now = effective_flags(
                present_info.flags, pair.flags, persists[present], exclusive[present]
            )
            # \Deleted alone is no change worth saving: it is a deletion under way (our
            # own UID STORE before an interrupted EXPUNGE, or a mail client's).
            if policy.direction == "both" and now - {DELETED} != pair.flags - {DELETED}:
                # Deleted on one side, changed on the other: the changed copy survives.
                result.copies.append(Copy(present, present_key, now, present_info.arrival, pair))
            else:
                result.deletes.append(Delete(present, present_key, pair))
        else:
            result.bookkeeping.append(Tombstone(pair, gone))

    for src in ("a", "b"):
        if not policy.writes(other(src)):
            continue
        for key, listed in listings[src].items():
            if key not in known[src]:
                copy = Copy(src, key, listed.flags, listed.arrival)
                why = selection.reason(listed.size, listed.arrival) if selection else None
                if why is None:
                    result.copies.append(copy)
                else:
                    result.left_out.append((copy, why))

    if refused:
        offered: list[Copy] = []
        for copy in result.copies:
            held = copy.key in refused.get(copy.src, ())
            (result.withheld if held else offered).append(copy)
        result.copies = offered
    _apply_safety(result, listings, pairs, policy, refused_before)
    return result


def _apply_safety(
    result: Plan,
    listings: Mapping[str, Mapping[str, Info]],
    pairs: list[Pair],
    policy: Policy,
    before: frozenset[str],
) -> None:
    if policy.force_delete or not result.deletes:
        return
    for side in ("a", "b"):
        doomed = [d for d in result.deletes if d.side == side]
        if not doomed:
            continue
        size = len(listings[side])
        source = other(side)
        source_had = any(p.key(source) is not None for p in pairs)
        if side in before:
            reason = (
                f"deletions on the {SIDE_NAMES[side]} side were refused before and are still "
                f"pending ({len(doomed)} messages)"
            )
        elif size >= 10 and len(doomed) * 2 > size:
            reason = f"would delete {len(doomed)} of {size} messages on the {SIDE_NAMES[side]} side"
        elif not listings[source] and source_had:
            reason = f"the other side is now empty; would delete {len(doomed)} messages"
        else:
            continue
        result.refused.append(reason)
        result.refused_deletes.extend(doomed)
        result.deletes = [d for d in result.deletes if d.side != side]

"""Property: random histories of mail-reader actions and syncs between two MemoryStores.

A Hypothesis state machine adds, flags, deletes and renumbers messages on either side and
runs the Syncer with random policies, sometimes with unreadable messages.  After every
sync it checks what a user relies on:

* a one-way run never touches its source;
* delete = keep never removes a message from either side;
* a sync deletes a message only when its counterpart was deleted on the other side;
* a sync creates no duplicates: a body is on a side at most as often as it was on either
  side before (a clean run), or on both together (a run with unreadable messages);
* after a clean run every message of the source side(s) is paired, paired messages have
  the same body, and their flags agree with the state (two-way: with each other, and
  then both sides hold the same bodies unless a deletion was kept or refused);
* a clean run leaves nothing to do: planning again right after plans nothing;
* a dry run changes nothing.

The failures the machine found are replayed at the end of this file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from mailsync.message import ANSWERED, FLAGGED, SEEN, STANDARD_FLAGS, fingerprint
from mailsync.planner import plan
from mailsync.policy import Policy
from mailsync.report import Report
from mailsync.state import Pair, State
from mailsync.stores.memory import MemoryFolder, MemoryStore
from mailsync.sync import Syncer

FOLDER = "INBOX"
SIDES = ("a", "b")
FLAG_ALPHABET = (SEEN, FLAGGED, ANSWERED, "work")
BODY_POOL = (
    b"From: ann@example.org\nSubject: hello\n\nhi\n",
    b"From: bob@example.org\nSubject: hello\n\nhi\n",
    b"Subject: same\n\nsame body\n",
)

bodies = st.one_of(
    st.sampled_from(BODY_POOL),
    st.binary(min_size=0, max_size=6).map(lambda tail: b"Subject: x\n\n" + tail),
)
flag_sets = st.frozensets(st.sampled_from(FLAG_ALPHABET), max_size=3)
sides = st.sampled_from(SIDES)
indexes = st.integers(0, 30)
policies = st.builds(
    Policy,
    direction=st.sampled_from(("pull", "push", "both")),
    delete=st.sampled_from(("keep", "propagate", "propagate")),
    force_delete=st.sampled_from((False, False, True)),
)


def other(side: str) -> str:
    return "b" if side == "a" else "a"


def scratch_dir() -> str:
    # SQLite syncs on every commit; a RAM disk keeps the machine fast where there is one.
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="mailsync-machine-", dir=base)


Snapshot = dict[str, tuple[bytes, frozenset[str]]]


def snapshot(folder: MemoryFolder) -> Snapshot:
    return {key: (data, flags) for key, (data, flags, _arrival) in folder.messages.items()}


def body_counts(snap: Snapshot) -> Counter:
    return Counter(data for data, _flags in snap.values())


class Channel:
    """Two fresh stores, one folder each, and the state of the channel between them."""

    def __init__(self):
        self.tmp = scratch_dir()
        self.state = State(os.path.join(self.tmp, "state", "channel.db"))
        self.stores = {"a": MemoryStore("a"), "b": MemoryStore("b")}
        self.folders = {side: self.stores[side].folder(FOLDER) for side in SIDES}

    def close(self) -> None:
        self.state.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def sync(self, policy: Policy, dry_run: bool = False) -> Report:
        return Syncer(self.stores["a"], self.stores["b"], self.state, policy, dry_run=dry_run).run()

    def pairs(self) -> list[Pair]:
        return [pair for folder in self.state.folders() for pair in self.state.pairs(folder.id)]

    def plan_again(self, policy: Policy):
        folders = self.folders
        return plan(
            folders["a"].list(),
            folders["b"].list(),
            self.pairs(),
            policy,
            folders["a"].persists,
            folders["b"].persists,
        )

    def bodies(self, side: str) -> Counter:
        return body_counts(snapshot(self.folders[side]))


# -- what a sync may delete -----------------------------------------------------------------


def allowed_deletions(side, before, pairs_before, renamed, renumbered) -> Counter:
    """How many messages of each content hash a sync may delete on `side`: one per pair
    whose message is still on `side` and whose counterpart the user deleted.

    After a validity change (renumber) a side's messages are found again by content, so
    which of several identical messages is which is lost: on a renumbered side any pair
    may be the one whose message is still there, and of the pairs of one hash as many as
    there are more pairs than messages may be the ones whose message is gone."""
    gone_side = other(side)

    def current(s, key):
        return renamed[s].get(key, key)

    messages = Counter(fingerprint(data) for data, _f in before[gone_side].values())
    with_key = Counter(p.hash for p in pairs_before if p.key(gone_side) is not None)
    certain, possible = Counter(), Counter()
    for pair in pairs_before:
        key = pair.key(side)
        if key is None:
            continue
        if side not in renumbered and current(side, key) not in before[side]:
            continue
        counterpart = pair.key(gone_side)
        if counterpart is None:
            certain[pair.hash] += 1
        elif gone_side in renumbered:
            possible[pair.hash] += 1
        elif current(gone_side, counterpart) not in before[gone_side]:
            certain[pair.hash] += 1
    allowed = Counter()
    for digest in certain.keys() | possible.keys():
        missing = max(0, with_key[digest] - messages[digest])
        allowed[digest] = certain[digest] + min(possible[digest], missing)
    return allowed


# -- the machine -------------------------------------------------------------------------------


class SyncMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.channel = Channel()
        self.folders = self.channel.folders
        # renumber() since the last sync: old key -> current key, per side.
        self.renamed: dict[str, dict[str, str]] = {"a": {}, "b": {}}
        self.renumbered: set[str] = set()

    def teardown(self):
        self.channel.close()

    # -- the user's mail readers ----------------------------------------------------------

    @initialize(side=st.sampled_from(("neither", "a", "b")))
    def some_side_cannot_keep_keywords(self, side):
        if side != "neither":
            self.folders[side].persisted = STANDARD_FLAGS

    def pick(self, side: str, index: int) -> str | None:
        keys = sorted(self.folders[side].messages, key=int)
        return keys[index % len(keys)] if keys else None

    def kept(self, side: str, flags) -> frozenset[str]:
        return frozenset(f for f in flags if self.folders[side].persists(f))

    @rule(side=sides, messages=st.lists(st.tuples(bodies, flag_sets), min_size=1, max_size=3))
    def new_mail(self, side, messages):
        for body, flags in messages:
            self.folders[side].add(body, self.kept(side, flags))

    @rule(body=bodies, flags_a=flag_sets, flags_b=flag_sets)
    def same_message_arrives_on_both(self, body, flags_a, flags_b):
        self.folders["a"].add(body, self.kept("a", flags_a))
        self.folders["b"].add(body, self.kept("b", flags_b))

    @rule(side=sides, index=indexes)
    def copy_a_message_by_hand(self, side, index):
        source = side if self.folders[side].messages else other(side)
        key = self.pick(source, index)
        if key is not None:
            data, flags, _arrival = self.folders[source].messages[key]
            self.folders[side].add(data, self.kept(side, flags))

    @rule(side=sides, index=indexes, flags=flag_sets)
    def change_flags(self, side, index, flags):
        key = self.pick(side, index)
        if key is not None:
            now = self.folders[side].messages[key][1]
            self.folders[side].set_flags(key, flags - now, now - flags)

    @rule(side=sides, index=indexes)
    def delete_message(self, side, index):
        key = self.pick(side, index)
        if key is not None:
            self.folders[side].delete(key)

    @rule(side=sides)
    def folder_emptied(self, side):
        # A user (or a server glitch) empties the folder: the safety rule's case.
        for key in list(self.folders[side].messages):
            self.folders[side].delete(key)

    @rule(side=sides)
    def validity_changes(self, side):
        folder = self.folders[side]
        old_keys = list(folder.messages)
        folder.renumber()
        mapping = dict(zip(old_keys, folder.messages, strict=True))
        renamed = self.renamed[side]
        for old, current in renamed.items():
            renamed[old] = mapping.get(current, current)
        renamed.update(mapping)
        self.renumbered.add(side)

    # -- syncs -------------------------------------------------------------------------------

    @rule(policy=policies)
    def sync(self, policy):
        self.checked_sync(policy, failing=False)

    @rule(policy=policies, fail_a=st.sets(indexes, max_size=3), fail_b=st.sets(indexes, max_size=3))
    def sync_with_unreadable_messages(self, policy, fail_a, fail_b):
        failing = False
        for side, chosen in (("a", fail_a), ("b", fail_b)):
            keys = {self.pick(side, i) for i in chosen} - {None}
            self.folders[side].fail_keys = keys
            failing |= bool(keys)
        try:
            self.checked_sync(policy, failing=failing)
        finally:
            for folder in self.folders.values():
                folder.fail_keys = set()

    @rule(policy=policies)
    def dry_run_changes_nothing(self, policy):
        before = {side: snapshot(self.folders[side]) for side in SIDES}
        pairs = self.channel.pairs()
        self.channel.sync(policy, dry_run=True)
        assert {side: snapshot(self.folders[side]) for side in SIDES} == before
        assert self.channel.pairs() == pairs

    # -- the checks --------------------------------------------------------------------------

    def forget_renumbering_seen_by_the_state(self) -> None:
        """A sync that re-matched a renumbered side recorded its new validity; one that
        could not (a message it cannot read) leaves that to the next sync."""
        [folder_state] = self.channel.state.folders()
        for side in SIDES:
            if folder_state.validity(side) == self.folders[side].validity:
                self.renamed[side] = {}
                self.renumbered.discard(side)

    def checked_sync(self, policy: Policy, failing: bool) -> None:
        before = {side: snapshot(self.folders[side]) for side in SIDES}
        pairs_before = self.channel.pairs()
        report = self.channel.sync(policy)
        after = {side: snapshot(self.folders[side]) for side in SIDES}
        renamed, renumbered = dict(self.renamed), set(self.renumbered)
        self.forget_renumbering_seen_by_the_state()

        for side in SIDES:
            if not policy.writes(side):
                assert after[side] == before[side], f"read-only side {side} was changed"
            if policy.delete == "keep":
                lost = sorted(set(before[side]) - set(after[side]))
                assert not lost, f"delete=keep removed {lost} from side {side}"
            allowed = allowed_deletions(side, before, pairs_before, renamed, renumbered)
            self.check_deletions_were_asked_for(side, before, after, allowed)
            self.check_no_duplicates(side, before, after, failing)

        self.check_flag_merge(policy, before, after, pairs_before, renumbered)
        self.check_pairs_consistent(after)
        if not failing:
            assert not report.failed, report.as_dict()
            self.check_clean_run(policy, report, after)

    def check_deletions_were_asked_for(self, side, before, after, allowed: Counter):
        """Deleting a body on `side` needs as many pairs whose counterpart on the other
        side the user deleted (bodies, not keys: identical copies are interchangeable)."""
        vanished = set(before[side]) - set(after[side])
        deleted = Counter(fingerprint(before[side][key][0]) for key in vanished)
        excess = deleted - allowed
        assert not excess, (
            f"side {side}: deleted {sum(excess.values())} message(s) whose counterpart on "
            f"side {other(side)} is still there"
        )

    def check_no_duplicates(self, side, before, after, failing):
        mine, theirs = body_counts(before[side]), body_counts(before[other(side)])
        for body, count in body_counts(after[side]).items():
            if failing:
                limit = mine[body] + theirs[body]
            else:
                limit = max(mine[body], theirs[body])
            assert count <= limit, (
                f"side {side} holds {count} copies of {body!r}; before the sync it had "
                f"{mine[body]} and side {other(side)} had {theirs[body]}"
            )

    def check_flag_merge(self, policy, before, after, pairs_before, renumbered):
        """Per flag, on pairs synced before and after: a change on the other side wins
        where this run may write, otherwise a side keeps its own value."""
        if renumbered:
            return  # keys were re-derived by content; identical messages may trade places
        now = {p.id: p for p in self.channel.pairs()}
        persists = {side: self.folders[side].persists for side in SIDES}
        for old in pairs_before:
            keys = {"a": old.key_a, "b": old.key_b}
            new = now.get(old.id)
            if new is None or (new.key_a, new.key_b) != (old.key_a, old.key_b):
                continue
            if not all(keys[s] in before[s] and keys[s] in after[s] for s in SIDES):
                continue
            for side in SIDES:
                there = other(side)
                mine_before = before[side][keys[side]][1]
                theirs_before = before[there][keys[there]][1]
                for flag in FLAG_ALPHABET:
                    if not persists[side](flag):
                        continue
                    expected = flag in mine_before
                    changed_there = (flag in theirs_before) != (flag in old.flags)
                    if policy.writes(side) and persists[there](flag) and changed_there:
                        expected = flag in theirs_before
                    got = flag in after[side][keys[side]][1]
                    assert got == expected, (
                        f"{flag} on side {side} is {got}, expected {expected}: synced "
                        f"{sorted(old.flags)}, a {sorted(before['a'][keys['a']][1])}, "
                        f"b {sorted(before['b'][keys['b']][1])}, {policy}"
                    )

    def check_pairs_consistent(self, after):
        pairs = self.channel.pairs()
        for side in SIDES:
            keys = Counter(p.key(side) for p in pairs if p.key(side) is not None)
            repeated = [k for k, n in keys.items() if n > 1]
            assert not repeated, f"side {side} keys in several pairs: {repeated}"
        for pair in pairs:
            if pair.key_a in after["a"] and pair.key_b in after["b"]:
                assert after["a"][pair.key_a][0] == after["b"][pair.key_b][0], pair

    def check_clean_run(self, policy: Policy, report: Report, after):
        pairs = self.channel.pairs()
        paired = {side: {p.key(side) for p in pairs} for side in SIDES}
        for side in SIDES:
            if policy.writes(other(side)):
                unpaired = sorted(set(after[side]) - paired[side])
                assert not unpaired, f"side {side} messages left unpaired: {unpaired}"
            if not report.refused:
                stale = sorted({k for k in paired[side] if k is not None} - set(after[side]))
                assert not stale, f"pairs still name vanished side {side} keys {stale}"

        # Flags: the source side(s) agree with what the state recorded.
        for pair in pairs:
            if not (pair.key_a in after["a"] and pair.key_b in after["b"]):
                continue
            for side in SIDES:
                if policy.writes(other(side)):
                    flags = after[side][pair.key(side)][1]
                    expected = frozenset(f for f in pair.flags if self.folders[side].persists(f))
                    assert flags == expected, (side, pair, flags)
            if policy.direction == "both":
                both_keep = [
                    f for f in FLAG_ALPHABET if all(x.persists(f) for x in self.folders.values())
                ]
                flags_a = after["a"][pair.key_a][1] & set(both_keep)
                flags_b = after["b"][pair.key_b][1] & set(both_keep)
                assert flags_a == flags_b, (pair, flags_a, flags_b)

        tombstones = any(p.key_a is None or p.key_b is None for p in pairs)
        if policy.direction == "both" and not report.refused and not tombstones:
            assert self.channel.bodies("a") == self.channel.bodies("b")

        # A second run plans nothing.  plan() is called directly for copies, flags and
        # bookkeeping; deletions go through a dry run, which also applies the refusals
        # the engine remembers from earlier runs.
        again = self.channel.plan_again(policy)
        assert not (again.copies or again.flags or again.bookkeeping), again
        for folder_report in self.channel.sync(policy, dry_run=True).folders:
            assert not any(folder_report.planned.values()), folder_report.planned


TestSyncMachine = SyncMachine.TestCase
TestSyncMachine.settings = settings(
    max_examples=600,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- targeted tests: shrunk failures of the machine, replayed ------------------------------------

X = BODY_POOL[0]
Y = BODY_POOL[1]


@pytest.fixture
def channel():
    opened = Channel()
    yield opened
    opened.close()


def key_of(folder: MemoryFolder, body: bytes) -> str:
    [key] = [k for k, (data, _f, _t) in folder.messages.items() if data == body]
    return key


def test_pull_never_writes_the_source_and_keep_never_deletes(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    a.add(X, {SEEN})
    channel.sync(Policy("both"))
    a.delete(key_of(a, X))
    b.set_flags(key_of(b, X), frozenset({FLAGGED}), frozenset())
    b.add(Y)
    before = snapshot(a)
    report = channel.sync(Policy("pull", "keep"))
    assert snapshot(a) == before
    assert channel.bodies("b") == Counter({X: 1, Y: 1})
    assert not report.failed


def test_two_way_sync_converges_and_a_second_run_plans_nothing(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    b.persisted = STANDARD_FLAGS
    a.add(X, {SEEN, "work"})
    a.add(X)  # an identical twin
    b.add(X, {FLAGGED})  # the same message delivered to both sides
    b.add(Y)
    report = channel.sync(Policy("both", "propagate"))
    assert not report.failed
    assert channel.bodies("a") == channel.bodies("b") == Counter({X: 2, Y: 1})
    for pair in channel.pairs():
        flags_a = a.messages[pair.key_a][1]
        flags_b = b.messages[pair.key_b][1]
        assert flags_a & STANDARD_FLAGS == flags_b
        assert flags_a == pair.flags
    assert channel.plan_again(Policy("both", "propagate")).is_empty()


def test_unreadable_source_message_is_copied_once_readable(channel):
    a = channel.folders["a"]
    key = a.add(X)
    a.fail_keys = {key}
    report = channel.sync(Policy("pull"))
    assert report.failed and channel.bodies("b") == Counter()
    a.fail_keys = set()
    report = channel.sync(Policy("pull"))
    assert not report.failed and channel.bodies("b") == Counter({X: 1})
    assert channel.plan_again(Policy("pull")).is_empty()


def test_refused_deletions_leave_mail_and_pairs_untouched(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    for i in range(3):
        a.add(b"Subject: %d\n\n" % i)
    channel.sync(Policy("pull"))
    pairs = channel.pairs()
    for key in list(a.messages):
        a.delete(key)
    before = snapshot(b)
    report = channel.sync(Policy("pull", "propagate"))
    assert report.refused and not report.failed
    assert snapshot(b) == before and channel.pairs() == pairs
    forced = channel.sync(Policy("pull", "propagate", force_delete=True))
    assert not forced.refused and b.messages == {} and channel.pairs() == []


# Failures the machine found (fixed in the library since), replayed.


def test_mirror_keeps_a_tombstoned_message_restored_on_the_other_side(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    a.add(X)
    channel.sync(Policy("both"))
    b.delete(key_of(b, X))
    channel.sync(Policy("both", "keep"))  # a keeps X; the pair becomes a tombstone
    b.add(X)  # the user restores X on b
    channel.sync(Policy("both", "propagate"))
    assert channel.bodies("a") == channel.bodies("b") == Counter({X: 1})
    assert channel.plan_again(Policy("both", "propagate")).is_empty()


def test_message_replaced_by_an_identical_one_is_not_duplicated_keep(channel):
    a = channel.folders["a"]
    original = a.add(X)
    channel.sync(Policy("pull", "keep"))
    a.add(X)  # e.g. moved out of the folder and back: same message, new key
    a.delete(original)
    channel.sync(Policy("pull", "keep"))
    # The same result as when a sync runs between the deletion and the new arrival.
    assert channel.bodies("b") == Counter({X: 1})


def test_message_replaced_by_an_identical_one_is_not_duplicated_copy_back(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    a.add(X)
    channel.sync(Policy("both"))
    b.set_flags(key_of(b, X), frozenset({FLAGGED}), frozenset())
    a.delete(key_of(a, X))
    a.add(X)
    channel.sync(Policy("both", "propagate"))
    assert channel.bodies("a") == channel.bodies("b") == Counter({X: 1})


def test_message_replaced_by_an_identical_one_copy_back_the_other_way(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    a.add(X)
    channel.sync(Policy("both"))
    a.set_flags(key_of(a, X), frozenset({FLAGGED}), frozenset())
    b.delete(key_of(b, X))
    b.add(X)
    channel.sync(Policy("both", "propagate"))
    assert channel.bodies("a") == channel.bodies("b") == Counter({X: 1})


def test_unreadable_destination_message_does_not_cause_a_duplicate(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    a.add(X)
    b.fail_keys = {b.add(X)}  # the same message on both sides; b's unreadable for now
    channel.sync(Policy("both"))
    b.fail_keys = set()
    channel.sync(Policy("both"))
    assert channel.bodies("a") == channel.bodies("b") == Counter({X: 1})


def test_first_sync_links_each_identical_copy_once(channel):
    # Two identical copies on b, one on a: one is linked, the other copied, and no
    # message on a ends up in two pairs.
    a, b = channel.folders["a"], channel.folders["b"]
    a.add(X)
    b.add(X)
    b.add(X)
    channel.sync(Policy("both"))
    assert channel.bodies("a") == channel.bodies("b") == Counter({X: 2})
    keys_a = [p.key_a for p in channel.pairs()]
    assert sorted(keys_a) == sorted(a.messages)


def test_unreadable_message_during_rematch_is_not_taken_as_deleted(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    a.add(X)
    a.add(Y)
    channel.sync(Policy("both"))
    b.renumber()  # UIDVALIDITY change on b
    b.fail_keys = {key_of(b, X)}  # ... and one message cannot be read right now
    channel.sync(Policy("both", "propagate"))
    assert channel.bodies("a")[X] == 1, "a's copy was deleted because b's could not be read"


def test_rematch_after_validity_change_does_not_delete_the_surviving_twin(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    first = a.add(X)
    a.add(X)
    channel.sync(Policy("both"))
    [older] = [p for p in channel.pairs() if p.key_a == first]
    old_keys = list(b.messages)
    b.renumber()
    renamed = dict(zip(old_keys, b.messages, strict=True))
    # The user deletes one of the twins on both sides; the other twin stays on both.
    a.delete(first)
    b.delete(renamed[older.key_b])
    channel.sync(Policy("both", "propagate"))
    assert channel.bodies("a") == channel.bodies("b") == Counter({X: 1})


def test_refused_deletion_stays_refused_on_the_next_run_empty_side(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    a.add(X)
    channel.sync(Policy("both"))
    b.add(Y)  # new mail on b
    a.delete(key_of(a, X))  # a is now empty
    first = channel.sync(Policy("both", "propagate"))
    assert first.refused and channel.bodies("b")[X] == 1
    second = channel.sync(Policy("both", "propagate"))
    assert second.refused and channel.bodies("b")[X] == 1


def test_refused_deletion_stays_refused_on_the_next_run_more_than_half(channel):
    a, b = channel.folders["a"], channel.folders["b"]
    for i in range(10):
        a.add(b"Subject: %d\n\n" % i)
    channel.sync(Policy("both"))
    for key in sorted(b.messages, key=int)[:6]:
        b.delete(key)  # 6 of 10: more than half
    b.add(X)
    b.add(Y)  # new mail on b, copied to a by the refusing run
    first = channel.sync(Policy("both", "propagate"))
    assert first.refused and len(a.messages) == 12
    second = channel.sync(Policy("both", "propagate"))
    assert second.refused and len(a.messages) == 12

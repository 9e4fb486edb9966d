"""The pure planner: the decision table per direction and delete policy, the three-way
flag merge, flags a side cannot keep, the mass-deletion safety rule, and folder selection."""

from __future__ import annotations

import pytest

from mailsync.folders import select_folders
from mailsync.message import FLAGGED, FORWARDED, SEEN, STANDARD_FLAGS, Info
from mailsync.planner import (
    Copy,
    Delete,
    Forget,
    Plan,
    SetFlags,
    Tombstone,
    effective_flags,
    flag_changes,
    merge_flags,
    plan,
)
from mailsync.policy import Policy
from mailsync.state import Pair

ANSWERED = "\\Answered"
WORK = "work"  # a keyword: Maildir and mbox cannot keep it
DIRECTIONS = ("pull", "push", "both")
DELETES = ("keep", "propagate")


def info(*flags: str) -> Info:
    return Info(frozenset(flags), 100, 1_600_000_000.0)


def fs(*flags: str) -> frozenset[str]:
    return frozenset(flags)


def standard_only(flag: str) -> bool:
    return flag in STANDARD_FLAGS


def describe(result: Plan) -> list[str]:
    """The plan as sorted readable lines, so a table row states exactly what it expects."""
    lines = []
    for c in result.copies:
        kind = "copy-back" if c.pair is not None else "copy"
        lines.append(f"{kind} {c.src}:{c.key} {' '.join(sorted(c.flags))}".rstrip())
    for f in result.flags:
        parts = []
        for side, (add, remove) in sorted(f.changes.items()):
            change = [f"+{x}" for x in sorted(add)] + [f"-{x}" for x in sorted(remove)]
            parts.append(f"{side} {' '.join(change)}")
        record = " ".join(sorted(f.new_flags))
        lines.append(f"flags {'; '.join(parts) or '-'} | record {record}".rstrip())
    for d in result.deletes:
        lines.append(f"delete {d.side}:{d.key}")
    for b in result.bookkeeping:
        if isinstance(b, Tombstone):
            lines.append(f"tombstone {b.side}")
        else:
            assert isinstance(b, Forget)
            lines.append("forget")
    return sorted(lines)


# -- the decision table ------------------------------------------------------------------
#
# Each scenario: (listing a, listing b, pairs).  Keys are "a1", "b1"; the synced flags
# of every pair are {\Seen}.  Every folder also holds one unchanged synced message
# (a0/b0), so no scenario trips the "source side is now empty" safety rule.

SYNCED = fs(SEEN)


def scenario(listing_a, listing_b, pairs):
    return (
        {"a0": info(SEEN), **listing_a},
        {"b0": info(SEEN), **listing_b},
        [Pair(0, "a0", "b0", SYNCED), *pairs],
    )


SCENARIOS = {
    "new-on-a": scenario({"a1": info(SEEN)}, {}, []),
    "new-on-b": scenario({}, {"b1": info(SEEN)}, []),
    "on-both": scenario({"a1": info(SEEN)}, {"b1": info(SEEN)}, [Pair(1, "a1", "b1", SYNCED)]),
    "deleted-on-a": scenario({}, {"b1": info(SEEN)}, [Pair(1, "a1", "b1", SYNCED)]),
    "deleted-on-b": scenario({"a1": info(SEEN)}, {}, [Pair(1, "a1", "b1", SYNCED)]),
    "deleted-on-both": scenario({}, {}, [Pair(1, "a1", "b1", SYNCED)]),
    "tombstone-a-then-run": scenario({}, {"b1": info(SEEN)}, [Pair(1, None, "b1", SYNCED)]),
    "tombstone-b-then-run": scenario({"a1": info(SEEN)}, {}, [Pair(1, "a1", None, SYNCED)]),
    "deleted-on-b-flagged-on-a": scenario(
        {"a1": info(SEEN, FLAGGED)}, {}, [Pair(1, "a1", "b1", SYNCED)]
    ),
    "deleted-on-a-flagged-on-b": scenario(
        {}, {"b1": info(SEEN, FLAGGED)}, [Pair(1, "a1", "b1", SYNCED)]
    ),
}

# scenario -> {(direction, delete): expected lines}; "*" matches any value.
EXPECTED = {
    "new-on-a": {
        ("pull", "*"): ["copy a:a1 \\Seen"],
        ("push", "*"): [],
        ("both", "*"): ["copy a:a1 \\Seen"],
    },
    "new-on-b": {
        ("pull", "*"): [],
        ("push", "*"): ["copy b:b1 \\Seen"],
        ("both", "*"): ["copy b:b1 \\Seen"],
    },
    "on-both": {("*", "*"): []},
    "deleted-on-a": {
        ("*", "keep"): ["tombstone a"],
        ("pull", "propagate"): ["delete b:b1"],
        ("push", "propagate"): ["tombstone a"],  # b is read-only in a push
        ("both", "propagate"): ["delete b:b1"],
    },
    "deleted-on-b": {
        ("*", "keep"): ["tombstone b"],
        ("pull", "propagate"): ["tombstone b"],  # a is read-only in a pull
        ("push", "propagate"): ["delete a:a1"],
        ("both", "propagate"): ["delete a:a1"],
    },
    "deleted-on-both": {("*", "*"): ["forget"]},
    # A tombstone stays quiet until a later run propagates deletions (--mirror).
    "tombstone-a-then-run": {
        ("*", "keep"): [],
        ("pull", "propagate"): ["delete b:b1"],
        ("push", "propagate"): [],
        ("both", "propagate"): ["delete b:b1"],
    },
    "tombstone-b-then-run": {
        ("*", "keep"): [],
        ("pull", "propagate"): [],
        ("push", "propagate"): ["delete a:a1"],
        ("both", "propagate"): ["delete a:a1"],
    },
    # Deleted on one side while its flags changed on the other: two-way copies it back,
    # a one-way run that may write the changed side deletes it.
    "deleted-on-b-flagged-on-a": {
        ("*", "keep"): ["tombstone b"],
        ("pull", "propagate"): ["tombstone b"],
        ("push", "propagate"): ["delete a:a1"],
        ("both", "propagate"): ["copy-back a:a1 \\Flagged \\Seen"],
    },
    "deleted-on-a-flagged-on-b": {
        ("*", "keep"): ["tombstone a"],
        ("pull", "propagate"): ["delete b:b1"],
        ("push", "propagate"): ["tombstone a"],
        ("both", "propagate"): ["copy-back b:b1 \\Flagged \\Seen"],
    },
}


def expected_for(scenario: str, direction: str, delete: str) -> list[str]:
    table = EXPECTED[scenario]
    for key in ((direction, delete), (direction, "*"), ("*", delete), ("*", "*")):
        if key in table:
            return sorted(table[key])
    raise AssertionError(f"no expectation for {scenario} {direction} {delete}")


TABLE = [
    pytest.param(scenario, direction, delete, id=f"{scenario}-{direction}-{delete}")
    for scenario in SCENARIOS
    for direction in DIRECTIONS
    for delete in DELETES
]


@pytest.mark.parametrize(("scenario", "direction", "delete"), TABLE)
def test_decision_table(scenario, direction, delete):
    listing_a, listing_b, pairs = SCENARIOS[scenario]
    result = plan(listing_a, listing_b, pairs, Policy(direction, delete))
    assert describe(result) == expected_for(scenario, direction, delete)
    assert result.refused == [] and result.refused_deletes == []


def test_copy_back_carries_the_pair_so_the_executor_refills_it():
    pair = Pair(7, "a1", "b1", SYNCED)
    result = plan({"a1": info(SEEN, FLAGGED)}, {}, [pair], Policy("both", "propagate"))
    [copy] = result.copies
    assert copy == Copy("a", "a1", fs(SEEN, FLAGGED), 1_600_000_000.0, pair)


def test_deletions_and_tombstones_name_the_pair_they_act_on():
    pairs = [Pair(1, "a1", "b1", SYNCED), Pair(2, "a2", "b2", SYNCED)]
    listing_a = {"a2": info(SEEN)}
    listing_b = {"b1": info(SEEN)}
    result = plan(listing_a, listing_b, pairs, Policy("both", "propagate", force_delete=True))
    assert sorted(result.deletes, key=lambda d: d.side) == [
        Delete("a", "a2", pairs[1]),
        Delete("b", "b1", pairs[0]),
    ]
    keep = plan(listing_a, listing_b, pairs, Policy("both", "keep"))
    assert sorted((t.pair.id, t.side) for t in keep.bookkeeping) == [(1, "a"), (2, "b")]


def test_messages_known_only_as_tombstones_are_not_copied_again():
    result = plan({}, {"b1": info()}, [Pair(1, None, "b1", fs())], Policy("both", "keep"))
    assert result.is_empty()


def test_invalid_policy_values_are_rejected():
    with pytest.raises(ValueError, match="direction"):
        Policy("sideways")
    with pytest.raises(ValueError, match="delete"):
        Policy("both", "shred")


@pytest.mark.parametrize(
    ("direction", "writes_a", "writes_b"),
    [("pull", False, True), ("push", True, False), ("both", True, True)],
)
def test_policy_writes_only_the_destination(direction, writes_a, writes_b):
    policy = Policy(direction, "propagate")
    assert (policy.writes("a"), policy.writes("b")) == (writes_a, writes_b)
    assert (policy.propagates_to("a"), policy.propagates_to("b")) == (writes_a, writes_b)
    keep = Policy(direction, "keep")
    assert not keep.propagates_to("a") and not keep.propagates_to("b")


# -- flags: three-way merge ----------------------------------------------------------------

FLAG_CASES = [
    # (id, direction, synced, flags on a, flags on b, expected lines)
    ("both-added-on-a", "both", fs(), fs(SEEN), fs(), ["flags b +\\Seen | record \\Seen"]),
    ("both-added-on-b", "both", fs(), fs(), fs(SEEN), ["flags a +\\Seen | record \\Seen"]),
    ("both-removed-on-a", "both", fs(SEEN), fs(), fs(SEEN), ["flags b -\\Seen | record"]),
    ("both-removed-on-b", "both", fs(SEEN), fs(SEEN), fs(), ["flags a -\\Seen | record"]),
    ("both-same-add", "both", fs(), fs(SEEN), fs(SEEN), ["flags - | record \\Seen"]),
    ("both-same-remove", "both", fs(SEEN), fs(), fs(), ["flags - | record"]),
    ("both-unchanged", "both", fs(SEEN), fs(SEEN), fs(SEEN), []),
    (
        "both-added-on-a-removed-on-b",
        "both",
        fs(SEEN),
        fs(SEEN, FLAGGED),
        fs(),
        ["flags a -\\Seen; b +\\Flagged | record \\Flagged"],
    ),
    (
        "both-different-keywords-added",
        "both",
        fs(),
        fs(WORK),
        fs("home"),
        ["flags a +home; b +work | record home work"],
    ),
    ("pull-added-on-a", "pull", fs(), fs(SEEN), fs(), ["flags b +\\Seen | record \\Seen"]),
    ("pull-removed-on-a", "pull", fs(SEEN), fs(), fs(SEEN), ["flags b -\\Seen | record"]),
    # One-way runs leave the destination's own changes alone and record the source.
    ("pull-added-on-b-left-alone", "pull", fs(), fs(), fs(SEEN), []),
    (
        "pull-removed-on-b-left-alone",
        "pull",
        fs(SEEN),
        fs(SEEN),
        fs(),
        [],
    ),
    (
        "pull-both-changed-records-a",
        "pull",
        fs(SEEN),
        fs(SEEN, FLAGGED),
        fs(ANSWERED),
        ["flags b +\\Flagged | record \\Flagged \\Seen"],
    ),
    ("push-added-on-b", "push", fs(), fs(), fs(SEEN), ["flags a +\\Seen | record \\Seen"]),
    ("push-removed-on-b", "push", fs(SEEN), fs(SEEN), fs(), ["flags a -\\Seen | record"]),
    ("push-added-on-a-left-alone", "push", fs(), fs(SEEN), fs(), []),
    (
        "push-both-changed-records-b",
        "push",
        fs(SEEN),
        fs(ANSWERED),
        fs(SEEN, FLAGGED),
        ["flags a +\\Flagged | record \\Flagged \\Seen"],
    ),
]


@pytest.mark.parametrize(
    ("direction", "synced", "flags_a", "flags_b", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in FLAG_CASES],
)
def test_flag_merge_in_plan(direction, synced, flags_a, flags_b, expected):
    pair = Pair(1, "a1", "b1", synced)
    result = plan(
        {"a1": Info(flags_a, 1, 0.0)},
        {"b1": Info(flags_b, 1, 0.0)},
        [pair],
        Policy(direction),
    )
    assert describe(result) == sorted(expected)
    assert not result.copies and not result.deletes and not result.bookkeeping


@pytest.mark.parametrize(
    ("synced", "fa", "fb", "direction", "expected"),
    [
        pytest.param(fs(), fs("x"), fs(), "both", (fs("x"),) * 3, id="both-add-a"),
        pytest.param(fs("x"), fs("x"), fs(), "both", (fs(),) * 3, id="both-remove-b"),
        pytest.param(fs("x"), fs(), fs(), "both", (fs(),) * 3, id="both-removed-both"),
        pytest.param(fs(), fs("x"), fs("x"), "both", (fs("x"),) * 3, id="both-added-both"),
        pytest.param(
            fs("x", "y"),
            fs("x", "z"),
            fs("y", "w"),
            "both",
            (fs("z", "w"),) * 3,
            id="both-per-flag",
        ),
        pytest.param(
            fs("x"),
            fs("x", "y"),
            fs("w"),
            "pull",
            (fs("x", "y"), fs("y", "w"), fs("x", "y")),
            id="pull-add-a-keeps-b-own",
        ),
        pytest.param(fs("x"), fs(), fs("x", "w"), "pull", (fs(), fs("w"), fs()), id="pull-rm"),
        pytest.param(
            fs("x"),
            fs("w"),
            fs("x", "y"),
            "push",
            (fs("y", "w"), fs("x", "y"), fs("x", "y")),
            id="push-add-b-keeps-a-own",
        ),
        pytest.param(fs("x"), fs("x", "w"), fs(), "push", (fs("w"), fs(), fs()), id="push-rm"),
    ],
)
def test_merge_flags(synced, fa, fb, direction, expected):
    assert merge_flags(synced, fa, fb, direction) == expected


# -- flags a side cannot keep ----------------------------------------------------------


def test_effective_flags_takes_unkept_flags_from_the_state():
    listed = fs(SEEN)
    synced = fs(FLAGGED, WORK)
    assert effective_flags(listed, synced, standard_only) == fs(SEEN, WORK)
    assert effective_flags(listed, synced, lambda f: True) == fs(SEEN)


VERBS = frozenset({frozenset({ANSWERED, FORWARDED})})  # EWS's last verb


def all_flags(flag: str) -> bool:
    return True


def test_effective_flags_of_a_group_kept_one_at_most():
    both = fs(ANSWERED, FORWARDED)
    assert effective_flags(fs(ANSWERED), both, all_flags, VERBS) == both
    assert effective_flags(fs(FORWARDED), both | fs(SEEN), all_flags, VERBS) == both
    assert effective_flags(fs(SEEN), both, all_flags, VERBS) == fs(SEEN)  # neither shown
    assert effective_flags(fs(ANSWERED), fs(FORWARDED), all_flags, VERBS) == both
    assert effective_flags(fs(ANSWERED), both, all_flags) == fs(ANSWERED)  # no group


def test_flag_changes_name_the_flags_of_a_group_that_stay():
    both = fs(ANSWERED, FORWARDED)
    assert flag_changes(both, fs(ANSWERED), all_flags, VERBS) == (fs(ANSWERED), fs(FORWARDED))
    assert flag_changes(both, fs(), all_flags, VERBS) == (fs(), both)
    assert flag_changes(fs(FORWARDED), both, all_flags, VERBS) == (both, fs())
    assert flag_changes(both, both | fs(SEEN), all_flags, VERBS) == (fs(SEEN), fs())
    assert flag_changes(both, fs(ANSWERED), all_flags, frozenset()) == (fs(), fs(FORWARDED))


def test_a_forward_the_server_cannot_show_beside_a_reply_is_not_taken_away():
    both = fs(ANSWERED, FORWARDED)
    result = plan(
        {"a1": Info(fs(ANSWERED), 10, 1.0)},
        {"b1": Info(both, 10, 1.0)},
        [Pair(1, "a1", "b1", both, "d")],
        Policy("both"),
        exclusive_a=VERBS,
    )
    assert not result.flags
    without = plan(
        {"a1": Info(fs(ANSWERED), 10, 1.0)},
        {"b1": Info(both, 10, 1.0)},
        [Pair(1, "a1", "b1", both, "d")],
        Policy("both"),
    )
    assert [s.changes for s in without.flags] == [{"b": (fs(), fs(FORWARDED))}]


def plan_unkept(flags_a, flags_b, synced, direction="both"):
    return plan(
        {"a1": Info(flags_a, 1, 0.0)},
        {"b1": Info(flags_b, 1, 0.0)},
        [Pair(1, "a1", "b1", synced)],
        Policy(direction),
        persists_b=standard_only,
    )


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_keyword_b_cannot_keep_is_never_seen_as_removed(direction):
    result = plan_unkept(fs(SEEN, WORK), fs(SEEN), fs(SEEN, WORK), direction)
    assert result.is_empty()


def test_keyword_added_on_a_is_recorded_but_not_written_to_b():
    [action] = plan_unkept(fs(SEEN, WORK), fs(SEEN), fs(SEEN)).flags
    assert action.changes == {}
    assert action.new_flags == fs(SEEN, WORK)


def test_keyword_removed_on_a_is_forgotten_in_the_state_only():
    [action] = plan_unkept(fs(SEEN), fs(SEEN), fs(SEEN, WORK)).flags
    assert action.changes == {}
    assert action.new_flags == fs(SEEN)


def test_keyword_kept_in_state_survives_a_change_of_a_standard_flag_on_b():
    [action] = plan_unkept(fs(SEEN, WORK), fs(SEEN, FLAGGED), fs(SEEN, WORK)).flags
    assert action.changes == {"a": (fs(FLAGGED), fs())}
    assert action.new_flags == fs(SEEN, FLAGGED, WORK)


def test_copy_back_from_a_side_that_cannot_keep_keywords_carries_them():
    result = plan(
        {},
        {"b1": Info(fs(SEEN, FLAGGED), 1, 0.0)},
        [Pair(1, "a1", "b1", fs(SEEN, WORK))],
        Policy("both", "propagate"),
        persists_b=standard_only,
    )
    assert describe(result) == ["copy-back b:b1 \\Flagged \\Seen work"]


# -- safety: mass deletions ----------------------------------------------------------------


def synced_folder(n: int, gone_on_a: int, extra_on_a: int = 0):
    """n messages synced; the first `gone_on_a` deleted on a; `extra_on_a` new ones there."""
    pairs = [Pair(i, f"a{i}", f"b{i}", fs()) for i in range(n)]
    listing_a = {f"a{i}": info() for i in range(gone_on_a, n)}
    listing_a.update({f"new{i}": info() for i in range(extra_on_a)})
    listing_b = {f"b{i}": info() for i in range(n)}
    return listing_a, listing_b, pairs


@pytest.mark.parametrize(
    ("n", "gone", "extra", "refused"),
    [
        pytest.param(10, 6, 0, True, id="6-of-10-refused"),
        pytest.param(20, 11, 0, True, id="11-of-20-refused"),
        pytest.param(10, 5, 0, False, id="exactly-half-of-10-allowed"),
        pytest.param(9, 9, 1, False, id="all-9-of-9-allowed"),
        pytest.param(9, 8, 0, False, id="8-of-9-allowed"),
        pytest.param(3, 3, 0, True, id="source-now-empty-3-refused"),
        pytest.param(1, 1, 0, True, id="source-now-empty-1-refused"),
        pytest.param(12, 12, 0, True, id="source-now-empty-12-refused"),
    ],
)
@pytest.mark.parametrize("direction", ["pull", "both"])
def test_mass_deletion_safety(direction, n, gone, extra, refused):
    listing_a, listing_b, pairs = synced_folder(n, gone, extra)
    result = plan(listing_a, listing_b, pairs, Policy(direction, "propagate"))
    doomed = sorted(f"b{i}" for i in range(gone))
    if refused:
        assert result.deletes == []
        assert sorted(d.key for d in result.refused_deletes) == doomed
        assert len(result.refused) == 1
        assert f"would delete {gone}" in result.refused[0]
        # Refused deletions leave their pairs alone: no tombstone, no forget.
        assert result.bookkeeping == []
    else:
        assert sorted(d.key for d in result.deletes) == doomed
        assert result.refused == [] and result.refused_deletes == []
    forced = plan(listing_a, listing_b, pairs, Policy(direction, "propagate", force_delete=True))
    assert sorted(d.key for d in forced.deletes) == doomed
    assert forced.refused == [] and forced.refused_deletes == []


def test_refusal_reasons_say_why():
    big = plan(*synced_folder(10, 6), Policy("pull", "propagate"))
    [reason] = big.refused
    assert reason.startswith("would delete 6 of 10 messages on ")
    empty = plan(*synced_folder(3, 3), Policy("pull", "propagate"))
    [reason] = empty.refused
    assert "other side is now empty" in reason and "would delete 3 messages" in reason


@pytest.mark.parametrize(
    ("refused_before", "force", "refused"),
    [
        pytest.param(frozenset({"b"}), False, True, id="refused-before-sticks"),
        pytest.param(frozenset({"b"}), True, False, id="force-lifts-a-sticky-refusal"),
        pytest.param(frozenset({"a"}), False, False, id="other-side-refusal-irrelevant"),
        pytest.param(frozenset(), False, False, id="nothing-refused-before"),
    ],
)
def test_a_refusal_sticks_until_forced(refused_before, force, refused):
    # 1 of 9 on b, a not empty: safe on its own, but b's deletions were refused before.
    listing_a, listing_b, pairs = synced_folder(9, 1)
    policy = Policy("both", "propagate", force_delete=force)
    result = plan(listing_a, listing_b, pairs, policy, refused_before=refused_before)
    if refused:
        assert result.deletes == [] and [d.key for d in result.refused_deletes] == ["b0"]
        assert len(result.refused) == 1
    else:
        assert [d.key for d in result.deletes] == ["b0"] and result.refused == []


def test_refused_deletions_leave_pairs_untouched():
    listing_a, listing_b, pairs = synced_folder(10, 6)
    before = [Pair(p.id, p.key_a, p.key_b, p.flags, p.hash) for p in pairs]
    result = plan(listing_a, listing_b, pairs, Policy("both", "propagate"))
    assert result.deletes == [] and result.bookkeeping == []
    assert {id(d.pair) for d in result.refused_deletes} <= {id(p) for p in pairs}
    assert pairs == before


def test_safety_judges_each_side_on_its_own():
    # a deleted 7 of 12, so b would lose 7 of its 11 (refused); b deleted one, so a
    # would lose 1 of its remaining 5 (allowed).
    pairs = [Pair(i, f"a{i}", f"b{i}", fs()) for i in range(12)]
    listing_a = {f"a{i}": info() for i in range(12) if not 1 <= i <= 7}
    listing_b = {f"b{i}": info() for i in range(12) if i != 0}
    result = plan(listing_a, listing_b, pairs, Policy("both", "propagate"))
    assert [(d.side, d.key) for d in result.deletes] == [("a", "a0")]
    assert sorted(d.key for d in result.refused_deletes) == [f"b{i}" for i in range(1, 8)]
    [reason] = result.refused
    assert reason.startswith("would delete 7 of 11 messages on ")


def test_copies_and_flags_still_happen_when_deletions_are_refused():
    listing_a, listing_b, pairs = synced_folder(10, 6)
    listing_a["a9"] = info(SEEN)
    listing_a["fresh"] = info()
    result = plan(listing_a, listing_b, pairs, Policy("both", "propagate"))
    assert result.refused
    assert [c.key for c in result.copies] == ["fresh"]
    assert [f.changes for f in result.flags] == [{"b": (fs(SEEN), fs())}]


def test_keep_never_deletes_even_when_everything_is_gone():
    result = plan(*synced_folder(12, 12), Policy("both", "keep"))
    assert result.deletes == [] and result.refused == []
    assert len(result.bookkeeping) == 12


def test_plan_count_summarises_actions():
    pairs = [Pair(1, "a1", "b1", fs()), Pair(2, "a2", "b2", fs())]
    listing_a = {"a1": info(SEEN), "new": info()}
    listing_b = {"b1": info(), "newb": info()}
    counts = plan(listing_a, listing_b, pairs, Policy("both", "propagate")).count()
    assert counts == {
        "copy_a_to_b": 1,
        "copy_b_to_a": 1,
        "flags_a": 0,
        "flags_b": 1,
        "delete_a": 0,
        "delete_b": 0,
    }


# -- folder selection ------------------------------------------------------------------------

FOLDERS = ["Archive", "Archive/2023", "Drafts", "INBOX", "Lists/python", "Spam", "Trash"]


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        pytest.param(["*"], ["INBOX", *sorted(set(FOLDERS) - {"INBOX"})], id="star-inbox-first"),
        pytest.param(["Archive*"], ["Archive", "Archive/2023"], id="glob-spans-slash"),
        pytest.param(["Archive"], ["Archive"], id="exact"),
        pytest.param(
            ["*", "!Spam", "!Trash"],
            ["INBOX", "Archive", "Archive/2023", "Drafts", "Lists/python"],
            id="negation",
        ),
        pytest.param(
            ["!Spam", "*"], ["INBOX", *sorted(set(FOLDERS) - {"INBOX"})], id="later-positive-wins"
        ),
        pytest.param(
            ["*", "!Archive*", "Archive/2023"],
            ["INBOX", "Archive/2023", "Drafts", "Lists/python", "Spam", "Trash"],
            id="later-positive-re-includes",
        ),
        pytest.param(["Lists/*", "Drafts"], ["Drafts", "Lists/python"], id="several"),
        pytest.param(["inbox"], [], id="case-sensitive"),
        pytest.param(
            ["!INBOX", "!Spam"],
            sorted(set(FOLDERS) - {"INBOX", "Spam"}),
            id="exclusions-alone-exclude-from-every-folder",
        ),
        pytest.param([], [], id="no-patterns"),
        pytest.param(["Sp?m", "Tras[h]"], ["Spam", "Trash"], id="fnmatch-wildcards"),
    ],
)
def test_select_folders(patterns, expected):
    assert select_folders(FOLDERS, patterns) == expected


def test_select_folders_puts_inbox_first_and_drops_duplicates():
    names = ["Zeta", "INBOX", "Alpha", "Zeta", "INBOX"]
    assert select_folders(names, ["*"]) == ["INBOX", "Alpha", "Zeta"]


def test_set_flags_action_fields():
    pair = Pair(1, "a1", "b1", fs())
    [action] = plan({"a1": info(SEEN)}, {"b1": info()}, [pair], Policy("both")).flags
    assert action == SetFlags(pair, {"b": (fs(SEEN), fs())}, fs(SEEN))


# -- messages the other side refused before ----------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_copies_of_messages_refused_before_are_held_back(direction):
    listing_a = {"a1": info(), "a2": info(SEEN)}
    listing_b = {"b1": info(), "b2": info()}
    refused = {"a": {"a2"}, "b": {"b1"}}
    result = plan(listing_a, listing_b, [], Policy(direction), refused=refused)
    held = sorted(f"{c.src}:{c.key}" for c in result.withheld)
    copied = sorted(f"{c.src}:{c.key}" for c in result.copies)
    expected_copies = {"pull": ["a:a1"], "push": ["b:b2"], "both": ["a:a1", "b:b2"]}
    expected_held = {"pull": ["a:a2"], "push": ["b:b1"], "both": ["a:a2", "b:b1"]}
    assert copied == expected_copies[direction]
    assert held == expected_held[direction]
    # without the refusals (--retry-refused) everything is offered
    again = plan(listing_a, listing_b, [], Policy(direction))
    assert sorted(f"{c.src}:{c.key}" for c in again.copies) == sorted(
        expected_copies[direction] + expected_held[direction]
    )
    assert again.withheld == []


def test_refill_copies_again_what_the_written_side_lost_and_only_one_way():
    gone_now = Pair(1, "a1", "b1", fs(SEEN), "d")  # b1 deleted since it was copied
    tombstone = Pair(2, "a2", None, fs(), "e")  # deleted by an earlier keep-pull
    listing_a = {"a1": info(SEEN), "a2": info()}
    refill = plan(listing_a, {}, [gone_now, tombstone], Policy("pull", refill=True))
    assert sorted((c.key, c.pair is not None) for c in refill.copies) == [
        ("a1", True),
        ("a2", True),
    ]
    assert not refill.deletes
    keep = plan(listing_a, {}, [Pair(1, "a1", "b1", fs(SEEN), "d"), tombstone], Policy("pull"))
    assert not keep.copies
    # Two-way runs are not refilled: a deletion there is the user's.
    both = plan(
        {"a1": info(SEEN)}, {}, [Pair(1, "a1", "b1", fs(SEEN), "d")], Policy("both", refill=True)
    )
    assert not both.copies


@pytest.mark.parametrize(
    "direction, delete, on_b, expected",
    [
        # The item changed at the source: copied again over the old copy...
        ("pull", "keep", True, [("a", "A1", "B1")]),
        ("both", "propagate", True, [("a", "A1", "B1")]),
        # ... or in its place, where the old copy is gone (a run killed between the
        # deletion of the old copy and the record of the new one): never a tombstone.
        ("pull", "keep", False, [("a", "A1", None)]),
        ("pull", "propagate", False, [("a", "A1", None)]),
        # Nothing is written on b: nothing to replace.
        ("push", "keep", True, []),
    ],
)
def test_changed_items_are_copied_again(direction, delete, on_b, expected):
    pair = Pair(1, "A1", "B1", fs())
    other = Pair(2, "A2", "B2", fs())
    listing_b = {"B2": info()} | ({"B1": info()} if on_b else {})
    result = plan(
        {"A1": info(), "A2": info()},
        listing_b,
        [pair, other],
        Policy(direction, delete),
        changed={"a": {"A1"}},
    )
    assert [(c.src, c.key, c.replaces) for c in result.copies] == expected
    assert all(c.pair is pair for c in result.copies)
    assert not result.deletes and not result.flags
    if expected:
        assert not result.bookkeeping


def test_unchanged_items_are_not_copied_again():
    pair = Pair(1, "A1", "B1", fs())
    result = plan({"A1": info()}, {"B1": info()}, [pair], Policy("pull", "keep"), changed={})
    assert result.is_empty()

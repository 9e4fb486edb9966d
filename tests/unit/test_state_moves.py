"""The state's side of renamed folders: the journal of local moves (folder_moves), the
local and remote renames, and which folder states hold nothing (so a rename may take
their name)."""

from __future__ import annotations

import pytest

from mailsync.state import Pair, State


@pytest.fixture
def state(tmp_path):
    with State(str(tmp_path / "s.db")) as st:
        yield st


def names(state: State) -> list[tuple[str, str]]:
    return sorted((f.name_a, f.name_b) for f in state.folders())


def test_a_finished_move_renames_the_folder_and_those_below_it_only(state):
    for name in ("Old", "Old/Kid", "Old/Kid/Baby", "Oldies", "Other"):
        state.folder(name, name)
    state.begin()
    move = state.add_move("Old", "New/Place")
    state.commit()
    assert state.moves() == [(move, "Old", "New/Place")]
    state.begin()
    state.finish_move(move, "Old", "New/Place")
    state.commit()
    assert state.moves() == []
    assert names(state) == [
        ("Old", "New/Place"),
        ("Old/Kid", "New/Place/Kid"),
        ("Old/Kid/Baby", "New/Place/Kid/Baby"),
        ("Oldies", "Oldies"),
        ("Other", "Other"),
    ]


def test_a_journaled_move_survives_a_reopen_and_can_be_dropped(tmp_path):
    path = str(tmp_path / "s.db")
    with State(path) as state:
        state.begin()
        state.add_move("A", "B")
        state.commit()
    with State(path) as state:
        [(move, old, new)] = state.moves()
        assert (old, new) == ("A", "B")
        state.begin()
        state.drop_move(move)
        state.commit()
        assert state.moves() == []


def test_renames_of_either_side_keep_the_folder_and_its_pairs(state):
    folder = state.folder("INBOX/Sent", "INBOX/Sent")
    state.begin()
    state.add_pair(folder.id, Pair(None, "1", "k", frozenset({"\\Seen"})))
    state.rename_folder(folder, "Sent")
    state.rename_local(folder, "Sent")
    state.commit()
    assert names(state) == [("Sent", "Sent")]
    assert state.folder("Sent", "Sent").id == folder.id
    assert [p.key_b for p in state.pairs(folder.id)] == ["k"]


@pytest.mark.parametrize("what", ["pair", "pending", "refused"])
def test_a_folder_holds_nothing_until_it_knows_a_message(state, what):
    folder = state.folder("Sent", "Sent")
    assert state.holds_nothing(folder.id)
    state.begin()
    if what == "pair":
        state.add_pair(folder.id, Pair(None, "1", None, frozenset()))
    elif what == "pending":
        state.record_pending(folder.id, "a", ["1"])
    else:
        state.record_refusal(folder.id, "a", "1", "h", {}, "too big")
    state.commit()
    assert not state.holds_nothing(folder.id)
    state.begin()
    state.forget_folder(folder)
    state.commit()
    assert state.folders() == []
    assert state.holds_nothing(folder.id)


def test_a_forgotten_folders_notes_go_with_it(state):
    """SQLite gives the next folder the same id: it must not inherit the old one's notes
    (a clean run, deletions refused, account ids learnt)."""
    folder = state.folder("Sent", "Sent")
    state.begin()
    for note in ("clean", "refused", "account-ids"):
        state.set_meta(f"{note}:{folder.id}", "x")
    state.set_meta("url_a", "imaps://keep.example")
    state.forget_folder(folder)
    state.commit()
    new = state.folder("Other", "Other")
    assert new.id == folder.id  # (the point of the test)
    assert [state.get_meta(f"{n}:{new.id}") for n in ("clean", "refused", "account-ids")] == [
        None
    ] * 3
    assert state.get_meta("url_a") == "imaps://keep.example"

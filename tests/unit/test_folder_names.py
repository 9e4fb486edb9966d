"""folder_names: which SOURCE folder goes to which DEST folder when their names differ
(explicit rules, SPECIAL-USE, the table of usual and localized names, escaping)."""

from __future__ import annotations

import pytest

from mailsync.errors import ConfigError
from mailsync.folder_names import (
    NameRules,
    Side,
    compile_rename,
    escape_name,
    job_pairs,
    pair_names,
    parse_map,
    role_by_name,
    unescape_level,
)


def targets(pairs: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: dest for name, (dest, _) in pairs.items()}


def test_explicit_map_and_regex_rules_come_first_exact_before_regex():
    rules = NameRules(
        parse_map(["Old/Name=New/Name"]),
        compile_rename([["^Old/(.*)", "Older/\\1"], ["^Projects$", "Work"]], "[channel.x]"),
    )
    source = Side(["INBOX", "Old/Name", "Old/Other", "Projects", "Sent Items"], {})
    dest = Side(["INBOX", "Sent"], {})
    pairs = pair_names(source, dest, rules)
    assert targets(pairs) == {
        "Old/Name": "New/Name",
        "Old/Other": "Older/Other",
        "Projects": "Work",
        "Sent Items": "Sent",
    }
    assert pairs["Old/Name"][1] == "--map Old/Name=New/Name"
    assert "rename rule" in pairs["Old/Other"][1]
    assert pairs["Sent Items"][1] == "a usual name of \\Sent"


def test_a_rule_beats_special_use_and_the_table():
    rules = NameRules(parse_map(["Sent Items=Archive/Sent 2020"]))
    pairs = pair_names(Side(["Sent Items"], {"Sent Items": "\\Sent"}), Side(["Sent"], {}), rules)
    assert targets(pairs) == {"Sent Items": "Archive/Sent 2020"}


def test_special_use_on_both_sides_pairs_names_no_table_knows():
    source = Side(["INBOX", "Outbox 1"], {"Outbox 1": "\\Sent"})
    dest = Side(["INBOX", "Mes envois", "Sent"], {"Mes envois": "\\Sent"})
    pairs = pair_names(source, dest)
    assert pairs == {"Outbox 1": ("Mes envois", "SPECIAL-USE \\Sent on both sides")}


def test_localized_names_meet():
    source = Side(
        ["INBOX", "Gesendete Objekte", "Gelöschte Elemente", "Junk-E-Mail", "Entwürfe"], {}
    )
    dest = Side(["INBOX", "Éléments envoyés", "Corbeille", "Spam", "Brouillons"], {})
    assert targets(pair_names(source, dest)) == {
        "Gesendete Objekte": "Éléments envoyés",
        "Gelöschte Elemente": "Corbeille",
        "Junk-E-Mail": "Spam",
        "Entwürfe": "Brouillons",
    }


@pytest.mark.parametrize(
    "name, role",
    [
        ("Sent Items", "\\Sent"),
        ("sent messages", "\\Sent"),
        ("[Gmail]/Sent Mail", "\\Sent"),
        ("Skickat", "\\Sent"),
        ("Posta inviata", "\\Sent"),
        ("Verzonden items", "\\Sent"),
        ("Elementos enviados", "\\Sent"),
        ("Deleted Items", "\\Trash"),
        ("Papierkorb", "\\Trash"),
        ("Junk E-mail", "\\Junk"),
        ("Archiv", "\\Archive"),
        ("Projects", None),
    ],
)
def test_the_table(name, role):
    assert role_by_name(name) == role


def test_no_two_folders_into_one_and_no_folder_away_from_its_own_name():
    # SOURCE has Sent and Sent Items: Sent goes to Sent, Sent Items keeps its name.
    pairs = pair_names(Side(["Sent", "Sent Items"], {}), Side(["Sent"], {}))
    assert pairs == {}
    # Two SOURCE folders of one role and no DEST folder of either name: the one marked
    # by SPECIAL-USE goes; without a mark, neither.
    dest = Side(["Sent"], {"Sent": "\\Sent"})
    assert targets(pair_names(Side(["Sent Items", "Gesendet"], {}), dest)) == {}
    marked = Side(["Sent Items", "Gesendet"], {"Gesendet": "\\Sent"})
    assert targets(pair_names(marked, dest)) == {"Gesendet": "Sent"}
    # DEST has two folders of the role by name and none marked: none is chosen.
    assert pair_names(Side(["Sent Items"], {}), Side(["Sent", "Gesendet"], {})) == {}
    # A DEST without the role: the name stays.
    assert pair_names(Side(["Sent Items"], {}), Side(["INBOX"], {})) == {}


def test_a_rule_mapping_two_folders_to_one_is_a_config_error():
    rules = NameRules(parse_map(["A=C", "B=C"]))
    with pytest.raises(ConfigError, match="'A' and 'B' to 'C'"):
        pair_names(Side(["A", "B"], {}), Side([], {}), rules)
    # Onto a SOURCE folder's own name too.
    with pytest.raises(ConfigError, match="both go to 'B'"):
        pair_names(Side(["A", "B"], {}), Side([], {}), NameRules(parse_map(["A=B"])))


@pytest.mark.parametrize(
    "rules, message",
    [
        ([["^(unclosed", "x"]], "rename rule 1 '\\^\\(unclosed': missing \\)"),
        ([["ok", "x"], ["a"]], 'rename rule 2 must be \\["regex", "replacement"\\]'),
        ("^a", "rename must be a list"),
    ],
)
def test_bad_rename_rules(rules, message):
    with pytest.raises(ConfigError, match=message):
        compile_rename(rules, "[channel.x]")


def test_a_replacement_naming_a_missing_group_is_a_config_error():
    rules = NameRules(patterns=compile_rename([["^Old/(.*)", "New/\\2"]], "[channel.x]"))
    with pytest.raises(ConfigError, match="rename rule"):
        pair_names(Side(["Old/x"], {}), Side([], {}), rules)


@pytest.mark.parametrize("value", ["NoEquals", "=New", "Old=", "Old=a//b", "Old=../x"])
def test_bad_map_values(value):
    with pytest.raises(ConfigError, match="--map"):
        parse_map([value])


def test_escaping_a_delimiter_inside_a_level_is_reversible():
    source = Side(["INBOX", "a.b", "x/v1.2", "100%.x", "plain"], {})
    dest = Side(["INBOX"], {}, reserved=".")
    pairs = pair_names(source, dest)
    assert targets(pairs) == {"a.b": "a%2Eb", "x/v1.2": "x/v1%2E2", "100%.x": "100%25%2Ex"}
    assert "escaped" in pairs["a.b"][1]
    for name, (escaped, _) in pairs.items():
        assert "/".join(unescape_level(level) for level in escaped.split("/")) == name
    assert escape_name("100%", ".") == "100%"  # (nothing to escape: the name stays)


def test_a_pairing_of_an_earlier_run_stays():
    # The first run paired Sent Items with Sent; since, a DEST folder "Sent Items" appeared.
    # Its mail must not go there now (it would be copied twice).
    remote = Side(["INBOX", "Sent Items"], {})
    local = Side(["INBOX", "Sent", "Sent Items"], {})
    assert pair_names(remote, local) == {}
    pairs = job_pairs(remote, local, NameRules(), {"Sent Items": "Sent"})
    assert pairs == {"Sent Items": ("Sent", "paired on an earlier run")}


def test_push_pairs_from_the_local_side():
    # push: SOURCE is the local side; the result is still remote -> local.
    remote = Side(["INBOX", "Sent"], {"Sent": "\\Sent"}, reserved=".")
    local = Side(["INBOX", "Sent Items", "v1.0"], {})
    pairs = job_pairs(remote, local, NameRules(), {}, source_is_remote=False)
    assert targets(pairs) == {"Sent": "Sent Items", "v1%2E0": "v1.0"}


def test_a_folder_made_since_under_a_kept_pairings_name_is_refused():
    # Sent Items went to Sent; now SOURCE has a Sent of its own: it would share it.
    remote = Side(["INBOX", "Sent", "Sent Items"], {})
    local = Side(["INBOX", "Sent"], {})
    with pytest.raises(ConfigError, match="'Sent' and 'Sent Items' would both go to 'Sent'"):
        job_pairs(remote, local, NameRules(), {"Sent Items": "Sent"})
    rules = NameRules(parse_map(["Sent=Sent (new)"]))
    assert targets(job_pairs(remote, local, rules, {"Sent Items": "Sent"})) == {
        "Sent": "Sent (new)",
        "Sent Items": "Sent",
    }


def test_folders_below_a_special_folder_go_with_it():
    """Archive -> Arkisto by SPECIAL-USE takes Archive/2019 to Arkisto/2019 (not a second
    archive under the old name); a rule or a DEST folder of the child's own name wins."""
    source = Side(
        ["INBOX", "Archive", "Archive/2019", "Archive/2019/Q1", "Archive/2020", "Sent", "Sent/Old"],
        {"Archive": "\\Archive", "Sent": "\\Sent"},
    )
    dest = Side(["INBOX", "Arkisto", "Sent/Old"], {"Arkisto": "\\Archive"})
    rules = NameRules(parse_map(["Archive/2020=Old Years/2020"]))
    pairs = pair_names(source, dest, rules)
    assert targets(pairs) == {
        "Archive": "Arkisto",
        "Archive/2019": "Arkisto/2019",
        "Archive/2019/Q1": "Arkisto/2019/Q1",
        "Archive/2020": "Old Years/2020",
    }
    assert pairs["Archive/2019/Q1"][1] == "below Archive, which goes to Arkisto"
    # A SOURCE folder of the new name keeps it: the child stays where it was.
    taken = Side([*source.names, "Arkisto/2019"], source.special)
    assert "Archive/2019" not in targets(pair_names(taken, dest, rules))

"""`mailsync migrate` to and from a Dovecot whose special folders have names no table of
mailsync's knows (dovecot_localized_server: Finnish names, ``INBOX.`` prefix, ``.``
delimiter, modified UTF-7 on the wire), so only SPECIAL-USE can pair them: Sent lands in
DEST's \\Sent folder (INBOX.Lähetetyt), never in a new Sent; each pairing and its reason
in the dry run; a rerun pairs the same way from the state, also once DEST has a folder
named Sent, and copies nothing; bytes, flags, keywords and INTERNALDATE compared message
by message (test_migrate_between_servers.fidelity) after each way there and back."""

from __future__ import annotations

import json

from imaptools import Msg, connect, message, run, seed, server_folders, when
from servers.dovecot import LOCALIZED_SPECIAL_USE
from test_migrate_between_servers import corpus, fidelity, migrate_and_check
from test_migrate_imap import imap_url

from mailsync.folder_names import role_by_name

SENT, TRASH = LOCALIZED_SPECIAL_USE["\\Sent"], LOCALIZED_SPECIAL_USE["\\Trash"]
DRAFTS, JUNK = LOCALIZED_SPECIAL_USE["\\Drafts"], LOCALIZED_SPECIAL_USE["\\Junk"]
ARCHIVE = LOCALIZED_SPECIAL_USE["\\Archive"]


def folders_of(server, user) -> list[str]:
    with connect(server, user) as client:
        return server_folders(client)


def test_the_localized_names_are_in_no_table():
    # What makes these tests prove SPECIAL-USE did the pairing, not the table of names.
    assert [role_by_name(name) for name in LOCALIZED_SPECIAL_USE.values()] == [None] * 5


def test_plain_to_localized_sent_lands_in_the_special_use_folder(
    dovecot_server, dovecot_localized_server, mailenv
):
    source = dovecot_server.add_user()
    dest = dovecot_localized_server.add_user(special_use=True)
    seed(dovecot_server, source, corpus("", "/"))
    seed(dovecot_server, source, {"Drafts": [], "Junk": []})  # empty: paired, nothing to copy
    src, dst = imap_url(dovecot_server, source), imap_url(dovecot_localized_server, dest)
    dest_folders = folders_of(dovecot_localized_server, dest)

    dry = run("migrate", "--dry-run", src, dst)
    assert dry.exit_code == 0, dry.output
    lines = dry.stdout.splitlines()
    for line in (
        f"Sent -> {SENT} (SPECIAL-USE \\Sent on both sides): 1 messages",
        f"Trash -> {TRASH} (SPECIAL-USE \\Trash on both sides): 1 messages",
        f"Drafts -> {DRAFTS} (SPECIAL-USE \\Drafts on both sides): 0 messages",
        f"Junk -> {JUNK} (SPECIAL-USE \\Junk on both sides): 0 messages",
    ):
        assert any(got.startswith(line) for got in lines), (line, dry.stdout)
    # The delimiter is translated (INBOX.Archive.2019), so the name stays as it is.
    assert any(got.startswith("Archive/2019: 3 messages") for got in lines), dry.stdout
    assert lines[-1].startswith("dry run: 9 of the 9 selected SOURCE messages"), dry.stdout
    assert folders_of(dovecot_localized_server, dest) == dest_folders  # nothing written

    report = migrate_and_check(
        dovecot_server,
        source,
        dovecot_localized_server,
        dest,
        {"Sent": f"INBOX.{SENT}", "Trash": f"INBOX.{TRASH}", "Archive/2019": "INBOX.Archive.2019"},
    )
    pairs = {f["folder"]: (f["dest_folder"], f["why"]) for f in report["folders"]}
    assert pairs["Sent"] == (SENT, "SPECIAL-USE \\Sent on both sides")
    assert pairs["Trash"] == (TRASH, "SPECIAL-USE \\Trash on both sides")
    assert pairs["Archive/2019"] == ("Archive/2019", None)
    assert not {"INBOX.Sent", "INBOX.Trash"} & set(folders_of(dovecot_localized_server, dest))

    # A folder named Sent appears on DEST, new mail in SOURCE's Sent: the state keeps
    # the pairing, the new message goes where the others went.
    seed(dovecot_localized_server, dest, {"INBOX.Sent": []})
    seed(dovecot_server, source, {"Sent": [Msg(message(12), frozenset({"\\Seen"}), when(2022))]})
    dry = run("migrate", "--dry-run", src, dst)
    assert f"Sent -> {SENT} (paired on an earlier run): 2 messages" in dry.stdout, dry.stdout
    again = run("migrate", "--json", src, dst)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["copied"] == 1
    after = fidelity(dovecot_localized_server, dest)
    assert "INBOX.Sent" not in after
    assert after[f"INBOX.{SENT}"] == fidelity(dovecot_server, source)["Sent"]


def localized_corpus() -> dict[str, list[Msg]]:
    """corpus() on the localized server: its Sent and Trash under their Finnish names, and
    its archive's year below Arkisto."""
    names = {
        "INBOX.Sent": f"INBOX.{SENT}",
        "INBOX.Trash": f"INBOX.{TRASH}",
        "INBOX.Archive.2019": f"INBOX.{ARCHIVE}.2019",
    }
    return {names.get(k, k): v for k, v in corpus("INBOX.", ".").items()}


def test_localized_to_plain_and_back_by_special_use_only(
    dovecot_server, dovecot_localized_server, mailenv
):
    """Lähetetyt and Roskakori are in no table: only their SPECIAL-USE attributes take
    them to DEST's Sent and Trash; back on a new localized user, Sent and Trash find
    Lähetetyt and Roskakori again, and the mail is as it was in the first place."""
    first = dovecot_localized_server.add_user(special_use=True)
    plain = dovecot_server.add_user(special_use=True)  # Sent, Trash... with SPECIAL-USE
    seed(dovecot_localized_server, first, localized_corpus())
    there = migrate_and_check(
        dovecot_localized_server,
        first,
        dovecot_server,
        plain,
        {
            f"INBOX.{SENT}": "Sent",
            f"INBOX.{TRASH}": "Trash",
            f"INBOX.{ARCHIVE}.2019": "Archive/2019",  # (below its special folder)
        },
    )
    pairs = {f["folder"]: (f["dest_folder"], f["why"]) for f in there["folders"]}
    assert pairs[SENT] == ("Sent", "SPECIAL-USE \\Sent on both sides")
    assert pairs[TRASH] == ("Trash", "SPECIAL-USE \\Trash on both sides")
    assert pairs[DRAFTS] == ("Drafts", "SPECIAL-USE \\Drafts on both sides")
    assert SENT not in folders_of(dovecot_server, plain)

    back = dovecot_localized_server.add_user(special_use=True)
    migrate_and_check(
        dovecot_server,
        plain,
        dovecot_localized_server,
        back,
        {
            "Sent": f"INBOX.{SENT}",
            "Trash": f"INBOX.{TRASH}",
            "Archive/2019": f"INBOX.{ARCHIVE}.2019",
        },
    )
    assert fidelity(dovecot_localized_server, back) == fidelity(dovecot_localized_server, first)
    assert folders_of(dovecot_localized_server, back) == folders_of(dovecot_localized_server, first)

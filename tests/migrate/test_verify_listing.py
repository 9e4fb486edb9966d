"""`mailsync verify` (and the check after `mailsync migrate`) lists each missing, extra
and changed-flags message, between two users of the private Dovecot: a message removed
from DEST, one altered there (bytes changed), one re-flagged there and one that only
DEST has; and the pairing and flag comparison themselves (verify.pair_by_content,
verify.flags_agree) on their own."""

from __future__ import annotations

import json

from imaptools import Msg, connect, file_flags, maildir_files, message, run, seed, when, write_local
from test_migrate_imap import imap_url

from mailsync import channel as channelmod
from mailsync.verify import flags_agree, pair_by_content

CORPUS = {
    "INBOX": [
        Msg(message(1), frozenset({"\\Seen"}), when(2019)),
        Msg(message(2), frozenset(), when(2020)),
        Msg(message(3), frozenset({"\\Seen"}), when(2021)),
        Msg(message(4), frozenset({"\\Seen", "Custom_Keyword"}), when(2022)),
        # Two identical messages with other flags: paired flags to flags, no difference.
        Msg(message(5), frozenset({"\\Seen"}), when(2018)),
        Msg(message(5), frozenset({"\\Flagged"}), when(2018)),
    ],
    "Lists": [Msg(message(10), frozenset({"\\Seen"}), when(2019))],
}


def uid_of(client, subject: str) -> int:
    (uid,) = client.search(["HEADER", "Subject", subject])
    return uid


def subjects(entries) -> list[str]:
    return sorted(entry["subject"] for entry in entries)


def verify(server, source, dest):
    result = run("verify", "--json", imap_url(server, source), imap_url(server, dest))
    return result.exit_code, json.loads(result.stdout)


def test_verify_lists_missing_extra_and_changed_flags_and_migrate_repairs_only_missing(
    dovecot_server, mailenv
):
    source, dest = dovecot_server.add_user(), dovecot_server.add_user()
    seed(dovecot_server, source, CORPUS)
    first = run("migrate", imap_url(dovecot_server, source), imap_url(dovecot_server, dest))
    assert first.exit_code == 0, first.output
    code, clean = verify(dovecot_server, source, dest)
    assert code == 0 and (clean["missing"], clean["extra"], clean["changed_flags"]) == (0, 0, 0)

    with connect(dovecot_server, dest) as client:
        client.select_folder("INBOX")
        gone, altered = uid_of(client, "message 1"), uid_of(client, "message 2")
        client.add_flags([gone, altered], ["\\Deleted"])
        client.expunge()
        client.append("INBOX", (message(2) + b"tampered\n").replace(b"\n", b"\r\n"))
        client.append("INBOX", message(99).replace(b"\n", b"\r\n"), msg_time=when(2023))
        client.add_flags([uid_of(client, "message 3")], ["\\Flagged"])  # a reader's flag

    code, found = verify(dovecot_server, source, dest)
    assert code == 1  # messages are missing
    (inbox,) = [f for f in found["folders"] if f["folder"] == "INBOX"]
    assert subjects(inbox["missing_messages"]) == ["message 1", "message 2"]
    assert subjects(inbox["extra_messages"]) == ["message 2", "message 99"]
    (flagged,) = inbox["changed_flags_messages"]
    assert flagged["subject"] == "message 3" and flagged["message_id"].startswith("<3.")
    assert (flagged["source_flags"], flagged["dest_flags"]) == (["\\Seen"], ["\\Flagged", "\\Seen"])
    assert flagged["pending"] is False  # DEST's own change since the migration
    assert (found["missing"], found["extra"], found["changed_flags"]) == (2, 2, 1)
    assert all(entry["folder"] == "INBOX" for entry in inbox["extra_messages"])

    people = run("verify", imap_url(dovecot_server, source), imap_url(dovecot_server, dest))
    assert people.exit_code == 1
    lines = people.output.splitlines()
    assert "INBOX: 6 messages, 2 MISSING, 2 extra, 1 with other flags" in lines
    assert any(line.startswith("  extra: ") and '"message 99"' in line for line in lines)
    assert any(
        line.startswith("  flags (changed in DEST): ")
        and line.endswith(": SOURCE \\Seen, DEST \\Flagged \\Seen")
        for line in lines
    )

    # A rerun copies what is missing; the extra messages and DEST's flag stay, reported.
    again = run(
        "migrate", "--json", imap_url(dovecot_server, source), imap_url(dovecot_server, dest)
    )
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["copied"], report["missing"], report["extra"]) == (2, 0, 2)
    assert (report["changed_flags"], report["flags_to_copy"]) == (1, 0)
    assert report["verdict"].startswith("complete")

    # A flag SOURCE gained since is still to be copied: reported as pending by verify
    # (exit 0: nothing is missing), copied by the next migrate.
    with connect(dovecot_server, source) as client:
        client.select_folder("INBOX")
        client.add_flags([uid_of(client, "message 4")], ["\\Answered"])
    code, found = verify(dovecot_server, source, dest)
    assert code == 0
    pending = [m for f in found["folders"] for m in f["changed_flags_messages"] if m["pending"]]
    assert subjects(pending) == ["message 4"]
    assert (
        run("migrate", imap_url(dovecot_server, source), imap_url(dovecot_server, dest)).exit_code
        == 0
    )
    code, found = verify(dovecot_server, source, dest)
    assert code == 0 and found["changed_flags"] == 1  # only DEST's own change is left


def test_pairing_prefers_a_copy_with_the_same_flags_and_leaves_the_rest_on_each_side():
    prints = {"s1": ("A", None), "s2": ("A", None), "s3": ("B", "b"), "s4": ("C", "c")}
    flags = {"s1": frozenset({"\\Seen"}), "s2": frozenset(), "s3": frozenset(), "s4": frozenset()}
    dest_prints = {"d1": ("A", None), "d2": ("A", None), "d3": ("B2", "b"), "d4": ("D", "d")}
    dest_flags = {
        "d1": frozenset(),
        "d2": frozenset({"\\Seen"}),
        "d3": frozenset(),
        "d4": frozenset(),
    }
    pairs, missing, extra = pair_by_content(list(prints), prints, flags, dest_prints, dest_flags)
    assert pairs == [("s1", "d2", True), ("s2", "d1", True), ("s3", "d3", False)]
    assert (missing, extra) == (["s4"], ["d4"])


def test_flags_agree_takes_a_group_a_store_keeps_one_of_as_a_whole():
    group = frozenset({frozenset({"\\Answered", "$Forwarded"})})
    both = frozenset({"\\Answered", "$Forwarded", "\\Seen"})
    assert flags_agree(both, frozenset({"$Forwarded", "\\Seen"}), group)
    assert not flags_agree(both, frozenset({"\\Seen"}), group)
    assert not flags_agree(frozenset({"\\Answered"}), frozenset({"$Forwarded"}), group)
    assert not flags_agree(both, frozenset({"\\Answered", "\\Seen"}), frozenset())
    assert flags_agree(frozenset({"\\Seen"}), frozenset({"\\Seen"}), frozenset())


def test_migrate_is_incomplete_while_source_flags_are_still_to_be_copied(mailenv, monkeypatch):
    """SOURCE's flags change between the copy and the check (a mail reader on SOURCE,
    mid-migration): DEST still has what the run gave it, so the flags are still to be
    copied: incomplete, exit 1, named; the rerun copies them.  DEST's own change is
    not (the test above)."""
    src, dst = mailenv / "src", mailenv / "dst"
    unread = write_local(src, "INBOX", message(1), mtime=1.6e9)
    write_local(src, "INBOX", message(2), flags="S", mtime=1.6e9)
    real_verify = channelmod.verify

    def read_on_source_then_verify(*args, **kwargs):
        unread.rename(unread.parent.parent / "cur" / f"{unread.name}:2,S")
        monkeypatch.setattr(channelmod, "verify", real_verify)  # once
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(channelmod, "verify", read_on_source_then_verify)
    result = run("migrate", src, dst)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(
        line.startswith("  flags: ")
        and '"message 1"' in line
        and line.endswith("SOURCE \\Seen, DEST (none)")
        for line in lines
    ), lines
    assert "incomplete: 1 messages in DEST lack SOURCE's flags" in result.output
    again = run("migrate", "--json", src, dst)
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["changed_flags"], report["flags_to_copy"], report["complete"]) == (0, 0, True)
    assert all(file_flags(p) == frozenset({"\\Seen"}) for p in maildir_files(dst)["INBOX"])

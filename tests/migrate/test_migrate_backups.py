"""`mailsync migrate` from the private Dovecot to a local backup (Maildir, mbox) and
from that backup to a fresh account (a restore), message by message: a Maildir keeps
bytes, flags, keywords and dates both ways; an mbox keeps bytes and dates (its From_
line), and no flags (mailsync writes no Status headers into it: flags of an mbox live
in the state of the job that wrote it), so a restore from it brings none, and it ends
each message with a line end."""

from __future__ import annotations

import json
from collections import Counter

from imaptools import Msg, message, run, seed, server_contents, when
from test_migrate_imap import imap_url

CORPUS = {
    "INBOX": [
        Msg(message(1), frozenset(), when(2019, 3, 4, 5, 6, 7)),
        Msg(message(2), frozenset({"\\Seen", "\\Flagged", "Work"}), when(2020, offset_hours=5)),
        Msg(message(2), frozenset({"\\Seen"}), when(2020, 2)),  # the same bytes again
        Msg(message(3, extra=b"From here\n>From there\n"), frozenset({"\\Answered"}), when(2021)),
        Msg(b"Subject: no final newline\n\nlast", frozenset({"$Forwarded"}), when(2015)),
    ],
    "Sent": [Msg(message(10), frozenset({"\\Seen"}), when(2018))],
    "Archive/2019": [
        Msg(message(20 + n), frozenset({"\\Seen", "$Label1"}), when(2019, n + 1)) for n in range(3)
    ],
}


def on_server(server, user, flags: bool = True):
    """folder -> Counter of (bytes, flags and keywords, INTERNALDATE), without flags if
    not `flags`; empty folders left out."""
    out = {}
    for folder, messages in server_contents(server, user, std_only=False).items():
        if messages:
            out[folder] = (
                messages
                if flags
                else type(messages)(
                    (body, frozenset(), date) for body, _, date in messages.elements()
                )
            )
    return out


def migrate(source: str, dest: str, copied: int):
    result = run("migrate", "--json", source, dest)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["copied"] == copied and report["complete"], json.dumps(report["folders"])
    verified = run("verify", "--json", source, dest)
    assert verified.exit_code == 0, verified.output
    found = json.loads(verified.stdout)
    assert (found["missing"], found["extra"]) == (0, 0)
    return found


def test_dovecot_to_maildir_and_restored_to_a_new_account(dovecot_server, mailenv):
    account, restored = dovecot_server.add_user(), dovecot_server.add_user()
    seed(dovecot_server, account, CORPUS)
    backup = f"maildir:{mailenv / 'backup'}"
    found = migrate(imap_url(dovecot_server, account), backup, 9)
    assert found["changed_flags"] == 0
    found = migrate(backup, imap_url(dovecot_server, restored), 9)
    assert found["changed_flags"] == 0
    assert on_server(dovecot_server, restored) == on_server(dovecot_server, account)


def test_dovecot_to_mbox_and_restored_to_a_new_account(dovecot_server, mailenv):
    account, restored = dovecot_server.add_user(), dovecot_server.add_user()
    seed(dovecot_server, account, CORPUS)
    backup = f"mbox:{mailenv / 'backup'}"
    migrate(imap_url(dovecot_server, account), backup, 9)
    found = migrate(backup, imap_url(dovecot_server, restored), 9)
    assert found["changed_flags"] == 0  # an mbox keeps no flags: none are compared
    # An mbox ends each message with a line end (Folder.normalises): the one message
    # without one comes back with it; every other byte and every date as they were.
    wanted = {
        folder: Counter(
            (body if body.endswith(b"\n") else body + b"\n", flags, date)
            for body, flags, date in messages.elements()
        )
        for folder, messages in on_server(dovecot_server, account, flags=False).items()
    }
    assert on_server(dovecot_server, restored) == wanted

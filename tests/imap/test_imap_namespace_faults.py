"""NAMESPACE (RFC 2342) and MAILBOXID (RFC 8474) answers the real servers of
test_imap_namespaces.py do not give, from the scripted server (fakeimap.py): a refused
NAMESPACE, no personal namespace, no NAMESPACE at all, a folder in no namespace, a
"/"-delimited prefix, and folder ids without LIST-STATUS, malformed ones included."""

from __future__ import annotations

import sqlite3
from collections import Counter

from fakeimap import FakeIMAPServer
from imaptools import maildir_bodies, message, run, write_local

from mailsync.message import to_crlf

PASSWORD = "secret"


class NamespaceServer(FakeIMAPServer):
    """The fake with NAMESPACE (`namespace` is the answer's text, None: NO) and STATUS
    MAILBOXID (`mailbox_ids`: server name -> the text sent as its id)."""

    def __init__(self, *args, namespace: str | None, mailbox_ids=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.namespace = namespace
        self.mailbox_ids = mailbox_ids or {}

    def _cmd_namespace(self, send, tag, session, args, action):
        if self.namespace is None:
            send(f"{tag} NO namespaces are not available now\r\n")
        else:
            send(f"* NAMESPACE {self.namespace}\r\n{tag} OK done\r\n")

    def _cmd_status(self, send, tag, session, args, action):
        if args[1] != ["MAILBOXID"]:
            return super()._cmd_status(send, tag, session, args, action)
        box = self._box(args[0])
        send(f'* STATUS "{box.name}" (MAILBOXID ({self.mailbox_ids[box.name]}))\r\n')
        send(f"{tag} OK status\r\n")


CAPS = ("IMAP4rev1", "AUTH=PLAIN", "UIDPLUS", "NAMESPACE")


def crlf(n: int) -> bytes:
    return to_crlf(message(n))


def pull(fake, dest):
    return run("pull", fake.url(), f"maildir:{dest}", password=PASSWORD)


def local(dest) -> dict[str, Counter]:
    return {name: bodies for name, bodies in maildir_bodies(dest).items() if bodies}


def test_a_slash_delimited_prefix_is_left_out_and_put_back(mailenv):
    boxes = {"INBOX": [crlf(1)], "INBOX/Sent": [crlf(2)], "INBOX/A/B": [crlf(3)]}
    with NamespaceServer(boxes, capabilities=CAPS, namespace='(("INBOX/" "/")) NIL NIL') as fake:
        dest = mailenv / "m"
        result = pull(fake, dest)
        assert result.exit_code == 0, result.output
        assert local(dest) == {
            "INBOX": Counter([message(1)]),
            "Sent": Counter([message(2)]),
            "A/B": Counter([message(3)]),
        }
        write_local(dest, "Drafts", message(4))
        result = run("sync", fake.url(), f"maildir:{dest}", password=PASSWORD)
        assert result.exit_code == 0, result.output
        assert [m.body for m in fake.mailboxes["INBOX/Drafts"].messages] == [crlf(4)]


def test_a_refused_namespace_stops_the_run_instead_of_guessing_names(mailenv):
    """Guessing "no prefix" would name every folder differently from the last run."""
    boxes = {"INBOX": [crlf(1)], "INBOX/Sent": [crlf(2)]}
    with NamespaceServer(boxes, capabilities=CAPS, namespace=None) as fake:
        result = pull(fake, mailenv / "m")
    assert result.exit_code == 1
    assert "refused namespace" in result.stderr
    assert not (mailenv / "m").exists()


def test_no_personal_namespace_or_no_namespace_at_all_means_no_prefix(mailenv):
    boxes = {"INBOX": [crlf(1)], "INBOX/Sent": [crlf(2)]}
    want = {"INBOX": Counter([message(1)]), "INBOX/Sent": Counter([message(2)])}
    with NamespaceServer(boxes, capabilities=CAPS, namespace="NIL NIL NIL") as fake:
        assert pull(fake, mailenv / "nil").exit_code == 0
    assert local(mailenv / "nil") == want
    with NamespaceServer(boxes, capabilities=CAPS[:-1], namespace=None) as fake:
        assert pull(fake, mailenv / "none").exit_code == 0
        assert "NAMESPACE" not in fake.commands()
    assert local(mailenv / "none") == want


def test_folders_outside_the_personal_namespace_are_left_out_with_a_word(mailenv):
    boxes = {
        "INBOX": [crlf(1)],
        "INBOX/Sent": [crlf(2)],
        "Shared/Team": [crlf(3)],  # the shared namespace
        "Stray": [crlf(4)],  # in no namespace the server announced
    }
    namespace = '(("INBOX/" "/")) NIL (("Shared/" "/"))'
    with NamespaceServer(boxes, capabilities=CAPS, namespace=namespace) as fake:
        result = run("-v", "pull", fake.url(), f"maildir:{mailenv / 'm'}", password=PASSWORD)
    assert result.exit_code == 0, result.output
    assert local(mailenv / "m") == {"INBOX": Counter([message(1)]), "Sent": Counter([message(2)])}
    assert "skipping folder 'Shared/Team': it is another user's or a shared folder" in (
        result.stderr
    )
    assert "skipping folder 'Stray': it is in no namespace the server announced" in result.stderr


def test_mailbox_ids_without_list_status_and_malformed_ones(mailenv):
    boxes = {"INBOX": [crlf(1)], "Good": [crlf(2)], "Bad": [crlf(3)]}
    ids = {"INBOX": "F-inbox_1", "Good": "F-good_2", "Bad": "bad id\x01"}
    with NamespaceServer(
        boxes, capabilities=(*CAPS, "OBJECTID"), namespace='(("" "/")) NIL NIL', mailbox_ids=ids
    ) as fake:
        result = pull(fake, mailenv / "m")
        assert result.exit_code == 0, result.output
        assert sum(c == 'STATUS "Good" (MAILBOXID)' for c in fake.commands()) == 1
    con = sqlite3.connect(next((mailenv / "state" / "mailsync").glob("*.db")))
    idents = dict(con.execute("SELECT name_a, ident_a FROM folders"))
    con.close()
    assert idents == {"INBOX": "F-inbox_1", "Good": "F-good_2", "Bad": None}

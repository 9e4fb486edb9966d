"""What an IMAP server will not take: folders it cannot hold (said by --dry-run as the real
run finds), and messages it refuses on APPEND: named, recorded, not offered again unless
--retry-refused, shown by status; "try later" refusals are retried on every run.  Against
Dovecot (a size limit, an empty message) and a scripted server (fakeimap.py) for the
response codes Dovecot does not send."""

from __future__ import annotations

import json
import sqlite3

import pytest
from fakeimap import FakeIMAPServer
from imaptools import maildir_files, message, run, server_bodies, write_local

from mailsync.stores.vdir import make_vdir

PASSWORD = "secret"


class DotServer(FakeIMAPServer):
    """A server whose hierarchy delimiter is '.' (Courier, Cyrus)."""

    def _cmd_list(self, send, tag, session, args, action):
        for name in self.mailboxes:
            send(f'* LIST (\\HasNoChildren) "." "{name}"\r\n')
        send(f"{tag} OK list done\r\n")


def test_dry_run_names_a_folder_the_server_cannot_create(mailenv):
    """A calendar cannot go to an IMAP server: the dry run says so as the real run finds.
    A folder whose name holds the server's delimiter can: its name is escaped (and said)."""
    local = mailenv / "local"
    for folder in ("INBOX", "Lists.python", "Sent"):
        write_local(local, folder, message(1, folder))
    make_vdir(str(local / "Calendar"), "calendar")
    (local / "Calendar" / "event.ics").write_bytes(b"BEGIN:VCALENDAR\nEND:VCALENDAR\n")
    with DotServer() as fake:
        dry = run("push", "--dry-run", f"maildir:{local}", fake.url(), password=PASSWORD)
        assert dry.exit_code == 1, dry.output
        assert (
            f"Calendar: cannot be created on the remote side: imap://fake@{fake.host}:"
            f"{fake.port}: cannot hold calendar items"
        ) in dry.stderr
        assert "Lists%2Epython -> Lists.python (escaped" in dry.output
        assert "Sent: would be created on the remote side" in dry.stdout
        assert not any(c.startswith(("CREATE", "APPEND")) for c in fake.commands())
        real = run("push", f"maildir:{local}", fake.url(), password=PASSWORD)
        assert real.exit_code == 1
        assert "Calendar" in real.stderr and "cannot hold calendar items" in real.stderr
        assert sorted(fake.mailboxes) == ["INBOX", "Lists%2Epython", "Sent"]


# -- messages the server refuses ---------------------------------------------------------------

BAD = message(2, "the bad one", b"REFUSE-ME\n")


class RefusingServer(FakeIMAPServer):
    """Answers APPEND of a message containing REFUSE-ME with a tagged NO (and `code`)."""

    def __init__(self, *args, code: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.code = code
        self.refusing = True

    def _cmd_append(self, send, tag, session, args, action):
        if self.refusing and b"REFUSE-ME" in args[-1]:
            code = f"[{self.code}] " if self.code else ""
            send(f"{tag} NO {code}Message refused by the test server\r\n")
            return
        super()._cmd_append(send, tag, session, args, action)

    def appends(self) -> int:
        return sum(1 for c in self.commands() if c.startswith("APPEND"))


def local_tree(root):
    for body in (message(1), BAD, message(3)):
        write_local(root, "INBOX", body)


def push(fake, local, *extra):
    return run("push", *extra, f"maildir:{local}", fake.url(), password=PASSWORD)


def state_rows(mailenv, sql: str) -> list:
    (db,) = (mailenv / "state" / "mailsync").glob("*.db")
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("code", [None, "TOOBIG", "LIMIT", "PARSE", "CANNOT"])
def test_a_refused_message_is_named_recorded_and_not_offered_again(mailenv, code):
    local = mailenv / "local"
    local_tree(local)
    (bad_file,) = [p for p in maildir_files(local)["INBOX"] if b"REFUSE-ME" in p.read_bytes()]
    key = bad_file.name.split(":")[0]
    with RefusingServer(code=code) as fake:
        first = push(fake, local, "--json")
        assert first.exit_code == 1, first.output
        assert len(fake.mailboxes["INBOX"].messages) == 2
        assert (
            f"INBOX: the remote side refuses local message {key} (Mon, 4 Mar 2019 05:06:07 "
            '+0000, from a@example.org, "the bad one", <2.the-bad-one@example.org>): '
            f"{f'[{code}] ' if code else ''}Message refused by the test server"
            # A refusal about the size says the message's size.
            f"{f' (the message is {len(BAD) + BAD.count(10)} bytes)' if code == 'TOOBIG' else ''}"
            "; recorded, later runs will not offer it again (--retry-refused does)"
        ) in first.stderr
        (folder,) = json.loads(first.stdout)["channels"][0]["folders"]
        (refused,) = folder["refused_messages"]
        assert refused["key"] == key and refused["subject"] == "the bad one"
        assert refused["message_id"] == "<2.the-bad-one@example.org>"
        # never recorded as copied
        assert state_rows(mailenv, f"SELECT COUNT(*) FROM pairs WHERE key_b = '{key}'") == [(0,)]

        before = fake.appends()
        second = push(fake, local)
        assert second.exit_code == 0, second.output
        assert fake.appends() == before  # not offered again
        assert (
            "1 message(s) refused for good by the remote side on an earlier run were not "
            "offered again; mailsync status names them, --retry-refused offers them again"
        ) in second.stderr
        status = run("status")
        assert "refused by the remote side since " in status.stdout
        assert '"the bad one", <2.the-bad-one@example.org>: ' in status.stdout
        (entry,) = json.loads(run("status", "--json").stdout)["channels"]
        assert [r["key"] for r in entry["refused"]] == [key]
        assert entry["refused"][0]["side"] == "b"

        retried = push(fake, local, "--retry-refused")
        assert retried.exit_code == 1  # asked, and refused again
        assert fake.appends() == before + 1

        fake.refusing = False  # say the server's limit was raised
        accepted = push(fake, local, "--retry-refused")
        assert accepted.exit_code == 0, accepted.output
        assert len(fake.mailboxes["INBOX"].messages) == 3
        assert state_rows(mailenv, "SELECT COUNT(*) FROM refused") == [(0,)]
        last = push(fake, local)
        assert last.exit_code == 0 and "refused" not in last.stderr
        assert "refused by" not in run("status").stdout
    assert len({m.body for m in fake.mailboxes["INBOX"].messages}) == 3  # no duplicate


@pytest.mark.parametrize("code", ["OVERQUOTA", "UNAVAILABLE", "SERVERBUG", "INUSE", "TRYCREATE"])
def test_a_try_later_refusal_is_retried_on_every_run(mailenv, code):
    local = mailenv / "local"
    local_tree(local)
    with RefusingServer(code=code) as fake:
        for attempt in (1, 2):
            result = push(fake, local)
            assert result.exit_code == 1, result.output
            assert f"[{code}]" in result.stderr and "recorded" not in result.stderr
            assert fake.appends() == 3 + (attempt - 1)  # offered again on the second run
        assert state_rows(mailenv, "SELECT COUNT(*) FROM refused") == [(0,)]
        fake.refusing = False
        assert push(fake, local).exit_code == 0
        assert len(fake.mailboxes["INBOX"].messages) == 3


def test_a_refused_message_deleted_from_the_source_is_forgotten(mailenv):
    local = mailenv / "local"
    local_tree(local)
    with RefusingServer() as fake:
        assert push(fake, local).exit_code == 1
        assert push(fake, local).exit_code == 0
        for path in maildir_files(local)["INBOX"]:
            if b"REFUSE-ME" in path.read_bytes():
                path.unlink()
        result = push(fake, local)
        assert result.exit_code == 0 and "refused" not in result.stderr
    assert state_rows(mailenv, "SELECT COUNT(*) FROM refused") == [(0,)]


def test_dry_run_holds_back_what_was_refused(mailenv):
    local = mailenv / "local"
    local_tree(local)
    with RefusingServer() as fake:
        assert push(fake, local).exit_code == 1
        write_local(local, "INBOX", message(4))
        dry = push(fake, local, "--dry-run", "-v")
        assert dry.exit_code == 0, dry.output
        assert "would copy 0 to local, 1 to remote" in dry.stdout
        assert "held back 1 (refused before)" in dry.stdout
        assert "refused for good by the remote side on an earlier run" in dry.stderr


# -- Dovecot ---------------------------------------------------------------------------------------


def test_dovecot_refuses_a_message_over_its_size_limit(dovecot_server, mailenv):
    limit = {
        "mail_plugins": "quota",
        "quota": "count:User",
        "quota_vsizes": "yes",
        "quota_max_mail_size": "2k",
    }
    user = dovecot_server.add_user(settings=limit)
    local = mailenv / "local"
    big = message(9, "too big", b"x" * 3000 + b"\n")
    for body in (message(1), big, message(3)):
        write_local(local, "INBOX", body)
    url = f"{dovecot_server.url('imap', user)}?tls=none"
    first = run("push", f"maildir:{local}", url, password=user.password)
    assert first.exit_code == 1, first.output
    assert '"too big", <9.too-big@example.org>): [LIMIT] Mail size is larger' in first.stderr
    assert "secs)" not in first.stderr  # Dovecot's timing is no part of the reason
    assert sorted(server_bodies(dovecot_server, user)["INBOX"]) == [message(1), message(3)]
    second = run("push", f"maildir:{local}", url, password=user.password)
    assert second.exit_code == 0, second.output
    assert "1 message(s) refused for good by the remote side" in second.stderr
    status = run("status").stdout
    assert "[LIMIT] Mail size is larger than the maximum size allowed" in status


def test_dovecot_refuses_an_empty_message(dovecot_server, dovecot_user, mailenv):
    local = mailenv / "local"
    write_local(local, "INBOX", message(1))
    write_local(local, "INBOX", b"")  # an empty file in a Maildir
    url = f"{dovecot_server.url('imap', dovecot_user)}?tls=none"
    first = run("push", f"maildir:{local}", url, password=dovecot_user.password)
    assert first.exit_code == 1, first.output
    assert (
        "(no date, no sender, no subject, no Message-ID): Can't save a zero byte message"
        in first.stderr
    )
    again = run("push", f"maildir:{local}", url, password=dovecot_user.password)
    assert again.exit_code == 0, again.output
    assert server_bodies(dovecot_server, dovecot_user)["INBOX"] == {message(1): 1}

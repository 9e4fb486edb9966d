"""Faults Dovecot cannot produce, from a scripted fake server (fakeimap.py): no STARTTLS,
PREAUTH, a connection dropped or stalled in mid-FETCH, no greeting, hostile folder names,
malformed responses, a server without UIDPLUS."""

from __future__ import annotations

from collections import Counter

from fakeimap import FakeIMAPServer
from imaptools import maildir_bodies, maildir_files, message, run, write_local

from mailsync.message import to_crlf

PASSWORD = "secret"


def crlf(n: int) -> bytes:
    return to_crlf(message(n))


def pull(fake: FakeIMAPServer, dest, *extra: str, query: str = "tls=none"):
    return run("pull", *extra, fake.url(query=query), f"maildir:{dest}", password=PASSWORD)


def test_no_starttls_offered_is_refused_before_login(mailenv):
    with FakeIMAPServer({"INBOX": [crlf(1)]}) as fake:
        result = pull(fake, mailenv / "m", query="")  # imap:// means STARTTLS required
    assert result.exit_code == 3
    assert "does not offer STARTTLS" in result.stderr
    assert not any(c.startswith("LOGIN") for c in fake.commands())
    assert PASSWORD not in result.output


def test_preauth_greeting_is_refused_when_tls_is_required(mailenv):
    greeting = "* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] welcome, no password needed"
    with FakeIMAPServer({"INBOX": [crlf(1)]}, greeting=greeting) as fake:
        result = pull(fake, mailenv / "m", query="")
        assert result.exit_code == 3
        assert "PREAUTH" in result.stderr
        assert not any(
            c.startswith(("LOGIN", "SELECT", "EXAMINE", "LIST")) for c in fake.commands()
        )
        # With tls=none the user asked for a clear-text session: PREAUTH is fine then.
        plain = pull(fake, mailenv / "m")
    assert plain.exit_code == 0, plain.output
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter([message(1)])


def test_connection_dropped_in_mid_fetch_is_resumed(mailenv):
    def fault(server, conn, command, args):
        if conn == 1 and command == "UID FETCH" and "BODY.PEEK[]" in str(args):
            return "drop"
        return None

    with FakeIMAPServer({"INBOX": [crlf(i) for i in range(5)]}, fault=fault) as fake:
        result = pull(fake, mailenv / "m")
    assert result.exit_code == 0, result.output
    assert "connection lost" in result.stderr and "reconnecting" in result.stderr
    assert fake.connections >= 2
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter(message(i) for i in range(5))
    # The second connection selected the folder again before fetching.
    second = fake.commands(2)
    assert any(c.startswith("EXAMINE") for c in second)
    assert second.index(next(c for c in second if c.startswith("EXAMINE"))) < second.index(
        next(c for c in second if "BODY.PEEK[]" in c)
    )


def test_a_stalled_fetch_times_out_and_is_resumed(mailenv):
    def fault(server, conn, command, args):
        if conn == 1 and command == "UID FETCH" and "BODY.PEEK[]" in str(args):
            return "hang"
        return None

    with FakeIMAPServer({"INBOX": [crlf(i) for i in range(3)]}, fault=fault) as fake:
        result = pull(fake, mailenv / "m", query="tls=none&timeout=1")
        assert fake.connections >= 2  # the hung connection was given up, not waited out
    assert result.exit_code == 0, result.output
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter(message(i) for i in range(3))


def test_a_server_that_never_greets_times_out(mailenv):
    with FakeIMAPServer(greeting=None) as fake:
        result = pull(fake, mailenv / "m", query="tls=none&timeout=1")
    assert result.exit_code == 3
    assert "no answer within 1 s" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_connection_lost_twice_is_a_connect_error(mailenv):
    def fault(server, conn, command, args):
        return "drop" if command == "UID FETCH" and "BODY.PEEK[]" in str(args) else None

    with FakeIMAPServer({"INBOX": [crlf(1)]}, fault=fault) as fake:
        result = pull(fake, mailenv / "m")
    assert result.exit_code == 3
    assert "connection lost" in result.stderr
    assert "Traceback" not in result.output


def test_hostile_folder_names_are_refused(mailenv):
    hostile = [
        b'* LIST () "/" ".."',
        b'* LIST () "/" "../escape"',
        b'* LIST () "/" "a/../../b"',
        b'* LIST () "/" "."',
        b'* LIST () "/" "ok/./x"',
        b'* LIST () "/" "/abs"',
        b'* LIST () "/" "trailing/"',
        b'* LIST () "/" ""',
        b'* LIST () "/" {8}\r\nctl\x01name',
        b'* LIST () "/" "bad&-utf7&Jjo"',
        b'* LIST () "." "dotted/slash"',
        b'* LIST () "/" "Good"',
    ]
    mailboxes = {"INBOX": [crlf(1)], "Good": [crlf(2)], "../escape": [crlf(3)], "..": [crlf(4)]}
    with FakeIMAPServer(mailboxes, list_extra=hostile) as fake:
        result = pull(fake, mailenv / "m")
    assert result.exit_code == 0, result.output
    assert sorted(maildir_files(mailenv / "m")) == ["Good", "INBOX"]
    assert sorted(p.name for p in mailenv.iterdir()) == ["m", "state"]  # nothing escaped
    warnings = [line for line in result.stderr.splitlines() if "skipping folder" in line]
    assert len(warnings) >= 9, result.stderr
    assert not any(c.startswith(("EXAMINE", "SELECT")) and ".." in c for c in fake.commands())


def test_a_malformed_fetch_fails_that_folder_only(mailenv):
    with FakeIMAPServer({"INBOX": [crlf(1)], "Bad": [crlf(2)], "Zed": [crlf(3)]}) as fake:
        fake.fault = _by_folder("Bad", "garbage")
        result = pull(fake, mailenv / "m")
    assert result.exit_code == 1, result.output
    assert "cannot read" in result.stderr and "Traceback" not in result.output
    bodies = maildir_bodies(mailenv / "m")
    assert bodies["INBOX"] == Counter([message(1)]) and bodies["Zed"] == Counter([message(3)])
    assert not bodies.get("Bad")


def test_a_huge_literal_is_refused_cleanly(mailenv):
    with FakeIMAPServer({"INBOX": [crlf(1)], "Huge": [crlf(2)]}) as fake:
        fake.fault = _by_folder("Huge", "huge", bodies_only=True)
        result = pull(fake, mailenv / "m")
    assert result.exit_code == 1, result.output
    assert "literal" in result.stderr and "Traceback" not in result.output
    assert maildir_bodies(mailenv / "m")["INBOX"] == Counter([message(1)])


def _by_folder(folder: str, action: str, bodies_only: bool = False):
    """A fault for UID FETCH in `folder` only (the fake remembers each connection's
    selected mailbox in its log)."""

    def fault(server, conn, command, args):
        if command != "UID FETCH" or (bodies_only and "BODY.PEEK[]" not in str(args)):
            return None
        selects = [c for c in server.commands(conn) if c.startswith(("SELECT", "EXAMINE"))]
        if selects and selects[-1].split(" ", 1)[1].strip('"') == folder:
            return action
        return None

    return fault


def test_without_uidplus_appends_are_found_and_others_deleted_mail_is_left(mailenv):
    caps = ("IMAP4rev1", "AUTH=PLAIN")  # no UIDPLUS: no APPENDUID, no UID EXPUNGE
    local = mailenv / "m"
    with FakeIMAPServer({"INBOX": [crlf(1), crlf(2)]}, capabilities=caps) as fake:
        sync = ["sync", fake.url(), f"maildir:{local}"]
        assert run(*sync, password=PASSWORD).exit_code == 0
        for n in (10, 11):
            write_local(local, "INBOX", message(n), flags="S")
        write_local(local, "INBOX", message(10), flags="F")  # a duplicate, flagged
        result = run("-v", *sync, password=PASSWORD)
        assert result.exit_code == 0, result.output
        box = fake.mailboxes["INBOX"]
        # The bytes are exactly what was appended: no header was injected to find them.
        assert Counter(m.body for m in box.messages) == Counter(
            to_crlf(message(n)) for n in (1, 2, 10, 11, 10)
        )
        flags = sorted(sorted(m.flags) for m in box.messages if m.body == to_crlf(message(10)))
        assert flags == [["\\Flagged"], ["\\Seen"]]
        # The UIDs mailsync recorded are the right ones: a rerun changes nothing.
        again = run("sync", "--json", fake.url(), f"maildir:{local}", password=PASSWORD)
        assert again.exit_code == 0, again.output
        assert '"copied_b_to_a": 0' in again.stdout and '"copied_a_to_b": 0' in again.stdout
        assert len(box.messages) == 5

        # A local deletion while someone else has a message marked \Deleted: without
        # UIDPLUS only EXPUNGE could remove ours, and it would remove theirs too.
        box.messages[0].flags.add("\\Deleted")
        victim = next(p for p in maildir_files(local)["INBOX"] if p.read_bytes() == message(2))
        victim.unlink()
        refused = run(*sync, password=PASSWORD)
        assert refused.exit_code == 1, refused.output
        assert "lacks UIDPLUS" in refused.stderr
        assert len(box.messages) == 5
        assert [m.flags for m in box.messages if m.body == crlf(2)] == [set()]  # untouched
        assert "EXPUNGE" not in fake.commands()
        # Once nobody else has \Deleted mail, EXPUNGE is safe, and only ours goes.
        box.messages[0].flags.discard("\\Deleted")
        result = run(*sync, password=PASSWORD)
        assert result.exit_code == 0, result.output
        assert "EXPUNGE" in fake.commands()
        assert Counter(m.body for m in box.messages) == Counter(
            to_crlf(message(n)) for n in (1, 10, 11, 10)
        )
        assert maildir_bodies(local)["INBOX"] == Counter(message(n) for n in (1, 10, 11, 10))

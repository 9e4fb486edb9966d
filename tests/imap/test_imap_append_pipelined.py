"""APPENDs pipelined (IMAPFolder.append_many): with LITERAL+ and UIDPLUS a batch of
messages goes in one round trip, each APPEND a command of its own with its own APPENDUID
and its own refusal; a lost connection leaves the unanswered ones as their
MessageError (the next run finds those that arrived).  Dovecot for the bytes, flags and
dates; the scripted fake for what Dovecot will not do (hold an answer back, refuse one
message, drop the connection in mid-batch)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections import Counter

import pytest
from fakeimap import FakeIMAPServer
from imaptools import connect, message, run, run_process, server_bodies, write_local
from test_imap_large import store_for

from mailsync.errors import MessageError, RefusedError
from mailsync.message import to_crlf
from mailsync.stores.imap import IMAPStore

PASSWORD = "secret"
CAPS = ("IMAP4rev1", "AUTH=PLAIN", "UIDPLUS", "LITERAL+")
ARRIVAL = dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.UTC).timestamp()


def batch(count: int, first: int = 1) -> list[tuple[bytes, frozenset[str], float]]:
    flags = [frozenset(), frozenset({"\\Seen"}), frozenset({"\\Seen", "\\Flagged"})]
    return [
        (message(n, extra=b"lone\rcr\n"), flags[n % 3], ARRIVAL + n)
        for n in range(first, first + count)
    ]


def test_a_batch_arrives_exact_each_with_its_uid(dovecot_server):
    user = dovecot_server.add_user()
    messages = batch(25)
    with store_for(dovecot_server, user, read_only=False) as store:
        folder = store.open_folder("INBOX")
        assert store.has("LITERAL+") and store.has("UIDPLUS")  # (Dovecot offers both)
        keys = folder.append_many(messages)
        folder.flush()
    assert all(isinstance(key, str) for key in keys), keys
    assert len(set(keys)) == len(messages)
    with connect(dovecot_server, user) as client:
        client.select_folder("INBOX", readonly=True)
        got = client.fetch([int(k) for k in keys], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
    for key, (data, flags, arrival) in zip(keys, messages, strict=True):
        record = got[int(key)]
        assert record[b"BODY[]"] == to_crlf(data)
        assert {f.decode() for f in record[b"FLAGS"]} - {"\\Recent"} == set(flags)
        assert record[b"INTERNALDATE"].timestamp() == arrival


def held_back(appends: list):
    """A fault hook: the first APPEND is answered only once the second has arrived, so
    a client that waits for each answer before sending the next never gets one."""
    first = []

    def fault(server, conn, command, args):
        if command != "APPEND":
            return None

        def act(send, tag, session):
            appends.append(tag)
            if not first and len(appends) == 1:
                first.append((send, tag, session, args))
                return
            while first:
                held_send, held_tag, held_session, held_args = first.pop()
                server.dispatch(held_send, held_tag, held_session, "APPEND", held_args)
            server.dispatch(send, tag, session, "APPEND", args)

        return act

    return fault


def fake_store(fake: FakeIMAPServer) -> IMAPStore:
    store = IMAPStore(fake.url(query="tls=none&timeout=5"), read_only=False)
    store._password = PASSWORD
    return store


def test_appends_go_before_their_answers_come(mailenv):
    """Fails (the first answer never comes: a timeout) unless the second APPEND is sent
    before the first is answered."""
    appends: list[str] = []
    fake = FakeIMAPServer(capabilities=CAPS, fault=held_back(appends))
    with fake, fake_store(fake) as store:
        folder = store.open_folder("INBOX")
        keys = folder.append_many(batch(3))
    assert keys == ["1", "2", "3"]
    assert len(appends) == 3
    assert [m.body for m in fake.mailboxes["INBOX"].messages] == [
        to_crlf(data) for data, _, _ in batch(3)
    ]


def test_one_refused_message_is_its_own_refusal(mailenv):
    def fault(server, conn, command, args):
        if command == "APPEND" and b"message 2" in args[-1]:
            return lambda send, tag, session: send(f"{tag} NO [LIMIT] not this one\r\n")
        return None

    with FakeIMAPServer(capabilities=CAPS, fault=fault) as fake, fake_store(fake) as store:
        folder = store.open_folder("INBOX")
        keys = folder.append_many(batch(3))
    assert keys[0] == "1" and keys[2] == "2"
    assert isinstance(keys[1], RefusedError)
    assert "[LIMIT] not this one" in keys[1].reason
    assert len(fake.mailboxes["INBOX"].messages) == 2


@pytest.mark.parametrize("lost_after", [0, 2])
def test_a_connection_lost_in_mid_batch(lost_after, mailenv):
    """Answers that came stand; the others are MessageErrors saying the next run finds
    them if they arrived (they may have: the journal in copies.py knows them)."""
    answered = []

    def fault(server, conn, command, args):
        if command == "APPEND" and len(answered) >= lost_after:
            return b""  # no answer: then the connection goes (below)
        if command == "APPEND":
            answered.append(1)
        return None

    class Dropping(FakeIMAPServer):
        def _handle(self, conn, session, line, literals):
            super()._handle(conn, session, line, literals)
            if b"APPEND" in line and len(answered) >= lost_after:
                raise ConnectionResetError

    with Dropping(capabilities=CAPS, fault=fault) as fake, fake_store(fake) as store:
        folder = store.open_folder("INBOX")
        keys = folder.append_many(batch(4))
    assert keys[:lost_after] == [str(n) for n in range(1, lost_after + 1)]
    for key in keys[lost_after:]:
        assert isinstance(key, MessageError) and not isinstance(key, RefusedError), key
        assert "the connection dropped while appending; the next run finds" in str(key)


def test_without_literal_plus_one_at_a_time(mailenv):
    """No LITERAL+: append() one by one, the same keys."""
    fake = FakeIMAPServer(capabilities=("IMAP4rev1", "AUTH=PLAIN", "UIDPLUS"))
    with fake, fake_store(fake) as store:
        folder = store.open_folder("INBOX")
        keys = folder.append_many(batch(3))
    assert keys == ["1", "2", "3"]


def test_an_ok_without_appenduid_is_not_sent_again(mailenv):
    """A server that offers UIDPLUS but names no UID in one OK: that message is there,
    so it is not sent again (a MessageError: the next run finds it); the others have
    their UIDs."""

    def fault(server, conn, command, args):
        if command == "APPEND" and b"message 2" in args[-1]:

            def act(send, tag, session):
                server.mailboxes["INBOX"].add(args[-1])
                send(f"{tag} OK APPEND completed\r\n")

            return act
        return None

    with FakeIMAPServer(capabilities=CAPS, fault=fault) as fake, fake_store(fake) as store:
        folder = store.open_folder("INBOX")
        keys = folder.append_many(batch(3))
    assert keys[0] == "1" and keys[2] == "3"
    assert isinstance(keys[1], MessageError) and not isinstance(keys[1], RefusedError)
    assert "without naming its UID (no APPENDUID); the next run finds it" in str(keys[1])
    assert len(fake.mailboxes["INBOX"].messages) == 3


def test_a_push_sends_its_messages_pipelined(mailenv):
    """`mailsync push maildir:... imap://...`: the copies of a folder go through
    append_many (copies.py), so a server that answers the first APPEND only once the
    second has come gets them all (one at a time, the first would time out: exit 1)."""
    for n in range(1, 6):
        write_local(mailenv / "m", "INBOX", message(n), flags="S" if n % 2 else "")
    appends: list[str] = []
    with FakeIMAPServer(capabilities=CAPS, fault=held_back(appends)) as fake:
        url = fake.url(query="tls=none&timeout=5")
        result = run("push", f"maildir:{mailenv / 'm'}", url, password=PASSWORD)
        rerun = run("push", f"maildir:{mailenv / 'm'}", url, password=PASSWORD)
    assert result.exit_code == 0, result.output
    assert rerun.exit_code == 0, rerun.output
    assert len(appends) == 5  # each once: the rerun found them all recorded
    stored = sorted(m.body for m in fake.mailboxes["INBOX"].messages)
    assert stored == sorted(to_crlf(message(n)) for n in range(1, 6))
    seen = sorted("\\Seen" in m.flags for m in fake.mailboxes["INBOX"].messages)
    assert seen == [False, False, True, True, True]


def test_a_push_killed_in_mid_batch_leaves_each_message_once(dovecot_server, mailenv):
    """Dovecot (LITERAL+, UIDPLUS): a push killed once a pipelined batch is sent and
    before any answer is read (the crash point "appends sent": each message journaled,
    none recorded, the server with whatever of them it took in before the connection
    went), then rerun: each message exactly once, every copy recorded (a third run
    copies nothing), the journal empty."""
    local = mailenv / "local"
    bodies = [message(n, extra=b"line\n" * n) for n in range(1, 31)]
    for n, body in enumerate(bodies):
        write_local(local, "INBOX", body, flags="S" if n % 2 else "")
    user, state = dovecot_server.add_user(), mailenv / "state"
    url = f"{dovecot_server.url('imaps', user)}?cafile={dovecot_server.cafile}"
    args = ["push", "--json", f"maildir:{local}", url]
    # Step 1 is the journal's commit, step 2 the batch sent.
    killed = run_process("-vv", *args, password=user.password, state=state, crash_at=2)
    assert killed.returncode == 137, killed.stderr
    assert "crash hook: exiting at step 2 (appends sent)" in killed.stderr
    # No waiting here for Dovecot to end the dead session: the rerun waits until the
    # folder stops changing (Folder.settle, as the journal is not empty).
    rerun = run_process(*args, password=user.password, state=state)
    assert rerun.returncode == 0, rerun.stderr
    (folder,) = json.loads(rerun.stdout)["channels"][0]["folders"]
    # (What arrived is linked, the rest sent: how much Dovecot took in of a batch whose
    # sender died is its own affair.)
    assert folder["copied_b_to_a"] + folder["linked"] == 30, folder
    assert server_bodies(dovecot_server, user)["INBOX"] == Counter(bodies)
    (db,) = (state / "mailsync").glob("*.db")
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT COUNT(*) FROM pairs WHERE key_a IS NOT NULL").fetchone()[0] == 30
        assert con.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
    finally:
        con.close()
    again = run_process(*args, password=user.password, state=state)
    (folder,) = json.loads(again.stdout)["channels"][0]["folders"]
    assert (folder["copied_b_to_a"], folder["linked"]) == (0, 0), again.stderr

"""IMAPStore/IMAPFolder at the API level: helpers, names, redaction, and behaviour on a real
Dovecot that the command-line tests do not pin down (batching, CHANGEDSINCE listings,
lone CRs, UIDVALIDITY changes in mid-run, header digests)."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from imaptools import CommandSpy, Msg, connect, message, run, seed, when

from mailsync import net as netmod
from mailsync.errors import FolderError
from mailsync.message import fingerprint, header_digest
from mailsync.stores import imap_connection, imap_folder, imap_wire
from mailsync.stores.imap import IMAPStore
from mailsync.stores.imap_connection import redact
from mailsync.stores.imap_folder import valid_keyword
from mailsync.stores.imap_wire import _parse_uid_set, _uid_ranges


def test_uid_sets():
    assert _uid_ranges([7, 1, 2, 3, 3, 9, 10]) == "1:3,7,9:10"
    assert _uid_ranges([]) == ""
    assert _parse_uid_set("1:3,7,10:9", 6) == ([1, 2, 3, 7, 9, 10], [])


def test_uid_sets_are_bounded_before_they_are_expanded():
    """ESEARCH ALL 1:100000000 once became a 2.7 GB list: the ranges are counted first,
    against what the folder can hold (a test that fails by taking seconds and gigabytes
    without the bound)."""
    with pytest.raises(imap_wire._Malformed, match="over 1000 UIDs"):
        _parse_uid_set("1:100000000", 1000)
    with pytest.raises(imap_wire._Malformed, match="over 5 UIDs"):
        _parse_uid_set("1:3,5:7", 5)
    # UIDs that cannot be are left out and reported, never read as messages.
    assert _parse_uid_set("0,2,-1,4:5,4294967296", 10) == ([2, 4, 5], ["0", "-1", "4294967296"])
    for garbage in ("1:x", "*", "1::2"):
        with pytest.raises(imap_wire._Malformed):
            _parse_uid_set(garbage, 10)


def test_keywords_that_cannot_be_sent_are_not_persisted():
    assert valid_keyword("$Label1") and valid_keyword("work")
    for bad in (
        "",
        "two words",
        "br(ace",
        'quo"te',
        "back\\slash",
        "\\Seen",
        "ümlaut",
        "a]b",
        "smile\U0001f600",
    ):
        assert not valid_keyword(bad), bad


def test_redaction_masks_login_and_every_form_of_the_password(monkeypatch):
    monkeypatch.setattr(imap_connection, "_SECRETS", {'s3"cr\\et'})
    assert redact("> b'ABCD1 LOGIN alice \"x\"'") == "> b'ABCD1 LOGIN ****"
    assert "s3" not in redact('echo s3"cr\\et')
    quoted = 's3"cr\\et'.replace("\\", "\\\\").replace('"', '\\"')
    line = "> %r" % (b'X1 FOO "' + quoted.encode() + b'"')  # as imaplib logs it
    assert "cr" in line and "cr" not in redact(line)
    assert redact("nothing secret here") == "nothing secret here"


def test_folder_names_map_to_slashes_and_back():
    store = IMAPStore("imaps://u@example.org")
    assert store._local_name("INBOX.Sent.2019", ".") == "INBOX/Sent/2019"
    assert store._local_name("inbox", ".") == "INBOX"
    assert store._local_name("a/b", ".") is None  # '/' is content there, not hierarchy
    assert store._local_name("a..b", ".") is None
    assert store._local_name("flat", None) == "flat"
    store._delimiter = "."
    assert store.server_name("Archive/2019") == "Archive.2019"
    with pytest.raises(FolderError):
        store.server_name("v1.2/notes")  # would silently become a deeper hierarchy
    with pytest.raises(FolderError):
        store.server_name("a/../b")


def test_header_digest_ignores_line_ends_and_needs_the_size():
    full = message(1)
    assert header_digest(full) == header_digest(full.replace(b"\n", b"\r\n"))
    header = full[: full.index(b"\n\n") + 2].replace(b"\n", b"\r\n")
    assert header_digest(header, len(full.replace(b"\n", b"\r\n"))) == header_digest(full)
    assert header_digest(full) != header_digest(full + b"more\n")


def test_password_is_asked_once_per_endpoint(monkeypatch):
    calls = []
    monkeypatch.setattr(netmod, "get_password", lambda ep: calls.append(ep) or "pw")
    monkeypatch.setenv("MAILSYNC_PASSWORD", "unused-here-" + str(time.time()))
    a = IMAPStore("imaps://u@example.org")
    b = IMAPStore("imaps://u@example.org")
    assert netmod.password_for(a.endpoint) == netmod.password_for(b.endpoint) == "pw"
    assert len(calls) == 1
    netmod.forget_password(a.endpoint)
    netmod.password_for(a.endpoint)
    assert len(calls) == 2


# -- against Dovecot ------------------------------------------------------------------------


def store_for(server, user, read_only=False) -> IMAPStore:
    url = f"{server.url('imaps', user)}?cafile={server.cafile}"
    netmod._PASSWORDS.clear()
    store = IMAPStore(url, read_only=read_only)
    store._password = user.password
    return store


def test_bodies_are_fetched_in_byte_bounded_batches(dovecot_server, monkeypatch):
    user = dovecot_server.add_user()
    bodies = [message(i, extra=b"x" * 3000 + b"\n") for i in range(12)]
    seed(dovecot_server, user, {"INBOX": [Msg(b, frozenset(), when(2020)) for b in bodies]})
    monkeypatch.setattr(imap_folder, "FETCH_BATCH_BYTES", 10_000)  # three messages a batch
    spy = CommandSpy(monkeypatch)
    with store_for(dovecot_server, user, read_only=True) as store:
        folder = store.open_folder("INBOX")
        listing = folder.list()
        spy.clear()
        prints = folder.fingerprints(sorted(listing, key=int))
        assert sorted(prints.values()) == sorted(fingerprint(b) for b in bodies)
        fetches = [c for c in spy.commands if c.startswith("UID FETCH")]
        assert len(fetches) == 4, fetches
        # Sizes unknown (no listing): they are asked first, so batches stay bounded.
        fresh = store.open_folder("INBOX")
        spy.clear()
        assert len(dict(fresh.fetch_many(sorted(listing, key=int)))) == 12
        fetches = [c for c in spy.commands if c.startswith("UID FETCH")]
        assert len(fetches) == 5 and "RFC822.SIZE" in fetches[0] and "BODY" in fetches[1]


@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_the_connection_sends_without_delay(dovecot_server, scheme):
    """TCP_NODELAY, on implicit TLS and STARTTLS: with Nagle's algorithm the line end
    imaplib writes after an APPEND's literal waits for the server's delayed ACK (40 ms):
    2000 APPENDs took 100 s instead of 11 on the private Cyrus, 91 s instead of 9 on Courier."""
    user = dovecot_server.add_user()
    url = f"{dovecot_server.url(scheme, user)}?cafile={dovecot_server.cafile}"
    netmod._PASSWORDS.clear()
    store = IMAPStore(url)
    store._password = user.password
    try:
        sock = store.client._imap.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        store.close()


def test_changedsince_listing(dovecot_server):
    user = dovecot_server.add_user()
    seed(
        dovecot_server,
        user,
        {"INBOX": [Msg(message(i), frozenset(), when(2020)) for i in range(5)]},
    )
    with store_for(dovecot_server, user, read_only=True) as store:
        folder = store.open_folder("INBOX")
        first = folder.list()
        cursor = folder.cursor()
        assert "highestmodseq" in cursor
        known = {k: info.flags for k, info in first.items()}
    uids = sorted(map(int, first))
    with connect(dovecot_server, user) as client:
        client.select_folder("INBOX")
        client.add_flags([uids[0]], [b"\\Seen", b"todo"])
        client.add_flags([uids[1]], [b"\\Deleted"])
        client.uid_expunge([uids[1]])
        client.append("INBOX", message(9).replace(b"\n", b"\r\n"), msg_time=when(2024))
    with store_for(dovecot_server, user, read_only=True) as store:
        folder = store.open_folder("INBOX")
        assert not folder.unchanged(cursor)
        since = folder.list_since(cursor, known)
    assert str(uids[1]) not in since
    assert since[str(uids[0])].flags == {"\\Seen", "todo"}
    assert since[str(uids[2])].flags == frozenset()
    new = set(since) - set(first)
    assert len(new) == 1 and since[new.pop()].arrival == when(2024).timestamp()
    assert len(since) == 5


def test_append_keeps_lone_crs_and_dates(dovecot_server):
    user = dovecot_server.add_user()
    body = b"Subject: cr\n\nbare\rcarriage return\rhere\nand a normal line\n"
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        key = folder.append(body, frozenset({"\\Seen", "work", "bad keyword"}), 1_600_000_000)
        folder.flush()
        assert folder.fetch(key) == body
        info = store.open_folder("INBOX").list()[key]
    assert info.flags == {"\\Seen", "work"}  # an unsendable keyword stays in the state
    assert info.arrival == 1_600_000_000


def test_uidvalidity_change_in_mid_run_stops_the_folder(dovecot_server):
    user = dovecot_server.add_user()
    seed(dovecot_server, user, {"INBOX": [Msg(message(1), frozenset(), when(2020))]})
    with store_for(dovecot_server, user, read_only=True) as store:
        folder = store.open_folder("INBOX")
        keys = list(folder.list())
        dovecot_server.change_uidvalidity(user, "INBOX")
        store._drop()  # as if the connection had dropped: the reconnect selects again
        with pytest.raises(FolderError, match="UIDVALIDITY changed"):
            folder.fetch(keys[0])


def test_header_digests_match_the_local_computation(dovecot_server):
    user = dovecot_server.add_user()
    bodies = [message(1), b"Subject: no body at all\n", b"Subject: x\n\nlast line no newline"]
    seed(dovecot_server, user, {"INBOX": [Msg(b, frozenset(), when(2020)) for b in bodies]})
    with store_for(dovecot_server, user, read_only=True) as store:
        folder = store.open_folder("INBOX")
        listing = folder.list()
        digests = folder.header_digests(listing)
        full = dict(folder.fetch_many(listing))
    assert {digests[k] for k in listing} == {header_digest(b) for b in bodies}
    assert all(digests[k] == header_digest(full[k]) for k in listing)


def test_protocol_log_only_at_debug(dovecot_server, caplog):
    user = dovecot_server.add_user()
    mailsync_log = logging.getLogger("mailsync")
    old = mailsync_log.level
    try:
        mailsync_log.setLevel(logging.INFO)
        with store_for(dovecot_server, user) as store:
            store.list_folders()
        assert logging.getLogger("imapclient").level > logging.DEBUG
        mailsync_log.setLevel(logging.DEBUG)
        with store_for(dovecot_server, user) as store:
            store.list_folders()
        assert logging.getLogger("imapclient").level == logging.DEBUG
    finally:
        mailsync_log.setLevel(old)


def test_short_passwords_are_not_looked_for_in_free_text():
    """A password of a few characters would garble every line it turns up in (every "a"
    of a warning); the LOGIN command is masked whatever the password."""
    assert netmod.mask_secrets("larger than max_size", {"a"}) == "larger than max_size"
    assert netmod.mask_secrets('LOGIN "u" "abcd" refused', {"abcd"}) == 'LOGIN "u" "****" refused'


def test_redaction_keeps_capabilities_readable():
    line = "< b'* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS AUTH=PLAIN'"
    assert redact(line) == line
    assert redact("> b'AB12 AUTHENTICATE PLAIN'") == "> b'AB12 AUTHENTICATE ****"


def test_an_unknown_option_is_refused_before_anything_connects(tmp_path):
    """A misspelt option (token_comand) must not quietly fall back to a password login:
    exit 2 naming it, as POP3 and EWS stores do; the port is never dialled."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0)
        port = listener.getsockname()[1]
        url = f"imap://alice@127.0.0.1:{port}?tls=none&token_comand=oama%20access&colour=blue"
        result = run("pull", url, tmp_path / "mail", password="pw")
        assert result.exit_code == 2, result.output
        assert "unknown option(s) colour, token_comand" in result.output
        with pytest.raises(BlockingIOError):
            listener.accept()


# -- a cursor after our own appends ------------------------------------------------------


def _flag_an_appended_message(client, old, ours):
    client.add_flags([ours[0]], [b"\\Flagged"])


def _flag_an_old_message(client, old, ours):
    client.add_flags([old[0]], [b"\\Seen"])


def _append_another(client, old, ours):
    client.append("INBOX", message(99).replace(b"\n", b"\r\n"), msg_time=when(2024))


def _expunge_an_old_message(client, old, ours):
    client.add_flags([old[1]], [b"\\Deleted"])
    client.uid_expunge([old[1]])


@pytest.mark.parametrize(
    "meddle",
    [None, _flag_an_appended_message, _flag_an_old_message, _append_another,
     _expunge_an_old_message],
    ids=lambda m: m.__name__.strip("_") if m else "nobody-else",
)  # fmt: skip
def test_cursor_after_appends_vouches_only_for_our_own(dovecot_server, meddle):
    """After a run that only appended, the folder gives a cursor as it is now (so the next
    run need not list it), but only if nobody else changed it meanwhile."""
    user = dovecot_server.add_user()
    seed(
        dovecot_server,
        user,
        {"INBOX": [Msg(message(i), frozenset(), when(2020)) for i in range(3)]},
    )
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        old = sorted(map(int, folder.list()))
        ours = [
            int(folder.append(message(10 + i), frozenset({"\\Seen", "kw"}), when(2021).timestamp()))
            for i in range(2)
        ]
        if meddle is not None:
            with connect(dovecot_server, user) as client:
                client.select_folder("INBOX")
                meddle(client, old, ours)
        cursor = folder.cursor_after_writes()
    if meddle is not None:
        assert cursor == {}
        return
    assert cursor["uidnext"] == ours[-1] + 1 and cursor["messages"] == 5
    with store_for(dovecot_server, user, read_only=True) as store:
        assert store.open_folder("INBOX").unchanged(cursor)  # the next run: STATUS only
    with connect(dovecot_server, user) as client:  # and a later change still shows
        client.select_folder("INBOX")
        client.add_flags([ours[1]], [b"\\Answered"])
    with store_for(dovecot_server, user, read_only=True) as store:
        assert not store.open_folder("INBOX").unchanged(cursor)


def test_no_cursor_after_writes_other_than_appends(dovecot_server):
    user = dovecot_server.add_user()
    seed(
        dovecot_server,
        user,
        {"INBOX": [Msg(message(i), frozenset(), when(2020)) for i in range(2)]},
    )
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        first = sorted(folder.list(), key=int)
        folder.append(message(10), frozenset(), when(2021).timestamp())
        folder.set_flags(first[0], frozenset({"\\Seen"}), frozenset())
        assert folder.cursor_after_writes() == {}
        folder.flush()
        assert folder.cursor_after_writes() == {}


def test_settle_waits_until_the_folder_stops_changing(dovecot_server, monkeypatch):
    """A folder a killed run was copying into is listed only once it stops changing (the
    server may still be storing what the dead client sent): each pause here lets another
    client append one more message, three times; settle returns only after a look that
    saw no change, so all three are there when it does."""
    user = dovecot_server.add_user()
    seed(dovecot_server, user, {"INBOX": [Msg(message(0), frozenset(), when(2020))]})
    arrivals = [message(n) for n in (1, 2, 3)]
    pauses = []

    def sleep(seconds):
        pauses.append(seconds)
        if arrivals:
            with connect(dovecot_server, user) as client:
                client.append("INBOX", arrivals.pop(0).replace(b"\n", b"\r\n"))

    monkeypatch.setattr(imap_folder.time, "sleep", sleep)
    with store_for(dovecot_server, user, read_only=True) as store:
        folder = store.open_folder("INBOX")
        folder.settle()
        assert not arrivals and len(pauses) == 4  # 3 changes seen, then one quiet look
        assert len(folder.list()) == 4

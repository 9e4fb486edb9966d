"""The Microsoft 365 fake of fakem365.py, tested with plain imapclient and a raw socket:
Exchange Online's logins, throttling, "authenticated but not connected", message size
refusals and token expiry, as mailsync's Microsoft 365 tests will meet them (sources in
fakem365.py's docstring).  No assertion is about time: a client that waits the backoff
Exchange suggests is let through because the server measured at least that long."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import ssl
import time

import pytest
from fakeimap import make_tls_context
from fakem365 import CAPABILITIES, CAPABILITIES_BEFORE_LOGIN, FakeM365, Throttle
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

TOKEN = "eyJ0eXAiOiJKV1Qi.fake.token"
THROTTLED = re.compile(rb"Request is throttled\. Suggested Backoff Time: (\d+) milliseconds")


def mail(n: int) -> bytes:
    return (
        f"From: a@example.org\r\nSubject: {n}\r\nMessage-ID: <{n}@x>\r\n\r\nbody {n}\r\n".encode()
    )


def client(server: FakeM365, folder: str | None = None) -> IMAPClient:
    imap = IMAPClient(server.host, port=server.port, ssl=False, timeout=10)
    imap.oauth2_login(server.user, TOKEN)
    if folder is not None:
        imap.select_folder(folder)
    return imap


class Wire:
    def __init__(self, server: FakeM365):
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()
        self.count = 0

    def command(self, text: str) -> tuple[list[bytes], bytes]:
        self.count += 1
        tag = f"t{self.count}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        untagged = []
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("the server hung up")
            if line.startswith(tag + b" "):
                return untagged, line.rstrip(b"\r\n")
            untagged.append(line.rstrip(b"\r\n"))

    def login(self, server: FakeM365, token: str = TOKEN) -> bytes:
        blob = base64.b64encode(f"user={server.user}\x01auth=Bearer {token}\x01\x01".encode())
        return self.command(f"AUTHENTICATE XOAUTH2 {blob.decode()}")[1]


def backoff(answer: bytes) -> int:
    match = THROTTLED.search(answer)
    assert match, answer
    return int(match.group(1))


# -- logins ---------------------------------------------------------------------------------


def test_greeting_and_capabilities_before_and_after_login():
    with FakeM365() as server:
        wire = Wire(server)
        assert re.fullmatch(
            rb"\* OK The Microsoft Exchange IMAP4 service is ready\. \[[A-Za-z0-9+/=]+\]\r\n",
            wire.greeting,
        )
        assert wire.command("CAPABILITY")[0] == [
            b"* CAPABILITY " + " ".join(CAPABILITIES_BEFORE_LOGIN).encode()
        ]
        assert wire.login(server) == b"t2 OK AUTHENTICATE completed."  # no CAPABILITY code
        after = wire.command("CAPABILITY")[0][0]
        assert after == b"* CAPABILITY " + " ".join(CAPABILITIES).encode()
    # No LOGINDISABLED, AUTH=PLAIN announced, no APPENDLIMIT; MOVE only after login.
    assert "LOGINDISABLED" not in after.decode() and b"AUTH=PLAIN" in after
    assert b"APPENDLIMIT" not in after and "MOVE" not in CAPABILITIES_BEFORE_LOGIN


def test_only_xoauth2_logs_in():
    with FakeM365() as server:
        with pytest.raises(LoginError, match="LOGIN failed"):
            IMAPClient(server.host, port=server.port, ssl=False).login(server.user, "password")
        with pytest.raises(LoginError, match="AUTHENTICATE failed"):
            IMAPClient(server.host, port=server.port, ssl=False).plain_login(server.user, "pw")
        with pytest.raises(LoginError, match="AUTHENTICATE failed"):
            IMAPClient(server.host, port=server.port, ssl=False).oauth2_login(server.user, "bad")
        wire = Wire(server)  # a refused token: NO at once, no error challenge
        assert wire.login(server, token="bad") == b"t1 NO AUTHENTICATE failed."
        assert wire.command("SELECT INBOX")[1] == b"t2 BAD Command received in Invalid state."
        imap = client(server, "INBOX")  # without an initial response: "+ " first
        imap.logout()
        assert server.logins == [(5, server.user, TOKEN)]  # the fifth connection


def test_the_allow_login_knob_takes_a_token_as_the_password():
    """A test knob, not Exchange Online: LOGIN with a valid token logs in as XOAUTH2
    would, and what Exchange does to sessions applies to it alike."""
    with FakeM365({"INBOX": [mail(1)]}, allow_login=True, not_connected=1) as server:
        with pytest.raises(LoginError, match="LOGIN failed"):
            IMAPClient(server.host, port=server.port, ssl=False).login(server.user, "password")
        stranded = IMAPClient(server.host, port=server.port, ssl=False)
        stranded.login(server.user, TOKEN)
        with pytest.raises(IMAPClientError, match="authenticated but not connected"):
            stranded.select_folder("INBOX")
        imap = IMAPClient(server.host, port=server.port, ssl=False)
        imap.login(server.user, TOKEN)
        assert imap.select_folder("INBOX")[b"EXISTS"] == 1
        server.expire_token(TOKEN)
        with pytest.raises(IMAPClientError, match="AccessTokenExpired"):
            imap.select_folder("INBOX")
        assert [login[2] for login in server.logins] == [TOKEN, TOKEN]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_implicit_tls(tmp_path):
    context, cafile = make_tls_context(tmp_path)
    with FakeM365({"INBOX": [mail(1)]}, tls_context=context) as server:
        client_context = ssl.create_default_context(cafile=cafile)
        imap = IMAPClient("localhost", port=server.port, ssl=True, ssl_context=client_context)
        imap.oauth2_login(server.user, TOKEN)
        assert imap.select_folder("INBOX")[b"EXISTS"] == 1
        imap.logout()


def test_an_expired_token_ends_the_session_and_logs_in_no_more():
    with FakeM365() as server:
        wire = Wire(server)
        wire.login(server)
        assert wire.command("SELECT INBOX")[1].startswith(b"t2 OK")
        server.expire_token(TOKEN)
        wire.sock.sendall(b"t3 NOOP\r\n")
        assert wire.file.readline() == b"* BYE Session invalidated - AccessTokenExpired\r\n"
        assert wire.file.readline() == b""
        with pytest.raises(LoginError):
            client(server)


# -- throttling -----------------------------------------------------------------------------


def test_throttled_answers_count_down_and_clients_that_do_not_wait_are_counted():
    rule = Throttle("UID FETCH", backoff_ms=60_000)
    with FakeM365({"INBOX": [mail(1)]}, throttles=[rule]) as server:
        wire = Wire(server)
        wire.login(server)
        wire.command("SELECT INBOX")
        _, first = wire.command("UID FETCH 1:* (FLAGS)")
        assert re.fullmatch(
            rb"t3 NO Request is throttled\. Suggested Backoff Time: \d+ milliseconds", first
        )
        _, second = wire.command("UID FETCH 1:* (FLAGS)")  # at once: still throttled
        assert 0 < backoff(second) <= backoff(first) <= 60_000
        assert wire.command("UID SEARCH ALL")[1] == b"t5 OK search"  # only UID FETCH is
        assert (rule.answered, rule.early) == (2, 1)
        assert server.throttled() == [("UID FETCH", 2)]


def test_a_client_that_waits_the_suggested_backoff_gets_through():
    rule = Throttle("UID FETCH", skip=1, backoff_ms=150)
    with FakeM365({"INBOX": [mail(1)]}, throttles=[rule]) as server:
        imap = client(server, "INBOX")
        assert imap.fetch([1], ["FLAGS"])  # skip=1: the first one passes
        with pytest.raises(IMAPClientError, match="Request is throttled") as refused:
            imap.fetch([1], ["FLAGS"])
        time.sleep(backoff(str(refused.value).encode()) / 1000)
        assert imap.fetch([1], ["BODY.PEEK[]"])[1][b"BODY[]"] == mail(1)
        assert (rule.answered, rule.early) == (1, 0)
        imap.logout()


def test_a_throttled_append_is_answered_instead_of_the_continuation():
    """imapsync#198: "Error sending '... APPEND INBOX ... {43498}': NO Request is
    throttled": the answer comes before the message is sent."""
    rule = Throttle("APPEND", backoff_ms=150)
    with FakeM365(throttles=[rule]) as server:
        wire = Wire(server)
        wire.login(server)
        untagged, done = wire.command(f"APPEND INBOX {{{len(mail(1))}}}")
        assert untagged == [] and backoff(done) <= 150 and done.startswith(b"t2 NO Request")
        assert wire.command("NOOP")[1] == b"t3 OK noop"  # the session goes on
        time.sleep(backoff(done) / 1000)
        imap = client(server)
        assert b"APPENDUID" in imap.append("INBOX", mail(1))
        assert [m.body for m in server.mailboxes["INBOX"].messages] == [mail(1)]


def test_throttled_with_bad_and_bye_then_the_connection_is_closed():
    """email-oauth2-proxy#191: "BAD Request is throttled. Suggested Backoff Time: 89117
    milliseconds\\r\\n* BYE Connection closed. 14"."""
    rule = Throttle("SELECT", status="BAD", bye=True, backoff_ms=89_117)
    with FakeM365(throttles=[rule]) as server:
        wire = Wire(server)
        wire.login(server)
        wire.sock.sendall(b"t2 SELECT INBOX\r\n")
        assert THROTTLED.search(wire.file.readline()).string.startswith(b"t2 BAD Request")
        assert wire.file.readline() == b"* BYE Connection closed. 14\r\n"
        assert wire.file.readline() == b""


# -- "User is authenticated but not connected" ---------------------------------------------------


def test_authenticated_but_not_connected_until_a_new_connection():
    with FakeM365({"INBOX": [mail(1)]}, not_connected=1) as server:
        wire = Wire(server)
        assert wire.login(server) == b"t1 OK AUTHENTICATE completed."
        assert wire.command("CAPABILITY")[1] == b"t2 OK done"  # still answered
        assert wire.command("SELECT INBOX")[1] == b"t3 BAD User is authenticated but not connected."
        wire.sock.sendall(b't4 LIST "" "*"\r\n')
        assert wire.file.readline() == b"t4 BAD User is authenticated but not connected.\r\n"
        assert wire.file.readline() == b"* BYE Connection closed. 14\r\n"
        assert wire.file.readline() == b""
        imap = client(server, "INBOX")  # a reconnect works
        assert imap.search() == [1]
        imap.logout()


def test_too_many_sessions_are_not_connected():
    with FakeM365(max_sessions=1) as server:
        first = client(server, "INBOX")
        with pytest.raises(IMAPClientError, match="authenticated but not connected"):
            client(server, "INBOX")
        first.logout()


# -- message size -------------------------------------------------------------------------------


def test_an_append_over_the_size_limit_is_refused():
    with FakeM365(max_message_size=100) as server:
        imap = client(server)
        assert b"APPENDLIMIT" not in b" ".join(imap.capabilities())
        with pytest.raises(IMAPClientError, match="Maximum size of appendable message"):
            imap.append("INBOX", b"x" * 101)
        imap.append("INBOX", b"x" * 100)
        imap.logout()
    with FakeM365(max_message_size=100, too_big="BAD Command Argument Error. 11") as server:
        imap = client(server)
        with pytest.raises(IMAPClientError, match="Command Argument Error. 11"):
            imap.append("INBOX", b"x" * 101)
    with FakeM365(max_message_size=100, announce_appendlimit=True) as server:
        assert b"APPENDLIMIT=100" in client(server).capabilities()


def test_namespace_move_and_copy():
    with FakeM365({"INBOX": [mail(1), mail(2)], "Archive": []}) as server:
        imap = client(server, "INBOX")
        assert imap.namespace().personal == (("", "/"),)
        imap.copy([1], "Archive")
        imap.move([2], "Archive")
        assert imap.search() == [1]
        assert [m.body for m in server.mailboxes["Archive"].messages] == [mail(1), mail(2)]
        imap.logout()

"""Quick checks of the scripted POP3 server (fakepop.py), driven by the standard library's
poplib and by raw sockets where the exact bytes matter."""

from __future__ import annotations

import base64
import hashlib
import poplib
import shutil
import socket
import ssl

import pytest
from fakepop import Behaviour, FakePOP3, make_tls_context

M1 = b"From: a@example.org\nSubject: one\n\nhello\n.starts with a dot\n..two dots\n"
M2 = b"From: b@example.org\r\nSubject: two\r\n\r\nno final newline"
M3 = b"Subject: three\n\nline 1\nline 2\nline 3\n"


def size(message: bytes) -> int:
    return len(message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def login(fake: FakePOP3) -> poplib.POP3:
    client = poplib.POP3(fake.host, fake.port, timeout=10)
    client.user(fake.user)
    client.pass_(fake.password)
    return client


def raw(fake: FakePOP3, commands: bytes) -> bytes:
    """Send `commands` in one go (pipelined) and return everything until the server
    closes the connection (the last command should be QUIT)."""
    with socket.create_connection((fake.host, fake.port), timeout=10) as sock:
        sock.sendall(commands)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_login_stat_list_uidl_capa():
    with FakePOP3([M1, M2, M3]) as fake:
        client = login(fake)
        assert client.stat() == (3, size(M1) + size(M2) + size(M3))
        _, listing, _ = client.list()
        assert listing == [b"1 %d" % size(M1), b"2 %d" % size(M2), b"3 %d" % size(M3)]
        assert client.list(2) == f"+OK 2 {len(M2)}".encode()
        assert client.uidl()[1] == [b"1 uid-1", b"2 uid-2", b"3 uid-3"]
        assert client.uidl(3) == b"+OK 3 uid-3"
        caps = client.capa()
        assert {"USER", "UIDL", "TOP", "PIPELINING"} <= set(caps)
        assert "STLS" not in caps and "SASL" not in caps
        client.quit()
    assert fake.url() == f"pop3://alice@127.0.0.1:{fake.port}?tls=none"
    assert fake.commands[:2] == ["USER alice", "PASS ***"]
    assert fake.sessions == fake.quits == 1


def test_wrong_password_and_unknown_user():
    with FakePOP3([M1]) as fake:
        client = poplib.POP3(fake.host, fake.port, timeout=10)
        client.user("alice")
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed\."):
            client.pass_("wrong")
        client.user("bob")
        with pytest.raises(poplib.error_proto, match="AUTH"):
            client.pass_("secret")
        with pytest.raises(poplib.error_proto):
            client.stat()  # still in AUTHORIZATION
        client.user("alice")
        client.pass_("secret")
        assert client.stat()[0] == 1
        client.quit()
    assert "secret" not in "".join(fake.commands) and "wrong" not in "".join(fake.commands)


def test_retr_is_byte_exact_with_dot_stuffing_and_a_final_crlf():
    with FakePOP3([M1, M2]) as fake:
        out = raw(fake, b"USER alice\r\nPASS secret\r\nRETR 1\r\nRETR 2\r\nQUIT\r\n")
        client = login(fake)
        _, lines, _ = client.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == M1.replace(b"\n", b"\r\n")
        _, lines, _ = client.retr(2)
        assert b"\r\n".join(lines) == M2
        client.quit()
    assert out.startswith(b"+OK fakepop ready\r\n+OK\r\n+OK Logged in, 2 messages.\r\n")
    first = (
        b"+OK %d octets" % size(M1) + b"\r\nFrom: a@example.org\r\nSubject: one\r\n\r\nhello\r\n"
        b"..starts with a dot\r\n...two dots\r\n.\r\n"
    )
    second = (
        f"+OK {len(M2)} octets\r\n".encode()
        + b"From: b@example.org\r\nSubject: two\r\n\r\nno final newline\r\n.\r\n"
    )
    assert first + second in out
    assert out.endswith(b"+OK bye (0 messages deleted)\r\n")


def test_top_sends_headers_blank_line_and_k_body_lines():
    with FakePOP3([M3, b"Subject: no body"]) as fake:
        client = login(fake)
        assert client.top(1, 2)[1] == [b"Subject: three", b"", b"line 1", b"line 2"]
        assert client.top(1, 0)[1] == [b"Subject: three", b""]
        assert client.top(2, 5)[1] == [b"Subject: no body"]
        client.quit()


def test_dele_is_applied_only_by_quit_and_numbers_shift():
    with FakePOP3([M1, M2, M3]) as fake:
        client = login(fake)
        client.dele(1)
        with pytest.raises(poplib.error_proto, match="no such message"):
            client.retr(1)
        with pytest.raises(poplib.error_proto, match="no such message"):
            client.dele(4)
        assert client.stat()[0] == 2
        assert fake.messages == [M1, M2, M3]  # not yet: still in TRANSACTION
        other = login(fake)  # a concurrent session still sees all three
        assert other.stat()[0] == 3
        other.quit()
        client.quit()
        assert fake.messages == [None, M2, M3]
        client = login(fake)
        assert client.uidl()[1] == [b"1 uid-2", b"2 uid-3"]
        assert client.retr(1)[1][-1] == b"no final newline"
        client.dele(1)
        client.rset()
        client.quit()
    assert fake.messages == [None, M2, M3]
    assert fake.quits == 3


def test_a_session_dropped_without_quit_deletes_nothing():
    with FakePOP3([M1, M2]) as fake:
        client = login(fake)
        client.dele(1)
        client.dele(2)
        client.sock.close()
        client = login(fake)
        assert client.stat()[0] == 2
        client.quit()
    assert fake.messages == [M1, M2]
    assert fake.sessions == 2 and fake.quits == 1


def test_duplicate_uidls_are_served_as_given_and_add_delivers():
    with FakePOP3([M1, M2, M3], behaviour=Behaviour(uidls=["x", "x", "y"])) as fake:
        fake.add(b"Subject: four\n\nnew\n", uidl="z")
        fake.add(b"Subject: five\n\nnewer\n")
        client = login(fake)
        assert client.uidl()[1] == [b"1 x", b"2 x", b"3 y", b"4 z", b"5 uid-5"]
        client.quit()


def test_no_uidl_no_top_no_capa():
    behaviour = Behaviour(uidl=False, top=False, capa=False)
    with FakePOP3([M1], behaviour=behaviour) as fake:
        client = login(fake)
        for call in (client.uidl, lambda: client.top(1, 0), lambda: client._shortcmd("CAPA")):
            with pytest.raises(poplib.error_proto, match="unknown command"):
                call()
        client.quit()


def test_drop_in_retr_cuts_the_connection_mid_body_once():
    big = b"Subject: big\n\n" + b"x" * 500 + b"\n"
    behaviour = Behaviour(drop_in_retr=2, drop_after=40)
    with FakePOP3([M1, big], behaviour=behaviour) as fake:
        out = raw(fake, b"USER alice\r\nPASS secret\r\nRETR 2\r\nQUIT\r\n")
        assert out.endswith(b"+OK %d octets\r\n" % size(big) + b"Subject: big\r\n\r\n" + b"x" * 24)
        client = login(fake)
        assert client.retr(2)[1] == [b"Subject: big", b"", b"x" * 500]
        client.quit()
    assert fake.drops == 1 and fake.quits == 1
    with FakePOP3([M1, big], behaviour=Behaviour(drop_in_retr=2, drop_times=-1)) as fake:
        for _ in range(2):
            client = login(fake)
            client.retr(1)
            with pytest.raises(poplib.error_proto, match="EOF"):
                client.retr(2)
            client.close()


def test_malformed_retr_garbage_status_and_a_lying_list():
    with FakePOP3([M1, M3], behaviour=Behaviour(malformed_retr=2)) as fake:
        out = raw(fake, b"USER alice\r\nPASS secret\r\nRETR 2\r\nQUIT\r\n")
    assert out.endswith(
        b"+OK %d octets\r\n" % size(M3) + b"Subject: three\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
    )
    assert fake.quits == 0
    behaviour = Behaviour(garbage_status=True, list_size_lie=-3)
    with FakePOP3([M3], behaviour=behaviour) as fake:
        client = login(fake)
        assert client.list()[1] == [b"1 %d" % (size(M3) - 3)]
        with pytest.raises(poplib.error_proto, match=r"\?\? garbage"):
            client.retr(1)
        client.close()


def test_apop_right_and_wrong_digest():
    with FakePOP3([M1], behaviour=Behaviour(apop=True)) as fake:
        client = poplib.POP3(fake.host, fake.port, timeout=10)
        assert client.timestamp.search(client.getwelcome())
        with pytest.raises(poplib.error_proto, match="AUTH"):
            client.apop("alice", "wrong")
        client.apop("alice", "secret")
        assert client.stat()[0] == 1
        client.quit()
        client = poplib.POP3(fake.host, fake.port, timeout=10)
        stamp = client.timestamp.search(client.getwelcome()).group(1)
        stale = hashlib.md5(b"<1.2@fakepop>secret").hexdigest()
        assert stamp != b"<1.2@fakepop>"
        with pytest.raises(poplib.error_proto, match="AUTH"):
            client._shortcmd(f"APOP alice {stale}")
        client.quit()
    assert fake.commands.count("APOP ***") == 3


def test_auth_plain_with_initial_response_and_continuation():
    token = base64.b64encode(b"\0alice\0secret").decode()
    bad = base64.b64encode(b"\0alice\0nope").decode()
    with FakePOP3([M1], behaviour=Behaviour(sasl_plain=True)) as fake:
        client = poplib.POP3(fake.host, fake.port, timeout=10)
        assert client.capa()["SASL"] == ["PLAIN"]
        with pytest.raises(poplib.error_proto, match="AUTH"):
            client._shortcmd(f"AUTH PLAIN {bad}")
        assert client._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
        assert client.stat()[0] == 1
        client.quit()
        client = poplib.POP3(fake.host, fake.port, timeout=10)
        assert client._shortcmd("AUTH PLAIN") == b"+ "
        assert client._shortcmd(token).startswith(b"+OK")
        client.quit()
    assert fake.commands == ["CAPA", "AUTH ***", "AUTH ***", "STAT", "QUIT"] + [
        "AUTH ***",
        "***",
        "QUIT",
    ]


def test_refusing_greeting_and_pipelined_commands_answered_in_order():
    with FakePOP3([M1], behaviour=Behaviour(greeting="-ERR go away")) as fake:
        assert raw(fake, b"USER alice\r\n") == b"-ERR go away\r\n"  # then the server hangs up
    assert fake.sessions == 1 and fake.commands == []
    with FakePOP3([M1, M3]) as fake:
        out = raw(
            fake, b"NOOP\r\nUSER alice\r\nPASS secret\r\nDELE 2\r\nSTAT\r\nLIST 9\r\nQUIT\r\n"
        )
    assert out.split(b"\r\n") == [
        b"+OK fakepop ready",
        b"-ERR unknown command",
        b"+OK",
        b"+OK Logged in, 2 messages.",
        b"+OK message 2 deleted",
        b"+OK 1 %d" % size(M1),
        b"-ERR no such message",
        b"+OK bye (1 messages deleted)",
        b"",
    ]
    assert fake.commands == ["NOOP", "USER alice", "PASS ***", "DELE 2", "STAT", "LIST 9", "QUIT"]
    assert fake.messages == [M1, None]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_implicit_tls_and_stls(tmp_path):
    context, cafile = make_tls_context(tmp_path)
    client_context = ssl.create_default_context(cafile=str(cafile))
    with FakePOP3([M1], tls_context=context, implicit_tls=True) as fake:
        client = poplib.POP3_SSL(fake.host, fake.port, context=client_context, timeout=10)
        client.user("alice")
        client.pass_("secret")
        assert client.retr(1)[1][0] == b"From: a@example.org"
        client.quit()
    assert fake.url("pop3s") == f"pop3s://alice@127.0.0.1:{fake.port}"
    with FakePOP3([M1], behaviour=Behaviour(stls=True), tls_context=context) as fake:
        client = poplib.POP3(fake.host, fake.port, timeout=10)
        assert "STLS" in client.capa()
        client.stls(client_context)
        assert "STLS" not in client.capa()
        client.user("alice")
        client.pass_("secret")
        client.dele(1)
        client.quit()
    assert fake.messages == [None]

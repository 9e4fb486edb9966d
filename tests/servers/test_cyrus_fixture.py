"""The private Cyrus fixture works (logins, TLS, users, start and stop), and what Cyrus
3.6 does with namespaces, folder names and awkward messages, measured byte for byte:
tests/servers/cyrus.py's docstring quotes these results."""

from __future__ import annotations

import contextlib
import ssl
import time
from datetime import datetime, timedelta, timezone

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from servers.cyrus import CyrusServer
from servers.rewrites import SAMPLES, stored
from servers.sandbox import ServerError, port_open, processes_mentioning

# What FETCH BODY.PEEK[] gives back, or the APPEND refusal, where it is not the bytes
# appended.  Every other sample comes back identical.
REWRITES = {
    # Each 8-bit byte of a header becomes one "X": the length stays, the text is lost.
    "header_8bit": (
        "OK",
        SAMPLES["header_8bit"].replace(b"\xc3\xa9", b"XX").replace(b"\xf6", b"X"),
    ),
    "nul_body": ("NO", "Message contains NUL characters"),
    "bare_lf": ("NO", "Message contains bare newlines"),
}

# CREATE name -> (status, text) for a fresh user.
CREATES = [
    ("Sent", "NO", "Permission denied"),
    ("Other", "NO", "Permission denied"),
    ("user.bob", "NO", "Permission denied"),
    ("INBOX.x/y", "NO", "Invalid mailbox name"),
    ("INBOX/z", "NO", "Invalid mailbox name"),
    ("INBOX.Sent", "OK", "[MAILBOXID ("),
    ("INBOX.Sent", "NO", "Mailbox already exists"),
    ("INBOX.A.B", "OK", "[MAILBOXID ("),
]


def raw_command(client: IMAPClient, *args: str) -> tuple[str, str]:
    typ, data = client._imap._simple_command(*args)
    last = data[-1] if data else b""
    return typ, last.decode() if isinstance(last, bytes) else str(last)


def test_server_basics(cyrus_server: CyrusServer) -> None:
    assert cyrus_server.host == "127.0.0.1"
    assert set(cyrus_server.ports) == {"imap", "imaps"}
    assert len(set(cyrus_server.ports.values())) == 2
    assert cyrus_server.version.startswith("3.6.")
    user = cyrus_server.add_user("urluser")
    assert cyrus_server.url("imaps", user) == (
        f"imaps://urluser@127.0.0.1:{cyrus_server.ports['imaps']}"
    )
    client = IMAPClient(cyrus_server.host, port=cyrus_server.ports["imap"], ssl=False)
    try:
        assert b"Cyrus IMAP 3.6." in client.welcome
    finally:
        client.shutdown()


def test_debian_namespace_settings_are_kept(cyrus_server) -> None:
    conf = dict(
        line.split(": ", 1) for line in cyrus_server.imapd_conf.read_text().splitlines()[1:]
    )
    assert conf["altnamespace"] == "no"
    assert conf["unixhierarchysep"] == "no"
    assert conf["autocreate_quota"] == "0"
    assert conf["configdirectory"].startswith(str(cyrus_server.workdir))


def test_wrong_password_is_refused(cyrus_server, cyrus_user) -> None:
    client = IMAPClient(cyrus_server.host, port=cyrus_server.ports["imap"], ssl=False)
    with pytest.raises(LoginError, match="authentication failure"):
        client.login(cyrus_user.name, "wrong")
    client.shutdown()
    client = IMAPClient(cyrus_server.host, port=cyrus_server.ports["imap"], ssl=False)
    with pytest.raises(LoginError):
        client.login("no-such-user", cyrus_user.password)
    client.shutdown()
    with cyrus_server.imap(cyrus_user) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_starttls_and_imaps_verify_with_cafile(cyrus_server, cyrus_user) -> None:
    client = IMAPClient(cyrus_server.host, port=cyrus_server.ports["imap"], ssl=False)
    assert client.has_capability("STARTTLS")
    client.starttls(cyrus_server.ssl_context())
    client.login(cyrus_user.name, cyrus_user.password)
    client.logout()
    with cyrus_server.imap(cyrus_user, tls=True) as client:
        assert client._imap.sock.version().startswith("TLS")
    other = IMAPClient(cyrus_server.host, port=cyrus_server.ports["imap"], ssl=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        other.starttls(ssl.create_default_context())
    with contextlib.suppress(OSError):
        other.shutdown()


def test_users_are_isolated(cyrus_server, cyrus_user) -> None:
    other = cyrus_server.add_user()
    with cyrus_server.imap(cyrus_user) as client:
        client.append("INBOX", SAMPLES["plain"])
    with cyrus_server.imap(other) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    with cyrus_server.imap(cyrus_user) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 1
    for bad in ("a.b", "a b", "", "dup"):
        if bad == "dup":
            cyrus_server.add_user("dup")
        with pytest.raises(ValueError):
            cyrus_server.add_user(bad)


def test_namespace_and_fresh_list(cyrus_server, cyrus_user) -> None:
    with cyrus_server.imap(cyrus_user) as client:
        assert raw_command(client, "NAMESPACE")[0] == "OK"
        assert client._imap.untagged_responses.pop("NAMESPACE") == [
            b'(("INBOX." ".")) (("user." ".")) (("" "."))'
        ]
        assert client._imap.list('""', '"*"') == ("OK", [b'(\\HasNoChildren) "." INBOX'])


def test_create_inside_and_outside_the_prefix(cyrus_server, cyrus_user) -> None:
    with cyrus_server.imap(cyrus_user) as client:
        for name, status, text in CREATES:
            got = raw_command(client, "CREATE", name)
            assert got[0] == status and got[1].startswith(text), (name, got)
        # INBOX.A.B brings INBOX.A with it, as a mailbox one can SELECT (no \Noselect).
        assert client._imap.list('""', '"*"') == (
            "OK",
            [
                b'(\\HasChildren) "." INBOX',
                b'(\\HasChildren) "." INBOX.A',
                b'(\\HasNoChildren) "." INBOX.A.B',
                b'(\\HasNoChildren) "." INBOX.Sent',
            ],
        )
        assert client.select_folder("INBOX.A")[b"EXISTS"] == 0


def test_capabilities(cyrus_server, cyrus_user) -> None:
    with cyrus_server.imap(cyrus_user) as client:
        caps = set(client.capabilities())
        for cap in (
            b"UIDPLUS", b"CONDSTORE", b"QRESYNC", b"OBJECTID", b"SPECIAL-USE",
            b"CREATE-SPECIAL-USE", b"LIST-STATUS", b"LIST-EXTENDED", b"MOVE", b"ESEARCH",
            b"BINARY", b"MULTIAPPEND", b"CATENATE", b"LITERAL+", b"UNSELECT", b"NAMESPACE",
            b"IDLE", b"LOGINDISABLED",
        ):  # fmt: skip
            assert cap in caps, cap
        assert b"UTF8=ACCEPT" not in caps


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_what_append_stores(cyrus_server, cyrus_user, sample) -> None:
    raw = SAMPLES[sample]
    with cyrus_server.imap(cyrus_user) as client:
        got = stored(client, raw)
    status, expected = REWRITES.get(sample, ("OK", raw))
    if status == "OK":
        assert got.status == "OK" and got.text.startswith("[APPENDUID "), got.text
        assert got.body == expected
        assert got.size == len(expected)
        assert got.found_by_message_id
    else:
        assert (got.status, got.text) == (status, expected)


def test_appenduid_and_objectid(cyrus_server, cyrus_user) -> None:
    with cyrus_server.imap(cyrus_user) as client:
        validity = client.select_folder("INBOX")[b"UIDVALIDITY"]
        client.unselect_folder()
        response = client.append("INBOX", SAMPLES["plain"])
        assert response.startswith(f"[APPENDUID {validity} 1] ".encode()), response
        client.select_folder("INBOX")
        fetched = client.fetch([1], ["EMAILID", "THREADID"])[1]
        assert fetched[b"EMAILID"][0].startswith(b"M")
        status = client.folder_status("INBOX", ["MAILBOXID"])
        assert status[b"MAILBOXID"]


def test_log_tail_shows_logins(cyrus_server, cyrus_user) -> None:
    with cyrus_server.imap(cyrus_user):
        pass
    deadline = time.monotonic() + 10
    while f"{cyrus_user.name} plaintext User logged in" not in cyrus_server.log_tail(200):
        assert time.monotonic() < deadline, cyrus_server.log_tail()
        time.sleep(0.05)


def test_tool_runs_in_the_servers_namespace(cyrus_server, cyrus_user) -> None:
    with cyrus_server.imap(cyrus_user):
        pass  # the first login creates the INBOX
    path = cyrus_server.tool("mbpath", f"user.{cyrus_user.name}").stdout.strip()
    assert path.startswith(f"{cyrus_server.workdir}/spool/")


def test_stop_leaves_nothing_running(cyrus_server, tmp_path) -> None:
    # (cyrus_server: skipped where Cyrus cannot run; this test starts its own.)
    server = CyrusServer(tmp_path / "cyrus")
    server.start()
    ports = list(server.ports.values())
    assert all(port_open(port) for port in ports)
    running = processes_mentioning(str(tmp_path / "cyrus"))
    assert any("cyrus/bin/master" in args for args in running), running
    server.stop()
    assert not any(port_open(port) for port in ports)
    assert processes_mentioning(str(tmp_path / "cyrus")) == []


def test_failed_start_reports_the_log(cyrus_server, tmp_path, monkeypatch) -> None:
    broken = CyrusServer(tmp_path / "broken")
    monkeypatch.setattr(broken, "_cyrus_conf", lambda: "SERVICES {\n  imap cmd=\n")
    with pytest.raises(ServerError, match="master exited with status 78"):
        broken.start()
    broken.stop()
    assert processes_mentioning(str(tmp_path / "broken")) == []


def test_flags_dates_and_select_data(cyrus_server, cyrus_user) -> None:
    when = datetime(2020, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))
    with cyrus_server.imap(cyrus_user) as client:
        client.normalise_times = False
        client.append("INBOX", SAMPLES["plain"], flags=[b"\\Seen", b"$Forwarded"], msg_time=when)
        info = client.select_folder("INBOX")
        assert info[b"UIDNEXT"] == 2 and info[b"HIGHESTMODSEQ"] > 0
        assert b"\\*" in info[b"PERMANENTFLAGS"]
        data = client.fetch([1], ["FLAGS", "INTERNALDATE"])[1]
    assert set(data[b"FLAGS"]) == {b"\\Seen", b"$Forwarded", b"\\Recent"}
    # The instant survives, its UTC offset does not.
    assert data[b"INTERNALDATE"] == when
    assert data[b"INTERNALDATE"].utcoffset() == timedelta(0)

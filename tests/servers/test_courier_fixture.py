"""The private Courier fixture works (logins, TLS, users, start and stop), and what
Courier-IMAP 5 does with namespaces, folder names and awkward messages, measured byte
for byte: tests/servers/courier.py's docstring quotes these results."""

from __future__ import annotations

import contextlib
import socket
import ssl
from datetime import datetime, timedelta, timezone

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from servers.courier import CourierServer
from servers.rewrites import SAMPLES, stored
from servers.sandbox import ServerError, port_open, processes_mentioning

# What FETCH BODY.PEEK[] gives back where it is not the bytes appended (Courier keeps
# messages with LF line ends on disk and serves them with CRLF).  Every other sample,
# NUL and 8-bit headers included, comes back identical; Courier refuses none.
REWRITES = {
    "no_final_crlf": SAMPLES["no_final_crlf"] + b"\r\n",
    "bare_lf": SAMPLES["bare_lf"].replace(b"one\ntwo", b"one\r\ntwo"),
    "bare_cr": SAMPLES["bare_cr"].replace(b"one\rtwo", b"onetwo"),
}

# CREATE name -> (status, text) for a fresh user.
CREATES = [
    ("Sent", "NO", "Invalid mailbox name."),
    ("Other", "NO", "Invalid mailbox name."),
    ("user.bob", "NO", "Invalid mailbox name."),
    ("INBOX.x/y", "NO", "Invalid mailbox name."),
    ("INBOX/z", "NO", "Invalid mailbox name."),
    ("INBOX.Sent", "OK", '"INBOX.Sent" created.'),
    ("INBOX.Sent", "NO", "Cannot create this folder."),
    ("INBOX.A.B", "OK", '"INBOX.A.B" created.'),
]

CAPABILITIES = (
    b"IMAP4REV1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT "
    b"QUOTA IDLE ACL ACL2=UNION ENABLE UTF8=ACCEPT"
).split()


def raw_command(client: IMAPClient, *args: str) -> tuple[str, str]:
    typ, data = client._imap._simple_command(*args)
    last = data[-1] if data else b""
    return typ, last.decode() if isinstance(last, bytes) else str(last)


def test_server_basics(courier_server: CourierServer) -> None:
    assert courier_server.host == "127.0.0.1"
    assert set(courier_server.ports) == {"imap", "imaps"}
    assert len(set(courier_server.ports.values())) == 2
    assert courier_server.version.startswith("5.")
    user = courier_server.add_user("urluser")
    assert courier_server.url("imap", user) == (
        f"imap://urluser@127.0.0.1:{courier_server.ports['imap']}"
    )
    assert user.maildir == courier_server.homes / "urluser" / "Maildir"
    client = IMAPClient(courier_server.host, port=courier_server.ports["imap"], ssl=False)
    try:
        assert b"Courier-IMAP ready" in client.welcome
    finally:
        client.shutdown()


def test_debian_configuration_is_kept(courier_server) -> None:
    imapd = (courier_server.etc / "imapd").read_text()
    assert "\nMAILDIRPATH=Maildir\n" in imapd
    assert 'IMAP_CAPABILITY="IMAP4rev1 UIDPLUS CHILDREN NAMESPACE' in imapd
    assert f'PORT="{courier_server.ports["imap"]}"' in imapd


def test_wrong_password_is_refused(courier_server, courier_user) -> None:
    # Courier answers a failed login after 5 s (hard-coded in imaplogin).
    client = IMAPClient(courier_server.host, port=courier_server.ports["imap"], ssl=False)
    with pytest.raises(LoginError, match="Login failed"):
        client.login(courier_user.name, "wrong")
    with contextlib.suppress(OSError):
        client.shutdown()
    with courier_server.imap(courier_user) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_starttls_and_imaps_verify_with_cafile(courier_server, courier_user) -> None:
    client = IMAPClient(courier_server.host, port=courier_server.ports["imap"], ssl=False)
    assert client.has_capability("STARTTLS")
    client.starttls(courier_server.ssl_context())
    assert client.has_capability("AUTH=PLAIN")  # Debian's IMAP_CAPABILITY_TLS
    client.login(courier_user.name, courier_user.password)
    client.logout()
    with courier_server.imap(courier_user, tls=True) as client:
        assert client._imap.sock.version().startswith("TLS")
    # Without the CA the certificate is not trusted: verification really happens.
    raw = socket.create_connection((courier_server.host, courier_server.ports["imaps"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
    raw.close()


def test_users_are_isolated(courier_server, courier_user) -> None:
    other = courier_server.add_user()
    with courier_server.imap(courier_user) as client:
        client.append("INBOX", SAMPLES["plain"])
    with courier_server.imap(other) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    with courier_server.imap(courier_user) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 1
    assert len(list(courier_user.maildir.glob("[cn][ue][rw]/*"))) == 1
    for bad in ("a.b", "a b", "", "dup"):
        if bad == "dup":
            courier_server.add_user("dup")
        with pytest.raises(ValueError):
            courier_server.add_user(bad)


def test_namespace_and_fresh_list(courier_server, courier_user) -> None:
    with courier_server.imap(courier_user) as client:
        assert raw_command(client, "NAMESPACE")[0] == "OK"
        assert client._imap.untagged_responses.pop("NAMESPACE") == [
            b'(("INBOX." ".")) NIL (("#shared." ".")("shared." "."))'
        ]
        assert client._imap.list('""', '"*"') == (
            "OK",
            [b'(\\Unmarked \\HasNoChildren) "." "INBOX"'],
        )


def test_create_inside_and_outside_the_prefix(courier_server, courier_user) -> None:
    with courier_server.imap(courier_user) as client:
        for name, status, text in CREATES:
            assert raw_command(client, "CREATE", name) == (status, text), name
        typ, listed = client._imap.list('""', '"*"')
        assert sorted(listed) == [
            b'(\\HasNoChildren) "." "INBOX.A.B"',
            b'(\\HasNoChildren) "." "INBOX.Sent"',
            b'(\\Noselect \\HasChildren) "." "INBOX.A"',
            b'(\\Unmarked \\HasChildren) "." "INBOX"',
        ]
        assert raw_command(client, "SELECT", "INBOX.A") == (
            "NO",
            "Mailbox does not exist, or must be subscribed to.",
        )
    # Maildir++ on disk: INBOX is the Maildir, INBOX.A.B is .A.B (no .A).
    folders = sorted(p.name for p in courier_user.maildir.iterdir() if p.name.startswith("."))
    assert folders == [".A.B", ".Sent"]


def test_capabilities(courier_server, courier_user) -> None:
    with courier_server.imap(courier_user) as client:
        assert sorted(client.capabilities()) == sorted(CAPABILITIES)


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_what_append_stores(courier_server, courier_user, sample) -> None:
    raw = SAMPLES[sample]
    with courier_server.imap(courier_user) as client:
        got = stored(client, raw)
    expected = REWRITES.get(sample, raw)
    assert got.status == "OK" and got.text.startswith("[APPENDUID "), got.text
    assert got.text.endswith("] APPEND Ok.")
    assert got.body == expected
    assert got.size == len(expected)
    assert got.found_by_message_id


def test_messages_are_kept_with_lf_on_disk(courier_server, courier_user) -> None:
    with courier_server.imap(courier_user) as client:
        client.append("INBOX", SAMPLES["plain"])
    (path,) = courier_user.maildir.glob("[cn][ue][rw]/*")  # cur/ or new/
    assert path.read_bytes() == SAMPLES["plain"].replace(b"\r\n", b"\n")


def test_log_tail_shows_logins(courier_server, courier_user) -> None:
    with courier_server.imap(courier_user):
        pass
    assert f"LOGIN, user={courier_user.name}," in courier_server.log_tail(200)


def test_stop_leaves_nothing_running(courier_server, tmp_path) -> None:
    # (courier_server: skipped where Courier cannot run; this test starts its own.)
    server = CourierServer(tmp_path / "courier")
    server.start()
    ports = list(server.ports.values())
    assert all(port_open(port) for port in ports)
    # authdaemond and couriertcpd were started with /etc/courier paths: the namespace's
    # first process names the work directory.
    assert processes_mentioning(str(tmp_path / "courier")) != []
    server.stop()
    assert not any(port_open(port) for port in ports)
    assert processes_mentioning(str(tmp_path / "courier")) == []


def test_failed_start_reports_the_log(courier_server, tmp_path, monkeypatch) -> None:
    broken = CourierServer(tmp_path / "broken")
    daemons = broken._daemons
    monkeypatch.setattr(
        broken, "_daemons", lambda: {**daemons(), "couriertcpd imaps": "sh -c 'exit 3'"}
    )
    with pytest.raises(ServerError, match="couriertcpd imaps exited with status 3"):
        broken.start()
    broken.stop()
    assert processes_mentioning(str(tmp_path / "broken")) == []


def test_flags_dates_and_select_data(courier_server, courier_user) -> None:
    when = datetime(2020, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))
    with courier_server.imap(courier_user) as client:
        client.normalise_times = False
        client.append("INBOX", SAMPLES["plain"], flags=[b"\\Seen", b"$Forwarded"], msg_time=when)
        info = client.select_folder("INBOX")
        # SELECT says no UIDNEXT (nor HIGHESTMODSEQ: no CONDSTORE); STATUS does.
        assert b"UIDNEXT" not in info and b"HIGHESTMODSEQ" not in info
        assert b"\\*" in info[b"PERMANENTFLAGS"]
        data = client.fetch([1], ["FLAGS", "INTERNALDATE"])[1]
        assert client.folder_status("INBOX", ["UIDNEXT"])[b"UIDNEXT"] == 2
    assert set(data[b"FLAGS"]) == {b"\\Seen", b"$Forwarded"}  # no \Recent after APPEND
    # The instant survives (the file's mtime), its UTC offset does not.
    assert data[b"INTERNALDATE"] == when
    assert data[b"INTERNALDATE"].utcoffset() == timedelta(0)

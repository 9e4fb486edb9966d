"""The private Dovecot fixture works: logins, TLS, byte-exact mail, SPECIAL-USE, UIDVALIDITY,
and serving a Maildir tree written on disk; the prefixed variant's namespace, and what
both store for the awkward samples of servers/rewrites.py."""

from __future__ import annotations

import contextlib
import mailbox
import os
import poplib
import socket
import ssl
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from servers.dovecot import LOCALIZED_SPECIAL_USE, SPECIAL_USE, DovecotError, DovecotServer
from servers.rewrites import SAMPLES, stored
from servers.sandbox import processes_mentioning

MESSAGES = [
    (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: one\r\n\r\nfirst body\r\n",
        (b"\\Seen",),
        datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC),
    ),
    (
        b"From: c@example.org\r\nSubject: two\r\nX-Trailing: spaces  \r\n\r\n"
        b"line\r\n\r\n.dot line\r\nno final newline",
        (b"\\Flagged", b"\\Answered", b"$Forwarded"),
        datetime(2020, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5))),
    ),
    (
        b"Subject: three\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + "caf\u00e9 \u2713\r\n".encode(),
        (b"\\Draft", b"\\Seen", b"\\Deleted"),
        datetime(2001, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=9, minutes=30))),
    ),
]


def test_server_basics(dovecot_server: DovecotServer) -> None:
    assert dovecot_server.host == "127.0.0.1"
    assert set(dovecot_server.ports) == {"imap", "imaps", "pop3", "pop3s"}
    assert len(set(dovecot_server.ports.values())) == 4
    assert dovecot_server.cafile.is_file()
    assert dovecot_server.version.startswith("2.")
    assert dovecot_server.url("imaps", dovecot_server.add_user("urluser")) == (
        f"imaps://urluser@127.0.0.1:{dovecot_server.ports['imaps']}"
    )


def test_plain_imap_login_offers_starttls(dovecot_server, dovecot_user) -> None:
    client = IMAPClient(dovecot_server.host, port=dovecot_server.ports["imap"], ssl=False)
    try:
        assert client.has_capability("STARTTLS")
        client.login(dovecot_user.name, dovecot_user.password)
        for cap in ("CONDSTORE", "QRESYNC", "SPECIAL-USE", "UIDPLUS", "MOVE"):
            assert client.has_capability(cap), cap
        assert client.list_folders() == [((b"\\HasNoChildren",), b"/", "INBOX")]
    finally:
        client.logout()


def test_wrong_password_is_refused(dovecot_server, dovecot_user) -> None:
    client = IMAPClient(dovecot_server.host, port=dovecot_server.ports["imap"], ssl=False)
    with pytest.raises(LoginError):
        client.login(dovecot_user.name, "wrong")
    client.shutdown()


def test_starttls_verifies_with_cafile(dovecot_server, dovecot_user) -> None:
    client = IMAPClient(dovecot_server.host, port=dovecot_server.ports["imap"], ssl=False)
    client.starttls(dovecot_server.ssl_context())
    assert client._imap.sock.version().startswith("TLS")
    client.login(dovecot_user.name, dovecot_user.password)
    client.logout()

    # Without the CA the certificate is not trusted: verification really happens.
    other = IMAPClient(dovecot_server.host, port=dovecot_server.ports["imap"], ssl=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        other.starttls(ssl.create_default_context())
    with contextlib.suppress(OSError):
        other.shutdown()


def test_imaps_verifies_ip_and_localhost(dovecot_server, dovecot_user) -> None:
    with dovecot_server.imap(dovecot_user, tls=True) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    # The certificate names localhost as well as 127.0.0.1.
    raw = socket.create_connection((dovecot_server.host, dovecot_server.ports["imaps"]))
    with dovecot_server.ssl_context().wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.getpeercert()["subjectAltName"] == (
            ("DNS", "localhost"),
            ("IP Address", "127.0.0.1"),
        )


def test_pop3s_and_stls(dovecot_server, dovecot_user) -> None:
    pop = poplib.POP3_SSL(
        dovecot_server.host,
        dovecot_server.ports["pop3s"],
        context=dovecot_server.ssl_context(),
        timeout=10,
    )
    pop.user(dovecot_user.name)
    pop.pass_(dovecot_user.password)
    assert pop.stat() == (0, 0)
    pop.quit()

    pop = poplib.POP3(dovecot_server.host, dovecot_server.ports["pop3"], timeout=10)
    assert "STLS" in pop.capa()
    pop.stls(dovecot_server.ssl_context())
    pop.user(dovecot_user.name)
    pop.pass_(dovecot_user.password)
    pop.quit()


def test_append_and_read_back_byte_exact(dovecot_server, dovecot_user) -> None:
    with dovecot_server.imap(dovecot_user) as client:
        client.normalise_times = False
        for raw, flags, when in MESSAGES:
            client.append("INBOX", raw, flags=flags, msg_time=when)
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        assert len(uids) == 3
        got = client.fetch(uids, ["BODY.PEEK[]", "FLAGS", "INTERNALDATE", "RFC822.SIZE"])
    for uid, (raw, flags, when) in zip(sorted(uids), MESSAGES, strict=True):
        data = got[uid]
        assert data[b"BODY[]"] == raw
        assert data[b"RFC822.SIZE"] == len(raw)
        assert set(data[b"FLAGS"]) - {b"\\Recent"} == set(flags)
        # The instant survives; its UTC offset does not (Maildir keeps it as the file's mtime).
        assert data[b"INTERNALDATE"] == when

    # POP3 serves the same bytes, with UIDLs in the configured %08Xu%08Xv format.
    validity = dovecot_server.uidvalidity(dovecot_user)
    pop = dovecot_server.pop3(dovecot_user)
    try:
        uidls = [line.split()[1].decode() for line in pop.uidl()[1]]
        assert uidls == [f"{uid:08x}{validity:08x}" for uid in sorted(uids)]
        for number, (raw, _, _) in enumerate(MESSAGES, 1):
            lines = pop.retr(number)[1]  # POP3 ends the last line with CRLF in any case
            assert b"\r\n".join(lines) == raw.removesuffix(b"\r\n")
    finally:
        pop.quit()


def test_users_are_isolated(dovecot_server, dovecot_user) -> None:
    other = dovecot_server.add_user()
    assert other.name != dovecot_user.name
    with dovecot_server.imap(dovecot_user) as client:
        client.append("INBOX", MESSAGES[0][0])
    with dovecot_server.imap(other) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    assert (dovecot_user.maildir / "INBOX" / "cur").is_dir()  # LAYOUT=fs, INBOX=ROOT/INBOX


def test_special_use_mailboxes(dovecot_server) -> None:
    user = dovecot_server.add_user(special_use=True)
    with dovecot_server.imap(user) as client:
        listed = {name: set(flags) for flags, _, name in client.list_folders()}
        assert set(listed) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            assert f"\\{name}".encode() in listed[name]
        assert client.find_special_folder(b"\\Sent") == "Sent"
        # A fresh user has only INBOX; creating a configured name gives it its attribute.
    fresh = dovecot_server.add_user()
    with dovecot_server.imap(fresh) as client:
        client.create_folder("Junk")
        assert client.find_special_folder(b"\\Junk") == "Junk"


def test_uidvalidity_change_is_seen_by_clients(dovecot_server, dovecot_user) -> None:
    with dovecot_server.imap(dovecot_user) as client:
        client.append("INBOX", MESSAGES[0][0])
        before = client.select_folder("INBOX")[b"UIDVALIDITY"]
        client.unselect_folder()
        assert dovecot_server.uidvalidity(dovecot_user) == before
        new = dovecot_server.change_uidvalidity(dovecot_user, "INBOX")
        assert new == before + 1
        assert client.folder_status("INBOX", ["UIDVALIDITY"])[b"UIDVALIDITY"] == new
    with dovecot_server.imap(dovecot_user) as client:
        info = client.select_folder("INBOX")
        assert info[b"UIDVALIDITY"] == new
        assert info[b"EXISTS"] == 1
    assert dovecot_server.change_uidvalidity(dovecot_user, value=12345) == 12345
    with dovecot_server.imap(dovecot_user) as client:
        assert client.select_folder("INBOX")[b"UIDVALIDITY"] == 12345


def _maildir_tree(root: Path) -> dict[str, list[tuple[bytes, str, float]]]:
    """Writes ROOT/INBOX, ROOT/Sent, ROOT/Archive/2019 with Python's mailbox module."""
    tree = {
        "INBOX": [
            (b"From: a@example.org\nSubject: in 1\n\nhello\n", "S", 1_500_000_000.0),
            (b"Subject: in 2\n\nnew, unseen\n", "", 1_500_000_100.0),
        ],
        "Sent": [(b"Subject: sent\n\nbye\n", "RS", 1_600_000_000.0)],
        "Archive/2019": [(b"Subject: old\n\narchived\n", "FS", 1_550_000_000.0)],
    }
    for folder, messages in tree.items():
        (root / folder).parent.mkdir(parents=True, exist_ok=True)
        md = mailbox.Maildir(root / folder, create=True)
        for raw, flags, mtime in messages:
            msg = mailbox.MaildirMessage(raw)
            if flags:
                msg.set_subdir("cur")
                msg.set_flags(flags)
            key = md.add(msg)
            os.utime(os.path.join(md._path, md._lookup(key)), (mtime, mtime))
    return tree


LETTERS = {"S": b"\\Seen", "R": b"\\Answered", "F": b"\\Flagged"}


def test_serve_maildir_written_on_disk(dovecot_server, tmp_path) -> None:
    root = tmp_path / "pulled"
    tree = _maildir_tree(root)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    user = dovecot_server.serve_maildir(root)
    assert user.maildir == root.resolve()
    with dovecot_server.imap(user) as client:
        client.normalise_times = False
        folders = {name: flags for flags, _, name in client.list_folders()}
        assert set(folders) == {"INBOX", "Sent", "Archive", "Archive/2019"}
        assert b"\\Noselect" in folders["Archive"]  # a plain directory, not a Maildir
        assert b"\\Sent" in folders["Sent"]
        for folder, messages in tree.items():
            client.select_folder(folder, readonly=True)  # EXAMINE: new/ stays new/
            got = client.fetch(client.search("ALL"), ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
            seen = sorted(
                (d[b"BODY[]"], set(d[b"FLAGS"]) - {b"\\Recent"}, d[b"INTERNALDATE"].timestamp())
                for d in got.values()
            )
            want = sorted(
                (raw.replace(b"\n", b"\r\n"), {LETTERS[c] for c in flags}, mtime)
                for raw, flags, mtime in messages
            )
            assert seen == want, folder
    # Dovecot kept its index, uidlist and subscriptions out of the tree.
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    assert all(p.stat().st_uid == dovecot_server.uid for p in root.rglob("*"))


def test_serve_maildir_copy(dovecot_server, tmp_path) -> None:
    root = tmp_path / "orig"
    _maildir_tree(root)
    user = dovecot_server.serve_maildir(root, name="copied", copy=True)
    assert user.maildir != root and (user.maildir / "INBOX" / "new").is_dir()
    assert root.stat().st_uid == 0  # the original is left alone
    with dovecot_server.imap(user) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 2


def test_bad_names_are_refused(dovecot_server) -> None:
    for name in ("a:b", "a/b", "a b", "", ".x"):
        with pytest.raises(ValueError):
            dovecot_server.add_user(name)
    dovecot_server.add_user("dup")
    with pytest.raises(ValueError):
        dovecot_server.add_user("dup")


def test_doveadm_errors_carry_output(dovecot_server) -> None:
    with pytest.raises(DovecotError, match="doveadm mailbox status"):
        dovecot_server.doveadm("mailbox", "status", "-u", "nobody-here", "messages", "INBOX")
    assert dovecot_server.doveadm("user", "nobody-here", check=False).returncode != 0


def test_failed_start_reports_the_log(dovecot_server, tmp_path, monkeypatch) -> None:
    broken = DovecotServer(tmp_path / "broken")
    monkeypatch.setattr(
        broken, "_config", lambda: DovecotServer._config(broken) + "no_such_setting = 1\n"
    )
    with pytest.raises(DovecotError, match="no_such_setting"):
        broken.start()
    broken.stop()
    assert broken.proc is None
    # Nothing of it is left running.  (Not `ps -eo args`: without a terminal it cuts
    # command lines at 80 columns, before the path.)
    assert processes_mentioning(str(tmp_path / "broken")) == []


# -- the prefixed variant (dovecot_prefixed_server) -----------------------------------

PREFIXED_CREATES = [
    ("Sent", "NO", "Client tried to access nonexistent namespace. "
     "(Mailbox name should probably be prefixed with: INBOX.)"),
    ("user.bob", "NO", "Client tried to access nonexistent namespace."),
    ("INBOX/z", "NO", "Client tried to access nonexistent namespace."),
    ("INBOX.x/y", "NO", "[CANNOT] Invalid mailbox name: Name must not have '/' characters"),
    ("INBOX.Sent", "OK", "Create completed"),
    ("INBOX.Sent", "NO", "[ALREADYEXISTS] Mailbox already exists"),
    ("INBOX.A.B", "OK", "Create completed"),
]  # fmt: skip


def _raw(client: IMAPClient, *args: str) -> tuple[str, str]:
    typ, data = client._imap._simple_command(*args)
    return typ, data[-1].decode() if data and isinstance(data[-1], bytes) else ""


def test_prefixed_namespace_and_create(dovecot_prefixed_server, dovecot_prefixed_user) -> None:
    server, user = dovecot_prefixed_server, dovecot_prefixed_user
    assert (server.prefix, server.separator) == ("INBOX.", ".")
    with server.imap(user) as client:
        assert _raw(client, "NAMESPACE")[0] == "OK"
        assert client._imap.untagged_responses.pop("NAMESPACE") == [b'(("INBOX." ".")) NIL NIL']
        assert client._imap.list('""', '"*"') == ("OK", [b'(\\HasNoChildren) "." INBOX'])
        for name, status, text in PREFIXED_CREATES:
            got = _raw(client, "CREATE", name)
            assert got[0] == status and got[1].startswith(text), (name, got)
        assert sorted(client._imap.list('""', '"*"')[1]) == [
            b'(\\HasChildren) "." INBOX',
            b'(\\HasNoChildren \\Sent) "." INBOX.Sent',  # special-use by its name
            b'(\\HasNoChildren) "." INBOX.A.B',
            b'(\\Noselect \\HasChildren) "." INBOX.A',
        ]
    # Maildir++: INBOX is the Maildir itself, INBOX.A.B is .A.B (and no .A).
    assert (user.maildir / "cur").is_dir() and not (user.maildir / "INBOX").exists()
    assert sorted(p.name for p in user.maildir.glob(".*") if p.is_dir()) == [".A.B", ".Sent"]
    assert user.mail_location == f"maildir:{user.home}/Maildir"


def test_prefixed_special_use(dovecot_prefixed_server) -> None:
    user = dovecot_prefixed_server.add_user(special_use=True)
    with dovecot_prefixed_server.imap(user) as client:
        listed = {name: set(flags) for flags, _, name in client.list_folders()}
        assert set(listed) == {"INBOX"} | {f"INBOX.{n}" for n in SPECIAL_USE}
        for name, flag in SPECIAL_USE.items():
            assert flag.encode() in listed[f"INBOX.{name}"]
        assert client.find_special_folder(b"\\Sent") == "INBOX.Sent"


def test_localized_special_use(dovecot_localized_server, dovecot_localized_user) -> None:
    """The localized variant: its special folders carry their attributes under Finnish
    names that mailsync's table of usual names does not hold (what its tests rely on),
    sent in modified UTF-7."""
    from mailsync.folder_names import role_by_name

    server, user = dovecot_localized_server, dovecot_localized_user
    assert (server.prefix, server.separator) == ("INBOX.", ".")
    assert server.special_use == {name: flag for flag, name in LOCALIZED_SPECIAL_USE.items()}
    assert all(role_by_name(name) is None for name in LOCALIZED_SPECIAL_USE.values())
    with server.imap(user) as client:
        raw = client._imap.list('""', '"*"')[1]
        assert b'(\\HasNoChildren \\Sent) "." INBOX.L&AOQ-hetetyt' in raw, raw
        listed = {name: set(flags) for flags, _, name in client.list_folders()}
        assert set(listed) == {"INBOX"} | {f"INBOX.{n}" for n in LOCALIZED_SPECIAL_USE.values()}
        for flag, name in LOCALIZED_SPECIAL_USE.items():
            assert flag.encode() in listed[f"INBOX.{name}"], name
        assert client.find_special_folder(b"\\Sent") == "INBOX.Lähetetyt"
        # An English name is an ordinary folder here.
        client.create_folder("INBOX.Sent")
        assert b"\\Sent" not in {n: f for f, _, n in client.list_folders()}["INBOX.Sent"]


def test_prefixed_serves_a_maildirpp_tree(dovecot_prefixed_server, tmp_path) -> None:
    root = tmp_path / "Maildir"
    for folder in (root, root / ".Sent", root / ".Archive.2019"):
        md = mailbox.Maildir(folder, create=True)
        md.add(mailbox.MaildirMessage(f"Subject: {folder.name}\n\nbody\n".encode()))
    user = dovecot_prefixed_server.serve_maildir(root)
    with dovecot_prefixed_server.imap(user) as client:
        names = {name for _, _, name in client.list_folders()}
        assert names == {"INBOX", "INBOX.Sent", "INBOX.Archive", "INBOX.Archive.2019"}
        for name in ("INBOX", "INBOX.Sent", "INBOX.Archive.2019"):
            assert client.select_folder(name, readonly=True)[b"EXISTS"] == 1, name
    assert not list(root.rglob("dovecot*"))  # index and uidlist are kept elsewhere


def test_the_unprefixed_server_is_unchanged(dovecot_server, dovecot_user) -> None:
    assert (dovecot_server.prefix, dovecot_server.separator) == ("", "/")
    with dovecot_server.imap(dovecot_user) as client:
        assert _raw(client, "NAMESPACE")[0] == "OK"
        assert client._imap.untagged_responses.pop("NAMESPACE") == [b'(("" "/")) NIL NIL']
        assert _raw(client, "CREATE", "Sent")[0] == "OK"


# What Dovecot stores (both variants): NUL becomes 0x80, a lone LF becomes CRLF; every
# other sample of servers/rewrites.py comes back identical, and none is refused.
DOVECOT_REWRITES = {
    "nul_body": SAMPLES["nul_body"].replace(b"\x00", b"\x80"),
    "bare_lf": SAMPLES["bare_lf"].replace(b"one\ntwo", b"one\r\ntwo"),
}


@pytest.mark.parametrize("sample", sorted(SAMPLES))
@pytest.mark.parametrize("kind", ["dovecot_server", "dovecot_prefixed_server"])
def test_what_append_stores(request, kind, sample) -> None:
    server = request.getfixturevalue(kind)
    user = server.add_user()
    with server.imap(user) as client:
        got = stored(client, SAMPLES[sample])
    expected = DOVECOT_REWRITES.get(sample, SAMPLES[sample])
    assert got.status == "OK" and got.text.startswith("[APPENDUID "), got.text
    assert got.body == expected
    assert got.size == len(expected)
    assert got.found_by_message_id


def test_dovecot_offers_no_objectid(dovecot_server, dovecot_user) -> None:
    # RFC 8474 is not in Dovecot 2.3.19's capability list (a mailsync feature that needs
    # OBJECTID cannot be tested against this Dovecot).
    with dovecot_server.imap(dovecot_user) as client:
        assert not client.has_capability("OBJECTID")

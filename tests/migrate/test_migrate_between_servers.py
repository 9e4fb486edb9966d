"""`mailsync migrate` between IMAP servers that name folders differently, message by
message (bytes, flags, keywords, INTERNALDATE), and verify after it: the plain private
Dovecot (``/``, no prefix) and the prefixed one (``INBOX.`` prefix, ``.`` delimiter),
both ways, with DEST's special folders under localized names (Gesendete Objekte,
Papierkorb) that Sent and Trash must reach; pymap, another server, to Dovecot."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from imaptools import Msg, message, run, seed, server_contents, when
from test_imap_pymap import PASSWORD as PYMAP_PASSWORD
from test_imap_pymap import Pymap
from test_imap_pymap import contents as pymap_contents
from test_migrate_imap import imap_url


def fidelity(server, user, rename: dict[str, str] | None = None) -> dict[str, Counter]:
    """folder -> Counter of (LF bytes, every flag and keyword, INTERNALDATE), the folders
    named through `rename` (server name -> the name it is compared under), empty ones
    left out."""
    rename = rename or {}
    return {
        rename.get(folder, folder): messages
        for folder, messages in server_contents(server, user, std_only=False).items()
        if messages
    }


def corpus(prefix: str, delimiter: str) -> dict[str, list[Msg]]:
    """A mailbox with keywords, dates, nested folders and duplicates, its folder names on
    a server with this prefix and delimiter."""
    return {
        "INBOX": [
            Msg(message(1), frozenset(), when(2019, 3, 4, 5, 6, 7)),
            Msg(message(2), frozenset({"\\Seen", "\\Flagged", "Work"}), when(2020, offset_hours=5)),
            Msg(message(2), frozenset({"\\Seen"}), when(2020, 2)),  # the same bytes again
            Msg(message(3, extra=b"x" * 9000), frozenset({"\\Answered", "$Forwarded"}), when(2021)),
        ],
        f"{prefix}Sent": [Msg(message(10), frozenset({"\\Seen"}), when(2018))],
        f"{prefix}Trash": [Msg(message(11), frozenset({"\\Seen", "\\Deleted"}), when(2017))],
        f"{prefix}Archive{delimiter}2019": [
            Msg(message(20 + n), frozenset({"\\Seen", "$Label1"}), when(2019, n + 1))
            for n in range(3)
        ],
    }


def migrate_and_check(source_server, source, dest_server, dest, expected_names):
    src, dst = imap_url(source_server, source), imap_url(dest_server, dest)
    before = fidelity(source_server, source)
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["complete"] and report["copied"] == 9 and report["adopted"] == 0
    assert fidelity(source_server, source) == before  # SOURCE untouched
    assert fidelity(dest_server, dest) == fidelity(source_server, source, expected_names)
    verified = run("verify", "--json", src, dst)
    assert verified.exit_code == 0, verified.output
    found = json.loads(verified.stdout)
    assert (found["missing"], found["extra"], found["changed_flags"]) == (0, 0, 0)
    again = json.loads(run("migrate", "--json", src, dst).stdout)
    assert (again["copied"], again["adopted"], again["complete"]) == (0, 0, True)
    return report


def test_plain_to_prefixed_with_localized_special_folders(
    dovecot_server, dovecot_prefixed_server, mailenv
):
    source = dovecot_server.add_user()
    dest = dovecot_prefixed_server.add_user()
    seed(dovecot_server, source, corpus("", "/"))
    seed(dovecot_prefixed_server, dest, {"INBOX.Gesendete Objekte": [], "INBOX.Papierkorb": []})
    report = migrate_and_check(
        dovecot_server,
        source,
        dovecot_prefixed_server,
        dest,
        {
            "Sent": "INBOX.Gesendete Objekte",
            "Trash": "INBOX.Papierkorb",
            "Archive/2019": "INBOX.Archive.2019",
        },
    )
    folders = {f["folder"]: f["dest_folder"] for f in report["folders"]}
    assert folders["Sent"] == "Gesendete Objekte" and folders["Trash"] == "Papierkorb"


def test_prefixed_with_special_use_to_plain_with_localized_names(
    dovecot_server, dovecot_prefixed_server, mailenv
):
    source = dovecot_prefixed_server.add_user(special_use=True)  # INBOX.Sent is \Sent, ...
    dest = dovecot_server.add_user()
    seed(dovecot_prefixed_server, source, corpus("INBOX.", "."))
    seed(dovecot_server, dest, {"Gesendete Objekte": [], "Papierkorb": []})
    migrate_and_check(
        dovecot_prefixed_server,
        source,
        dovecot_server,
        dest,
        {
            "INBOX.Sent": "Gesendete Objekte",
            "INBOX.Trash": "Papierkorb",
            "INBOX.Archive.2019": "Archive/2019",
        },
    )


@pytest.fixture
def pymap_server(tmp_path):
    """pymap's in-memory server (as tests/imap/test_imap_pymap.py starts it)."""
    server = Pymap(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_pymap_to_dovecot(pymap_server, dovecot_server, mailenv):
    """Another server implementation as SOURCE (pymap keeps no keywords: the system
    flags are compared), a name with non-ASCII letters (modified UTF-7 on both)."""
    dest = dovecot_server.add_user()
    with pymap_server.client() as client:
        for folder, messages in PYMAP_CORPUS.items():
            if folder != "INBOX":
                client.create_folder(folder)
            for msg in messages:
                client.append(folder, msg.wire, flags=sorted(msg.flags), msg_time=msg.date)
        before = pymap_contents(client)
    src = f"{pymap_server.url}&password_command=echo%20{PYMAP_PASSWORD}"
    dst = imap_url(dovecot_server, dest)
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["copied"] == 7
    assert server_contents(dovecot_server, dest) == before
    with pymap_server.client() as client:
        assert pymap_contents(client) == before  # SOURCE untouched
    verified = run("verify", "--json", src, dst)
    assert verified.exit_code == 0, verified.output
    found = json.loads(verified.stdout)
    assert (found["missing"], found["extra"], found["changed_flags"]) == (0, 0, 0)


PYMAP_CORPUS = {
    "INBOX": [
        Msg(message(1), frozenset({"\\Seen"}), when(2019, 3, 4, 5, 6, 7)),
        Msg(message(2), frozenset({"\\Flagged", "\\Answered"}), when(2020, offset_hours=-5)),
        Msg(message(1), frozenset(), when(2019, 3, 5)),  # the same bytes again
    ],
    "Archive/2019": [Msg(message(10 + i), frozenset({"\\Seen"}), when(2019)) for i in range(3)],
    "Entwürfe": [Msg(message(20), frozenset({"\\Draft"}), when(2023))],
}


def test_pop3_to_dovecot_imap_fills_inbox_only(dovecot_server, mailenv):
    """POP3 (Dovecot's) as SOURCE: its maildrop, byte for byte, into DEST's INBOX; the
    source's other IMAP folders are no POP3 mail; no flags to compare (POP3 has none,
    and DEST's are left as the copy made them: none); verify and a rerun agree."""
    source, dest = dovecot_server.add_user(), dovecot_server.add_user()
    bodies = [
        message(1),
        message(1),  # twice in the maildrop: twice in DEST
        message(2, extra=b".\n..leading dots\nFrom the start of a line\n"),
        message(3, extra=b"y" * 20000 + b"\n"),
    ]
    seed(dovecot_server, source, {"INBOX": [Msg(body) for body in bodies]})
    seed(dovecot_server, source, {"Other": [Msg(message(9))]})  # not in the maildrop
    pop = f"{dovecot_server.url('pop3s', source)}?cafile={dovecot_server.cafile}"
    src = f"{pop}&password_command=echo%20{source.password}"
    dst = imap_url(dovecot_server, dest)
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [f["folder"] for f in report["folders"]] == ["INBOX"]
    assert report["copied"] == 4
    on_dest = server_contents(dovecot_server, dest, std_only=False)
    assert Counter(body for body, _, _ in on_dest["INBOX"].elements()) == Counter(bodies)
    assert all(flags == frozenset() for _, flags, _ in on_dest["INBOX"])
    assert {k for k, v in on_dest.items() if v} == {"INBOX"}
    verified = run("verify", "--json", src, dst)
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["extra"] == 0
    assert json.loads(run("migrate", "--json", src, dst).stdout)["copied"] == 0

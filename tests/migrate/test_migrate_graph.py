"""`mailsync migrate` with the Microsoft Graph store (the fake Graph server,
tests/graph/fakegraph.py) and the private Dovecot: Graph -> IMAP with the mail folders
found by their well-known names (Sent Items -> Sent, also onto a DEST whose \\Sent has
a name of its own), each message byte for byte as $value gave it, its flags and
keywords, receivedDateTime as INTERNALDATE; killed at every durable step, then rerun:
every message once; IMAP -> Graph refused (exit 2: restoring goes through IMAP);
calendars and contacts, which an IMAP server cannot hold, named and left out while the
mail goes through (exit 1, and the report says why a rerun will not help)."""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import quote

import pytest
from fakegraph import FakeGraph
from imaptools import Msg, message, run, run_process, seed, server_bodies, when
from servers.dovecot import LOCALIZED_SPECIAL_USE
from test_migrate_imap import imap_url, raw_messages

from mailsync.message import ANSWERED, FLAGGED, FORWARDED, SEEN
from mailsync.stores import graph as graphmod

USER = "alice@example.org"
CRASHED = 137
VERB_REPLY, VERB_FORWARD = 102, 104  # PidTagLastVerbExecuted


@pytest.fixture
def fake_graph(mailenv, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(mailenv / "cache"))
    monkeypatch.setattr(graphmod, "MAX_WAIT", 30.0)
    with FakeGraph(USER) as server:
        server.token = server.add_token()
        yield server


def graph_url(server: FakeGraph, mailenv, **query) -> str:
    """A graph:// URL of the fake's mailbox (its token printed by a token_command)."""
    token_file = mailenv / "graph-token"
    token_file.write_text(server.token + "\n")
    options = {"tls": "none", "token_command": f"cat {token_file}", **query}
    host = server.url.removeprefix("http://")
    return f"graph://{USER}@{host}?" + "&".join(
        f"{k}={quote(str(v), safe='/')}" for k, v in options.items()
    )


def mime(n: int, extra: str = "") -> bytes:
    """A message as Exchange gives it ($value): CRLF line ends."""
    return (
        f"From: bob@example.org\r\nTo: {USER}\r\nSubject: message {n}\r\n"
        f"Message-ID: <{n}.graph@example.org>\r\nDate: Mon, 4 Mar 2019 05:06:07 +0000\r\n\r\n"
        f"Body {n}.\r\n{extra}"
    ).encode()


def graph_flags(item: dict) -> frozenset[str]:
    """The IMAP flags a Graph message stands for (as the Graph store lists them)."""
    flags = set(item["categories"])
    if item["is_read"]:
        flags.add(SEEN)
    if item["flag"] == "flagged":
        flags.add(FLAGGED)
    verb = item["extended"].get("Integer 0x1081")
    if verb == str(VERB_REPLY):
        flags.add(ANSWERED)
    elif verb == str(VERB_FORWARD):
        flags.add(FORWARDED)
    return frozenset(flags)


#: receivedDateTime (as a timestamp) of each message add_message() gave the fake, by id
#: (the fake's message() does not say it).
RECEIVED: dict[str, int] = {}


def add_message(server: FakeGraph, folder: str, body: bytes, **properties) -> str:
    key = server.add_message(folder, body, **properties)
    RECEIVED[key] = int(properties["received"].timestamp())
    return key


def on_graph(server: FakeGraph, paths: dict[str, str]) -> dict[str, Counter]:
    """IMAP folder -> Counter of (the bytes $value gives, flags, receivedDateTime) of
    the fake's folder at each path."""
    return {
        name: Counter(
            (item["mime"], graph_flags(item), RECEIVED[item["immutable_id"]])
            for item in server.messages(path)
        )
        for name, path in paths.items()
    }


def on_imap(server, user) -> dict[str, Counter]:
    """folder -> Counter of (the bytes IMAP sends, flags and keywords, INTERNALDATE),
    empty folders left out."""
    return {
        folder: Counter(
            (message[0], frozenset(f.decode() for f in message[1]), message[2])
            for key, message in messages.items()
            if key != "uidvalidity"
        )
        for folder, messages in raw_messages(server, user).items()
        if len(messages) > 1
    }


def seed_graph(fake: FakeGraph) -> dict[str, str]:
    """A mailbox in every well-known folder and two of its own; -> IMAP folder name on
    a plain Dovecot -> the fake's folder path."""
    add_message(fake, "inbox", mime(1), received=when(2019, 3, 4, 5, 6, 7))
    add_message(
        fake,
        "inbox",
        mime(2),
        is_read=True,
        flag="flagged",
        categories=["Work"],
        received=when(2020),
    )
    umlauts = mime(3, "Gr\u00fc\u00dfe \u2713\r\n.\r\n")
    add_message(fake, "inbox", umlauts, last_verb=VERB_REPLY, received=when(2021))
    long = mime(4, "x" * 9000 + "\r\n")
    add_message(fake, "inbox", long, is_read=True, last_verb=VERB_FORWARD, received=when(2021, 2))
    add_message(fake, "sentitems", mime(5), is_read=True, received=when(2018))
    add_message(fake, "deleteditems", mime(6), received=when(2017))
    add_message(fake, "junkemail", mime(7), received=when(2016))
    add_message(fake, "archive", mime(8), is_read=True, received=when(2015))
    add_message(fake, "drafts", mime(9), is_draft=True, received=when(2022))
    fake.add_folder("inbox", "Projects")
    add_message(fake, "inbox/Projects", mime(10), received=when(2014))
    fake.add_folder("msgfolderroot", "Lists")
    add_message(fake, "msgfolderroot/Lists", mime(11), is_read=True, received=when(2013))
    return {
        "INBOX": "inbox",
        "Sent": "sentitems",
        "Trash": "deleteditems",
        "Junk": "junkemail",
        "Archive": "archive",
        "Drafts": "drafts",
        "INBOX/Projects": "inbox/Projects",
        "Lists": "msgfolderroot/Lists",
    }


def check_clean(src: str, dst: str, **env) -> None:
    verified = run("verify", "--json", src, dst, **env)
    assert verified.exit_code == 0, verified.output
    found = json.loads(verified.stdout)
    assert (found["missing"], found["extra"], found["changed_flags"]) == (0, 0, 0)


def test_graph_to_dovecot_by_well_known_names(fake_graph, dovecot_server, mailenv):
    paths = seed_graph(fake_graph)
    before = on_graph(fake_graph, paths)
    dest = dovecot_server.add_user()
    src, dst = graph_url(fake_graph, mailenv), imap_url(dovecot_server, dest)
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["complete"] and report["copied"] == 11 and report["adopted"] == 0
    assert on_imap(dovecot_server, dest) == before  # bytes, flags, keywords, dates
    assert on_graph(fake_graph, paths) == before  # SOURCE untouched
    check_clean(src, dst)
    again = json.loads(run("migrate", "--json", src, dst).stdout)
    assert (again["copied"], again["adopted"], again["complete"]) == (0, 0, True)


def test_graph_sent_items_reach_a_localized_sent_folder(
    fake_graph, dovecot_localized_server, mailenv
):
    """Graph's Sent Items is Sent by its well-known name; on a DEST whose \\Sent is
    INBOX.Lähetetyt (a name in no table), it goes there, as do Deleted Items, Drafts,
    Junk Email and Archive to theirs."""
    paths = seed_graph(fake_graph)
    before = on_graph(fake_graph, paths)
    dest = dovecot_localized_server.add_user(special_use=True)
    src, dst = graph_url(fake_graph, mailenv), imap_url(dovecot_localized_server, dest)
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 0, result.output
    pairs = {f["folder"]: f["dest_folder"] for f in json.loads(result.stdout)["folders"]}
    roles = {"Sent": "\\Sent", "Trash": "\\Trash", "Drafts": "\\Drafts", "Junk": "\\Junk"}
    roles["Archive"] = "\\Archive"
    for name, role in roles.items():
        assert pairs[name] == LOCALIZED_SPECIAL_USE[role], (name, pairs)
    server_names = {name: f"INBOX.{LOCALIZED_SPECIAL_USE[role]}" for name, role in roles.items()}
    server_names.update({"INBOX/Projects": "INBOX.INBOX.Projects", "Lists": "INBOX.Lists"})
    got = on_imap(dovecot_localized_server, dest)
    assert got == {server_names.get(name, name): v for name, v in before.items()}, sorted(got)
    check_clean(src, dst)


def test_graph_to_dovecot_killed_at_every_step_then_rerun(fake_graph, dovecot_server, mailenv):
    """The crash hook at every durable step (pages of 2 messages), each run going on
    from the last: DEST never holds a message twice, and the run that ends has all."""
    paths = seed_graph(fake_graph)
    before = on_graph(fake_graph, paths)
    dest = dovecot_server.add_user()
    src, dst = graph_url(fake_graph, mailenv), imap_url(dovecot_server, dest)
    state = mailenv / "state"
    crashes = 0
    for crash_at in range(1, 200):
        done = run_process(
            "migrate", "--jobs", "1", src, dst, password="", state=state, crash_at=crash_at,
            env={"MAILSYNC_GRAPH_PAGE_SIZE": "2"},
        )  # fmt: skip
        assert done.returncode in (0, CRASHED), done.stderr
        copies = server_bodies(dovecot_server, dest)
        assert all(n == 1 for c in copies.values() for n in c.values()), (crash_at, copies)
        if done.returncode == 0:
            break
        crashes += 1
    assert crashes >= 11  # (at least one crash a message)
    assert on_imap(dovecot_server, dest) == before
    env = {"env": {"XDG_STATE_HOME": str(state)}}
    final = run("migrate", "--json", src, dst, **env)
    assert final.exit_code == 0, final.output
    assert json.loads(final.stdout)["copied"] == 0
    check_clean(src, dst, **env)


def test_imap_to_graph_is_refused(fake_graph, dovecot_server, mailenv):
    """Graph creates a message only as a draft: a migration to it stops (exit 2) with
    the sentence that says restoring goes through IMAP; no message is written there."""
    source = dovecot_server.add_user()
    seed(
        dovecot_server,
        source,
        {
            "INBOX": [Msg(message(1), frozenset({"\\Seen"}), when(2019))],
            "Projects": [Msg(message(2), frozenset(), when(2020))],  # (not on Graph)
        },
    )
    src, dst = imap_url(dovecot_server, source), graph_url(fake_graph, mailenv)
    for args in ([], ["--json"]):
        result = run("migrate", *args, src, dst)
        assert result.exit_code == 2, result.output
        assert "Graph can only create a message as a draft, not as received mail; " in (
            result.stderr
        )
        assert "to restore messages, use IMAP: imaps://" in result.stderr
    assert fake_graph.messages("inbox") == []
    # No message is written (a folder SOURCE has and Graph lacks may be made, empty,
    # by a folder copied at the same time: the refusal comes at the first append).
    writes = [r for r in fake_graph.requests if r.method != "GET"]
    assert not [r for r in writes if not r.path.endswith("/mailFolders")], writes


def test_graph_calendars_and_contacts_to_imap_are_named_and_mail_goes_through(
    fake_graph, dovecot_server, mailenv
):
    from datetime import UTC, datetime, timedelta

    add_message(fake_graph, "inbox", mime(1), is_read=True, received=when(2019))
    add_message(fake_graph, "sentitems", mime(2), received=when(2020))
    soon = datetime.now(UTC).date() + timedelta(days=10)
    for subject in ("Lunch", "Dentist"):
        fake_graph.add_event(None, {
            "subject": subject,
            "start": {"dateTime": f"{soon}T12:00:00", "timeZone": "UTC"},
            "end": {"dateTime": f"{soon}T13:00:00", "timeZone": "UTC"},
        })  # fmt: skip
    fake_graph.add_contact(None, {"displayName": "Bob Example"})
    before = on_graph(fake_graph, {"INBOX": "inbox", "Sent": "sentitems"})
    dest = dovecot_server.add_user()
    src = graph_url(fake_graph, mailenv, items="mail,calendar,contacts")
    dst = imap_url(dovecot_server, dest)
    leave_out = "(--folders '*' --folders '!Calendar' --folders '!Contacts')"

    dry = run("migrate", "--dry-run", src, dst)
    assert dry.exit_code == 1, dry.output  # as the real run
    assert "  not copied: 2 calendar items, which DEST cannot take" in dry.stdout
    assert dry.stderr.splitlines()[-1].endswith(
        "not in DEST yet; DEST cannot take the calendar and contacts items of Calendar, "
        "Contacts; nothing was written"
    ), dry.stderr

    for _ in range(2):  # (a rerun changes nothing: it cannot)
        result = run("migrate", src, dst)
        assert result.exit_code == 1, result.output
        assert "Calendar: 2 messages" in result.stdout
        assert "  not copied: 2 calendar items, which DEST cannot take" in result.stdout
        assert "  not copied: 1 contacts items, which DEST cannot take" in result.stdout
        assert "  missing:" not in result.stdout  # (no line per event: they have no subject)
        assert "cannot hold calendar items (Calendar)" in result.stderr
        verdict = result.stderr.splitlines()[-1]
        assert verdict == (
            "mailsync: error: incomplete: every other selected SOURCE message (2) is in "
            "DEST, but the 3 items of Calendar, Contacts (calendar and contacts items, which "
            "DEST cannot take: see above) are not; back them up into a Maildir tree, and "
            f"leave them out here {leave_out} for a complete migration"
        ), result.stderr
        assert "rerun" not in verdict
        assert on_imap(dovecot_server, dest) == before

    report = json.loads(run("migrate", "--json", src, dst).stdout)
    assert report["exit_code"] == 1 and not report["complete"]
    kinds = {f["folder"]: (f["kind"], f["not_held"], f["missing"]) for f in report["folders"]}
    assert kinds["Calendar"] == ("calendar", True, 2)
    assert kinds["Contacts"] == ("contacts", True, 1)
    assert kinds["INBOX"] == ("mail", False, 0)

    rest = run("migrate", "--folders", "*", "--folders", "!Calendar", "--folders", "!Contacts",
               src, dst)  # fmt: skip
    assert rest.exit_code == 0, rest.output
    assert rest.stdout.splitlines()[-1].startswith("complete: every selected SOURCE message (2 ")

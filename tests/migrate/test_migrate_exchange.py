"""`mailsync migrate` between Exchange (the fake EWS server, tests/ews/fakeews.py) and the
private Dovecot, both ways, message by message where both keep a thing: bytes, read,
flagged, replied/forwarded, categories as keywords, the arrival date; what Exchange
cannot hold (\\Draft on an existing item, both \\Answered and $Forwarded) is left out of
the comparison as verify leaves it out; a message Exchange refuses is reported, named
and missing (exit 1)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fakeews import FakeEWS
from imaptools import Msg, connect, message, run, seed, server_contents, when
from test_ews_refusals import RefusingEWS
from test_migrate_imap import imap_url

from mailsync.message import ANSWERED, FLAGGED, FORWARDED, SEEN, to_lf
from mailsync.stores import ews as ewsmod
from mailsync.stores.ews_items import VERB_FORWARD, VERB_REPLY

USER, PASSWORD = "alice@example.org", "ews-pw-77"


@pytest.fixture
def fake_ews(mailenv, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(mailenv / "cache"))
    monkeypatch.setattr(ewsmod, "MAX_WAIT", 30)
    server = RefusingEWS(user=USER, password=PASSWORD).start()
    yield server
    server.stop()


def ews_url(server: FakeEWS) -> str:
    base = server.url.replace("http://", "ews://alice%40example.org@")
    return f"{base}?tls=none&auth=basic&password_command=echo%20{PASSWORD}"


def ews_flags(item: dict) -> frozenset[str]:
    """The IMAP flags an Exchange item stands for (as the EWS store lists them)."""
    flags = set(item["categories"])
    if item["is_read"]:
        flags.add(SEEN)
    if item["flag"] == "Flagged":
        flags.add(FLAGGED)
    if item["last_verb"] == VERB_REPLY:
        flags.add(ANSWERED)
    elif item["last_verb"] == VERB_FORWARD:
        flags.add(FORWARDED)
    return frozenset(flags)


def ews_contents(server: FakeEWS, paths: dict[str, str]) -> dict[str, Counter]:
    """Folder name -> Counter of (LF bytes, flags, received time) of the items in the
    fake's folder at each path."""
    return {
        name: Counter(
            (to_lf(item["mime"]), ews_flags(item), int(item["received"].timestamp()))
            for item in server.items(path)
        )
        for name, path in paths.items()
    }


def test_exchange_to_dovecot(fake_ews, dovecot_server, mailenv):
    projects = fake_ews.add_folder("msgfolderroot", "Projects")
    assert projects
    fake_ews.add_item("inbox", message(1), received=when(2019, 3, 4, 5, 6, 7))
    fake_ews.add_item(
        "inbox", message(2), is_read=True, flagged=True, categories=["Work"], received=when(2020)
    )
    fake_ews.add_item("inbox", message(3), is_read=True, last_verb=VERB_REPLY, received=when(2021))
    fake_ews.add_item("inbox", message(4), last_verb=VERB_FORWARD, received=when(2021, 2))
    fake_ews.add_item("sentitems", message(10), is_read=True, received=when(2018))
    fake_ews.add_item("msgfolderroot/Projects", message(20), received=when(2017))
    before = ews_contents(
        fake_ews, {"INBOX": "inbox", "Sent": "sentitems", "Projects": "msgfolderroot/Projects"}
    )
    dest = dovecot_server.add_user()
    src, dst = ews_url(fake_ews), imap_url(dovecot_server, dest)
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["copied"] == 6
    on_dovecot = {
        k: v for k, v in server_contents(dovecot_server, dest, std_only=False).items() if v
    }
    assert on_dovecot == before
    verified = run("verify", "--json", src, dst)
    assert verified.exit_code == 0, verified.output
    found = json.loads(verified.stdout)
    assert (found["missing"], found["extra"], found["changed_flags"]) == (0, 0, 0)
    assert json.loads(run("migrate", "--json", src, dst).stdout)["copied"] == 0


def test_a_message_lost_in_dest_is_copied_again_from_exchange(fake_ews, dovecot_server, mailenv):
    """Exchange lists by pages of changes, which do not show a message DEST lost since:
    migrate lists the source in full then, and copies it again with its arrival date."""
    fake_ews.add_item("inbox", message(1), received=when(2019, 3, 4, 5, 6, 7))
    fake_ews.add_item("inbox", message(2), received=when(2020))
    before = ews_contents(fake_ews, {"INBOX": "inbox"})
    dest = dovecot_server.add_user()
    src, dst = ews_url(fake_ews), imap_url(dovecot_server, dest)
    assert run("migrate", src, dst).exit_code == 0
    with connect(dovecot_server, dest) as client:
        client.select_folder("INBOX")
        client.add_flags(client.search(["ALL"])[:1], [b"\\Deleted"])
        client.expunge()
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["copied"] == 1
    on_dovecot = server_contents(dovecot_server, dest, std_only=False)
    assert {k: v for k, v in on_dovecot.items() if v} == before


def test_dovecot_to_exchange_keeps_what_exchange_can_and_names_a_refusal(
    fake_ews, dovecot_server, mailenv
):
    source = dovecot_server.add_user()
    seed(
        dovecot_server,
        source,
        {
            "INBOX": [
                Msg(message(1), frozenset(), when(2019, 3, 4, 5, 6, 7)),
                Msg(message(2), frozenset({"\\Seen", "\\Flagged", "Work"}), when(2020)),
                Msg(message(3), frozenset({"\\Seen", "\\Answered"}), when(2021)),
                # Exchange keeps the last verb only: one of \Answered and $Forwarded.
                Msg(message(4), frozenset({"\\Answered", "$Forwarded"}), when(2021, 2)),
                Msg(message(5, extra=b"TOO-BIG\n"), frozenset({"\\Seen"}), when(2022)),
            ],
            "Sent": [Msg(message(10), frozenset({"\\Seen"}), when(2018))],
            "Projects": [Msg(message(20), frozenset({"\\Seen", "$Label1"}), when(2017))],
        },
    )
    src, dst = imap_url(dovecot_server, source), ews_url(fake_ews)
    result = run("migrate", "--json", src, dst)
    assert result.exit_code == 1, result.output  # Exchange refused message 5
    report = json.loads(result.stdout)
    (inbox,) = [f for f in report["folders"] if f["folder"] == "INBOX"]
    assert (inbox["copied"], inbox["failed"], inbox["missing"]) == (4, 1, 1)
    assert inbox["missing_messages"][0]["subject"] == "message 5"
    assert any("ErrorMessageSizeExceeded" in error for error in inbox["errors"])
    assert report["verdict"].startswith("incomplete: 1 of the 7 selected SOURCE messages")

    on_exchange = ews_contents(
        fake_ews, {"INBOX": "inbox", "Sent": "sentitems", "Projects": "msgfolderroot/Projects"}
    )
    wanted = {
        name: Counter((m, flags, int(date.timestamp())) for m, flags, date in items)
        for name, items in {
            "INBOX": [
                (message(1), frozenset(), when(2019, 3, 4, 5, 6, 7)),
                (message(2), frozenset({SEEN, FLAGGED, "Work"}), when(2020)),
                (message(3), frozenset({SEEN, ANSWERED}), when(2021)),
            ],
            "Sent": [(message(10), frozenset({SEEN}), when(2018))],
            "Projects": [(message(20), frozenset({SEEN, "$Label1"}), when(2017))],
        }.items()
    }
    (kept_one,) = [e for e in on_exchange["INBOX"] if e[0] == message(4)]
    assert kept_one[1] in ({ANSWERED}, {FORWARDED})  # one of the two, as Exchange keeps
    on_exchange["INBOX"].pop(kept_one)
    assert on_exchange == wanted

    # The check pairs the one Exchange kept with the two SOURCE had: no changed flags.
    verified = run("verify", "--json", src, dst)
    assert verified.exit_code == 1  # message 5 is missing, nothing else differs
    found = json.loads(verified.stdout)
    assert (found["missing"], found["extra"], found["changed_flags"]) == (1, 0, 0)


ICS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\n"
    "UID:{n}@example.org\r\nDTSTAMP:20240101T000000Z\r\nDTSTART:20240102T100000Z\r\n"
    "SUMMARY:meeting {n}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_exchange_calendar_to_dovecot_is_named_and_the_mail_goes_through(
    fake_ews, dovecot_server, mailenv
):
    """items=mail,calendar: the calendar is refused by name (an IMAP server cannot hold
    it), the mail is copied; exit 1 with a verdict that says why and how to leave the
    calendar out (no rerun would copy it), as for Graph (test_migrate_graph.py)."""
    fake_ews.add_item("inbox", message(1), is_read=True, received=when(2019))
    for n in range(3):
        fake_ews.add_item("calendar", ICS.format(n=n).encode())
    dest = dovecot_server.add_user()
    src, dst = ews_url(fake_ews) + "&items=mail,calendar", imap_url(dovecot_server, dest)
    result = run("migrate", src, dst)
    assert result.exit_code == 1, result.output
    assert "  not copied: 3 calendar items, which DEST cannot take" in result.stdout
    assert result.stderr.splitlines()[-1] == (
        "mailsync: error: incomplete: every other selected SOURCE message (1) is in DEST, "
        "but the 3 items of Calendar (calendar items, which DEST cannot take: see above) "
        "are not; back them up into a Maildir tree, and leave them out here "
        "(--folders '*' --folders '!Calendar') for a complete migration"
    ), result.stderr
    assert {k: v for k, v in server_contents(dovecot_server, dest).items() if v} == {
        "INBOX": Counter([(message(1), frozenset({SEEN}), int(when(2019).timestamp()))])
    }
    rest = run("migrate", "--folders", "*", "--folders", "!Calendar", src, dst)
    assert rest.exit_code == 0, rest.output

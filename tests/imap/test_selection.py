"""--since, --before, --max-size (policy.Selection, applied by the planner): on the private
Dovecot, by INTERNALDATE and RFC822.SIZE from the listing.  A message left out is
counted and listed in the report, not copied, not deleted, not downloaded on a rerun,
and copied by a later run without the filter."""

from __future__ import annotations

import json
import mailbox
from collections import Counter

import pytest
from imaptools import (
    CommandSpy,
    Msg,
    connect,
    maildir_bodies,
    message,
    run,
    seed,
    server_messages,
    when,
)

from mailsync.policy import Selection, parse_date, parse_size
from mailsync.stores import open_store

BIG = message(9, "big", extra=b"x" * 4000 + b"\n")
OLD = message(1, "old")
NEW = message(2, "new")
LATE = message(3, "late")


def imaps(server, user) -> str:
    return f"{server.url('imaps', user)}?cafile={server.cafile}"


def folder_report(result) -> dict:
    data = json.loads(result.stdout)
    return {f["folder"]: f for c in data["channels"] for f in c["folders"]}["INBOX"]


def test_filters_leave_out_count_and_list_and_a_later_run_copies(
    dovecot_server, mailenv, monkeypatch
):
    user = dovecot_server.add_user()
    seed(
        dovecot_server,
        user,
        {
            "INBOX": [
                Msg(OLD, date=when(2018, 6, 1)),
                Msg(NEW, frozenset({"\\Seen"}), date=when(2021, 3, 1)),
                Msg(LATE, date=when(2024, 1, 1)),
                Msg(BIG, date=when(2021, 5, 1)),
            ]
        },
    )
    url, dest = imaps(dovecot_server, user), mailenv / "mail"
    filters = ("--since", "2020-01-01", "--before", "2023-01-01", "--max-size", "2K")

    def pull(*args):
        return run("pull", "--json", *args, url, f"maildir:{dest}", password=user.password)

    dry = pull("--dry-run", *filters)
    assert dry.exit_code == 0, dry.output
    assert folder_report(dry)["left_out"] == {
        "older than --since": 1,
        "not older than --before": 1,
        "over --max-size": 1,
    }
    assert not dest.exists() or maildir_bodies(dest).get("INBOX", {}) == {}

    first = pull(*filters)
    assert first.exit_code == 0, first.output
    report = folder_report(first)
    assert report["copied_a_to_b"] == 1
    assert sorted(m["reason"] for m in report["left_out_messages"]) == [
        "not older than --before",
        "older than --since",
        "over --max-size",
    ]
    assert set(maildir_bodies(dest)["INBOX"]) == {NEW}
    text = run("pull", *filters, url, f"maildir:{dest}", password=user.password)
    assert "left out 1 over --max-size" in text.output

    # Again with the filters: nothing copied, nothing downloaded, nothing deleted.
    spy = CommandSpy(monkeypatch)
    again = pull(*filters)
    assert again.exit_code == 0 and folder_report(again)["copied_a_to_b"] == 0
    assert not any("BODY" in c for c in spy.commands), spy.commands
    with connect(dovecot_server, user) as client:
        assert len(server_messages(client, "INBOX")) == 4

    # Without them, what they left out is copied.
    everything = pull()
    assert everything.exit_code == 0, everything.output
    assert folder_report(everything)["copied_a_to_b"] == 3
    assert set(maildir_bodies(dest)["INBOX"]) == {OLD, NEW, LATE, BIG}


@pytest.mark.parametrize(
    "text, value",
    [("2K", 2048), ("25M", 25 * 1024**2), ("1GiB", 1024**3), ("500", 500), ("10mb", 10 << 20)],
)
def test_sizes(text, value):
    assert parse_size(text) == value


def test_dates_and_bad_values():
    assert parse_date("2020-01-01") == when(2020).replace(hour=0).timestamp()
    assert parse_date("2020-01-01T12:00+02:00") == when(2020, hour=10).timestamp()
    for bad, parse in (("yesterday", parse_date), ("12X", parse_size)):
        with pytest.raises(ValueError):
            parse(bad)
    result = run("pull", "--max-size", "lots", "a", "b")
    assert result.exit_code == 2 and "'lots' is not a size" in result.output
    result = run("pull", "--since", "2021-01-01", "--before", "2020-01-01", "a", "b")
    assert result.exit_code == 2 and "--since must be earlier than --before" in result.output


def test_a_selection_with_nothing_set_leaves_nothing_out():
    assert not Selection()
    assert Selection().reason(10**9, 1.0) is None
    # A store that does not know arrival dates (POP3: 0) is not filtered by date.
    assert Selection(since=parse_date("2020-01-01")).reason(10, 0.0) is None


def test_two_way_sync_leaves_out_both_ways_and_deletes_nothing(mailenv):
    """A two-way sync with --max-size: each side's big message stays where it is (not
    copied, not deleted), the small ones cross; twice, so a rerun does not change it."""
    big = b"From: a@example.org\nSubject: big\n\n" + b"y" * 5000 + b"\n"
    for side, small in (("a", [OLD, NEW]), ("b", [LATE])):
        (mailenv / side).mkdir()
        inbox = mailbox.Maildir(str(mailenv / side / "INBOX"), create=True)
        for data in [*small, big + side.encode() + b"\n"]:
            inbox.add(data)
    urls = [f"maildir:{mailenv / side}" for side in ("a", "b")]
    for _ in range(2):
        result = run("sync", "--json", "--max-size", "4K", *urls)
        assert result.exit_code == 0, result.output
        assert folder_report(result)["left_out"] == {"over --max-size": 2}
    for side, url in zip(("a", "b"), urls, strict=True):
        with open_store(url, read_only=True) as store:
            folder = store.open_folder("INBOX")
            inbox = Counter(folder.fetch(key) for key in folder.list())
        assert inbox == Counter([OLD, NEW, LATE, big + side.encode() + b"\n"])

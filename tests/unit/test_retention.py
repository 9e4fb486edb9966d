"""POP3 retention (retention.expired) and arrival dates from headers (message.arrival_date)."""

from __future__ import annotations

from datetime import UTC, datetime

from mailsync.message import arrival_date
from mailsync.policy import Retention
from mailsync.retention import expired

DAY = 86400.0
NOW = 1_800_000_000.0


def test_after_download_lets_every_recorded_message_go():
    rule = Retention(after_download=True)
    assert expired({"b": NOW, "a": None}, rule, NOW) == ["a", "b"]


def test_after_days_counts_from_the_first_record():
    rule = Retention(after_days=3)
    recorded = {"old": NOW - 3 * DAY, "young": NOW - 2.9 * DAY, "unknown": None}
    assert expired(recorded, rule, NOW) == ["old"]
    assert expired(recorded, Retention(after_days=0), NOW) == ["old", "young"]


def test_no_rule_no_deletion():
    assert expired({"a": NOW - 999 * DAY}, Retention(), NOW) == []


def ts(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_arrival_is_the_newest_received_date():
    data = (
        b"Received: from a\n\tby b; Tue, 5 Mar 2019 09:00:00 +0000\n"
        b"Received: from b by c; Tue, 5 Mar 2019 10:30:00 +0100\n"
        b"Date: Mon, 1 Jan 2018 00:00:00 +0000\n\n"
        b"Received: in the body; Wed, 1 Jan 2020 0:0:0 +0000\n"
    )
    assert arrival_date(data) == ts(2019, 3, 5, 9, 30)


def test_arrival_falls_back_to_date_then_none():
    assert arrival_date(b"Date: Sun, 1 Jan 2017 08:00:00 -0200\n\nx\n") == ts(2017, 1, 1, 10)
    assert arrival_date(b"Subject: x\n\nDate: Sun, 1 Jan 2017 08:00:00 +0000\n") is None
    assert arrival_date(b"Received: garbage without a date\nDate: nonsense\n\n") is None


def test_dates_far_in_the_future_are_not_believed():
    data = b"Received: x; Fri, 1 Jan 2100 00:00:00 +0000\nDate: Sun, 1 Jan 2017 00:00:00 +0000\n\n"
    assert arrival_date(data, now=ts(2026, 1, 1)) == ts(2017, 1, 1)

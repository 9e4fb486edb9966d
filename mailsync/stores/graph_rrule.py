"""Microsoft Graph's recurrencePattern as the parts of an iCalendar RRULE (RFC 5545
3.3.10), for graph_ical.py: pure, no I/O.  The range (end date, count) and the time
zone are graph_ical's, which knows the series' start."""

from __future__ import annotations

from typing import Any

DAYS = {
    "sunday": "SU", "monday": "MO", "tuesday": "TU", "wednesday": "WE",
    "thursday": "TH", "friday": "FR", "saturday": "SA",
}  # fmt: skip
WEEK_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
MAX_INTERVAL = 1000  # Graph allows up to 99 (Outlook's dialog); more is no real series


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _days(pattern: dict) -> list[str]:
    days = []
    for day in _list(pattern.get("daysOfWeek")):
        code = DAYS.get(str(day).lower())
        if code is None:
            raise ValueError(f"recurrence pattern daysOfWeek holds {str(day)[:40]!r}")
        if code not in days:
            days.append(code)
    return days


def _number(pattern: dict, field: str, low: int, high: int) -> int:
    value = pattern.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"recurrence pattern {field} is {str(value)[:40]!r}, not {low} to {high}")
    return value


def pattern_rule(pattern: dict) -> dict:
    """The RRULE parts of a Graph recurrencePattern.  Only the fields of its type are
    read: Graph fills the others with zeros ("month": 0) or defaults ("index": "first").

    Outlook puts a monthly or yearly occurrence on day 29-31 on the last day of a month
    that is shorter (CDO's RecurrencePattern.DayOfMonth: 31 is "the last day of every
    month", 29 February is the 28th in other years); RRULE skips such months, so day 31
    is BYMONTHDAY=-1 (as Exchange itself exports it, MS-OXCICAL 2.1.3.2.2.3) and days 29
    and 30 are BYMONTHDAY=28,...,N with BYSETPOS=-1.  A relative pattern with several
    days (Outlook's "first weekday") is the index-th of those days in the month:
    BYDAY=MO,...,FR;BYSETPOS=n."""
    kind = str(pattern.get("type") or "").lower()
    rule: dict[str, Any] = {}
    interval = pattern.get("interval", 1)
    if (
        not isinstance(interval, int)
        or isinstance(interval, bool)
        or not 1 <= interval <= MAX_INTERVAL
    ):
        raise ValueError(f"recurrence pattern interval is {str(interval)[:40]!r}")
    if kind == "daily":
        rule["FREQ"] = "DAILY"
    elif kind == "weekly":
        rule["FREQ"] = "WEEKLY"
        days = _days(pattern)
        if not days:
            raise ValueError("a weekly recurrence pattern has no daysOfWeek")
        rule["BYDAY"] = days
    elif kind in ("absolutemonthly", "absoluteyearly"):
        rule["FREQ"] = "MONTHLY" if kind == "absolutemonthly" else "YEARLY"
        if kind == "absoluteyearly":
            rule["BYMONTH"] = [_number(pattern, "month", 1, 12)]
        day = _number(pattern, "dayOfMonth", 1, 31)
        if day == 31:
            rule["BYMONTHDAY"] = [-1]
        elif day > 28:
            rule["BYMONTHDAY"] = list(range(28, day + 1))
            rule["BYSETPOS"] = [-1]
        else:
            rule["BYMONTHDAY"] = [day]
    elif kind in ("relativemonthly", "relativeyearly"):
        rule["FREQ"] = "MONTHLY" if kind == "relativemonthly" else "YEARLY"
        if kind == "relativeyearly":
            rule["BYMONTH"] = [_number(pattern, "month", 1, 12)]
        days = _days(pattern)
        if not days:
            raise ValueError(f"a {pattern.get('type')} recurrence pattern has no daysOfWeek")
        index = WEEK_INDEX.get(str(pattern.get("index") or "first").lower())
        if index is None:
            raise ValueError(f"recurrence pattern index is {str(pattern.get('index'))[:40]!r}")
        if len(days) == 1:
            rule["BYDAY"] = [f"{index}{days[0]}"]
        else:
            rule["BYDAY"] = days
            rule["BYSETPOS"] = [index]
    else:
        raise ValueError(f"recurrence pattern type {str(pattern.get('type'))[:40]!r} is unknown")
    if interval != 1:
        rule["INTERVAL"] = interval
    if rule["FREQ"] == "WEEKLY":
        # The week start decides which weeks an INTERVAL > 1 counts; Graph's default is Sunday.
        rule["WKST"] = DAYS.get(str(pattern.get("firstDayOfWeek") or "sunday").lower(), "SU")
    return rule

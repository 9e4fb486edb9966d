"""Graph events -> iCalendar and Graph contacts -> vCard 4.0 (stores/graph_ical.py,
graph_vcard.py), checked by reading the result back with what calendar and address-book
programs read it with: `icalendar` (khal, vdirsyncer), `vobject` (khard, older khal),
`recurring-ical-events` for the occurrences a series expands to.

The samples are Microsoft's documented examples (the event and contact resources' "Get"
responses, the recurrence examples of "Schedule repeating appointments"), with fields
added where an example lacks one.  The occurrences Graph lists for a pattern are computed
here from the documentation's words by plain date arithmetic (graph_occurrences), an
implementation independent of the RRULE that is under test.
"""

from __future__ import annotations

import calendar as monthdays
import copy
import datetime as dt
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest
import recurring_ical_events
import vobject
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from icalendar import Calendar

from mailsync.stores.graph_ical import cancelled_occurrences, event_to_ics
from mailsync.stores.graph_vcard import contact_to_vcf

LA = ZoneInfo("America/Los_Angeles")
BERLIN = ZoneInfo("Europe/Berlin")

# The event of "Get event" (learn.microsoft.com/graph/api/event-get), as Graph gives it
# without a Prefer: outlook.timezone header: in UTC, with the organiser's zone beside it.
BRUNCH = {
    "@odata.etag": 'W/"ZlnW4RIAV06KYYwlrfNZvQAAKGWwbw=="',
    "id": "AAMkAGIAAAoZDOFAAA=",
    "createdDateTime": "2017-04-15T03:00:50.7579581Z",
    "lastModifiedDateTime": "2017-04-15T03:00:51.245372Z",
    "changeKey": "ZlnW4RIAV06KYYwlrfNZvQAAKGWwbw==",
    "categories": ["Red category", "Lunch, brunch; and more"],
    "originalStartTimeZone": "Pacific Standard Time",
    "originalEndTimeZone": "Pacific Standard Time",
    "iCalUId": "040000008200E00074C5B7101A82E00800000000DA2B357D94B5D201000000000000000010"
    "000000EC4597557F0CB34EA4CC2887EA7B17C3",
    "reminderMinutesBeforeStart": 15,
    "isReminderOn": True,
    "hasAttachments": False,
    "subject": "Let's go brunch",
    "bodyPreview": "Does late morning work for you?",
    "importance": "high",
    "sensitivity": "private",
    "isAllDay": False,
    "isCancelled": False,
    "isOrganizer": True,
    "responseRequested": True,
    "seriesMasterId": None,
    "showAs": "tentative",
    "type": "singleInstance",
    "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
    "body": {
        "contentType": "html",
        "content": '<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; '
        'charset=utf-8">\r\n<style>p {color: red}</style>\r\n</head>\r\n<body>\r\n<p>Does late '
        "morning work for you?</p><p>Fish &amp; chips<br>or <b>eggs</b></p>\r\n</body>\r\n"
        "</html>\r\n",
    },
    "start": {"dateTime": "2017-04-15T18:00:00.0000000", "timeZone": "UTC"},
    "end": {"dateTime": "2017-04-15T19:00:00.0000000", "timeZone": "UTC"},
    "location": {
        "displayName": "Harry's Bar",
        "locationType": "default",
        "uniqueId": "Harry's Bar",
        "uniqueIdType": "private",
    },
    "locations": [{"displayName": "Harry's Bar", "locationType": "default"}],
    "recurrence": None,
    "attendees": [
        {
            "type": "required",
            "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
            "emailAddress": {
                "name": "Samantha Booth",
                "address": "samanthab@contoso.onmicrosoft.com",
            },
        },
        {
            "type": "optional",
            "status": {"response": "accepted", "time": "2017-04-15T04:00:00Z"},
            "emailAddress": {"name": "Alex Wilber", "address": "alexw@contoso.onmicrosoft.com"},
        },
        {
            "type": "required",
            "status": {"response": "tentativelyAccepted", "time": "2017-04-15T04:00:00Z"},
            "emailAddress": {
                "name": 'Megan "Bowen", Jr.',
                "address": "meganb@contoso.onmicrosoft.com",
            },
        },
        {
            "type": "resource",
            "status": {"response": "declined", "time": "2017-04-15T04:00:00Z"},
            "emailAddress": {"name": "Conf Room 1", "address": "room1@contoso.onmicrosoft.com"},
        },
    ],
    "organizer": {
        "emailAddress": {"name": "Dana Swope", "address": "danas@contoso.onmicrosoft.com"}
    },
}

# "Create event" with a weekly recurrence (event-post, example 4), as Graph returns it:
# the pattern's unused fields filled with zeros and defaults.
LUNCH_SERIES = {
    "id": "AAMkADQwMD",
    "iCalUId": "040000008200E00074C5B7101A82E008000000001E3E8E6F1F09D40100000000000000001000"
    "0000F7E8A4C6E8E4694FB0E1D5A8F8C1B1B2",
    "createdDateTime": "2017-08-30T17:47:40.6478163Z",
    "lastModifiedDateTime": "2017-08-30T17:47:40.9914394Z",
    "subject": "Let's go for lunch",
    "body": {"contentType": "text", "content": "Does noon time work for you?"},
    "originalStartTimeZone": "Pacific Standard Time",
    "originalEndTimeZone": "Pacific Standard Time",
    "start": {"dateTime": "2017-09-04T12:00:00.0000000", "timeZone": "Pacific Standard Time"},
    "end": {"dateTime": "2017-09-04T14:00:00.0000000", "timeZone": "Pacific Standard Time"},
    "location": {"displayName": "Harry's Bar"},
    "isAllDay": False,
    "type": "seriesMaster",
    "showAs": "busy",
    "recurrence": {
        "pattern": {
            "type": "weekly",
            "interval": 1,
            "month": 0,
            "dayOfMonth": 0,
            "daysOfWeek": ["monday"],
            "firstDayOfWeek": "sunday",
            "index": "first",
        },
        "range": {
            "type": "endDate",
            "startDate": "2017-09-04",
            "endDate": "2017-12-31",
            "recurrenceTimeZone": "Pacific Standard Time",
            "numberOfOccurrences": 0,
        },
    },
    "attendees": [],
    "organizer": {
        "emailAddress": {"name": "Adele Vance", "address": "adelev@contoso.onmicrosoft.com"}
    },
}

# The contact of "Get contact" (contact-get), with every field Graph has filled in.
CONTACT = {
    "@odata.etag": 'W/"EQAAABYAAACd9nJ/tVysQos2hTfspaWRAAADhEnO"',
    "id": "AAMkAGI2THk0AAA=",
    "createdDateTime": "2017-03-11T07:58:36Z",
    "lastModifiedDateTime": "2017-03-12T09:01:02Z",
    "changeKey": "EQAAABYAAACd9nJ/tVysQos2hTfspaWRAAADhEnO",
    "categories": ["Friends, old", "VIP"],
    "parentFolderId": "AAMkAGI2AAEOAAA=",
    "birthday": "1974-07-22T00:00:00Z",
    "fileAs": "Bansky, Pavel",
    "displayName": "Pavel Bansky",
    "givenName": "Pavel",
    "initials": "P.B.",
    "middleName": "Jiří",
    "nickName": "Pav",
    "surname": "Bansky",
    "title": "Dr.",
    "yomiGivenName": None,
    "yomiSurname": None,
    "yomiCompanyName": None,
    "generation": "Jr.",
    "imAddresses": ["sip:pavelb@contoso.onmicrosoft.com"],
    "jobTitle": "Lead; engineer, tools",
    "companyName": "Contoso, Ltd.",
    "department": "R&D",
    "officeLocation": "18/2111",
    "profession": "Engineer",
    "businessHomePage": "https://contoso.example/pavel",
    "assistantName": "Ann",
    "manager": "Dana",
    "homePhones": ["+1 425 555 0100"],
    "mobilePhone": "+1 425 555 0101",
    "businessPhones": ["+1 732 555 0102", "+1 732 555 0103"],
    "spouseName": "Petra",
    "personalNotes": "Met at the conference.\r\nLikes: tea, chess; C:\\games\\" + " é" * 60,
    "children": ["Bo", "Lea"],
    "emailAddresses": [
        {"name": "Pavel Bansky", "address": "pavelb@contoso.onmicrosoft.com"},
        {"name": "Pavel (home)", "address": "pavel@home.example", "type": "personal"},
    ],
    "homeAddress": {
        "street": "1 Home Street\nApartment 2",
        "city": "Redmond",
        "state": "WA",
        "countryOrRegion": "USA",
        "postalCode": "98052",
    },
    "businessAddress": {
        "street": "123 Main; Building 4",
        "city": "Seattle",
        "state": "WA",
        "countryOrRegion": "USA",
        "postalCode": "98101",
    },
    "otherAddress": {"city": "Brno", "countryOrRegion": "Czechia"},
}


def parse(ics: bytes) -> Calendar:
    """`ics` read back by icalendar and by vobject (both must take it)."""
    assert b"\n" not in ics.replace(b"\r\n", b""), "a bare LF"
    vobject.readOne(ics.decode("utf-8"))
    return Calendar.from_ical(ics)


def events(calendar: Calendar) -> list:
    return calendar.walk("VEVENT")


def occurrences(ics: bytes, start: dt.datetime, end: dt.datetime) -> list:
    """The starts of the occurrences between `start` and `end`, as a reader expands them."""
    found = recurring_ical_events.of(Calendar.from_ical(ics)).between(start, end)
    return sorted((event.decoded("dtstart") for event in found), key=_instant)


def _instant(value):
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)


# single events --------------------------------------------------------------------------
def test_an_event_keeps_every_field():
    ics = event_to_ics(BRUNCH)
    calendar = parse(ics)
    assert str(calendar["prodid"]).startswith("-//mailsync//")
    assert str(calendar["version"]) == "2.0"
    (event,) = events(calendar)
    assert str(event["uid"]) == BRUNCH["iCalUId"]
    assert str(event["summary"]) == "Let's go brunch"
    # The HTML body as text: the style sheet and tags gone, paragraphs and breaks kept.
    assert str(event["description"]) == "Does late morning work for you?\n\nFish & chips\nor eggs"
    # Given in UTC, written in the organiser's zone (11:00 PDT is 18:00 UTC).
    start, end = event.decoded("dtstart"), event.decoded("dtend")
    assert start == dt.datetime(2017, 4, 15, 11, tzinfo=LA)
    assert (
        str(start.tzinfo) == "America/Los_Angeles"
        and event["dtstart"].params["TZID"] == "America/Los_Angeles"
    )
    assert end - start == dt.timedelta(hours=1)
    (zone,) = calendar.walk("VTIMEZONE")
    assert str(zone["tzid"]) == "America/Los_Angeles"
    assert str(event["location"]) == "Harry's Bar"
    organizer = event["organizer"]
    assert str(organizer) == "mailto:danas@contoso.onmicrosoft.com"
    assert organizer.params["CN"] == "Dana Swope"
    attendees = {str(a): a.params for a in event["attendee"]}
    assert list(attendees) == [
        "mailto:samanthab@contoso.onmicrosoft.com",
        "mailto:alexw@contoso.onmicrosoft.com",
        "mailto:meganb@contoso.onmicrosoft.com",
        "mailto:room1@contoso.onmicrosoft.com",
    ]
    samantha, alex, megan, room = attendees.values()
    assert (samantha["CN"], samantha["ROLE"], samantha["PARTSTAT"]) == (
        "Samantha Booth",
        "REQ-PARTICIPANT",
        "NEEDS-ACTION",
    )
    assert (alex["ROLE"], alex["PARTSTAT"]) == ("OPT-PARTICIPANT", "ACCEPTED")
    assert megan["CN"] == 'Megan "Bowen", Jr.' and megan["PARTSTAT"] == "TENTATIVE"
    assert (room["CUTYPE"], room["ROLE"], room["PARTSTAT"]) == (
        "RESOURCE",
        "NON-PARTICIPANT",
        "DECLINED",
    )
    (alarm,) = event.walk("VALARM")
    assert alarm.decoded("trigger") == dt.timedelta(minutes=-15)
    assert str(alarm["action"]) == "DISPLAY"
    assert event["categories"].cats == ["Red category", "Lunch, brunch; and more"]
    assert event.decoded("last-modified") == dt.datetime(2017, 4, 15, 3, 0, 51, tzinfo=dt.UTC)
    assert event.decoded("dtstamp") == event.decoded("last-modified")
    assert event.decoded("created") == dt.datetime(2017, 4, 15, 3, 0, 50, tzinfo=dt.UTC)
    assert (str(event["status"]), str(event["transp"])) == ("TENTATIVE", "OPAQUE")
    assert str(event["x-microsoft-cdo-busystatus"]) == "TENTATIVE"
    assert str(event["class"]) == "PRIVATE" and int(event["priority"]) == 1
    assert "RRULE" not in event and "SEQUENCE" not in event


def test_the_same_event_gives_the_same_bytes_and_is_left_as_it_was():
    series = copy.deepcopy(LUNCH_SERIES)
    series["start"] = {
        "dateTime": "2017-09-03T12:00:00.0000000",
        "timeZone": "Pacific Standard Time",
    }
    before = copy.deepcopy(series)
    exception = dict(
        copy.deepcopy(LUNCH_SERIES),
        type="exception",
        recurrence=None,
        originalStart="2017-09-11T19:00:00Z",
        start={"dateTime": "2017-09-11T13:00:00.0000000", "timeZone": "Pacific Standard Time"},
        end={"dateTime": "2017-09-11T15:00:00.0000000", "timeZone": "Pacific Standard Time"},
    )
    later = dict(exception, originalStart="2017-10-02T19:00:00Z")
    first = event_to_ics(series, [exception, later], ["OID.x.2017-09-25", dt.date(2017, 9, 18)])
    again = event_to_ics(series, [later, exception], [dt.date(2017, 9, 18), "OID.x.2017-09-25"])
    assert first == again
    assert series == before  # the master's start is moved (to a Monday) in a copy
    assert event_to_ics(BRUNCH) == event_to_ics(copy.deepcopy(BRUNCH))


def test_an_all_day_event_is_dates():
    holiday = dict(
        BRUNCH,
        isAllDay=True,
        isReminderOn=False,
        showAs="free",
        start={"dateTime": "2017-04-15T00:00:00.0000000", "timeZone": "UTC"},
        end={"dateTime": "2017-04-17T00:00:00.0000000", "timeZone": "UTC"},
    )
    ics = event_to_ics(holiday)
    (event,) = events(parse(ics))
    assert b"DTSTART;VALUE=DATE:20170415" in ics
    assert event.decoded("dtstart") == dt.date(2017, 4, 15)
    assert event.decoded("dtend") == dt.date(2017, 4, 17)
    assert not event.walk("VALARM")
    assert str(event["transp"]) == "TRANSPARENT"
    assert b"BEGIN:VTIMEZONE" not in ics  # dates need no zone


@pytest.mark.parametrize(
    "zone, expected",
    [
        ("W. Europe Standard Time", "Europe/Berlin"),  # Windows, east of UTC
        ("Tokyo Standard Time", "Asia/Tokyo"),
        ("Europe/Berlin", "Europe/Berlin"),  # IANA, as Graph gives with Prefer: outlook.timezone
        ("India Standard Time", "Asia/Calcutta"),  # CLDR's canonical name, an alias of Kolkata
    ],
)
def test_zones_windows_and_iana(zone, expected):
    event = dict(
        BRUNCH,
        originalStartTimeZone=zone,
        originalEndTimeZone=zone,
        start={"dateTime": "2017-04-15T10:00:00.0000000", "timeZone": zone},
        end={"dateTime": "2017-04-15T11:30:00.0000000", "timeZone": zone},
    )
    calendar = parse(event_to_ics(event))
    (vevent,) = events(calendar)
    start = vevent.decoded("dtstart")
    assert vevent["dtstart"].params["TZID"] == expected
    assert start.replace(tzinfo=None) == dt.datetime(2017, 4, 15, 10)
    assert start.utcoffset() == ZoneInfo(expected).utcoffset(dt.datetime(2017, 4, 15, 10))
    assert vevent.decoded("dtend") - start == dt.timedelta(minutes=90)
    assert [str(z["tzid"]) for z in calendar.walk("VTIMEZONE")] == [expected]


def test_a_flight_ends_in_another_zone():
    flight = dict(
        BRUNCH,
        originalEndTimeZone="Eastern Standard Time",
        end={"dateTime": "2017-04-16T00:30:00.0000000", "timeZone": "UTC"},
    )
    ics = event_to_ics(flight)
    calendar = parse(ics)
    (event,) = events(calendar)
    assert event["dtend"].params["TZID"] == "America/New_York"
    assert event.decoded("dtend") == dt.datetime(
        2017, 4, 15, 20, 30, tzinfo=ZoneInfo("America/New_York")
    )
    assert [str(z["tzid"]) for z in calendar.walk("VTIMEZONE")] == [
        "America/Los_Angeles",
        "America/New_York",
    ]
    # the zones come before the event, after the calendar's own properties
    assert ics.index(b"PRODID") < ics.index(b"BEGIN:VTIMEZONE") < ics.index(b"BEGIN:VEVENT")


def test_every_windows_zone_of_the_cldr_table_is_a_defined_zone():
    """A Windows name that no longer led to a tz database zone (a table or tzdata
    update) would turn that zone's events into floating time.  (icalendar writes a
    zone it knows to be UTC all year, as Atlantic/Reykjavik, as UTC: the same instants.)"""
    from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

    for windows, iana in WINDOWS_TO_OLSON.items():
        event = dict(BRUNCH, start={"dateTime": "2017-04-15T10:00:00", "timeZone": windows})
        event.update(end=None, originalStartTimeZone=windows)
        calendar = Calendar.from_ical(event_to_ics(event))
        (vevent,) = calendar.walk("VEVENT")
        start = vevent.decoded("dtstart")
        assert start.tzinfo is not None, windows
        assert start.utcoffset() == ZoneInfo(iana).utcoffset(dt.datetime(2017, 4, 15, 10)), windows
        if "TZID" in vevent["dtstart"].params:
            assert vevent["dtstart"].params["TZID"] == iana
            assert [str(z["tzid"]) for z in calendar.walk("VTIMEZONE")] == [iana]


def test_an_unknown_zone_is_floating_time_or_utc():
    custom = dict(
        BRUNCH,
        originalStartTimeZone="Customized Time Zone",
        originalEndTimeZone="Customized Time Zone",
        start={"dateTime": "2017-04-15T10:00:00.0000000", "timeZone": "Customized Time Zone"},
        end={"dateTime": "2017-04-15T11:00:00.0000000", "timeZone": "Customized Time Zone"},
    )
    (event,) = events(parse(event_to_ics(custom)))
    assert event.decoded("dtstart") == dt.datetime(2017, 4, 15, 10)  # naive: floating
    # Given in UTC with an unknown original zone: kept in UTC, the instant exact.
    in_utc = dict(
        BRUNCH, originalStartTimeZone="tzone://Microsoft/Custom", originalEndTimeZone=None
    )
    (event,) = events(parse(event_to_ics(in_utc)))
    assert event.decoded("dtstart") == dt.datetime(2017, 4, 15, 18, tzinfo=dt.UTC)
    assert event_to_ics(in_utc).count(b"BEGIN:VTIMEZONE") == 0


# recurrence -----------------------------------------------------------------------------
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
INDEX = {"first": 0, "second": 1, "third": 2, "fourth": 3, "last": -1}


def graph_occurrences(pattern: dict, bounds: dict, until: dt.date) -> list[dt.date]:
    """The dates of a series as Graph's documentation describes them (recurrencePattern,
    recurrenceRange), by plain date arithmetic up to `until`: from startDate, every
    interval-th day, week (counted in weeks starting on firstDayOfWeek), month or year;
    absolute monthly/yearly on dayOfMonth, on a month's last day when it is shorter;
    relative ones on the index-th of daysOfWeek in the month (or the last); the range
    ends at endDate (inclusive) or after numberOfOccurrences."""
    kind, interval = pattern["type"], pattern.get("interval", 1)
    begin = dt.date.fromisoformat(bounds["startDate"])
    days = {WEEKDAYS.index(d.lower()) for d in pattern.get("daysOfWeek", [])}
    candidates: list[dt.date] = []
    if kind == "daily":
        candidates = [
            begin + dt.timedelta(days=n) for n in range(0, (until - begin).days + 1, interval)
        ]
    elif kind == "weekly":
        first_day = WEEKDAYS.index(pattern.get("firstDayOfWeek", "sunday"))
        week = begin - dt.timedelta(days=(begin.weekday() - first_day) % 7)
        while week <= until:
            candidates += [
                week + dt.timedelta(days=n)
                for n in range(7)
                if (week + dt.timedelta(days=n)).weekday() in days
            ]
            week += dt.timedelta(weeks=interval)
    else:
        yearly = kind.endswith("Yearly")
        year, month = begin.year, (pattern["month"] if yearly else begin.month)
        while dt.date(year, month, 1) <= until:
            last = monthdays.monthrange(year, month)[1]
            if kind.startswith("absolute"):
                candidates.append(dt.date(year, month, min(pattern["dayOfMonth"], last)))
            else:
                fitting = [
                    dt.date(year, month, d)
                    for d in range(1, last + 1)
                    if dt.date(year, month, d).weekday() in days
                ]
                candidates.append(fitting[INDEX[pattern.get("index", "first")]])
            if yearly:
                year += interval
            else:
                month += interval
                year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    dates = [d for d in candidates if begin <= d <= until]
    if bounds["type"] == "endDate":
        dates = [d for d in dates if d <= dt.date.fromisoformat(bounds["endDate"])]
    elif bounds["type"] == "numbered":
        dates = dates[: bounds["numberOfOccurrences"]]
    return dates


PATTERNS = [
    # (pattern, range) as in "Schedule repeating appointments" and recurrencePattern's examples
    (
        {"type": "daily", "interval": 3},
        {"type": "numbered", "startDate": "2017-09-04", "numberOfOccurrences": 10},
    ),
    (
        {
            "type": "weekly",
            "interval": 2,
            "daysOfWeek": ["Monday", "Wednesday", "Friday"],
            "firstDayOfWeek": "monday",
        },
        {"type": "numbered", "startDate": "2017-09-06", "numberOfOccurrences": 12},
    ),
    (
        {
            "type": "weekly",
            "interval": 2,
            "daysOfWeek": ["sunday", "saturday"],
            "firstDayOfWeek": "sunday",
        },
        {"type": "endDate", "startDate": "2017-09-02", "endDate": "2017-12-31"},
    ),
    (
        {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 31},
        {"type": "endDate", "startDate": "2017-09-01", "endDate": "2018-06-30"},
    ),
    (
        {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 30},
        {"type": "numbered", "startDate": "2017-12-01", "numberOfOccurrences": 16},
    ),
    (
        {"type": "absoluteYearly", "interval": 2, "dayOfMonth": 31, "month": 12},
        {"type": "noEnd", "startDate": "2017-12-01"},
    ),
    (
        {"type": "absoluteMonthly", "interval": 3, "dayOfMonth": 15},
        {"type": "noEnd", "startDate": "2017-09-15", "endDate": "0001-01-01"},
    ),
    (
        {"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["friday"], "index": "last"},
        {"type": "numbered", "startDate": "2017-09-01", "numberOfOccurrences": 8},
    ),
    (
        {"type": "relativeMonthly", "interval": 2, "daysOfWeek": ["thursday"], "index": "second"},
        {"type": "endDate", "startDate": "2017-09-01", "endDate": "2018-09-01"},
    ),
    (  # the first weekday of each month
        {
            "type": "relativeMonthly",
            "interval": 1,
            "index": "first",
            "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
        },
        {"type": "numbered", "startDate": "2017-09-01", "numberOfOccurrences": 12},
    ),  # fmt: skip
    (
        {"type": "absoluteYearly", "interval": 1, "dayOfMonth": 29, "month": 2},
        {"type": "numbered", "startDate": "2016-01-01", "numberOfOccurrences": 6},
    ),
    (
        {
            "type": "relativeYearly",
            "interval": 1,
            "daysOfWeek": ["thursday"],
            "month": 11,
            "index": "fourth",
        },
        {"type": "endDate", "startDate": "2017-01-01", "endDate": "2025-12-31"},
    ),
]


@pytest.mark.parametrize("pattern, bounds", PATTERNS, ids=lambda p: p.get("type"))
def test_a_series_expands_to_the_occurrences_graph_lists(pattern, bounds):
    """Across daylight-saving changes too: each occurrence at 09:30 in Los Angeles.  The
    master's start is Graph's first occurrence; here it is given on range.startDate
    (not always a day of the pattern), which the conversion must move."""
    until = dt.date(2020, 12, 31)
    expected = graph_occurrences(pattern, bounds, until)
    assert expected, "the oracle lists something"
    master = copy.deepcopy(LUNCH_SERIES)
    master["recurrence"] = {
        "pattern": pattern,
        "range": dict(bounds, recurrenceTimeZone="Pacific Standard Time"),
    }
    master["start"] = {"dateTime": f"{bounds['startDate']}T16:30:00.0000000", "timeZone": "UTC"}
    master["end"] = {"dateTime": f"{bounds['startDate']}T17:00:00.0000000", "timeZone": "UTC"}
    first = dt.datetime.fromisoformat(bounds["startDate"]).replace(
        hour=16, minute=30, tzinfo=dt.UTC
    )
    local = first.astimezone(LA).time()
    ics = event_to_ics(master)
    parse(ics)
    found = occurrences(
        ics, dt.datetime(2015, 1, 1, tzinfo=dt.UTC), dt.datetime(2021, 1, 1, tzinfo=LA)
    )
    assert [start.date() for start in found] == expected
    assert {start.astimezone(LA).time() for start in found} == {local}


def test_a_series_with_exceptions_and_cancelled_occurrences():
    master = copy.deepcopy(LUNCH_SERIES)
    moved = dict(
        copy.deepcopy(LUNCH_SERIES),
        id="AAMkADQwMD-exception",
        iCalUId="a different one: Graph's iCalUId differs for each occurrence",
        type="exception",
        recurrence=None,
        seriesMasterId="AAMkADQwMD",
        subject="Lunch moved to Tuesday",
        originalStart="2017-11-06T20:00:00Z",  # Monday 12:00 PST (after the DST change)
        start={"dateTime": "2017-11-07T21:00:00.0000000", "timeZone": "UTC"},
        end={"dateTime": "2017-11-07T22:00:00.0000000", "timeZone": "UTC"},
    )
    cancelled = ["OID.AAMkADQwMD.2017-09-18", "OID.AAMkADQwMD.2017-10-30"]
    ics = event_to_ics(master, [moved], cancelled)
    calendar = parse(ics)
    main, exception = events(calendar)
    assert str(exception["uid"]) == str(main["uid"]) == LUNCH_SERIES["iCalUId"]
    assert exception.decoded("recurrence-id") == dt.datetime(2017, 11, 6, 12, tzinfo=LA)
    assert [d.dt for d in main["exdate"].dts] == [
        dt.datetime(2017, 9, 18, 12, tzinfo=LA),
        dt.datetime(2017, 10, 30, 12, tzinfo=LA),
    ]
    assert str(main["rrule"].to_ical(), "ascii").startswith("FREQ=WEEKLY;UNTIL=20180101T075959Z")
    found = recurring_ical_events.of(calendar).between(dt.date(2017, 9, 1), dt.date(2018, 1, 1))
    starts = sorted((e.decoded("dtstart"), str(e["summary"])) for e in found)
    mondays = graph_occurrences(
        LUNCH_SERIES["recurrence"]["pattern"],
        LUNCH_SERIES["recurrence"]["range"],
        dt.date(2018, 1, 1),
    )
    kept = [
        d
        for d in mondays
        if d not in (dt.date(2017, 9, 18), dt.date(2017, 10, 30), dt.date(2017, 11, 6))
    ]
    expected = [(dt.datetime.combine(d, dt.time(12), LA), "Let's go for lunch") for d in kept]
    expected.append((dt.datetime(2017, 11, 7, 13, tzinfo=LA), "Lunch moved to Tuesday"))
    assert starts == sorted(expected)
    # the master's own cancelledOccurrences count too
    master["cancelledOccurrences"] = ["OID.AAMkADQwMD.2017-12-25"]
    (main, _) = events(parse(event_to_ics(master, [moved], cancelled)))
    assert dt.datetime(2017, 12, 25, 12, tzinfo=LA) in [d.dt for d in main["exdate"].dts]


def _instance(master: dict, day: dt.date, zone: ZoneInfo, kind: str = "occurrence") -> dict:
    """The occurrence of `master` on `day` as ``instances`` lists it: in UTC, with
    originalStart."""
    start = dt.datetime.combine(day, dt.time(12), zone).astimezone(dt.UTC)
    return dict(
        copy.deepcopy(master),
        id=f"{master['id']}-{day}",
        type=kind,
        recurrence=None,
        seriesMasterId=master["id"],
        originalStart=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        start={"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"},
        end={"dateTime": (start + dt.timedelta(hours=2)).isoformat()[:19], "timeZone": "UTC"},
    )


def test_cancelled_occurrences_are_those_the_instances_leave_out():
    """Graph v1.0 has no list of cancelled occurrences: they are the pattern's occurrences
    missing from ``instances``, counted only a day inside the window (at its edges what
    Graph lists depends on zones and overlaps).  The lunch series crosses the end of
    daylight saving time (5 November 2017): days compare in the series' zone."""
    mondays = graph_occurrences(
        LUNCH_SERIES["recurrence"]["pattern"],
        LUNCH_SERIES["recurrence"]["range"],
        dt.date(2018, 1, 1),
    )
    gone = {dt.date(2017, 9, 18), dt.date(2017, 11, 6), dt.date(2017, 12, 25)}
    listed = [_instance(LUNCH_SERIES, day, LA) for day in mondays if day not in gone]
    listed[2] = dict(listed[2], type="exception", subject="moved", start=listed[3]["start"])
    window = (dt.datetime(2017, 9, 1, tzinfo=dt.UTC), dt.datetime(2018, 3, 1, tzinfo=dt.UTC))
    assert cancelled_occurrences(LUNCH_SERIES, listed, *window) == sorted(gone)
    # Occurrences at the window's edges (or outside it) are never called cancelled.
    narrow = (
        dt.datetime(2017, 9, 18, 12, tzinfo=LA),  # the first one it could hold: no day inside
        dt.datetime(2017, 12, 26, 12, tzinfo=LA),  # 25 December is not a day from the end
    )
    assert cancelled_occurrences(LUNCH_SERIES, listed, *narrow) == [dt.date(2017, 11, 6)]
    assert cancelled_occurrences(LUNCH_SERIES, [], *narrow)[0] == dt.date(2017, 9, 25)
    # A single event has none; the days become EXDATEs at the series' time in its zone.
    assert cancelled_occurrences(BRUNCH, [], *window) == []
    (main,) = events(parse(event_to_ics(LUNCH_SERIES, [], sorted(gone))))[:1]
    assert [d.dt for d in main["exdate"].dts] == [
        dt.datetime.combine(day, dt.time(12), LA) for day in sorted(gone)
    ]
    # All day: the instances' midnights, in the zone the event was made in or in UTC.
    all_day = dict(
        copy.deepcopy(LUNCH_SERIES),
        isAllDay=True,
        start={"dateTime": "2017-09-04T00:00:00.0000000", "timeZone": "Tokyo Standard Time"},
        end={"dateTime": "2017-09-05T00:00:00.0000000", "timeZone": "Tokyo Standard Time"},
    )
    all_day["recurrence"]["range"]["recurrenceTimeZone"] = "Tokyo Standard Time"
    tokyo = ZoneInfo("Asia/Tokyo")
    days = [
        dict(
            _instance(all_day, day, tokyo),
            originalStart=dt.datetime.combine(day, dt.time(), tokyo)
            .astimezone(dt.UTC)
            .strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        for day in mondays
        if day not in gone
    ]
    assert cancelled_occurrences(all_day, days, *window) == sorted(gone)
    ics = event_to_ics(all_day, [], cancelled_occurrences(all_day, days, *window))
    found = recurring_ical_events.of(parse(ics)).between(dt.date(2017, 9, 1), dt.date(2018, 1, 1))
    assert sorted(e.decoded("dtstart") for e in found) == [d for d in mondays if d not in gone]


def test_two_exceptions_to_one_occurrence_keep_the_later_modified():
    base = dict(
        copy.deepcopy(LUNCH_SERIES),
        type="exception",
        recurrence=None,
        originalStart="2017-09-11T19:00:00Z",
        start={"dateTime": "2017-09-11T13:00:00.0000000", "timeZone": "Pacific Standard Time"},
        end={"dateTime": "2017-09-11T14:00:00.0000000", "timeZone": "Pacific Standard Time"},
    )
    old = dict(base, subject="old", lastModifiedDateTime="2017-09-01T00:00:00Z")
    new = dict(base, subject="new", lastModifiedDateTime="2017-09-02T00:00:00Z")
    for in_order in ([old, new], [new, old]):
        (_, exception) = events(parse(event_to_ics(LUNCH_SERIES, in_order)))
        assert str(exception["summary"]) == "new"


def test_sequence_comes_from_the_extended_property_when_given():
    assert "SEQUENCE" not in events(parse(event_to_ics(BRUNCH)))[0]
    extended = {"id": "Integer {00062002-0000-0000-c000-000000000046} Id 0x8201", "value": "3"}
    other = {"id": "String {00020329-0000-0000-C000-000000000046} Name x", "value": "7"}
    event = dict(BRUNCH, singleValueExtendedProperties=[other, extended])
    assert events(parse(event_to_ics(event)))[0]["sequence"] == 3
    event = dict(BRUNCH, singleValueExtendedProperties=[dict(extended, value="-1")])
    assert "SEQUENCE" not in events(parse(event_to_ics(event)))[0]


def test_an_all_day_series_with_an_exception():
    birthday = dict(
        copy.deepcopy(LUNCH_SERIES),
        isAllDay=True,
        originalStartTimeZone="W. Europe Standard Time",
        start={"dateTime": "2017-07-22T00:00:00.0000000", "timeZone": "UTC"},
        end={"dateTime": "2017-07-23T00:00:00.0000000", "timeZone": "UTC"},
        recurrence={
            "pattern": {"type": "absoluteYearly", "interval": 1, "dayOfMonth": 22, "month": 7},
            "range": {
                "type": "noEnd",
                "startDate": "2017-07-22",
                "recurrenceTimeZone": "W. Europe Standard Time",
            },
        },
    )
    # originalStart is the instant the occurrence began: midnight in Berlin, 22:00 UTC
    # the day before
    party = dict(
        birthday,
        type="exception",
        recurrence=None,
        subject="Party",
        originalStart="2019-07-21T22:00:00Z",
        start={"dateTime": "2019-07-20T00:00:00.0000000", "timeZone": "UTC"},
        end={"dateTime": "2019-07-21T00:00:00.0000000", "timeZone": "UTC"},
    )
    ics = event_to_ics(birthday, [party], [dt.date(2018, 7, 22)])
    # the same occurrence named by its midnight in UTC: the same RECURRENCE-ID
    at_utc_midnight = dict(party, originalStart="2019-07-22T00:00:00Z")
    assert event_to_ics(birthday, [at_utc_midnight], [dt.date(2018, 7, 22)]) == ics
    # and west of UTC, where the zone's date of UTC midnight is the day before
    west = dict(birthday, originalStartTimeZone="Pacific Standard Time")
    west["recurrence"] = dict(
        birthday["recurrence"],
        range=dict(birthday["recurrence"]["range"], recurrenceTimeZone="Pacific Standard Time"),
    )
    for original in ("2019-07-22T00:00:00Z", "2019-07-22T07:00:00Z"):
        (_, exception) = events(parse(event_to_ics(west, [dict(party, originalStart=original)])))
        assert exception.decoded("recurrence-id") == dt.date(2019, 7, 22)
    (main, _) = events(parse(ics))
    assert dict(main["rrule"]) == {"FREQ": ["YEARLY"], "BYMONTH": [7], "BYMONTHDAY": [22]}
    assert b"EXDATE;VALUE=DATE:20180722" in ics and b"RECURRENCE-ID;VALUE=DATE:20190722" in ics
    found = sorted(
        e.decoded("dtstart")
        for e in recurring_ical_events.of(parse(ics)).between((2017, 1, 1), (2021, 1, 1))
    )
    assert found == [dt.date(2017, 7, 22), dt.date(2019, 7, 20), dt.date(2020, 7, 22)]


# hostile input --------------------------------------------------------------------------
def _series(**pattern_or_range):
    master = copy.deepcopy(LUNCH_SERIES)
    for key, value in pattern_or_range.items():
        where = (
            "range"
            if key in ("type_", "numberOfOccurrences", "endDate", "startDate")
            else "pattern"
        )
        master["recurrence"][where][key.rstrip("_")] = value
    return master


REFUSED = [  # (what, event, exceptions, cancelled): each a ValueError
    ("not an object", ["an", "event"], [], []),
    ("no start", {k: v for k, v in BRUNCH.items() if k != "start"}, [], []),
    ("no uid nor id", {k: v for k, v in BRUNCH.items() if k not in ("iCalUId", "id")}, [], []),
    (
        "a start that is no date",
        dict(BRUNCH, start={"dateTime": "yesterday", "timeZone": "UTC"}),
        [],
        [],
    ),
    (
        "February 30",
        dict(BRUNCH, start={"dateTime": "2017-02-30T10:00:00", "timeZone": "UTC"}),
        [],
        [],
    ),
    ("year 0", dict(BRUNCH, start={"dateTime": "0000-01-01T00:00:00", "timeZone": "UTC"}), [], []),
    (
        "past year 9999 in Tokyo",
        dict(
            BRUNCH,
            originalStartTimeZone="Tokyo Standard Time",
            start={"dateTime": "9999-12-31T23:00:00", "timeZone": "UTC"},
        ),
        [],
        [],
    ),
    ("interval 0", _series(interval=0), [], []),
    ("interval a billion", _series(interval=10**9), [], []),
    ("interval a string", _series(interval="1"), [], []),
    ("an hourly pattern", _series(type="hourly"), [], []),
    ("day of month 40", _series(type="absoluteMonthly", dayOfMonth=40), [], []),
    ("month 13", _series(type="absoluteYearly", dayOfMonth=1, month=13), [], []),
    ("a weekday named Funday", _series(daysOfWeek=["funday"]), [], []),
    ("a weekly pattern without days", _series(daysOfWeek=[]), [], []),
    ("index fifth", _series(type="relativeMonthly", index="fifth"), [], []),
    ("numbered 0 times", _series(type_="numbered", numberOfOccurrences=0), [], []),
    ("numbered -3 times", _series(type_="numbered", numberOfOccurrences=-3), [], []),
    ("a range type forever", _series(type_="forever"), [], []),
    ("an end date that is none", _series(endDate="soon"), [], []),
    ("recurrence not an object", dict(BRUNCH, recurrence="weekly"), [], []),
    (
        "year 1 in Tokyo, nothing else to stamp it with",
        {
            "id": "x",
            "start": {"dateTime": "0001-01-01T00:00:00", "timeZone": "Tokyo Standard Time"},
        },
        [],
        [],
    ),
    (
        "an exception at the end of time",
        dict(
            LUNCH_SERIES,
            originalStartTimeZone="Tokyo Standard Time",
            recurrence=dict(
                LUNCH_SERIES["recurrence"],
                range={
                    "type": "noEnd",
                    "startDate": "2017-09-04",
                    "recurrenceTimeZone": "Tokyo Standard Time",
                },
            ),
        ),
        [dict(BRUNCH, originalStart="9999-12-31T23:00:00Z")],
        [],
    ),  # fmt: skip
    ("an exception without originalStart", LUNCH_SERIES, [dict(BRUNCH, type="exception")], []),
    ("an exception that is a list", LUNCH_SERIES, [[1, 2]], []),
    (
        "exceptions without a series",
        BRUNCH,
        [dict(BRUNCH, originalStart="2017-04-15T18:00:00Z")],
        [],
    ),
    ("a cancelled occurrence with no date", LUNCH_SERIES, [], ["OID.AAMkADQwMD.yesterday"]),
    ("a cancelled occurrence on no real date", LUNCH_SERIES, [], ["OID.x.2017-13-45"]),
]


@pytest.mark.parametrize("what, event, exceptions, cancelled", REFUSED, ids=[r[0] for r in REFUSED])
def test_hostile_events_are_a_clear_value_error(what, event, exceptions, cancelled):
    with pytest.raises(ValueError) as error:
        event_to_ics(event, exceptions, cancelled)
    assert "\n" not in str(error.value) and len(str(error.value)) < 200


KEPT = [  # (what, event): each a valid file, with what is wrong left out
    (
        "nothing but a start and an id",
        {"id": "x", "start": {"dateTime": "2017-04-15T10:00:00", "timeZone": "UTC"}},
    ),
    (
        "fields of the wrong types",
        dict(
            BRUNCH,
            subject=42,
            body="text",
            location=["x"],
            attendees="all",
            organizer="me",
            categories="red",
            isReminderOn="yes",
            showAs=None,
            sensitivity=7,
            importance=[],
        ),
    ),  # fmt: skip
    ("a reminder 10**12 minutes before", dict(BRUNCH, reminderMinutesBeforeStart=10**12)),
    ("a reminder after the start", dict(BRUNCH, reminderMinutesBeforeStart=-5)),
    (
        "an end before the start",
        dict(BRUNCH, end={"dateTime": "2017-04-15T08:00:00", "timeZone": "UTC"}),
    ),
    (
        "attendees without addresses",
        dict(BRUNCH, attendees=[{"type": "required"}, 5, {"emailAddress": {"name": "x"}}]),
    ),
    (
        "controls and lone surrogates",
        dict(BRUNCH, subject="a\x00b\x1bc\ud800d\r\ne", location={"displayName": "\x7f"}),
    ),
    ("a zone path", dict(BRUNCH, originalStartTimeZone="../../../etc/passwd")),
    ("a series from year 1", _series(startDate="0001-01-01")),
    ("a series from year 9999", _series(startDate="9999-12-31")),
    ("a series ending before it starts", _series(endDate="1990-01-01")),
    (
        "an address with spaces and quotes",
        dict(BRUNCH, organizer={"emailAddress": {"name": 'x"y', "address": 'a b"c>@d'}}),
    ),  # fmt: skip
    (
        "a 500 kB subject and body",
        dict(
            BRUNCH,
            subject="s" * 500_000,
            body={"contentType": "html", "content": "<p>" * 100_000 + "x" * 100_000},
        ),
    ),
]


@pytest.mark.parametrize("what, event", KEPT, ids=[k[0] for k in KEPT])
def test_hostile_events_still_give_a_valid_file(what, event):
    ics = event_to_ics(event)
    (vevent,) = events(parse(ics))
    assert vevent.decoded("dtstart")
    assert all(len(line) <= 75 for line in ics.split(b"\r\n"))
    for property in ("summary", "location", "description"):
        if property in vevent:
            assert not any(ord(c) < 32 and c not in "\t\n" for c in str(vevent[property]))


def test_hostile_values_are_cleaned_as_said(monkeypatch):
    ics = event_to_ics(dict(KEPT)["controls and lone surrogates"])
    (vevent,) = events(parse(ics))
    assert str(vevent["summary"]) == "abcd\ne"
    assert str(vevent["location"]) == "Harry's Bar"  # from locations, the one left
    huge = dict(KEPT)["a 500 kB subject and body"]
    (vevent,) = events(parse(event_to_ics(huge)))
    assert str(vevent["summary"]) == huge["subject"]
    assert str(vevent["description"]) == "x" * 100_000
    assert str(vevent.walk("VALARM")[0]["description"]) == "s" * 200
    monkeypatch.setattr("mailsync.stores.graph_text.MAX_TEXT", 1000)
    (vevent,) = events(parse(event_to_ics(huge)))
    assert str(vevent["summary"]) == "s" * 1000  # cut at graph_text.MAX_TEXT
    (vevent,) = events(parse(event_to_ics(dict(KEPT)["an end before the start"])))
    assert "dtend" not in vevent
    (vevent,) = events(parse(event_to_ics(dict(KEPT)["a reminder 10**12 minutes before"])))
    assert not vevent.walk("VALARM")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = sorted(
    set(BRUNCH) | set(LUNCH_SERIES) | set(CONTACT) | {"dateTime", "timeZone", "pattern", "range"}
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([BRUNCH, LUNCH_SERIES]),
    changes=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5),
)
def test_any_json_gives_a_valid_calendar_or_a_value_error(base, changes):
    try:
        ics = event_to_ics(dict(base, **changes))
    except ValueError:
        return
    parse(ics)


ZONES = st.sampled_from(
    ["UTC", "Pacific Standard Time", "Tokyo Standard Time", "Europe/Berlin", "Nowhere", None, ""]
)
WHEN = st.builds(
    lambda when, zone: {"dateTime": when.isoformat(), "timeZone": zone},
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    ZONES,
)
# mostly plausible values, so that most examples get past the checks to the writing
NUMBER = (
    st.integers(min_value=1, max_value=40) | st.integers(min_value=1, max_value=31) | st.integers()
)
DAY = st.sampled_from(WEEKDAYS * 5 + ["Funday", 3])
PATTERN = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["daily", "weekly", "absoluteMonthly", "relativeMonthly",
                                 "absoluteYearly", "relativeYearly"] * 3 + ["hourly"]),
        "interval": NUMBER,
        "daysOfWeek": st.lists(DAY, min_size=1, max_size=8),
        "dayOfMonth": NUMBER,
        "month": NUMBER,
        "index": st.sampled_from(["first", "second", "third", "fourth", "last"] * 2 + ["fifth"]),
        "firstDayOfWeek": DAY,
    }
)  # fmt: skip
RANGE = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["endDate", "noEnd", "numbered"] * 3 + ["never"]),
        "startDate": st.dates().map(str),
        "endDate": st.dates().map(str),
        "numberOfOccurrences": NUMBER,
        "recurrenceTimeZone": ZONES,
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=WHEN,
    end=WHEN,
    all_day=st.booleans(),
    original_zone=ZONES,
    pattern=PATTERN,
    bounds=RANGE,
    original_start=st.datetimes(
        min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)
    ),
    cancelled=st.lists(st.dates(), max_size=3),
)
def test_any_series_gives_a_valid_calendar_or_a_value_error(
    start, end, all_day, original_zone, pattern, bounds, original_start, cancelled
):
    """Graph's shapes with any values in them: the dates, zones and numbers a hostile or
    broken server could send."""
    master = dict(
        LUNCH_SERIES,
        start=start,
        end=end,
        isAllDay=all_day,
        originalStartTimeZone=original_zone,
        recurrence={"pattern": pattern, "range": bounds},
    )
    exception = dict(BRUNCH, start=end, end=start, originalStart=original_start.isoformat() + "Z")
    window = (dt.datetime(2016, 1, 1, tzinfo=dt.UTC), dt.datetime(2018, 1, 1, tzinfo=dt.UTC))
    try:
        days = cancelled_occurrences(master, [exception], *window)
    except ValueError:
        pass
    else:
        assert all(type(day) is dt.date for day in days) and days == sorted(set(days))
    try:
        ics = event_to_ics(master, [exception], cancelled)
    except ValueError:
        return
    parse(ics)


@settings(max_examples=150, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6))
def test_any_json_gives_a_valid_vcard_or_a_value_error(changes):
    try:
        vcf = contact_to_vcf(dict(CONTACT, **changes))
    except ValueError:
        return
    parse_vcard(vcf)


# contacts -------------------------------------------------------------------------------
def parse_vcard(vcf: bytes):
    lines = vcf.split(b"\r\n")
    assert lines[-1] == b"" and b"\n" not in b"".join(lines), "CRLF line ends only"
    for line in lines:
        assert len(line) <= 75, line
        line.decode("utf-8")  # no UTF-8 sequence split by a fold
    return vobject.readOne(vcf.decode("utf-8"))


def test_a_contact_keeps_every_field():
    vcf = contact_to_vcf(CONTACT)
    card = parse_vcard(vcf)
    assert card.version.value == "4.0"
    assert card.uid.value.startswith("urn:uuid:")
    assert card.fn.value == "Pavel Bansky"
    name = card.n.value
    assert (name.family, name.given, name.additional, name.prefix, name.suffix) == (
        "Bansky",
        "Pavel",
        "Jiří",
        "Dr.",
        "Jr.",
    )
    assert card.nickname.value == "Pav"
    emails = [(e.value, e.params) for e in card.contents["email"]]
    assert emails == [
        ("pavelb@contoso.onmicrosoft.com", {"PREF": ["1"]}),
        ("pavel@home.example", {"TYPE": ["home"]}),
    ]
    phones = [(t.value, t.params["TYPE"]) for t in card.contents["tel"]]
    assert phones == [
        ("+1 732 555 0102", ["work", "voice"]),
        ("+1 732 555 0103", ["work", "voice"]),
        ("+1 425 555 0100", ["home", "voice"]),
        ("+1 425 555 0101", ["cell", "voice"]),
    ]
    work, home, other = card.contents["adr"]
    assert (
        work.params["TYPE"] == ["work"]
        and home.params["TYPE"] == ["home"]
        and "TYPE" not in other.params
    )
    assert (
        work.value.street,
        work.value.city,
        work.value.region,
        work.value.code,
        work.value.country,
    ) == (
        "123 Main; Building 4",
        "Seattle",
        "WA",
        "98101",
        "USA",
    )
    assert home.value.street == "1 Home Street\nApartment 2"
    assert (other.value.city, other.value.country) == ("Brno", "Czechia")
    assert card.org.value == ["Contoso, Ltd.", "R&D"]
    assert card.title.value == "Lead; engineer, tools"
    assert card.role.value == "Engineer"
    assert card.bday.value == "19740722"
    assert card.note.value == CONTACT["personalNotes"].replace("\r\n", "\n")
    assert card.categories.value == ["Friends, old", "VIP"]
    assert card.url.value == "https://contoso.example/pavel"
    related = [(r.value, r.params["TYPE"]) for r in card.contents["related"]]
    assert related == [("Petra", ["spouse"]), ("Bo", ["child"]), ("Lea", ["child"])]
    assert card.rev.value == "20170312T090102Z"


def test_contact_uids_are_stable_and_distinct():
    assert contact_to_vcf(CONTACT) == contact_to_vcf(copy.deepcopy(CONTACT))
    changed = dict(CONTACT, displayName="Pavel B.")
    uid = parse_vcard(contact_to_vcf(CONTACT)).uid.value
    assert parse_vcard(contact_to_vcf(changed)).uid.value == uid
    assert parse_vcard(contact_to_vcf(dict(CONTACT, id="AAMkAGI2THk1AAA="))).uid.value != uid


def test_a_contact_without_a_name_is_named_by_what_it_has():
    bare = {"id": "x", "emailAddresses": [{"address": "who@example.org"}]}
    assert parse_vcard(contact_to_vcf(bare)).fn.value == "who@example.org"
    assert (
        parse_vcard(contact_to_vcf({"id": "x", "givenName": "Ann", "surname": "Lee"})).fn.value
        == "Ann Lee"
    )
    assert parse_vcard(contact_to_vcf({"id": "x"})).fn.value == ""


@pytest.mark.parametrize(
    "contact", [None, [], "id", {"displayName": "no id"}, {"id": ""}, {"id": 5}]
)
def test_a_contact_that_is_none_is_a_value_error(contact):
    with pytest.raises(ValueError):
        contact_to_vcf(contact)


def test_hostile_contacts_give_valid_cards():
    hostile = dict(
        CONTACT,
        displayName="a\x00b\ud800c" + "ü" * 100_000,
        emailAddresses=[None, {"address": None}, "x", {"address": "ok@example.org"}],
        businessPhones="+1 555",
        homePhones=[None, 5, "  "],
        birthday="not a date",
        homeAddress="here",
        categories=[None, "a\\b", ",;"],
    )
    card = parse_vcard(contact_to_vcf(hostile))
    assert card.fn.value == ("abc" + "ü" * 100_000)[:100_000]  # a one-line value is cut there
    assert [e.value for e in card.contents["email"]] == ["ok@example.org"]
    assert [t.value for t in card.contents["tel"]] == ["+1 425 555 0101"]
    assert "bday" not in card.contents
    assert card.categories.value == ["a\\b", ",;"]


# the vdir -------------------------------------------------------------------------------
def test_files_written_through_a_vdir_are_read_back(tmp_path):
    """What the Graph store will do: append the converted bytes to a vdir folder, which
    writes LF on disk (the house rule); readers take the LF files."""
    from mailsync.stores.vdir import VdirFolder, make_vdir

    for kind, data in (
        ("calendar", event_to_ics(LUNCH_SERIES)),
        ("contacts", contact_to_vcf(CONTACT)),
    ):
        make_vdir(str(tmp_path / kind), kind)
        folder = VdirFolder(kind, str(tmp_path / kind), kind)
        key = folder.append(data, frozenset(), 0)
        folder.flush()
        on_disk = (tmp_path / kind / key).read_bytes()
        assert b"\r" not in on_disk and on_disk.replace(b"\n", b"\r\n") == data
        if kind == "calendar":
            assert (
                str(Calendar.from_ical(on_disk).walk("VEVENT")[0]["summary"])
                == "Let's go for lunch"
            )
        else:
            assert vobject.readOne(on_disk.decode()).fn.value == "Pavel Bansky"


def test_importing_the_converters_loads_no_calendar_library():
    code = (
        "import sys, mailsync.stores.graph_ical, mailsync.stores.graph_vcard; "
        "print(sorted(m for m in ('icalendar', 'dateutil', 'zoneinfo', 'vobject') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Microsoft Graph events as iCalendar (RFC 5545): what the Graph store writes into a
calendar vdir, one .ics per event or series.  Pure functions, no I/O; `icalendar` builds
and serialises the calendar (imported when called: mailsync's start-up does not pay).

What maps to what (Graph's event resource -> iCalendar):
  iCalUId -> UID (a derivation of id when missing); subject -> SUMMARY; body -> DESCRIPTION
  (an HTML body as plain text, graph_text.html_to_text says what is lost); start/end ->
  DTSTART/DTEND with TZID, or VALUE=DATE when isAllDay; location -> LOCATION; organizer,
  attendees -> ORGANIZER, ATTENDEE (CN, ROLE, PARTSTAT, CUTYPE); recurrence -> RRULE;
  the cancelled occurrences -> EXDATE; each exception (an occurrence changed on its own) ->
  a VEVENT with RECURRENCE-ID; isReminderOn/reminderMinutesBeforeStart -> VALARM;
  categories -> CATEGORIES; sensitivity -> CLASS; importance -> PRIORITY; showAs ->
  TRANSP, STATUS:TENTATIVE and X-MICROSOFT-CDO-BUSYSTATUS (the property Outlook writes);
  isCancelled -> STATUS:CANCELLED; createdDateTime, lastModifiedDateTime -> CREATED,
  LAST-MODIFIED and DTSTAMP; SEQUENCE from the extended property PidLidAppointmentSequence
  when the event carries it (graph_ical.SEQUENCE_PROPERTY: Graph has no field for it).
  Not kept: attachments, online-meeting data, webLink, extensions, response times.

Time zones.  Graph names zones the Windows way ("Pacific Standard Time") or by IANA name,
and by default gives start/end in UTC with the zone the organiser chose in
originalStartTimeZone.  A date-time is written in the series' own zone (the range's
recurrenceTimeZone, else originalStartTimeZone, else the zone it came in), so that a
series repeats at the same wall-clock time across daylight-saving changes as Outlook's
does.  Windows names become IANA names by the CLDR windowsZones table that `icalendar`
ships (generated from CLDR, kept current with each release; writing our own copy would be
one more table to maintain).  Each zone used gets a VTIMEZONE from the tz database
(tzdata).  A zone neither table knows, when the time came in it, is written as floating
local time (no TZID): RFC 5545 has no way to name a zone it cannot define.

Output is deterministic: the same input gives the same bytes (DTSTAMP is the event's
lastModifiedDateTime, never the time of the run; lists keep Graph's order, the
exceptions and EXDATEs are sorted), so a rerun that finds the event unchanged does not
rewrite its file.  The format's line endings (CRLF) are kept; vdir.py writes LF on disk.

Bad input (not a dict, unparseable dates, absurd recurrence numbers) is a ValueError that
says which field; missing optional fields are left out; text is cleaned of what iCalendar
cannot hold (graph_text.plain).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

from mailsync.stores.graph_rrule import pattern_rule
from mailsync.stores.graph_text import html_to_text, parse_timestamp, plain, utc_timestamp

PRODID = "-//mailsync//Microsoft Graph to iCalendar//EN"
UTC = dt.UTC
_UTC_NAMES = {
    "utc",
    "etc/utc",
    "gmt",
    "etc/gmt",
    "z",
    "tzone://microsoft/utc",
    "coordinated universal time",
}
# A zone name is looked up in the tz database only when it looks like one (no "..", no
# leading "/": ZoneInfo reads files by that name).
_IANA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")
PARTSTAT = {
    "accepted": "ACCEPTED", "declined": "DECLINED", "tentativelyaccepted": "TENTATIVE",
    "organizer": "ACCEPTED", "none": "NEEDS-ACTION", "notresponded": "NEEDS-ACTION",
}  # fmt: skip
BUSYSTATUS = {
    "free": "FREE", "tentative": "TENTATIVE", "busy": "BUSY", "oof": "OOF",
    "workingelsewhere": "WORKINGELSEWHERE",
}  # fmt: skip
CLASS = {
    "normal": "PUBLIC",
    "personal": "PRIVATE",
    "private": "PRIVATE",
    "confidential": "CONFIDENTIAL",
}
PRIORITY = {"high": 1, "normal": 5, "low": 9}
# MS-OXPROPS PidLidAppointmentSequence (PSETID_Appointment, 0x8201) as Graph names it.
SEQUENCE_PROPERTY = "Integer {00062002-0000-0000-C000-000000000046} Id 0x8201"
MAX_COUNT = 100_000
MAX_REMINDER_MINUTES = 10 * 366 * 24 * 60
MAX_ATTENDEES = 10_000
MAX_EXCEPTIONS = 10_000


def event_to_ics(
    master: dict,
    exceptions: Iterable[dict] = (),
    cancelled: Iterable[str | dt.date] = (),
) -> bytes:
    """One VCALENDAR (CRLF line ends) holding `master`, a Graph event: a single event or
    the master of a series; for a series, `exceptions` are its changed occurrences
    (Graph events of type "exception", with originalStart) and `cancelled` its deleted
    occurrences, as dates or as Graph's cancelledOccurrences strings
    ("OID.<master id>.2026-12-09"; the master's own cancelledOccurrences count too).
    A ValueError names the field that cannot be converted."""
    try:
        return _event_to_ics(master, list(exceptions), list(cancelled))
    except OverflowError:  # a date at the ends of datetime's range, moved to another zone
        raise ValueError("a date of the event is out of range (before year 2 or after 9998)")


def cancelled_occurrences(
    master: dict, instances: Iterable[dict], start: dt.datetime, end: dt.datetime
) -> list[dt.date]:
    """The days of the occurrences of series `master` that the user deleted or cancelled,
    for event_to_ics's `cancelled`: Graph v1.0 has no list of them (the event's
    cancelledOccurrences is beta only), but ``events/{id}/instances`` leaves them out.
    `instances` are what it listed (occurrences and exceptions, each with originalStart)
    over a span wider than [`start`, `end`) (aware datetimes: the calendar window) by more
    than a day; an occurrence the pattern puts wholly inside the window, a day from its
    ends (an all-day one is midnight to midnight in a zone the window does not know), whose
    day no instance names is a cancelled one.  A single event has none.  A ValueError names
    the field that cannot be read."""
    recurrence = master.get("recurrence") if isinstance(master, dict) else None
    if not recurrence:
        return []
    try:
        series = _Series.of(master, recurrence)
        listed = set()
        for instance in instances:
            if not isinstance(instance, dict):
                raise ValueError("an instance of the series is not a JSON object")
            if instance.get("originalStart") is None and instance.get("type") == "occurrence":
                # (documented on every instance; an occurrence starts where it always did)
                original = _times(instance, series.zone_hint, set())[0]
            else:
                original = series.recurrence_id(instance)
            listed.add(_naive(original).date())
        return [day for day in series.days_within(start, end) if day not in listed]
    except OverflowError:
        raise ValueError("a date of the event is out of range (before year 2 or after 9998)")


def _event_to_ics(master: dict, exceptions: list[dict], cancelled: list[str | dt.date]) -> bytes:
    from icalendar import Calendar

    if not isinstance(master, dict):
        raise ValueError(f"an event is a JSON object, not {type(master).__name__}")
    if len(exceptions) > MAX_EXCEPTIONS:
        raise ValueError(f"{len(exceptions)} exceptions to one series are more than a real one has")
    uid = _uid(master)
    recurrence = master.get("recurrence")
    series = _Series.of(master, recurrence) if recurrence else None
    if series is None and exceptions:
        raise ValueError("exceptions given for an event that has no recurrence")

    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    zones: set[str] = set()
    main = _vevent(
        series.master if series else master, uid, series.zone_hint if series else None, zones
    )
    if series:
        main.add("rrule", series.rrule)
        exdates = series.exdates([*cancelled, *_list(master.get("cancelledOccurrences"))])
        if exdates:
            main.add("exdate", exdates)
    else:
        if cancelled:
            raise ValueError("cancelled occurrences given for an event that has no recurrence")
    calendar.add_component(main)
    # One VEVENT per changed occurrence (RFC 5545 3.8.4.4): of two exceptions to one
    # occurrence, the later modified is kept (the same one whatever their order).
    changed: dict[tuple[str, str], tuple[tuple[bytes, bytes], Any]] = {}
    for exception in exceptions:
        if not isinstance(exception, dict) or series is None:
            raise ValueError("an exception is a JSON object")
        event = _vevent(exception, uid, series.zone_hint, zones)
        event.add("recurrence-id", series.recurrence_id(exception))
        occurrence = _sort_key(event.decoded("recurrence-id"))
        modified = event["last-modified"].to_ical() if "last-modified" in event else b""
        rank = (modified, event.to_ical())
        if occurrence not in changed or rank > changed[occurrence][0]:
            changed[occurrence] = (rank, event)
    for occurrence in sorted(changed):
        calendar.add_component(changed[occurrence][1])
    return _with_timezones(calendar.to_ical(), zones, main)


# zones ---------------------------------------------------------------------------------
def _zone_key(name: object) -> str | None:
    """The IANA key of a Graph zone name (Windows or IANA), "UTC" for UTC, or None if
    neither table knows it."""
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    if name.lower() in _UTC_NAMES:
        return "UTC"
    from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

    key = WINDOWS_TO_OLSON.get(name, name)
    if key in ("Etc/UTC", "Etc/GMT", "UTC"):
        return "UTC"
    return key if _tzinfo(key) is not None else None


@functools.lru_cache(maxsize=256)
def _tzinfo(key: str) -> dt.tzinfo | None:
    if key == "UTC":
        return UTC
    if len(key) > 64 or not _IANA_NAME.fullmatch(key):
        return None
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


@functools.lru_cache(maxsize=64)
def _vtimezone(key: str, first_year: int) -> bytes:
    """The VTIMEZONE of `key` from the tz database, serialised."""
    from icalendar import Timezone

    zone = _tzinfo(key)
    assert zone is not None, "only known zones are recorded as used"
    return Timezone.from_tzinfo(zone, key, first_date=dt.date(first_year, 1, 1)).to_ical()


def _with_timezones(ics: bytes, zones: set[str], main) -> bytes:
    """`ics` with a VTIMEZONE for each zone used, before the events (RFC 5545 3.6.5),
    covering the tz database from the series' start (or 1970) to 2038; later dates are
    read by the TZID's IANA name, as every reader of this file does.  Spliced in as
    bytes serialised once per zone: parsing and writing them again for every event was
    two thirds of the conversion's time.  The split is safe: the calendar's own
    properties come first, and no value holds a bare line break to fake the BEGIN."""
    start = main.decoded("dtstart")
    first_year = min(1970, max(1900, start.year))
    timezones = b"".join(_vtimezone(key, first_year) for key in sorted(zones - {"UTC"}))
    head, begin, events = ics.partition(b"BEGIN:VEVENT\r\n")
    return head + timezones + begin + events


# times ---------------------------------------------------------------------------------
def _local(value: object, what: str, zone_names: list[object], zones: set[str]) -> dt.datetime:
    """A Graph dateTimeTimeZone as a datetime in the first zone of `zone_names` that is
    known (recorded in `zones`); in UTC if that is the only one known; naive (floating
    time) when the zone it came in is unknown."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} is missing")
    naive, aware = parse_timestamp(value.get("dateTime"), f"{what}.dateTime")
    came_in = _zone_key(value.get("timeZone")) if not aware else "UTC"
    if came_in is None:
        return naive.replace(tzinfo=None)
    instant = naive if aware else naive.replace(tzinfo=_tzinfo(came_in))
    for name in [*zone_names, came_in]:
        key = _zone_key(name)
        if key is not None:
            try:
                local = instant.astimezone(_tzinfo(key))
            except (OverflowError, ValueError):
                raise ValueError(f"{what} is out of range: {value.get('dateTime')!r}") from None
            zones.add(key)
            return local
    raise AssertionError("came_in is known")  # pragma: no cover


def _times(event: dict, zone_hint: object, zones: set[str]) -> tuple[Any, Any]:
    """(DTSTART, DTEND or None) of a Graph event: dates when isAllDay (the dates Graph
    gives, whatever the zone: an all-day event is the same days everywhere), else
    date-times in the event's zone."""
    if event.get("isAllDay") is True:
        start = _date_of(event.get("start"), "start")
        end = _date_of(event.get("end"), "end") if event.get("end") is not None else None
        if end is None or end <= start:
            end = start + dt.timedelta(days=1)
        return start, end
    start = _local(
        event.get("start"), "start", [zone_hint, event.get("originalStartTimeZone")], zones
    )
    if event.get("end") is None:
        return start, None
    end_zones = [zone_hint, event.get("originalEndTimeZone")] if start.tzinfo else []
    end = _local(event.get("end"), "end", end_zones, zones)
    if (end.tzinfo is None) != (start.tzinfo is None):
        end = end.replace(tzinfo=start.tzinfo) if start.tzinfo else end.replace(tzinfo=None)
    # An end at or before the start is no end (RFC 5545: DTEND is later than DTSTART).
    return start, (end if end > start else None)


def _date_of(value: object, what: str) -> dt.date:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is missing")
    return parse_timestamp(value.get("dateTime"), f"{what}.dateTime")[0].date()


def _sort_key(value: dt.date) -> tuple[str, str]:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return "t", value.astimezone(UTC).isoformat()
    return "f", value.isoformat()


# events --------------------------------------------------------------------------------
def _uid(event: dict) -> str:
    uid = plain(event.get("iCalUId"), 1000).strip()
    if uid:
        return uid
    ident = plain(event.get("id"), 10_000)
    if not ident:
        raise ValueError("the event has neither iCalUId nor id")
    return "graph-" + hashlib.sha256(ident.encode()).hexdigest()[:40]


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _text(value: object) -> str:
    return plain(value).strip()


def _cal_address(person: object):
    """A Graph recipient or attendee ({"emailAddress": {"name", "address"}}) as a
    vCalAddress with CN, or None when it has no address (iCalendar names people by
    URI)."""
    from icalendar import vCalAddress

    email = person.get("emailAddress") if isinstance(person, dict) else None
    if not isinstance(email, dict):
        return None
    address = plain(email.get("address"), 2000).strip()
    if not address:
        return None
    uri = vCalAddress("mailto:" + urllib.parse.quote(address, safe="@.+-_~!$&'*=?/%"))
    name = " ".join(plain(email.get("name"), 2000).split())
    if name:
        uri.params["CN"] = name
    return uri


def _vevent(event: dict, uid: str, zone_hint: object, zones: set[str]):
    from icalendar import Alarm, Event

    vevent = Event()
    vevent.add("uid", uid)
    start, end = _times(event, zone_hint, zones)
    vevent.add("dtstart", start)
    if end is not None:
        vevent.add("dtend", end)
    # iCalendar counts whole seconds; Graph gives seven digits of fraction
    modified = _seconds(utc_timestamp(event.get("lastModifiedDateTime"), "lastModifiedDateTime"))
    created = _seconds(utc_timestamp(event.get("createdDateTime"), "createdDateTime"))
    # DTSTAMP is required; for a stored copy it is when the event last changed.
    stamp = modified or created or _as_utc(start)
    vevent.add("dtstamp", stamp)
    if created:
        vevent.add("created", created)
    if modified:
        vevent.add("last-modified", modified)
    if summary := _text(event.get("subject")):
        vevent.add("summary", summary)
    if description := _body_text(event.get("body")):
        vevent.add("description", description)
    if location := _location(event):
        vevent.add("location", location)
    organizer = _cal_address(event.get("organizer"))
    if organizer is not None:
        vevent.add("organizer", organizer)
    for attendee in _list(event.get("attendees"))[:MAX_ATTENDEES]:
        address = _cal_address(attendee)
        if address is None:
            continue
        kind = str(attendee.get("type") or "").lower()
        address.params["ROLE"] = {"optional": "OPT-PARTICIPANT", "resource": "NON-PARTICIPANT"}.get(
            kind, "REQ-PARTICIPANT"
        )
        if kind == "resource":
            address.params["CUTYPE"] = "RESOURCE"
        status = attendee.get("status")
        response = str(status.get("response") or "") if isinstance(status, dict) else ""
        address.params["PARTSTAT"] = PARTSTAT.get(response.lower(), "NEEDS-ACTION")
        vevent.add("attendee", address)
    categories = [c for c in (_text(c) for c in _list(event.get("categories"))) if c]
    if categories:
        vevent.add("categories", categories)
    show_as = str(event.get("showAs") or "").lower()
    if event.get("isCancelled") is True:
        vevent.add("status", "CANCELLED")
    elif show_as == "tentative":
        vevent.add("status", "TENTATIVE")
    else:
        vevent.add("status", "CONFIRMED")
    vevent.add("transp", "TRANSPARENT" if show_as == "free" else "OPAQUE")
    if show_as in BUSYSTATUS:
        vevent.add("x-microsoft-cdo-busystatus", BUSYSTATUS[show_as])
    if (level := CLASS.get(str(event.get("sensitivity") or "").lower())) is not None:
        vevent.add("class", level)
    if (priority := PRIORITY.get(str(event.get("importance") or "").lower())) is not None:
        vevent.add("priority", priority)
    if (sequence := _sequence(event)) is not None:
        vevent.add("sequence", sequence)
    minutes = event.get("reminderMinutesBeforeStart")
    if (
        event.get("isReminderOn") is True
        and isinstance(minutes, int)
        and not isinstance(minutes, bool)
        and 0 <= minutes <= MAX_REMINDER_MINUTES
    ):
        alarm = Alarm()
        alarm.add("action", "DISPLAY")
        # what a reminder pops up: the start of the summary is enough
        alarm.add("description", summary[:200] or "Reminder")
        alarm.add("trigger", dt.timedelta(minutes=-minutes))
        vevent.add_component(alarm)
    return vevent


def _sequence(event: dict) -> int | None:
    """The event's PidLidAppointmentSequence, when the store asked Graph for it
    ($expand=singleValueExtendedProperties($filter=id eq 'SEQUENCE_PROPERTY')): Graph has
    no property of its own for the revision an organiser's update bumps."""
    for extended in _list(event.get("singleValueExtendedProperties")):
        if (
            isinstance(extended, dict)
            and str(extended.get("id", "")).lower() == SEQUENCE_PROPERTY.lower()
        ):
            value = str(extended.get("value", ""))
            if value.isdigit() and len(value) < 10:
                return int(value)
    return None


def _seconds(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(microsecond=0) if value is not None else None


def _as_utc(value: dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=UTC)


def _body_text(body: object) -> str:
    if not isinstance(body, dict):
        return ""
    content = plain(body.get("content"))
    if str(body.get("contentType") or "").lower() == "html":
        content = plain(html_to_text(content))
    return content.strip()


def _location(event: dict) -> str:
    location = event.get("location")
    name = _text(location.get("displayName")) if isinstance(location, dict) else ""
    if name:
        return name
    names = [
        _text(place.get("displayName"))
        for place in _list(event.get("locations"))
        if isinstance(place, dict)
    ]
    return "; ".join(n for n in names if n)


# recurrence ----------------------------------------------------------------------------
class _Series:
    """A Graph patternedRecurrence as an RRULE, and the occurrence starts (EXDATE,
    RECURRENCE-ID) of a series in its zone."""

    def __init__(self, master: dict, rrule: dict, zone_hint: object, all_day: bool):
        self.master = master
        self.rrule = rrule
        self.zone_hint = zone_hint
        self.all_day = all_day

    @classmethod
    def of(cls, master: dict, recurrence: object) -> _Series:
        if not isinstance(recurrence, dict):
            raise ValueError("recurrence is not a JSON object")
        pattern = recurrence.get("pattern")
        bounds = recurrence.get("range")
        if not isinstance(pattern, dict) or not isinstance(bounds, dict):
            raise ValueError("recurrence has no pattern or no range")
        all_day = master.get("isAllDay") is True
        zone_hint = bounds.get("recurrenceTimeZone") or master.get("originalStartTimeZone")
        rule = pattern_rule(pattern)
        kind = str(bounds.get("type") or "").lower()
        if kind == "numbered":
            count = bounds.get("numberOfOccurrences")
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
                raise ValueError(f"recurrence range numberOfOccurrences is {count!r}")
            rule["COUNT"] = count
        elif kind == "enddate":
            end = parse_timestamp(bounds.get("endDate"), "recurrence range endDate")[0].date()
            rule["UNTIL"] = end if all_day else None  # set by _series_start, which knows the zone
            rule["_end_date"] = end
        elif kind != "noend":
            raise ValueError(
                f"recurrence range type {bounds.get('type')!r} is none of endDate, numbered, noEnd"
            )
        series = cls(master, rule, zone_hint, all_day)
        series._fix_start(bounds)
        return series

    def _fix_start(self, bounds: dict) -> None:
        """UNTIL in the form the start needs (a date for all-day, else the end of the
        range's last day in the series' zone, in UTC), and the master's start moved to
        the series' first occurrence when it is not one: Graph's series begins at the
        first date from the range's startDate that fits the pattern, while iCalendar
        counts DTSTART itself as an occurrence."""
        zones: set[str] = set()
        start, end = _times(self.master, self.zone_hint, zones)
        end_date = self.rrule.pop("_end_date", None)
        if end_date is not None and not self.all_day:
            last = dt.datetime.combine(end_date, dt.time(23, 59, 59))
            if start.tzinfo is not None:
                last = last.replace(tzinfo=start.tzinfo).astimezone(UTC)
            self.rrule["UNTIL"] = last
        self.rrule = {key: value for key, value in self.rrule.items() if value is not None}
        self.start = start
        first = self.first_occurrence(bounds)
        if first is None or first == _naive(start):
            return
        # the master is the caller's: a copy is changed, never it
        if self.all_day:
            shift = first.date() - _naive(start).date()
            moved = {"start": start + shift, "end": end + shift}
            self.master = {
                **self.master,
                **{
                    field: {"dateTime": day.isoformat(), "timeZone": "UTC"}
                    for field, day in moved.items()
                },
            }
        else:
            zone = _key_of(start.tzinfo) if start.tzinfo else self.master["start"].get("timeZone")
            new_start = first.replace(tzinfo=start.tzinfo) if start.tzinfo else first
            self.master = {
                **self.master,
                "start": {"dateTime": first.isoformat(), "timeZone": zone},
            }
            if end is not None:
                new_end = new_start + (end - start)
                if new_end.tzinfo is not None:  # the same length in absolute time
                    new_end = new_end.astimezone(UTC).astimezone(start.tzinfo)
                self.master["end"] = {
                    "dateTime": new_end.replace(tzinfo=None).isoformat(),
                    "timeZone": zone,
                }
        self.start, _ = _times(self.master, self.zone_hint, zones)

    def first_occurrence(self, bounds: dict) -> dt.datetime | None:
        from dateutil.rrule import rrulestr
        from icalendar import vRecur

        naive_start = _naive(self.start)
        range_start = bounds.get("startDate")
        if range_start:
            begin = parse_timestamp(range_start, "recurrence range startDate")[0].date()
            naive_start = dt.datetime.combine(begin, naive_start.time())
        rule = {k: v for k, v in self.rrule.items() if k not in ("UNTIL", "COUNT")}
        text = vRecur(rule).to_ical().decode()
        try:
            return rrulestr(text, dtstart=naive_start).after(naive_start, inc=True)
        except (ValueError, OverflowError):
            return None

    def falls_on(self, day: dt.date) -> bool:
        """Whether an (all-day) occurrence of the series is on `day`."""
        from dateutil.rrule import rrulestr
        from icalendar import vRecur

        start = _naive(self.start)
        midnight = dt.datetime.combine(day, dt.time())
        try:
            rule = rrulestr(vRecur(self.rrule).to_ical().decode(), dtstart=start)
            return day == start.date() or rule.after(midnight, inc=True) == midnight
        except (ValueError, OverflowError):
            return False

    def days_within(self, start: dt.datetime, end: dt.datetime) -> list[dt.date]:
        """The days of the occurrences that begin a day or more after `start` and end a
        day or more before `end` (aware datetimes), at most MAX_COUNT of them."""
        from dateutil.rrule import rrulestr
        from icalendar import vRecur

        margin = dt.timedelta(days=1)
        _first, first_end = _times(self.master, self.zone_hint, set())
        length = _naive(first_end) - _naive(self.start) if first_end is not None else dt.timedelta()
        if self.all_day or self.start.tzinfo is None:  # floating: the window read as UTC
            dtstart, low, high = _naive(self.start), _naive(start + margin), _naive(end - margin)
        else:
            dtstart, low, high = self.start, start + margin, end - margin
        rule = rrulestr(vRecur(self.rrule).to_ical().decode(), dtstart=dtstart)
        days = []
        for occurrence in rule.xafter(low, count=MAX_COUNT, inc=True):
            if occurrence + length > high:
                break
            days.append(occurrence.date())
        return days

    def occurrence_start(self, day: dt.date) -> dt.date:
        """The start of the occurrence on `day` in the series' zone."""
        if self.all_day:
            return day
        start = self.start
        local = dt.datetime.combine(day, _naive(start).time())
        return local.replace(tzinfo=start.tzinfo) if start.tzinfo else local

    def exdates(self, cancelled: list) -> list:
        days = sorted({_cancelled_day(item) for item in cancelled})
        return [self.occurrence_start(day) for day in days]

    def recurrence_id(self, exception: dict) -> dt.date:
        original = utc_timestamp(exception.get("originalStart"), "exception originalStart")
        if original is None:
            raise ValueError("an exception has no originalStart")
        start = self.start
        if self.all_day:
            # The day an all-day occurrence was on: originalStart is its midnight, in
            # the series' zone or in UTC (the documentation does not say); of the two
            # dates, the one that is an occurrence of the series.
            zone = _tzinfo(_zone_key(self.zone_hint) or "UTC")
            in_zone, in_utc = original.astimezone(zone).date(), original.date()
            if in_zone != in_utc and not self.falls_on(in_zone) and self.falls_on(in_utc):
                return in_utc
            return in_zone
        if start.tzinfo is None:
            return original.replace(tzinfo=None)
        return original.astimezone(start.tzinfo)


def _key_of(zone: dt.tzinfo) -> str:
    return "UTC" if zone is UTC else str(getattr(zone, "key", "UTC"))


def _naive(value: dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    return dt.datetime.combine(value, dt.time())


def _cancelled_day(item: object) -> dt.date:
    """The date of a cancelled occurrence: a date, or Graph's "OID.<id>.YYYY-MM-DD"."""
    if isinstance(item, dt.datetime):
        return item.date()
    if isinstance(item, dt.date):
        return item
    if isinstance(item, str):
        match = re.search(r"(\d{4}-\d{2}-\d{2})$", item.strip())
        if match:
            return parse_timestamp(match.group(1), "cancelled occurrence")[0].date()
    raise ValueError(f"cancelled occurrence {str(item)[:80]!r} names no date")

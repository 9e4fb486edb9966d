"""Text from Microsoft Graph JSON made safe for iCalendar and vCard, for graph_ical.py and
graph_vcard.py: strings cleaned of what no line-based format can hold, HTML bodies made
plain text, Graph's timestamps parsed.  Pure functions, standard library only.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from html.parser import HTMLParser

# What RFC 5545 (3.3.11) and RFC 6350 (3.3) let no text value hold: the controls other
# than TAB and the line break (which the formats escape as \n).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Longest text kept in one value.  A 1 MB event body is plausible (pasted mail threads);
# beyond this a field is a hostile server's, and is cut rather than written.  (icalendar
# folds about a megabyte a second: a value this long costs seconds, not minutes.)
MAX_TEXT = 4 * 1024 * 1024


def plain(value: object, limit: int | None = None) -> str:
    """`value` as a string fit for a text value: None and non-strings become "" (what a
    missing or mistyped field means), CRLF and CR become LF, controls and lone
    surrogates (which cannot be UTF-8) are dropped, and it is cut to `limit` (or
    MAX_TEXT) characters."""
    if not isinstance(value, str):
        return ""
    text = value[: 2 * (limit or MAX_TEXT)]  # what is cleaned is bounded too
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("", text)
    text = text.encode("utf-8", "ignore").decode("utf-8")  # lone surrogates
    return text[: limit or MAX_TEXT]


# Elements whose text is not content, and those that end a line or a paragraph.
_SKIPPED = {"head", "script", "style", "title", "template"}
_BREAKS = {"br", "tr", "li", "dt", "dd"}
_BLOCKS = {"p", "div", "table", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "h5", "h6",
           "blockquote", "pre", "hr"}  # fmt: skip


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIPPED:
            self.skipping += 1
        elif tag in _BREAKS:
            self.parts.append("\n")
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BREAKS:
            self.parts.append("\n")
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            # In HTML a run of white space, line breaks included, is one space.
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """The text a reader sees in `markup`, as plain text: tags dropped, entities decoded,
    white space collapsed as a browser does, line breaks where <br>, list items and
    table rows are, a blank line between paragraphs and other blocks.  Lost: all
    formatting (bold, fonts, colours), link targets (a link keeps its text), images,
    and the layout of tables (a row becomes a line of its cells' text)."""
    parser = _TextOfHtml()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):  # html.parser's own on markup it cannot take
        return html.unescape(re.sub(r"<[^>]*>", " ", markup))
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# Graph's Edm.DateTimeOffset ("2017-04-15T12:00:00Z", "...T12:00:00.1234567+02:00") and
# dateTimeTimeZone.dateTime ("2017-04-15T12:00:00.0000000", local, no offset): seven
# fractional digits, more than datetime.fromisoformat takes before Python 3.11.
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?",
    re.ASCII,
)


def parse_timestamp(value: object, what: str) -> tuple[dt.datetime, bool]:
    """(the datetime `value` names, whether it had a zone) for a Graph date or date-time
    string; a datetime with an offset or Z is aware (UTC offset), else naive.  A value
    that is no such string, or no real date, is a ValueError naming `what`."""
    match = _TIMESTAMP.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{what} is not a date and time: {str(value)[:60]!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        when = dt.datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0),
            int(second or 0), int((fraction or "0")[:6].ljust(6, "0")),
        )  # fmt: skip
    except ValueError:
        raise ValueError(f"{what} is not a real date and time: {str(value)[:60]!r}") from None
    if zone is None:
        return when, False
    if zone == "Z":
        return when.replace(tzinfo=dt.UTC), True
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    if offset >= dt.timedelta(hours=24):
        raise ValueError(f"{what} has no real UTC offset: {str(value)[:60]!r}")
    return when.replace(tzinfo=dt.timezone(sign * offset)), True


def utc_timestamp(value: object, what: str) -> dt.datetime | None:
    """An Edm.DateTimeOffset as an aware UTC datetime; None for a missing (None) value;
    a naive one is taken as UTC, as Graph writes all of them."""
    if value is None:
        return None
    when, _ = parse_timestamp(value, what)
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:  # year 1 at +01:00, year 9999 at -01:00
        raise ValueError(f"{what} is out of range: {str(value)[:60]!r}") from None

"""The mboxrd format, and which files in a tree are mbox files.

Format (mboxrd, reversible): a message is written as ``From SENDER ASCTIME\\n``, the
body with every line matching ``^>*From `` given one more ``>``, then one ``\\n``.  The
one change to a body: a message that does not end in a newline gets one (stored_form),
so a blank line always comes before the next From_ line, as mboxrd readers (GNU
mailutils) need; every other byte reads back as it was given.  Reading splits at lines
starting with ``From ``, strips that one ``\\n`` from each chunk and takes one ``>`` off
every ``^>+From `` line.  Files whose lines end in CRLF are read as LF.  The one message
LF framing cannot carry, one whose every line ends in CR CR LF (so still in CR after
CRLF -> LF), is written framed in CRLF instead.

Pure functions on bytes (and classify(), which reads a file's first 64 KiB): the folder
that indexes, appends and rewrites a file is mbox_folder.py's.
"""

from __future__ import annotations

import calendar
import math
import re
import time

from mailsync.message import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, header_value, to_lf

_MAX_TIME = 253402300799  # 9999-12-31 23:59:59 UTC: asctime keeps a four-digit year

# "\n" first rather than "^" with re.M: the regex engine then skips ahead to each newline.
_QUOTE = re.compile(rb"\n(?=>*From )")
_UNQUOTE = re.compile(rb"\n>(?=>*From )")
_QUOTED_START = re.compile(rb">*From ")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_STATUS = re.compile(rb"^(x-)?status:[ \t]*([^\r\n]*)", re.I | re.M)
_MONTHS = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}
_FROM_DATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s+(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb"\s+(\d{1,2})\s+(\d{1,2}):(\d\d)(?::(\d\d))?\s+"
    rb"(?:([+-]\d{4})\s+|[A-Za-z]{1,5}\s+)?(\d{4})(?:\s+([+-]\d{4}))?"
)
_STATUS_FLAGS = {"R": SEEN}
_X_STATUS_FLAGS = {"A": ANSWERED, "F": FLAGGED, "T": DRAFT, "D": DELETED}


def quote(body: bytes) -> bytes:
    """mboxrd quoting: every line matching ``^>*From `` gets one more ``>``."""
    if b"From " not in body:
        return body
    out = _QUOTE.sub(b"\n>", body)
    return b">" + out if _QUOTED_START.match(out) else out


def unquote(body: bytes) -> bytes:
    """Undo `quote`: every line matching ``^>+From `` loses one ``>``."""
    if b">From " not in body:
        return body
    out = _UNQUOTE.sub(b"\n", body)
    return out[1:] if out[:1] == b">" and _QUOTED_START.match(out, 1) else out


def decode_chunk(raw: bytes, crlf_from: bool) -> bytes:
    """The message body from the bytes between its From_ line and the next one.

    One trailing line end is the separator and goes; the rest is unquoted.  The message
    is read as CRLF (and turned into LF) when its From_ line ends in CRLF, or when its
    first line does and no line ends in a bare LF (Python's mailbox module writes CRLF
    messages under LF From_ lines).
    """
    inner = raw[:-1] if raw.endswith(b"\n") else raw
    crlf = crlf_from
    if not crlf:
        nl = inner.find(b"\n")
        crlf = nl > 0 and inner[nl - 1] == 13 and _BARE_LF.search(inner) is None
    if crlf:
        if raw.endswith(b"\r\n"):
            inner = raw[:-2]
        inner = to_lf(inner)
    return unquote(inner)


def from_line(body: bytes, arrival: float) -> tuple[bytes, int]:
    """``From SENDER ASCTIME\\n`` and the whole-second arrival it records."""
    seconds = _clamp_time(arrival)
    stamp = time.asctime(time.gmtime(seconds)).encode("ascii")
    return b"From " + _sender(body) + b" " + stamp + b"\n", seconds


def stored_form(body: bytes) -> bytes:
    """The body as an mbox keeps it: a message that does not end in a newline gets one,
    so that a blank line always comes before the next From_ line (mboxrd readers such as
    GNU mailutils do not see a From_ line that follows text directly).  The engine knows
    a copy changed this way again by message.tolerant_fingerprint()."""
    return body + b"\n" if body and not body.endswith(b"\n") else body


def format_message(body: bytes, arrival: float) -> tuple[bytes, int, bool]:
    """One message as it goes into the file (From_ line, quoted body, separator), the
    whole seconds its From_ line records, and whether it is framed in CRLF.

    A body whose every line still ends in CR (the message had CR CR LF line ends) would
    read back as a foreign CRLF message and lose those CRs, so it is written in CRLF
    throughout, From_ line included: every LF becomes CRLF, which reading undoes exactly.
    """
    line, seconds = from_line(body, arrival)
    quoted = quote(body)
    if b"\r\n" in body and decode_chunk(quoted + b"\n", False) != body:
        crlf = (line + quoted + b"\n").replace(b"\n", b"\r\n")
        return crlf, seconds, True
    return line + quoted + b"\n", seconds, False


def _clamp_time(arrival: float) -> int:
    try:
        if not math.isfinite(arrival):
            return int(time.time())
        return min(max(int(arrival), 0), _MAX_TIME)
    except (TypeError, ValueError, OverflowError):
        return int(time.time())


def _sender(body: bytes) -> bytes:
    value = header_value(body, "Return-Path")
    if value:
        value = value.strip()
        if value.startswith("<"):
            end = value.find(">")
            value = value[1:end] if end > 0 else ""
        if value and value.isascii() and value.isprintable() and " " not in value:
            return value.encode("ascii")
    return b"MAILER-DAEMON"


def parse_from_date(line: bytes) -> float | None:
    """The date of a From_ line (asctime, UTC unless it names an offset), or None."""
    match = _FROM_DATE.search(line)
    if not match:
        return None
    mon, day, hour, minute, sec, zone1, year, zone2 = match.groups()
    try:
        seconds = calendar.timegm(
            (int(year), _MONTHS[mon], int(day), int(hour), int(minute), int(sec or 0), 0, 0, 0)
        )
    except (ValueError, OverflowError):
        return None
    zone = zone1 or zone2
    if zone:
        sign = -1 if zone[:1] == b"-" else 1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)
    return float(seconds)


def header_flags(body: bytes) -> frozenset[str]:
    """Flags from mutt/mailbox-style ``Status:`` (R) and ``X-Status:`` (A F T D) headers."""
    if body[:1] == b"\n":
        return frozenset()
    end = body.find(b"\n\n")
    head = body if end < 0 else body[:end]
    if b"tatus:" not in head and b"TATUS:" not in head:
        return frozenset()
    flags = set()
    for match in _STATUS.finditer(head):
        table = _X_STATUS_FLAGS if match.group(1) else _STATUS_FLAGS
        for letter in match.group(2).decode("latin-1"):
            if letter in table:
                flags.add(table[letter])
    return frozenset(flags)


# What tells a file that holds mail from any other file in an mbox tree (a Thunderbird
# .msf index, a filter list, notes): a From_ line with a date, or a message header.
_SNIFF_BYTES = 64 * 1024
_ANY_FROM_LINE = re.compile(rb"(?:^|\n)(From [^\n]*)")
_HEADER_FIELD = re.compile(rb"[!-9;-~]+:")
_MAIL_FIELD = re.compile(
    rb"^(?:from|date|received|return-path|message-id|delivered-to|subject|to)[ \t]*:",
    re.I | re.M,
)

MBOX, DAMAGED, UNREADABLE = "mbox", "damaged", "unreadable"


def classify(path: str) -> str | None:
    """What the file at `path` is to an mbox tree, from its first 64 KiB:

    * MBOX: empty, or starts with a ``From `` line;
    * DAMAGED: holds mail but does not start with a From_ line (a From_ line with a date
      further down, or message headers first): a folder whose listing reports the bytes
      before its first From_ line as a problem, so they are never dropped silently;
    * UNREADABLE: cannot be read (it may hold mail: a problem of the tree);
    * None: anything else (not mail), left alone.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return UNREADABLE
    if not head or head[:5] == b"From ":
        return MBOX
    for match in _ANY_FROM_LINE.finditer(head):
        if parse_from_date(match.group(1)) is not None:
            return DAMAGED
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")  # a byte-order mark, blank lines
    if text[:5] == b"From ":
        return DAMAGED
    if _HEADER_FIELD.match(text):
        end = text.find(b"\n\n")
        if _MAIL_FIELD.search(text if end < 0 else text[:end]):
            return DAMAGED
    return None

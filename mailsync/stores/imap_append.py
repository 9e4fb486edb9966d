"""What an IMAP APPEND is sent with and what the server's answer to it means: a message
refused for good (RefusedError), or to be tried again; and the outcomes of APPENDs sent
pipelined (imap_wire._GuardedIMAP4.append_pipelined, IMAPConnection's append_pipelined
operation), one per message.  The connection (imap_connection.py) sends them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mailsync.errors import ConnectError, RefusedError
from mailsync.message import to_crlf
from mailsync.stores.imap_patience import NotConnected, Throttled, check_answer, size_refusal

if TYPE_CHECKING:
    import datetime as dt

    from mailsync.message import Body

# Response codes of a tagged NO to APPEND that say "not now" or "not here" rather than
# "never this message" (RFC 3501 TRYCREATE, RFC 5530, RFC 9051): the message is tried again
# on the next run.  Any other NO (none, TOOBIG, LIMIT, PARSE, CANNOT, ...) refuses it for
# good: RefusedError.
APPEND_TRY_LATER = frozenset(
    {
        "TRYCREATE",
        "UNAVAILABLE",
        "SERVERBUG",
        "OVERQUOTA",
        "INUSE",
        "CONTACTADMIN",
        "NOPERM",
        "AUTHORIZATIONFAILED",
        "EXPIRED",
        "PRIVACYREQUIRED",
        "CORRUPTION",
        "EXPUNGEISSUED",
        "NONEXISTENT",
        "ALREADYEXISTS",
        "READ-ONLY",
        "ALERT",
    }
)
_TIMING = re.compile(r"\s*\([0-9.]+( \+ [0-9.]+)* secs\)\.?$")


def append_arguments(flags: list[str], when: dt.datetime | None) -> tuple[str, str | None]:
    """The flag list and the date (INTERNALDATE, quoted; None: the server's clock) of an
    APPEND, as they go on the wire."""
    from imapclient.datetime_util import datetime_to_INTERNALDATE

    date = f'"{datetime_to_INTERNALDATE(when)}"' if when is not None else None
    return "(" + " ".join(flags) + ")", date


def wire_of(data: Body) -> Body:
    """message.to_crlf(data), the bytes an APPEND sends; a bytearray without a CR (a body
    read off the wire, LF) by its own replace, one copy as to_crlf's, 7x faster than
    its regular expression (an eighth of a migration's CPU went there)."""
    if isinstance(data, bytearray) and b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return to_crlf(data)


def wire_size(data: Body) -> int:
    """len(message.to_crlf(data)), without making that copy: every LF not after a CR
    becomes CRLF."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def append_refusal(typ: str, text: str, size: int) -> RefusedError | None:
    """The RefusedError for an APPEND of `size` bytes the server answered `typ` (NO or
    BAD) `text`, when that refuses the message for good: a NO without a "try later"
    code, a BAD about its size (Exchange); None for any other answer."""
    if typ == "BAD":
        reason = size_refusal("BAD", text, size)
        return None if reason is None else RefusedError(f"APPEND refused: {reason}", reason)
    code = re.match(r"\[([A-Za-z0-9.-]+)", text)
    if typ == "NO" and (code is None or code.group(1).upper() not in APPEND_TRY_LATER):
        reason = _TIMING.sub("", text)  # Dovecot's "(0.001 + 0.000 secs)."
        reason = size_refusal("NO", reason, size) or reason
        return RefusedError(f"APPEND refused: {reason}", reason)
    return None


def outcomes(
    answers: list[tuple[str, str]], sizes: list[int], lost: ConnectError | None
) -> list[str | RefusedError | ConnectError | None]:
    """What each of a pipelined batch of APPENDs (of messages of `sizes` bytes) came to,
    from the (typ, text) answers read before the connection was lost (`lost`) or all of
    them: the OK's text (APPENDUID), the RefusedError of a message refused for good,
    `lost` for one whose answer never came (it may have arrived: the next run finds
    it), None for one to send again alone (throttled, "try later", any other answer:
    the one-message APPEND then does with that answer what it does)."""
    out: list[str | RefusedError | ConnectError | None] = []
    for (typ, text), size in zip(answers, sizes, strict=False):
        if typ == "OK":
            out.append(text)
            continue
        try:
            check_answer(text)
        except (Throttled, NotConnected):  # (the one-message APPEND waits, or logs in)
            out.append(None)
            continue
        out.append(append_refusal(typ, text, size))
    return out + [lost] * (len(sizes) - len(out))

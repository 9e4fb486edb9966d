"""What an IMAP server means when it says "not now" or "not this": Microsoft 365's
(Exchange Online's) throttling, its sessions that are logged in but "not connected" or
ended when the access token expired, and the size limits of APPEND (RFC 7889
APPENDLIMIT, Exchange's own answers).  imap_connection.call() acts on these: it is the
one retry path; this module only reads answers and keeps the time waited.

Sources: imapsync's FAQ.d/FAQ.Office365.txt and imapsync#198 (throttled APPENDs,
"Command Argument Error. 11"), email-oauth2-proxy#74 and #191, node-imap#523,
aioimaplib#83; tests/imap/fakem365.py cites them where it plays them back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailsync.errors import ConfigError, ConnectError, FolderError, RefusedError, StoreError

log = logging.getLogger("mailsync")

# "NO (or BAD) Request is throttled. Suggested Backoff Time: 299609 milliseconds", maybe
# followed by "* BYE Connection closed. 14": the command was not carried out, and is
# sent again once the time has passed.
_THROTTLED = re.compile(r"Request is throttled\.?\s*Suggested Backoff Time:\s*(\d+)\s*milli", re.I)
THROTTLE_WAIT = 600.0  # default throttle_wait: seconds one connection waits out in a run
THROTTLE_FLOOR = 1.0  # a wait is at least this long (a suggested 0 ms is no invitation)
THROTTLE_CAP = 300.0  # and at most this; then the server is asked again (it says what is left)
# "BAD User is authenticated but not connected." after a successful login: the session is
# of no use (too many sessions of the mailbox, a mailbox being moved, IMAP disabled for
# it); a fresh login usually works.  The command was not carried out.
_NOT_CONNECTED = re.compile(r"User is authenticated but not connected", re.I)
RECONNECT_ATTEMPTS = 3  # fresh logins for such a session before giving up (ConnectError)
RECONNECT_BACKOFF = 2.0  # seconds before the first of them, doubled for each next one
# "* BYE Session invalidated - AccessTokenExpired": the token the session logged in with
# expired; a login with a fresh token works.
SESSION_INVALIDATED = re.compile(r"Session invalidated|AccessTokenExpired", re.I)
# Exchange's BAD to an APPEND of a message over its size limit.
_EXCHANGE_TOO_BIG = re.compile(r"Command Argument Error\. 11\b")
# A refusal that is about the message's size ([TOOBIG] of RFC 5530; Exchange's "Maximum
# size of appendable message has been exceeded.").
_ABOUT_SIZE = re.compile(r"\[TOOBIG\]|\bsize\b|too (big|large)", re.I)


class ThrottledFolder(FolderError):
    """The server kept throttling an operation in a folder beyond throttle_wait: the
    folder fails (not just one message), the state is consistent, a rerun goes on."""


class Throttled(Exception):
    """The server asked to wait `seconds` before the command is sent again."""

    def __init__(self, seconds: float, text: str):
        super().__init__(text)
        self.seconds = seconds


class NotConnected(Exception):
    """The session is logged in but of no use ("authenticated but not connected")."""


def throttled_in(text: str) -> Throttled | None:
    """Throttled (to raise) if a server's refusal (`text`) says to come back later."""
    throttled = _THROTTLED.search(text)
    return Throttled(int(throttled.group(1)) / 1000, text) if throttled else None


def check_answer(text: str) -> None:
    """Throttled or NotConnected if a server's refusal (`text`) says to wait or to log in
    again rather than that the command failed."""
    throttled = throttled_in(text)
    if throttled is not None:
        raise throttled
    if _NOT_CONNECTED.search(text):
        raise NotConnected(text)


@dataclass
class Patience:
    """How long a connection waits when the server asks it to (throttling): each wait
    is what the server suggests, at least `floor` and at most `cap` seconds, and all
    waits of the connection in one run together at most `budget` seconds.  `sleep` is
    injectable (tests).  `waits` and `waited` count what was waited (reports)."""

    budget: float = THROTTLE_WAIT
    floor: float = THROTTLE_FLOOR
    cap: float = THROTTLE_CAP
    sleep: Callable[[float], None] = time.sleep
    waits: int = 0
    waited: float = 0.0

    @classmethod
    def from_option(cls, value: object) -> Patience:
        """For the throttle_wait option (None: the default), with the module's constants
        as they are now (tests shorten them); ConfigError if it is no number of seconds."""
        try:
            budget = THROTTLE_WAIT if value is None else float(str(value))
        except ValueError:
            budget = -1.0
        if not budget >= 0:  # (NaN too)
            raise ConfigError(
                f"throttle_wait must be a number of seconds (0 or more), not {value!r}"
            )
        return cls(budget, THROTTLE_FLOOR, THROTTLE_CAP)

    def before_login(self, where: str, operation: str, logins: int) -> None:
        """Before fresh login number `logins` (1, 2, ...) for a session "not connected":
        a warning and RECONNECT_BACKOFF doubled for each; ConnectError saying what to
        check beyond RECONNECT_ATTEMPTS."""
        if logins > RECONNECT_ATTEMPTS:
            raise ConnectError(
                f'{where}: the server said "{_NOT_CONNECTED.pattern}." after each of '
                f"{logins} logins; Microsoft 365 says so when IMAP is disabled for the "
                "mailbox, the mailbox is being moved, or too many sessions are open: check "
                "that IMAP is enabled for it, close other mail clients, and rerun later"
            )
        delay = RECONNECT_BACKOFF * 2 ** (logins - 1)
        log.warning(
            "%s: the server says the session is not connected (during %s); logging in "
            "again in %g s",
            where,
            operation,
            delay,
        )
        self.sleep(delay)

    def wait_out(self, throttled: Throttled, where: str, operation: str, in_folder: bool) -> None:
        """Wait as the server asked (logged, seen with -v), or give up at once when that
        would go beyond the budget: ThrottledFolder (`in_folder`) or StoreError."""
        delay = min(max(throttled.seconds, self.floor), self.cap)
        if self.waited + delay > self.budget:
            text = (
                f"{where}: the server kept throttling {operation} (it asks for "
                f"{throttled.seconds:g} s more; {self.waited:g} s waited this run, "
                f"throttle_wait is {self.budget:g} s); gave up. The state is consistent: "
                "rerun later, or raise throttle_wait"
            )
            raise (ThrottledFolder if in_folder else StoreError)(text)
        log.info(
            "%s: the server is throttling %s (it asks for %g s); waiting %g s",
            where,
            operation,
            throttled.seconds,
            delay,
        )
        self.sleep(delay)
        self.waits += 1
        self.waited += delay


def append_limit(capabilities: set[str]) -> int | bool | None:
    """The largest message the server takes (``APPENDLIMIT=N``, RFC 7889), True when its
    folders have limits of their own (a bare ``APPENDLIMIT``: STATUS tells), None when it
    announces none."""
    for capability in capabilities:
        name, _, value = capability.partition("=")
        if name == "APPENDLIMIT":
            return int(value) if value.isdigit() else True
    return None


def too_big(size: int, limit: int | None) -> None:
    """RefusedError, before it is sent, for a message of `size` bytes over `limit`."""
    if limit is not None and size > limit:
        reason = (
            f"the message is {size} bytes, over the server's limit of {limit} bytes "
            "(APPENDLIMIT); not sent"
        )
        raise RefusedError(f"APPEND refused: {reason}", reason)


def size_refusal(status: str, text: str, size: int) -> str | None:
    """The reason to refuse a message of `size` bytes for good, when the server's answer
    to its APPEND (`status` NO or BAD, `text`) is about its size; None otherwise."""
    if status == "BAD" and _EXCHANGE_TOO_BIG.search(text):
        return f"{text} (Exchange's answer to a message over its size limit: it is {size} bytes)"
    if status == "NO" and _ABOUT_SIZE.search(text):
        return f"{text} (the message is {size} bytes)"
    return None

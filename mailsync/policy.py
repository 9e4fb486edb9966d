"""What a run may do, in words every layer shares: the sides, the policy, the retention rule.

Sides are "a" (the channel's remote side, or SOURCE of an ad-hoc pull) and "b" (the local
side).  A Policy says which sides a run writes to and whether deletions propagate; a
Retention says when a source that keeps mail only until it is fetched (POP3) lets go of it.

This module imports nothing of mailsync, so that anything may import it: the config
checks its words, a store declares its retention rule (stores/pop3.py) and the planner
reads the policy, without one importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass

DIRECTIONS = ("pull", "push", "both")
DELETE_POLICIES = ("keep", "propagate")

SIDE_NAMES = {"a": "remote", "b": "local"}


def other(side: str) -> str:
    return "b" if side == "a" else "a"


@dataclass(frozen=True)
class Policy:
    direction: str = "both"  # pull: a -> b, push: b -> a, both
    delete: str = "keep"  # keep | propagate
    force_delete: bool = False
    # One-way runs that must leave the written side holding every message of the other
    # (migrate): a message gone from the written side since it was copied is copied again,
    # where otherwise the pair's tombstone would keep it away.
    refill: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.delete not in DELETE_POLICIES:
            raise ValueError(f"delete must be one of {', '.join(DELETE_POLICIES)}")

    def writes(self, side: str) -> bool:
        """Whether this run may change `side`."""
        return self.direction == "both" or self.direction == ("pull" if side == "b" else "push")

    def propagates_to(self, side: str) -> bool:
        return self.delete == "propagate" and self.writes(side)


@dataclass(frozen=True)
class Retention:
    """When a source that keeps mail only until it is fetched (a POP3 server) lets go of
    messages: right after they are safely copied, and/or `after_days` after that."""

    after_download: bool = False
    after_days: float | None = None

    def describe(self) -> str:
        if self.after_download:
            return "after download"
        return f"{self.after_days:g} days after download"


@dataclass(frozen=True)
class Selection:
    """Which messages a run copies that were never copied (--since, --before, --max-size):
    arrival dates in seconds since the epoch (IMAP INTERNALDATE, a Maildir file's mtime,
    Exchange's DateTimeReceived), sizes in bytes as the source lists them.  A message it
    leaves out is neither copied nor deleted anywhere; one already copied stays synced.
    A store that does not know when a message arrived (POP3: arrival 0) is not filtered
    by date."""

    since: float | None = None  # arrived at or after
    before: float | None = None  # arrived before
    max_size: int | None = None

    def __bool__(self) -> bool:
        return self.since is not None or self.before is not None or self.max_size is not None

    def reason(self, size: int, arrival: float) -> str | None:
        """Why a message of this size and arrival date is left out; None: it is not."""
        if self.max_size is not None and size > self.max_size:
            return "over --max-size"
        if arrival > 0:
            if self.since is not None and arrival < self.since:
                return "older than --since"
            if self.before is not None and arrival >= self.before:
                return "not older than --before"
        return None


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """``--max-size`` values: bytes, or with K, M, G (powers of 1024; a trailing B or
    iB is allowed: 10M, 10MB, 10MiB).  ValueError with the reason if it is none."""
    import re

    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ValueError(f"{text!r} is not a size (bytes, or e.g. 500K, 25M, 1G)")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def parse_date(text: str) -> float:
    """``--since`` / ``--before`` values: an ISO 8601 date (YYYY-MM-DD: midnight UTC) or
    date and time (with a UTC offset, else UTC) -> seconds since the epoch.  ValueError
    with the reason if it is none."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD, or YYYY-MM-DDTHH:MM[+HH:MM])")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()

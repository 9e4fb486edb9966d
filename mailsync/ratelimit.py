"""Pacing the copies of one account: --max-rate BYTES/s and --max-messages-per-second.

A RateLimit is called by the engine once for every message it appends to the
destination (copies.Copier, through SyncOptions.pace), with the message's size, and
sleeps as long as the account is ahead of its rates.  Each rate is a token bucket that
holds at most one second's worth (a burst of one second, then the rate); a message
larger than the bucket is let through on credit, and the next ones wait until the
credit is paid back, so the average holds for any message size.  One RateLimit is
shared by the folders synced at once (--jobs): the rates are the account's.  The clock
and the sleep are injectable, so tests count the seconds waited without waiting.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailsync.errors import ConfigError


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    tokens: float  # now available (negative: on credit)
    last: float  # the clock when tokens was last brought up to date

    def take(self, amount: float, now: float) -> float:
        """Take `amount` tokens at `now`; -> the seconds to wait before going on."""
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= amount
        return max(0.0, -self.tokens / self.rate)


class RateLimit:
    """At most `bytes_per_second` bytes and `messages_per_second` messages a second (None:
    no limit on that).  Thread-safe; the waits happen outside the lock."""

    def __init__(
        self,
        bytes_per_second: float | None = None,
        messages_per_second: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        now = clock()
        self.buckets: list[tuple[TokenBucket, bool]] = []  # (bucket, counts bytes)
        for rate, counts_bytes in ((bytes_per_second, True), (messages_per_second, False)):
            if rate is not None:
                if rate <= 0:
                    raise ConfigError("a rate limit must be greater than 0")
                self.buckets.append((TokenBucket(rate, rate, now), counts_bytes))
        self.clock, self.sleep = clock, sleep
        self.lock = threading.Lock()
        self.waited = 0.0  # seconds slept in all, for the report

    def __call__(self, size: int) -> None:
        """One message of `size` bytes is about to be copied: wait until the rates allow."""
        with self.lock:
            now = self.clock()
            wait = max(
                (
                    bucket.take(size if counts_bytes else 1, now)
                    for bucket, counts_bytes in self.buckets
                ),
                default=0.0,
            )
            self.waited += wait
        if wait > 0:
            self.sleep(wait)


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*(?:/\s*s)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_bytes_rate(text: str) -> float:
    """'500000', '500k', '2M', '2MB/s', '1.5 MiB/s' -> bytes per second (k, M, G are
    powers of 1024).  ConfigError for anything else or for 0."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(
            f"--max-rate {text!r}: give bytes per second, e.g. 500000, 500k or 2M (> 0)"
        )
    return float(match.group(1)) * _UNITS[match.group(2).lower()]

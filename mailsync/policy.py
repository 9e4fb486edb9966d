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

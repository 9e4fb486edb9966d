"""The retention rule of a source that keeps mail only until it is fetched (POP3
delete = "after-download", delete_after_days): which of its messages may go.

`expired` is the rule itself, pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from mailsync.policy import Retention


def expired(recorded: Mapping[str, float | None], rule: Retention, now: float) -> list[str]:
    """Which source messages the rule lets go.  `recorded`: each source key whose message
    is durable on the other side and recorded in the state -> when it was first recorded
    (None: unknown, never old enough).  Nothing else is ever expired."""
    out = []
    for key, added in recorded.items():
        if rule.after_download or (
            rule.after_days is not None
            and added is not None
            and now - added >= rule.after_days * 86400
        ):
            out.append(key)
    return sorted(out)

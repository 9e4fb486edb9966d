"""The retention rule of a source that keeps mail only until it is fetched (POP3
delete = "after-download", delete_after_days: the folder's ``retention``): which of its
messages may go, and deleting them.

`expired` is the rule itself, pure; `expired_keys` applies it to a folder pair's state
and listings; `expire` deletes, after a clean run of the folder (folder_sync.py), in one
batch (the POP3 server deletes only when the session ends, all or nothing).  Nothing is
deleted whose local copy is not durable, recorded and there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from mailsync.message import Info
from mailsync.planner import Delete
from mailsync.policy import Retention
from mailsync.state import Pair

if TYPE_CHECKING:  # (folder_sync imports this module)
    from mailsync.folder_sync import FolderSync

log = logging.getLogger("mailsync")


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


def expired_keys(
    rule: Retention,
    pairs: Iterable[Pair],
    listings: Mapping[str, Mapping[str, Info]],
    arrived: AbstractSet[str],
    now: float,
) -> list[str]:
    """Remote keys the rule lets go: only messages still on the remote side whose local
    copy is recorded and there (listed, or copied in by this run: `arrived`), so a
    local tree that vanished (an unmounted disk) never lets anything go."""
    recorded = {
        p.key_a: p.added
        for p in pairs
        if p.key_a is not None
        and p.key_a in listings["a"]
        and p.key_b is not None
        and (p.key_b in listings["b"] or p.key_b in arrived)
    }
    return expired(recorded, rule, now)


def expire(fs: FolderSync, rule: Retention) -> None:
    """Delete from the remote folder of `fs` what the rule lets go, after a clean run."""
    pairs = fs.state.pairs(fs.fstate.id)
    keys = expired_keys(rule, pairs, fs.listings, fs.arrived, fs.options.clock())
    if not keys:
        return
    by_key = {p.key_a: p for p in pairs if p.key_a is not None}
    actions = [Delete("a", key, by_key[key]) for key in keys]
    log.info(
        "%s: deleting %d message(s) from the server (%s)",
        fs.fstate.name_a,
        len(keys),
        rule.describe(),
    )
    # One batch: the server deletes only when the session ends, all or nothing.  The
    # pairs stay as tombstones: the local copies remain known.
    fs.delete(actions, batch=len(actions), tombstone=True)

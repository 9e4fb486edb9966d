"""What a run did, for the user: one FolderReport per folder pair, a Report per channel,
and the words for actions and problems shared by every part of the engine.

The command line prints these (cli.py) or turns them into JSON (Report.as_dict); the
engine only fills them in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mailsync.planner import Copy, Delete, Forget, SetFlags, Tombstone
from mailsync.policy import SIDE_NAMES, Policy, other

log = logging.getLogger("mailsync")


@dataclass
class FolderReport:
    folder: str
    copied_a_to_b: int = 0
    copied_b_to_a: int = 0
    flags_a: int = 0
    flags_b: int = 0
    deleted_a: int = 0
    deleted_b: int = 0
    linked: int = 0  # unrecorded copies found again by content
    # Of linked: destination messages the state did not know and that no earlier run can
    # have sent as far as the journal of copies under way tells (a destination that
    # normalises keeps one: IMAP, mbox, Exchange): mail the destination had of its own,
    # from an earlier migration by another tool or arrived meanwhile, adopted with the
    # source's flags instead of copied again.  Into a Maildir, which keeps no journal, a
    # copy a killed run made and did not record counts here too.
    adopted: int = 0
    # Of copied_a_to_b: made from a local copy of the same message (Gmail's labels), not
    # downloaded (copies.py).
    from_local_copies: int = 0
    skipped: int = 0
    skipped_why: list[str] = field(default_factory=list)  # the source's notes, one a skip
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    planned: dict[str, int] | None = None  # --dry-run: what would happen
    # Messages the destination refused for good during this run: summary, key, reason.
    refused_messages: list[dict[str, str | None]] = field(default_factory=list)
    withheld: int = 0  # copies not offered: refused on an earlier run
    # New messages --since, --before or --max-size left out: reason -> how many, and each
    # one (side, key, reason, size, arrival); record_left_out().
    left_out: dict[str, int] = field(default_factory=dict)
    left_out_messages: list[dict[str, Any]] = field(default_factory=list)
    # The server asked to wait (throttling): how many times, and the seconds waited.
    throttled: int = 0
    throttled_seconds: float = 0.0

    def summary(self) -> str:
        if self.planned is not None:
            p = self.planned
            parts = [
                f"would copy {p['copy_a_to_b']} to local, {p['copy_b_to_a']} to remote",
                f"flags {p['flags_a'] + p['flags_b']}",
                f"delete {p['delete_a'] + p['delete_b']}",
            ]
            if self.errors:
                parts.append(f"errors {len(self.errors)}")
        else:
            parts = [
                f"copied {self.copied_a_to_b} to local, {self.copied_b_to_a} to remote",
                f"flags {self.flags_a + self.flags_b}",
                f"deleted {self.deleted_a + self.deleted_b}",
                f"skipped {self.skipped}",
                f"errors {len(self.errors)}",
            ]
        if self.from_local_copies:
            parts.append(f"{self.from_local_copies} copied from local copies, not downloaded")
        if self.adopted:
            parts.append(f"adopted {self.adopted} already there")
        if self.linked - self.adopted:
            parts.append(f"re-linked {self.linked - self.adopted}")
        if self.withheld:
            parts.append(f"held back {self.withheld} (refused before)")
        parts.extend(f"left out {n} {why}" for why, n in sorted(self.left_out.items()))
        if self.refused:
            parts.append("deletions refused")
        if self.throttled:
            parts.append(f"throttled {self.throttled}x, waited {self.throttled_seconds:.1f} s")
        return f"{self.folder}: " + ", ".join(parts)

    def copied(self, src: str) -> None:
        """One message copied from side `src` to the other."""
        if src == "a":
            self.copied_a_to_b += 1
        else:
            self.copied_b_to_a += 1

    def flagged(self, side: str) -> None:
        """One message's flags changed on `side`."""
        if side == "a":
            self.flags_a += 1
        else:
            self.flags_b += 1

    def deleted(self, side: str) -> None:
        """One message deleted on `side`."""
        if side == "a":
            self.deleted_a += 1
        else:
            self.deleted_b += 1


@dataclass
class Report:
    folders: list[FolderReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # store-level
    warnings: list[str] = field(default_factory=list)  # channel-level, e.g. unmatched patterns
    # Folders paired under other names (folder_names): {"remote", "local", "why"}.
    folder_names: list[dict[str, str]] = field(default_factory=list)
    # Folders holding something else than mail (Store.folder_kinds, either side's name):
    # name -> "calendar" / "contacts".  (Not in as_dict: migrate reports it its way.)
    kinds: dict[str, str] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return any(f.refused for f in self.folders)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(f.errors for f in self.folders)

    def as_dict(self) -> dict[str, Any]:
        """For JSON, at once (the lists are shared, not copied: asdict's deep copies cost
        a millisecond per 10 folders on every run)."""
        return {
            "folders": [dict(vars(f)) for f in self.folders],
            "errors": self.errors,
            "warnings": self.warnings,
            "folder_names": self.folder_names,
        }


class NullProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


#: (total, description) -> a progress bar (update(n), close()); cli.py makes tqdm ones.
ProgressFactory = Callable[[int, str], NullProgress]


def no_progress(total: int, desc: str) -> NullProgress:
    return NullProgress()


def report_problems(policy: Policy, side: str, problems: Iterable[str], errors: list[str]) -> None:
    """What a side's listing found but could not read (Store.problems, Folder.problems).
    On a side the run copies from, it is mail not synced: an error (exit 1), so the run
    is not clean, no cursor vouches for the folder, and the next run reports it again.
    On a side the run only writes to (the destination of a pull), nothing is missing
    from the copy: a warning."""
    copied_from = policy.writes(other(side))
    for problem in problems:
        if copied_from:
            errors.append(problem)
            log.error("%s", problem)
        else:
            log.warning("%s", problem)


def record_left_out(report: FolderReport, left_out: Iterable[tuple[Copy, str]]) -> None:
    """The plan's messages left out by the run's selection, into the folder's report."""
    for copy, why in left_out:
        report.left_out[why] = report.left_out.get(why, 0) + 1
        report.left_out_messages.append(
            {"side": copy.src, "key": copy.key, "reason": why, "arrival": copy.arrival}
        )
        log.debug("%s: left out %s %s: %s", report.folder, SIDE_NAMES[copy.src], copy.key, why)


def describe(action: Copy | SetFlags | Delete | Tombstone | Forget) -> str:
    if isinstance(action, Copy):
        text = f"copy {SIDE_NAMES[action.src]} {action.key} to {SIDE_NAMES[other(action.src)]}"
        return f"{text} (changed: replaces {action.replaces})" if action.replaces else text
    if isinstance(action, SetFlags):
        parts = []
        for side, (add, remove) in action.changes.items():
            change = " ".join([f"+{f}" for f in sorted(add)] + [f"-{f}" for f in sorted(remove)])
            parts.append(f"{SIDE_NAMES[side]} {action.pair.key(side)} {change}")
        return "flags " + "; ".join(parts) if parts else "record flags"
    if isinstance(action, Delete):
        return f"delete {SIDE_NAMES[action.side]} {action.key}"
    return type(action).__name__.lower()


def size_text(n: float) -> str:
    """A byte count for people: 512 B, 4.0 KB, 1.5 MB, 2.3 GB (units of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"

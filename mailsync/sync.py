"""The executor: opens folder pairs, asks the planner, runs the actions in batches and
records the state as it goes.

Order of work in a folder: copies (a -> b, then b -> a), flag changes, deletions.  Every
batch is made durable on the destination (Folder.flush) before the state records it, so a
crash at any point leaves each message exactly once after the next run:

* a message appended but not yet recorded is found again by its content hash when the
  next run copies the same source message ("match or append"), and is linked, not copied;
* a flag change or deletion applied but not recorded is seen as already done.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mailsync.errors import (
    FolderError,
    MailsyncError,
    MessageError,
    RefusedError,
    RenameRefused,
)
from mailsync.message import (
    RECENT,
    Info,
    arrival_date,
    fingerprint,
    header_digest,
    header_identity,
    summary,
    summary_line,
    tolerant_fingerprint,
)
from mailsync.planner import Copy, Delete, Forget, Plan, SetFlags, Tombstone, plan
from mailsync.policy import SIDE_NAMES, Policy, Retention, other
from mailsync.retention import expired
from mailsync.state import FolderState, Pair, State
from mailsync.stores.base import Folder, Store

log = logging.getLogger("mailsync")


BATCH_MESSAGES = 200
BATCH_BYTES = 64 * 1024 * 1024

# Test-only crash hook: MAILSYNC_CRASH_AT=N kills the process (as kill -9 would) at the
# N-th step of a run.  Crash tests rerun with N = 1, 2, ... until a run completes.
_CRASH_AT = int(os.environ.get("MAILSYNC_CRASH_AT") or 0)
_steps = 0


def step(what: str) -> None:
    global _steps
    if _CRASH_AT:
        _steps += 1
        if _steps >= _CRASH_AT:
            log.debug("crash hook: exiting at step %d (%s)", _steps, what)
            os._exit(137)


def select_folders(names: Iterable[str], patterns: list[str]) -> list[str]:
    """Glob patterns, '!' negates, later matches win; unmatched names are left out."""
    chosen = []
    for name in names:
        keep = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            if fnmatch.fnmatchcase(name, pattern[1:] if negate else pattern):
                keep = not negate
        if keep:
            chosen.append(name)
    return sorted(set(chosen), key=lambda n: (n != "INBOX", n))


def unmatched_patterns(names: Iterable[str], patterns: list[str]) -> list[str]:
    """The patterns that match none of `names` (a '!' pattern: that exclude none), so a
    typo in --folders or a channel's folders is said, not silently nothing."""
    names = list(names)
    return [
        pattern
        for pattern in patterns
        if not any(fnmatch.fnmatchcase(name, pattern.removeprefix("!")) for name in names)
    ]


def pattern_warnings(names: Iterable[str], patterns: list[str]) -> list[str]:
    """One sentence per folder pattern that matches nothing (see unmatched_patterns)."""
    return [
        f"folder pattern {pattern!r} "
        + ("excludes no folder" if pattern.startswith("!") else "matches no folder")
        for pattern in unmatched_patterns(names, patterns)
    ]


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
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    planned: dict[str, int] | None = None  # --dry-run: what would happen
    # Messages the destination refused for good during this run: summary, key, reason.
    refused_messages: list[dict] = field(default_factory=list)
    withheld: int = 0  # copies not offered: refused on an earlier run

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
        if self.linked:
            parts.append(f"re-linked {self.linked}")
        if self.withheld:
            parts.append(f"held back {self.withheld} (refused before)")
        if self.refused:
            parts.append("deletions refused")
        return f"{self.folder}: " + ", ".join(parts)


@dataclass
class Report:
    folders: list[FolderReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # store-level
    warnings: list[str] = field(default_factory=list)  # channel-level, e.g. unmatched patterns

    @property
    def refused(self) -> bool:
        return any(f.refused for f in self.folders)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(f.errors for f in self.folders)

    def as_dict(self) -> dict:
        """For JSON, at once (the lists are shared, not copied: asdict's deep copies cost
        a millisecond per 10 folders on every run)."""
        return {
            "folders": [dict(vars(f)) for f in self.folders],
            "errors": self.errors,
            "warnings": self.warnings,
        }


class NullProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


ProgressFactory = Callable[[int, str], NullProgress]


class Syncer:
    """Runs one channel: store a (remote side) and store b (local side).

    With jobs > 1 and an ``open_stores`` factory, folders are synced in parallel, each
    worker thread with its own connections and its own handle on the state database
    (SQLite in WAL mode serialises the short write transactions).
    """

    def __init__(
        self,
        store_a: Store,
        store_b: Store,
        state: State,
        policy: Policy,
        patterns: list[str] | None = None,
        dry_run: bool = False,
        progress: ProgressFactory | None = None,
        jobs: int = 1,
        open_stores: Callable[[], tuple[Store, Store]] | None = None,
        folder_map: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        retry_refused: bool = False,
    ):
        self._main = {"stores": {"a": store_a, "b": store_b}, "state": state}
        self._local = threading.local()
        self.policy = policy
        self.patterns = patterns or ["*"]
        self.dry_run = dry_run
        self.progress = progress or (lambda total, desc: NullProgress())
        self.jobs = max(1, jobs) if open_stores is not None else 1
        self.open_stores = open_stores
        # Remote folder name -> local name, for the folders it names (a channel's
        # folder = "POP/provider" maps INBOX); with a map, only its folders are synced.
        self.folder_map = dict(folder_map or {})
        self.clock = clock
        # Offer again the messages the destination refused for good on earlier runs.
        self.retry_refused = retry_refused
        self._renamed: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._kinds: dict[str, str] = {}
        self._notes: dict[str, list[str]] = {}
        # --dry-run: remote name -> the (name_a, name_b) its state has, where a real run
        # would have renamed it
        self._state_names: dict[str, tuple[str, str]] = {}
        self._blocked: dict[str, str] = {}  # remote name -> why it is not synced this run
        self._known: set[str] = set()

    # Each worker thread has its own stores and state handle; the main thread the given ones.
    @property
    def stores(self) -> dict[str, Store]:
        return getattr(self._local, "stores", None) or self._main["stores"]

    @property
    def state(self) -> State:
        return getattr(self._local, "state", None) or self._main["state"]

    # channel ----------------------------------------------------------------------
    def run(self) -> Report:
        report = Report()
        started = time.time()
        existing = {side: set(self.stores[side].list_folders()) for side in ("a", "b")}
        for side in ("a", "b"):  # parts of a tree that hold mail but are no folder
            self._report_problems(side, self.stores[side].problems, report.errors)
        self._renamed: dict[str, str] = {}  # remote name -> local name, where they differ
        self._state_names, self._blocked = {}, {}
        self._ids = {}
        # Calendars and address books (EWS) become vdirs on the local side.
        self._kinds: dict[str, str] = self.stores["a"].folder_kinds()
        self._follow_renames(existing)
        remote_of = {local: name for name, local in self._renamed.items()}
        candidates = set()
        read_from = [s for s in ("a", "b") if self.policy.writes(other(s))]
        for side in read_from:
            candidates |= {remote_of.get(n, n) for n in existing[side]}
        # Folders the state knows are synced too, so a vanished folder is noticed.
        known = self._known
        if self.folder_map:
            names = [
                name
                for name in sorted(self.folder_map)
                if name in known or name in existing["a"] or self.local_name(name) in existing["b"]
            ]
        else:
            candidates |= known
            names = [
                name
                for name in select_folders(candidates, self.patterns)
                if name in known or name in existing["a"] or self.local_name(name) in existing["b"]
            ]
            if not candidates:
                where = " or ".join(self.stores[side].describe() for side in read_from)
                report.warnings.append(f"found no folder in {where}; nothing to sync")
            else:
                report.warnings.extend(pattern_warnings(candidates, self.patterns))
            for warning in report.warnings:
                log.warning("%s", warning)
        if self.jobs > 1 and len(names) > 1:
            # Folders unchanged on both sides are told apart here, on the connections
            # already open (one LIST-STATUS answers for every IMAP folder): a rerun with
            # nothing new opens no further connections.
            done = {
                name: FolderReport(name)
                for name in names
                if self._quickly_untouched(name, existing)
            }
            rest = [name for name in names if name not in done]
            if len(rest) > 1:
                done.update(zip(rest, self._run_parallel(rest, existing), strict=True))
            else:
                done.update((name, self._guarded(name, existing)) for name in rest)
            report.folders.extend(done[name] for name in names)
        else:
            report.folders.extend(self._guarded(name, existing) for name in names)
        self._held_back(set(names), started, report)
        return report

    def _held_back(self, names: set[str], started: float, report: Report) -> None:
        """One warning per side for the messages of this run's folders that the other side
        refused on an earlier run and that were not offered again: the run is not failed
        for them (exit 0), but never silent about them."""
        earlier = Counter(
            refusal["side"]
            for refusal in self.state.refusals()
            if refusal["folder"] in names and refusal["last"] < started
        )
        for side, count in sorted(earlier.items()):
            warning = (
                f"{count} message(s) refused for good by the {SIDE_NAMES[other(side)]} side on "
                "an earlier run were not offered again; mailsync status names them, "
                "--retry-refused offers them again"
            )
            report.warnings.append(warning)
            log.warning("%s", warning)

    def _quickly_untouched(self, name: str, existing) -> bool:
        """_untouched() for a folder that exists on both sides with cursors, checked with
        the main thread's stores; False whenever in doubt (the folder is then synced)."""
        local = self.local_name(name)
        if self.dry_run or self.policy.force_delete or self.retry_refused or name in self._notes:
            return False
        if name in self._blocked or name not in existing["a"] or local not in existing["b"]:
            return False
        fstate = self._folder_state(name)
        if not fstate.cursor_a or not fstate.cursor_b:
            return False
        if self._ids.get(name) and fstate.ident_a != self._ids[name]:
            return False
        folders: dict[str, Folder] = {}
        try:
            folders["a"] = self.stores["a"].open_folder(name)
            folders["b"] = self.stores["b"].open_folder(local)
            untouched = self._untouched(fstate, folders)
        except Exception:  # in doubt: the folder is synced, and fails there if it must
            return False
        finally:
            for folder in folders.values():
                with contextlib.suppress(Exception):
                    folder.close()
        if untouched:
            log.debug("%s: unchanged on both sides since the last clean run", name)
        return untouched

    def _guarded(self, name: str, existing) -> FolderReport:
        """sync_folder(), with its failures confined to the folder: a FolderError, a
        MessageError that escaped, or any unexpected exception (a bug, or a hostile
        server's input nobody foresaw; its traceback logged at debug level, -vv) becomes
        this folder's error and the other folders go on.  Store-level errors (StoreError,
        ConfigError, SafetyError), the state database's own errors and interrupts
        (KeyboardInterrupt is no Exception) still stop the run.  A folder whose local
        folder could not be moved (_follow_renames) is not synced: that is its error."""
        if name in self._blocked:
            folder_report = FolderReport(name)
            folder_report.errors.append(self._blocked[name])
            return folder_report
        try:
            return self.sync_folder(name, existing)
        except (FolderError, MessageError) as error:
            text = str(error)
        except (MailsyncError, sqlite3.Error):
            raise
        except Exception as error:
            self.state.rollback()  # an error in the middle of a transaction: not half of it
            if isinstance(error, OSError):
                where = f" ({error.filename})" if error.filename else ""
                text = f"{name}: {error.strerror or error}{where}"
            else:
                log.debug("%s: unexpected error", name, exc_info=True)
                text = (
                    f"{name}: unexpected {type(error).__name__}: {error}; the other folders "
                    "go on; run with -vv for details and please report it"
                )
        log.error("%s", text)
        folder_report = FolderReport(name)
        folder_report.errors.append(text)
        return folder_report

    def _run_parallel(self, names: list[str], existing) -> list[FolderReport]:
        workers: list[tuple[dict, State]] = []
        lock = threading.Lock()

        def work(name: str) -> FolderReport:
            if getattr(self._local, "state", None) is None:
                stores = self.open_stores()
                for store, main in zip(
                    stores, (self._main["stores"]["a"], self._main["stores"]["b"]), strict=True
                ):
                    store.adopt_listing(main)
                state = State(self._main["state"].path, lock=False)
                self._local.stores = {"a": stores[0], "b": stores[1]}
                self._local.state = state
                with lock:
                    workers.append((self._local.stores, state))
            return self._guarded(name, existing)

        try:
            with ThreadPoolExecutor(min(self.jobs, len(names))) as pool:
                return list(pool.map(work, names))
        finally:
            for stores, state in workers:
                for store in stores.values():
                    with contextlib.suppress(Exception):
                        store.close()
                state.close()

    def local_name(self, name: str) -> str:
        return self.folder_map.get(name) or self._renamed.get(name) or name

    def _folder_state(self, name: str) -> FolderState:
        """The state of remote folder `name` (created empty if it is new)."""
        name_a, name_b = self._state_names.get(name, (name, self.local_name(name)))
        return self.state.folder(name_a, name_b)

    # renamed folders --------------------------------------------------------------
    def _follow_renames(self, existing: dict[str, set[str]]) -> None:
        """Folders whose names changed keep their state, and local folders follow:

        * a move of a local folder that a killed run left unfinished is finished first
          (state.moves(): recorded before the disk was touched);
        * a local store that names a folder differently now (former_names) changes only
          the state's local name;
        * a remote folder whose id (folder_ids) or former name (former_names: an IMAP
          namespace prefix no longer in names) the state knows under another name was
          renamed: its state follows, so nothing is copied again;
        * the local folder of such a folder moves to the remote name, subfolders with
          it, where the local store can rename and nothing is in the way; otherwise the
          old local name stays, with a note.

        With --dry-run nothing is written or moved: the renames are only told."""
        rows = self.state.folders()
        before = {f.id: (f.name_a, f.name_b) for f in rows}
        moved = self._finish_moves(rows)
        self._local_renames(rows, existing["b"])
        former = self.stores["a"].former_names()
        renamed = self._remote_renames(rows, existing["a"], former)
        moved = self._move_local(rows, set(existing["b"]), former, renamed) or moved
        if moved:
            existing["b"] = set(self.stores["b"].list_folders())
        counts = Counter(f.name_a for f in rows)
        for folder in rows:
            if self.dry_run and (folder.name_a, folder.name_b) != before[folder.id]:
                self._state_names[folder.name_a] = before[folder.id]
            if folder.name_b != folder.name_a and self._follows(folder, former, renamed, counts):
                self._renamed[folder.name_a] = folder.name_b
        self._known = {f.name_a for f in rows}

    def _follows(self, folder: FolderState, former, renamed, counts) -> bool:
        """Whether the folder's local name should be its remote name: its remote folder
        was renamed (this run, by id, or by the namespace change), not mapped elsewhere
        by the channel (folder = ...)."""
        return (
            folder.name_a != "INBOX"
            and folder.name_a not in self.folder_map
            and counts[folder.name_a] == 1
            and (
                folder.id in renamed
                or bool(folder.ident_a)
                or former.get(folder.name_a) == folder.name_b
            )
        )

    def _finish_moves(self, rows: list[FolderState]) -> bool:
        moved = False
        for move_id, old, new in self.state.moves():
            if self.dry_run:
                self._block(
                    rows, old, f"an interrupted run was moving local folder {old!r} to {new!r}"
                )
                continue
            log.info("finishing the move of local folder %r to %r", old, new)
            moved = self._move(rows, move_id, old, new, fresh=False) or moved
        return moved

    def _block(self, rows: list[FolderState], old: str, why: str) -> None:
        """The folders whose local folders are `old` or below it are not synced now."""
        for folder in rows:
            if folder.name_b == old or folder.name_b.startswith(old + "/"):
                self._blocked[folder.name_a] = f"{folder.name_a}: {why}"

    def _move(self, rows, move_id: int, old: str, new: str, fresh: bool) -> bool:
        """Move local folder `old` (and those below it) to `new`, as journaled under
        `move_id`, then record it.  A move the store refused before touching anything
        is forgotten (the folder keeps its name); any other failure leaves the journal
        for the next run and the folders unsynced in this one."""
        try:
            self.stores["b"].rename_folder(old, new)
        except RenameRefused as error:
            if not fresh:  # a resumed move may be half done: only finishing it is safe
                self._block(rows, old, str(error))
                log.error("%s", error)
                return False
            self.state.begin()
            self.state.drop_move(move_id)
            self.state.commit()
            note = f"its local folder stays {old!r}: {error}"
            log.warning("%s: %s", new, note)
            self._notes.setdefault(new, []).append(note)
            return False
        except FolderError as error:
            self._block(rows, old, str(error))
            log.error("%s", error)
            return False
        step("move folder")
        self.state.begin()
        self.state.finish_move(move_id, old, new)
        self.state.commit()
        step("move recorded")
        for folder in rows:
            if folder.name_b == old or folder.name_b.startswith(old + "/"):
                folder.name_b = new + folder.name_b[len(old) :]
        return True

    def _local_renames(self, rows: list[FolderState], local: set[str]) -> None:
        """A local store that names a folder differently now (an IMAP store on the
        local side, with a namespace prefix): the state's local name follows."""
        by_former = {old: new for new, old in self.stores["b"].former_names().items()}
        if not by_former:
            return
        taken = {(f.name_a, f.name_b) for f in rows}
        for folder in rows:
            new = by_former.get(folder.name_b)
            if new is None or folder.name_b in local or new not in local:
                continue
            if (folder.name_a, new) in taken:
                continue
            taken.add((folder.name_a, new))
            if self.dry_run:
                folder.name_b = new
            else:
                self.state.begin()
                self.state.rename_local(folder, new)
                self.state.commit()

    def _remote_renames(self, rows: list[FolderState], remote: set[str], former) -> dict:
        """Rename in the state each folder renamed on the remote side; returns
        {folder id: its old remote name}."""
        gone = [f for f in rows if f.name_a not in remote]
        if gone or self._ids_missing(rows, remote):
            self._ids = self.stores["a"].folder_ids()
        by_id = {ident: name for name, ident in self._ids.items()}
        by_former = {old: new for new, old in former.items()}
        renamed: dict[int, str] = {}
        for folder in gone:
            new = by_id.get(folder.ident_a or "") or by_former.get(folder.name_a)
            if new is None or new not in remote:
                continue
            others = [f for f in rows if f.name_a == new]
            if not all(self.state.holds_nothing(f.id) for f in others):
                continue  # the new name has a state of its own: leave both alone
            old = folder.name_a
            if self.dry_run:
                folder.name_a = new
            else:
                self.state.begin()
                for empty in others:
                    self.state.forget_folder(empty)
                self.state.rename_folder(folder, new)
                self.state.commit()
            for empty in others:
                rows.remove(empty)
            renamed[folder.id] = old
            if by_former.get(old) == new:
                note = f"was {old!r} (mailsync now leaves the server's namespace prefix out)"
            else:
                note = f"renamed on the remote side from {old!r}"
            log.warning("%s: %s", new, note)
            self._notes.setdefault(new, []).append(note)
        return renamed

    def _ids_missing(self, rows: list[FolderState], remote: set[str]) -> bool:
        """Whether a folder to sync has no id in the state yet (ids may cost a round
        trip: they are asked for only then, or when a known folder is gone)."""
        idents = {f.name_a: f.ident_a for f in rows}
        if self.folder_map:
            wanted = [name for name in self.folder_map if name in remote]
        else:
            wanted = select_folders(remote, self.patterns)
        return any(not idents.get(name) for name in wanted)

    def _move_local(self, rows: list[FolderState], local: set[str], former, renamed) -> bool:
        """Move each local folder whose remote folder was renamed; True if one moved.
        Parents go first and take their subfolders along; a folder held back by another
        (a subfolder that moves elsewhere first) is tried again once that one moved."""
        counts = Counter(f.name_a for f in rows)
        pending = sorted(
            (f for f in rows if f.name_b != f.name_a and self._follows(f, former, renamed, counts)),
            key=lambda f: (f.name_b.count("/"), f.name_b),
        )
        moved = False
        held: list[tuple[FolderState, str]] = []
        while pending:
            held = []
            progress = False
            for folder in pending:
                old, new = folder.name_b, folder.name_a
                if old == new or new in self._blocked:
                    continue  # moved along with its parent, or failed
                why = self._cannot_move(folder, rows, local)
                if why is not None:
                    held.append((folder, why))
                    continue
                if self.dry_run:
                    note = f"its local folder {old!r} would move to {new!r}"
                    log.info("%s: %s", new, note)
                    self._notes.setdefault(new, []).append(note)
                    continue
                progress = True
                if not any(n == old or n.startswith(old + "/") for n in local):
                    # Nothing there to move: the folder is created under its new name.
                    self.state.begin()
                    self.state.rename_local(folder, new)
                    self.state.commit()
                    continue
                self.state.begin()
                move_id = self.state.add_move(old, new)
                self.state.commit()
                step("move journaled")
                if self._move(rows, move_id, old, new, fresh=True):
                    moved = True
                    local = {
                        new + n[len(old) :] if n == old or n.startswith(old + "/") else n
                        for n in local
                    }
                    note = f"its local folder moved from {old!r}"
                    log.warning("%s: %s", new, note)
                    self._notes.setdefault(new, []).append(note)
            pending = [folder for folder, _ in held] if progress else []
        for folder, why in held:
            note = f"its local folder stays {folder.name_b!r}: {why}"
            if folder.id in renamed:
                log.warning("%s: %s", folder.name_a, note)
                self._notes.setdefault(folder.name_a, []).append(note)
            else:
                log.info("%s: %s", folder.name_a, note)
        return moved

    def _cannot_move(self, folder: FolderState, rows, local: set[str]) -> str | None:
        """Why the folder's local folder cannot move to its remote name, or None."""
        old, new = folder.name_b, folder.name_a
        if not self.stores["b"].can_rename:
            return "the local store cannot rename folders"
        if new.startswith(old + "/") or old.startswith(new + "/"):
            return f"{new!r} is above or below it"
        if new in local or any(n.startswith(new + "/") for n in local):
            return f"a local folder {new!r} exists already (move it away and rerun)"
        for row in rows:
            if row is folder:
                continue
            if row.name_b == new or row.name_b.startswith(new + "/"):
                return f"{row.name_b!r} is the local folder of {row.name_a!r}"
            if row.name_b.startswith(old + "/") and row.name_a != new + row.name_b[len(old) :]:
                return f"its subfolder {row.name_b!r} was not renamed alike"
        return None

    # folder -----------------------------------------------------------------------
    def sync_folder(self, name: str, existing: dict[str, set[str]]) -> FolderReport:
        report = FolderReport(name)
        report.notes.extend(self._notes.pop(name, []))
        fstate = self._folder_state(name)
        ident = self._ids.get(name)
        if ident and fstate.ident_a != ident and not self.dry_run:
            fstate.ident_a = ident
            self.state.begin()
            self.state.save_folder(fstate)
            self.state.commit()
        folders: dict[str, Folder | None] = {}
        try:
            for side in ("a", "b"):
                folders[side] = self._open(name, side, existing, fstate, report)
            return self._sync_open(name, fstate, folders, report)
        finally:
            for folder in folders.values():
                if folder is not None:
                    folder.close()

    def _open(self, name, side, existing, fstate: FolderState, report) -> Folder | None:
        kind = self._kinds.get(name, "mail") if side == "b" else "mail"
        if side == "b":
            name = self.local_name(name)
        if name in existing[side]:
            return self.stores[side].open_folder(name)
        if self.dry_run and self.policy.writes(side):
            why = self.stores[side].creation_problem(name, kind)
            if why:
                error = f"{name}: cannot be created on the {SIDE_NAMES[side]} side: {why}"
                report.errors.append(error)
                log.error("%s", error)
            else:
                report.notes.append(f"would be created on the {SIDE_NAMES[side]} side")
        if not self.policy.writes(side) or self.dry_run:
            return None  # read as empty
        had_any = any(p.key(side) is not None for p in self.state.pairs(fstate.id))
        folder = self.stores[side].open_folder(name, create=True, kind=kind)
        if had_any:
            # The folder was removed on this side: refill it, never read that as
            # "delete everything" (mailsync never deletes folders).
            self.state.begin()
            self.state.forget_pairs(fstate.id)
            setattr(fstate, f"cursor_{side}", {})
            self.state.save_folder(fstate)
            self.state.commit()
            report.notes.append(
                f"re-created on the {SIDE_NAMES[side]} side; copying its messages again"
            )
        else:
            report.notes.append(f"created on the {SIDE_NAMES[side]} side")
        return folder

    def _list(self, side, folder: Folder | None, fstate: FolderState, pairs, report):
        """-> (listing, cursor to save).  An unchanged folder is not even listed: what
        the state knows stands in for it."""
        if folder is None:
            return {}, {}
        cursor = fstate.cursor(side)
        try:
            return self._list_folder(side, folder, fstate, pairs, cursor)
        finally:
            report.skipped += len(folder.skipped)
            for note in folder.skipped:
                log.warning("%s: %s", fstate.name_a, note)
            self._report_problems(side, folder.problems, report.errors)

    def _report_problems(self, side: str, problems, errors: list[str]) -> None:
        """What a side's listing found but could not read.  On a side the run copies
        from, it is mail not synced: an error (exit 1), so the run is not clean, no
        cursor vouches for the folder, and the next run reports it again.  On a side the
        run only writes to (the destination of a pull), nothing is missing from the copy:
        a warning."""
        copied_from = self.policy.writes(other(side))
        for problem in problems:
            if copied_from:
                errors.append(problem)
                log.error("%s", problem)
            else:
                log.warning("%s", problem)

    def _list_folder(self, side, folder: Folder, fstate: FolderState, pairs, cursor):
        if cursor and folder.unchanged(cursor):
            listing = {p.key(side): Info(p.flags, 0, 0.0) for p in pairs if p.key(side) is not None}
            log.debug("%s: side %s unchanged since the last run", fstate.name_a, side)
            return listing, cursor
        if cursor:
            known = {p.key(side): p.flags for p in pairs if p.key(side) is not None}
            listing = folder.list_since(cursor, known)
        else:
            listing = folder.list()
        return listing, folder.cursor()

    def _policy_signature(self) -> str:
        return f"{self.policy.direction}/{self.policy.delete}"

    def _untouched(self, fstate: FolderState, folders) -> bool:
        """Both sides unchanged since a clean run under the same policy: nothing to plan,
        so not even the state's pairs are loaded (a 100,000-message rerun is STATUS calls
        and directory stats)."""
        if self.dry_run or self.policy.force_delete or self.retry_refused:
            return False
        if self.state.get_meta(f"clean:{fstate.id}") != self._policy_signature():
            return False
        for side in ("a", "b"):
            cursor = fstate.cursor(side)
            if folders[side] is None or not cursor or not folders[side].unchanged(cursor):
                return False
        return True

    def _sync_open(self, name, fstate: FolderState, folders, report) -> FolderReport:
        if self._untouched(fstate, folders):
            log.debug("%s: unchanged on both sides since the last clean run", name)
            return report
        # Messages the other side refused for good before: a side with some is listed in
        # full (not from its cursor), so that a refused message deleted since is forgotten
        # and one to retry is seen; a paged source (EWS) only when retrying.
        refused = {side: self.state.refused_keys(fstate.id, side) for side in ("a", "b")}
        self._local.refused = refused
        paged = self._paged(fstate, folders)
        for side in ("a", "b"):
            if refused[side] and (self.retry_refused or not (paged and side == "a")):
                setattr(fstate, f"cursor_{side}", {})
        if paged:
            try:
                return self._sync_pages(name, fstate, folders, report)
            except _Relist:
                fstate.cursor_a = {}  # the source forgot the cursor: list it all, below
        pairs = self.state.pairs(fstate.id)
        listings, cursors = {}, {}
        for side in ("a", "b"):
            listings[side], cursors[side] = self._list(side, folders[side], fstate, pairs, report)
        for side in ("a", "b"):
            folder = folders[side]
            if folder is None:
                continue
            old = fstate.validity(side)
            if old is not None and old != folder.validity and not self.dry_run:
                refused[side].clear()  # keys of the old validity: void
                self.state.begin()
                self.state.forget_refusals(fstate.id, side)
                self.state.forget_pending(fstate.id, side)
                self.state.commit()
                self._rematch(fstate, side, folders, listings, report)
            setattr(fstate, f"validity_{side}", folder.validity)
        if not self.dry_run:
            self.state.begin()
            self.state.save_folder(fstate)
            for side in ("a", "b"):
                gone = refused[side] - listings[side].keys()  # deleted where it was
                self.state.forget_refusals(fstate.id, side, sorted(gone))
                refused[side] -= gone
            self.state.commit()

        pairs = self.state.pairs(fstate.id)
        if folders["a"] is not None:
            folders["a"].recall_versions(
                {p.key_a: p.version_a for p in pairs if p.key_a and p.version_a}
            )
        persists = {
            side: (folders[side].persists if folders[side] is not None else (lambda f: True))
            for side in ("a", "b")
        }
        refusal_key = f"refused:{fstate.id}"
        refused_before = frozenset((self.state.get_meta(refusal_key) or "").split(",")) - {""}
        the_plan = plan(
            listings["a"],
            listings["b"],
            pairs,
            self.policy,
            persists["a"],
            persists["b"],
            refused_before,
            None if self.retry_refused else refused,
        )
        report.withheld = len(the_plan.withheld)
        if not self.dry_run:
            refused_now = ",".join(sorted({d.side for d in the_plan.refused_deletes}))
            if refused_now or refused_before:
                self.state.begin()
                self.state.set_meta(refusal_key, refused_now)
                self.state.commit()
        report.refused = list(the_plan.refused)
        for reason in the_plan.refused:
            log.warning(
                "%s: deletions refused: %s; rerun with --force-delete if intended", name, reason
            )
        rule = folders["a"].retention if folders["a"] is not None else None
        if self.dry_run:
            report.planned = the_plan.count()
            for action in the_plan.copies + the_plan.flags + the_plan.deletes:
                log.info("%s: would %s", name, describe(action))
            for copy in the_plan.withheld:
                log.info("%s: would not %s: refused before", name, describe(copy))
            if rule is not None:
                going = self._expired(rule, pairs, listings, set())
                if rule.after_download:
                    going += [c.key for c in the_plan.copies if c.src == "a"]
                report.planned["delete_a"] += len(going)
                for key in going:
                    log.info("%s: would delete remote %s (%s)", name, key, rule.describe())
            return report

        # Pairs re-linked by content during the copies (a message that vanished and came
        # back identical): their planned deletion or tombstone no longer applies.
        self._local.relinked: set[int] = set()
        self._local.written: set[str] = set()  # sides this run changed
        self._local.arrived: set[str] = set()  # local keys this run copied in
        self._copies(fstate, the_plan, folders, listings, pairs, report)
        self._flags(the_plan.flags, folders, report)
        self._deletes(
            [d for d in the_plan.deletes if d.pair.id not in self._local.relinked], folders, report
        )
        self.state.begin()
        self._bookkeeping(the_plan)
        fstate.last_sync = time.time()
        if not report.errors:
            # Only a clean run may vouch for the folder: with a cursor saved, an unchanged
            # folder is not listed next time, so a failed message would never be retried.
            # A side this run wrote to is vouched for only if it can prove nobody else did.
            for side in self._local.written:
                cursors[side] = folders[side].cursor_after_writes()
            fstate.cursor_a, fstate.cursor_b = cursors["a"], cursors["b"]
            self._copies_settled(fstate)
        clean = not report.errors and not report.refused
        signature = self._policy_signature() if clean else ""
        # With a retention rule the run is clean only once its deletions are done too:
        # else an unchanged folder would be skipped with messages still due.
        self.state.set_meta(f"clean:{fstate.id}", signature if rule is None else "")
        self.state.save_folder(fstate)
        self.state.commit()
        step("folder done")
        if rule is not None and not report.errors:
            self._expire(rule, fstate, folders, listings, report)
            if clean and not report.errors:
                self.state.begin()
                self.state.set_meta(f"clean:{fstate.id}", signature)
                self.state.commit()
        return report

    def _copies_settled(self, fstate: FolderState) -> None:
        """After a run without errors (in its transaction): every copy from a side it
        copies from was recorded, refused or is gone with its source message, so none
        is under way any more; the journal of those sides is emptied."""
        for side in ("a", "b"):
            if self.policy.writes(other(side)):
                self.state.forget_pending(fstate.id, side)

    def _bookkeeping(self, the_plan: Plan) -> list:
        """Apply the plan's tombstones and forgotten pairs (in the caller's transaction),
        except for pairs the copies re-linked; returns the actions applied."""
        applied = []
        for action in the_plan.bookkeeping:
            if action.pair.id in self._local.relinked:
                continue
            if isinstance(action, Forget):
                self.state.delete_pair(action.pair)
            elif isinstance(action, Tombstone):
                setattr(action.pair, f"key_{action.side}", None)
                self.state.update_pair(action.pair)
            applied.append(action)
        return applied

    # page by page (EWS) -----------------------------------------------------------------
    def _paged(self, fstate: FolderState, folders) -> bool:
        """A keep-pull from a source that reports its changes page by page: each page is
        planned, applied and committed with the source's cursor after it."""
        a, b = folders["a"], folders["b"]
        return (
            not self.dry_run
            and self.policy.direction == "pull"
            and self.policy.delete == "keep"
            and a is not None
            and b is not None
            and a.paged
            and fstate.validity("a") in (None, a.validity)
            and fstate.validity("b") in (None, b.validity)
        )

    def _sync_pages(self, name, fstate: FolderState, folders, report) -> FolderReport:
        """So an interruption in a 50,000-message folder costs at most one page: the
        messages of each page are copied, made durable and recorded, then the source's
        cursor after that page is saved with them.  A page with an error stops the
        cursor there (the next run sees those changes again; what was recorded is not
        copied twice)."""
        folder_a, folder_b = folders["a"], folders["b"]
        pairs = self.state.pairs(fstate.id)
        listing_b, cursor_b = self._list("b", folder_b, fstate, pairs, report)
        fstate.validity_a, fstate.validity_b = folder_a.validity, folder_b.validity
        self._local.relinked = set()
        self._local.written = set()
        self._local.arrived = set()
        by_a = {p.key_a: p for p in pairs if p.key_a is not None}
        known = {key: pair.flags for key, pair in by_a.items()}
        advancing = True
        pages = 0
        for page, cursor_a in folder_a.pages(fstate.cursor("a"), known):
            if page is None:
                raise _Relist()
            pages += 1
            listing_a = {key: info for key, info in page.items() if info is not None}
            page_pairs = [by_a[key] for key in page if key in by_a]
            folder_a.recall_versions(
                {p.key_a: p.version_a for p in page_pairs if p.key_a and p.version_a}
            )
            refused_a = self._local.refused["a"]
            the_plan = plan(
                listing_a,
                listing_b,
                page_pairs,
                self.policy,
                folder_a.persists,
                folder_b.persists,
                frozenset(),
                None if self.retry_refused else {"a": refused_a},
            )
            report.withheld += len(the_plan.withheld)
            listings = {"a": listing_a, "b": listing_b}
            self._copies(fstate, the_plan, folders, listings, pairs, report)
            for pair in self.state.pairs_for(fstate.id, list(page)):
                if pair.key_a not in by_a:  # recorded by this page's copies
                    by_a[pair.key_a] = pair
                    pairs.append(pair)
                    if pair.key_b is not None:
                        listing_b[pair.key_b] = Info(pair.flags, 0, 0.0)
            self._flags(the_plan.flags, folders, report)
            advancing = advancing and not report.errors
            self.state.begin()
            keys_a = {id(action): action.pair.key_a for action in the_plan.bookkeeping}
            for action in self._bookkeeping(the_plan):  # (a tombstone clears key_a)
                by_a.pop(keys_a[id(action)], None)
            gone = [key for key, info in page.items() if info is None and key in refused_a]
            self.state.forget_refusals(fstate.id, "a", gone)  # deleted on the source
            refused_a.difference_update(gone)
            if advancing:
                fstate.cursor_a = cursor_a
            self.state.save_folder(fstate)
            self.state.commit()
            step("page done")
        log.debug("%s: %d page(s) applied", name, pages)
        fstate.last_sync = time.time()
        if not report.errors:
            if "b" in self._local.written:
                cursor_b = folder_b.cursor_after_writes()
            fstate.cursor_b = cursor_b
        self.state.begin()
        clean = not report.errors
        if clean:
            self._copies_settled(fstate)
        self.state.set_meta(f"clean:{fstate.id}", self._policy_signature() if clean else "")
        self.state.save_folder(fstate)
        self.state.commit()
        step("folder done")
        return report

    # retention (POP3 delete = "after-download", delete_after_days) ----------------------
    def _expired(self, rule: Retention, pairs, listings, arrived: set[str]) -> list[str]:
        """Remote keys the rule lets go: only messages still on the remote side whose
        local copy is recorded and there (listed, or copied in by this run), so a local
        tree that vanished (an unmounted disk) never lets anything go."""
        recorded = {
            p.key_a: p.added
            for p in pairs
            if p.key_a is not None
            and p.key_a in listings["a"]
            and p.key_b is not None
            and (p.key_b in listings["b"] or p.key_b in arrived)
        }
        return expired(recorded, rule, self.clock())

    def _expire(self, rule: Retention, fstate, folders, listings, report) -> None:
        pairs = self.state.pairs(fstate.id)
        keys = self._expired(rule, pairs, listings, self._local.arrived)
        if not keys:
            return
        by_key = {p.key_a: p for p in pairs if p.key_a is not None}
        actions = [Delete("a", key, by_key[key]) for key in keys]
        log.info(
            "%s: deleting %d message(s) from the server (%s)",
            fstate.name_a,
            len(keys),
            rule.describe(),
        )
        # One batch: the server deletes only when the session ends, all or nothing.  The
        # pairs stay as tombstones: the local copies remain known.
        self._deletes(actions, folders, report, batch=len(actions), tombstone=True)

    # UIDVALIDITY changes ------------------------------------------------------------
    def _rematch(self, fstate, side, folders, listings, report) -> None:
        """Every key of `side` is void: find the messages again, by header and size,
        then by content hash; in a folder that normalises what it stores (a server that
        rewrote the copies mailsync gave it) also as it stores them, against the other
        side's copy (message.tolerant_fingerprint), so such a copy is neither taken for
        deleted nor copied again."""
        folder = folders[side]
        listing = listings[side]
        # Pairs whose other side still has its message go first: of two identical
        # messages of which one survived, the survivor belongs to the live pair.
        there = listings[other(side)]
        pairs = sorted(
            (p for p in self.state.pairs(fstate.id) if p.key(side) is not None),
            key=lambda p: p.key(other(side)) not in there,
        )
        assigned: dict[int, str] = {}  # id(pair) -> new key
        remaining = set(listing)
        # Cheap first: header + size where the store can tell without bodies (IMAP).
        idents = folder.header_digests(listing) or {}
        if idents:
            by_ident: dict[str, list[str]] = {}
            for key, ident in idents.items():
                by_ident.setdefault(ident, []).append(key)
            wanted = [p.ident for p in pairs if p.ident]
            for pair in pairs:
                keys = by_ident.get(pair.ident or "")
                if keys and len(keys) == 1 and wanted.count(pair.ident) == 1:
                    assigned[id(pair)] = keys[0]
                    remaining.discard(keys[0])
        # The rest by content hash, which needs the bodies.
        rest = [p for p in pairs if id(p) not in assigned]
        if rest and remaining:
            prints = folder.fingerprints(sorted(remaining))
            if len(prints) < len(remaining):
                # An unreadable message would pass for a deleted one, and a deletion may
                # propagate: better to stop here and try again next run.
                raise FolderError(
                    f"{fstate.name_a}: the {SIDE_NAMES[side]} side's validity changed and "
                    f"{len(remaining) - len(prints)} of its messages cannot be read to "
                    "re-match them; nothing was changed, rerun when they can be read"
                )
            by_hash: dict[str, list[str]] = {}
            for key, digest in prints.items():
                by_hash.setdefault(digest, []).append(key)
            for pair in rest:
                keys = by_hash.get(pair.hash or "")
                if keys:
                    assigned[id(pair)] = keys.pop()
                    remaining.discard(assigned[id(pair)])
            rest = [p for p in rest if id(p) not in assigned]
            if folder.normalises and rest and remaining:
                self._rematch_tolerant(rest, side, folders, there, remaining, assigned)
        found = lost = 0
        self.state.begin()
        for pair in pairs:
            new_key = assigned.get(id(pair))
            setattr(pair, f"key_{side}", new_key)
            if new_key is None:
                lost += 1
                if pair.key(other(side)) is None:
                    self.state.delete_pair(pair)
                    continue
            else:
                found += 1
            self.state.update_pair(pair)
        setattr(fstate, f"validity_{side}", folder.validity)
        self.state.save_folder(fstate)
        self.state.commit()
        report.notes.append(
            f"validity of the {SIDE_NAMES[side]} side changed: {found} messages re-matched "
            f"by content, {lost} no longer there"
        )
        log.warning("%s: %s", fstate.name_a, report.notes[-1])

    @staticmethod
    def _rematch_tolerant(rest, side, folders, there, remaining, assigned) -> None:
        """Pairs still unmatched whose message the other side still has: that copy's
        tolerant digest against those of `side`'s unclaimed messages, each taken once.
        (Their bodies are read a second time: only a server that rewrote them gets here.)"""
        if folders[other(side)] is None:
            return
        by_digest: dict[str, list[str]] = {}
        for key, data in folders[side].fetch_many(sorted(remaining)):
            if not isinstance(data, MessageError):
                by_digest.setdefault(tolerant_fingerprint(data), []).append(key)
            del data  # not kept alive while the next (maybe 50 MB) body is fetched
        wanted = {p.key(other(side)): p for p in rest if p.key(other(side)) in there}
        for key, data in folders[other(side)].fetch_many(list(wanted)):
            if isinstance(data, MessageError):
                continue
            keys = by_digest.get(tolerant_fingerprint(data))
            del data
            if keys:
                assigned[id(wanted[key])] = keys.pop(0)

    # copies ---------------------------------------------------------------------------
    def _copies(self, fstate, the_plan: Plan, folders, listings, pairs, report) -> None:
        paired = {"a": set(), "b": set()}
        for src in ("a", "b"):
            copies = [
                c
                for c in the_plan.copies
                if c.src == src
                and c.key not in paired[src]
                and (c.pair is None or c.pair.id not in self._local.relinked)
            ]
            if not copies:
                continue
            dst = other(src)
            self._copy_batch(fstate, src, dst, copies, folders, listings, pairs, report, paired)

    def _copy_batch(self, fstate, src, dst, copies, folders, listings, pairs, report, paired):
        """Copy messages from side `src` to `dst`, recognising copies already there (by
        content: exact, then as the destination stores it; then, for messages an earlier
        run may have sent, by their headers), in batches each made durable and then
        recorded in one transaction.  To a destination that normalises, each batch's
        source keys are recorded first, in one transaction of their own (the journal of
        copies under way, state.py), so that the next run knows what may be there."""
        source, target = folders[src], folders[dst]
        by_key = {c.key: c for c in copies}
        matches: _Matches | None = None  # built on first use
        pending: list[Pair] = []
        obsolete: list[Pair] = []
        accepted: list[str] = []  # source keys refused before, copied after all (a retry)
        pending_bytes = 0
        bar = self.progress(len(copies), f"{fstate.name_a} -> {SIDE_NAMES[dst]}")
        # Copies an earlier run may have sent without recording them, and how far this
        # run's journal reaches (in the order the bodies are fetched).
        journal = target.normalises
        sent_before = self.state.pending_keys(fstate.id, src) if journal else set()
        order = list(by_key)
        journaled_to = 0  # order[:journaled_to] is in the journal

        def write_journal(position: int) -> None:
            """Record the next batch of source keys from `position` on, before any of
            them is sent: as many as a batch of copies holds, by count and listed size."""
            nonlocal journaled_to
            end, size = position, 0
            while end < len(order) and end - position < BATCH_MESSAGES and size < BATCH_BYTES:
                size += listings[src][order[end]].size if order[end] in listings[src] else 0
                end += 1
            self.state.begin()
            self.state.record_pending(fstate.id, src, order[position:end])
            self.state.commit()
            step("journal")
            journaled_to = end

        def commit():
            nonlocal pending, pending_bytes
            if not pending:
                return
            target.flush()
            step("flush")
            self.state.begin()
            for pair in obsolete:
                self.state.delete_pair(pair)
            obsolete.clear()
            self.state.forget_refusals(fstate.id, src, accepted)
            accepted.clear()
            for pair in pending:
                if folders["a"] is not None:  # after flush: what the writes made of it
                    pair.version_a = folders["a"].version(pair.key_a)
                if pair.id is None:
                    self.state.add_pair(fstate.id, pair)
                else:
                    self.state.update_pair(pair)
            if journal:
                self.state.forget_pending(fstate.id, src, [pair.key(src) for pair in pending])
            self.state.commit()
            step("commit")
            pending, pending_bytes = [], 0

        try:
            items = source.fetch_many(order)
            position = {key: n for n, key in enumerate(order)}
            while True:
                data = None  # let the last body go before the next is fetched (50 MB mail)
                try:
                    key, data = next(items)
                except StopIteration:
                    break
                copy = by_key[key]
                bar.update(1)
                if isinstance(data, MessageError):
                    report.errors.append(str(data))
                    log.error("%s", data)
                    continue
                digest = fingerprint(data)
                if matches is None:
                    matches = self._match_index(
                        pairs, src, dst, target, listings, paired[dst], bool(sent_before)
                    )
                match, how = matches.find(data, digest, key in sent_before, paired[dst])
                if (
                    match is None
                    and matches.unreadable
                    and matches.unreadable & _stored_sizes(data)
                ):
                    error = (
                        f"{fstate.name_a}: cannot tell whether message {key} is already on the "
                        f"{SIDE_NAMES[dst]} side: a message of its size there is unreadable; "
                        "not copying it until that message can be read"
                    )
                    report.errors.append(error)
                    log.error("%s", error)
                    continue
                flags = copy.flags - {RECENT}  # (see _append_flags)
                if match is not None:
                    dst_key, pair = match
                    if pair is not None and pair.id is not None:
                        self._local.relinked.add(pair.id)
                    self._link(flags, dst, dst_key, target, listings[dst])
                    if pair is not None and copy.pair is not None and pair is not copy.pair:
                        obsolete.append(copy.pair)  # a resurrected message met its tombstone
                    pair = pair or copy.pair or self._new_pair(copy, digest)
                    paired[dst].add(dst_key)
                    report.linked += 1
                    log.info(
                        "%s: linked %s %s to %s %s (%s)",
                        fstate.name_a,
                        SIDE_NAMES[src],
                        key,
                        SIDE_NAMES[dst],
                        dst_key,
                        how,
                    )
                else:
                    if journal and position[key] >= journaled_to:
                        write_journal(position[key])
                    # Sources that do not know when a message arrived (POP3): its headers.
                    arrival = copy.arrival or arrival_date(data) or self.clock()
                    append_flags = self._append_flags(flags, key, source, target, listings[src])
                    try:
                        dst_key = target.append(data, append_flags, arrival)
                    except RefusedError as error:
                        self._refused(fstate, src, key, digest, data, error, report)
                        continue
                    except MessageError as error:
                        report.errors.append(str(error))
                        log.error("%s", error)
                        continue
                    step("append")
                    self._local.written.add(dst)
                    if dst == "b":
                        self._local.arrived.add(dst_key)
                    pair = copy.pair or self._new_pair(copy, digest)
                    setattr(
                        report,
                        f"copied_{src}_to_{dst}",
                        getattr(report, f"copied_{src}_to_{dst}") + 1,
                    )
                    log.info(
                        "%s: copied %s %s to %s %s",
                        fstate.name_a,
                        SIDE_NAMES[src],
                        key,
                        SIDE_NAMES[dst],
                        dst_key,
                    )
                setattr(pair, f"key_{src}", key)
                setattr(pair, f"key_{dst}", dst_key)
                pair.flags, pair.hash, pair.ident = flags, digest, header_digest(data)
                if key in self._local.refused[src]:
                    accepted.append(key)
                paired[src].add(key)
                paired[dst].add(dst_key)
                pending.append(pair)
                pending_bytes += len(data)
                if len(pending) >= BATCH_MESSAGES or pending_bytes >= BATCH_BYTES:
                    commit()
            commit()
        finally:
            bar.close()

    def _refused(self, fstate, src, key, digest, data, error: RefusedError, report) -> None:
        """The destination refused a message for good: named, recorded (not as copied),
        and not offered again on later runs unless --retry-refused."""
        about = summary(data)
        dst = SIDE_NAMES[other(src)]
        self.state.begin()
        self.state.record_refusal(fstate.id, src, key, digest, about, error.reason)
        self.state.forget_pending(fstate.id, src, [key])  # not on the destination
        self.state.commit()
        self._local.refused[src].add(key)
        report.refused_messages.append(
            {"folder": fstate.name_a, "key": key, **about, "reason": error.reason}
        )
        text = (
            f"{fstate.name_a}: the {dst} side refuses {SIDE_NAMES[src]} message {key} "
            f"({summary_line(about)}): {error.reason}; recorded, later runs will not offer it "
            "again (--retry-refused does)"
        )
        report.errors.append(text)
        log.error("%s", text)

    def _new_pair(self, copy: Copy, digest: str) -> Pair:
        return Pair(None, None, None, copy.flags, digest, added=self.clock())

    def _match_index(self, pairs, src, dst, target: Folder, listings, paired_now, by_headers):
        """What a copy may turn out to be on the destination (_Matches): by content hash,
        unknown messages (an interrupted copy, a first sync of two full folders) and
        known ones whose source message is gone (a tombstone, or a message that vanished
        and came back); for a destination that normalises, the unknown ones by
        message.tolerant_fingerprint() (a copy it stored changed), and, with
        `by_headers` (an earlier run may have sent copies it did not record), by
        message.header_identity(); and the sizes of unknown ones that cannot be read."""
        matches = _Matches()
        known = set()
        for pair in pairs:
            key = pair.key(dst)
            if key is None:
                continue
            known.add(key)
            src_key = pair.key(src)
            gone = src_key is None or src_key not in listings[src]
            if gone and key in listings[dst] and pair.hash:
                matches.exact.setdefault(pair.hash, []).append((key, pair))
        unknown = [k for k in listings[dst] if k not in known and k not in paired_now]
        for key, data in target.fetch_many(unknown) if unknown else ():  # one read each
            if isinstance(data, MessageError):
                matches.unreadable.add(listings[dst][key].size)
                continue
            matches.exact.setdefault(fingerprint(data), []).append((key, None))
            if target.normalises:
                matches.loose.setdefault(tolerant_fingerprint(data), []).append((key, None))
                identity = header_identity(data) if by_headers else None
                if identity is not None:
                    matches.headers.setdefault(identity, []).append((key, None))
            del data  # not kept alive while the next (maybe 50 MB) body is read
        return matches

    @staticmethod
    def _append_flags(flags, key, source: Folder, target: Folder, listing) -> frozenset[str]:
        """The flags a copy is appended with.  \\Recent (unseen by any mail reader) goes
        only to folders that mark it (Maildir: new/ or cur/), so it never reaches a
        server or the state: from a source that marks it too, as that source listed the
        message (a Maildir's new/ stays new/, its cur/ stays cur/); from any other source
        always, so such a folder files the copy as it always did (new/ unless it has
        flags)."""
        if not target.marks_recent:
            return flags
        info = listing.get(key)
        if not source.marks_recent or (info is not None and RECENT in info.flags):
            return flags | {RECENT}
        return flags

    def _link(self, flags, dst, dst_key, target: Folder, listing):
        """Adopt an existing destination message; the source's flags win."""
        now = listing[dst_key].flags if dst_key in listing else frozenset()
        add = frozenset(f for f in flags - now if target.persists(f))
        remove = frozenset(f for f in now - flags if target.persists(f))
        if add or remove:
            target.set_flags(dst_key, add, remove)
            self._local.written.add(dst)

    # flags ------------------------------------------------------------------------------
    def _flags(self, actions: list[SetFlags], folders, report) -> None:
        for start in range(0, len(actions), BATCH_MESSAGES):
            batch = actions[start : start + BATCH_MESSAGES]
            done = []
            for action in batch:
                try:
                    for side, (add, remove) in action.changes.items():
                        folders[side].set_flags(action.pair.key(side), add, remove)
                        self._local.written.add(side)
                        setattr(report, f"flags_{side}", getattr(report, f"flags_{side}") + 1)
                        log.info("%s: %s", folders[side].name, describe(action))
                        step("flags")
                except MessageError as error:
                    report.errors.append(str(error))
                    continue
                done.append(action)
            for folder in folders.values():
                if folder is not None:
                    folder.flush()
            self.state.begin()
            for action in done:
                action.pair.flags = action.new_flags
                if folders["a"] is not None:
                    action.pair.version_a = folders["a"].version(action.pair.key_a)
                self.state.update_pair(action.pair)
            self.state.commit()
            step("commit flags")

    # deletions ----------------------------------------------------------------------------
    def _deletes(
        self, actions: list[Delete], folders, report, batch: int = BATCH_MESSAGES, tombstone=False
    ) -> None:
        """With `tombstone`, the pairs are kept with the deleted side's key cleared (the
        other side keeps its message and it stays known), else forgotten."""
        size = max(1, batch)
        for start in range(0, len(actions), size):
            batch_actions = actions[start : start + size]
            done = []
            for action in batch_actions:
                try:
                    self._local.written.add(action.side)
                    removed = folders[action.side].delete(action.key)
                except MessageError as error:
                    report.errors.append(str(error))
                    continue
                step("delete")
                setattr(
                    report, f"deleted_{action.side}", getattr(report, f"deleted_{action.side}") + 1
                )
                log.info("%s: %s", folders[action.side].name, describe(action))
                done.append((action, removed))
            for folder in folders.values():
                if folder is not None:
                    folder.flush()
            step("flush deletes")
            self.state.begin()
            for action, removed in done:
                if removed != action.key:
                    # Identical copies are interchangeable (mbox): the pair that pointed
                    # at the copy actually removed now points at the one we named.
                    self._repoint(action, removed)
                if tombstone:
                    setattr(action.pair, f"key_{action.side}", None)
                    self.state.update_pair(action.pair)
                else:
                    self.state.delete_pair(action.pair)
            self.state.commit()
            step("commit deletes")

    def _repoint(self, action: Delete, removed: str) -> None:
        column = f"key_{action.side}"
        self.state.db.execute(
            f"UPDATE pairs SET {column} = ? WHERE {column} = ? AND id != ? AND folder_id = "
            "(SELECT folder_id FROM pairs WHERE id = ?)",
            (action.key, removed, action.pair.id, action.pair.id),
        )


@dataclass
class _Matches:
    """Destination messages a copy may be, each as (destination key, pair or None), in
    lists per digest: see Syncer._match_index."""

    exact: dict[str, list] = field(default_factory=dict)  # message.fingerprint()
    loose: dict[str, list] = field(default_factory=dict)  # message.tolerant_fingerprint()
    headers: dict[str, list] = field(default_factory=dict)  # message.header_identity()
    unreadable: set[int] = field(default_factory=set)  # sizes of unreadable unknown ones

    def find(self, data: bytes, digest: str, sent_before: bool, used: set[str]):
        """(destination key, pair or None) for a source message whose fingerprint is
        `digest`, taken out of the lists, and how it was found; (None, "") if none is
        left.  Exact content first, then as the destination stores it; by headers only
        for a message an earlier run may have sent (`sent_before`), never for mail the
        destination had of its own."""
        match = _unused(self.exact.get(digest), used)
        if match is not None:
            return match, "same content"
        if self.loose:
            match = _unused(self.loose.get(tolerant_fingerprint(data)), used)
            if match is not None:
                return match, "same content as the destination stores it"
        if sent_before and self.headers:
            identity = header_identity(data)
            match = _unused(self.headers.get(identity), used) if identity else None
            if match is not None:
                return match, "sent before but not recorded: same Message-ID, Date and From"
        return None, ""


def _unused(candidates: list | None, used: set[str]):
    """The last (destination key, pair) of `candidates` whose key no copy took yet (a
    message is in both match indexes), taken out of the list; None if there is none."""
    while candidates:
        candidate = candidates.pop()
        if candidate[0] not in used:
            return candidate
    return None


def _stored_sizes(data: bytes) -> set[int]:
    """The sizes a destination may list `data` with: LF or CRLF (IMAP), with the one
    final line end a store may add, and without lone CRs (the changes of size
    message.tolerant_fingerprint tolerates)."""
    lf, crlf = len(data), len(data) + data.count(b"\n")
    sizes = {lf, lf + 1, crlf, crlf + 2}
    lone_crs = data.count(b"\r") - data.count(b"\r\n")
    return sizes | {size - lone_crs for size in sizes} if lone_crs > 0 else sizes


class _Relist(Exception):
    """The paged source forgot the cursor: the folder is listed in full instead."""


def describe(action) -> str:
    if isinstance(action, Copy):
        return f"copy {SIDE_NAMES[action.src]} {action.key} to {SIDE_NAMES[other(action.src)]}"
    if isinstance(action, SetFlags):
        parts = []
        for side, (add, remove) in action.changes.items():
            change = " ".join([f"+{f}" for f in sorted(add)] + [f"-{f}" for f in sorted(remove)])
            parts.append(f"{SIDE_NAMES[side]} {action.pair.key(side)} {change}")
        return "flags " + "; ".join(parts) if parts else "record flags"
    if isinstance(action, Delete):
        return f"delete {SIDE_NAMES[action.side]} {action.key}"
    return type(action).__name__.lower()


@contextlib.contextmanager
def opened(*stores: Store):
    try:
        yield stores
    finally:
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()

"""The channel runner: which folders a run syncs, in what order, how many at once (what
isync's main_sync.c is to its sync.c, here folder_sync.py).

Syncer.run() lists both stores' folders, follows folders renamed since the last run
(renames.py), chooses the folders to sync and pairs each remote folder with its local
folder (folders.map_folders), then syncs each pair (folder_sync.FolderSync) -- several
at once over their own connections with jobs > 1 -- with its failures confined to the
folder, and says what the run held back.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mailsync.errors import FolderError, MailsyncError, MessageError
from mailsync.folder_names import NameRules, store_pairs
from mailsync.folder_sync import FolderSync, SyncOptions, unchanged_since_clean_run
from mailsync.folders import FolderMap, map_folders
from mailsync.policy import SIDE_NAMES, Policy, Selection, other
from mailsync.renames import Renames, follow_renames
from mailsync.report import FolderReport, ProgressFactory, Report, no_progress, report_problems
from mailsync.state import FolderState, State
from mailsync.stores.base import Folder, Store

log = logging.getLogger("mailsync")


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
        pace: Callable[[int], None] | None = None,
        name_rules: NameRules | None = None,
        selection: Selection | None = None,
    ):
        self.stores = {"a": store_a, "b": store_b}  # the main thread's
        self.state = state
        self.policy = policy
        self.options = SyncOptions(
            policy,
            dry_run,
            retry_refused,
            clock,
            progress or no_progress,
            selection=selection or Selection(),
            pace=pace,
        )
        # Remote folder name -> local name, for the folders it names (a channel's
        # folder = "POP/provider" maps INBOX); with a map, only its folders are synced.
        self.selection = FolderMap(dict(folder_map or {}), tuple(patterns or ["*"]))
        self.jobs = max(1, jobs) if open_stores is not None else 1
        self.open_stores = open_stores
        # Set by run(): the renames it followed, the folder mapping, the folder kinds.
        self.renames = Renames([], {})
        self.mapping = self.selection
        self.kinds: dict[str, str] = {}
        # Explicit folder name rules (--map, a channel's rename) and, set by run(), the
        # folders paired under other names (folder_names.store_pairs): remote -> (local, why).
        self.name_rules = name_rules or NameRules()
        self.name_pairs: dict[str, tuple[str, str]] = {}

    def run(self) -> Report:
        """Sync every folder the job covers; store-level errors (StoreError, ...) stop
        it, a folder's are in its FolderReport."""
        report = Report()
        # The wall clock, as State stamps refusals with it (_held_back compares them).
        started = time.time()
        existing = {side: set(self.stores[side].list_folders()) for side in ("a", "b")}
        for side in ("a", "b"):  # parts of a tree that hold mail but are no folder
            report_problems(self.policy, side, self.stores[side].problems, report.errors)
        # Calendars and address books (EWS, Graph) become vdirs on the local side; a local
        # vdir is a calendar on the remote side too, which a mail server cannot hold.
        self.kinds = {**self.stores["b"].folder_kinds(), **self.stores["a"].folder_kinds()}
        report.kinds = self.kinds
        self.renames = renames = follow_renames(
            self.state, self.stores, self.selection, existing, self.options.dry_run
        )
        self.name_pairs = store_pairs(
            self.stores["a"],
            self.stores["b"],
            existing,
            renames.rows,
            self.name_rules,
            self.policy.direction,
            self.state,
        )
        given = self.stores["a"].local_names()
        given.update((name, local) for name, (local, _) in self.name_pairs.items())
        self.mapping = map_folders(
            self.selection.channel_map,
            self.selection.patterns,
            renames.rows,
            renames.former,
            renames.renamed,
            given,
            self.stores["a"].redundant_folders(),
        )
        names = self._choose(existing, report)
        for name in names:
            if (
                name in self.name_pairs
                and self.mapping.local_name(name) == self.name_pairs[name][0]
            ):
                local, why = self.name_pairs[name]
                report.folder_names.append({"remote": name, "local": local, "why": why})
                log.info("%s: its local folder is %s (%s)", name, local, why)
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

    def _choose(self, existing: dict[str, set[str]], report: Report) -> list[str]:
        """The remote folders to sync, INBOX first: those of the sides the run copies
        from (local folders under their remote names) and those the state knows (so a
        vanished folder is noticed), as the job's folder mapping selects them; with a
        warning for patterns that match nothing, or for no folder at all."""
        mapping = self.mapping
        remote_of = mapping.remote_names()
        candidates = set()
        read_from = [s for s in ("a", "b") if self.policy.writes(other(s))]
        for side in read_from:
            candidates |= {remote_of.get(n, n) for n in existing[side]}
        known = self.renames.known
        if not mapping.channel_map:
            candidates |= known
        names = mapping.choose(
            candidates,
            lambda name: (
                name in known or name in existing["a"] or mapping.local_name(name) in existing["b"]
            ),
        )
        for name, why in sorted(mapping.left_out(candidates).items()):
            log.info("%s: left out (%s); name it in --folders to sync it", name, why)
        if not mapping.channel_map:
            if not candidates:
                where = " or ".join(self.stores[side].describe() for side in read_from)
                report.warnings.append(f"found no folder in {where}; nothing to sync")
            else:
                report.warnings.extend(mapping.warnings(candidates))
            for warning in report.warnings:
                log.warning("%s", warning)
        return names

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

    def _folder_state(self, name: str, state: State) -> FolderState:
        """The state of remote folder `name` (created empty if it is new)."""
        default = (name, self.mapping.local_name(name))
        name_a, name_b = self.renames.state_names.get(name, default)
        return state.folder(name_a, name_b)

    def _quickly_untouched(self, name: str, existing: dict[str, set[str]]) -> bool:
        """unchanged_since_clean_run() for a folder that exists on both sides with
        cursors, checked with the main thread's stores; False whenever in doubt (the
        folder is then synced)."""
        local = self.mapping.local_name(name)
        renames = self.renames
        if self.options.replans or name in renames.notes:
            return False
        if name in renames.blocked or name not in existing["a"] or local not in existing["b"]:
            return False
        fstate = self._folder_state(name, self.state)
        if not fstate.cursor_a or not fstate.cursor_b:
            return False
        if renames.ids.get(name) and fstate.ident_a != renames.ids[name]:
            return False
        folders: dict[str, Folder | None] = {}
        try:
            folders["a"] = self.stores["a"].open_folder(name)
            folders["b"] = self.stores["b"].open_folder(local)
            untouched = unchanged_since_clean_run(self.state, fstate, folders, self.options)
        except Exception:  # in doubt: the folder is synced, and fails there if it must
            return False
        finally:
            for folder in folders.values():
                if folder is not None:
                    with contextlib.suppress(Exception):
                        folder.close()
        if untouched:
            log.debug("%s: unchanged on both sides since the last clean run", name)
        return untouched

    def _sync_folder(
        self, name: str, existing: dict[str, set[str]], stores: dict[str, Store], state: State
    ) -> FolderReport:
        renames = self.renames
        notes = renames.notes.pop(name, [])
        folder = FolderSync(
            name,
            self.mapping.local_name(name),
            self._folder_state(name, state),
            stores,
            state,
            self.options,
            kind=self.kinds.get(name, "mail"),
            ident=renames.ids.get(name),
            notes=notes,
        )
        return folder.run(existing)

    def _guarded(
        self,
        name: str,
        existing: dict[str, set[str]],
        stores: dict[str, Store] | None = None,
        state: State | None = None,
    ) -> FolderReport:
        """The folder's sync (with the main thread's stores and state unless given), with
        its failures confined to the folder: a FolderError, a MessageError that escaped,
        or any unexpected exception (a bug, or a hostile server's input nobody foresaw;
        its traceback logged at debug level, -vv) becomes this folder's error and the
        other folders go on.  Store-level errors (StoreError, ConfigError, SafetyError),
        the state database's own errors and interrupts (KeyboardInterrupt is no
        Exception) still stop the run.  A folder whose local folder could not be moved
        (renames.py) is not synced: that is its error."""
        stores = stores or self.stores
        state = state or self.state
        if name in self.renames.blocked:
            folder_report = FolderReport(name)
            folder_report.errors.append(self.renames.blocked[name])
            return folder_report
        before = [store.throttled for store in stores.values()]
        folder_report = FolderReport(name)
        try:
            folder_report = self._sync_folder(name, existing, stores, state)
        except (FolderError, MessageError) as error:
            folder_report.errors.append(self._failed(name, error))
        except (MailsyncError, sqlite3.Error):
            raise
        except Exception as error:
            state.rollback()  # an error in the middle of a transaction: not half of it
            folder_report.errors.append(self._failed(name, error))
        finally:
            # The folder's share of its stores' waits (a store serves one folder at a time).
            for store, (waits, waited) in zip(stores.values(), before, strict=True):
                now_waits, now_waited = store.throttled
                folder_report.throttled += now_waits - waits
                folder_report.throttled_seconds += round(now_waited - waited, 3)
        return folder_report

    @staticmethod
    def _failed(name: str, error: Exception) -> str:
        """The line that says why folder `name` failed (logged)."""
        if isinstance(error, FolderError | MessageError):
            text = str(error)
        elif isinstance(error, OSError):
            where = f" ({error.filename})" if error.filename else ""
            text = f"{name}: {error.strerror or error}{where}"
        else:
            log.debug("%s: unexpected error", name, exc_info=error)
            text = (
                f"{name}: unexpected {type(error).__name__}: {error}; the other folders "
                "go on; run with -vv for details and please report it"
            )
        log.error("%s", text)
        return text

    def _run_parallel(self, names: list[str], existing: dict[str, set[str]]) -> list[FolderReport]:
        """Each worker thread opens its own stores (open_stores) and state handle on its
        first folder, and keeps them for the folders that follow."""
        assert self.open_stores is not None
        open_stores = self.open_stores
        workers: list[tuple[dict[str, Store], State]] = []
        lock = threading.Lock()
        mine = threading.local()

        def work(name: str) -> FolderReport:
            worker = mine.__dict__.get("worker")
            if worker is None:
                opened = open_stores()
                for store, main in zip(opened, (self.stores["a"], self.stores["b"]), strict=True):
                    store.adopt_listing(main)
                state = State(self.state.path, lock=False)
                worker = mine.worker = ({"a": opened[0], "b": opened[1]}, state)
                with lock:
                    workers.append(worker)
            return self._guarded(name, existing, *worker)

        try:
            with ThreadPoolExecutor(min(self.jobs, len(names))) as pool:
                return list(pool.map(work, names))
        finally:
            for stores, state in workers:
                for store in stores.values():
                    with contextlib.suppress(Exception):
                        store.close()
                state.close()

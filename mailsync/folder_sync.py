"""One folder pair, as isync's sync.c (the channel runner, sync.py, is its main_sync.c).

A FolderSync opens the remote folder and its local folder, lists both (or takes the
state's word for a side that can prove it is unchanged), asks the planner, and runs the
plan: copies (a -> b, then b -> a: copies.py), flag changes, deletions; then the
retention rule of a source that has one (retention.py).  It owns, as plain attributes,
everything about the pair that the steps share: the folder state, both folders, the
listings, the state's pairs, the report, and what this run did (relinked, written,
arrived).  A side whose validity changed is re-matched first (rematch.py); a keep-pull
from a paged source goes page by page instead (paged.py).

Every batch is made durable on the destination (Folder.flush) before the state records
it, so a crash at any point leaves each message exactly once after the next run:

* a message appended but not yet recorded is found again by its content hash when the
  next run copies the same source message ("match or append"), and is linked, not copied;
* a flag change or deletion applied but not recorded is seen as already done;
* an item whose content changed at the source (Folder.mutable_items) is copied again: the
  new copy is made durable, the old one deleted, then the pair recorded; killed in between,
  the next run still sees the version differ and finds the new copy by its content.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailsync.copies import BATCH_MESSAGES, Downloads, changed_at_source, copy_all
from mailsync.crashhook import step
from mailsync.errors import MessageError
from mailsync.message import Info
from mailsync.paged import Relist, is_paged, sync_pages
from mailsync.planner import (
    Delete,
    Forget,
    Groups,
    Persists,
    Plan,
    SetFlags,
    Tombstone,
    plan,
)
from mailsync.policy import SIDE_NAMES, Policy, Retention, Selection, other
from mailsync.rematch import rematch
from mailsync.report import (
    FolderReport,
    ProgressFactory,
    describe,
    no_progress,
    record_left_out,
    report_problems,
)
from mailsync.retention import expire, expired_keys
from mailsync.state import FolderState, Pair, State
from mailsync.stores.base import Cursor, Folder, Store

log = logging.getLogger("mailsync")


@dataclass(frozen=True)
class SyncOptions:
    """How a run syncs every folder pair of a channel."""

    policy: Policy
    dry_run: bool = False
    # Offer again the messages the destination refused for good on earlier runs.
    retry_refused: bool = False
    clock: Callable[[], float] = time.time  # "now": arrival dates, pairs' ages, retention
    progress: ProgressFactory = no_progress
    # Which never-copied messages are copied (--since, --before, --max-size).
    selection: Selection = field(default_factory=Selection)
    # The downloads under way, shared by the folders synced at once (copies.py).
    downloads: Downloads = field(default_factory=Downloads, compare=False)
    # Called with each message's size before it is appended (ratelimit.RateLimit: the
    # account's --max-rate); None: no pacing.
    pace: Callable[[int], None] | None = None

    @property
    def signature(self) -> str:
        """What a clean run of a folder is recorded under: a later run under another
        policy must plan again."""
        refill = "/refill" if self.policy.refill else ""
        return f"{self.policy.direction}/{self.policy.delete}{refill}"

    @property
    def replans(self) -> bool:
        """Whether this run plans every folder, even one unchanged since a clean run."""
        return self.dry_run or self.policy.force_delete or self.retry_refused


def unchanged_since_clean_run(
    state: State, fstate: FolderState, folders: dict[str, Folder | None], options: SyncOptions
) -> bool:
    """Both sides unchanged since a clean run under the same policy: nothing to plan,
    so not even the state's pairs are loaded (a 100,000-message rerun is STATUS calls
    and directory stats)."""
    if options.replans:
        return False
    if state.get_meta(f"clean:{fstate.id}") != options.signature:
        return False
    if account_ids_to_learn(state, fstate, folders["a"]):
        return False
    for side in ("a", "b"):
        folder = folders[side]
        cursor = fstate.cursor(side)
        if folder is None or not cursor or not folder.unchanged(cursor):
            return False
    return True


def account_ids_to_learn(state: State, fstate: FolderState, remote: Folder | None) -> bool:
    """Whether the remote folder's listing gives account ids (Folder.account_ids) that
    the state lacks for some of its pairs: it is then listed in full (FolderSync)."""
    return (
        remote is not None
        and remote.account_ids
        and not state.get_meta(f"account-ids:{fstate.id}")
        and state.lacks_account_ids(fstate.id)
    )


class FolderSync:
    """Syncs remote folder `name` with local folder `local`, once (run())."""

    def __init__(
        self,
        name: str,
        local: str,
        fstate: FolderState,
        stores: dict[str, Store],
        state: State,
        options: SyncOptions,
        kind: str = "mail",
        ident: str | None = None,
        notes: list[str] | None = None,
    ):
        self.name = name  # the remote folder's name
        self.local = local  # its local folder's name
        self.fstate = fstate
        self.stores = stores
        self.state = state
        self.options = options
        self.policy = options.policy
        self.kind = kind  # what the local folder holds if it is created (EWS: calendar...)
        self.ident = ident  # the remote folder's id, where the store told it
        self.report = FolderReport(name)
        self.report.notes.extend(notes or ())
        self.folders: dict[str, Folder | None] = {}  # None: not there, read as empty
        self.listings: dict[str, dict[str, Info]] = {"a": {}, "b": {}}
        self.pairs: list[Pair] = []
        # Keys of each side whose message the other side refused for good.
        self.refused: dict[str, set[str]] = {"a": set(), "b": set()}
        # Pairs re-linked by content during the copies (a message that vanished and came
        # back identical): their planned deletion or tombstone no longer applies.
        self.relinked: set[int] = set()
        self.written: set[str] = set()  # sides this run changed
        self.arrived: set[str] = set()  # local keys this run copied in
        self.listed_in_full = False  # the remote folder was listed without a cursor
        self.from_state: set[str] = set()  # sides whose listing the state stood in for

    def run(self, existing: dict[str, set[str]]) -> FolderReport:
        """Sync the pair; `existing`: each side's folder names.  Errors of a message go
        into the report; a FolderError (or worse) is the caller's to report."""
        fstate = self.fstate
        if self.options.dry_run and self.local != self.name:
            self.report.notes.append(f"local folder {self.local}")
        if self.ident and fstate.ident_a != self.ident and not self.options.dry_run:
            fstate.ident_a = self.ident
            self.state.begin()
            self.state.save_folder(fstate)
            self.state.commit()
        try:
            for side in ("a", "b"):
                self.folders[side] = self._open(side, existing)
            return self._sync_open()
        finally:
            for folder in self.folders.values():
                if folder is not None:
                    folder.close()

    # opening and listing ----------------------------------------------------------
    def _open(self, side: str, existing: dict[str, set[str]]) -> Folder | None:
        kind = self.kind  # (the folder's on whichever side has it: sync.py)
        name = self.local if side == "b" else self.name
        report, store = self.report, self.stores[side]
        # (A local folder named otherwise than its remote folder: Gmail's Sent, Archive.)
        as_ = f" as {name}" if side == "b" and name != self.name else ""
        if name in existing[side]:
            return store.open_folder(name)
        dry_run = self.options.dry_run
        if dry_run and self.policy.writes(side):
            why = store.creation_problem(name, kind)
            if why:
                error = f"{name}: cannot be created on the {SIDE_NAMES[side]} side: {why}"
                report.errors.append(error)
                log.error("%s", error)
            else:
                report.notes.append(f"would be created on the {SIDE_NAMES[side]} side{as_}")
        if not self.policy.writes(side) or dry_run:
            return None  # read as empty
        fstate = self.fstate
        had_any = any(p.key(side) is not None for p in self.state.pairs(fstate.id))
        folder = store.open_folder(name, create=True, kind=kind)
        if had_any:
            # The folder was removed on this side: refill it, never read that as
            # "delete everything" (mailsync never deletes folders).
            self.state.begin()
            self.state.forget_pairs(fstate.id)
            fstate.set_cursor(side, {})
            self.state.save_folder(fstate)
            self.state.commit()
            report.notes.append(
                f"re-created on the {SIDE_NAMES[side]} side; copying its messages again"
            )
        else:
            report.notes.append(f"created on the {SIDE_NAMES[side]} side{as_}")
        return folder

    def list_side(self, side: str, pairs: list[Pair]) -> tuple[dict[str, Info], Cursor]:
        """-> (listing, cursor to save).  An unchanged folder is not even listed: what
        the state knows (`pairs`) stands in for it."""
        folder = self.folders[side]
        if folder is None:
            return {}, {}
        try:
            return self._list_folder(side, folder, pairs)
        finally:
            self.report.skipped += len(folder.skipped)
            self.report.skipped_why.extend(folder.skipped)
            for note in folder.skipped:
                log.warning("%s: %s", self.fstate.name_a, note)
            report_problems(self.policy, side, folder.problems, self.report.errors)

    def _list_folder(
        self, side: str, folder: Folder, pairs: list[Pair]
    ) -> tuple[dict[str, Info], Cursor]:
        cursor = self.fstate.cursor(side)
        if side == "a" and account_ids_to_learn(self.state, self.fstate, folder):
            cursor = {}  # a listing in full, to learn them
        if cursor and folder.unchanged(cursor):
            listing = {
                key: Info(p.flags, 0, 0.0) for p in pairs if (key := p.key(side)) is not None
            }
            log.debug("%s: side %s unchanged since the last run", self.fstate.name_a, side)
            self.from_state.add(side)
            return listing, cursor
        if cursor:
            known = {key: p.flags for p in pairs if (key := p.key(side)) is not None}
            listing = folder.list_since(cursor, known)
        else:
            listing = folder.list()
            self.listed_in_full = self.listed_in_full or side == "a"
        return listing, folder.cursor()

    def _relist_for_refill(self, pairs: list[Pair], cursors: dict[str, Cursor]) -> None:
        """A message lost on one side and copied again from the other (Policy.refill)
        needs its arrival date, which a listing the state stood in for does not have
        (the copy would get the Date: header's time instead of INTERNALDATE): that side
        is listed for real when the other lost a message."""
        if not self.policy.refill:
            return
        for side in sorted(self.from_state):
            gone, folder = other(side), self.folders[side]
            lost = any(
                (key := p.key(gone)) is not None
                and key not in self.listings[gone]
                and p.key(side) is not None
                for p in pairs
            )
            if lost and folder is not None:
                log.debug("%s: side %s listed for a message to copy again", self.name, side)
                self.listings[side], cursors[side] = folder.list(), folder.cursor()
                self.from_state.discard(side)

    # the whole folder at once -----------------------------------------------------
    def _sync_open(self) -> FolderReport:
        name, fstate, folders, report = self.name, self.fstate, self.folders, self.report
        state, options = self.state, self.options
        if unchanged_since_clean_run(state, fstate, folders, options):
            log.debug("%s: unchanged on both sides since the last clean run", name)
            return report
        # Messages the other side refused for good before: a side with some is listed in
        # full (not from its cursor), so that a refused message deleted since is forgotten
        # and one to retry is seen; a paged source (EWS) only when retrying.
        for side in ("a", "b"):
            target = folders[other(side)]
            if target is not None and state.pending_keys(fstate.id, side):
                target.settle()  # (a run died copying into it)
        refused = {side: state.refused_keys(fstate.id, side) for side in ("a", "b")}
        self.refused = refused
        paged = is_paged(self)
        for side in ("a", "b"):
            if refused[side] and (options.retry_refused or not (paged and side == "a")):
                fstate.set_cursor(side, {})
        if paged:
            try:
                return sync_pages(self)
            except Relist:
                fstate.cursor_a = {}  # list the source in full, below
        pairs = state.pairs(fstate.id)
        listings, cursors = self.listings, {}
        for side in ("a", "b"):
            listings[side], cursors[side] = self.list_side(side, pairs)
        self._relist_for_refill(pairs, cursors)
        self._check_validities()
        self.pairs = pairs = state.pairs(fstate.id)
        self._learn_account_ids()
        if folders["a"] is not None:
            folders["a"].recall_versions(
                {p.key_a: p.version_a for p in pairs if p.key_a and p.version_a}
            )
        the_plan, refused_before = self._plan()
        rule = folders["a"].retention if folders["a"] is not None else None
        if options.dry_run:
            self._tell(the_plan, rule)
            return report
        self.relinked, self.written, self.arrived = set(), set(), set()
        copy_all(self, the_plan)
        self.set_flags(the_plan.flags)
        self.delete([d for d in the_plan.deletes if d.pair.id not in self.relinked])
        state.begin()
        self.bookkeeping(the_plan)
        fstate.last_sync = options.clock()
        if not report.errors:
            # Only a clean run may vouch for the folder: with a cursor saved, an unchanged
            # folder is not listed next time, so a failed message would never be retried.
            # A side this run wrote to is vouched for only if it can prove nobody else did.
            for side in self.written:
                written = folders[side]
                assert written is not None  # (this run wrote to it)
                cursors[side] = written.cursor_after_writes()
            # A message --since, --before or --max-size left out must be seen again by a
            # run without them: the cursor of its side stays where it was (its listing,
            # no download, tells it apart again).
            held = {copy.src for copy, _ in the_plan.left_out}
            for side in ("a", "b"):
                if side not in held:
                    fstate.set_cursor(side, cursors[side])
            self.copies_settled()
        clean = not report.errors and not report.refused
        signature = options.signature if clean else ""
        # With a retention rule the run is clean only once its deletions are done too:
        # else an unchanged folder would be skipped with messages still due.
        state.set_meta(f"clean:{fstate.id}", signature if rule is None else "")
        state.save_folder(fstate)
        state.commit()
        step("folder done")
        if rule is not None and not report.errors:
            expire(self, rule)
            if clean and not report.errors:
                state.begin()
                state.set_meta(f"clean:{fstate.id}", signature)
                state.commit()
        return report

    def _learn_account_ids(self) -> None:
        """Record the account ids (Info.account_id: Gmail's X-GM-MSGID) the listing gives
        for messages whose pairs have none (copied by a mailsync before account ids, or
        linked by content), so that their local copies serve the other folders too."""
        if self.options.dry_run:
            return
        listing = self.listings["a"]
        learnt = []
        for pair in self.pairs:
            info = listing.get(pair.key_a) if pair.key_a is not None else None
            if info is not None and info.account_id and pair.account_id_a != info.account_id:
                pair.account_id_a = info.account_id
                learnt.append(pair)
        remote = self.folders["a"]
        in_full = self.listed_in_full and remote is not None and remote.account_ids
        if learnt or in_full:
            self.state.begin()
            for pair in learnt:
                self.state.update_pair(pair)
            if in_full:
                # Learnt what a listing can teach: a message it gave no id (a broken
                # server) is no reason to list the folder in full again.
                self.state.set_meta(f"account-ids:{self.fstate.id}", "1")
            self.state.commit()

    def _check_validities(self) -> None:
        """A side whose validity changed is re-matched (its keys are void); then the
        validities and the refusals of messages deleted since are recorded."""
        fstate, state, refused = self.fstate, self.state, self.refused
        dry_run = self.options.dry_run
        for side in ("a", "b"):
            folder = self.folders[side]
            if folder is None:
                continue
            old = fstate.validity(side)
            if old is not None and old != folder.validity and not dry_run:
                refused[side].clear()  # keys of the old validity: void
                state.begin()
                state.forget_refusals(fstate.id, side)
                state.forget_pending(fstate.id, side)
                state.commit()
                rematch(state, fstate, side, self.folders, self.listings, self.report)
            fstate.set_validity(side, folder.validity)
        if not dry_run:
            state.begin()
            state.save_folder(fstate)
            for side in ("a", "b"):
                gone = refused[side] - self.listings[side].keys()  # deleted where it was
                state.forget_refusals(fstate.id, side, sorted(gone))
                refused[side] -= gone
            state.commit()

    def _plan(self) -> tuple[Plan, frozenset[str]]:
        """The plan for the listings and pairs; records which sides' deletions it
        refused (they stay refused on later runs: planner.py)."""
        folders, state, report = self.folders, self.state, self.report
        persists: dict[str, Persists] = {}
        exclusive: dict[str, Groups] = {}
        for side in ("a", "b"):
            folder = folders[side]
            persists[side] = folder.persists if folder is not None else (lambda f: True)
            exclusive[side] = folder.exclusive_flags if folder is not None else frozenset()
        refusal_key = f"refused:{self.fstate.id}"
        refused_before = frozenset((state.get_meta(refusal_key) or "").split(",")) - {""}
        the_plan = plan(
            self.listings["a"],
            self.listings["b"],
            self.pairs,
            self.policy,
            persists["a"],
            persists["b"],
            refused_before,
            None if self.options.retry_refused else self.refused,
            exclusive["a"],
            exclusive["b"],
            self.options.selection,
            {"a": self._changed_a()},
        )
        report.withheld = len(the_plan.withheld)
        record_left_out(report, the_plan.left_out)
        if not self.options.dry_run:
            refused_now = ",".join(sorted({d.side for d in the_plan.refused_deletes}))
            if refused_now or refused_before:
                state.begin()
                state.set_meta(refusal_key, refused_now)
                state.commit()
        report.refused = list(the_plan.refused)
        for reason in the_plan.refused:
            log.warning(
                "%s: deletions refused: %s; rerun with --force-delete if intended",
                self.name,
                reason,
            )
        return the_plan, refused_before

    def _changed_a(self) -> set[str]:
        """Remote items whose content changed since recorded (copies.changed_at_source)."""
        remote = self.folders["a"]
        if remote is None:
            return set()
        return changed_at_source(remote, self.pairs, self.listings["a"])

    def _tell(self, the_plan: Plan, rule: Retention | None) -> None:
        """--dry-run: what the plan (and the retention rule) would do."""
        name, report = self.name, self.report
        report.planned = the_plan.count()
        for action in the_plan.copies + the_plan.flags + the_plan.deletes:
            log.info("%s: would %s", name, describe(action))
        for copy in the_plan.withheld:
            log.info("%s: would not %s: refused before", name, describe(copy))
        if rule is not None:
            going = expired_keys(rule, self.pairs, self.listings, set(), self.options.clock())
            if rule.after_download:
                going += [c.key for c in the_plan.copies if c.src == "a"]
            report.planned["delete_a"] += len(going)
            for key in going:
                log.info("%s: would delete remote %s (%s)", name, key, rule.describe())

    # the steps the plan asks for ----------------------------------------------------
    def copies_settled(self) -> None:
        """After a run without errors (in its transaction): every copy from a side it
        copies from was recorded, refused or is gone with its source message, so none
        is under way any more; the journal of those sides is emptied."""
        for side in ("a", "b"):
            if self.policy.writes(other(side)):
                self.state.forget_pending(self.fstate.id, side)

    def bookkeeping(self, the_plan: Plan) -> list[Tombstone | Forget]:
        """Apply the plan's tombstones and forgotten pairs (in the caller's transaction),
        except for pairs the copies re-linked; returns the actions applied."""
        applied: list[Tombstone | Forget] = []
        for action in the_plan.bookkeeping:
            if action.pair.id in self.relinked:
                continue
            if isinstance(action, Forget):
                self.state.delete_pair(action.pair)
            elif isinstance(action, Tombstone):
                action.pair.set_key(action.side, None)
                self.state.update_pair(action.pair)
            applied.append(action)
        return applied

    def set_flags(self, actions: list[SetFlags]) -> None:
        folders, report, state = self.folders, self.report, self.state
        remote = folders["a"]
        for start in range(0, len(actions), BATCH_MESSAGES):
            batch = actions[start : start + BATCH_MESSAGES]
            done = []
            for action in batch:
                try:
                    for side, (add, remove) in action.changes.items():
                        folder, key = folders[side], action.pair.key(side)
                        # (The plan changes flags only of a message listed on both sides.)
                        assert folder is not None and key is not None
                        folder.set_flags(key, add, remove)
                        self.written.add(side)
                        report.flagged(side)
                        log.info("%s: %s", folder.name, describe(action))
                        step("flags")
                except MessageError as error:
                    report.errors.append(str(error))
                    continue
                done.append(action)
            for folder in folders.values():
                if folder is not None:
                    folder.flush()
            state.begin()
            for action in done:
                action.pair.flags = action.new_flags
                if remote is not None:
                    assert action.pair.key_a is not None  # (listed on both sides)
                    action.pair.version_a = remote.version(action.pair.key_a)
                state.update_pair(action.pair)
            state.commit()
            step("commit flags")

    def delete(
        self, actions: list[Delete], batch: int = BATCH_MESSAGES, tombstone: bool = False
    ) -> None:
        """Delete, in batches each flushed and then recorded.  With `tombstone`, the
        pairs are kept with the deleted side's key cleared (the other side keeps its
        message and it stays known), else forgotten."""
        folders, report, state = self.folders, self.report, self.state
        size = max(1, batch)
        for start in range(0, len(actions), size):
            batch_actions = actions[start : start + size]
            done = []
            for action in batch_actions:
                folder = folders[action.side]
                assert folder is not None  # (a deletion is planned only of a listed message)
                try:
                    self.written.add(action.side)
                    removed = folder.delete(action.key)
                except MessageError as error:
                    report.errors.append(str(error))
                    continue
                step("delete")
                report.deleted(action.side)
                log.info("%s: %s", folder.name, describe(action))
                done.append((action, removed))
            for folder in folders.values():
                if folder is not None:
                    folder.flush()
            step("flush deletes")
            state.begin()
            for action, removed in done:
                if removed != action.key:
                    # Identical copies are interchangeable (mbox): the pair that pointed
                    # at the copy actually removed now points at the one we named.
                    state.repoint(action.pair, action.side, action.key, removed)
                if tombstone:
                    action.pair.set_key(action.side, None)
                    state.update_pair(action.pair)
                else:
                    state.delete_pair(action.pair)
            state.commit()
            step("commit deletes")

"""A keep-pull from a folder that reports its changes page by page (``Folder.paged``:
EWS SyncFolderItems), so that an interruption in a 50,000-message folder costs at most
one page: the messages of each page are planned, copied, made durable and recorded, and
the source's cursor after that page is saved with them.  A page with an error stops the
cursor there (the next run sees those changes again; what was recorded is not copied
twice).  One step of folder_sync.FolderSync, which falls back to listing the folder in
full when the source forgot the cursor, or when a migration must copy again what the
destination lost (Relist).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mailsync.copies import changed_at_source, copy_all
from mailsync.crashhook import step
from mailsync.message import Info
from mailsync.planner import plan
from mailsync.report import FolderReport, record_left_out

if TYPE_CHECKING:  # (folder_sync imports this module)
    from mailsync.folder_sync import FolderSync

log = logging.getLogger("mailsync")


class Relist(Exception):
    """The paged source forgot the cursor: the folder is listed in full instead."""


def is_paged(fs: FolderSync) -> bool:
    """Whether `fs` goes page by page: a keep-pull (not a dry run) from a paged folder
    into a folder that is there, neither side's validity changed."""
    a, b, fstate, policy = fs.folders["a"], fs.folders["b"], fs.fstate, fs.policy
    return (
        not fs.options.dry_run
        and policy.direction == "pull"
        and policy.delete == "keep"
        and a is not None
        and b is not None
        and a.paged
        and fstate.validity("a") in (None, a.validity)
        and fstate.validity("b") in (None, b.validity)
    )


def sync_pages(fs: FolderSync) -> FolderReport:
    """Sync `fs` page by page (is_paged() said it may); Relist if the source forgot
    the cursor."""
    folder_a, folder_b = fs.folders["a"], fs.folders["b"]
    assert folder_a is not None and folder_b is not None
    fstate, state, report, options = fs.fstate, fs.state, fs.report, fs.options
    pairs = fs.pairs = state.pairs(fstate.id)  # grows with the pairs the pages record
    listing_b, cursor_b = fs.list_side("b", pairs)
    if fs.policy.refill and any(
        p.key_a is not None and p.key_b is not None and p.key_b not in listing_b for p in pairs
    ):
        # A message lost in DEST is copied again (migrate): the pages tell only what
        # changed at the source, so the source is listed in full this once.
        raise Relist()
    fstate.validity_a, fstate.validity_b = folder_a.validity, folder_b.validity
    fs.relinked, fs.written, fs.arrived = set(), set(), set()
    by_a = {p.key_a: p for p in pairs if p.key_a is not None}
    known = {key: pair.flags for key, pair in by_a.items()}
    advancing = True
    pages = 0
    recorded_now: set[str] = set()  # keys_a this run's copies recorded (or tried to)
    for page, cursor_a in folder_a.pages(fstate.cursor("a"), known):
        if page is None:
            raise Relist()
        pages += 1
        listing_a = {key: info for key, info in page.items() if info is not None}
        page_pairs = [by_a[key] for key in page if key in by_a]
        folder_a.recall_versions(
            {p.key_a: p.version_a for p in page_pairs if p.key_a and p.version_a}
        )
        refused_a = fs.refused["a"]
        # (An item copied by an earlier page of this run is current: one listed on several
        # pages, as a series by each of its occurrences, is copied once.)
        changed = changed_at_source(
            folder_a, [p for p in page_pairs if p.key_a not in recorded_now], listing_a
        )
        the_plan = plan(
            listing_a,
            listing_b,
            page_pairs,
            fs.policy,
            folder_a.persists,
            folder_b.persists,
            frozenset(),
            None if options.retry_refused else {"a": refused_a},
            selection=options.selection,
            changed={"a": changed},
        )
        report.withheld += len(the_plan.withheld)
        record_left_out(report, the_plan.left_out)
        fs.listings = {"a": listing_a, "b": listing_b}
        copy_all(fs, the_plan)
        for copy in the_plan.copies:
            recorded_now.add(copy.key)
            if copy.replaces is not None and copy.pair is not None:
                listing_b.pop(copy.replaces, None)  # (replaced, or still there: the pair's key)
                if copy.pair.key_b is not None:
                    listing_b[copy.pair.key_b] = Info(copy.pair.flags, 0, 0.0)
        for pair in state.pairs_for(fstate.id, list(page)):
            key_a = pair.key_a
            assert key_a is not None  # (found by it)
            if key_a not in by_a:  # recorded by this page's copies
                recorded_now.add(key_a)
                by_a[key_a] = pair
                pairs.append(pair)
                if pair.key_b is not None:
                    listing_b[pair.key_b] = Info(pair.flags, 0, 0.0)
        fs.set_flags(the_plan.flags)
        # (A message the selection left out must be listed again by a run without it:
        # the cursor stops before its page, as after an error.)
        advancing = advancing and not report.errors and not the_plan.left_out
        state.begin()
        keys_a = {id(action): action.pair.key_a for action in the_plan.bookkeeping}
        for action in fs.bookkeeping(the_plan):  # (a tombstone clears key_a)
            key_a = keys_a[id(action)]
            if key_a is not None:
                by_a.pop(key_a, None)
        gone = [key for key, info in page.items() if info is None and key in refused_a]
        state.forget_refusals(fstate.id, "a", gone)  # deleted on the source
        refused_a.difference_update(gone)
        if advancing:
            fstate.cursor_a = cursor_a
        state.save_folder(fstate)
        state.commit()
        step("page done")
    log.debug("%s: %d page(s) applied", fs.name, pages)
    fstate.last_sync = options.clock()
    if not report.errors:
        if "b" in fs.written:
            cursor_b = folder_b.cursor_after_writes()
        fstate.cursor_b = cursor_b
    state.begin()
    clean = not report.errors
    if clean:
        fs.copies_settled()
    state.set_meta(f"clean:{fstate.id}", options.signature if clean else "")
    state.save_folder(fstate)
    state.commit()
    step("folder done")
    return report

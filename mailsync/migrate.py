"""`mailsync migrate SOURCE DEST`: a one-way copy SOURCE -> DEST, checked afterwards,
with a report per folder and a verdict: complete or not.

A migration is the job `pull` would run for the same two stores (channel.migrate_job:
the same state file, the same folder mapping, SOURCE opened read-only), run through
channel.run, then checked by channel.verify -- the verify command's own pass, through
the same folder mapping (folders.map_folders), so the copy and the check cannot pair
folders differently.  The check takes the state's word for the copies it recorded
(verify.verify's `trusted`) and reads the rest; with --delete-source it reads every
message, and only then is SOURCE opened for writing, and only the messages the check
found in DEST are deleted there.

Nothing here prints; cli.py formats a Migration, and batch.py runs many.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mailsync import channel as channelmod
from mailsync.channel import Job, RunOptions
from mailsync.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, MailsyncError
from mailsync.folder_names import EARLIER_PAIRING
from mailsync.message import summary_line
from mailsync.policy import Selection
from mailsync.ratelimit import RateLimit
from mailsync.report import FolderReport, ProgressFactory, Report, size_text
from mailsync.stores import mask_url
from mailsync.verify import FolderCheck, Verification, flags_difference

log = logging.getLogger("mailsync")

#: Store options by which a source deletes what was fetched (POP3's retention rule).
RETENTION_OPTIONS = {"delete", "delete_after_days"}


@dataclass
class MigrateOptions:
    """What `mailsync migrate` asks beyond the two stores."""

    dry_run: bool = False
    delete_source: bool = False
    retry_refused: bool = False
    jobs: int | None = None  # folders at once (as pull's --jobs)
    max_rate: float | None = None  # bytes per second
    max_messages_per_second: float | None = None
    # Which SOURCE messages are migrated, and checked (--since, --before, --max-size).
    selection: Selection = field(default_factory=Selection)

    def rate_limit(self) -> RateLimit | None:
        """The account's pacing, or None without limits (a new one per account)."""
        if self.max_rate is None and self.max_messages_per_second is None:
            return None
        return RateLimit(self.max_rate, self.max_messages_per_second)


@dataclass
class FolderMigration:
    """One SOURCE folder: what it holds, what this run did with it, what DEST lacks."""

    folder: str  # the SOURCE folder
    dest_folder: str
    # Why dest_folder has another name (folder_names: a rule, SPECIAL-USE on both
    # sides, a usual name, an escape, an earlier run's pairing); None when it has not.
    why: str | None = None
    # What the folder holds: "mail", or "calendar" / "contacts" (EWS, Graph: items=).
    kind: str = "mail"
    # Not in DEST and not made there: a folder of calendar or contacts items DEST
    # cannot hold (a mail server); its items are missing for good, a rerun copies none.
    not_held: bool = False
    messages: int = 0  # in the SOURCE folder (as selected)
    bytes: int = 0
    copied: int = 0
    # Already in DEST by content and not copied again (the engine's "linked": a copy
    # an interrupted run left unrecorded, or mail DEST had before the first run).
    adopted: int = 0
    skipped: int = 0
    skipped_why: list[str] = field(default_factory=list)
    failed: int = 0  # messages or folder steps that failed (the errors say which)
    missing: int = 0  # SOURCE messages not in DEST after the run (the check)
    deleted_from_source: int = 0  # --delete-source
    planned: int | None = None  # --dry-run: the copies a run would make
    errors: list[str] = field(default_factory=list)
    missing_messages: list[dict[str, str | None]] = field(default_factory=list)
    # In DEST and in no SOURCE message's place (mail that arrived there): reported only.
    extra_messages: list[dict[str, str | None]] = field(default_factory=list)
    # In both with other flags (verify.FolderCheck.changed_flags): incomplete only where
    # SOURCE's flags are still to be copied (`pending`); a change made in DEST since the
    # copy (a reader read the mail there) is reported, not undone and no failure.
    changed_flags_messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flags_to_copy(self) -> int:
        return sum(1 for m in self.changed_flags_messages if m["pending"])

    @property
    def complete(self) -> bool:
        return not self.missing and not self.errors and not self.flags_to_copy


@dataclass
class Migration:
    """A migration's outcome.  `exit_code`: 0 only when the check found every selected
    SOURCE message in DEST (and the run had no error); 1 when not (a rerun copies what
    is missing); 2, 3, 4 as for every command (the run stopped: `errors` says why)."""

    source: str  # URLs, passwords masked
    dest: str
    dry_run: bool = False
    folders: list[FolderMigration] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # store-level, or the run's own
    warnings: list[str] = field(default_factory=list)
    checked: bool = False  # the check after the copy ran
    exit_code: int = EXIT_OK
    waited_seconds: float = 0.0  # paced by --max-rate / --max-messages-per-second

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.folders)

    @property
    def missing(self) -> int:
        return sum(f.missing for f in self.folders)

    @property
    def flags_to_copy(self) -> int:
        return sum(f.flags_to_copy for f in self.folders)

    @property
    def not_held(self) -> list[FolderMigration]:
        """The folders of items DEST cannot hold (FolderMigration.not_held)."""
        return [f for f in self.folders if f.not_held]

    def _not_held_text(self) -> str:
        folders = self.not_held
        items = sum(f.missing for f in folders)
        kinds = " and ".join(sorted({f.kind for f in folders}))
        names = ", ".join(f.folder for f in folders)
        # ('*' first: patterns that only exclude select nothing.)
        leave_out = " ".join(["--folders '*'", *(f"--folders '!{f.folder}'" for f in folders)])
        return (
            f"the {items} items of {names} ({kinds} items, which DEST cannot take: see "
            f"above) are not; back them up into a Maildir tree, and leave them out here "
            f"({leave_out}) for a complete migration"
        )

    def total(self, name: str) -> int:
        return sum(getattr(f, name) or 0 for f in self.folders)

    def total_listed(self, name: str) -> int:
        return sum(len(getattr(f, name)) for f in self.folders)

    @property
    def complete(self) -> bool:
        return self.exit_code == EXIT_OK and self.checked and not self.dry_run

    @property
    def verdict(self) -> str:
        """The report's last line."""
        n, folders = self.messages, len(self.folders)
        if not self.checked:
            return "not checked: the migration stopped before the check: " + (
                self.errors[0] if self.errors else "see the errors above"
            )
        if self.dry_run:
            cannot = ""
            if self.not_held:
                names = ", ".join(f.folder for f in self.not_held)
                kinds = " and ".join(sorted({f.kind for f in self.not_held}))
                cannot = f"; DEST cannot take the {kinds} items of {names}"
            return (
                f"dry run: {self.missing} of the {n} selected SOURCE messages in {folders} "
                f"folders are not in DEST yet{cannot}; nothing was written"
            )
        if self.complete:
            return f"complete: every selected SOURCE message ({n} in {folders} folders) is in DEST"
        unreadable = [f.folder for f in self.folders if f.errors and not f.missing]
        not_held = self.not_held
        missing_mail = self.missing - sum(f.missing for f in not_held)
        if not_held and not (missing_mail or self.flags_to_copy or unreadable or self.errors):
            # Only those folders stand in the way, and no rerun copies them.
            mail = n - sum(f.messages for f in not_held)
            return (
                f"incomplete: every other selected SOURCE message ({mail}) is in DEST, but "
                + self._not_held_text()
            )
        if self.missing:
            why = f"{self.missing} of the {n} selected SOURCE messages are not in DEST"
        elif self.flags_to_copy:
            why = f"{self.flags_to_copy} messages in DEST lack SOURCE's flags"
        elif unreadable:
            why = f"{len(unreadable)} folders could not be checked or had errors"
        else:
            why = self.errors[0] if self.errors else "the run had errors"
        return f"incomplete: {why}; rerun mailsync migrate to copy what is missing"

    def lines(self) -> list[str]:
        """The report for people: a line per folder (a folder paired with another name
        says why, a pairing kept from an earlier run only in a dry run, as pull's report),
        with its skipped and (unless a dry run) missing messages below it; the verdict
        is not among them."""
        out = []
        for f in self.folders:
            where = f.folder if f.dest_folder == f.folder else f"{f.folder} -> {f.dest_folder}"
            if f.why and (self.dry_run or f.why != EARLIER_PAIRING):
                where += f" ({f.why})"
            done = (
                f"would copy {f.planned}"
                if f.planned is not None
                else f"copied {f.copied}, adopted {f.adopted}"
            )
            line = (
                f"{where}: {f.messages} messages ({size_text(f.bytes)}), {done}, "
                f"skipped {f.skipped}, failed {f.failed}, missing {f.missing}"
            )
            if f.deleted_from_source:
                line += f", deleted from SOURCE {f.deleted_from_source}"
            out.append(line)
            out.extend(f"  skipped: {why}" for why in f.skipped_why)
            if f.not_held:  # (its items one by one: no sender, subject, Message-ID)
                out.append(f"  not copied: {f.missing} {f.kind} items, which DEST cannot take")
            elif not self.dry_run:
                out.extend(f"  missing: {summary_line(m)}" for m in f.missing_messages)
                out.extend(f"  extra in DEST: {summary_line(m)}" for m in f.extra_messages)
                out.extend(
                    f"  flags{'' if m['pending'] else ' (changed in DEST)'}: "
                    f"{summary_line(m)}: {flags_difference(m)}"
                    for m in f.changed_flags_messages
                )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dest": self.dest,
            "dry_run": self.dry_run,
            "folders": [
                {**vars(f), "flags_to_copy": f.flags_to_copy, "complete": f.complete}
                for f in self.folders
            ],
            "messages": self.messages,
            "bytes": self.total("bytes"),
            "copied": self.total("copied"),
            "adopted": self.total("adopted"),
            "skipped": self.total("skipped"),
            "failed": self.total("failed"),
            "missing": self.missing,
            "extra": self.total_listed("extra_messages"),
            "changed_flags": self.total_listed("changed_flags_messages"),
            "flags_to_copy": self.flags_to_copy,
            "deleted_from_source": self.total("deleted_from_source"),
            "errors": self.errors,
            "warnings": self.warnings,
            "waited_seconds": round(self.waited_seconds, 3),
            "complete": self.complete,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
        }


def migrate(
    job: Job,
    directory: str,
    options: MigrateOptions | None = None,
    progress: ProgressFactory | None = None,
    show_error: Callable[[str], None] | None = None,
) -> Migration:
    """Copy what SOURCE (the job's side a) has and DEST (side b) lacks, check by
    content that DEST holds every selected SOURCE message, and with delete_source delete
    in SOURCE the messages the check found in DEST.  ConfigError and KeyboardInterrupt
    propagate (the state is consistent: a rerun goes on)."""
    options = options or MigrateOptions()
    if job.direction != "pull" or job.delete != "keep":
        raise ConfigError(f"{job.label}: a migration copies one way and deletes nothing in DEST")
    retention = RETENTION_OPTIONS & (set(job.options_a) | set(parse_qs(urlsplit(job.url_a).query)))
    if retention:
        raise ConfigError(
            f"{mask_url(job.url_a)}: {', '.join(sorted(retention))} would delete in SOURCE, "
            "which a migration never does; remove it (--delete-source deletes what the "
            "check found in DEST)"
        )
    if options.dry_run:
        # A dry migration works on a snapshot of the state (as channel.run does), also
        # for the check after it, so it writes nothing.
        import tempfile  # (only dry runs need it: not on every start-up)

        with tempfile.TemporaryDirectory(prefix="mailsync-dry-run-") as scratch:
            channelmod.snapshot_state(job, directory, scratch)
            return _migrate(job, scratch, options, progress, show_error)
    return _migrate(job, directory, options, progress, show_error)


def _migrate(
    job: Job,
    directory: str,
    options: MigrateOptions,
    progress: ProgressFactory | None,
    show_error: Callable[[str], None] | None,
) -> Migration:
    pace = options.rate_limit()
    run_options = RunOptions(
        dry_run=options.dry_run,
        retry_refused=options.retry_refused,
        jobs=options.jobs,
        pace=pace,
        selection=options.selection,
    )
    reports: list[Report] = []
    result, code = channelmod.run(
        job,
        "migrate",
        directory,
        run_options,
        progress=progress,
        show_report=lambda _job, report: reports.append(report),
        show_error=show_error,
    )
    migration = Migration(mask_url(job.url_a), mask_url(job.url_b), dry_run=options.dry_run)
    migration.errors.extend(result["errors"])
    migration.waited_seconds = pace.waited if pace is not None else 0.0
    if not reports:  # the run stopped before it had a report (cannot connect, ...)
        migration.exit_code = code
        return migration
    report = reports[0]
    migration.warnings.extend(report.warnings)
    try:
        # What this tool copied and recorded counts as there while its key is (the check
        # reads the rest); before deleting from SOURCE, everything is read again.
        verification = channelmod.verify(
            job, directory, options.selection, trust_state=not options.delete_source
        )
    except MailsyncError as error:
        if options.dry_run:  # DEST not there yet (a dry run creates nothing): all missing
            migration.checked, migration.exit_code = True, code
            _add_folders(migration, report, source_only(job, directory, options.selection))
            return migration
        migration.errors.append(f"the check after the copy failed: {error}")
        migration.exit_code = channelmod.combine([code, error.exit_code])
        _add_folders(migration, report, Verification())
        return migration
    migration.checked = True
    _add_folders(migration, report, verification)
    whole = verification.ok and not migration.flags_to_copy
    migration.exit_code = EXIT_PARTIAL if code == EXIT_OK and not whole else code
    if options.dry_run:
        migration.exit_code = code
    elif options.delete_source:
        delete_verified(job, verification, migration)
    return migration


def _add_folders(migration: Migration, report: Report, verification: Verification) -> None:
    """One FolderMigration per SOURCE folder the check saw (and per folder the run
    reported that the check did not see: it failed there)."""
    ran = {f.folder: f for f in report.folders}
    start = len(migration.folders)
    for check in verification.folders:
        kind = report.kinds.get(check.folder, "mail")
        migration.folders.append(_folder(check.folder, ran.pop(check.folder, None), check, kind))
    for name, folder_report in ran.items():
        migration.folders.append(_folder(name, folder_report, None, report.kinds.get(name, "mail")))
    why = {pair["remote"]: pair for pair in report.folder_names}
    for folder in migration.folders[start:]:
        pair = why.get(folder.folder)
        if pair is not None and pair["local"] == folder.dest_folder:
            folder.why = pair["why"]


def _folder(
    name: str, ran: FolderReport | None, check: FolderCheck | None, kind: str
) -> FolderMigration:
    out = FolderMigration(name, check.dest_folder if check else name, kind=kind)
    if ran is not None:
        out.copied = ran.copied_a_to_b
        out.adopted = ran.linked
        left_out = sum(ran.left_out.values())  # --since, --before, --max-size
        out.skipped = ran.skipped + ran.withheld + left_out
        out.skipped_why = list(ran.skipped_why)
        out.skipped_why.extend(f"{n} {why}" for why, n in sorted(ran.left_out.items()))
        if ran.withheld:
            out.skipped_why.append(
                f"{ran.withheld} refused by DEST on an earlier run (--retry-refused offers "
                "them again)"
            )
        out.failed = len(ran.errors)
        out.errors.extend(ran.errors)
        if ran.planned is not None:
            out.planned = ran.planned["copy_a_to_b"]
    if check is None:
        out.errors.append(f"{name}: not checked: the folder is not in SOURCE any more")
        return out
    out.messages, out.bytes = check.messages, check.bytes
    out.missing = len(check.missing)
    out.missing_messages = check.missing
    out.extra_messages = check.extra
    out.changed_flags_messages = check.changed_flags
    # A folder of calendar or contacts items not in DEST, which the run could not make
    # there (DEST would have made it if it could: the run's error, or the dry run's,
    # says why not).
    out.not_held = kind != "mail" and not check.on_destination and bool(out.errors)
    if not check.on_destination and check.messages and not out.planned and not out.not_held:
        out.errors.append(f"{name}: folder {check.dest_folder} is not in DEST")
    if check.unreadable:
        out.errors.append(f"{name}: {check.unreadable} SOURCE messages could not be read")
    if check.error:
        out.errors.append(f"{name}: not checked: {check.error}")
    return out


def source_only(job: Job, directory: str, selection: Selection) -> Verification:
    """What the check finds when DEST has nothing: every selected SOURCE message missing
    (counted, not named).  For a dry run against a DEST that does not exist yet."""
    verification = Verification()
    with job.open_a(read_only=True) as source:
        mapping = channelmod.job_folder_map(job, source, None, directory)
        names = source.list_folders()
        for name in mapping.choose(names, set(names).__contains__):
            check = FolderCheck(name, mapping.local_name(name), on_destination=False)
            folder = source.open_folder(name)
            try:
                listing = {
                    key: info
                    for key, info in folder.list().items()
                    if selection.reason(info.size, info.arrival) is None
                }
            finally:
                folder.close()
            check.messages = len(listing)
            check.bytes = sum(info.size for info in listing.values())
            check.missing = [{"folder": name, "key": key} for key in listing]
            verification.folders.append(check)
    return verification


def delete_verified(job: Job, verification: Verification, migration: Migration) -> None:
    """--delete-source: delete in SOURCE each message the check found in DEST (by
    content, after the copy's batches were made durable), folder by folder; a message
    the check did not find (refused by DEST, failed, unreadable) stays.  An error
    deleting stops there (what was deleted is counted; a rerun deletes the rest)."""
    by_name = {f.folder: f for f in migration.folders}
    try:
        with job.open_a(read_only=False) as source:
            for check in verification.folders:
                folder_migration = by_name[check.folder]
                if not check.present or check.error:
                    continue
                folder = source.open_folder(check.folder)
                try:
                    for key in check.present:
                        folder.delete(key)
                        folder_migration.deleted_from_source += 1
                    folder.flush()
                finally:
                    folder.close()
    except MailsyncError as error:
        migration.errors.append(f"deleting verified messages in SOURCE failed: {error}")
        migration.exit_code = EXIT_PARTIAL

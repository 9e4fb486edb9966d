"""The command line: parses, calls the library (channel.py, migrate.py, batch.py), prints
the result.  No more: it runs no SQL, opens no state, and its text for people comes from
the library where it is more than a line (Migration.lines(), batch.table_lines()).  Each
command is a few lines around one library call; the options several commands share, and
the exit code texts, are cli_options.py's (with this module, the only code that knows
Click)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import click

from mailsync import __version__
from mailsync import batch as batchmod
from mailsync import channel as channelmod
from mailsync import migrate as migratemod
from mailsync.batch import MAX_PARALLEL, SHARD_INDEX_VARIABLE
from mailsync.channel import Job, RunOptions
from mailsync.cli_options import (
    EXIT_CODES,
    MIGRATE_EXIT_CODES,
    Context,
    copy_options,
    output_options,
    rate_option,
    setup_logging,
    sync_options,
)
from mailsync.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    MailsyncError,
)
from mailsync.folder_names import EARLIER_PAIRING
from mailsync.message import summary_line
from mailsync.migrate import MigrateOptions
from mailsync.policy import Selection
from mailsync.report import Report, size_text
from mailsync.verify import flags_difference

log = logging.getLogger("mailsync")


class MailsyncGroup(click.Group):
    """Turns library errors into one line on stderr and the documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MailsyncError as error:
            _error(str(error))
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            _error("interrupted; the state is consistent, rerun to continue")
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            _error(f"{error.strerror or error}{where}")
            ctx.exit(EXIT_PARTIAL)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as error:
            log.debug("unexpected error", exc_info=True)
            _error(
                f"unexpected {type(error).__name__}: {error}; the state is consistent, a "
                "rerun may help; run with -vv for details and please report it"
            )
            ctx.exit(EXIT_PARTIAL)


@click.group(
    cls=MailsyncGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="mailsync")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default $XDG_CONFIG_HOME/mailsync/config.toml).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where sync state lives (default $XDG_STATE_HOME/mailsync).",
)
@click.option("-v", "--verbose", count=True, help="Show each action; -vv shows debug output.")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@click.option(
    "--password-command",
    metavar="COMMAND",
    help="Command printing the password of network stores that have no password_command "
    "in the config (never give the password itself on the command line).",
)
@click.pass_context
def cli(ctx, config_path, state_dir, verbose, quiet, password_command):
    """Sync and back up mail between IMAP, POP, Exchange, Maildir and mbox.

    A store is a URL (maildir:PATH or a bare path, mbox:PATH, imaps://USER@HOST, ...)
    or the name of a [store.NAME] in the config file; a channel is a [channel.NAME]
    pairing a remote store with a local one.
    """
    setup_logging(verbose, quiet)
    if password_command:
        os.environ["MAILSYNC_PASSWORD_COMMAND"] = password_command  # read by mailsync.net
    ctx.obj = Context(config_path, state_dir, verbose, quiet)


@cli.command(epilog=EXIT_CODES)
@output_options
@click.argument("args", nargs=-1, required=True, metavar="CHANNEL... | SOURCE DEST")
@sync_options
@click.pass_obj
def pull(obj, args, **options):
    """Copy new mail from the remote side (SOURCE) to the local side (DEST).

    One-way: SOURCE is never modified.  Deletions on SOURCE are kept in DEST
    unless --mirror is given or the channel says delete = "propagate".
    """
    _run_sync(obj, "pull", args, options)


@cli.command(epilog=EXIT_CODES)
@output_options
@click.argument("args", nargs=-1, required=True, metavar="CHANNEL... | SOURCE DEST")
@sync_options
@click.pass_obj
def push(obj, args, **options):
    """Copy local mail (SOURCE) to the remote side (DEST): a restore.

    One-way: SOURCE is never modified.  Deletions are propagated only with --mirror
    or delete = "propagate".
    """
    _run_sync(obj, "push", args, options)


@cli.command(epilog=EXIT_CODES)
@output_options
@click.argument("args", nargs=-1, required=True, metavar="CHANNEL... | A B")
@sync_options
@click.pass_obj
def sync(obj, args, **options):
    """Sync in the channel's direction (default both ways).

    Two-way sync copies new messages both ways, merges flag changes and propagates
    deletions (delete = "keep" in the channel turns that off).
    """
    _run_sync(obj, "sync", args, options)


@cli.command(epilog=MIGRATE_EXIT_CODES)
@output_options
@click.argument("stores", nargs=-1, metavar="SOURCE DEST")
@copy_options
@click.option(
    "--delete-source",
    is_flag=True,
    help="After the copy, delete in SOURCE each message the check found in DEST "
    "(by content).  Without it SOURCE is never modified.",
)
@click.option(
    "--accounts",
    "accounts_file",
    type=click.Path(dir_okay=False),
    metavar="FILE.csv",
    help="Migrate every account of this CSV file (columns source, dest, "
    "source_password_command, dest_password_command, optionally source_token_command, "
    "dest_token_command) instead of SOURCE DEST.",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, MAX_PARALLEL),
    default=1,
    metavar="N",
    help="With --accounts: migrate N accounts at once, each in its own process.",
)
@click.option(
    "--shard",
    metavar="K/N",
    help="With --accounts: only accounts K, K+N, K+2N... of the file (K from 0); "
    f"--shard N takes K from ${SHARD_INDEX_VARIABLE}.",
)
@click.option(
    "--max-rate",
    callback=rate_option,
    metavar="BYTES/s",
    help="Copy at most this many bytes a second per account (e.g. 500k, 2M).",
)
@click.option(
    "--max-messages-per-second",
    type=click.FloatRange(min=0, min_open=True),
    metavar="N",
    help="Copy at most N messages a second per account.",
)
@click.pass_obj
def migrate(obj, stores, **options):
    """Copy a mailbox from SOURCE to DEST, then check DEST holds all of it.

    One-way, and SOURCE is never modified (unless --delete-source).  A rerun copies
    only what is missing; messages already in DEST with the same content are adopted,
    not copied again.  After the copy every selected SOURCE message is looked for in
    DEST by content; the last line says whether all are there.  With --accounts, many
    accounts, one summary table.
    """
    migrate_options = MigrateOptions(
        dry_run=bool(options["dry_run"]),
        delete_source=bool(options["delete_source"]),
        retry_refused=bool(options["retry_refused"]),
        jobs=options["jobs"],
        max_rate=options["max_rate"],
        max_messages_per_second=options["max_messages_per_second"],
        selection=_selection(options),
    )
    if options["accounts_file"]:
        if stores:
            raise click.UsageError("give SOURCE DEST or --accounts FILE, not both")
        _migrate_accounts(obj, migrate_options, options)
    if len(stores) != 2:
        raise click.UsageError("give SOURCE DEST (two stores), or --accounts FILE.csv")
    for option in ("shard",):
        if options[option]:
            raise click.UsageError(f"--{option} goes with --accounts")
    source, dest = stores
    job = channelmod.migrate_job(
        obj.config, source, dest, options["folder_patterns"], name_map=options["name_map"]
    )
    try:
        migration = migratemod.migrate(
            job,
            obj.state_dir,
            migrate_options,
            progress=_progress_factory(options["progress"]),
            show_error=_error,
        )
    except KeyboardInterrupt:
        _error("interrupted; the state is consistent, rerun to continue")
        sys.exit(EXIT_INTERRUPTED)
    if options["as_json"]:
        click.echo(json.dumps(migration.as_dict(), indent=2))
        sys.exit(migration.exit_code)
    if not obj.quiet:
        for line in migration.lines():
            click.echo(line)
    if migration.complete or (migration.dry_run and migration.exit_code == EXIT_OK):
        if not obj.quiet:
            click.echo(migration.verdict)
    elif migration.checked or not migration.errors:  # (else show_error said why)
        _error(migration.verdict)
    sys.exit(migration.exit_code)


def _migrate_accounts(obj: Context, migrate_options: MigrateOptions, options: dict) -> None:
    """--accounts: read and check the whole file, take the shard, run, print the table."""
    if options["folder_patterns"]:
        raise click.UsageError("--folders does not go with --accounts")
    accounts = batchmod.read_accounts(options["accounts_file"], obj.config)
    if options["shard"]:
        index, count = batchmod.parse_shard(options["shard"])
        accounts = batchmod.select(accounts, index, count)

    def done(row: dict) -> None:
        log.info("line %s: %s", row["line"], row["result"])

    try:
        rows = batchmod.run_accounts(
            accounts, obj.state_dir, migrate_options, options["parallel"], done
        )
    except KeyboardInterrupt:
        _error("interrupted; the states are consistent, rerun to continue")
        sys.exit(EXIT_INTERRUPTED)
    code = batchmod.exit_code(rows)
    if options["as_json"]:
        click.echo(json.dumps({"accounts": rows, "exit_code": code}, indent=2))
        sys.exit(code)
    for line in batchmod.table_lines(rows):
        click.echo(line)
    summary = batchmod.summary(rows)
    if code == EXIT_OK:
        click.echo(summary)
    else:
        _error(f"{summary}; rerun to continue the others (their state is kept)")
    sys.exit(code)


def _progress_factory(enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    def factory(total: int, desc: str):
        return tqdm(
            total=total,
            desc=desc,
            unit="msg",
            file=sys.stderr,
            leave=False,
            disable=total == 0,
            dynamic_ncols=True,
        )

    return factory


def _print_report(obj: Context, job: Job, report: Report, options: dict) -> None:
    if options.get("as_json") or obj.quiet:
        return
    prefix = f"{job.name}: " if job.name else ""
    for pair in report.folder_names:  # (a pairing kept from an earlier run: --dry-run)
        if options.get("dry_run") or pair["why"] != EARLIER_PAIRING:
            click.echo(f"{prefix}{pair['remote']} -> {pair['local']} ({pair['why']})")
    for folder in report.folders:
        click.echo(prefix + folder.summary())
        for note in folder.notes:
            click.echo(f"{prefix}{folder.folder}: {note}")
    if report.refused:
        click.echo(
            f"{prefix}deletions were refused for safety in "
            f"{', '.join(f.folder for f in report.folders if f.refused)}; "
            "rerun with --force-delete if they are intended",
            err=True,
        )


def _error(message: str) -> None:
    click.echo(f"mailsync: error: {message}", err=True)


def _selection(options: dict) -> Selection:
    """--since, --before, --max-size."""
    since, before = options.get("since"), options.get("before")
    if since is not None and before is not None and since >= before:
        raise click.UsageError("--since must be earlier than --before: nothing would be copied")
    return Selection(since, before, options.get("max_size"))


def _run_sync(obj: Context, command: str, args, options) -> None:
    jobs = channelmod.jobs_for(
        obj.config,
        command,
        args,
        options.get("folder_patterns") or (),
        bool(options.get("mirror")),
        options.get("name_map") or (),
    )
    run_options = RunOptions(
        dry_run=bool(options.get("dry_run")),
        force_delete=bool(options.get("force_delete")),
        retry_refused=bool(options.get("retry_refused")),
        jobs=options.get("jobs"),
        selection=_selection(options),
    )

    def show_report(job: Job, report: Report) -> None:
        _print_report(obj, job, report, options)

    results, codes = [], []
    try:
        for job in jobs:
            result, code = channelmod.run(
                job,
                command,
                obj.state_dir,
                run_options,
                progress=_progress_factory(options.get("progress")),
                show_report=show_report,
                show_error=_error,
            )
            results.append(result)
            codes.append(code)
    except KeyboardInterrupt:
        _error("interrupted; the state is consistent, rerun to continue")
        _finish(options, command, results, EXIT_INTERRUPTED)
    _finish(options, command, results, channelmod.combine(codes))


def _finish(options: dict, command: str, results: list, code: int) -> None:
    if options.get("as_json"):
        click.echo(
            json.dumps({"command": command, "exit_code": code, "channels": results}, indent=2)
        )
    sys.exit(code)


@cli.command("list", epilog=EXIT_CODES)
@output_options
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
def list_(obj, store, as_json):
    """List a store's folders with message counts and sizes.

    A folder that a sync puts under another local name shows it (Gmail's special
    folders: ``-> Sent``), and one it leaves out unless named in --folders says so
    (Gmail's Important and Starred).  A special folder shows its role and how it is
    known (``\\Sent by its SPECIAL-USE``, ``\\Sent by its name``): another store's folder
    of that role is its folder in a sync or migrate between them.

    Whatever looks like mail but cannot be listed (an unreadable folder, an mbox file
    with text before its first From_ line, a tree nested too deep) is named on stderr
    and makes the exit code 1.
    """
    listing = channelmod.list_store(obj.config, store)
    rows, errors, code = listing.folders, listing.errors, listing.exit_code
    if as_json:
        report = {"store": listing.store, "folders": rows, "errors": errors, "exit_code": code}
        click.echo(json.dumps(report, indent=2))
        sys.exit(code)
    for error in errors:
        _error(error)
    for row in rows:
        line = f"{row['folder']}\t{row['messages']}\t{size_text(row['bytes'])}"
        if "local" in row:
            line += f"\t-> {row['local']}"
        if "role" in row:
            line += f"\t{row['role']} by its {row['role_by']}"
        if "left_out" in row:
            line += f"\tleft out unless named: {row['left_out']}"
        click.echo(line)
    total = sum(r["messages"] for r in rows)
    if not obj.quiet:
        click.echo(
            f"{len(rows)} folders, {total} messages, {size_text(sum(r['bytes'] for r in rows))}",
            err=True,
        )
    sys.exit(code)


@cli.command(epilog=EXIT_CODES)
@output_options
@click.argument("channels", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
def status(obj, channels, as_json):
    """Show what the state knows: folders, message counts, the last run."""
    out = channelmod.status(obj.config, obj.state_dir, channels)
    code = EXIT_PARTIAL if any("error" in entry for entry in out) else EXIT_OK
    if as_json:
        click.echo(json.dumps({"channels": out, "exit_code": code}, indent=2))
        sys.exit(code)
    if not out:
        click.echo("no channel has been synced yet")
    for entry in out:
        if "error" in entry:
            _error(entry["error"])
            continue
        click.echo(_status_line(entry))
        for folder in entry.get("folders", ()):
            click.echo(f"  {folder['folder']}\t{folder['remote']} remote\t{folder['local']} local")
        for refusal in entry.get("refused", ()):
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(refusal["first"]))
            click.echo(
                f"  refused by the {'local' if refusal['side'] == 'a' else 'remote'} side "
                f"since {since}: {refusal['folder']}: {summary_line(refusal)}: {refusal['reason']}"
            )
    sys.exit(code)


def _status_line(entry: dict) -> str:
    label = entry["channel"] or (
        f"{entry['remote']} <-> {entry['local']}" if entry.get("remote") else entry["state"]
    )
    run = entry["last_run"]
    if run is None:
        return f"{label}: never synced" + ("" if entry["channel"] else " (no run recorded)")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["finished"]))
    why = f": {run['errors'][0]}" if run["errors"] else ""
    if not entry["synced"]:
        return f"{label}: never synced; last attempt {when} failed (exit {run['exit_code']}){why}"
    return f"{label}: last run {when} ({run['command']}, exit {run['exit_code']}){why}"


@cli.command(epilog=EXIT_CODES)
@output_options
@click.argument("args", nargs=-1, required=True, metavar="CHANNEL | SOURCE DEST")
@click.option(
    "--folders",
    "folder_patterns",
    multiple=True,
    metavar="PATTERN",
    help="Only folders matching this glob; '!PATTERN' excludes.",
)
@click.option(
    "--map",
    "name_map",
    multiple=True,
    metavar="OLD=NEW",
    help="SOURCE folder OLD is DEST folder NEW, as given to the sync.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
def verify(obj, args, folder_patterns, name_map, as_json):
    """Check that every message of SOURCE is in DEST, comparing content.

    For a channel, SOURCE is its remote side and DEST its local side.  Each message
    missing in DEST, extra in DEST (in no SOURCE message's place) or with other flags
    there (in the flags both stores keep) is named: folder, date, sender, subject,
    Message-ID.  A copy that differs only as DEST normalises what it stores (an mbox's
    final newline, an IMAP server's rewrites) counts, and is counted apart.  Folders are
    paired as the sync pairs them.  Exit 1 when a message or a folder is missing on
    DEST, or could not be read; extra messages and changed flags are reported only.
    """
    job = channelmod.verify_job(obj.config, args, folder_patterns, name_map)
    result = channelmod.verify(job, obj.state_dir)
    code = EXIT_OK if result.ok else EXIT_PARTIAL
    for warning in result.warnings:
        log.warning("%s", warning)
    if as_json:
        click.echo(json.dumps({**result.as_dict(), "exit_code": code}, indent=2))
        sys.exit(code)
    for f in result.folders:
        problems = [f"{len(f.missing)} MISSING"] if f.missing else []
        if f.extra:
            problems.append(f"{len(f.extra)} extra")
        if f.changed_flags:
            problems.append(f"{len(f.changed_flags)} with other flags")
        if not f.on_destination:
            problems.append(f"folder {f.dest_folder} NOT ON THE DESTINATION")
        if f.unreadable:
            problems.append(f"{f.unreadable} unreadable on the source, not checked")
        if f.error:
            problems = [f"NOT CHECKED: {f.error}"]
        line = f"{f.folder}: {f.messages} messages, {', '.join(problems) or 'ok'}"
        if f.normalised and not f.error:
            line += f" ({f.normalised} differ only by the destination's normalisation)"
        click.echo(line)
        for m in f.missing:
            click.echo(f"  missing: {summary_line(m)}")
        for m in f.extra:
            click.echo(f"  extra: {summary_line(m)}")
        for m in f.changed_flags:
            since = "" if m["pending"] else " (changed in DEST)"
            click.echo(f"  flags{since}: {summary_line(m)}: {flags_difference(m)}")
    if result.missing:
        _error(
            f"{result.missing} messages of the source are not in the destination; "
            "run pull (or sync) again"
        )
    elif not result.ok:
        _error("folders of the source are missing on the destination or were not checked")
    sys.exit(code)


@cli.command(epilog=EXIT_CODES)
@output_options
@click.argument("store")
@click.option(
    "--no-browser",
    is_flag=True,
    help="Print the sign-in URL to open by hand instead of opening a browser "
    "(browser sign-in, e.g. Google).",
)
@click.pass_obj
def login(obj, store, no_browser):
    """Sign STORE in to OAuth2 once, so that later runs log in unattended.

    For a store with oauth2 = "microsoft" (or "custom" with device_url): prints a URL
    and a code to enter there, from any device, and waits.  For oauth2 = "google" (or
    grant = "authorization_code"): opens the browser, or with --no-browser prints the
    URL to open on this machine, and catches the redirect on 127.0.0.1.  The refresh
    token is kept in the system keyring or in $XDG_STATE_HOME/mailsync/tokens/STORE.json
    (mode 0600).  For grant = "client_credentials" it only checks that a token can be
    had; a store with token_command needs no login.
    """

    def show(text: str) -> None:
        click.echo(text)

    click.echo(channelmod.login(obj.config, store, show, no_browser=no_browser))
    sys.exit(EXIT_OK)


def main() -> None:
    os.umask(0o077)  # every file mailsync creates is private, whatever the caller's umask
    cli(prog_name="mailsync")

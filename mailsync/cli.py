"""The command line: parses, calls the library, formats the result.  Nothing else."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import click

from mailsync import __version__
from mailsync import config as configmod
from mailsync.errors import (
    EXIT_CONNECT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_SAFETY,
    EXIT_USAGE,
    ConfigError,
    FolderError,
    MailsyncError,
)
from mailsync.message import summary_line
from mailsync.policy import Policy
from mailsync.report import Report
from mailsync.state import State, default_state_dir, state_file_name
from mailsync.stores import NETWORK_SCHEMES, canonical_url, mask_url, open_store, split_url
from mailsync.sync import Syncer
from mailsync.verify import verify as verify_stores

log = logging.getLogger("mailsync")

EXIT_CODES = """\b
Exit codes:
  0    everything synced
  1    some messages or folders failed; a rerun may help
  2    usage or configuration error
  3    connection, TLS or authentication failure
  4    refused for safety: a mass deletion (see --force-delete)
  130  interrupted; the state is consistent, rerun to continue"""


MAX_JOBS = 16
DEFAULT_NETWORK_JOBS = 4


@dataclass
class Job:
    """One channel run: side a is the remote side, b the local side."""

    name: str | None
    url_a: str
    options_a: dict
    url_b: str
    options_b: dict
    direction: str
    delete: str
    patterns: list[str]
    folder_map: dict[str, str] | None = None  # remote name -> local name (channel folder)

    @property
    def label(self) -> str:
        return self.name or f"{mask_url(self.url_a)} <-> {mask_url(self.url_b)}"


class Context:
    def __init__(self, config_path, state_dir, verbose, quiet):
        self.config_path = config_path
        self.state_dir_option = state_dir
        self.verbose = verbose
        self.quiet = quiet
        self._config = None

    @property
    def config(self) -> configmod.Config:
        if self._config is None:
            self._config = configmod.load(self.config_path)
        return self._config

    @property
    def state_dir(self) -> str:
        return self.state_dir_option or self.config.state_dir or default_state_dir()

    def store(self, ref: str) -> tuple[str, dict]:
        """A config store name or a URL -> (url, options)."""
        if ref in self.config.stores:
            store = self.config.stores[ref]
            return store.url, dict(store.options)
        return ref, {}


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mailsync: %(message)s"))
    root = logging.getLogger("mailsync")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # -vv also shows the IMAP protocol: mailsync.stores.imap routes imapclient's log into
    # the "mailsync" logger, with credentials masked.


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
    _setup_logging(verbose, quiet)
    if password_command:
        os.environ["MAILSYNC_PASSWORD_COMMAND"] = password_command  # read by mailsync.net
    ctx.obj = Context(config_path, state_dir, verbose, quiet)


def _more_verbose(ctx, param, value) -> None:
    """-v/-q given after the command mean what they mean before it (mailsync pull -q)."""
    if not value or ctx.resilient_parsing:
        return
    obj = ctx.find_object(Context)
    if param.name == "verbose":
        obj.verbose += value
    else:
        obj.quiet = True
    _setup_logging(obj.verbose, obj.quiet)


def output_options(func):
    """-v and -q for every command, as for mailsync itself."""
    func = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_more_verbose,
        help="Print errors only (also before the command).",
    )(func)
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_more_verbose,
        help="Show each action; -vv shows debug output (also before the command).",
    )(func)


def sync_options(func):
    options = [
        click.option("--dry-run", is_flag=True, help="Print the plan; change nothing."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout."),
        click.option(
            "--progress/--no-progress",
            default=None,
            help="Progress bars on stderr (default: when stderr is a terminal).",
        ),
        click.option(
            "--folders",
            "folder_patterns",
            multiple=True,
            metavar="PATTERN",
            help="Only folders matching this glob; '!PATTERN' excludes; repeatable, "
            "later patterns win.",
        ),
        click.option(
            "--mirror",
            is_flag=True,
            help="Propagate deletions to the destination (pull keeps them by default).",
        ),
        click.option(
            "--jobs",
            "-j",
            type=click.IntRange(1, MAX_JOBS),
            default=None,
            metavar="N",
            help=f"Sync N folders at once over N connections (default {DEFAULT_NETWORK_JOBS} "
            f"with a network store, 1 between local stores; at most {MAX_JOBS}).",
        ),
        click.option(
            "--force-delete",
            is_flag=True,
            help="Allow deletions the safety check refused (more than half a folder, "
            "or a folder that became empty).",
        ),
        click.option(
            "--retry-refused",
            is_flag=True,
            help="Offer again the messages the destination refused for good on earlier "
            "runs (too big, malformed; mailsync status lists them).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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


def _jobs(obj: Context, command: str, args: tuple[str, ...], options: dict) -> list[Job]:
    channels = obj.config.channels
    patterns = list(options.get("folder_patterns") or ())
    if all(arg in channels for arg in args):
        jobs = []
        for arg in args:
            channel = channels[arg]
            direction = {"pull": "pull", "push": "push"}.get(command, channel.direction)
            jobs.append(
                Job(
                    arg,
                    channel.remote.url,
                    dict(channel.remote.options),
                    channel.local.url,
                    dict(channel.local.options),
                    direction,
                    _delete_policy(direction, channel.delete, options),
                    patterns or channel.folders,
                    {"INBOX": channel.folder} if channel.folder else None,
                )
            )
        _check_jobs(jobs)
        return jobs
    if len(args) != 2:
        unknown = [a for a in args if a not in channels]
        raise ConfigError(
            f"no channel named {', '.join(unknown)} in the config; give channel names or "
            f"exactly two stores (SOURCE DEST)"
        )
    first, second = (obj.store(arg) for arg in args)
    if command == "push":  # push SOURCE DEST: DEST is the remote side
        (url_a, opt_a), (url_b, opt_b) = second, first
    else:
        (url_a, opt_a), (url_b, opt_b) = first, second
    direction = {"pull": "pull", "push": "push"}.get(command, "both")
    jobs = [
        Job(
            None,
            url_a,
            opt_a,
            url_b,
            opt_b,
            direction,
            _delete_policy(direction, None, options),
            patterns or ["*"],
        )
    ]
    _check_jobs(jobs)
    return jobs


def _check_jobs(jobs: list[Job]) -> None:
    """What no job of a run may do: POP3 the wrong way round, two accounts sharing the
    environment's password."""
    for job in jobs:
        problems = configmod.pop_problems(job.url_a, job.url_b, job.direction, job.delete)
        if problems:
            raise ConfigError(f"{job.label}: " + "; ".join(problems))
    # Opening a store only reads its URL and options; nothing connects yet.
    endpoints = [
        open_store(url, options).password_endpoint()
        for job in jobs
        for url, options in ((job.url_a, job.options_a), (job.url_b, job.options_b))
    ]
    if any(endpoints):
        from mailsync.net import check_environment_password  # (ssl: only with network stores)

        check_environment_password(endpoints)


def _clock():
    """time.time, or for tests a fixed moment from MAILSYNC_NOW (seconds since the epoch),
    so that delete_after_days can be tested without waiting days."""
    fixed = os.environ.get("MAILSYNC_NOW")
    if not fixed:
        return time.time
    try:
        moment = float(fixed)
    except ValueError:
        raise ConfigError(f"MAILSYNC_NOW={fixed!r} is not a number of seconds since the epoch")
    return lambda: moment


def _delete_policy(direction: str, configured: str | None, options: dict) -> str:
    if options.get("mirror"):
        return "propagate"
    if configured:
        return configured
    return "propagate" if direction == "both" else "keep"


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


def _state_path(obj: Context, job: Job) -> str:
    name = state_file_name(job.name, canonical_url(job.url_a), canonical_url(job.url_b))
    return os.path.join(obj.state_dir, name)


def _run_job(obj: Context, command: str, job: Job, options: dict) -> tuple[dict, int]:
    started = time.time()
    result = {
        "channel": job.name,
        "remote": mask_url(job.url_a),
        "local": mask_url(job.url_b),
        "direction": job.direction,
        "delete": job.delete,
        "folders": [],
        "errors": [],
    }
    policy = Policy(job.direction, job.delete, bool(options.get("force_delete")))
    code = EXIT_OK
    stores = []
    try:
        # The stores first: a URL that cannot be read leaves no state file behind.
        store_a = open_store(job.url_a, job.options_a, read_only=not policy.writes("a"))
        stores.append(store_a)
        store_b = open_store(job.url_b, job.options_b, read_only=not policy.writes("b"))
        stores.append(store_b)
        with State(_state_path(obj, job)) as state:
            meta = {
                "channel": job.name or "",
                "url_a": canonical_url(job.url_a),
                "url_b": canonical_url(job.url_b),
            }
            if not options.get("dry_run") and any(state.get_meta(k) != v for k, v in meta.items()):
                state.begin()
                for name, value in meta.items():
                    state.set_meta(name, value)
                state.commit()
            jobs = options.get("jobs") or (
                DEFAULT_NETWORK_JOBS if _is_network(job.url_a) or _is_network(job.url_b) else 1
            )

            def open_stores():
                return (
                    open_store(job.url_a, job.options_a, read_only=not policy.writes("a")),
                    open_store(job.url_b, job.options_b, read_only=not policy.writes("b")),
                )

            syncer = Syncer(
                store_a,
                store_b,
                state,
                policy,
                job.patterns,
                dry_run=bool(options.get("dry_run")),
                progress=_progress_factory(options.get("progress")),
                jobs=jobs,
                open_stores=open_stores,
                folder_map=job.folder_map,
                clock=_clock(),
                retry_refused=bool(options.get("retry_refused")),
            )
            try:
                report = syncer.run()
            except KeyboardInterrupt:
                state.commit()
                raise
            except MailsyncError as error:
                if not options.get("dry_run") and not isinstance(error, ConfigError):
                    # So status tells a channel that never connected for what it is.
                    state.rollback()
                    failed = {**result, "errors": [str(error)], "exit_code": error.exit_code}
                    state.begin()
                    state.record_run(command, started, error.exit_code, failed)
                    state.commit()
                raise
            result.update(report.as_dict())
            code = _report_code(report)
            if not options.get("dry_run"):
                state.begin()
                state.record_run(command, started, code, result)
                state.commit()
            _print_report(obj, job, report, options)
    except ConfigError:
        raise
    except MailsyncError as error:
        result["errors"].append(str(error))
        _error(f"{job.label}: {error}")
        code = error.exit_code
    finally:
        for store in stores:
            try:
                store.close()
            except MailsyncError as error:
                _error(f"{job.label}: {error}")
                code = max(code, error.exit_code)
    result["exit_code"] = code
    return result, code


def _is_network(url: str) -> bool:
    return split_url(url)[0] in NETWORK_SCHEMES


def _report_code(report: Report) -> int:
    if report.errors:
        return EXIT_PARTIAL
    if report.refused:
        return EXIT_SAFETY
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _combine(codes: list[int]) -> int:
    for code in (EXIT_USAGE, EXIT_CONNECT, EXIT_SAFETY, EXIT_PARTIAL):
        if code in codes:
            return code
    return EXIT_OK


def _print_report(obj: Context, job: Job, report: Report, options: dict) -> None:
    if options.get("as_json") or obj.quiet:
        return
    prefix = f"{job.name}: " if job.name else ""
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


def _run_sync(obj: Context, command: str, args, options) -> None:
    jobs = _jobs(obj, command, args, options)
    results, codes = [], []
    try:
        for job in jobs:
            result, code = _run_job(obj, command, job, options)
            results.append(result)
            codes.append(code)
    except KeyboardInterrupt:
        _error("interrupted; the state is consistent, rerun to continue")
        _finish(options, command, results, EXIT_INTERRUPTED)
    _finish(options, command, results, _combine(codes))


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

    Whatever looks like mail but cannot be listed (an unreadable folder, an mbox file
    with text before its first From_ line, a tree nested too deep) is named on stderr
    and makes the exit code 1.
    """
    url, options = obj.store(store)
    rows, errors = [], []
    with open_store(url, options, read_only=True) as opened:
        names = opened.list_folders()
        errors.extend(opened.problems)
        for name in names:
            try:
                folder = opened.open_folder(name)
                listing = folder.list()
                errors.extend(f"{name}: {problem}" for problem in folder.problems)
                folder.close()
            except FolderError as error:
                errors.append(str(error))
                continue
            rows.append(
                {
                    "folder": name,
                    "messages": len(listing),
                    "bytes": sum(info.size for info in listing.values()),
                }
            )
    code = EXIT_PARTIAL if errors else EXIT_OK
    if as_json:
        report = {"store": mask_url(url), "folders": rows, "errors": errors, "exit_code": code}
        click.echo(json.dumps(report, indent=2))
        sys.exit(code)
    for error in errors:
        _error(error)
    for row in rows:
        click.echo(f"{row['folder']}\t{row['messages']}\t{_size(row['bytes'])}")
    total = sum(r["messages"] for r in rows)
    if not obj.quiet:
        click.echo(
            f"{len(rows)} folders, {total} messages, {_size(sum(r['bytes'] for r in rows))}",
            err=True,
        )
    sys.exit(code)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@cli.command(epilog=EXIT_CODES)
@output_options
@click.argument("channels", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
def status(obj, channels, as_json):
    """Show what the state knows: folders, message counts, the last run."""
    paths = []
    if channels:
        for name in channels:
            if name not in obj.config.channels:
                raise ConfigError(f"no channel named {name} in the config")
            channel = obj.config.channels[name]
            paths.append(
                (
                    name,
                    os.path.join(
                        obj.state_dir,
                        state_file_name(
                            name,
                            canonical_url(channel.remote.url),
                            canonical_url(channel.local.url),
                        ),
                    ),
                )
            )
    elif os.path.isdir(obj.state_dir):
        for entry in sorted(os.listdir(obj.state_dir)):
            if entry.endswith(".db"):
                paths.append((None, os.path.join(obj.state_dir, entry)))
    out = []
    for name, path in paths:
        if not os.path.exists(path):
            out.append({"channel": name, "state": path, "synced": False, "last_run": None})
            continue
        with State(path, lock=False, create=False) as state:
            entry = {"channel": name or state.get_meta("channel") or None, "state": path}
            entry.update(state.overview())
            out.append(entry)
    if as_json:
        click.echo(json.dumps({"channels": out}, indent=2))
        return
    if not out:
        click.echo("no channel has been synced yet")
    for entry in out:
        click.echo(_status_line(entry))
        for folder in entry.get("folders", ()):
            click.echo(f"  {folder['folder']}\t{folder['remote']} remote\t{folder['local']} local")
        for refusal in entry.get("refused", ()):
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(refusal["first"]))
            click.echo(
                f"  refused by the {'local' if refusal['side'] == 'a' else 'remote'} side "
                f"since {since}: {refusal['folder']}: {summary_line(refusal)}: {refusal['reason']}"
            )


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
def verify(obj, args, folder_patterns, as_json):
    """Check that every message of SOURCE is in DEST, comparing content.

    For a channel, SOURCE is its remote side and DEST its local side.  Flags are not
    compared.  A copy that differs only as DEST normalises what it stores (an mbox's
    final newline, an IMAP server's rewrites) counts, and is counted apart.  Each missing
    message is named (date, sender, subject, Message-ID).  Exit 1 when a message or a
    folder is missing on DEST, or could not be read.
    """
    folder_map = None
    if len(args) == 1 and args[0] in obj.config.channels:
        channel = obj.config.channels[args[0]]
        source, dest = (
            (channel.remote.url, channel.remote.options),
            (channel.local.url, channel.local.options),
        )
        patterns = list(folder_patterns) or channel.folders
        folder_map = {"INBOX": channel.folder} if channel.folder else None
    elif len(args) == 2:
        source, dest = obj.store(args[0]), obj.store(args[1])
        patterns = list(folder_patterns) or ["*"]
    else:
        raise ConfigError("verify takes a channel name or two stores (SOURCE DEST)")
    with open_store(*source, read_only=True) as src, open_store(*dest, read_only=True) as dst:
        result = verify_stores(src, dst, patterns, folder_map)
    code = EXIT_OK if result.ok else EXIT_PARTIAL
    for warning in result.warnings:
        log.warning("%s", warning)
    if as_json:
        folders = [
            {**vars(f), "missing": len(f.missing), "missing_messages": f.missing}
            for f in result.folders
        ]
        report = {"folders": folders, "missing": result.missing, "warnings": result.warnings}
        click.echo(json.dumps({**report, "exit_code": code}, indent=2))
        sys.exit(code)
    for f in result.folders:
        problems = [f"{len(f.missing)} MISSING"] if f.missing else []
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
    if result.missing:
        _error(
            f"{result.missing} messages of the source are not in the destination; "
            "run pull (or sync) again"
        )
    elif not result.ok:
        _error("folders of the source are missing on the destination or were not checked")
    sys.exit(code)


def main() -> None:
    os.umask(0o077)  # every file mailsync creates is private, whatever the caller's umask
    cli(prog_name="mailsync")

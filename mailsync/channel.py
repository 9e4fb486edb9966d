"""What the commands call: a channel, or two stores, as a Job; running, verifying and
listing it; what the state says of it.

cli.py parses the command line and prints around these, one call a command; a Python
caller, a batch runner or a test does what a command does with them, without Click.
Nothing here prints: results are returned as data, and run() reports as it goes through
the callbacks it is given.

    config = mailsync.config.load(None)
    for job in jobs_for(config, "pull", ["work"]):
        result, code = run(job, "pull", state_dir(config))
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsync import config as configmod
from mailsync.errors import (
    EXIT_CONNECT,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_SAFETY,
    EXIT_USAGE,
    ConfigError,
    FolderError,
    MailsyncError,
    StoreError,
)
from mailsync.folder_names import NameRules, folder_role, parse_map, store_pairs
from mailsync.folders import FolderMap, map_folders
from mailsync.policy import Policy, Selection
from mailsync.report import ProgressFactory, Report
from mailsync.state import State, default_state_dir, private_dir, state_file_name
from mailsync.stores import NETWORK_SCHEMES, canonical_url, mask_url, open_store, split_url
from mailsync.stores.base import Store
from mailsync.sync import Syncer
from mailsync.verify import Recorded, SyncedFlags, Trusted, Verification
from mailsync.verify import verify as verify_stores

log = logging.getLogger("mailsync")

MAX_JOBS = 16
DEFAULT_NETWORK_JOBS = 4


@dataclass
class Job:
    """One channel run: side a is the remote side, b the local side."""

    name: str | None
    url_a: str
    options_a: dict[str, Any]
    url_b: str
    options_b: dict[str, Any]
    direction: str
    delete: str
    patterns: list[str]
    folder_map: dict[str, str] | None = None  # remote name -> local name (channel folder)
    # The sides' [store.NAME] names (None: a URL): a store's OAuth2 sign-in is kept by name.
    store_a: str | None = None
    store_b: str | None = None
    # migrate: a message gone from the written side since it was copied is copied again
    # (Policy.refill); pull keeps it away.
    refill: bool = False
    # SOURCE folder name -> DEST folder name rules (--map, a channel's rename).
    name_rules: NameRules = field(default_factory=NameRules)

    def open_a(self, read_only: bool = False) -> Store:
        return open_store(self.url_a, self.options_a, read_only=read_only, name=self.store_a)

    def open_b(self, read_only: bool = False) -> Store:
        return open_store(self.url_b, self.options_b, read_only=read_only, name=self.store_b)

    @property
    def label(self) -> str:
        return self.name or f"{mask_url(self.url_a)} <-> {mask_url(self.url_b)}"


@dataclass
class RunOptions:
    """What a sync command asks of each job beyond the job itself."""

    dry_run: bool = False
    force_delete: bool = False
    retry_refused: bool = False
    jobs: int | None = None  # folders at once; None: DEFAULT_NETWORK_JOBS with a network store
    # Called with each message's size before it is copied (ratelimit.RateLimit).
    pace: Callable[[int], None] | None = None
    # Which never-copied messages are copied (--since, --before, --max-size).
    selection: Selection = field(default_factory=Selection)


def state_dir(config: configmod.Config) -> str:
    """Where the state files live unless the command line says: the config's
    state_dir, else $XDG_STATE_HOME/mailsync."""
    return config.state_dir or default_state_dir()


def state_path(directory: str, job: Job) -> str:
    """The job's state file in `directory`: by channel name, or for two stores by their
    URLs (so pull, sync and verify of the same two stores share it)."""
    name = state_file_name(job.name, canonical_url(job.url_a), canonical_url(job.url_b))
    return os.path.join(directory, name)


def resolve_store(config: configmod.Config, ref: str) -> tuple[str, dict[str, Any]]:
    """A config store name or a URL -> (url, options)."""
    if ref in config.stores:
        store = config.stores[ref]
        return store.url, dict(store.options)
    return ref, {}


def _name_of(store: configmod.StoreConfig) -> str | None:
    """A channel side's [store.NAME], or None when the channel names a URL."""
    return store.name if store.name != store.url else None


# jobs -----------------------------------------------------------------------------------
def jobs_for(
    config: configmod.Config,
    command: str,
    args: Sequence[str],
    patterns: Sequence[str] = (),
    mirror: bool = False,
    name_map: Sequence[str] = (),
) -> list[Job]:
    """The jobs of `command` (pull, push, sync) for `args`: channel names, or two stores
    (config store names or URLs; for push SOURCE DEST, DEST is the remote side).
    `patterns` (--folders) replace the channels' folders; `mirror` propagates deletions;
    `name_map` (--map OLD=NEW) pairs SOURCE folders with DEST folders of other names
    before a channel's rename rules.  ConfigError if the arguments name neither, or a
    job may not run (check_jobs)."""
    channels = config.channels
    exact = parse_map(name_map)
    if all(arg in channels for arg in args):
        jobs = [_channel_job(config, arg, command, patterns, mirror, exact) for arg in args]
        check_jobs(jobs)
        return jobs
    if len(args) != 2:
        unknown = [a for a in args if a not in channels]
        raise ConfigError(
            f"no channel named {', '.join(unknown)} in the config; give channel names or "
            f"exactly two stores (SOURCE DEST)"
        )
    jobs = [_two_stores_job(config, command, args, patterns, mirror, exact)]
    check_jobs(jobs)
    return jobs


def verify_job(
    config: configmod.Config,
    args: Sequence[str],
    patterns: Sequence[str],
    name_map: Sequence[str] = (),
) -> Job:
    """The job verify checks: a channel (its remote side is SOURCE, its local side DEST)
    or two stores SOURCE DEST.  It is the job `pull` would run for the same arguments,
    so verify reads the state and folder mapping the sync made."""
    exact = parse_map(name_map)
    if len(args) == 1 and args[0] in config.channels:
        return _channel_job(config, args[0], "pull", patterns, False, exact)
    if len(args) == 2:
        return _two_stores_job(config, "pull", args, patterns, False, exact)
    raise ConfigError("verify takes a channel name or two stores (SOURCE DEST)")


def migrate_job(
    config: configmod.Config,
    source: str,
    dest: str,
    patterns: Sequence[str] = (),
    options_a: dict[str, Any] | None = None,
    options_b: dict[str, Any] | None = None,
    name_map: Sequence[str] = (),
) -> Job:
    """The job `mailsync migrate SOURCE DEST` runs: the job pull runs for the same two
    stores (config store names or URLs), so it shares pull's and verify's state file and
    folder mapping; SOURCE is opened read-only and nothing is deleted in DEST.
    `options_a`, `options_b`: store options given per account (batch.py's
    password_command, token_command), over the config's; `name_map` as for jobs_for.
    ConfigError as jobs_for."""
    job = _two_stores_job(config, "pull", [source, dest], patterns, False, parse_map(name_map))
    job.refill = True  # DEST holds every SOURCE message, one deleted there since included
    job.options_a.update(options_a or {})
    job.options_b.update(options_b or {})
    check_jobs([job])
    return job


def _channel_job(
    config: configmod.Config,
    name: str,
    command: str,
    patterns: Sequence[str],
    mirror: bool,
    exact: tuple[tuple[str, str], ...] = (),
) -> Job:
    channel = config.channels[name]
    direction = {"pull": "pull", "push": "push"}.get(command, channel.direction)
    return Job(
        name,
        channel.remote.url,
        dict(channel.remote.options),
        channel.local.url,
        dict(channel.local.options),
        direction,
        delete_policy(direction, channel.delete, mirror),
        list(patterns) or channel.folders,
        {"INBOX": channel.folder} if channel.folder else None,
        _name_of(channel.remote),
        _name_of(channel.local),
        name_rules=NameRules(exact, channel.rename),
    )


def _two_stores_job(
    config: configmod.Config,
    command: str,
    args: Sequence[str],
    patterns: Sequence[str],
    mirror: bool,
    exact: tuple[tuple[str, str], ...] = (),
) -> Job:
    first, second = (
        (*resolve_store(config, arg), arg if arg in config.stores else None) for arg in args
    )
    if command == "push":  # push SOURCE DEST: DEST is the remote side
        (url_a, opt_a, name_a), (url_b, opt_b, name_b) = second, first
    else:
        (url_a, opt_a, name_a), (url_b, opt_b, name_b) = first, second
    direction = {"pull": "pull", "push": "push"}.get(command, "both")
    return Job(
        None,
        url_a,
        opt_a,
        url_b,
        opt_b,
        direction,
        delete_policy(direction, None, mirror),
        list(patterns) or ["*"],
        None,
        name_a,
        name_b,
        name_rules=NameRules(exact),
    )


def delete_policy(direction: str, configured: str | None, mirror: bool) -> str:
    if mirror:
        return "propagate"
    if configured:
        return configured
    return "propagate" if direction == "both" else "keep"


def check_jobs(jobs: list[Job]) -> None:
    """What no job of a run may do: POP3 the wrong way round, two accounts sharing the
    environment's password."""
    for job in jobs:
        problems = configmod.pop_problems(job.url_a, job.url_b, job.direction, job.delete)
        if problems:
            raise ConfigError(f"{job.label}: " + "; ".join(problems))
    # Opening a store only reads its URL and options; nothing connects yet.
    endpoints = [
        store.password_endpoint() for job in jobs for store in (job.open_a(), job.open_b())
    ]
    if any(endpoints):
        from mailsync.net import check_environment_password  # (ssl: only with network stores)

        check_environment_password(endpoints)


def clock() -> Callable[[], float]:
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


def is_network(url: str) -> bool:
    return split_url(url)[0] in NETWORK_SCHEMES


# running ---------------------------------------------------------------------------------
def run(
    job: Job,
    command: str,
    directory: str,
    options: RunOptions | None = None,
    progress: ProgressFactory | None = None,
    show_report: Callable[[Job, Report], None] | None = None,
    show_error: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], int]:
    """Run `job` for `command` with its state in `directory`; -> (the job's result as
    the JSON report has it, its exit code).  The run is recorded in the state (a failed
    one too, so status tells a channel that never connected for what it is).
    `show_report` is called with the report once it is recorded; `show_error` with each
    error line that stopped the job or closing a store (default: logged).  ConfigError,
    KeyboardInterrupt (the state is consistent) and the state's own errors propagate."""
    options = options or RunOptions()
    if options.dry_run:
        # The engine records folders in the state as it goes (and a State creates its
        # file): a dry run works on a snapshot of the state, so it writes nothing.
        import tempfile  # (only dry runs need it: not on every start-up)

        with tempfile.TemporaryDirectory(prefix="mailsync-dry-run-") as scratch:
            snapshot_state(job, directory, scratch)
            return _run(job, command, scratch, options, progress, show_report, show_error)
    return _run(job, command, directory, options, progress, show_report, show_error)


def snapshot_state(job: Job, directory: str, scratch: str) -> None:
    """A consistent copy of the job's state file (if it has one) into `scratch`."""
    path = state_path(directory, job)
    if not os.path.exists(path):
        return
    try:
        # No -wal file: nobody is writing it, and reading it as immutable leaves no -shm
        # or -wal behind; otherwise a read-only connection, which shares the writer's.
        quiet = not os.path.exists(path + "-wal")
        source = sqlite3.connect(f"file:{path}?{'immutable=1' if quiet else 'mode=ro'}", uri=True)
        try:
            target = state_path(scratch, job)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))  # private, as State's
            copy = sqlite3.connect(target)
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as error:
        raise StoreError(f"cannot read the state {path} for a dry run: {error}") from None


def _run(
    job: Job,
    command: str,
    directory: str,
    options: RunOptions,
    progress: ProgressFactory | None,
    show_report: Callable[[Job, Report], None] | None,
    show_error: Callable[[str], None] | None,
) -> tuple[dict[str, Any], int]:
    show_error = show_error or (lambda message: log.error("%s", message))
    started = time.time()  # (the wall clock, as State.record_run stamps the end)
    result: dict[str, Any] = {
        "channel": job.name,
        "remote": mask_url(job.url_a),
        "local": mask_url(job.url_b),
        "direction": job.direction,
        "delete": job.delete,
        "folders": [],
        "errors": [],
    }
    policy = Policy(job.direction, job.delete, options.force_delete, job.refill)
    code = EXIT_OK
    stores: list[Store] = []
    try:
        # The stores first: a URL that cannot be read leaves no state file behind.
        store_a = job.open_a(read_only=not policy.writes("a"))
        stores.append(store_a)
        store_b = job.open_b(read_only=not policy.writes("b"))
        stores.append(store_b)
        with State(state_path(directory, job)) as state:
            meta = {
                "channel": job.name or "",
                "url_a": canonical_url(job.url_a),
                "url_b": canonical_url(job.url_b),
            }
            if not options.dry_run and any(state.get_meta(k) != v for k, v in meta.items()):
                state.begin()
                for name, value in meta.items():
                    state.set_meta(name, value)
                state.commit()
            jobs = options.jobs or (
                DEFAULT_NETWORK_JOBS if is_network(job.url_a) or is_network(job.url_b) else 1
            )

            def open_stores() -> tuple[Store, Store]:
                return (
                    job.open_a(read_only=not policy.writes("a")),
                    job.open_b(read_only=not policy.writes("b")),
                )

            syncer = Syncer(
                store_a,
                store_b,
                state,
                policy,
                job.patterns,
                dry_run=options.dry_run,
                progress=progress,
                jobs=jobs,
                open_stores=open_stores,
                folder_map=job.folder_map,
                clock=clock(),
                retry_refused=options.retry_refused,
                pace=options.pace,
                name_rules=job.name_rules,
                selection=options.selection,
            )
            try:
                report = syncer.run()
            except KeyboardInterrupt:
                state.commit()
                raise
            except MailsyncError as error:
                if not options.dry_run and not isinstance(error, ConfigError):
                    # So status tells a channel that never connected for what it is.
                    state.rollback()
                    failed = {**result, "errors": [str(error)], "exit_code": error.exit_code}
                    state.begin()
                    state.record_run(command, started, error.exit_code, failed)
                    state.commit()
                raise
            result.update(report.as_dict())
            code = report_code(report)
            if not options.dry_run:
                state.begin()
                state.record_run(command, started, code, result)
                state.commit()
            if show_report is not None:
                show_report(job, report)
    except ConfigError:
        raise
    except MailsyncError as error:
        result["errors"].append(str(error))
        show_error(f"{job.label}: {error}")
        code = error.exit_code
    finally:
        for store in stores:
            try:
                store.close()
            except MailsyncError as error:
                show_error(f"{job.label}: {error}")
                code = max(code, error.exit_code)
    result["exit_code"] = code
    return result, code


def report_code(report: Report) -> int:
    """A job's exit code from its report."""
    if report.errors:
        return EXIT_PARTIAL
    if report.refused:
        return EXIT_SAFETY
    return EXIT_PARTIAL if report.failed else EXIT_OK


def combine(codes: Iterable[int]) -> int:
    """The exit code of a run of several jobs: the gravest of theirs."""
    codes = list(codes)
    for code in (EXIT_USAGE, EXIT_CONNECT, EXIT_SAFETY, EXIT_PARTIAL):
        if code in codes:
            return code
    return EXIT_OK


# verify ----------------------------------------------------------------------------------
def verify(
    job: Job, directory: str, selection: Selection | None = None, trust_state: bool = False
) -> Verification:
    """Is every message of the job's remote side (SOURCE) that `selection` selects on its
    local side (DEST)?  Both opened read-only; folders paired as the sync pairs them
    (job_folder_map).  `trust_state`: the pairs the state recorded count without being
    read again (verify.verify's `trusted`: migrate's check after its own copies)."""
    synced, trusted = recorded_pairs(job, directory)
    with (
        job.open_a(read_only=True) as source,
        job.open_b(read_only=True) as dest,
    ):
        mapping = job_folder_map(job, source, dest, directory)
        return verify_stores(
            source,
            dest,
            mapping,
            selection or Selection(),
            synced,
            trusted if trust_state else None,
        )


def recorded_pairs(job: Job, directory: str) -> tuple[SyncedFlags, Trusted]:
    """What the job's state recorded of each pair of messages, by SOURCE folder: the
    flags last synced (verify tells by them whether a flag difference is still to be
    copied), and the pairs with the folders' validities (verify's `trusted`); empty
    without a state.  Read without taking the channel's lock, as job_folder_map."""
    path = state_path(directory, job)
    if not os.path.exists(path):
        return {}, {}
    synced: dict[str, dict[tuple[str, str], frozenset[str]]] = {}
    trusted: dict[str, Recorded] = {}
    with State(path, lock=False, create=False) as state:
        for row in state.folders():
            both = [
                (pair.key_a, pair.key_b, pair.flags)
                for pair in state.pairs(row.id)
                if pair.key_a is not None and pair.key_b is not None
            ]
            synced[row.name_a] = {(a, b): flags for a, b, flags in both}
            unconfirmed = state.unconfirmed(row.id)
            trusted[row.name_a] = Recorded(
                row.validity_a,
                row.validity_b,
                {a: b for a, b, _ in both if b not in unconfirmed},
            )
    return synced, trusted


def job_folder_map(job: Job, remote: Store, local: Store | None, directory: str) -> FolderMap:
    """The job's folder mapping as its last sync left it (folders.map_folders on the
    state's folders, read without taking the channel's lock, and folder_names'
    pairs); without a state, the channel map, patterns and name rules alone.  No
    `local` store: one that does not exist yet (a dry run into a new DEST)."""
    path = state_path(directory, job)
    rows = []
    names = {"a": remote.list_folders(), "b": local.list_folders() if local is not None else []}
    if os.path.exists(path):
        with State(path, lock=False, create=False) as state:
            rows = state.folders()
            pairs = store_pairs(remote, local, names, rows, job.name_rules, job.direction, state)
    else:
        pairs = store_pairs(remote, local, names, rows, job.name_rules, job.direction, None)
    renamed = any(row.name_b != row.name_a for row in rows)
    former = remote.former_names() if renamed else {}
    given = remote.local_names()
    given.update((name, other) for name, (other, _) in pairs.items())
    return map_folders(
        job.folder_map,
        job.patterns,
        rows,
        former,
        given=given,
        redundant=remote.redundant_folders(),
    )


# list and status -------------------------------------------------------------------------
@dataclass
class StoreListing:
    """A store's folders as `mailsync list` shows them."""

    store: str  # the URL, any password masked
    folders: list[dict[str, Any]] = field(default_factory=list)  # folder, messages, bytes
    errors: list[str] = field(default_factory=list)  # what could not be listed

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.errors else EXIT_OK


def list_store(config: configmod.Config, ref: str) -> StoreListing:
    """Every folder of a store (a config store name or a URL) with its message count and
    size, and whatever looks like mail but could not be listed."""
    url, options = resolve_store(config, ref)
    listing = StoreListing(mask_url(url))
    name = ref if ref in config.stores else None
    with open_store(url, options, read_only=True, name=name) as opened:
        names = opened.list_folders()
        listing.errors.extend(opened.problems)
        # Where a job would put a folder otherwise than under its own name, or leave it
        # out unless asked (Gmail): folders.map_folders.
        local_names, redundant = opened.local_names(), opened.redundant_folders()
        # What folder_names pairs a folder by, with another store's (SPECIAL-USE, name).
        special = opened.special_folders()
        for name in names:
            try:
                folder = opened.open_folder(name)
                messages = folder.list()
                listing.errors.extend(f"{name}: {problem}" for problem in folder.problems)
                folder.close()
            except FolderError as error:
                listing.errors.append(str(error))
                continue
            row: dict[str, Any] = {
                "folder": name,
                "messages": len(messages),
                "bytes": sum(info.size for info in messages.values()),
            }
            if name in local_names:
                row["local"] = local_names[name]
            role = folder_role(name, special.get(name))
            if role is not None:
                row["role"], row["role_by"] = role
            if name in redundant:
                row["left_out"] = redundant[name]
            listing.folders.append(row)
    return listing


def status(
    config: configmod.Config, directory: str, channels: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """What the state knows of these channels (default: of every state file in
    `directory`): per channel, its state file, the two sides, each folder's pair counts,
    the last run, whether it ever synced, the messages refused for good (State.overview).
    A channel never synced is {"channel", "state", "synced": False, "last_run": None};
    a state file that cannot be read (a newer mailsync's, a damaged one) is {"channel",
    "state", "error"}, and the others are still shown."""
    paths: list[tuple[str | None, str]] = []
    if channels:
        for name in channels:
            if name not in config.channels:
                raise ConfigError(f"no channel named {name} in the config")
            paths.append(
                (name, state_path(directory, _channel_job(config, name, "sync", (), False)))
            )
    elif os.path.isdir(directory):
        for entry in sorted(os.listdir(directory)):
            if entry.endswith(".db"):
                paths.append((None, os.path.join(directory, entry)))
    out: list[dict[str, Any]] = []
    if paths:
        private_dir(directory)  # a directory others could plant files in: exit 2, as a run
    for channel, path in paths:
        if not os.path.exists(path):
            out.append({"channel": channel, "state": path, "synced": False, "last_run": None})
            continue
        try:
            with State(path, lock=False, create=False) as state:
                out.append(
                    {
                        "channel": channel or state.get_meta("channel") or None,
                        "state": path,
                        **state.overview(),
                    }
                )
        except MailsyncError as error:  # this file only (a newer mailsync's, unreadable)
            out.append({"channel": channel, "state": path, "error": str(error)})
    return out


# mailsync login ---------------------------------------------------------------------------
def login(
    config: configmod.Config,
    ref: str,
    show: Callable[[str], None],
    *,
    no_browser: bool = False,
    open_browser: Callable[[str], bool] | None = None,
) -> str:
    """What ``mailsync login STORE`` does for a store (a config store name or a URL) that
    logs in with OAuth2: sign in with its grant (tokens.login: device code, the browser,
    or for client credentials a check that a token can be had), `show` getting what
    the user must see; returns one line saying what was done.  ConfigError (exit 2)
    for a store that has no OAuth2 settings; AuthError/ConnectError (exit 3) as the
    sign-in fails."""
    from mailsync import tokens

    url, options = resolve_store(config, ref)
    store = open_store(url, options, read_only=True, name=ref if ref in config.stores else None)
    source = getattr(store, "tokens", None)
    if not isinstance(source, tokens.TokenSource):
        raise ConfigError(
            f"store {ref} has no OAuth2 settings (token_command, or oauth2 with client_id); "
            "there is nothing to sign in to"
        )
    return tokens.login(source, show, no_browser=no_browser, open_browser=open_browser)

"""`mailsync migrate --accounts FILE.csv`: many migrations from one file, several at once,
split across machines by --shard.

The file (read_accounts) has a header row naming its columns: ``source``, ``dest``,
``source_password_command``, ``dest_password_command`` (required), ``source_token_command``,
``dest_token_command`` (optional); one account a row.  A store is a URL or a config
store name, as on the command line.  Passwords never appear in the file: each network
side of an account has its own password (or token) command, passed to its store as a
store option (what password_command in a [store.NAME] table is), so no two accounts
share the environment's password, and nothing secret reaches argv or the logs.  Every
row is checked before anything runs; all problems are reported with their line numbers
at once (ConfigError: exit 2).

Each account is one migrate.migrate() with its own state file (the state of its two
stores, as `mailsync migrate SOURCE DEST` would use).  With parallel > 1 the accounts run
in a pool of separate processes (spawned, not forked): nothing of one account -- the
password cache and net.SECRETS, open connections, the crash hook's counter, the logging
set-up -- is shared with another, and an account whose process dies is reported as
failed while the others go on.

Shards: select(accounts, K, N) keeps rows K, K+N, K+2N... (K counted from 0, in file
order, blank lines not counted), so N machines given the same file and K = 0..N-1 split
it with no coordination; a Kubernetes Indexed Job gives K as $JOB_COMPLETION_INDEX.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailsync import config as configmod
from mailsync.channel import Job, is_network, migrate_job, resolve_store
from mailsync.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, MailsyncError
from mailsync.migrate import MigrateOptions, migrate
from mailsync.state import state_file_name
from mailsync.stores import canonical_url, mask_url

log = logging.getLogger("mailsync")

REQUIRED_COLUMNS = ("source", "dest", "source_password_command", "dest_password_command")
OPTIONAL_COLUMNS = ("source_token_command", "dest_token_command")
#: Where --shard N (without K) takes K from: a Kubernetes Indexed Job's pod index.
SHARD_INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
MAX_PARALLEL = 64


@dataclass
class Account:
    """One row of the accounts file, as the job it runs."""

    line: int  # in the file, for messages
    job: Job

    @property
    def label(self) -> str:
        return f"line {self.line}: {mask_url(self.job.url_a)} -> {mask_url(self.job.url_b)}"


def read_accounts(path: str, config: configmod.Config) -> list[Account]:
    """The accounts of the CSV file at `path`, each checked as `mailsync migrate` would
    check its two stores.  ConfigError naming every bad line (or a bad header), so
    nothing runs until the whole file is right."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"cannot read the accounts file {path}: {error}")
    if not rows:
        raise ConfigError(
            f"{path}: empty; the first line names the columns: {', '.join(REQUIRED_COLUMNS)}"
        )
    header = [name.strip().lower() for name in rows[0]]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        problems = []
        if missing:
            problems.append(f"lacks the column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"has unknown column(s) {', '.join(map(repr, unknown))}")
        if len(set(header)) != len(header):
            problems.append("names a column twice")
        raise ConfigError(
            f"{path} line 1: the header {' and '.join(problems)}; the columns are "
            f"{', '.join(REQUIRED_COLUMNS)} and optionally {', '.join(OPTIONAL_COLUMNS)}"
        )
    accounts, errors = [], []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            errors.append(f"line {number}: {len(row)} fields, the header has {len(header)}")
            continue
        fields = {name: cell.strip() for name, cell in zip(header, row, strict=True)}
        try:
            account = Account(number, _job(fields, config))
        except ConfigError as error:
            errors.append(f"line {number}: {error}")
            continue
        identity = state_file_name(
            None, canonical_url(account.job.url_a), canonical_url(account.job.url_b)
        )
        if identity in seen:
            errors.append(f"line {number}: the same SOURCE and DEST as line {seen[identity]}")
            continue
        seen[identity] = number
        accounts.append(account)
    if errors:
        raise ConfigError(
            f"{path}: {len(errors)} bad line(s), nothing was run: " + "; ".join(errors)
        )
    if not accounts:
        raise ConfigError(f"{path}: no accounts (only the header)")
    return accounts


def _job(fields: Mapping[str, str], config: configmod.Config) -> Job:
    """An account's job: its two stores with their password or token commands."""
    for side in ("source", "dest"):
        if not fields[side]:
            raise ConfigError(f"{side} is empty")
    options: dict[str, dict[str, Any]] = {}
    for side in ("source", "dest"):
        given = {
            option: fields[f"{side}_{option}"]
            for option in ("password_command", "token_command")
            if fields.get(f"{side}_{option}")
        }
        options[side] = given
        url = resolve_store(config, fields[side])[0]
        if given and not is_network(url):
            raise ConfigError(f"{side} {mask_url(url)} is local: it takes no password command")
    job = migrate_job(
        config, fields["source"], fields["dest"], (), options["source"], options["dest"]
    )
    for side, url, store_options in (
        ("source", job.url_a, job.options_a),
        ("dest", job.url_b, job.options_b),
    ):
        signs_in = ("password_command", *configmod.TOKEN_OPTIONS)
        if is_network(url) and not any(store_options.get(option) for option in signs_in):
            raise ConfigError(
                f"{side} {mask_url(url)} needs a {side}_password_command or "
                f"{side}_token_command (passwords never go in the file)"
            )
    return job


def parse_shard(text: str, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """--shard 'K/N' -> (K, N), K counted from 0 (0 <= K < N); 'N' alone takes K from
    $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's, 0-based too).  ConfigError else."""
    index_text, slash, count_text = text.partition("/")
    if not slash:
        index_text, count_text = environ.get(SHARD_INDEX_VARIABLE, ""), text
        if not index_text:
            raise ConfigError(
                f"--shard {text}: give K/N, or set {SHARD_INDEX_VARIABLE} to K (0 to N-1)"
            )
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index = count = -1
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {index_text}/{count_text}: give K/N with 0 <= K < N")
    return index, count


def select(accounts: list[Account], index: int, count: int) -> list[Account]:
    """Shard `index` of `count`: the accounts at positions index, index+count, ..."""
    return accounts[index::count]


# running ---------------------------------------------------------------------------------
def run_account(account: Account, directory: str, options: MigrateOptions) -> dict[str, Any]:
    """One account's migration -> its summary row (as the JSON report has it: the
    columns of the table, and the whole migration).  Never raises for the account's own
    failures: they are its row's `error`."""
    row: dict[str, Any] = {
        "line": account.line,
        "source": mask_url(account.job.url_a),
        "dest": mask_url(account.job.url_b),
    }
    try:
        migration = migrate(
            account.job,
            directory,
            options,
            show_error=lambda message: log.error("%s: %s", account.label, message),
        )
    except MailsyncError as error:
        return _failed(row, str(error), error.exit_code)
    except Exception as error:  # a bug: this account fails, the others go on
        log.debug("%s: unexpected error", account.label, exc_info=error)
        return _failed(row, f"unexpected {type(error).__name__}: {error}", EXIT_PARTIAL)
    report = migration.as_dict()
    first_error = next(
        (e for e in [*migration.errors, *(e for f in migration.folders for e in f.errors)]),
        None,
    )
    if migration.complete or (options.dry_run and migration.exit_code == EXIT_OK):
        result = "complete" if migration.complete else "dry run"
    elif migration.checked:
        result = "incomplete"
    else:
        result = "error"
    row.update(
        folders=len(migration.folders),
        messages=migration.messages,
        copied=report["copied"],
        adopted=report["adopted"],
        skipped=report["skipped"],
        failed=report["failed"],
        missing=migration.missing,
        result=result,
        error=None if result in ("complete", "dry run") else (first_error or migration.verdict),
        exit_code=migration.exit_code,
        migration=report,
    )
    return row


def _failed(row: dict[str, Any], error: str, code: int) -> dict[str, Any]:
    row.update(
        folders=0,
        messages=0,
        copied=0,
        adopted=0,
        skipped=0,
        failed=0,
        missing=None,
        result="error",
        error=error,
        exit_code=code,
        migration=None,
    )
    return row


def run_accounts(
    accounts: list[Account],
    directory: str,
    options: MigrateOptions,
    parallel: int = 1,
    done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every account's migration, `parallel` at once (each in its own process when
    more than one), going on past failed ones; -> their rows in file order.  `done` is
    called with each row as its account finishes."""
    done = done or (lambda row: None)
    rows = []
    if parallel <= 1 or len(accounts) == 1:
        for account in accounts:
            rows.append(run_account(account, directory, options))
            done(rows[-1])
        return rows
    # (Imported here: multiprocessing costs every command's start-up some 10 ms.)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    level = logging.getLogger("mailsync").getEffectiveLevel()
    with ProcessPoolExecutor(
        min(parallel, len(accounts)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_setup,
        initargs=(level,),
    ) as pool:
        futures = {
            pool.submit(run_account, account, directory, options): account for account in accounts
        }
        for future in as_completed(futures):
            account = futures[future]
            try:
                row = future.result()
            except Exception as error:  # the worker died (killed, out of memory)
                row = _failed(
                    {
                        "line": account.line,
                        "source": mask_url(account.job.url_a),
                        "dest": mask_url(account.job.url_b),
                    },
                    f"its process failed: {type(error).__name__}: {error}; rerun to go on",
                    EXIT_PARTIAL,
                )
            rows.append(row)
            done(row)
    return sorted(rows, key=lambda row: row["line"])


def _worker_setup(level: int) -> None:
    """A worker process logs as the command does (cli._setup_logging), at its level."""
    os.umask(0o077)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mailsync: %(message)s"))
    logger = logging.getLogger("mailsync")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def exit_code(rows: list[dict[str, Any]]) -> int:
    """0 when every account is complete (or, for a dry run, ran); else the gravest code
    among them (channel.combine), at least 1."""
    from mailsync.channel import combine

    code = combine(row["exit_code"] for row in rows)
    if code == EXIT_OK and any(row["result"] not in ("complete", "dry run") for row in rows):
        return EXIT_PARTIAL
    return code


ACCOUNT_COLUMNS = ("folders", "messages", "copied", "adopted", "skipped", "failed")


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The summary table of run_accounts()'s rows, for people: a header, a row each."""
    header = ["account", *ACCOUNT_COLUMNS, "result"]
    table = [
        [
            f"line {row['line']}: {row['source']} -> {row['dest']}",
            *(str(row[name]) for name in ACCOUNT_COLUMNS),
            row["result"] + (f": {row['error']}" if row["error"] else ""),
        ]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header) - 1)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1]
        for cells in [header, *table]
    ]


def summary(rows: list[dict[str, Any]]) -> str:
    complete = sum(row["result"] in ("complete", "dry run") for row in rows)
    return f"{complete} of {len(rows)} accounts complete"

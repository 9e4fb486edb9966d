"""The command line's shared parts: the options several commands take (-v/-q after the
command, the options of every command that copies mail and of those that may delete),
their parsing callbacks, the exit code texts, the logging they set up, and Context (what
the mailsync group passes its commands).  The commands themselves are cli.py's; both
modules are the command line, the only code that knows Click."""

from __future__ import annotations

import logging
import sys

import click

from mailsync import channel as channelmod
from mailsync import config as configmod
from mailsync.channel import DEFAULT_NETWORK_JOBS, MAX_JOBS
from mailsync.errors import MailsyncError
from mailsync.policy import parse_date, parse_size
from mailsync.ratelimit import parse_bytes_rate

EXIT_CODES = """\b
Exit codes:
  0    everything synced
  1    some messages or folders failed; a rerun may help
  2    usage or configuration error
  3    connection, TLS or authentication failure
  4    refused for safety: a mass deletion (see --force-delete)
  130  interrupted; the state is consistent, rerun to continue"""


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
        return self.state_dir_option or channelmod.state_dir(self.config)


def setup_logging(verbose: int, quiet: bool) -> None:
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


def more_verbose(ctx, param, value) -> None:
    """-v/-q given after the command mean what they mean before it (mailsync pull -q)."""
    if not value or ctx.resilient_parsing:
        return
    obj = ctx.find_object(Context)
    if param.name == "verbose":
        obj.verbose += value
    else:
        obj.quiet = True
    setup_logging(obj.verbose, obj.quiet)


def output_options(func):
    """-v and -q for every command, as for mailsync itself."""
    func = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=more_verbose,
        help="Print errors only (also before the command).",
    )(func)
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=more_verbose,
        help="Show each action; -vv shows debug output (also before the command).",
    )(func)


def date_option(ctx, param, value):
    try:
        return None if value is None else parse_date(value)
    except ValueError as error:
        raise click.BadParameter(str(error))


def size_option(ctx, param, value):
    try:
        return None if value is None else parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error))


#: The options of every command that copies mail (pull, push, sync, migrate).
COPY_OPTIONS = [
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
        "--jobs",
        "-j",
        type=click.IntRange(1, MAX_JOBS),
        default=None,
        metavar="N",
        help=f"Sync N folders at once over N connections (default {DEFAULT_NETWORK_JOBS} "
        f"with a network store, 1 between local stores; at most {MAX_JOBS}).",
    ),
    click.option(
        "--map",
        "name_map",
        multiple=True,
        metavar="OLD=NEW",
        help="Copy SOURCE folder OLD to DEST folder NEW (mailsync names, '/' between "
        "levels); repeatable; before a channel's rename rules.",
    ),
    click.option(
        "--since",
        metavar="DATE",
        callback=date_option,
        help="Copy only messages that arrived on or after DATE (YYYY-MM-DD, UTC; by "
        "IMAP INTERNALDATE, a file's mtime); others are left out, not deleted.",
    ),
    click.option(
        "--before",
        metavar="DATE",
        callback=date_option,
        help="Copy only messages that arrived before DATE (as --since).",
    ),
    click.option(
        "--max-size",
        metavar="SIZE",
        callback=size_option,
        help="Copy only messages of at most SIZE (bytes, or 500K, 25M, 1G).",
    ),
    click.option(
        "--retry-refused",
        is_flag=True,
        help="Offer again the messages the destination refused for good on earlier "
        "runs (too big, malformed; mailsync status lists them).",
    ),
]
#: And those of the commands that may delete in the destination (pull, push, sync).
DELETE_OPTIONS = [
    click.option(
        "--mirror",
        is_flag=True,
        help="Propagate deletions to the destination (pull keeps them by default).",
    ),
    click.option(
        "--force-delete",
        is_flag=True,
        help="Allow deletions the safety check refused (more than half a folder, "
        "or a folder that became empty).",
    ),
]


def with_options(options, func):
    for option in reversed(options):
        func = option(func)
    return func


def copy_options(func):
    return with_options(COPY_OPTIONS, func)


def sync_options(func):
    return with_options(COPY_OPTIONS + DELETE_OPTIONS, func)


MIGRATE_EXIT_CODES = """\b
Exit codes:
  0    complete: every selected SOURCE message is in DEST (every account's, with --accounts)
  1    incomplete: messages missing or failed (or an account is); a rerun continues
  2    usage or configuration error (a bad accounts file: nothing ran)
  3    connection, TLS or authentication failure
  130  interrupted; the state is consistent, rerun to continue"""


def rate_option(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_bytes_rate(value)
    except MailsyncError as error:
        raise click.BadParameter(str(error)) from None

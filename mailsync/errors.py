"""One exception tree; each error carries its scope and the exit code it maps to.

Scope follows the blast radius (see mbsync): a MessageError skips one message, a
FolderError skips one folder, a StoreError stops the whole channel.  Every error's
text is one sentence that says what went wrong and what to do.
"""

from __future__ import annotations

# Exit codes, documented in --help, man/mailsync.1 and the README.
EXIT_OK = 0
EXIT_PARTIAL = 1  # some messages or folders failed; a rerun may help
EXIT_USAGE = 2  # usage or configuration error; fix the command or config
EXIT_CONNECT = 3  # connection, TLS or authentication failure
EXIT_SAFETY = 4  # refused for safety (mass deletion); see --force-delete
EXIT_INTERRUPTED = 130  # interrupted; the state is consistent, rerun to continue


class MailsyncError(Exception):
    """Base class.  str(error) is the one line shown to the user."""

    exit_code = EXIT_PARTIAL


class ConfigError(MailsyncError):
    """Bad command line, config file or store URL."""

    exit_code = EXIT_USAGE


class StoreError(MailsyncError):
    """The store as a whole cannot be used; the channel stops."""

    exit_code = EXIT_PARTIAL


class ConnectError(StoreError):
    """Connection, TLS or authentication failure."""

    exit_code = EXIT_CONNECT


class AuthError(ConnectError):
    """Wrong credentials: retrying will not help."""


class LockedError(StoreError):
    """Another run holds the channel or the folder."""


class FolderError(MailsyncError):
    """One folder cannot be synced; the others go on."""


class RenameRefused(FolderError):
    """Store.rename_folder() refused before it changed anything (the new name is taken,
    or cannot be a folder name there)."""


class MessageError(MailsyncError):
    """One message cannot be read or written; it is skipped."""


class RefusedError(MessageError):
    """The destination refuses this one message for good (too big, malformed, empty):
    trying again will not help.  The engine records it in the state and does not offer it
    again unless asked (--retry-refused).  `reason` is the destination's own words.  A
    refusal that says "try later" (over quota, server busy) is a plain MessageError."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class CannotCreate(RefusedError):
    """The destination can create no message as the source has it (Graph makes only
    drafts).  A two-way run refuses each message it would copy there, as any
    RefusedError: the message stays where it is, named, and later runs hold it back.  A
    one-way run into it (push, migrate) stops instead with exit 2 and this sentence, as
    nothing it exists to copy could arrive (copies.py)."""


class SafetyError(MailsyncError):
    """A run was refused because it would delete too much."""

    exit_code = EXIT_SAFETY

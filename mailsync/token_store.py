"""Where a store's refresh token is kept between runs (``TokenStore``): in the system
keyring (service ``mailsync``, user ``oauth2:STORE``) when the optional ``keyring`` package
has a recommended backend (priority 1 or more: keyring's own rule of thumb; the plain-text
backends of keyrings.alt are below it, and no safer than our file), else in
``$XDG_STATE_HOME/mailsync/tokens/STORE.json``: mode 0600 in a 0700 directory, written
atomically (a new file, fsync, rename, fsync of the directory) through a descriptor of the
directory opened without following symlinks.  A lock file beside it (``STORE.lock``, flock)
serialises refreshes between processes, so two runs from cron cannot both spend one
rotating refresh token.  The record (``tokens_record``) holds the access token and its
expiry beside the refresh token: tokens.py says why.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator

from mailsync.errors import AuthError, ConnectError
from mailsync.oauth import OAuthClient, Tokens, register_secret

log = logging.getLogger("mailsync")

RECORD_VERSION = 1
KEYRING_SERVICE = "mailsync"
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def default_token_dir() -> str:
    from mailsync.state import default_state_dir

    return os.path.join(default_state_dir(), "tokens")


# -- the keyring ----------------------------------------------------------------------------


def system_keyring():
    """The keyring backend to keep tokens in, or None: the optional ``keyring`` package
    missing, or its backend not a recommended one (priority below 1: the fail backend,
    keyrings.alt's plain-text files)."""
    try:
        import keyring
    except Exception:  # not installed, or broken: the file it is
        return None
    try:
        backend = keyring.get_keyring()
        return backend if usable_keyring(backend) else None
    except Exception:
        return None


def usable_keyring(backend) -> bool:
    """Whether a keyring backend is one to trust with a refresh token: keyring's
    documentation calls a priority of 1 or more "recommended", below that merely
    "suitable" (and 0 or an error: not usable at all)."""
    try:
        return float(backend.priority) >= 1
    except Exception:
        return False


# -- the token store --------------------------------------------------------------------


def _file_name(store: str) -> str:
    """A file name for a store name: itself when it is tame, else a tame version of it
    with a digest of the original (so "a/b" and "a_b" differ)."""
    if _SAFE_NAME.fullmatch(store):
        return store
    tame = re.sub(r"[^A-Za-z0-9._-]", "_", store)[:60].lstrip(".") or "store"
    return f"{tame}-{hashlib.sha256(store.encode()).hexdigest()[:12]}"


class TokenStore:
    """The saved sign-in of one store: a JSON record (``refresh_token``, ``access_token``,
    ``expires_at``, and the ``client_id`` and ``token_url`` it was issued for) in the
    keyring or in DIRECTORY/NAME.json.  `keyring` is a keyring backend (default: the
    system's, when usable; None: files only).  A token file or directory that cannot
    be used (a symlink, another user's, unwritable) is ConnectError (exit 3: without
    it the store cannot log in), saying what to fix."""

    _DEFAULT = object()

    def __init__(self, store: str, directory: str | None = None, keyring=_DEFAULT):
        self.store = store
        self.directory = directory or default_token_dir()
        self.name = _file_name(store)
        self.path = os.path.join(self.directory, self.name + ".json")
        self.keyring = system_keyring() if keyring is TokenStore._DEFAULT else keyring
        self._keyring_user = f"oauth2:{store}"

    # the directory ----------------------------------------------------------------------
    def _open_directory(self) -> int:
        """A descriptor of the token directory (created 0700 when missing, its mode made
        0700 when wider), opened without following a symlink in its last component."""
        try:
            os.makedirs(self.directory, mode=_DIR_MODE, exist_ok=True)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as error:
            if error.errno == errno.ELOOP or (
                error.errno == errno.ENOTDIR and os.path.islink(self.directory)
            ):
                raise ConnectError(
                    f"{self.directory} is a symbolic link; mailsync keeps tokens only in a "
                    "real directory: remove the link"
                )
            raise ConnectError(f"cannot use {self.directory} for tokens ({error.strerror})")
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise ConnectError(
                    f"{self.directory} belongs to another user; mailsync keeps tokens only "
                    "in a directory of your own"
                )
            if stat.S_IMODE(st.st_mode) != _DIR_MODE:
                os.fchmod(fd, _DIR_MODE)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (an flock on DIRECTORY/NAME.lock): one process at a time
        reads, refreshes and saves."""
        import fcntl

        dir_fd = self._open_directory()
        try:
            fd = os.open(
                self.name + ".lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                _FILE_MODE,
                dir_fd=dir_fd,
            )
        except OSError as error:
            os.close(dir_fd)
            raise ConnectError(f"cannot lock the tokens of store {self.store} ({error.strerror})")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
            os.close(dir_fd)

    # reading --------------------------------------------------------------------------------
    def load(self) -> dict | None:
        """The saved record, or None when there is none (never logged in, or removed)."""
        if self.keyring is not None:
            try:
                text = self.keyring.get_password(KEYRING_SERVICE, self._keyring_user)
            except Exception as error:
                log.warning(
                    "store %s: cannot read the keyring (%s); using %s",
                    self.store,
                    type(error).__name__,
                    self.path,
                )
                text = None
            if text:
                return self._parse(text, "the keyring")
        return self._load_file()

    def _load_file(self) -> dict | None:
        dir_fd = self._open_directory()
        try:
            try:
                fd = os.open(
                    self.name + ".json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                )
            except FileNotFoundError:
                return None
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise ConnectError(f"{self.path} is a symbolic link; remove it")
                raise ConnectError(f"cannot read {self.path} ({error.strerror})")
            with os.fdopen(fd, "rb") as handle:
                st = os.fstat(handle.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ConnectError(f"{self.path} is not a regular file; remove it")
                if stat.S_IMODE(st.st_mode) & 0o077:
                    os.fchmod(handle.fileno(), _FILE_MODE)
                    log.warning(
                        "%s was readable by others (now 0600); if others use this machine, "
                        "run `mailsync login %s` to replace the tokens it holds",
                        self.path,
                        self.store,
                    )
                text = handle.read(1 << 20).decode("utf-8", "replace")
        finally:
            os.close(dir_fd)
        return self._parse(text, self.path)

    def _parse(self, text: str, where: str) -> dict:
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("refresh_token"), str):
            raise AuthError(
                f"store {self.store}: the saved sign-in in {where} cannot be read; run "
                f"`mailsync login {self.store}`"
            )
        for key in ("refresh_token", "access_token"):
            register_secret(record.get(key) if isinstance(record.get(key), str) else None)
        return record

    # writing --------------------------------------------------------------------------------
    def save(self, record: dict) -> None:
        """Save `record` (replacing the old one as a whole): in the keyring when there is
        one (the file, if any, is removed so no stale copy outlives it), else atomically
        in the file.  A keyring that refuses falls back to the file, with a warning."""
        record = {**record, "version": RECORD_VERSION, "saved_at": int(time.time())}
        text = json.dumps(record, sort_keys=True)
        if self.keyring is not None:
            try:
                self.keyring.set_password(KEYRING_SERVICE, self._keyring_user, text)
            except Exception as error:
                log.warning(
                    "store %s: the keyring refused the tokens (%s); keeping them in %s",
                    self.store,
                    type(error).__name__,
                    self.path,
                )
                self._forget_keyring()
            else:
                self._remove_file()
                return
        self._write_file(text.encode())

    def _write_file(self, data: bytes) -> None:
        dir_fd = self._open_directory()
        tmp = f".{self.name}.json.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            try:
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    _FILE_MODE,
                    dir_fd=dir_fd,
                )
            except FileExistsError:  # left by a run killed mid-write with our pid
                os.unlink(tmp, dir_fd=dir_fd)
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    _FILE_MODE,
                    dir_fd=dir_fd,
                )
            try:
                os.fchmod(fd, _FILE_MODE)  # whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # rename() replaces the directory entry, a symlink included: never follows it
            os.replace(tmp, self.name + ".json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise ConnectError(
                f"cannot save the tokens of store {self.store} in {self.path} "
                f"({error.strerror}); fix the directory and run `mailsync login {self.store}`"
            )
        finally:
            os.close(dir_fd)

    def delete(self) -> None:
        """Forget the saved sign-in (keyring entry and file)."""
        self._forget_keyring()
        self._remove_file()

    def _forget_keyring(self) -> None:
        if self.keyring is not None:
            with contextlib.suppress(Exception):
                self.keyring.delete_password(KEYRING_SERVICE, self._keyring_user)

    def _remove_file(self) -> None:
        with contextlib.suppress(FileNotFoundError, ConnectError):
            dir_fd = self._open_directory()
            try:
                os.unlink(self.name + ".json", dir_fd=dir_fd)
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def tokens_record(client: OAuthClient, tokens: Tokens, refresh_token: str) -> dict:
    """The record a TokenStore keeps for `tokens` issued to `client`."""
    return {
        "client_id": client.client_id,
        "token_url": client.provider.token_url,
        "scope": client.scope,
        "refresh_token": refresh_token,
        "access_token": tokens.access_token,
        "expires_at": tokens.expires_at,
    }

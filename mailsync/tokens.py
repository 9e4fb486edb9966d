"""Where OAuth2 tokens come from for a store, and where refresh tokens are kept.

Token sources (``TokenSource``), in the order a store's options choose them:

1. ``token_command`` (``CommandTokens``): a command printing an access token (oama,
   pizauth, mutt_oauth2.py).  Run for every new connection, and once more when the
   server refuses the token it printed.
2. ``oauth2 = "google" | "microsoft" | "custom"`` (``RefreshTokens``): a refresh token
   saved by ``mailsync login STORE`` in a ``TokenStore``; access tokens are reused until
   EXPIRY_MARGIN seconds before they expire, then refreshed; a rotated refresh token is
   saved at once.
3. ``grant = "client_credentials"`` (``ClientCredentialTokens``): the app's own token,
   from its client secret; no login step.

A store calls ``login_with_token(source, attempt, where)`` with a function that tries
one SASL exchange: it is given ``source.token()``, and when the server refuses that
token, ``source.renew(token)`` once.

Where a refresh token is kept (``TokenStore``): in the system keyring (service
``mailsync``, user ``oauth2:STORE``) when the optional ``keyring`` package has a
recommended backend (priority 1 or more: keyring's own rule of thumb; the plain-text
backends of keyrings.alt are below it, and no safer than our file), else in
``$XDG_STATE_HOME/mailsync/tokens/STORE.json``: mode 0600 in a 0700 directory, written
atomically (a new file, fsync, rename, fsync of the directory) through a descriptor
of the directory opened without following symlinks.  A lock file beside it
(``STORE.lock``, flock) serialises refreshes between processes, so two runs from cron
cannot both spend one rotating refresh token.

Why the access token is saved with the refresh token (and its expiry): a run from cron
every few minutes would otherwise refresh on every start, which costs a round trip to
the provider, a rewrite of the file or keyring entry (Microsoft rotates the refresh token
each time) and counts against the provider's rate limits, for no gain in safety: the
refresh token beside it is the stronger secret (months, not an hour).  Client-credential
tokens are only cached in the process: the secret that makes them is at hand anyway.
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
from collections.abc import Callable, Iterator

from mailsync import oauth
from mailsync.config import TOKEN_OPTIONS
from mailsync.errors import AuthError, ConfigError, ConnectError
from mailsync.net import Endpoint, secret_from_command
from mailsync.oauth import OAuthClient, Tokens, register_secret
from mailsync.sasl import SaslError

log = logging.getLogger("mailsync")

EXPIRY_MARGIN = 300.0  # an access token this close to its expiry is refreshed first
RECORD_VERSION = 1
KEYRING_SERVICE = "mailsync"
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")

#: The options token_source() takes from a store's options (config table or URL query).
OPTIONS = TOKEN_OPTIONS


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


# -- token sources ------------------------------------------------------------------------


class TokenSource:
    """Access tokens for one store's connections.  Thread-safe (parallel workers share
    one).  `token()` before each new connection; `renew(token)` once, when the server
    refused `token` (expired or revoked early); both raise AuthError (exit 3) with what
    to do when no usable token can be had, or ConnectError when the provider cannot be
    reached."""

    #: What ``mailsync login STORE`` does for this source: "login" (a sign-in is needed),
    #: "check" (fetch a token to show the setup works), or None (nothing: token_command).
    login_step: str | None = None

    def token(self) -> str:
        raise NotImplementedError

    def renew(self, rejected: str) -> str:
        raise NotImplementedError


class CommandTokens(TokenSource):
    """token_command: run for every new connection, and again when the server refused the
    token it printed."""

    def __init__(self, command, store: str):
        self.command = command
        self.what = f"token_command of store {store}"

    def token(self) -> str:
        token = secret_from_command(self.command, self.what)
        register_secret(token)
        return token

    def renew(self, rejected: str) -> str:
        log.info("%s: the server refused the token; running it again", self.what)
        return self.token()


class RefreshTokens(TokenSource):
    """Access tokens from the refresh token ``mailsync login STORE`` saved in `store`.

    An access token is reused (from memory, or as saved by an earlier run) until
    EXPIRY_MARGIN seconds before it expires, then refreshed under the store's lock; the
    answer's refresh token, when it rotated, is saved before the access token is used.
    `clock` is wall-clock time (tests move it)."""

    login_step = "login"

    def __init__(
        self, client: OAuthClient, store: TokenStore, clock: Callable[[], float] = time.time
    ):
        self.client = client
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._current: Tokens | None = None

    def _not_logged_in(self) -> AuthError:
        name = self.client.store
        return AuthError(f"store {name} is not signed in to OAuth2; run `mailsync login {name}`")

    def _check_record(self, record: dict) -> None:
        """A saved sign-in made for another app registration or provider cannot be
        refreshed here: say so rather than let the provider answer invalid_grant."""
        client = self.client
        if (
            record.get("client_id") != client.client_id
            or record.get("token_url") != client.provider.token_url
        ):
            raise AuthError(
                f"store {client.store}: the saved sign-in is for another client_id or "
                f"provider; run `mailsync login {client.store}`"
            )

    def token(self) -> str:
        with self._lock:
            current = self._current
            if current is not None and not current.expiring(EXPIRY_MARGIN, self.clock()):
                return current.access_token
            return self._from_store(rejected=None)

    def renew(self, rejected: str) -> str:
        with self._lock:
            current = self._current
            if (
                current is not None
                and current.access_token != rejected
                and not current.expiring(EXPIRY_MARGIN, self.clock())
            ):
                return current.access_token  # another connection renewed it already
            log.info("store %s: the server refused the access token; refreshing", self.client.store)
            return self._from_store(rejected=rejected)

    def _from_store(self, rejected: str | None) -> str:
        with self.store.locked():
            record = self.store.load()
            if record is None:
                raise self._not_logged_in()
            self._check_record(record)
            saved = record.get("access_token")
            try:
                expires_at = float(record.get("expires_at") or 0)
            except (TypeError, ValueError):
                expires_at = 0.0
            if isinstance(saved, str) and saved and saved != rejected:
                tokens = Tokens(saved, expires_at, record["refresh_token"])
                if not tokens.expiring(EXPIRY_MARGIN, self.clock()):
                    self._current = tokens
                    return saved
            tokens = oauth.refresh(self.client, record["refresh_token"], self.clock())
            refresh_token = tokens.refresh_token or record["refresh_token"]
            if tokens.refresh_token and tokens.refresh_token != record["refresh_token"]:
                log.debug("store %s: the refresh token rotated; saving it", self.client.store)
            self.store.save(tokens_record(self.client, tokens, refresh_token))
            self._current = tokens
            return tokens.access_token


class ClientCredentialTokens(TokenSource):
    """The app's own access token (grant = client_credentials), asked for when none is
    held or it expires within EXPIRY_MARGIN; kept in this process only."""

    login_step = "check"

    def __init__(self, client: OAuthClient, clock: Callable[[], float] = time.time):
        self.client = client
        self.clock = clock
        self._lock = threading.Lock()
        self._current: Tokens | None = None

    def token(self) -> str:
        with self._lock:
            current = self._current
            if current is None or current.expiring(EXPIRY_MARGIN, self.clock()):
                self._current = current = oauth.client_credentials(self.client, self.clock())
            return current.access_token

    def renew(self, rejected: str) -> str:
        with self._lock:
            current = self._current
            if current is None or current.access_token == rejected:
                self._current = current = oauth.client_credentials(self.client, self.clock())
            return current.access_token


# -- logging in with a token ------------------------------------------------------------------


class TokenRejected(Exception):
    """Raised by a store's SASL attempt when the server refused the token: `error` is the
    server's parsed error challenge, when it sent one; `text` its words (masked)."""

    def __init__(self, text: str = "", error: SaslError | None = None):
        super().__init__(text)
        self.text = text
        self.error = error


def login_with_token(source: TokenSource, attempt: Callable[[str], None], where: str) -> None:
    """Log in with `attempt(token)` (one SASL exchange that raises TokenRejected when the
    server refuses the token), with ``source.token()`` and, when refused, once more with
    ``source.renew(token)``.  A second refusal is AuthError (exit 3) at once: retrying
    will not help.  A refusal for lack of scope is not retried at all."""
    token = source.token()
    try:
        attempt(token)
        return
    except TokenRejected as error:
        if error.error is not None and error.error.insufficient_scope:
            raise AuthError(
                f"{where}: the OAuth2 token lacks the scope the server wants ({error.error}); "
                "check scope and sign in again with `mailsync login`"
            )
    token = source.renew(token)
    try:
        attempt(token)
    except TokenRejected as error:
        said = str(error.error) if error.error is not None else error.text or "no reason given"
        raise AuthError(
            f"{where}: the server refused a fresh OAuth2 token ({oauth._one_line(said)}); check "
            "that the user name matches the signed-in account and that IMAP/POP access is "
            "enabled for it"
        )


# -- from a store's options -------------------------------------------------------------------


def _pop_text(options: dict, key: str, where: str) -> str | None:
    value = options.pop(key, None)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def token_source(
    store: str,
    user: str,
    options: dict,
    *,
    directory: str | None = None,
    keyring=TokenStore._DEFAULT,
    timeout: float = oauth.DEFAULT_HTTP_TIMEOUT,
    protocol: str | None = None,
) -> TokenSource | None:
    """The token source a store's options ask for, or None when they name none; the
    options in OPTIONS are taken out of `options` (the store complains about what is
    left).  `store` is the store's name (``mailsync login STORE``), `user` the mailbox.
    `protocol` ("imap", "pop3"; None: both) narrows Microsoft's default scope to the
    one protocol the store speaks (an app registration may hold only that permission).
    ConfigError (exit 2) for an incomplete or contradictory set of options."""
    where = f"store {store}"
    command = options.pop("token_command", None)
    name = _pop_text(options, "oauth2", where)
    values = {key: options.pop(key) for key in OPTIONS if key in options}
    if command:
        if name or values:
            others = ", ".join(sorted(values)) or "oauth2"
            raise ConfigError(
                f"{where}: token_command and oauth2 settings ({others}) exclude each other; "
                "keep one"
            )
        return CommandTokens(command, store)
    if name is None:
        if values:
            raise ConfigError(
                f'{where}: {", ".join(sorted(values))} need oauth2 = "google", '
                '"microsoft" or "custom"'
            )
        return None
    texts: dict[str, str] = {}
    lists: dict[str, list[str]] = {}  # scope and client_secret_command, given as lists
    for key, value in values.items():
        if key in ("scope", "client_secret_command") and isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {key} must be a string or a list of strings")
            lists[key] = value
        elif isinstance(value, str):
            texts[key] = value
        else:
            raise ConfigError(f"{where}: {key} must be a string")
    provider = oauth.provider(
        name,
        tenant=texts.get("tenant"),
        token_url=texts.get("token_url"),
        device_url=texts.get("device_url"),
        authorize_url=texts.get("authorize_url"),
    )
    client_id = texts.get("client_id")
    if not client_id:
        raise ConfigError(
            f"{where}: oauth2 needs client_id, the id of your own app registration "
            "(see mailsync.conf(5), OAUTH2)"
        )
    grant = texts.get("grant") or provider.login_grant
    if grant not in oauth.GRANTS:
        raise ConfigError(f"{where}: grant must be one of {', '.join(oauth.GRANTS)}")
    if grant == oauth.DEVICE_CODE and not provider.device_url:
        raise ConfigError(
            f"{where}: the {provider.name} provider offers no device code sign-in for mail; "
            "use grant = authorization_code"
        )
    if grant == oauth.AUTHORIZATION_CODE and not provider.authorize_url:
        raise ConfigError(f"{where}: grant = authorization_code needs authorize_url")
    if "client_secret" in texts and "client_secret_command" in {*texts, *lists}:
        raise ConfigError(f"{where}: give client_secret or client_secret_command, not both")
    scope = lists["scope"] if "scope" in lists else texts.get("scope")
    if scope is None:
        scopes = provider.app_scopes if grant == oauth.CLIENT_CREDENTIALS else provider.scopes
        if provider.name == "microsoft" and grant != oauth.CLIENT_CREDENTIALS and protocol:
            wanted = {"imap": oauth.MICROSOFT_IMAP_SCOPE, "pop3": oauth.MICROSOFT_POP_SCOPE}
            scopes = (wanted[protocol], oauth.OFFLINE_ACCESS)
    else:
        scopes = tuple(scope if isinstance(scope, list) else scope.split())
    if not scopes and provider.name == "custom" and grant != oauth.CLIENT_CREDENTIALS:
        raise ConfigError(f'{where}: oauth2 = "custom" needs scope')
    cafile = texts.get("oauth2_cafile")
    if cafile:
        cafile = os.path.expanduser(cafile)
        if not os.path.isfile(cafile):
            raise ConfigError(f"{where}: oauth2_cafile {cafile} does not exist")
    client = OAuthClient(
        store=store,
        user=user,
        provider=provider,
        client_id=client_id,
        scopes=scopes,
        grant=grant,
        client_secret=texts.get("client_secret"),
        client_secret_command=lists.get("client_secret_command")
        or texts.get("client_secret_command"),
        cafile=cafile,
        timeout=timeout,
    )
    if grant == oauth.CLIENT_CREDENTIALS:
        if not (client.client_secret or client.client_secret_command):
            raise ConfigError(
                f"{where}: grant = client_credentials needs client_secret_command (or "
                "client_secret)"
            )
        return ClientCredentialTokens(client)
    return RefreshTokens(client, TokenStore(store, directory, keyring))


# -- IMAP and POP3 stores ---------------------------------------------------------------------

#: The ``auth`` values of IMAP and POP3 stores that log in with an OAuth2 token (SASL).
SASL_AUTH = ("xoauth2", "oauthbearer")


def store_token_source(
    store: str, endpoint: Endpoint, auth: str, protocol: str
) -> TokenSource | None:
    """The token source of an IMAP or POP3 store (its options in OPTIONS taken out of
    ``endpoint.options``), checked against the store's `auth`: "xoauth2" and
    "oauthbearer" need a token source; a password method ("password", and POP3's
    "plain", "apop", "user") excludes one; "auto" takes either.  ConfigError (exit 2)."""
    source = token_source(store, endpoint.user, endpoint.options, protocol=protocol)
    if source is None and auth in SASL_AUTH:
        raise ConfigError(
            f'store {store}: auth = "{auth}" needs token_command or oauth2 settings '
            "(see mailsync.conf(5), OAUTH2)"
        )
    if source is not None and auth not in ("auto", *SASL_AUTH):
        raise ConfigError(
            f'store {store}: auth = "{auth}" logs in with a password, but the store has '
            'token_command or oauth2 settings; remove one, or set auth = "auto"'
        )
    return source


# -- mailsync login STORE ---------------------------------------------------------------------


def login(
    source: TokenSource,
    show: Callable[[str], None],
    *,
    no_browser: bool = False,
    open_browser: Callable[[str], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    browser_timeout: float = oauth.BROWSER_TIMEOUT,
) -> str:
    """What ``mailsync login STORE`` does: sign in with the store's interactive grant
    (device code: `show` gets the URI and the code; authorization code: the browser, or
    with `no_browser` a URL through `show`), save the refresh token, and return one line
    for the user.  Client credentials only fetch a token to prove the setup works; a
    token_command needs no login.  AuthError/ConnectError as the flows raise them; a
    sign-in that grants no refresh token is AuthError (without offline access a cron run
    could not go on)."""
    if isinstance(source, CommandTokens):
        return "this store's token_command provides its tokens; there is nothing to sign in to"
    if isinstance(source, ClientCredentialTokens):
        source.token()
        return (
            f"store {source.client.store}: the app's client credentials work; no sign-in is needed"
        )
    if not isinstance(source, RefreshTokens):
        raise TypeError(f"cannot log in with {type(source).__name__}")
    client = source.client
    if client.grant == oauth.DEVICE_CODE:

        def show_code(authorization: oauth.DeviceAuthorization) -> None:
            show(authorization.instructions())

        tokens = oauth.device_login(client, show_code, sleep=sleep)
    else:
        tokens = oauth.browser_login(
            client,
            show,
            no_browser=no_browser,
            timeout=browser_timeout,
            open_browser=open_browser or oauth._default_open_browser,
        )
    if not tokens.refresh_token:
        raise AuthError(
            f"store {client.store}: the provider granted no refresh token; add offline "
            "access to scope (Microsoft: offline_access) and sign in again"
        )
    with source.store.locked():
        source.store.save(tokens_record(client, tokens, tokens.refresh_token))
    with source._lock:
        source._current = tokens
    where = "the system keyring" if source.store.keyring is not None else source.store.path
    return f"store {client.store}: signed in; the refresh token is kept in {where}"

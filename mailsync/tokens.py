"""Where OAuth2 tokens come from for a store, and ``mailsync login STORE`` (login()).

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

Where a refresh token is kept between runs: token_store.py (``TokenStore``).

Why the access token is saved with the refresh token (and its expiry): a run from cron
every few minutes would otherwise refresh on every start, which costs a round trip to
the provider, a rewrite of the file or keyring entry (Microsoft rotates the refresh token
each time) and counts against the provider's rate limits, for no gain in safety: the
refresh token beside it is the stronger secret (months, not an hour).  Client-credential
tokens are only cached in the process: the secret that makes them is at hand anyway.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from mailsync import oauth, oauth_login
from mailsync.config import TOKEN_OPTIONS
from mailsync.errors import AuthError, ConfigError
from mailsync.net import Endpoint, secret_from_command
from mailsync.oauth import OAuthClient, Tokens, register_secret
from mailsync.sasl import SaslError
from mailsync.token_store import TokenStore, tokens_record

log = logging.getLogger("mailsync")

EXPIRY_MARGIN = 300.0  # an access token this close to its expiry is refreshed first

#: The options token_source() takes from a store's options (config table or URL query).
OPTIONS = TOKEN_OPTIONS


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
            f"{where}: the server refused a fresh OAuth2 token ({oauth.one_line(said)}); check "
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
    browser_timeout: float = oauth_login.BROWSER_TIMEOUT,
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

        def show_code(authorization: oauth_login.DeviceAuthorization) -> None:
            show(authorization.instructions())

        tokens = oauth_login.device_login(client, show_code, sleep=sleep)
    else:
        tokens = oauth_login.browser_login(
            client,
            show,
            no_browser=no_browser,
            timeout=browser_timeout,
            open_browser=open_browser or oauth_login._default_open_browser,
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

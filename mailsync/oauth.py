"""OAuth2 for IMAP and POP3: providers, the token endpoint, the login flows.

What is where
-------------
* ``Provider`` / ``provider()``: the endpoints and default scopes of Google, Microsoft
  (per tenant) and a ``custom`` authorization server.
* ``OAuthClient``: the user's own app registration (client_id, optional secret) at one
  provider, the scopes asked for and the grant used; ``post_form()`` is its only way to
  the network (urllib, TLS verified, a timeout, a bounded answer).
* Grants (RFC 6749 and extensions), each returning ``Tokens``: ``refresh()`` (RFC 6749
  section 6) and ``client_credentials()`` (RFC 6749 section 4.4) here; the two that need
  the user, ``device_login()`` (RFC 8628) and ``browser_login()`` (authorization code with
  PKCE, RFC 7636, on a loopback redirect, RFC 8252), in oauth_login.py.

The SASL side (XOAUTH2, OAUTHBEARER) is mailsync/sasl.py; where tokens are kept, and
which token a connection uses, mailsync/tokens.py.

Providers (checked against their documentation, 2026)
-----------------------------------------------------
Google (https://developers.google.com/identity/protocols/oauth2/native-app): the
authorization code flow with PKCE and a loopback redirect ``http://127.0.0.1:PORT/``
(Desktop app clients; Google's device flow refuses the ``https://mail.google.com/``
scope).  ``access_type=offline`` asks for a refresh token, ``prompt=consent`` for a new
one even where the user approved the app before.  Desktop clients get a client secret
that Google says is not secret, but the token endpoint wants it.  Apps in "testing"
publishing status get refresh tokens that expire after 7 days (invalid_grant).

Microsoft identity platform (https://learn.microsoft.com/entra/identity-platform/):
``https://login.microsoftonline.com/TENANT/oauth2/v2.0/{authorize,token,devicecode}``;
the device authorization grant (v2-oauth2-device-code) needs "Allow public client
flows" on the registration; IMAP and POP scopes
(https://learn.microsoft.com/exchange/client-developer/legacy-protocols/
how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth) are
``https://outlook.office.com/IMAP.AccessAsUser.All`` and ``POP.AccessAsUser.All`` with
``offline_access`` for a refresh token; the client credentials grant
(v2-oauth2-client-creds-grant-flow) uses ``https://outlook.office365.com/.default``
(the app holds ``IMAP.AccessAsApp`` / ``POP.AccessAsApp``).  Refresh tokens rotate on
every refresh; the SASL mechanism offered is XOAUTH2 only.

Secrets
-------
Every token, code, verifier and client secret is added to ``net.SECRETS`` the moment it
is known, so the mailsync logger masks it wherever it turns up.  None is put into argv,
an exception text, a log line or JSON: errors quote only the ``error`` code and (the
first line of) the ``error_description`` the provider sent, with secrets masked.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from mailsync.errors import AuthError, ConfigError, ConnectError
from mailsync.net import SECRETS, mask_secrets, secret_from_command

log = logging.getLogger("mailsync")

GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
MICROSOFT_IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"
MICROSOFT_POP_SCOPE = "https://outlook.office.com/POP.AccessAsUser.All"
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
OFFLINE_ACCESS = "offline_access"

PROVIDERS = ("google", "microsoft", "custom")
DEVICE_CODE = "device_code"
AUTHORIZATION_CODE = "authorization_code"
CLIENT_CREDENTIALS = "client_credentials"
GRANTS = (DEVICE_CODE, AUTHORIZATION_CODE, CLIENT_CREDENTIALS)
DEVICE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 section 3.4

MAX_RESPONSE_BYTES = 1 << 20  # a token endpoint's answer (a real one is a few KiB)
MAX_TOKEN_LENGTH = 16 * 1024  # an access or refresh token (Microsoft's JWTs are ~2-4 KiB)
DEFAULT_HTTP_TIMEOUT = 30.0
DEFAULT_EXPIRES_IN = 3600  # an access token without expires_in: RFC 6749 leaves it open
# A token goes into a SASL message framed by \x01 and into a protocol line: printable
# ASCII without spaces only (RFC 6750's b64token is narrower still).
_TOKEN = re.compile(r"[\x21-\x7e]+")


def register_secret(value: str | None) -> None:
    """Add `value` to net.SECRETS (masked in every log line from now on)."""
    if value:
        SECRETS.add(value)


def one_line(text: object, limit: int = 200) -> str:
    """Server text for an error message: secrets masked, its first line only (Microsoft's
    descriptions go on with a trace id and a timestamp), at most `limit` characters."""
    line = mask_secrets(str(text)).replace("\r", "\n").split("\n", 1)[0]
    line = " ".join(line.split())
    return line if len(line) <= limit else line[:limit] + "..."


# -- providers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """Where an authorization server takes requests, and what it grants by default.

    `login_grant` is the interactive grant ``mailsync login`` uses unless the store says
    otherwise; `authorize_params` go into every authorization request;
    `scope_on_refresh`: whether a refresh request repeats the scope (Microsoft wants it,
    RFC 6749 allows it, Google's documentation does not list it)."""

    name: str
    token_url: str
    authorize_url: str | None = None
    device_url: str | None = None
    scopes: tuple[str, ...] = ()
    app_scopes: tuple[str, ...] = ()
    login_grant: str = DEVICE_CODE
    authorize_params: tuple[tuple[str, str], ...] = ()
    scope_on_refresh: bool = True


_TENANT = re.compile(r"[A-Za-z0-9.-]{1,100}")


def provider(
    name: str,
    *,
    tenant: str | None = None,
    token_url: str | None = None,
    device_url: str | None = None,
    authorize_url: str | None = None,
) -> Provider:
    """The Provider called `name` ("google", "microsoft" with `tenant`, default "common",
    or "custom" with its endpoints); ConfigError (exit 2) saying what is missing."""
    if name == "google":
        if tenant or token_url or device_url or authorize_url:
            raise ConfigError(
                'oauth2 = "google" takes no tenant or endpoints; use oauth2 = "custom" '
                "for another server"
            )
        return Provider(
            name="google",
            token_url="https://oauth2.googleapis.com/token",
            authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
            device_url=None,  # Google's device flow does not grant the mail scope
            scopes=(GOOGLE_MAIL_SCOPE,),
            login_grant=AUTHORIZATION_CODE,
            authorize_params=(("access_type", "offline"), ("prompt", "consent")),
            scope_on_refresh=False,
        )
    if name == "microsoft":
        if token_url or device_url or authorize_url:
            raise ConfigError(
                'oauth2 = "microsoft" takes a tenant, not endpoints; use oauth2 = "custom" '
                "for another server"
            )
        tenant = tenant or "common"
        if not _TENANT.fullmatch(tenant):
            raise ConfigError(
                f"tenant {tenant!r} is not a tenant id or domain; give the directory "
                "(tenant) id or the domain from the app registration, or common"
            )
        base = f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
        return Provider(
            name="microsoft",
            token_url=f"{base}/token",
            authorize_url=f"{base}/authorize",
            device_url=f"{base}/devicecode",
            scopes=(MICROSOFT_IMAP_SCOPE, MICROSOFT_POP_SCOPE, OFFLINE_ACCESS),
            app_scopes=(MICROSOFT_APP_SCOPE,),
            login_grant=DEVICE_CODE,
        )
    if name == "custom":
        if tenant:
            raise ConfigError('tenant is for oauth2 = "microsoft" only')
        if not token_url:
            raise ConfigError('oauth2 = "custom" needs token_url (and device_url or authorize_url)')
        for what, url in (
            ("token_url", token_url),
            ("device_url", device_url),
            ("authorize_url", authorize_url),
        ):
            if url:
                check_endpoint_url(url, what)
        return Provider(
            name="custom",
            token_url=token_url,
            authorize_url=authorize_url,
            device_url=device_url,
            login_grant=DEVICE_CODE if device_url else AUTHORIZATION_CODE,
        )
    raise ConfigError(f"oauth2 must be one of {', '.join(PROVIDERS)}, not {name!r}")


_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def check_endpoint_url(url: str, what: str) -> None:
    """ConfigError unless `url` is https:// (http:// only to this machine, where nothing
    crosses a network: a test or a local authorization server)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ConfigError(f"{what} {url!r} is not a URL")
    if not host:
        raise ConfigError(f"{what} {url!r} has no host; write https://HOST/PATH")
    if parts.username or parts.password:
        raise ConfigError(f"{what} must not hold a user name or password")
    if parts.scheme == "https" or (parts.scheme == "http" and host in _LOOPBACK_HOSTS):
        return
    raise ConfigError(f"{what} {url!r} must be an https:// URL (tokens would travel in clear)")


# -- the client ---------------------------------------------------------------------------


@dataclass
class OAuthClient:
    """An app registration at a provider, as one store uses it.

    `store` names the store in messages ("run mailsync login STORE"); `user` is the
    mailbox (the login hint, and the SASL user); `client_secret` is a literal secret or
    None, `client_secret_command` a command printing it (run once per process);
    `grant` is DEVICE_CODE or AUTHORIZATION_CODE (an interactive ``mailsync login``,
    then refresh tokens) or CLIENT_CREDENTIALS (no login step); `cafile` a private CA
    for the authorization server (tests, a private IdP)."""

    store: str
    user: str
    provider: Provider
    client_id: str
    scopes: tuple[str, ...]
    grant: str
    client_secret: str | None = None
    client_secret_command: str | list | None = None
    cafile: str | None = None
    timeout: float = DEFAULT_HTTP_TIMEOUT
    _secret_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        register_secret(self.client_secret)

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)

    def secret(self) -> str | None:
        """The client secret, from the config or its command (run once)."""
        with self._secret_lock:
            if self.client_secret is None and self.client_secret_command:
                value = secret_from_command(
                    self.client_secret_command, f"client_secret_command of store {self.store}"
                )
                register_secret(value)
                self.client_secret = value
            return self.client_secret

    def _authenticated(self, fields: dict[str, str]) -> dict[str, str]:
        """`fields` plus client_id and, when there is one, client_secret (RFC 6749
        section 2.3.1 allows it in the body; Google and Microsoft take it there)."""
        fields = {**fields, "client_id": self.client_id}
        secret = self.secret()
        if secret:
            fields["client_secret"] = secret
        return fields

    def post(self, url: str, fields: dict[str, str], what: str) -> tuple[int, dict]:
        return post_form(url, fields, cafile=self.cafile, timeout=self.timeout, what=what)


# -- HTTP ---------------------------------------------------------------------------------


def _ssl_context(cafile: str | None):
    import ssl

    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _no_redirects():
    import urllib.request

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        """A token endpoint that redirects is misconfigured (or not the endpoint): a
        POST is not replayed elsewhere."""

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    return NoRedirects


def post_form(
    url: str,
    fields: dict[str, str],
    *,
    cafile: str | None = None,
    timeout: float = DEFAULT_HTTP_TIMEOUT,
    what: str = "the authorization server",
) -> tuple[int, dict]:
    """POST `fields` form-encoded to `url`; (HTTP status, the JSON object it answered).

    TLS is verified (`cafile` adds a private CA); redirects are not followed; the
    environment's proxy is used (https_proxy, no_proxy), except for 127.0.0.1; every
    socket operation has `timeout`, and the body, read in pieces, must arrive within
    `timeout` as a whole and be at most MAX_RESPONSE_BYTES (a hostile endpoint cannot
    exhaust memory or hold a login forever).  4xx answers are returned (they carry
    RFC 6749's ``error``); anything that is not a JSON object, a 5xx, or no answer at
    all is ConnectError (exit 3) naming `what`.  Nothing of `fields` ever reaches a
    message."""
    import http.client
    import urllib.error
    import urllib.request

    handlers = [urllib.request.HTTPSHandler(context=_ssl_context(cafile)), _no_redirects()]
    if urlsplit(url).hostname in _LOOPBACK_HOSTS:  # this machine: never through a proxy
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(
        url,
        data=urlencode(fields).encode("ascii"),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": "mailsync",
        },
        method="POST",
    )
    where = f"{what} ({_endpoint(url)})"
    log.debug("oauth2: POST %s (%s)", _endpoint(url), fields.get("grant_type", "request"))
    try:
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as error:  # 4xx and 5xx: still a response
            response = error
        with response:
            status = response.status if response.status is not None else response.code
            body = _read_bounded(response, timeout, where)
    except ConnectError:
        raise
    except urllib.error.URLError as error:
        reason = error.reason
        text = getattr(reason, "verify_message", None) or getattr(reason, "strerror", None)
        raise ConnectError(
            f"cannot reach {where}: {one_line(text or reason)}; check the URL, the network "
            "and the CA (cafile)"
        ) from None
    except (TimeoutError, OSError, http.client.HTTPException) as error:
        raise ConnectError(f"{where} did not answer properly ({one_line(error)})") from None
    if status >= 500:
        raise ConnectError(f"{where} failed with HTTP {status}; try again later")
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ConnectError(
            f"{where} answered HTTP {status} without a JSON object; is the URL that of its "
            "token endpoint?"
        )
    return status, answer


def _endpoint(url: str) -> str:
    """A URL for messages: scheme, host and path only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _read_bounded(response, timeout: float, where: str) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise ConnectError(f"{where} sent more than {MAX_RESPONSE_BYTES} bytes; refusing")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise ConnectError(f"{where} took more than {timeout:g} s to answer; giving up")


# -- tokens -------------------------------------------------------------------------------


@dataclass
class Tokens:
    """What a token endpoint granted.  `expires_at` is wall-clock time (seconds since the
    epoch: it is kept across runs); `refresh_token` None when none was issued (client
    credentials; a refresh that did not rotate it)."""

    access_token: str
    expires_at: float
    refresh_token: str | None = None
    scope: str | None = None

    def expiring(self, margin: float, now: float | None = None) -> bool:
        """Whether the access token expires within `margin` seconds."""
        return (time.time() if now is None else now) + margin >= self.expires_at


class TokenError(AuthError):
    """The token endpoint refused a request (RFC 6749 section 5.2): `error` is its code
    (invalid_grant, invalid_client, ...)."""

    def __init__(self, message: str, error: str):
        super().__init__(message)
        self.error = error


def _check_token(value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ConnectError(f"{where} sent an unusable {what}; refusing it")
    if len(value) > MAX_TOKEN_LENGTH:
        raise ConnectError(f"{where} sent a {what} of {len(value)} characters; refusing it")
    return value


def parse_token_response(answer: dict, where: str, now: float | None = None) -> Tokens:
    """Tokens from a successful token response (RFC 6749 section 5.1); ConnectError when
    it lacks a usable bearer access token.  Every token is a secret from here on."""
    access = _check_token(answer.get("access_token"), "access token", where)
    register_secret(access)
    token_type = answer.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ConnectError(f"{where} sent a token of type {one_line(token_type, 40)}, not Bearer")
    refresh_token = answer.get("refresh_token")
    if refresh_token is not None:
        refresh_token = _check_token(refresh_token, "refresh token", where)
        register_secret(refresh_token)
    expires_in = answer.get("expires_in", DEFAULT_EXPIRES_IN)
    try:
        expires_in = float(expires_in)  # Microsoft's v1 endpoints send it as a string
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    if not 0 <= expires_in < 10**8:
        expires_in = DEFAULT_EXPIRES_IN
    scope = answer.get("scope")
    return Tokens(
        access_token=access,
        expires_at=(time.time() if now is None else now) + expires_in,
        refresh_token=refresh_token,
        scope=scope if isinstance(scope, str) else None,
    )


def token_error(client: OAuthClient, status: int, answer: dict, during: str) -> AuthError:
    """The AuthError (exit 3) for a refused token request, saying what to do."""
    code = answer.get("error")
    code = code if isinstance(code, str) and code else f"HTTP {status}"
    code = one_line(code, 60)
    description = answer.get("error_description")
    said = f"{code}: {one_line(description)}" if description else code
    store = client.store
    if code == "invalid_grant" and during == "refresh":
        text = (
            f"store {store}: the OAuth2 provider no longer accepts the saved sign-in ({said}); "
            f"run `mailsync login {store}` to sign in again"
        )
    elif code in ("invalid_client", "unauthorized_client"):
        text = (
            f"store {store}: the OAuth2 provider refused the app registration ({said}); "
            "check client_id, client_secret and that the app may use this grant"
        )
    elif code == "invalid_scope":
        text = (
            f"store {store}: the OAuth2 provider refused the scope {client.scope!r} ({said}); "
            "check scope and the app's API permissions"
        )
    else:
        text = f"store {store}: the OAuth2 provider refused the {during} ({said})"
        if during == "refresh":
            text += f"; if it persists, run `mailsync login {store}`"
    return TokenError(text, code)


def request_tokens(
    client: OAuthClient, fields: dict[str, str], during: str, now: float | None = None
) -> Tokens:
    status, answer = client.post(
        client.provider.token_url, client._authenticated(fields), "the token endpoint"
    )
    if status != 200 or "error" in answer:
        raise token_error(client, status, answer, during)
    return parse_token_response(answer, "the token endpoint", now)


def refresh(client: OAuthClient, refresh_token: str, now: float | None = None) -> Tokens:
    """A new access token for `refresh_token` (RFC 6749 section 6).  The answer may hold
    a new refresh token (rotation): the caller must save it at once.  A refused refresh
    token (invalid_grant: revoked, expired, Google's 7-day limit for apps in testing) is
    TokenError (an AuthError, exit 3) telling the user to run ``mailsync login STORE``.
    `now`: the wall-clock time the expiry is counted from (default: time.time())."""
    register_secret(refresh_token)
    fields = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if client.provider.scope_on_refresh and client.scopes:
        fields["scope"] = client.scope
    return request_tokens(client, fields, "refresh", now)


def client_credentials(client: OAuthClient, now: float | None = None) -> Tokens:
    """An access token for the app itself (RFC 6749 section 4.4; Microsoft's
    IMAP.AccessAsApp with scope https://outlook.office365.com/.default).  No refresh
    token: the next one is asked for the same way."""
    if not client.secret():
        raise ConfigError(
            f"store {client.store}: grant = client_credentials needs client_secret or "
            "client_secret_command"
        )
    fields = {"grant_type": "client_credentials"}
    if client.scopes:
        fields["scope"] = client.scope
    return request_tokens(client, fields, "client credentials request", now)

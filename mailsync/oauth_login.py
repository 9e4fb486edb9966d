"""OAuth2 logins that need the user: the device authorization grant (RFC 8628) and the
authorization code grant with PKCE (RFC 7636) caught on a loopback redirect (RFC 8252).
Both return oauth.Tokens from the token endpoint of oauth.py (providers, the client, bounded
HTTP, refresh and client credentials are there); tokens.login() (``mailsync login STORE``)
chooses one.  Secrets are registered as oauth.py says: none reaches argv, a log or an error.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from mailsync.errors import AuthError, ConfigError, ConnectError
from mailsync.oauth import (
    DEVICE_GRANT_TYPE,
    MAX_TOKEN_LENGTH,
    OAuthClient,
    Tokens,
    one_line,
    parse_token_response,
    register_secret,
    request_tokens,
    token_error,
)

log = logging.getLogger("mailsync")

DEVICE_INTERVAL = 5  # RFC 8628 section 3.2: the poll interval when none is given
MIN_POLL_INTERVAL = 1  # never poll faster than this, whatever the server says
SLOW_DOWN_STEP = 5  # RFC 8628 section 3.5: slow_down adds 5 seconds to the interval
MAX_DEVICE_WAIT = 30 * 60  # a device code is waited for at most this long
BROWSER_TIMEOUT = 300.0  # the loopback redirect is waited for this long


# -- device authorization grant (RFC 8628) --------------------------------------------------


@dataclass
class DeviceAuthorization:
    """What the user needs to approve a device code (RFC 8628 section 3.2): open
    `verification_uri` and enter `user_code` (or open `verification_uri_complete`).
    `message` is the provider's own sentence, when it sent one (Microsoft does)."""

    verification_uri: str
    user_code: str
    expires_in: float
    interval: float
    verification_uri_complete: str | None = None
    message: str | None = None

    def instructions(self) -> str:
        text = f"To sign in, open {self.verification_uri} and enter the code {self.user_code}"
        if self.verification_uri_complete:
            text += f" (or open {self.verification_uri_complete})"
        return text


def _printable(value: object, what: str, limit: int = 2000) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise ConnectError(f"the device authorization endpoint sent an unusable {what}")
    return value


def device_login(
    client: OAuthClient,
    show: Callable[[DeviceAuthorization], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Tokens:
    """Sign in with the device authorization grant (RFC 8628): ask the device endpoint
    for a code, hand it to `show` (which prints where to enter it), then poll the token
    endpoint every `interval` seconds (sleeping with `sleep`) until the user approved
    it: authorization_pending waits, slow_down adds 5 seconds to the interval for good,
    expired_token, access_denied (Microsoft: authorization_declined) and the code's
    expiry end it with an AuthError.  Returns the granted Tokens (with a refresh token
    where offline access was granted)."""
    url = client.provider.device_url
    if not url:
        raise ConfigError(
            f"store {client.store}: the {client.provider.name} provider has no device "
            "authorization endpoint; use grant = authorization_code (or set device_url)"
        )
    # RFC 8628 section 3.1: the client authenticates here as at the token endpoint.
    fields = client._authenticated({"scope": client.scope} if client.scopes else {})
    status, answer = client.post(url, fields, "the device authorization endpoint")
    if status != 200 or "error" in answer:
        raise token_error(client, status, answer, "device authorization request")
    device_code = _printable(answer.get("device_code"), "device code", MAX_TOKEN_LENGTH)
    register_secret(device_code)
    # Google calls it verification_url (an earlier draft of RFC 8628).
    uri = answer.get("verification_uri") or answer.get("verification_url")
    complete = answer.get("verification_uri_complete")
    try:
        expires_in = min(float(answer.get("expires_in", 600)), MAX_DEVICE_WAIT)
    except (TypeError, ValueError):
        expires_in = 600.0
    try:
        interval = max(float(answer.get("interval", DEVICE_INTERVAL)), MIN_POLL_INTERVAL)
    except (TypeError, ValueError):
        interval = DEVICE_INTERVAL
    message = answer.get("message")
    authorization = DeviceAuthorization(
        verification_uri=_printable(uri, "verification URI"),
        user_code=_printable(answer.get("user_code"), "user code", 100),
        expires_in=expires_in,
        interval=interval,
        verification_uri_complete=_printable(complete, "verification URI") if complete else None,
        message=message if isinstance(message, str) and message.isprintable() else None,
    )
    show(authorization)
    deadline = clock() + expires_in
    poll = client._authenticated({"grant_type": DEVICE_GRANT_TYPE, "device_code": device_code})
    while True:
        left = deadline - clock()
        if left <= 0:
            break
        sleep(min(interval, left))
        status, answer = client.post(client.provider.token_url, poll, "the token endpoint")
        if status == 200 and "error" not in answer:
            return parse_token_response(answer, "the token endpoint")
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        if error == "expired_token":
            break
        if error in ("access_denied", "authorization_declined"):
            raise AuthError(
                f"store {client.store}: the sign-in was declined; run `mailsync login "
                f"{client.store}` again and approve it"
            )
        raise token_error(client, status, answer, "device code sign-in")
    raise AuthError(
        f"store {client.store}: the code {authorization.user_code} expired before the "
        f"sign-in was approved; run `mailsync login {client.store}` again"
    )


# -- authorization code with PKCE on a loopback redirect (RFC 7636, RFC 8252) -------------


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) as RFC 7636 section 4.1-4.2 define them: 64
    random bytes in base64url (86 characters, within 43-128), and the base64url SHA-256
    of it without padding."""
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode("ascii")


_PAGE = (
    "<!doctype html><meta charset=utf-8><title>mailsync</title>"
    "<p>{}</p><p>You can close this window.</p>"
)


@dataclass
class _Redirect:
    """What the loopback listener caught: the query of the redirect with our state."""

    code: str | None = None
    error: str | None = None
    description: str | None = None


def _catch_redirect(sock, state: str, timeout: float, clock) -> _Redirect:
    """Serve the loopback redirect on the listening `sock` until a request to "/" comes
    with our `state` (RFC 6749 section 10.12: any other is ignored, so another local
    process cannot feed us its code or end the wait), or `timeout` passes."""

    deadline = clock() + timeout
    while True:
        left = deadline - clock()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        connection, _ = sock.accept()  # TimeoutError when nobody came in time
        with connection:
            connection.settimeout(min(10.0, max(left, 0.1)))
            try:
                head = _read_request_head(connection)
            except OSError:
                continue
            caught = _parse_redirect(head, state)
            if caught is None:
                _answer(connection, 404, "Not the sign-in redirect mailsync waits for.")
                continue
            if caught.code:
                _answer(connection, 200, "mailsync is signed in.")
            else:
                _answer(connection, 200, "The sign-in did not complete; see mailsync.")
            return caught


def _read_request_head(connection) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        chunk = connection.recv(4096)
        if not chunk:
            break
        head += chunk
        if len(head) > 16 * 1024:
            break
    return head


def _parse_redirect(head: bytes, state: str) -> _Redirect | None:
    line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split()
    if len(parts) != 3 or parts[0] != "GET":
        return None
    target = urlsplit(parts[1])
    if target.path != "/":
        return None
    query = parse_qs(target.query)
    got_state = query.get("state", [""])[0]
    if not secrets.compare_digest(got_state.encode(), state.encode()):
        return None
    code = query.get("code", [None])[0]
    if code:
        register_secret(code)
        return _Redirect(code=code)
    return _Redirect(
        error=query.get("error", ["no code"])[0],
        description=query.get("error_description", [None])[0],
    )


def _answer(connection, status: int, text: str) -> None:
    body = _PAGE.format(text).encode()
    reason = {200: "OK", 404: "Not Found"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
    )
    try:
        connection.sendall(head.encode() + body)
    except OSError:
        pass


def authorization_url(client: OAuthClient, redirect_uri: str, state: str, challenge: str) -> str:
    """The authorization request (RFC 6749 section 4.1.1 with RFC 7636's S256 challenge);
    the user's mailbox goes along as login_hint (Google and Microsoft preselect it)."""
    if not client.provider.authorize_url:
        raise ConfigError(
            f"store {client.store}: the {client.provider.name} provider has no authorization "
            "endpoint; set authorize_url, or use grant = device_code"
        )
    params = [
        ("response_type", "code"),
        ("client_id", client.client_id),
        ("redirect_uri", redirect_uri),
        ("scope", client.scope),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("login_hint", client.user),
        *client.provider.authorize_params,
    ]
    separator = "&" if "?" in client.provider.authorize_url else "?"
    return client.provider.authorize_url + separator + urlencode(params, quote_via=quote)


def _default_open_browser(url: str) -> bool:
    import webbrowser

    try:
        return webbrowser.open(url)
    except Exception:  # no usable browser: the URL is printed instead
        return False


def browser_login(
    client: OAuthClient,
    show: Callable[[str], None],
    *,
    no_browser: bool = False,
    open_browser: Callable[[str], bool] = _default_open_browser,
    timeout: float = BROWSER_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
) -> Tokens:
    """Sign in with the authorization code grant and PKCE (RFC 7636, S256) on a loopback
    redirect (RFC 8252 section 7.3): listen on 127.0.0.1 on a port the system picks,
    open the authorization URL in the browser (`open_browser`, ``webbrowser.open``;
    not with `no_browser`, or when no browser opens, then `show` gets a sentence with
    the URL to open by hand; `show` is also told when the browser was opened), wait up
    to `timeout` seconds for the redirect carrying our `state`, and trade its code (with
    the verifier) for tokens.  A refused or abandoned sign-in is AuthError (exit 3)."""
    import socket

    verifier, challenge = pkce_pair()
    register_secret(verifier)
    state = secrets.token_urlsafe(24)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        redirect_uri = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        url = authorization_url(client, redirect_uri, state, challenge)
        if not no_browser and open_browser(url):
            show(f"Opened a browser to sign in; if it did not show up, open {url}")
        else:
            show(f"To sign in, open this URL in a browser on this machine: {url}")
        try:
            caught = _catch_redirect(listener, state, timeout, clock)
        except TimeoutError:
            raise AuthError(
                f"store {client.store}: no sign-in arrived within {timeout:g} s; run "
                f"`mailsync login {client.store}` again"
            ) from None
    finally:
        listener.close()
    if not caught.code:
        said = one_line(caught.error, 60)
        if caught.description:
            said += f": {one_line(caught.description)}"
        raise AuthError(
            f"store {client.store}: the sign-in did not complete ({said}); run "
            f"`mailsync login {client.store}` again"
        )
    fields = {
        "grant_type": "authorization_code",
        "code": caught.code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    return request_tokens(client, fields, "authorization code exchange")

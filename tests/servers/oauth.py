"""A small, real OAuth2 authorization server on 127.0.0.1 for tests (HTTP, or HTTPS with a
private CA), and the private Dovecot that accepts its tokens.

It implements what mailsync's OAuth2 code talks to and what Dovecot's ``oauth2`` passdb
calls, after the RFCs, with opaque random tokens:

* ``POST /device`` (RFC 8628 section 3.1-3.2): device_code, user_code,
  verification_uri, expires_in, interval;
* ``GET /authorize`` (RFC 6749 section 4.1.1, RFC 7636): checks client_id, that
  redirect_uri is a loopback http URL (RFC 8252 section 7.3), the S256 code_challenge
  and state, then redirects (302) to redirect_uri with ``code`` and ``state``, or
  ``error=access_denied``.  The "signed-in browser user" comes from a cookie
  ``user=NAME`` (``consent=deny`` declines); ``server.browser(NAME)`` is such a
  browser;
* ``POST /token`` (RFC 6749 sections 4.1.3, 4.4, 5, 6; RFC 8628 section 3.4-3.5):
  ``authorization_code`` (one use, redirect_uri and PKCE verifier checked),
  ``refresh_token`` (rotated per client: the old one stops working), the device code
  grant (``authorization_pending``, ``slow_down``, ``access_denied``,
  ``expired_token``), ``client_credentials``; clients with a secret must send it
  (body or HTTP Basic);
* ``POST /introspect`` (RFC 7662, HTTP Basic with the resource server's credentials):
  ``{"active": true, "username": ..., "scope": ..., "client_id": ..., "exp": ...}`` or
  ``{"active": false}``;
* ``POST /revoke`` (RFC 7009): revokes an access or refresh token (a refresh token
  takes the access tokens issued from it along, as Google and Microsoft do).

Fixtures
--------
``oauth_server`` (session)
    One OAuthServer (plain HTTP) per pytest process.  Tests make their own clients
    (``add_client()``, fresh ids), so they do not see each other's tokens.
``oauth_tls_server`` (session)
    The same over HTTPS (certificate for 127.0.0.1 from its own private CA:
    ``server.cafile``).
``dovecot_oauth2_server`` (session), ``dovecot_oauth2_user`` (function)
    A private Dovecot (tests/servers/dovecot.py, ``DovecotServer(oauth2=URL)``) whose
    IMAP and POP3 accept XOAUTH2 and OAUTHBEARER with tokens of ``oauth_server``,
    checked by introspection; passwords still work for seeding.

To use them, a test directory's conftest.py imports them (see tests/oauth/conftest.py).

Server API (``OAuthServer``)
----------------------------
``token_url``, ``device_url``, ``authorize_url``, ``introspection_url`` (with the
resource server's credentials in it, as Dovecot takes them), ``revocation_url``.
``add_client(client_id=None, secret=None, *, app_user=None, access_lifetime=3600,
rotate=True, interval=1, slow_down=0, device_lifetime=600) -> Client``: a registered
client; ``app_user``: whose mailbox its client-credentials tokens open; ``slow_down``:
that many device polls are answered ``slow_down`` first.
``approve_device(user_code, user)``, ``deny_device(user_code)``,
``expire_device(user_code)``.
``browser(user, *, consent=True)``: a callable ``open(url) -> True`` that plays the
user's browser: GET the authorization URL with the user's cookie, then follow the
redirect to mailsync's loopback listener.
``issue(user, client) -> (access, refresh)``: tokens as if the user had signed in.
``revoke(token)``, ``expire(access_token)``: end a token early.
``requests``: a list of ``Request(method, path, fields, headers)`` it received, and
``grants_of(grant_type)`` the token requests of one kind; ``grants``: what it issued
(token or code -> ``Grant``); ``valid(token)``: the Grant of a live token, or None.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

HOST = "127.0.0.1"
_OAUTH_ATTR = "_mailsync_oauth_server"
_OAUTH_TLS_ATTR = "_mailsync_oauth_tls_server"
_DOVECOT_OAUTH2_ATTR = "_mailsync_dovecot_oauth2_server"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MAX_BODY = 64 * 1024


@dataclass
class Client:
    client_id: str
    secret: str | None = None
    app_user: str | None = None
    access_lifetime: float = 3600
    rotate: bool = True
    interval: int = 1
    slow_down: int = 0
    device_lifetime: float = 600


@dataclass
class Grant:
    """A token, code or device code the server issued."""

    kind: str  # access | refresh | code | device
    user: str | None
    client_id: str
    scope: str
    expires_at: float
    revoked: bool = False
    parent: str | None = None  # an access token's refresh token
    # authorization codes
    redirect_uri: str = ""
    challenge: str = ""
    # device codes
    user_code: str = ""
    status: str = "pending"  # pending | approved | denied
    polls: int = 0


@dataclass
class Request:
    method: str
    path: str
    fields: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OAuthServer:
    """See the module docstring."""

    host = HOST

    def __init__(self, *, tls: bool = False):
        self.tls = tls
        self.workdir = Path(tempfile.mkdtemp(prefix="mailsync-oauth-"))
        self.cafile: Path | None = None
        self.clients: dict[str, Client] = {}
        self.grants: dict[str, Grant] = {}
        self.requests: list[Request] = []
        self.introspection_user = "dovecot"
        self.introspection_password = secrets.token_urlsafe(12)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle --

    def start(self) -> OAuthServer:
        server = self

        class Handler(_Handler):
            oauth = server

        httpd = ThreadingHTTPServer((HOST, 0), Handler)
        httpd.daemon_threads = True
        if self.tls:
            from servers.dovecot import make_certificates

            self.cafile, certfile, keyfile = make_certificates(self.workdir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, name="oauth-server")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OAuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- URLs --

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    @property
    def device_url(self) -> str:
        return self.base_url + "/device"

    @property
    def authorize_url(self) -> str:
        return self.base_url + "/authorize"

    @property
    def revocation_url(self) -> str:
        return self.base_url + "/revoke"

    @property
    def introspection_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return (
            f"{scheme}://{self.introspection_user}:{self.introspection_password}@"
            f"{HOST}:{self.port}/introspect"
        )

    # -- set-up and control --

    def add_client(self, client_id: str | None = None, secret: str | None = None, **settings):
        client_id = client_id or f"client-{next(self._ids)}-{secrets.token_hex(3)}"
        client = Client(client_id, secret, **settings)
        with self._lock:
            self.clients[client_id] = client
        return client

    def _new(self, prefix: str, grant: Grant) -> str:
        value = f"{prefix}{secrets.token_urlsafe(24)}"
        self.grants[value] = grant
        return value

    def issue(self, user: str | None, client: Client, scope: str = "mail") -> tuple[str, str]:
        """(access token, refresh token) as if `user` had signed in with `client`."""
        with self._lock:
            refresh = self._new(
                "rt-", Grant("refresh", user, client.client_id, scope, time.time() + 86400 * 90)
            )
            access = self._new(
                "at-",
                Grant(
                    "access",
                    user,
                    client.client_id,
                    scope,
                    time.time() + client.access_lifetime,
                    parent=refresh,
                ),
            )
        return access, refresh

    def _device(self, user_code: str) -> Grant:
        for grant in self.grants.values():
            if grant.kind == "device" and grant.user_code == user_code:
                return grant
        raise KeyError(user_code)

    def approve_device(self, user_code: str, user: str) -> None:
        with self._lock:
            grant = self._device(user_code)
            grant.status, grant.user = "approved", user

    def deny_device(self, user_code: str) -> None:
        with self._lock:
            self._device(user_code).status = "denied"

    def expire_device(self, user_code: str) -> None:
        with self._lock:
            self._device(user_code).expires_at = 0

    def revoke(self, token: str) -> None:
        with self._lock:
            self._revoke(token)

    def _revoke(self, token: str) -> None:
        grant = self.grants.get(token)
        if grant is None:
            return
        grant.revoked = True
        if grant.kind == "refresh":
            for other in self.grants.values():
                if other.parent == token:
                    other.revoked = True

    def expire(self, token: str) -> None:
        with self._lock:
            self.grants[token].expires_at = 0

    def valid(self, token: str) -> Grant | None:
        grant = self.grants.get(token)
        if grant is None or grant.revoked or grant.expires_at <= time.time():
            return None
        return grant

    def grants_of(self, grant_type: str) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.path == "/token" and r.fields.get("grant_type") == grant_type
        ]

    def browser(self, user: str, *, consent: bool = True):
        """A callable that opens a URL as `user`'s browser would: GET the authorization
        endpoint with the user's session cookie, follow its redirect to the loopback
        redirect_uri.  Returns True (a browser opened); records where it went in
        ``opened`` and the final page in ``pages``."""
        cafile = self.cafile

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, headers, newurl):
                return None

        def open_url(url: str) -> bool:
            open_url.opened.append(url)
            thread = threading.Thread(target=visit, args=(url,), daemon=True)
            thread.start()
            open_url.threads.append(thread)
            return True

        def visit(url: str) -> None:
            context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            opener = urllib.request.build_opener(
                urllib.request.HTTPSHandler(context=context),
                urllib.request.ProxyHandler({}),
                NoRedirect,
            )
            cookie = f"user={user}" + ("" if consent else "; consent=deny")
            request = urllib.request.Request(url, headers={"Cookie": cookie})
            try:
                opener.open(request, timeout=10)
                location = None
            except urllib.error.HTTPError as error:
                location = error.headers.get("Location")
            if location is None:
                open_url.pages.append("no redirect")
                return
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with direct.open(location, timeout=10) as page:
                open_url.pages.append(page.read().decode())

        open_url.opened = []
        open_url.pages = []
        open_url.threads = []
        return open_url

    # -- the endpoints (called by the handler, under the lock) --

    def _client(self, fields: dict, headers: dict, *, secret_required: bool = False):
        client_id, secret = fields.get("client_id"), fields.get("client_secret")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:]).decode()
                client_id, _, secret = decoded.partition(":")
            except ValueError:
                return None
        client = self.clients.get(client_id or "")
        if client is None:
            return None
        if client.secret is None:
            return None if secret_required else client
        if not secrets.compare_digest((secret or "").encode(), client.secret.encode()):
            return None
        return client

    def _tokens(self, client: Client, user: str | None, scope: str, refresh: bool) -> dict:
        now = time.time()
        answer: dict = {"token_type": "Bearer", "expires_in": int(client.access_lifetime)}
        parent = None
        if refresh:
            parent = self._new(
                "rt-", Grant("refresh", user, client.client_id, scope, now + 86400 * 90)
            )
            answer["refresh_token"] = parent
        answer["access_token"] = self._new(
            "at-",
            Grant(
                "access", user, client.client_id, scope, now + client.access_lifetime, parent=parent
            ),
        )
        answer["scope"] = scope
        return answer

    def token(self, fields: dict, headers: dict) -> tuple[int, dict]:
        grant_type = fields.get("grant_type")
        client = self._client(fields, headers, secret_required=grant_type == "client_credentials")
        if client is None:
            return 401, {
                "error": "invalid_client",
                "error_description": "unknown client or bad secret",
            }
        now = time.time()
        if grant_type == "authorization_code":
            code = self.grants.pop(fields.get("code", ""), None)
            if (
                code is None
                or code.kind != "code"
                or code.client_id != client.client_id
                or code.expires_at <= now
            ):
                return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
            if fields.get("redirect_uri") != code.redirect_uri:
                return 400, {"error": "invalid_grant", "error_description": "redirect_uri differs"}
            if _s256(fields.get("code_verifier", "")) != code.challenge:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "PKCE verification failed",
                }
            return 200, self._tokens(client, code.user, code.scope, refresh=True)
        if grant_type == "refresh_token":
            token = fields.get("refresh_token", "")
            grant = self.grants.get(token)
            if (
                grant is None
                or grant.kind != "refresh"
                or grant.revoked
                or grant.expires_at <= now
                or grant.client_id != client.client_id
            ):
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "AADSTS70008: The refresh token has expired or was "
                    "revoked.\r\nTrace ID: 1234\r\nTimestamp: now",
                }
            if client.rotate:
                grant.revoked = True  # its access tokens stay valid
                answer = self._tokens(client, grant.user, grant.scope, refresh=True)
            else:
                answer = self._tokens(client, grant.user, grant.scope, refresh=False)
                self.grants[answer["access_token"]].parent = token
            return 200, answer
        if grant_type == "client_credentials":
            scope = fields.get("scope", "")
            return 200, self._tokens(client, client.app_user, scope, refresh=False)
        if grant_type == DEVICE_GRANT:
            grant = self.grants.get(fields.get("device_code", ""))
            if grant is None or grant.kind != "device" or grant.client_id != client.client_id:
                return 400, {"error": "invalid_grant", "error_description": "unknown device code"}
            grant.polls += 1
            if grant.expires_at <= now:
                return 400, {"error": "expired_token"}
            if grant.status == "denied":
                return 400, {"error": "access_denied"}
            if grant.polls <= client.slow_down:
                return 400, {"error": "slow_down"}
            if grant.status == "pending":
                return 400, {"error": "authorization_pending"}
            del self.grants[fields["device_code"]]
            return 200, self._tokens(client, grant.user, grant.scope, refresh=True)
        return 400, {"error": "unsupported_grant_type"}

    def device(self, fields: dict, headers: dict) -> tuple[int, dict]:
        client = self._client(fields, headers)
        if client is None:
            return 401, {"error": "invalid_client"}
        user_code = "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(8))
        device_code = self._new(
            "dc-",
            Grant(
                "device",
                None,
                client.client_id,
                fields.get("scope", ""),
                time.time() + client.device_lifetime,
                user_code=user_code,
            ),
        )
        return 200, {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.base_url + "/device/verify",
            "expires_in": int(client.device_lifetime),
            "interval": client.interval,
        }

    def authorize(self, query: dict, cookies: dict) -> tuple[int, dict]:
        """(status, headers) of the authorization endpoint's answer."""
        client = self.clients.get(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri", "")
        target = urlsplit(redirect_uri)
        if client is None or target.scheme != "http" or target.hostname != HOST:
            return 400, {}
        state = query.get("state", "")
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            params = {"error": "invalid_request", "state": state}
        elif not cookies.get("user"):
            params = {"error": "login_required", "state": state}
        elif cookies.get("consent") == "deny":
            params = {
                "error": "access_denied",
                "error_description": "The user declined",
                "state": state,
            }
        else:
            code = self._new(
                "code-",
                Grant(
                    "code",
                    cookies["user"],
                    client.client_id,
                    query.get("scope", ""),
                    time.time() + 600,
                    redirect_uri=redirect_uri,
                    challenge=query.get("code_challenge", ""),
                ),
            )
            params = {"code": code, "state": state}
        return 302, {"Location": redirect_uri + "?" + urlencode(params)}

    def introspect(self, fields: dict, headers: dict) -> tuple[int, dict]:
        expected = (
            "Basic "
            + base64.b64encode(
                f"{self.introspection_user}:{self.introspection_password}".encode()
            ).decode()
        )
        if headers.get("authorization") != expected:
            return 401, {"error": "invalid_client"}
        grant = self.valid(fields.get("token", ""))
        if grant is None or grant.kind != "access" or grant.user is None:
            return 200, {"active": False}
        return 200, {
            "active": True,
            "username": grant.user,
            "scope": grant.scope,
            "client_id": grant.client_id,
            "token_type": "Bearer",
            "exp": int(grant.expires_at),
        }

    def revocation(self, fields: dict, headers: dict) -> tuple[int, dict]:
        if self._client(fields, headers) is None:
            return 401, {"error": "invalid_client"}
        self._revoke(fields.get("token", ""))
        return 200, {}


class _Handler(BaseHTTPRequestHandler):
    oauth: OAuthServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: the request log is server.requests
        pass

    def _send(self, status: int, answer: dict | None, headers: dict | None = None) -> None:
        body = json.dumps(answer).encode() if answer is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if answer is not None:
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _headers(self) -> dict:
        return {key.lower(): value for key, value in self.headers.items()}

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": "invalid_request"})
            return
        raw = self.rfile.read(length).decode("utf-8", "replace")
        fields = {key: values[0] for key, values in parse_qs(raw).items()}
        path = urlsplit(self.path).path
        headers = self._headers()
        server = self.oauth
        handlers = {
            "/token": server.token,
            "/device": server.device,
            "/introspect": server.introspect,
            "/revoke": server.revocation,
        }
        with server._lock:
            server.requests.append(Request("POST", path, fields, headers))
            handler = handlers.get(path)
            status, answer = handler(fields, headers) if handler else (404, {"error": "not_found"})
        self._send(status, answer)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        headers = self._headers()
        cookies = {}
        for item in headers.get("cookie", "").split(";"):
            key, _, value = item.strip().partition("=")
            if key:
                cookies[key] = value
        server = self.oauth
        with server._lock:
            server.requests.append(Request("GET", parts.path, query, headers))
            if parts.path != "/authorize":
                status, extra = 404, {}
            else:
                status, extra = server.authorize(query, cookies)
        self._send(status, None, extra)


# -- fixtures -----------------------------------------------------------------------


def _session(request: pytest.FixtureRequest, attr: str, make):
    server = getattr(request.config, attr, None)
    if server is None:
        server = make()
        request.config.add_cleanup(server.stop)
        server.start()
        setattr(request.config, attr, server)
    if isinstance(server, str):
        pytest.fail(server, pytrace=False)
    return server


@pytest.fixture(scope="session")
def oauth_server(request: pytest.FixtureRequest) -> OAuthServer:
    """The session's OAuth2 authorization server over plain HTTP on 127.0.0.1."""
    return _session(request, _OAUTH_ATTR, OAuthServer)


@pytest.fixture(scope="session")
def oauth_tls_server(request: pytest.FixtureRequest) -> OAuthServer:
    """The session's OAuth2 authorization server over HTTPS (its CA: server.cafile)."""
    return _session(request, _OAUTH_TLS_ATTR, lambda: OAuthServer(tls=True))


@pytest.fixture(scope="session")
def dovecot_oauth2_server(request: pytest.FixtureRequest, oauth_server: OAuthServer):
    """A private Dovecot accepting XOAUTH2 and OAUTHBEARER with oauth_server's tokens."""
    from servers.dovecot import _session_server

    return _session_server(request, _DOVECOT_OAUTH2_ATTR, oauth2=oauth_server.introspection_url)


@pytest.fixture
def dovecot_oauth2_user(dovecot_oauth2_server):
    """A fresh user (empty INBOX) on the OAuth2 Dovecot."""
    return dovecot_oauth2_server.add_user()

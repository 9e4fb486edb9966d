"""The grants of mailsync/oauth.py against the real authorization server of
tests/servers/oauth.py: device code (RFC 8628), authorization code with PKCE on a
loopback redirect (RFC 7636, RFC 8252), refresh with rotation, client credentials; and
the HTTP side: TLS verified, answers bounded, errors as one line without secrets."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from mailsync import oauth, oauth_login
from mailsync.errors import EXIT_CONNECT, AuthError, ConfigError, ConnectError
from mailsync.net import SECRETS
from mailsync.oauth import OAuthClient


def s256(verifier: str) -> str:
    """RFC 7636 section 4.2, written out here rather than taken from the code under test."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def custom_client(server, registered, **settings) -> OAuthClient:
    provider = oauth.provider(
        "custom",
        token_url=server.token_url,
        device_url=server.device_url,
        authorize_url=server.authorize_url,
    )
    values = {
        "store": "work",
        "user": "alice",
        "provider": provider,
        "client_id": registered.client_id,
        "scopes": ("mail", "offline_access"),
        "grant": oauth.DEVICE_CODE,
        "client_secret": registered.secret,
        "cafile": str(server.cafile) if server.cafile else None,
    }
    values.update(settings)
    return OAuthClient(**values)


class DeviceUser:
    """The person at the other device: `show` receives the code, and during the first
    wait (`sleep`) they approve it, or decline it, or let it expire."""

    def __init__(self, server, user: str = "alice", action: str = "approve", after: int = 1):
        self.server, self.user, self.action, self.after = server, user, action, after
        self.shown: list[oauth_login.DeviceAuthorization] = []
        self.sleeps: list[float] = []

    def show(self, authorization: oauth_login.DeviceAuthorization) -> None:
        self.shown.append(authorization)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) == self.after:
            code = self.shown[0].user_code
            if self.action == "approve":
                self.server.approve_device(code, self.user)
            elif self.action == "deny":
                self.server.deny_device(code)
            elif self.action == "expire":
                self.server.expire_device(code)


# -- device authorization grant ------------------------------------------------------------


def test_device_login_shows_the_code_polls_and_returns_tokens_for_the_approving_user(
    oauth_server,
):
    registered = oauth_server.add_client()
    client = custom_client(oauth_server, registered)
    person = DeviceUser(oauth_server, after=2)  # approves during the second wait

    tokens = oauth_login.device_login(client, person.show, sleep=person.sleep)

    shown = person.shown[0]
    assert shown.verification_uri == oauth_server.base_url + "/device/verify"
    assert shown.user_code in shown.instructions()
    assert shown.verification_uri in shown.instructions()
    assert person.sleeps == [1, 1]  # the server's interval, twice (one pending answer)
    assert oauth_server.valid(tokens.access_token).user == "alice"
    assert oauth_server.grants[tokens.refresh_token].kind == "refresh"
    device_request = [r for r in oauth_server.requests if r.path == "/device"][-1]
    assert device_request.fields["scope"] == "mail offline_access"
    polls = oauth_server.grants_of(oauth.DEVICE_GRANT_TYPE)
    assert [p.fields["client_id"] for p in polls[-2:]] == [registered.client_id] * 2


def test_device_login_slows_down_by_five_seconds_for_good_on_each_slow_down(oauth_server):
    registered = oauth_server.add_client(interval=2, slow_down=2)
    client = custom_client(oauth_server, registered)
    person = DeviceUser(oauth_server, after=1)

    oauth_login.device_login(client, person.show, sleep=person.sleep)

    # slow_down, slow_down, then the approved code: 2, 2+5, 2+5+5
    assert person.sleeps == [2, 7, 12]


def test_device_login_never_polls_faster_than_once_a_second(oauth_server):
    registered = oauth_server.add_client(interval=0)
    person = DeviceUser(oauth_server)
    oauth_login.device_login(
        custom_client(oauth_server, registered), person.show, sleep=person.sleep
    )
    assert person.sleeps == [oauth_login.MIN_POLL_INTERVAL]


@pytest.mark.parametrize(
    ("action", "words"),
    [("deny", "the sign-in was declined"), ("expire", "expired before the sign-in")],
)
def test_device_login_declined_or_expired_is_an_auth_error_saying_to_log_in_again(
    oauth_server, action, words
):
    registered = oauth_server.add_client()
    person = DeviceUser(oauth_server, action=action)
    with pytest.raises(AuthError) as caught:
        oauth_login.device_login(
            custom_client(oauth_server, registered), person.show, sleep=person.sleep
        )
    assert words in str(caught.value)
    assert "mailsync login work" in str(caught.value)
    assert caught.value.exit_code == EXIT_CONNECT


def test_device_login_gives_up_when_the_code_expires_unapproved(oauth_server):
    registered = oauth_server.add_client(interval=5, device_lifetime=12)
    now = [1000.0]
    sleeps = []

    def sleep(seconds):  # nobody approves; time passes as the client sleeps
        sleeps.append(seconds)
        now[0] += seconds

    with pytest.raises(AuthError, match="expired before the sign-in"):
        oauth_login.device_login(
            custom_client(oauth_server, registered),
            lambda a: None,
            sleep=sleep,
            clock=lambda: now[0],
        )
    assert sleeps == [5, 5, 2]  # the last wait ends with the code's lifetime


def test_device_login_without_a_device_endpoint_is_a_config_error(oauth_server):
    registered = oauth_server.add_client()
    client = custom_client(oauth_server, registered)
    client.provider = oauth.provider("google")
    with pytest.raises(ConfigError, match="no device authorization endpoint"):
        oauth_login.device_login(client, lambda a: None)


# -- authorization code with PKCE, loopback redirect ------------------------------------------


def test_browser_login_catches_the_redirect_and_trades_the_code_with_the_pkce_verifier(
    oauth_server,
):
    registered = oauth_server.add_client()
    client = custom_client(oauth_server, registered, grant=oauth.AUTHORIZATION_CODE)
    browser = oauth_server.browser("bob")
    said = []

    tokens = oauth_login.browser_login(client, said.append, open_browser=browser, timeout=30)

    assert oauth_server.valid(tokens.access_token).user == "bob"
    assert tokens.refresh_token
    (url,) = browser.opened
    assert said == [f"Opened a browser to sign in; if it did not show up, open {url}"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["login_hint"] == ["alice"]
    redirect = urllib.parse.urlsplit(query["redirect_uri"][0])
    assert (redirect.scheme, redirect.hostname, redirect.path) == ("http", "127.0.0.1", "/")
    assert redirect.port
    (exchange,) = oauth_server.grants_of("authorization_code")[-1:]
    # the server checked S256(code_verifier) == code_challenge, or it would have refused
    assert s256(exchange.fields["code_verifier"]) == query["code_challenge"][0]
    assert exchange.fields["redirect_uri"] == query["redirect_uri"][0]
    assert browser.pages == [
        "<!doctype html><meta charset=utf-8><title>mailsync</title>"
        "<p>mailsync is signed in.</p><p>You can close this window.</p>"
    ]


def test_browser_login_ignores_a_redirect_with_another_state(oauth_server):
    """Another local process that guesses the port cannot feed mailsync its own code."""
    registered = oauth_server.add_client()
    client = custom_client(oauth_server, registered, grant=oauth.AUTHORIZATION_CODE)
    real_browser = oauth_server.browser("bob")
    forged = []

    def forge_then_sign_in(url):
        redirect = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["redirect_uri"][0]
        try:
            urllib.request.urlopen(redirect + "?code=forged-code&state=guessed", timeout=10)
        except urllib.error.HTTPError as error:
            forged.append(error.code)
        real_browser(url)

    def open_browser(url):  # the forger comes first, then the user's browser
        threading.Thread(target=forge_then_sign_in, args=(url,), daemon=True).start()
        return True

    tokens = oauth_login.browser_login(
        client, lambda text: None, open_browser=open_browser, timeout=30
    )

    assert forged == [404]
    assert oauth_server.valid(tokens.access_token).user == "bob"
    codes = [r.fields["code"] for r in oauth_server.grants_of("authorization_code")]
    assert "forged-code" not in codes


def test_browser_login_with_no_browser_prints_the_url_instead(oauth_server):
    registered = oauth_server.add_client()
    client = custom_client(oauth_server, registered, grant=oauth.AUTHORIZATION_CODE)
    user_browser = oauth_server.browser("carol")
    said = []

    def show(text):  # the user reads the line and opens the URL by hand
        said.append(text)
        user_browser(text.rsplit(" ", 1)[1])

    def must_not_open(url):
        raise AssertionError("no_browser opened a browser")

    tokens = oauth_login.browser_login(
        client, show, no_browser=True, open_browser=must_not_open, timeout=30
    )
    assert said[0].startswith("To sign in, open this URL in a browser on this machine: http")
    assert oauth_server.valid(tokens.access_token).user == "carol"


def test_browser_login_declined_is_an_auth_error_with_the_providers_reason(oauth_server):
    registered = oauth_server.add_client()
    client = custom_client(oauth_server, registered, grant=oauth.AUTHORIZATION_CODE)
    with pytest.raises(AuthError) as caught:
        oauth_login.browser_login(
            client, lambda t: None, open_browser=oauth_server.browser("bob", consent=False)
        )
    assert str(caught.value) == (
        "store work: the sign-in did not complete (access_denied: The user declined); run "
        "`mailsync login work` again"
    )
    assert oauth_server.grants_of("authorization_code") == [] or all(
        r.fields.get("client_id") != registered.client_id
        for r in oauth_server.grants_of("authorization_code")
    )


def test_browser_login_gives_up_after_its_timeout(oauth_server):
    registered = oauth_server.add_client()
    client = custom_client(oauth_server, registered, grant=oauth.AUTHORIZATION_CODE)
    with pytest.raises(AuthError, match="no sign-in arrived within 0.2 s"):
        oauth_login.browser_login(
            client, lambda t: None, open_browser=lambda url: True, timeout=0.2
        )


def test_pkce_pair_follows_rfc_7636():
    verifier, challenge = oauth_login.pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert set(verifier) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    )
    # RFC 7636 appendix B
    known = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256(known) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert s256(verifier) == challenge


# -- refresh, client credentials -------------------------------------------------------------


def test_refresh_rotates_the_refresh_token_and_the_old_one_is_then_refused(oauth_server):
    registered = oauth_server.add_client(rotate=True)
    client = custom_client(oauth_server, registered)
    _, first = oauth_server.issue("alice", registered)

    tokens = oauth.refresh(client, first)

    assert tokens.refresh_token and tokens.refresh_token != first
    assert oauth_server.valid(tokens.access_token).user == "alice"
    assert oauth_server.grants_of("refresh_token")[-1].fields["scope"] == "mail offline_access"
    with pytest.raises(AuthError) as caught:
        oauth.refresh(client, first)
    assert caught.value.error == "invalid_grant"


def test_a_refused_refresh_token_says_to_log_in_again_in_one_line_without_secrets(
    oauth_server,
):
    registered = oauth_server.add_client(secret="s3cret-client")
    client = custom_client(oauth_server, registered)
    access, refresh_token = oauth_server.issue("alice", registered)
    oauth_server.revoke(refresh_token)

    with pytest.raises(AuthError) as caught:
        oauth.refresh(client, refresh_token)

    text = str(caught.value)
    assert text == (
        "store work: the OAuth2 provider no longer accepts the saved sign-in (invalid_grant: "
        "AADSTS70008: The refresh token has expired or was revoked.); run `mailsync login "
        "work` to sign in again"
    )
    assert caught.value.exit_code == EXIT_CONNECT
    for secret in (access, refresh_token, "s3cret-client"):
        assert secret not in text
    assert refresh_token in SECRETS and "s3cret-client" in SECRETS


def test_refresh_without_rotation_keeps_the_refresh_token(oauth_server):
    registered = oauth_server.add_client(rotate=False)
    _, first = oauth_server.issue("alice", registered)
    tokens = oauth.refresh(custom_client(oauth_server, registered), first)
    assert tokens.refresh_token is None
    assert oauth_server.valid(tokens.access_token).user == "alice"


def test_client_credentials_with_the_secret_from_a_command(oauth_server, tmp_path):
    registered = oauth_server.add_client(secret="app-secret-123", app_user="shared-box")
    script = tmp_path / "secret.sh"
    script.write_text("#!/bin/sh\necho app-secret-123\n")
    script.chmod(0o700)
    client = custom_client(
        oauth_server,
        registered,
        grant=oauth.CLIENT_CREDENTIALS,
        client_secret=None,
        client_secret_command=str(script),
        scopes=(oauth.MICROSOFT_APP_SCOPE,),
    )

    tokens = oauth.client_credentials(client)

    assert oauth_server.valid(tokens.access_token).user == "shared-box"
    assert tokens.refresh_token is None
    request = oauth_server.grants_of("client_credentials")[-1]
    assert request.fields["scope"] == "https://outlook.office365.com/.default"
    assert request.fields["client_secret"] == "app-secret-123"


def test_client_credentials_with_a_wrong_secret_names_the_app_registration(oauth_server):
    registered = oauth_server.add_client(secret="right", app_user="box")
    client = custom_client(
        oauth_server, registered, grant=oauth.CLIENT_CREDENTIALS, client_secret="wrong-secret"
    )
    with pytest.raises(AuthError) as caught:
        oauth.client_credentials(client)
    assert "refused the app registration (invalid_client" in str(caught.value)
    assert "wrong-secret" not in str(caught.value)


# -- HTTP: TLS, bounds, hostile answers --------------------------------------------------------


def test_https_endpoint_verified_with_its_ca(oauth_tls_server):
    registered = oauth_tls_server.add_client()
    _, refresh_token = oauth_tls_server.issue("alice", registered)
    client = custom_client(oauth_tls_server, registered)
    assert client.provider.token_url.startswith("https://")
    tokens = oauth.refresh(client, refresh_token)
    assert oauth_tls_server.valid(tokens.access_token).user == "alice"


def test_https_endpoint_with_an_unknown_ca_is_refused(oauth_tls_server):
    registered = oauth_tls_server.add_client()
    _, refresh_token = oauth_tls_server.issue("alice", registered)
    client = custom_client(oauth_tls_server, registered, cafile=None)
    with pytest.raises(ConnectError) as caught:
        oauth.refresh(client, refresh_token)
    assert "certificate" in str(caught.value)
    assert refresh_token not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["http://login.example.com/token", "ftp://127.0.0.1/token", "https://user:pw@idp/token"],
)
def test_token_endpoints_must_be_https_except_on_this_machine(url):
    with pytest.raises(ConfigError):
        oauth.check_endpoint_url(url, "token_url")


def test_loopback_http_endpoints_are_allowed():
    oauth.check_endpoint_url("http://127.0.0.1:8080/token", "token_url")
    oauth.check_endpoint_url("http://localhost/token", "token_url")


class HostileEndpoint:
    """A socket server on 127.0.0.1 that answers every request with the bytes given."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/token"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            connection, _ = self.sock.accept()
        except OSError:
            return
        with connection:
            self._read_request(connection)  # all of it: unread bytes would make close() a RST
            try:
                connection.sendall(self.answer)
            except OSError:
                pass

    @staticmethod
    def _read_request(connection):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                return
            body += chunk

    def close(self):
        self.sock.close()


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"a": "'
            + b"x" * (3 << 20)
            + b'"}',
            "sent more than 1048576 bytes",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "without a JSON object"),
        (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 2\r\n\r\n{}", "failed with HTTP 502"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", "without a JSON object"),
        (b"garbage\r\n\r\n", "did not answer properly"),
    ],
)
def test_a_hostile_token_endpoint_is_a_connect_error(answer, words):
    endpoint = HostileEndpoint(answer)
    try:
        with pytest.raises(ConnectError, match=words):
            oauth.post_form(endpoint.url, {"grant_type": "refresh_token"}, timeout=10)
    finally:
        endpoint.close()


def test_a_token_response_with_a_token_that_would_break_sasl_framing_is_refused():
    with pytest.raises(ConnectError, match="unusable access token"):
        oauth.parse_token_response({"access_token": "abc\x01def", "token_type": "Bearer"}, "x")
    with pytest.raises(ConnectError, match="not Bearer"):
        oauth.parse_token_response({"access_token": "abc", "token_type": "mac"}, "x")


def test_an_unreachable_endpoint_is_a_connect_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(ConnectError, match="cannot reach the authorization server"):
        oauth.post_form(f"http://127.0.0.1:{port}/token", {}, timeout=5)

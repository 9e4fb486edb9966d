"""What every network store shares: its URL, TLS, timeouts and the password.

URLs: ``SCHEME://USER@HOST[:PORT][/PATH][?tls=none&cafile=PATH&password_command=CMD]``;
a user name with ``@`` is percent-encoded (``alice%40example.com@host``) or given as
``user`` in the config.  The query is merged into the store's options (the config's
table wins).

Passwords come from, in order: ``password_command`` (config or URL), --password-command,
the environment variable MAILSYNC_PASSWORD, the system keyring (service ``mailsync``,
when the optional ``keyring`` package is installed), an interactive prompt when stdin is
a terminal.  Never from the command line or a URL; never logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from mailsync.errors import AuthError, ConfigError

log = logging.getLogger("mailsync")

DEFAULT_PORTS = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110, "ews": 443, "graph": 443}
IMPLICIT_TLS = {"imaps", "pop3s", "ews", "graph"}
TLS_MODES = ("implicit", "starttls", "none")
DEFAULT_TIMEOUT = 60.0


@dataclass
class Endpoint:
    scheme: str
    user: str
    host: str
    port: int
    path: str = ""
    tls: str = "implicit"  # implicit | starttls | none
    cafile: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    options: dict = field(default_factory=dict)  # store-specific leftovers

    @property
    def display(self) -> str:
        """The URL without secrets, for messages and logs."""
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}{self.path}"

    def ssl_context(self) -> ssl.SSLContext:
        """Verifying context: certificates and host names are checked by default; a
        private CA is added for this connection only, never process-wide."""
        context = ssl.create_default_context(cafile=self.cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def parse_endpoint(url: str, options: dict | None = None) -> Endpoint:
    """The endpoint of a network store URL; ConfigError (exit 2) saying what is wrong with
    it.  Errors show the URL with any password masked (stores.mask_url)."""
    from mailsync.stores import mask_url

    options = dict(options or {})
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as error:  # "Invalid IPv6 URL"
        raise ConfigError(f"store URL {shown!r} cannot be read ({error}); check it")
    try:
        port = parts.port
    except ValueError:  # (its text quotes the port, which may be a password: imaps://a:PW)
        raise ConfigError(f"store URL {shown!r} has a bad port; give a number from 1 to 65535")
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ConfigError(f"store URL {shown!r}: unknown scheme {scheme!r}")
    if parts.password is not None:
        raise ConfigError(
            f"store URL {shown!r} holds a password, which would be visible to every user of "
            "this machine; remove it and use password_command, MAILSYNC_PASSWORD or the "
            "keyring instead"
        )
    if not hostname:
        raise ConfigError(f"store URL {shown!r} has no host; write e.g. {scheme}://USER@HOST")
    user = unquote(parts.username) if parts.username else options.pop("user", None)
    options.pop("user", None)
    if not user:
        raise ConfigError(
            f"store URL {shown!r} has no user; write {scheme}://USER@HOST "
            "(percent-encode an @ in the user name as %40) or set user in the config"
        )
    query = {}
    for item in filter(None, parts.query.split("&")):
        key, _, value = item.partition("=")
        query[unquote(key)] = unquote(value)
    if "client_secret" in query:  # (a URL is shown in reports, logs and the state)
        raise ConfigError(
            f"store URL {shown.split('?', 1)[0]!r} holds client_secret, which would be shown "
            "wherever the URL is; give client_secret_command in the query or the config instead"
        )
    merged = {**query, **options}
    tls = merged.pop("tls", None)
    if tls is None:
        tls = "implicit" if scheme in IMPLICIT_TLS else "starttls"
    if tls not in TLS_MODES:
        raise ConfigError(f"store {shown!r}: tls must be one of {', '.join(TLS_MODES)}")
    port = port or DEFAULT_PORTS[scheme]
    cafile = merged.pop("cafile", None)
    if cafile:
        cafile = os.path.expanduser(cafile)
        if not os.path.isfile(cafile):
            raise ConfigError(f"store {shown!r}: cafile {cafile} does not exist")
    try:
        timeout = float(merged.pop("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        raise ConfigError(f"store {shown!r}: timeout must be a number of seconds")
    return Endpoint(scheme, user, hostname, port, parts.path, tls, cafile, timeout, merged)


def secret_from_command(command, what: str) -> str:
    """The first line a command prints (a password, an OAuth2 token), never logged;
    `what` names it in errors ("password_command for imaps://...")."""
    import shlex  # here, not at the top: subprocess alone is 4 ms of every start-up
    import subprocess

    try:
        result = subprocess.run(
            command if isinstance(command, list) else shlex.split(command),
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise AuthError(f"{what} failed: {error}")
    if result.returncode != 0:
        raise AuthError(f"{what} exited {result.returncode}; run it by hand to see why")
    lines = result.stdout.decode("utf-8").splitlines()
    if not lines or not lines[0]:
        raise AuthError(f"{what} printed nothing")
    return lines[0]


def get_password(endpoint: Endpoint) -> str:
    """The password for an endpoint, from the first source that has one."""
    command = endpoint.options.get("password_command") or os.environ.get(
        "MAILSYNC_PASSWORD_COMMAND"
    )
    if command:
        return secret_from_command(command, f"password_command for {endpoint.display}")
    if "MAILSYNC_PASSWORD" in os.environ:
        return os.environ["MAILSYNC_PASSWORD"]
    try:
        import keyring  # optional

        stored = keyring.get_password("mailsync", f"{endpoint.user}@{endpoint.host}")
        if stored:
            return stored
    except Exception:  # keyring missing, or no backend: try the next source
        pass
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"Password for {endpoint.display}: ")
    raise AuthError(
        f"no password for {endpoint.display}: set password_command in the config, "
        "MAILSYNC_PASSWORD, or store it in the keyring (service mailsync)"
    )


def check_environment_password(endpoints: list[Endpoint | None]) -> None:
    """ConfigError (exit 2) when two different accounts of one run would both take their
    password from MAILSYNC_PASSWORD: one of the logins would fail, on every run.  (Two
    URLs of one account, user@host, may share it.)"""
    if "MAILSYNC_PASSWORD" not in os.environ or os.environ.get("MAILSYNC_PASSWORD_COMMAND"):
        return
    takers: dict[tuple[str, str], Endpoint] = {}
    for ep in endpoints:
        if ep is not None and not ep.options.get("password_command"):
            takers.setdefault((ep.user, ep.host.lower()), ep)
    if len(takers) > 1:
        first, second = list(takers.values())[:2]
        raise ConfigError(
            f"{first.display} and {second.display} would both take their password from "
            "MAILSYNC_PASSWORD; give each its own password_command: in its [store.NAME] "
            f"table, or in its URL ({second.scheme}://{second.user}@{second.host}"
            "?password_command=pass%20show%20mail/NAME)"
        )


# One password per endpoint and process: parallel workers each open their own connection,
# and must not run password_command or prompt once each.
_LOCK = threading.RLock()
_PASSWORDS: dict[tuple, str] = {}
#: Every password handed out in this process: protocol logs mask each of them.
SECRETS: set[str] = set()


def _password_key(ep: Endpoint) -> tuple:
    sources = (
        repr(ep.options.get("password_command")),
        os.environ.get("MAILSYNC_PASSWORD_COMMAND"),
        os.environ.get("MAILSYNC_PASSWORD"),
    )
    digest = hashlib.sha256(repr(sources).encode()).hexdigest()  # the sources, if they change
    return (ep.scheme, ep.user, ep.host, ep.port, digest)


def password_for(ep: Endpoint) -> str:
    """get_password(), asked once per endpoint and process."""
    with _LOCK:
        key = _password_key(ep)
        if key not in _PASSWORDS:
            password = get_password(ep)
            SECRETS.add(password)
            _PASSWORDS[key] = password
        return _PASSWORDS[key]


def forget_password(ep: Endpoint) -> None:
    """After a failed login: the next attempt asks the source again."""
    with _LOCK:
        _PASSWORDS.pop(_password_key(ep), None)


def _secret_forms(secret: str) -> set[str]:
    """The ways a password can appear in a server's text or a protocol line: as is,
    quoted with IMAP's backslash escapes, and as Python's repr shows either."""
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
    forms = {secret, quoted}
    for form in list(forms):
        try:
            forms.add(repr(form.encode())[2:-1])
        except UnicodeEncodeError:
            pass
        forms.add(repr(form)[1:-1])
    return {f for f in forms if f}


#: Passwords shorter than this are not looked for in free text: one of 1-3 characters
#: would turn up inside ordinary words and garble every line (protocol logs mask the
#: LOGIN/PASS command itself whatever the password).
MIN_MASKED = 4


def mask_secrets(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every form of every password handed out (SECRETS) replaced by ****.
    For anything a server sent that goes into an error or a log line: a server may echo
    the LOGIN or PASS command it refused."""
    for secret in tuple(SECRETS if secrets is None else secrets):
        if len(secret) < MIN_MASKED:
            continue
        for form in sorted(_secret_forms(secret), key=len, reverse=True):
            if form in text:
                text = text.replace(form, "****")
    return text


class _MaskSecrets(logging.Filter):
    """On the mailsync logger: each line it logs has every password handed out masked
    (a server's reply, or a folder name it chose, may carry one).  Logger filters run
    only for lines that are emitted, so quiet levels cost nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if SECRETS:
            text = record.getMessage()
            masked = mask_secrets(text)
            if masked != text:
                record.msg, record.args = masked, None
        return True


log.addFilter(_MaskSecrets())


# -- pacing: a deadline for every read -------------------------------------------------

#: After the first `timeout` seconds of a response (or of one piece of it), the server
#: must keep up at least this average rate.  A socket timeout alone never fires on a
#: server that drips a byte every half second; this does, while a 50 MB message on a
#: 10 KB/s link (80 kbit/s) still arrives.
MIN_RATE = 1024  # bytes per second


class TooSlow(TimeoutError):
    """The server sent too little for too long (see Pace)."""


class Pace:
    """The deadline of one read (a response line, a literal, a POP3 response): it ends
    `timeout` seconds after the read began plus one second for every MIN_RATE bytes
    received since.  Until the first byte arrives the socket's own timeout (the same
    `timeout`, per recv) is what limits the wait, as it always did.  restart() at the
    start of each read; recv_into() in place of sock.recv_into().  Costs a clock read
    per socket read, nothing per byte."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.started = time.monotonic()
        self.received = 0

    def restart(self) -> None:
        self.started = time.monotonic()
        self.received = 0

    def describe(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"the server sent {self.received} bytes in {elapsed:.0f} s, slower than "
            f"{MIN_RATE // 1024} KiB/s; timeout=SECONDS in the URL gives a slow link more time"
        )

    def recv_into(self, sock, buffer) -> int:
        if not self.received:  # silence so far: the socket's own timeout decides
            received = sock.recv_into(buffer)
            self.received += received
            return received
        wait = self.started + self.timeout + self.received / MIN_RATE - time.monotonic()
        if wait <= 0:
            raise TooSlow(self.describe())
        if wait >= self.timeout:  # the socket's own timeout is the shorter: nothing to set
            received = sock.recv_into(buffer)
        else:
            sock.settimeout(wait)
            try:
                received = sock.recv_into(buffer)
            except TimeoutError:
                raise TooSlow(self.describe()) from None
            finally:
                sock.settimeout(self.timeout)  # sends keep the plain timeout
        self.received += received
        return received

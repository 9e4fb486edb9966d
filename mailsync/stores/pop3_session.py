"""One POP3 session (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 SASL PLAIN, APOP):
a socket, a read buffer, commands and responses, bounded against a hostile server.

TLS is implicit on pop3s:// and STLS is required on pop3:// (refused before the
password or token is sent when the server does not offer it); the login is SASL PLAIN,
APOP or USER/PASS (auth=, or the best the server offers), or with an OAuth2 token source
SASL XOAUTH2 or OAUTHBEARER (RFC 7628).  Every status line and multi-line
response is read under a deadline that grows with the bytes that arrive, and has a size
limit; the protocol goes to the mailsync.pop3 logger with -vv, passwords masked.  What
the commands mean for a maildrop (listings, RETR pipelining, DELE and QUIT) is pop3.py's.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import socket
from collections.abc import Callable

from mailsync.errors import AuthError, ConnectError
from mailsync.net import Endpoint, Pace, forget_password, mask_secrets
from mailsync.sasl import SaslConversation, choose_mechanism
from mailsync.tokens import SASL_AUTH, TokenRejected, TokenSource, login_with_token

log = logging.getLogger("mailsync")
protocol_log = logging.getLogger("mailsync.pop3")

MAX_LINE = 64 * 1024  # a status or listing line, or a CAPA response; RFC 1939 allows 512
MAX_MESSAGE = 1 << 30  # refuse to buffer more than this for one response
MAX_LISTING = 1_000_000  # messages in a LIST or UIDL listing
MAX_LISTING_LINE = 80  # "NUMBER UIDL" (RFC 1939: a UIDL is at most 70 characters)
INFLIGHT_MESSAGES = 64  # pipelined RETRs outstanding at once
RECV_BYTES = 256 * 1024
MAX_AUTH_LINE = 255  # an AUTH command with its initial response, CRLF included (RFC 5034)
_TIMESTAMP = re.compile(rb"<[^<>\s]+>")
_LISTING_LINE = re.compile(rb"^([0-9]+)[ \t]+([^ \t\r\n]+)[^\r\n]*\r\n", re.M)


class _ServerError(Exception):
    """-ERR: the server refused a command."""


class _Malformed(Exception):
    """The server sent something that is not POP3."""


class _Dropped(Exception):
    """The connection ended in the middle of a response."""


def _human(size: int) -> str:
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


def _unstuff(data: bytes) -> bytes:
    """Undo dot-stuffing of a multi-line response (CRLF form)."""
    if data.startswith(b".."):
        data = data[1:]
    if b"\r\n.." in data:
        data = data.replace(b"\r\n..", b"\r\n.")
    return data


class _Session:
    """One POP3 session: a socket, a read buffer, commands and responses."""

    def __init__(self, ep: Endpoint, auth: str, where: str, tokens: TokenSource | None = None):
        self.ep = ep
        self.auth = auth
        self.where = where
        self.tokens = tokens  # OAuth2 access tokens (then open() takes no password)
        self.sock: socket.socket | None = None
        self._buf = bytearray()
        self._pos = 0
        # Every status line and every multi-line response is read under a deadline that
        # grows with the bytes that arrive: a server dripping a byte at a time is given up.
        self._pace = Pace(ep.timeout)
        self._chunk = memoryview(bytearray(RECV_BYTES))
        self.capabilities: set[str] = set()
        self.sasl: set[str] = set()
        self.timestamp: bytes | None = None

    # connection ---------------------------------------------------------------------
    def open(self, password: str | None) -> None:
        ep = self.ep
        sock = socket.create_connection((ep.host, ep.port), timeout=ep.timeout)
        self.sock = sock
        if ep.tls == "implicit":
            self.sock = ep.ssl_context().wrap_socket(sock, server_hostname=ep.host)
        greeting = self._status()
        match = _TIMESTAMP.search(greeting)
        self.timestamp = match.group(0) if match else None
        self._capa()
        if ep.tls == "starttls":
            if "STLS" not in self.capabilities:
                secret = "OAuth2 token" if self.tokens is not None else "password"
                raise ConnectError(
                    f"{self.where} does not offer STLS; refusing to send the {secret} in "
                    "clear (use pop3s://, or tls=none if you really mean it)"
                )
            self.command("STLS")
            if self._pos != len(self._buf):
                raise _Malformed("data after the STLS response (a man in the middle?)")
            self.sock = ep.ssl_context().wrap_socket(self.sock, server_hostname=ep.host)
            self._buf.clear()
            self._pos = 0
            self._capa()  # what the server offers may change once the session is private
        if self.tokens is not None:
            login_with_token(self.tokens, self._token_attempt(), self.where)
        else:
            assert password is not None  # (POP3Folder.session: a password without tokens)
            self._login(password)
        if self.capabilities:
            self._capa()  # and again once logged in (RFC 2449)

    def _capa(self) -> None:
        try:
            self.command("CAPA")
        except _ServerError:
            self.capabilities, self.sasl = set(), set()
            return
        capabilities, sasl = set(), set()
        for line in self._block(MAX_LINE).split(b"\r\n"):  # before login too: kept small
            words = line.decode("ascii", "replace").upper().split()
            if words:
                capabilities.add(words[0])
                if words[0] == "SASL":
                    sasl.update(words[1:])
        self.capabilities, self.sasl = capabilities, sasl

    def _token_attempt(self) -> Callable[[str], None]:
        """One SASL exchange with an OAuth2 token, for tokens.login_with_token: ``AUTH
        MECHANISM INITIAL-RESPONSE`` (RFC 5034), or where that line would pass the 255
        octets RFC 5034 section 4 allows (Microsoft's tokens do), AUTH alone and the
        response after the server's empty challenge.  An error challenge is acknowledged
        so that the server ends the exchange with -ERR; -ERR is TokenRejected, except for
        the response codes that say "not now" (ConnectError)."""
        ep = self.ep
        mechanism = choose_mechanism(self.sasl, self.auth if self.auth in SASL_AUTH else "auto")
        if mechanism is None:
            wanted = self.auth.upper() if self.auth in SASL_AUTH else "XOAUTH2 or OAUTHBEARER"
            raise AuthError(
                f"{self.where}: the server does not offer {wanted} (CAPA SASL); it cannot take "
                "an OAuth2 token" + ("" if self.auth == "auto" else '; try auth = "auto"')
            )

        def attempt(token: str) -> None:
            conversation = SaslConversation(mechanism, ep.user, token, ep.host, ep.port)
            command = f"AUTH {mechanism} {conversation.initial_base64}"
            if len(command) + 2 <= MAX_AUTH_LINE:
                self._send(command, secret=True)
                line = self._readline()
            else:
                self._send(f"AUTH {mechanism}")
                line = self._readline()
                if line.startswith(b"+"):
                    self._send(conversation.initial_base64, secret=True)
                    line = self._readline()
            if line.startswith(b"+ ") or line == b"+":  # the error challenge
                answer = conversation.acknowledge(line[2:])
                self._send(base64.b64encode(answer).decode("ascii"), secret=True)
                line = self._readline()
            try:
                self._check(line)
            except _ServerError as error:
                self._refused_for_now(str(error))
                raise TokenRejected(str(error), conversation.error)
            log.debug("%s: logged in with an OAuth2 token (%s)", self.where, mechanism)

        return attempt

    def _refused_for_now(self, text: str) -> None:
        """ConnectError for a refused login whose response code says "not now" rather
        than "wrong credentials" (RFC 2449 IN-USE, RFC 3206 SYS/TEMP, LOGIN-DELAY)."""
        if "[IN-USE]" in text.upper():
            raise ConnectError(
                f"{self.where}: the mailbox is in use by another POP3 session ({text}); "
                "rerun when it has ended"
            )
        if "[SYS/TEMP]" in text.upper() or "[LOGIN-DELAY]" in text.upper():
            raise ConnectError(f"{self.where}: the server refused the login for now ({text})")

    def _login(self, password: str) -> None:
        ep = self.ep
        method = self.auth
        if method in ("auto", "password"):
            if self.timestamp and ep.tls == "none":
                method = "apop"  # the password never crosses the wire in clear
            elif "PLAIN" in self.sasl:
                method = "plain"
            elif self.timestamp:
                method = "apop"
            else:
                method = "user"
        try:
            if method == "plain":
                token = base64.b64encode(f"\0{ep.user}\0{password}".encode()).decode()
                self._send(f"AUTH PLAIN {token}", secret=True)
                line = self._readline()
                if line.startswith(b"+ ") or line == b"+":  # no initial response taken
                    self._send(token, secret=True)
                    line = self._readline()
                self._check(line)
            elif method == "apop":
                if not self.timestamp:
                    raise AuthError(
                        f"{self.where}: auth = apop, but the server's greeting offers no APOP"
                    )
                digest = hashlib.md5(self.timestamp + password.encode()).hexdigest()
                self.command(f"APOP {ep.user} {digest}", secret=True)
            else:
                self.command(f"USER {ep.user}")
                self.command(f"PASS {password}", secret=True)
        except _ServerError as error:
            text = str(error)
            self._refused_for_now(text)
            forget_password(ep)
            raise AuthError(
                f"{self.where}: login failed ({text or 'no reason given'}); check the user "
                "name and password"
            )
        log.debug("%s: logged in (%s)", self.where, method)

    def close(self, quit: bool = True) -> None:
        """End the session; with `quit`, politely (QUIT: pending DELEs take effect)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            if quit:
                self.sock = sock
                try:
                    self.command("QUIT")
                finally:
                    self.sock = None
        finally:
            try:
                sock.close()
            except OSError:
                pass

    # reading ------------------------------------------------------------------------
    def _fill(self) -> None:
        received = self._pace.recv_into(self.sock, self._chunk)
        if not received:
            raise _Dropped("the server closed the connection")
        self._buf += self._chunk[:received]

    def _readline(self) -> bytes:
        if self._pos > RECV_BYTES and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._pace.restart()
        search = self._pos
        while True:
            end = self._buf.find(b"\r\n", search)
            if end >= 0:
                line = bytes(self._buf[self._pos : end])
                self._pos = end + 2
                if protocol_log.isEnabledFor(logging.DEBUG):
                    shown = mask_secrets(line[:200].decode("ascii", "replace"))
                    protocol_log.debug("pop3: < %s", shown)
                return line
            if len(self._buf) - self._pos > MAX_LINE:
                raise _Malformed("a response line of more than 64 KB")
            search = max(self._pos, len(self._buf) - 1)
            self._fill()

    @staticmethod
    def _check(line: bytes) -> bytes:
        """+OK -> its text; -ERR -> _ServerError.  Server text goes into errors with
        every password masked: a server may echo the PASS command it refused."""
        if line.startswith(b"+OK"):
            return line[3:].strip()
        if line.startswith(b"-ERR"):
            raise _ServerError(mask_secrets(line[4:].strip().decode("utf-8", "replace")[:300]))
        raise _Malformed(mask_secrets(f"expected +OK or -ERR, got {line[:60]!r}"))

    def _status(self) -> bytes:
        return self._check(self._readline())

    def _block(self, limit: int = MAX_MESSAGE) -> bytes:
        """The multi-line data after a +OK line: CRLF form, dot-stuffing undone.  The
        status line's CRLF is still in the buffer right before it, so an empty block
        (just ".") is the terminator CRLF.CRLF found two bytes back.  _Malformed beyond
        `limit` bytes."""
        start = self._pos
        search = start - 2
        self._pace.restart()
        while True:
            end = self._buf.find(b"\r\n.\r\n", search)
            if end >= 0:
                break
            if len(self._buf) - start > limit:
                raise _Malformed(f"a response of more than {_human(limit)}")
            search = max(start - 2, len(self._buf) - 4)
            self._fill()
        if end >= start:
            with memoryview(self._buf) as view:
                data = bytes(view[start : end + 2])
        else:
            data = b""
        self._pos = end + 5
        return _unstuff(data)

    # writing ------------------------------------------------------------------------
    def _send(self, *lines: str, secret: bool = False) -> None:
        for line in lines:
            if secret:
                shown = line.split(" ", 1)[0] + " ****" if " " in line else "****"
            else:
                shown = line
            protocol_log.debug("pop3: > %s", shown)
        assert self.sock is not None  # (connected: close() drops it only after QUIT)
        self.sock.sendall("".join(line + "\r\n" for line in lines).encode("utf-8"))

    def command(self, line: str, secret: bool = False) -> bytes:
        self._send(line, secret=secret)
        return self._status()

    def listing(self, command: str) -> list[tuple[bytes, bytes]]:
        """LIST or UIDL: [(message number, second word)], as bytes (one regex pass)."""
        self.command(command)
        block = self._block(MAX_LISTING * MAX_LISTING_LINE)
        if block.count(b"\n") > MAX_LISTING:
            raise _Malformed(f"{command} lists more than {MAX_LISTING} messages")
        out = _LISTING_LINE.findall(block)
        if len(out) != block.count(b"\n"):  # a line that is not "NUMBER WORD ..."
            bad = next(
                line
                for line in block.split(b"\r\n")
                if line and not _LISTING_LINE.fullmatch(line + b"\r\n")
            )
            raise _Malformed(mask_secrets(f"{command} line {bad[:60]!r}"))
        return out

    @property
    def depth(self) -> int:
        """Commands sent ahead of their responses: many with PIPELINING, else one."""
        return INFLIGHT_MESSAGES if "PIPELINING" in self.capabilities else 1

"""One connection to an IMAP server: imapclient on an imaplib connection bounded against
a hostile server, TLS and login, capabilities, call() (reconnect, retry and error scope),
the raw operations imapclient lacks or gets wrong, and protocol logging with secrets
masked.  IMAPStore (imap.py) is such a connection plus the account's folders:

* connect with TLS (implicit on imaps://, STARTTLS required on imap://) verifying the
  certificate and host name; a server without STARTTLS, or greeting PREAUTH before TLS,
  is refused before the password or token is sent; ``tls=none`` only on request.  Every
  socket operation has the endpoint's timeout; a dropped connection is reconnected (and
  the folder selected again) once per operation; a refused login is final (AuthError);
* the login is LOGIN with the password, or with a token source (tokens.py: token_command,
  oauth2 = ...) AUTHENTICATE XOAUTH2 or OAUTHBEARER with an access token, a refused
  token renewed once (imap_oauth.py); every reconnect asks the source for a valid token;
* a hostile server stays bounded from the first byte read (imap_wire.py): every line
  and literal has a deadline that grows with the bytes that arrive (net.Pace), lines,
  literals and the untagged responses to one command have size limits (small ones
  before login), UID sets are checked against what the folder holds before they are
  expanded, and body batches against what RFC822.SIZE announced; server text in errors
  and warnings has every password masked;
* a server that says "not now" is waited out and asked again in call(), the one retry
  path (what the answers mean, and the time waited, are imap_patience.py's): Microsoft
  365's throttling (NO or BAD to any command, an APPEND's instead of its continuation,
  maybe with a BYE) as it suggests, within the connection's throttle_wait (and a
  server known to throttle, by its greeting or a throttled answer, gets no pipelined
  APPENDs: ``throttles``); "User is
  authenticated but not connected." with a few fresh logins; ``* BYE Session
  invalidated - AccessTokenExpired`` with a login with fresh credentials;
* with -vv the protocol goes to the ``mailsync`` logger (imapclient's loggers are routed
  there), LOGIN and AUTHENTICATE arguments and the password or token itself masked.

It is over 700 lines, because the raw operations (_op_*) run inside call(), the one
retry path, on the connection's own imaplib object and error handling; the APPEND ones
(_op_append, _op_append_pipelined) are the first to move out (to imap_append.py, which
holds what their answers mean) when it grows further.
"""

from __future__ import annotations

import imaplib
import logging
import re
import ssl
import threading
from typing import TYPE_CHECKING, Any

from mailsync.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    FolderError,
    MailsyncError,
    MessageError,
    RefusedError,
    StoreError,
)
from mailsync.message import to_lf
from mailsync.net import SECRETS as _SECRETS
from mailsync.net import Endpoint, TooSlow, mask_secrets, parse_endpoint
from mailsync.net import forget_password as _forget_password
from mailsync.net import password_for as _password_for
from mailsync.stores.imap_append import (
    append_arguments,
    append_refusal,
    outcomes,
    wire_of,
    wire_size,
)
from mailsync.stores.imap_oauth import token_login
from mailsync.stores.imap_patience import (
    SESSION_INVALIDATED,
    NotConnected,
    Patience,
    Throttled,
    append_limit,
    check_answer,
    size_refusal,
    throttled_in,
    too_big,
)
from mailsync.stores.imap_wire import (
    MAX_UID,
    _client_class,
    _Malformed,
    _Oversized,
    _parse_uid_set,
)
from mailsync.tokens import SASL_AUTH, TokenSource, store_token_source

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterator

    from imapclient import IMAPClient

    from mailsync.message import Body
    from mailsync.stores.imap_folder import IMAPFolder

log = logging.getLogger("mailsync")
protocol_log = logging.getLogger("mailsync.imap")

#: What ``auth`` may say: "password" (LOGIN), an OAuth2 mechanism, or "auto" (OAuth2 when
#: the store has a token source, else the password).
AUTH_METHODS = ("auto", "password", *SASL_AUTH)
UID_SLACK = 1000  # UIDs a SEARCH may return beyond the folder's EXISTS (a race)
_NETWORK_ERRORS = (OSError, EOFError)
# Exchange's greeting ("* OK The Microsoft Exchange IMAP4 service is ready. [...]"):
# Exchange Online throttles (imap_patience.py), so pipelined APPENDs wait for it.
_THROTTLING_GREETING = re.compile(r"\bMicrosoft Exchange\b", re.I)


# -- helpers ----------------------------------------------------------------------------


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _clean(error: BaseException | bytes | str) -> str:
    """An error, or a server's answer, as one short line for the user, with every known
    password masked: a server may echo the LOGIN it refused."""
    said = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
    text = mask_secrets(said, _SECRETS)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    text = " ".join(text.split())  # one line, whatever the server sent
    if len(text) > 300:
        text = text[:300] + "..."
    return text.strip() or type(error).__name__


# -- protocol logging ---------------------------------------------------------------------

# An outgoing LOGIN/AUTHENTICATE command line ("> b'TAG LOGIN ..."), not LOGIN-REFERRALS.
_REDACT_COMMAND = re.compile(r"^(>.*?\b)(LOGIN|AUTHENTICATE)(?=[\s'\"]|$).*", re.S)


def redact(text: str) -> str:
    """Mask LOGIN/AUTHENTICATE arguments and every known password in a log line."""
    return mask_secrets(_REDACT_COMMAND.sub(r"\1\2 ****", text), _SECRETS)


_LOG_LOCK = threading.Lock()


class _ProtocolBridge(logging.Handler):
    """Routes imapclient's and imaplib's debug records to the mailsync logger (shown
    with -vv), redacted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact(record.getMessage())
        except Exception:
            return
        protocol_log.debug("imap: %s", text)


def _route_protocol_log() -> None:
    """imapclient's loggers go through the bridge only (whatever handler was set on them
    before), so protocol lines are never written unredacted; DEBUG only when mailsync's
    logger shows debug output (-vv)."""
    logger = logging.getLogger("imapclient")
    with _LOG_LOCK:
        if len(logger.handlers) != 1 or not isinstance(logger.handlers[0], _ProtocolBridge):
            logger.handlers[:] = [_ProtocolBridge()]
        logger.propagate = False
        debug = protocol_log.isEnabledFor(logging.DEBUG)
        logger.setLevel(logging.DEBUG if debug else logging.ERROR)


def _shutdown(client: IMAPClient | None) -> None:
    if client is None:
        return
    try:
        client.shutdown()
    except Exception:
        pass


# -- the connection ----------------------------------------------------------------------


class IMAPConnection:
    """A connection to the account at an imap:// or imaps:// URL, made on first use
    (`client`) and again after a drop.  Operations go through call()."""

    def __init__(self, url: str, options: dict | None = None, name: str | None = None):
        self.endpoint: Endpoint = parse_endpoint(url, options)
        self.url = self.endpoint.display
        #: The store's name: its [store.NAME] (``mailsync login NAME``), else its URL.
        self.name = name or self.url
        self.auth = str(self.endpoint.options.pop("auth", "auto")).lower()
        if self.auth not in AUTH_METHODS:
            raise ConfigError(f"store {self.url}: auth must be one of {', '.join(AUTH_METHODS)}")
        #: Where OAuth2 access tokens come from (token_command, oauth2 = ...), or None: a
        #: password login.
        self.tokens: TokenSource | None = store_token_source(
            self.name, self.endpoint, self.auth, "imap"
        )
        self._client: IMAPClient | None = None
        self._password: str | None = None
        self.capabilities: set[str] = set()
        #: The folder the connection has selected (None: none, or dropped since).
        self.selected: IMAPFolder | None = None
        self.reconnects = 0
        # Waiting out throttling (imap_patience.py).
        self.patience = Patience.from_option(self.endpoint.options.pop("throttle_wait", None))
        #: True once the server is known to throttle: it greeted as Microsoft Exchange
        #: (Exchange Online throttles), or answered "Request is throttled" in this run.
        #: Its APPENDs then go one at a time (IMAPFolder.appends_at_once): pipelined
        #: ones would reach it before the backoff it asks for has passed.
        self.throttles = False
        # (password_command: net.get_password's; gmail_labels: the store's, imap.py)
        unknown = set(self.endpoint.options) - {"password_command", "gmail_labels"}
        if unknown:  # a misspelt token_command must not fall back to a password login
            raise ConfigError(f"store {self.url}: unknown option(s) {', '.join(sorted(unknown))}")
        self._status_cache: dict[bytes, dict] = {}  # raw name -> STATUS from LIST-STATUS
        self._warned_invalid: set[str] = set()  # folders whose invalid UIDs were reported

    @property
    def client(self) -> IMAPClient:
        while self._client is None:
            try:
                self._client = self._connect()
            except Throttled as throttled:  # a command right after the login: a new one
                self.throttles = True
                self.patience.wait_out(throttled, self.endpoint.display, "connect", False)
        return self._client

    def _connect(self) -> IMAPClient:
        from imapclient.exceptions import LoginError

        _route_protocol_log()
        ep = self.endpoint
        context = ep.ssl_context() if ep.tls != "none" else None
        client = None
        try:
            client = _client_class()(
                ep.host,
                port=ep.port,
                ssl=ep.tls == "implicit",
                ssl_context=context,
                timeout=ep.timeout,
            )
            client.normalise_times = False
            # Commands and responses (5 adds imaplib's parser chatter); 0 formats nothing.
            client._imap.debug = 4 if protocol_log.isEnabledFor(logging.DEBUG) else 0
            if ep.tls == "starttls":
                if client._imap.state != "NONAUTH":
                    raise ConnectError(
                        f"{ep.display} greeted with PREAUTH before TLS; refusing an "
                        "unencrypted session (use imaps://, or tls=none if you really mean it)"
                    )
                if not client.has_capability("STARTTLS"):
                    raise ConnectError(
                        f"{ep.display} does not offer STARTTLS; refusing to send the "
                        f"{'OAuth2 token' if self.tokens else 'password'} in clear (use "
                        "imaps://, or tls=none if you really mean it)"
                    )
                client.starttls(context)
            if client._imap.state == "NONAUTH" and self.tokens is not None:
                token_login(client, ep, self.auth, self.tokens)
            elif client._imap.state == "NONAUTH":
                if self._password is None:
                    self._password = _password_for(ep)
                try:
                    self._login(client, ep.user, self._password)
                except LoginError as error:
                    _forget_password(ep)
                    raise AuthError(
                        f"{ep.display}: login failed ({_clean(error)}); check the user name "
                        "and password"
                    )
            if _THROTTLING_GREETING.search(_text(client.welcome or b"")):
                self.throttles = True
            self.capabilities = {_text(c).upper() for c in client.capabilities()}
            if "CONDSTORE" in self.capabilities and "ENABLE" in self.capabilities:
                try:
                    client.enable("CONDSTORE")
                except Exception as error:  # the SELECT then shows no HIGHESTMODSEQ
                    log.debug("%s: ENABLE CONDSTORE failed: %s", ep.display, _clean(error))
        except MailsyncError:
            _shutdown(client)
            raise
        except ssl.SSLCertVerificationError as error:
            _shutdown(client)
            raise ConnectError(
                f"{ep.display}: the server's certificate is not trusted "
                f"({error.verify_message or _clean(error)}); for a private CA give cafile=PATH"
            )
        except ssl.SSLError as error:
            _shutdown(client)
            raise ConnectError(f"{ep.display}: TLS failed ({error.reason or _clean(error)})")
        except TooSlow as error:
            _shutdown(client)
            raise ConnectError(f"{ep.display}: {error}")
        except TimeoutError:
            _shutdown(client)
            raise ConnectError(
                f"{ep.display}: no answer within {ep.timeout:g} s; check the host and port "
                "(timeout=SECONDS in the URL changes the limit)"
            )
        except OSError as error:
            _shutdown(client)
            raise ConnectError(
                f"cannot connect to {ep.host}:{ep.port} ({error.strerror or _clean(error)}); "
                "check the host name and port, and that the server is up"
            )
        except Exception as error:
            _shutdown(client)
            throttled = throttled_in(_clean(error))  # (Microsoft 365 throttles any command)
            if throttled is not None:
                raise throttled from None
            raise ConnectError(f"{ep.display}: {_clean(error)}")
        log.debug("connected to %s: %s", ep.display, " ".join(sorted(self.capabilities)))
        return client

    @staticmethod
    def _login(client: IMAPClient, user: str, password: str) -> None:
        """LOGIN with both arguments quoted; AUTHENTICATE PLAIN (UTF-8) when either is not
        ASCII, which LOGIN cannot carry (and imaplib would echo in its error)."""
        from imapclient.exceptions import LoginError

        if user.isascii() and password.isascii():
            quoted = '"' + user.replace("\\", "\\\\").replace('"', '\\"') + '"'
            client.login(quoted, password)
            return
        if b"AUTH=PLAIN" not in {c.upper() for c in client.capabilities()}:
            raise LoginError(
                "the user name or password has non-ASCII characters, which only AUTHENTICATE "
                "PLAIN can carry, and the server does not offer it"
            )
        client.plain_login(user, password)

    def append_limit(self) -> int | bool | None:
        return append_limit(self.capabilities if self.client else set())  # (connects)

    def password_endpoint(self) -> Endpoint | None:
        return None if self.tokens is not None else self.endpoint

    def has(self, capability: str) -> bool:
        self.client  # noqa: B018  (connects)
        return capability in self.capabilities

    def _drop(self) -> None:
        old, self._client = self._client, None
        self.selected = None
        _shutdown(old)

    def reconnect(self) -> None:
        self._drop()
        self.reconnects += 1
        self.client  # noqa: B018

    @property
    def throttled(self) -> tuple[int, float]:
        """(waits, seconds) this connection waited out throttling so far (Store)."""
        return self.patience.waits, self.patience.waited

    def call(
        self,
        operation: str,
        *args: Any,
        retry: bool = True,
        folder: IMAPFolder | None = None,
        **kw: Any,
    ) -> Any:
        """Run one IMAP operation, in `folder` (selected first if the connection has
        another one selected, or none since it was dropped).  A dropped connection is
        reconnected and, with `retry` (operations safe to repeat), the operation run again
        once.  A server that says "not now" is waited out (imap_patience.py: throttling
        within the connection's Patience, then ThrottledFolder or StoreError; "not
        connected" sessions, then ConnectError; a login with fresh credentials after
        the BYE of an expired token).  Other server refusals and unreadable responses
        become FolderError (with a folder) or StoreError; a lost connection, or a server
        too slow to wait for, ConnectError.  _Oversized passes through (dropped)."""
        from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, ProtocolError

        scope = FolderError if folder is not None else StoreError
        where = f"{self.endpoint.display}" + (f" {folder.name}" if folder is not None else "")
        lost = 0  # connections lost during this operation
        fresh_logins = 0  # sessions "not connected"
        probe = False  # after a throttled answer: is the session still there (NOOP)?
        while True:
            try:
                try:
                    if probe:
                        self._invoke("noop")
                        probe = False
                    if folder is not None and self.selected is not folder:
                        folder.select()
                    return self._invoke(operation, *args, **kw)
                except IMAPClientAbortError:
                    raise
                except IMAPClientError as error:
                    check_answer(_clean(error))
                    raise
            except MailsyncError:
                raise
            except _Oversized:
                self._drop()
                raise
            except Throttled as throttled:
                self.throttles = True
                try:
                    self.patience.wait_out(throttled, where, operation, folder is not None)
                except MailsyncError:
                    self._drop()  # (whatever the server says next: start afresh)
                    raise
                probe = True  # (a BYE may have followed the answer)
            except NotConnected:
                fresh_logins += 1
                self._drop()
                self.patience.before_login(where, operation, fresh_logins)
                self.reconnect()
            except (IMAPClientAbortError, *_NETWORK_ERRORS) as error:
                imap = self._client._imap if self._client else None
                byes = imap.untagged_responses.get("BYE") if imap else None
                text, bye = _clean(error), _text(byes[-1]) if byes else ""
                text += f" ({bye})" if bye and bye not in text else ""
                if probe:  # the session ended after a throttled answer: nothing is lost
                    log.info("%s: the server closed the session (%s); reconnecting", where, text)
                    probe = False
                    self.reconnect()
                    continue
                lost += 1
                lost_what = "gave up" if isinstance(error, TooSlow) else "connection lost"
                if SESSION_INVALIDATED.search(text):  # its credentials expired: ask afresh
                    lost_what = "the server ended the session"
                    self._password = None
                    _forget_password(self.endpoint)
                if not retry or lost > 1:
                    self._drop()
                    raise ConnectError(f"{where}: {lost_what} during {operation} ({text})")
                log.warning(
                    "%s: %s during %s (%s); reconnecting", where, lost_what, operation, text
                )
                self.reconnect()
            except (ProtocolError, _Malformed, ValueError, IndexError, RecursionError) as error:
                self._drop()  # what else is in the stream is anybody's guess
                raise scope(
                    f"{where}: the server sent a response mailsync cannot read "
                    f"({operation}: {_clean(error)})"
                )
            except IMAPClientError as error:
                raise scope(f"{where}: the server refused {operation}: {_clean(error)}")

    def _invoke(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self, "_op_" + operation, None)
        if method is not None:
            return method(*args, **kwargs)
        return getattr(self.client, operation)(*args, **kwargs)

    # raw operations imapclient lacks or gets wrong -------------------------------------
    def _op_fetch(
        self,
        uid_set: str,
        items: list[str],
        modifiers: list[str] | None = None,
        *,
        message_level: bool = False,
        literal_budget: int | None = None,
        bodies: bool = False,
    ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH of a UID set string ("1:*", "4:9,12") -> {uid: {item: value}}.  Every
        response is kept by its UID; responses without one (unsolicited FETCHes about
        other messages, keyed by sequence number) are ignored, never mistaken for UIDs;
        responses with an invalid one (0, -1) are left out with a warning.
        With `message_level` (one message's body piece) a NO is that message's
        MessageError (e.g. expunged by another client meanwhile), not the folder's.
        `literal_budget`: the bytes all literals of the response may hold together
        (_Oversized before reading one that would go beyond).
        With `bodies` (a batch of whole bodies: `items` must be ["UID", "BODY.PEEK[]"],
        and a literal_budget given) the bodies are read off the wire by the connection's
        own reader (_GuardedIMAP4.uid_fetch_bodies) and every b"BODY[]" comes back LF;
        otherwise responses of a listing's shape by its listing reader (uid_fetch_listing)."""
        from imapclient.response_parser import parse_fetch_response

        imap = self.client._imap
        wire_bodies: dict[int, bytes | bytearray] = {}
        parsed: dict[int, dict[bytes, Any]] | None = None
        if bodies:
            if items != ["UID", "BODY.PEEK[]"] or modifiers or literal_budget is None:
                raise TypeError(f"UID FETCH {items} {modifiers} is not a batch of bodies")
            typ, data, wire_bodies = imap.uid_fetch_bodies(uid_set, literal_budget)
        else:
            args = [uid_set, "(" + " ".join(items) + ")"]
            if modifiers:
                args.append("(" + " ".join(modifiers) + ")")
            typ, data, parsed = imap.uid_fetch_listing(*args, literal_budget=literal_budget)
        if typ != "OK":
            text = _clean(data[-1] if data else typ)
            check_answer(text)  # (throttled: not this message's fault)
            if message_level:
                raise MessageError(f"the server refused to send it ({text})")
            raise imaplib.IMAP4.error(f"UID FETCH failed: {text}")
        if parsed is None:  # (not all of the listing shape: imapclient reads them all)
            try:
                parsed = parse_fetch_response(data, False, False)
            except (ValueError, TypeError, IndexError, AttributeError, RecursionError) as error:
                raise _Malformed(error)
        del data  # the literals live on in `parsed` only (no second reference to big ones)
        out: dict[int, dict[bytes, Any]] = {}
        invalid = []
        for record in parsed.values():
            uid = record.get(b"UID")
            if isinstance(uid, int) and 0 < uid <= MAX_UID:
                out.setdefault(uid, {}).update(record)
            elif uid is not None:
                invalid.append(_text(uid))
        if invalid:
            self._invalid_uids(invalid, "FETCH responses")
        if bodies:
            for record in out.values():  # (the few of another shape: imaplib's, CRLF)
                body = record.get(b"BODY[]")
                if isinstance(body, bytes):
                    record[b"BODY[]"] = to_lf(body)
            for uid, body in wire_bodies.items():  # the body wins over a NIL beside it
                out.setdefault(uid, {})[b"BODY[]"] = body
        return out

    def _invalid_uids(self, invalid: list[str], what: str) -> None:
        """Warns, once per folder, that the server sent UIDs that cannot be (0, -1)."""
        folder = self.selected.name if self.selected else ""
        if folder in self._warned_invalid:
            return
        self._warned_invalid.add(folder)
        where = f"{self.endpoint.display} {folder}"
        log.warning(
            "%s: the server sent %d %s with invalid UIDs (%s); ignoring them",
            where.rstrip(),
            len(invalid),
            what,
            _clean(ValueError(", ".join(invalid[:5]) + (", ..." if len(invalid) > 5 else ""))),
        )

    def _op_uids(self, criteria: str = "ALL") -> list[int]:
        """UID SEARCH, compact with ESEARCH when offered.  The answer is bounded by
        what the selected folder can hold (its EXISTS, plus UID_SLACK): a larger one is
        _Malformed before it is expanded into a list.  Invalid UIDs (0, -1) are left
        out with a warning."""
        imap = self.client._imap
        if "ESEARCH" in self.capabilities:
            tag = imap._command("UID", "SEARCH", "RETURN", "(ALL)", criteria)
            typ, data = imap._command_complete("UID", tag)
            responses = imap.untagged_responses.pop("ESEARCH", [])
            if typ != "OK":
                raise imaplib.IMAP4.error(f"UID SEARCH failed: {_clean(data[-1])}")
            most = imap.folder_messages + UID_SLACK
            for response in responses:
                line = _text(response)
                mine = re.search(r'\(TAG "?([^")]+)"?\)', line)
                if mine and mine.group(1) != _text(tag):
                    continue
                found = re.search(r"\bALL\s+(\S+)", line)
                uids, invalid = _parse_uid_set(found.group(1), most) if found else ([], [])
                if invalid:
                    self._invalid_uids(invalid, "UID SEARCH results")
                return uids
            return []
        typ, data = imap.uid("SEARCH", criteria)
        if typ != "OK":
            raise imaplib.IMAP4.error(f"UID SEARCH failed: {_clean(data[-1] if data else typ)}")
        lines = [line for line in data if line]
        most = imap.folder_messages + UID_SLACK
        if sum(len(line.split(None, most + 1)) for line in lines) > most:
            raise _Malformed(f"the server sent over {most} UIDs for a folder that holds fewer")
        uids, invalid = [], []
        for line in lines:
            for word in _text(line).split():
                try:
                    uid = int(word)
                except ValueError as error:
                    raise _Malformed(error)
                if 0 < uid <= MAX_UID:
                    uids.append(uid)
                else:
                    invalid.append(word)
        if invalid:
            self._invalid_uids(invalid, "UID SEARCH results")
        return uids

    def _op_append(
        self,
        server_name: str,
        wire: Body,
        flags: list[str],
        when: dt.datetime | None,
        limit: int | None = None,
    ) -> str:
        """APPEND with the bytes as they are (imaplib's own append rewrites lone CRs).
        A message over `limit` (APPENDLIMIT, RFC 7889) is not sent: RefusedError, as
        is one the server refuses for good (a NO without a "try later" code, Exchange's
        BAD for one over its size limit)."""
        too_big(len(wire), limit)
        client = self.client
        imap = client._imap
        mailbox = client._normalise_folder(server_name)
        imap.literal = wire
        try:
            typ, data = imap._simple_command("APPEND", mailbox, *append_arguments(flags, when))
        except imaplib.IMAP4.error as error:  # a BAD (throttled: call() sees to it)
            reason = size_refusal("BAD", _clean(error), len(wire))
            if reason is None or isinstance(error, imaplib.IMAP4.abort):
                raise
            raise RefusedError(f"APPEND refused: {reason}", reason)
        if typ != "OK":
            text = _clean(data[-1] if data else typ)
            check_answer(text)
            refusal = append_refusal(typ, text, len(wire))
            if refusal is not None:
                raise refusal
            raise imaplib.IMAP4.error(f"APPEND failed: {text}")
        return _text(data[-1] if data else "")

    def _op_append_pipelined(
        self, server_name: str, messages: list[tuple[Body, list[str], dt.datetime | None]]
    ) -> list[tuple[str | RefusedError | ConnectError | None, int]]:
        """APPENDs of several messages (LF bodies) at once (_GuardedIMAP4.append_pipelined:
        the server must offer LITERAL+): each one's outcome (imap_append.outcomes says
        which) and size on the wire.  Each body is made CRLF only as it is sent, so a
        batch is not held twice."""
        client = self.client
        answers: list[tuple[str, bytes]] = []
        sizes: list[int] = []

        def on_the_wire() -> Iterator[tuple[str, str | None, Body]]:
            for data, flags, when in messages:
                wire = wire_of(data)
                sizes.append(len(wire))
                yield (*append_arguments(flags, when), wire)

        lost = None
        try:
            client._imap.append_pipelined(
                client._normalise_folder(server_name), on_the_wire(), answers
            )
        except (imaplib.IMAP4.abort, *_NETWORK_ERRORS) as error:
            self._drop()
            lost = ConnectError(
                f"{self.endpoint.display}: connection lost during APPEND ({_clean(error)})"
            )
        # (An OK's text is read for its APPENDUID only, never shown: no masking needed.)
        said = [(typ, _text(data) if typ == "OK" else _clean(data or typ)) for typ, data in answers]
        if any(throttled_in(text) for typ, text in said if typ != "OK"):
            self.throttles = True  # (the rest go one at a time: IMAPFolder.appends_at_once)
        sizes += [wire_size(data) for data, _, _ in messages[len(sizes) :]]  # (unsent)
        return list(zip(outcomes(said, sizes, lost), sizes, strict=True))

    def _op_list(self) -> list[tuple[Any, Any, Any]]:
        """LIST "" "*" with the names as the server sent them (bytes).  With LIST-STATUS
        (RFC 5819) the same command returns every folder's STATUS, kept for unchanged()
        so a rerun of a many-folder account needs no STATUS per folder."""
        client = self.client
        if "LIST-STATUS" in self.capabilities:
            return self._list_status()
        client.folder_encode = False
        try:
            return client.list_folders()
        finally:
            client.folder_encode = True

    def _list_status(self) -> list[tuple[Any, Any, Any]]:
        from imapclient.response_parser import parse_response

        imap = self.client._imap
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if "CONDSTORE" in self.capabilities:
            items.append("HIGHESTMODSEQ")
        imap.untagged_responses.pop("STATUS", None)
        # Extended LIST returns special-use attributes only when asked (RFC 6154).
        special = "SPECIAL-USE " if "SPECIAL-USE" in self.capabilities else ""
        typ, data = imap._simple_command(
            "LIST", '""', '"*"', "RETURN", f"({special}STATUS ({' '.join(items)}))"
        )
        if typ != "OK":
            raise imaplib.IMAP4.error(f"LIST failed: {_clean(data[-1] if data else typ)}")
        typ, data = imap._untagged_response(typ, data, "LIST")
        statuses = imap.untagged_responses.pop("STATUS", [])
        self._status_cache = {}
        for line in statuses:
            parsed = parse_response([line] if not isinstance(line, tuple) else list(line))
            if len(parsed) != 2 or not isinstance(parsed[1], tuple | list):
                continue
            raw, values = parsed
            if isinstance(raw, int):
                raw = str(raw).encode()
            if isinstance(raw, str):
                raw = raw.encode("utf-8")
            pairs = list(values)
            status = {_text(pairs[i]).upper(): pairs[i + 1] for i in range(0, len(pairs) - 1, 2)}
            self._status_cache[bytes(raw)] = status
        client = self.client
        client.folder_encode = False
        try:
            return client._proc_folder_list([d for d in data if d is not None])
        finally:
            client.folder_encode = True

    def _op_mailbox_ids(self) -> dict[str, object]:
        """LIST-STATUS asking for MAILBOXID only -> {server name: its MAILBOXID value}."""
        from imapclient.imap_utf7 import decode
        from imapclient.response_parser import parse_response

        imap = self.client._imap
        imap.untagged_responses.pop("STATUS", None)
        typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", "(STATUS (MAILBOXID))")
        imap.untagged_responses.pop("LIST", None)
        statuses = imap.untagged_responses.pop("STATUS", [])
        if typ != "OK":
            raise imaplib.IMAP4.error(f"LIST failed: {_clean(data[-1] if data else typ)}")
        out: dict[str, object] = {}
        for line in statuses:
            parsed = parse_response([line] if not isinstance(line, tuple) else list(line))
            if len(parsed) != 2 or not isinstance(parsed[1], tuple | list):
                continue
            raw, values = parsed
            if isinstance(raw, int):
                raw = str(raw)
            if isinstance(raw, bytes):
                raw = decode(raw)
            items = list(values)
            for i in range(0, len(items) - 1, 2):
                if _text(items[i]).upper() == "MAILBOXID":
                    out[raw] = items[i + 1]
        return out

    def close(self) -> None:
        if self._client is not None:
            try:
                if self.selected is not None:
                    self.selected.flush()
            finally:
                try:
                    self._client.logout()
                except Exception:
                    pass
                self._drop()

"""IMAP store (imapclient): folders, incremental listings, batched fetch and writes.

Keys are UIDs (as strings) under the folder's UIDVALIDITY.  What it does on the wire:

* connect with TLS (implicit on imaps://, STARTTLS required on imap://) verifying the
  certificate and host name; a server without STARTTLS, or greeting PREAUTH before TLS,
  is refused before the password is sent; ``tls=none`` only on request.  Every socket
  operation has the endpoint's timeout; a dropped connection is reconnected (and the
  folder selected again) once per operation; a refused login is final (AuthError);
* a hostile server stays bounded from the first byte read (_GuardedIMAP4): every line
  and literal has a deadline that grows with the bytes that arrive (net.Pace), lines,
  literals and the untagged responses to one command have size limits (small ones
  before login), UID sets are checked against what the folder holds before they are
  expanded, and body batches against what RFC822.SIZE announced; server text in errors
  and warnings has every password masked;
* folder names are decoded from modified UTF-7 and mapped to "/"-separated names; names
  that could escape a local tree ("..", ".", empty parts, control characters), or
  nested deeper than MAX_FOLDER_DEPTH, are skipped with a warning; SPECIAL-USE
  attributes are recorded in the cursor;
* listings fetch FLAGS, RFC822.SIZE and INTERNALDATE; with CONDSTORE a rerun asks only
  for what changed since the last HIGHESTMODSEQ (plus the UID list, to see expunges), and
  a folder whose STATUS is unchanged is not even selected;
* bodies with ``UID FETCH ... BODY.PEEK[]`` (never marks mail read) in batches bounded
  by bytes; every FETCH response is kept by its UID (never by sequence number).  A body
  above FETCH_LARGE_BYTES comes in pieces (``BODY.PEEK[]<offset.length>``), each turned
  CRLF -> LF into one bytearray as it arrives, so a 50 MB message costs about 50 MB (not
  the literal plus its LF copy); such a body is handed on as that bytearray;
* APPEND with flags and INTERNALDATE and the message bytes exactly as given (CRLF line
  ends, lone CRs untouched); APPENDUID when offered, otherwise the new UID is found among
  the UIDs above the old highest one, by content if need be (no header is injected);
* flag changes with UID STORE in batches; deletions with \\Deleted plus UID EXPUNGE of
  exactly those UIDs (without UIDPLUS, EXPUNGE only if no other message is \\Deleted,
  otherwise the folder fails untouched);
* with -vv the protocol goes to the ``mailsync`` logger (imapclient's loggers are routed
  there), LOGIN arguments and the password itself masked.
"""

from __future__ import annotations

import datetime as dt
import functools
import imaplib
import io
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping

from mailsync.errors import (
    AuthError,
    ConnectError,
    FolderError,
    MailsyncError,
    MessageError,
    RefusedError,
    StoreError,
)
from mailsync.message import (
    Info,
    fingerprint,
    header_digest,
    normalise_flags,
    to_crlf,
    to_lf,
    tolerant_fingerprint,
)
from mailsync.net import SECRETS as _SECRETS
from mailsync.net import Endpoint, Pace, TooSlow, mask_secrets, parse_endpoint
from mailsync.net import forget_password as _forget_password
from mailsync.net import password_for as _password_for
from mailsync.stores.base import MAX_FOLDER_DEPTH, Folder, Store

log = logging.getLogger("mailsync")
protocol_log = logging.getLogger("mailsync.imap")

FETCH_BATCH_BYTES = 3 * 1024 * 1024  # bodies per UID FETCH, by RFC822.SIZE (x --jobs in RAM)
FETCH_BATCH_MAX = 500  # messages per UID FETCH
FETCH_LARGE_BYTES = 4 * 1024 * 1024  # bodies above this (RFC822.SIZE) are fetched in pieces
FETCH_PIECE_BYTES = 4 * 1024 * 1024  # one BODY.PEEK[]<offset.length> of such a body
PRESIZE_FACTOR = 16  # RFC822.SIZE sizes a big body's buffer up to this x its first piece
META_BATCH = 2000  # UIDs per metadata FETCH given as a UID list
STORE_BATCH = 1000  # UIDs per UID STORE / UID EXPUNGE
# What one connection accepts from the server (a hostile one included), from the first
# byte it reads: see _GuardedIMAP4.
MAX_LITERAL = 1 << 30  # one literal, and all literals of one response together
MAX_LINE = 32 * 1024 * 1024  # one line (imaplib's 1 MB is too small for big SEARCH results)
PREAUTH_LIMIT = 64 * 1024  # a line, a literal, a response, before login
RESPONSE_BYTES = 16 * 1024 * 1024  # untagged responses to one command (lines, plus
RESPONSE_PER_MESSAGE = 1024  # this for each message the selected folder holds, up to
MAX_RESPONSE = 1 << 30  # this)
RESPONSE_ENTRY = 64  # what imaplib keeps per untagged response besides its bytes
UID_SLACK = 1000  # UIDs a SEARCH may return beyond the folder's EXISTS (a race)
MAX_UID = 2**32 - 1  # UIDs are 32-bit non-zero numbers (RFC 3501)
# Response codes of a tagged NO to APPEND that say "not now" or "not here" rather than
# "never this message" (RFC 3501 TRYCREATE, RFC 5530, RFC 9051): the message is tried again
# on the next run.  Any other NO (none, TOOBIG, LIMIT, PARSE, CANNOT, ...) refuses it for
# good: RefusedError.
APPEND_TRY_LATER = frozenset(
    {
        "TRYCREATE",
        "UNAVAILABLE",
        "SERVERBUG",
        "OVERQUOTA",
        "INUSE",
        "CONTACTADMIN",
        "NOPERM",
        "AUTHORIZATIONFAILED",
        "EXPIRED",
        "PRIVACYREQUIRED",
        "CORRUPTION",
        "EXPUNGEISSUED",
        "NONEXISTENT",
        "ALREADYEXISTS",
        "READ-ONLY",
        "ALERT",
    }
)
SPECIAL_USE = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
SYSTEM_FLAGS = frozenset({"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"})
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")
_OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # RFC 8474 objectid
_ATOM_SPECIALS = re.compile(r'[\x00-\x20\x7f(){%*"\\\]]')
_NETWORK_ERRORS = (OSError, EOFError)
_TIMING = re.compile(r"\s*\([0-9.]+( \+ [0-9.]+)* secs\)\.?$")


class _Malformed(Exception):
    """The server sent something mailsync cannot parse."""


class _Oversized(Exception):
    """A literal larger than the command that asked for it allows (see
    _GuardedIMAP4.literal_budget).  Raised before any of it is read: the connection is
    dropped, and the caller asks again in bounded pieces."""


# -- helpers ----------------------------------------------------------------------------


def _uid_ranges(uids: Iterable[int]) -> str:
    """[1,2,3,7] -> '1:3,7' (short commands for long lists)."""
    out, run = [], None
    for uid in sorted(set(uids)):
        if run and uid == run[1] + 1:
            run[1] = uid
        else:
            if run:
                out.append(f"{run[0]}:{run[1]}" if run[1] > run[0] else str(run[0]))
            run = [uid, uid]
    if run:
        out.append(f"{run[0]}:{run[1]}" if run[1] > run[0] else str(run[0]))
    return ",".join(out)


_UID_RANGE = re.compile(r"(-?\d+)(?::(-?\d+))?")


def _parse_uid_set(text: str, most: int) -> tuple[list[int], list[str]]:
    """'1:3,7' -> ([1, 2, 3, 7], []) (ESEARCH ALL results); the second list holds the
    parts that are not valid UIDs (0, -1, beyond 32 bits), left out.  The ranges are
    counted before any is expanded: _Malformed if they hold more than `most` UIDs."""
    ranges: list[tuple[int, int]] = []
    invalid: list[str] = []
    count = 0
    for part in filter(None, text.split(",")):
        match = _UID_RANGE.fullmatch(part)
        if not match:
            raise _Malformed(f"{part[:40]!r} in a UID set")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        low, high = min(low, high), max(low, high)
        if low < 1 or high > MAX_UID:
            invalid.append(part)
            continue
        count += high - low + 1
        if count > most:
            raise _Malformed(
                f"the server sent a UID set of over {most} UIDs for a folder that holds fewer"
            )
        ranges.append((low, high))
    return [uid for low, high in ranges for uid in range(low, high + 1)], invalid


def _timestamp(value) -> float:
    """INTERNALDATE -> seconds.  imapclient is told not to normalise times, so the value
    is aware; a missing or unreadable date counts as now (never 1970)."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return time.time()


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _clean(error: BaseException) -> str:
    """An error (whose text may come from the server) as one short line for the user,
    with every known password masked: a server may echo the LOGIN it refused."""
    text = mask_secrets(str(error), _SECRETS)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    text = " ".join(text.split())  # one line, whatever the server sent
    if len(text) > 300:
        text = text[:300] + "..."
    return text.strip() or type(error).__name__


def valid_keyword(flag: str) -> bool:
    """Whether `flag` can be sent as an IMAP keyword (an atom, ASCII, no specials)."""
    return (
        bool(flag)
        and flag.isascii()
        and not flag.startswith("\\")
        and not _ATOM_SPECIALS.search(flag)
    )


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


# -- a connection bounded against a hostile server ------------------------------------------


class _PacedReader(io.RawIOBase):
    """The socket as imaplib reads it, every recv under the connection's Pace (a deadline
    that grows with the bytes that arrive): a server dripping a byte at a time, each
    within the socket timeout, is given up instead of waited for forever."""

    def __init__(self, sock, pace: Pace, replaced):
        self._sock, self._pace, self._replaced = sock, pace, replaced

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._pace.recv_into(self._sock, buffer)

    def close(self) -> None:
        if not self.closed:
            self._replaced.close()  # the makefile() this replaces holds the socket open
        super().close()


class _GuardedIMAP4(imaplib.IMAP4):
    """imaplib's connection, bounded from the first byte it reads (the greeting comes
    before STARTTLS, so from anyone on the path):

    * every line and literal is read under a Pace (net.MIN_RATE after the first
      `timeout` seconds);
    * before login a line, a literal and all untagged responses to one command are at
      most PREAUTH_LIMIT bytes; after it a line is at most MAX_LINE, a literal and the
      literals of one response together at most MAX_LITERAL, or `literal_budget` when
      the command sets one (bodies fetched in a batch: _Oversized);
    * the untagged responses to one command cost at most RESPONSE_BYTES plus
      RESPONSE_PER_MESSAGE for each message of the selected folder (EXISTS), never more
      than MAX_RESPONSE; of those older commands left unclaimed only the newest of each
      kind is kept.

    Breaking a limit raises _Malformed (the caller drops the connection)."""

    def __init__(self, host: str, port: int, timeout: float, ssl_context=None):
        self._implicit_tls = ssl_context  # None: plain text (STARTTLS may follow)
        self._pace = Pace(timeout)
        self.folder_messages = 0  # the selected folder's EXISTS, the highest seen
        self.literal_budget: int | None = None  # for the next command only
        self._literals_left = PREAUTH_LIMIT
        self._budgeted = False  # the command set a literal_budget
        self._response_cost = 0
        super().__init__(host, port, timeout)

    # the socket -----------------------------------------------------------------------
    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout)
        # imaplib sends an APPEND's literal and the line end after it as two writes: with
        # Nagle's algorithm the second waits for the server's delayed ACK of the first,
        # 40 ms an APPEND on Cyrus and Courier (ten times what the APPEND takes).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._implicit_tls is None:
            return sock
        try:
            return self._implicit_tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def _pace_reads(self) -> None:
        self.file = io.BufferedReader(_PacedReader(self.sock, self._pace, self.file))

    def open(self, host="", port=imaplib.IMAP4_PORT, timeout=None) -> None:
        super().open(host, port, timeout)
        self._pace_reads()

    def starttls(self, ssl_context=None):
        typ, data = super().starttls(ssl_context)
        if typ == "OK":
            self._pace_reads()  # the new TLS socket
        return typ, data

    @property
    def authenticated(self) -> bool:
        return self.state in ("AUTH", "SELECTED")

    # reading ----------------------------------------------------------------------------
    def readline(self) -> bytes:
        limit = MAX_LINE if self.authenticated else PREAUTH_LIMIT
        self._pace.restart()
        line = self.file.readline(limit + 1)
        if len(line) > limit:
            raise _Malformed(f"the server sent a line of more than {limit} bytes")
        return line

    def read(self, size: int) -> bytes:
        """A literal of `size` bytes, refused before anything is allocated for it."""
        if not self.authenticated and size > self._literals_left:
            raise _Malformed(
                f"the server announced a literal of {size} bytes before login; refusing"
            )
        if size > MAX_LITERAL:
            raise _Malformed(f"the server announced a literal of {size} bytes; refusing")
        if size > self._literals_left:
            if self._budgeted:
                raise _Oversized(size)
            raise _Malformed(f"the server sent over {MAX_LITERAL} bytes of literals at once")
        self._literals_left -= size
        self._pace.restart()
        return self.file.read(size)

    # responses --------------------------------------------------------------------------
    def _command(self, name, *args):
        # Unclaimed responses to earlier commands: the newest of each kind is all that
        # anything reads (imaplib itself only asks whether there was a BYE).
        for entries in self.untagged_responses.values():
            del entries[:-1]
        self._response_cost = 0
        budget, self.literal_budget = self.literal_budget, None
        self._budgeted = budget is not None and self.authenticated
        if not self.authenticated:
            self._literals_left = PREAUTH_LIMIT
        else:
            self._literals_left = MAX_LITERAL if budget is None else min(budget, MAX_LITERAL)
        if name in ("SELECT", "EXAMINE"):
            self.folder_messages = 0
        return super()._command(name, *args)

    def _append_untagged(self, typ, dat) -> None:
        line = dat[0] if isinstance(dat, tuple) else dat or b""
        self._response_cost += len(line) + RESPONSE_ENTRY
        if typ == "EXISTS" and line.isdigit():
            self.folder_messages = max(self.folder_messages, min(int(line), MAX_UID))
        if self.authenticated:
            limit = min(MAX_RESPONSE, RESPONSE_BYTES + RESPONSE_PER_MESSAGE * self.folder_messages)
        else:
            limit = PREAUTH_LIMIT
        if self._response_cost > limit:
            raise _Malformed(
                f"the server sent more than {limit} bytes of untagged responses "
                f"({len(self.untagged_responses.get(typ, ()))}+ {typ}) to one command"
            )
        super()._append_untagged(typ, dat)


@functools.cache
def _client_class():
    """IMAPClient on a _GuardedIMAP4 (made on first use: imapclient is imported late)."""
    from imapclient import IMAPClient

    class GuardedClient(IMAPClient):
        def _create_IMAP4(self):
            context = (self.ssl_context or ssl.create_default_context()) if self.ssl else None
            return _GuardedIMAP4(self.host, self.port, self._timeout.read, context)

    return GuardedClient


# -- store --------------------------------------------------------------------------------


class IMAPStore(Store):
    def __init__(self, url: str, options: dict | None = None, read_only: bool = False):
        self.endpoint: Endpoint = parse_endpoint(url, options)
        self.url = self.endpoint.display
        self.read_only = read_only
        self._client = None
        self._password: str | None = None
        self._delimiter = "/"
        self._names: dict[str, str] = {}  # our name -> server name (decoded)
        # The personal namespace (RFC 2342): its prefix is not part of our names.  None
        # until asked; "" where the server has no NAMESPACE or no prefix.
        self._prefix: str | None = None
        self._prefix_delimiter: str | None = None
        self._other_prefixes: tuple[str, ...] = ()  # other users' and shared namespaces
        self._former: dict[str, str] = {}  # our name -> what mailsync called it before
        self._outside: dict[str, str] = {}  # former names of folders in other namespaces
        self._listed = False
        self.special_use: dict[str, str] = {}
        self.capabilities: set[str] = set()
        self.selected: IMAPFolder | None = None
        self.reconnects = 0
        self._status_cache: dict[bytes, dict] = {}  # raw name -> STATUS from LIST-STATUS
        self._warned_invalid: set[str] = set()  # folders whose invalid UIDs were reported

    # connection -----------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self):
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
                        f"{ep.display} does not offer STARTTLS; refusing to send the password "
                        "in clear (use imaps://, or tls=none if you really mean it)"
                    )
                client.starttls(context)
            if client._imap.state == "NONAUTH":
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
            raise ConnectError(f"{ep.display}: {_clean(error)}")
        log.debug("connected to %s: %s", ep.display, " ".join(sorted(self.capabilities)))
        return client

    @staticmethod
    def _login(client, user: str, password: str) -> None:
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

    def call(self, operation, *args, retry: bool = True, folder: IMAPFolder | None = None, **kw):
        """Run one IMAP operation, in `folder` (selected first if the connection has
        another one selected, or none since it was dropped).  A dropped connection is
        reconnected and, with `retry` (operations safe to repeat), the operation run again
        once.  Server refusals and unreadable responses become FolderError (with a
        folder) or StoreError; a lost connection, or a server too slow to wait for,
        ConnectError.  _Oversized passes through (the connection dropped)."""
        from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, ProtocolError

        scope = FolderError if folder is not None else StoreError
        where = f"{self.endpoint.display}" + (f" {folder.name}" if folder is not None else "")
        for attempt in (1, 2):
            try:
                if folder is not None and self.selected is not folder:
                    folder.select()
                return self._invoke(operation, *args, **kw)
            except MailsyncError:
                raise
            except _Oversized:
                self._drop()
                raise
            except (IMAPClientAbortError, *_NETWORK_ERRORS) as error:
                lost = "gave up" if isinstance(error, TooSlow) else "connection lost"
                if not retry or attempt == 2:
                    self._drop()
                    raise ConnectError(f"{where}: {lost} during {operation} ({_clean(error)})")
                log.warning(
                    "%s: %s during %s (%s); reconnecting", where, lost, operation, _clean(error)
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
        raise AssertionError("unreachable")

    def _invoke(self, operation, *args, **kwargs):
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
    ):
        """UID FETCH of a UID set string ("1:*", "4:9,12") -> {uid: {item: value}}.  Every
        response is kept by its UID; responses without one (unsolicited FETCHes about
        other messages, keyed by sequence number) are ignored, never mistaken for UIDs;
        responses with an invalid one (0, -1) are left out with a warning.
        With `message_level` (one message's body piece) a NO is that message's
        MessageError (e.g. expunged by another client meanwhile), not the folder's.
        `literal_budget`: the bytes all literals of the response may hold together
        (_Oversized before reading one that would go beyond)."""
        from imapclient.response_parser import parse_fetch_response

        imap = self.client._imap
        args = [uid_set, "(" + " ".join(items) + ")"]
        if modifiers:
            args.append("(" + " ".join(modifiers) + ")")
        imap.literal_budget = literal_budget
        typ, data = imap.uid("FETCH", *args)
        if typ != "OK":
            text = _clean(data[-1] if data else typ)
            if message_level:
                raise MessageError(f"the server refused to send it ({text})")
            raise imaplib.IMAP4.error(f"UID FETCH failed: {text}")
        try:
            parsed = parse_fetch_response(data, False, False)
        except (ValueError, TypeError, IndexError, AttributeError, RecursionError) as error:
            raise _Malformed(error)
        del data  # the literals live on in `parsed` only (no second reference to big ones)
        out: dict[int, dict] = {}
        invalid = []
        for record in parsed.values():
            uid = record.get(b"UID")
            if isinstance(uid, int) and 0 < uid <= MAX_UID:
                out.setdefault(uid, {}).update(record)
            elif uid is not None:
                invalid.append(_text(uid))
        if invalid:
            self._invalid_uids(invalid, "FETCH responses")
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
        uids: list[int] = []
        invalid: list[str] = []
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

    def _op_append(self, server_name: str, wire: bytes, flags: list[str], when):
        """APPEND with the bytes as they are (imaplib's own append rewrites lone CRs)."""
        from imapclient.datetime_util import datetime_to_INTERNALDATE

        client = self.client
        imap = client._imap
        mailbox = client._normalise_folder(server_name)
        date = f'"{datetime_to_INTERNALDATE(when)}"' if when is not None else None
        imap.literal = wire
        typ, data = imap._simple_command("APPEND", mailbox, "(" + " ".join(flags) + ")", date)
        if typ != "OK":
            text = _clean(data[-1] if data else typ)
            code = re.match(r"\[([A-Za-z0-9.-]+)", text)
            if typ == "NO" and (code is None or code.group(1).upper() not in APPEND_TRY_LATER):
                reason = _TIMING.sub("", text)  # Dovecot's "(0.001 + 0.000 secs)."
                raise RefusedError(f"APPEND refused: {reason}", reason)
            raise imaplib.IMAP4.error(f"APPEND failed: {text}")
        return _text(data[-1] if data else "")

    def _op_list(self):
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

    def _list_status(self):
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

    # folders --------------------------------------------------------------------------
    def _namespaces(self) -> None:
        """The personal namespace's prefix and delimiter, and the other namespaces'
        prefixes, from NAMESPACE (RFC 2342) when the server offers it.  Its answer decides
        every folder's name, so a refusal stops the store: guessing instead could name
        the same folders differently from one run to the next."""
        if self._prefix is not None:
            return
        if not self.has("NAMESPACE"):
            self._prefix = ""
            return
        personal, other, shared = self.call("namespace")
        personal = list(personal or ())
        others = [*personal[1:], *(other or ()), *(shared or ())]
        self._other_prefixes = tuple(_text(prefix) for prefix, _ in others)
        if personal:
            prefix, delimiter = personal[0]
            self._prefix = _text(prefix)
            self._prefix_delimiter = _text(delimiter) if delimiter else None
        else:
            self._prefix = ""
        log.debug(
            "%s: personal namespace %r, others %r",
            self.endpoint.display,
            self._prefix,
            self._other_prefixes,
        )

    def _personal(self, server_name: str) -> bool | None:
        """Whether a folder is in the personal namespace (the one whose prefix matches
        it longest): True, False (another user's or a shared folder), or None when no
        namespace the server announced matches it."""
        if server_name.upper() == "INBOX" or not self._other_prefixes and not self._prefix:
            return True
        best, personal = -1, None
        for prefix, mine in ((self._prefix, True), *((p, False) for p in self._other_prefixes)):
            if len(prefix) > best and _has_prefix(server_name, prefix):
                best, personal = len(prefix), mine
        return personal

    def list_folders(self) -> list[str]:
        from imapclient.imap_utf7 import decode, encode

        self._namespaces()
        names: dict[str, str] = {}
        former: dict[str, str] = {}
        outside: dict[str, str] = {}
        special: dict[str, str] = {}
        delimiters: list[str] = []
        for flags, delimiter, raw in self.call("list"):
            attributes = {_text(f).lower() for f in flags or ()}
            if isinstance(delimiter, bytes):
                delimiter = delimiter.decode("ascii", "replace")
            if isinstance(raw, int):
                raw = str(raw).encode()
            if isinstance(raw, str):
                raw = raw.encode("utf-8")
            if _BAD_NAME.search(raw.decode("latin-1")):
                log.warning("skipping folder %r: its name contains control characters", _text(raw))
                continue
            try:
                server_name = decode(raw)
                if encode(server_name) != raw:
                    raise ValueError("does not round-trip")
            except (ValueError, UnicodeError):
                log.warning("skipping folder %r: its name is not valid modified UTF-7", _text(raw))
                continue
            if delimiter:
                delimiters.append(delimiter)
            if "\\noselect" in attributes or "\\nonexistent" in attributes:
                continue
            personal = self._personal(server_name)
            if not personal:
                old = self._map_name(server_name, server_name, delimiter, quiet=True)
                if old is not None:
                    outside[old] = server_name
                if personal is None:
                    log.warning(
                        "skipping folder %r: it is in no namespace the server announced",
                        server_name,
                    )
                else:
                    log.info(
                        "skipping folder %r: it is another user's or a shared folder",
                        server_name,
                    )
                continue
            name = self._local_name(server_name, delimiter)
            if name is None:
                continue
            if name in names:
                log.warning(
                    "skipping folder %r: it maps to %r like %r", server_name, name, names[name]
                )
                continue
            names[name] = server_name
            old = self._map_name(server_name, server_name, delimiter, quiet=True)
            if old is not None and old != name:
                former[name] = old
            for attribute in SPECIAL_USE:
                if attribute.lower() in attributes:
                    special[name] = attribute
        if self._prefix_delimiter:
            self._delimiter = self._prefix_delimiter
        elif delimiters:
            self._delimiter = max(set(delimiters), key=delimiters.count)
        self._names, self.special_use, self._listed = names, special, True
        self._former, self._outside = former, outside
        return sorted(names)

    def folder_ids(self) -> dict[str, str]:
        """MAILBOXID (RFC 8474) of each folder, which a RENAME keeps, where the server
        offers OBJECTID: one ``LIST "" "*" RETURN (STATUS (MAILBOXID))`` with
        LIST-STATUS, else a STATUS per folder.  MAILBOXID is asked for alone: Cyrus 3.6
        sends bytes of freed memory (line breaks too) for it next to MESSAGES or UIDNEXT.
        An id that is no RFC 8474 objectid is left out."""
        if not self.has("OBJECTID"):
            return {}
        if not self._listed:
            self.list_folders()
        if "LIST-STATUS" in self.capabilities:
            try:
                by_server = self.call("mailbox_ids")
            except ConnectError:
                raise
            except StoreError as error:
                log.warning("%s: no folder ids, so renames are not followed: %s", self.url, error)
                return {}
        else:
            by_server = {}
            for server_name in self._names.values():
                try:
                    status = self.call("folder_status", server_name, ["MAILBOXID"])
                except ConnectError:
                    raise
                except StoreError as error:
                    log.debug("%s: no MAILBOXID for %s: %s", self.url, server_name, error)
                    continue
                by_server[server_name] = status.get(b"MAILBOXID")
        ids = {}
        for name, server_name in self._names.items():
            value = by_server.get(server_name)
            if isinstance(value, tuple | list) and len(value) == 1:
                value = value[0]
            value = _text(value) if isinstance(value, bytes | str) else ""
            if _OBJECT_ID.fullmatch(value):
                ids[name] = value
        return ids

    def former_names(self) -> dict[str, str]:
        """Names given before personal namespace prefixes were left out: the server's
        ``INBOX.Sent`` was ``INBOX/Sent``, now ``Sent``."""
        if not self._listed:
            self.list_folders()
        return dict(self._former)

    def adopt_listing(self, other: Store) -> None:
        if isinstance(other, IMAPStore) and other._listed and not self._listed:
            self._names, self.special_use = dict(other._names), dict(other.special_use)
            self._delimiter, self._listed = other._delimiter, True
            self._prefix, self._prefix_delimiter = other._prefix, other._prefix_delimiter
            self._other_prefixes = other._other_prefixes
            self._former, self._outside = dict(other._former), dict(other._outside)

    def _local_name(self, server_name: str, delimiter: str | None) -> str | None:
        """Our name for a personal folder: without the namespace prefix (``INBOX.Sent``
        is ``Sent``), except where that would be INBOX itself (``INBOX.INBOX`` stays
        ``INBOX/INBOX``)."""
        if server_name.upper() == "INBOX":
            return "INBOX"
        rest = server_name
        if self._prefix and _has_prefix(server_name, self._prefix):
            stripped = server_name[len(self._prefix) :]
            if stripped and stripped.upper() != "INBOX":
                rest = stripped
        return self._map_name(rest, server_name, delimiter)

    def _map_name(
        self, name: str, server_name: str, delimiter: str | None, quiet: bool = False
    ) -> str | None:
        """A server name (without the prefix) -> "/"-separated, or None (with a warning
        unless `quiet`) if it cannot be a local name."""
        if name.upper() == "INBOX":
            return "INBOX"
        if delimiter and delimiter != "/" and "/" in name:
            if quiet:
                return None
            log.warning(
                "skipping folder %r: it contains '/', which is not its hierarchy delimiter here",
                server_name,
            )
            return None
        name = name.replace(delimiter, "/") if delimiter else name
        parts = name.split("/")
        if _BAD_NAME.search(name) or any(part in ("", ".", "..") for part in parts):
            if not quiet:
                log.warning("skipping folder %r: its name could escape the local tree", server_name)
            return None
        if len(parts) > MAX_FOLDER_DEPTH:
            log.warning(
                "skipping folder %r: it is nested %d levels deep, more than %d",
                server_name[:200],
                len(parts),
                MAX_FOLDER_DEPTH,
            )
            return None
        if parts[0].upper() == "INBOX":
            parts[0] = "INBOX"
        return "/".join(parts)

    def server_name(self, name: str) -> str:
        """The server's name for our folder `name`, under the personal namespace's
        prefix (FolderError if it cannot be one)."""
        if name in self._names:
            return self._names[name]
        if name == "INBOX":
            return "INBOX"
        parts = name.split("/")
        if _BAD_NAME.search(name) or any(part in ("", ".", "..") for part in parts):
            raise FolderError(f"{self.url}: folder name {name!r} cannot be created on the server")
        if name in self._outside:
            raise FolderError(
                f"{self.url}: {name} was the server's {self._outside[name]!r}, another "
                "user's or a shared folder, which mailsync does not sync; leave it out with "
                f"--folders '!{name}'"
            )
        delimiter = self._delimiter
        if delimiter != "/" and any(delimiter in part for part in parts):
            raise FolderError(
                f"{self.url}: folder name {name!r} contains {delimiter!r}, the server's "
                "hierarchy delimiter; rename the folder"
            )
        return (self._prefix or "") + delimiter.join(parts)  # (known once listed)

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        if kind != "mail":
            return f"{self.url}: cannot hold {kind} items; back them up into a Maildir tree"
        if self.read_only:
            return "the store is read-only"
        try:
            self.server_name(name)
        except FolderError as error:
            return str(error)
        return None

    def open_folder(self, name: str, create: bool = False, kind: str = "mail") -> IMAPFolder:
        if kind != "mail":
            raise FolderError(
                f"{self.url}: cannot hold {kind} items; back them up into a Maildir tree"
            )
        if not self._listed:
            self.list_folders()
        if name not in self._names:
            if not create:
                raise FolderError(f"{self.url}: no folder {name}")
            if self.read_only:
                raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
            server_name = self.server_name(name)
            try:
                self.call("create_folder", server_name)
            except ConnectError:
                raise
            except StoreError as error:
                # It may exist already (a \Noselect parent made selectable, a race).
                self.list_folders()
                if name not in self._names:
                    raise FolderError(f"{self.url}: cannot create folder {name}: {error}")
            try:
                self.call("subscribe_folder", server_name)
            except ConnectError:
                raise
            except StoreError as error:
                log.debug("%s: cannot subscribe to %s: %s", self.url, name, error)
            self._names[name] = server_name
        return IMAPFolder(self, name, self._names[name])


def _has_prefix(server_name: str, prefix: str) -> bool:
    """Whether `server_name` starts with a namespace prefix (INBOX in any case)."""
    if server_name.startswith(prefix):
        return True
    head = prefix[:5]
    return (
        head.upper() == "INBOX"
        and server_name[:5].upper() == "INBOX"
        and server_name[5:].startswith(prefix[5:])
    )


def _shutdown(client) -> None:
    if client is None:
        return
    try:
        client.shutdown()
    except Exception:
        pass


# -- folder -------------------------------------------------------------------------------


class IMAPFolder(Folder):
    #: Servers rewrite what they store (Cyrus: 8-bit header bytes as "X"; Courier: lone
    #: CRs dropped, a final CRLF added; Dovecot: NUL as 0x80), tests/servers/ measures.
    normalises = True

    def __init__(self, store: IMAPStore, name: str, server_name: str):
        self.store = store
        self.name = name
        self.server_name = server_name
        self.read_only = store.read_only
        self._info: dict | None = None  # SELECT response
        self._status_now: dict | None = None  # STATUS from unchanged()
        self._known_validity: str | None = None  # the first UIDVALIDITY seen
        self._cursor: dict = {}
        self._sizes: dict[int, int] = {}
        self._permanent: frozenset[str] | None = None
        self._keywords_ok = True
        self._flag_ops: dict[tuple[frozenset, frozenset], list[int]] = {}
        self._deletions: list[int] = []
        self._uids_assigned: set[int] = set()
        self._high_uid: int | None = None  # without UIDPLUS: highest UID before our APPENDs
        self._unannounced = False  # appended to since the server last told what it holds

    def __repr__(self) -> str:
        return f"IMAPFolder({self.store.url!r}, {self.name!r})"

    # selection ------------------------------------------------------------------------
    def select(self) -> dict:
        store = self.store
        if store.selected is self and self._info is not None:
            return self._info
        if store.selected is not None and store.selected is not self:
            store.selected.flush()
        try:
            info = store.call("select_folder", self.server_name, readonly=self.read_only)
        except ConnectError:
            raise
        except StoreError as error:
            raise FolderError(f"{store.url}: cannot select {self.name}: {error}")
        info = {_text(k).upper(): v for k, v in info.items()}
        self._check_validity(info.get("UIDVALIDITY"))
        self._info = info
        self._unannounced = False
        store.selected = self
        permanent = info.get("PERMANENTFLAGS")
        if permanent is not None and not self.read_only:
            flags = {_text(f) for f in permanent}
            self._keywords_ok = "\\*" in flags
            self._permanent = normalise_flags(f for f in flags if f != "\\*")
        return info

    def _select_appended(self) -> dict:
        """select(), and a NOOP if messages were appended since: a server need not
        announce what is appended to the selected folder (RFC 3501 APPEND; Courier does
        not), and until it has, UID FETCH and UID STORE of those UIDs find nothing."""
        info = self.select()
        if self._unannounced:
            self.store.call("noop", folder=self)
            self._unannounced = False
        return info

    def _check_validity(self, value) -> None:
        """Keys are only good under one UIDVALIDITY: a change in mid-run (seen on a
        reconnect, or between STATUS and SELECT) stops the folder."""
        if value is None:
            return
        value = str(value)
        if self._known_validity is None:
            self._known_validity = value
        elif value != self._known_validity:
            self._info = None
            raise FolderError(
                f"{self.store.url} {self.name}: UIDVALIDITY changed during the sync "
                f"({self._known_validity} -> {value}); rerun to re-match the messages"
            )

    @property
    def validity(self) -> str:  # type: ignore[override]
        if self._info is not None:
            return str(self._info.get("UIDVALIDITY", ""))
        if self._status_now is None:
            self._status_now = self._status()
            self._check_validity(self._status_now.get("UIDVALIDITY"))
        return str(self._status_now.get("UIDVALIDITY", ""))

    def _status(self) -> dict:
        from imapclient.imap_utf7 import encode

        cached = self.store._status_cache.pop(encode(self.server_name), None)
        if cached is not None:  # from this run's LIST-STATUS
            return cached
        what = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if self.store.has("CONDSTORE"):
            what.append("HIGHESTMODSEQ")
        try:
            status = self.store.call("folder_status", self.server_name, what)
        except ConnectError:
            raise
        except StoreError as error:
            raise FolderError(f"{self.store.url}: cannot get the status of {self.name}: {error}")
        return {_text(k).upper(): v for k, v in status.items()}

    def persists(self, flag: str) -> bool:
        if flag == "\\Recent":
            return False
        if flag.startswith("\\"):
            if flag not in SYSTEM_FLAGS:
                return False
            return self.read_only or self._permanent is None or flag in self._permanent
        if not valid_keyword(flag):
            return False
        if self.read_only:
            return True
        return self._keywords_ok or (self._permanent is not None and flag in self._permanent)

    # listing --------------------------------------------------------------------------
    def cursor(self) -> dict:
        return dict(self._cursor)

    def unchanged(self, cursor: dict) -> bool:
        """STATUS only (no SELECT/EXAMINE): same UIDVALIDITY, UIDNEXT, MESSAGES and
        HIGHESTMODSEQ as when the cursor was taken.  Needs CONDSTORE."""
        if "highestmodseq" not in cursor or not self.store.has("CONDSTORE"):
            return False
        status = self._status()
        self._status_now = status
        now = {
            "uidvalidity": status.get("UIDVALIDITY"),
            "uidnext": status.get("UIDNEXT"),
            "messages": status.get("MESSAGES"),
            "highestmodseq": status.get("HIGHESTMODSEQ"),
        }
        if any(v is None for v in now.values()) or any(cursor.get(k) != v for k, v in now.items()):
            return False
        self._check_validity(now["uidvalidity"])
        permanent = cursor.get("permanentflags")
        if permanent is not None and not self.read_only:
            self._keywords_ok = "\\*" in permanent
            self._permanent = normalise_flags(f for f in permanent if f != "\\*")
        self._cursor = dict(cursor)
        return True

    def _take_cursor(self) -> None:
        info = self._info or {}
        self._cursor = {
            "uidvalidity": info.get("UIDVALIDITY"),
            "uidnext": info.get("UIDNEXT"),
            "messages": info.get("EXISTS"),
        }
        if "HIGHESTMODSEQ" in info:
            self._cursor["highestmodseq"] = info["HIGHESTMODSEQ"]
        if self._permanent is not None and not self.read_only:
            self._cursor["permanentflags"] = sorted(self._permanent) + (
                ["\\*"] if self._keywords_ok else []
            )
        special = self.store.special_use.get(self.name)
        if special:
            self._cursor["special_use"] = special

    def _fresh_select(self) -> dict:
        """SELECT now, even if selected: the cursor must describe the folder as of now."""
        if self.store.selected is self:
            self.flush()
        self._info = None
        return self.select()

    def list(self) -> dict[str, Info]:
        return self._list_all(self._fresh_select())

    def _list_all(self, info: dict) -> dict[str, Info]:
        self._take_cursor()
        if not info.get("EXISTS"):
            return {}
        return self._fetch_meta("1:*")

    def list_since(self, cursor: dict, known: Mapping[str, frozenset[str]]) -> dict[str, Info]:
        modseq = cursor.get("highestmodseq")
        info = self._fresh_select()
        if (
            modseq is None
            or "HIGHESTMODSEQ" not in info
            or cursor.get("uidvalidity") != info.get("UIDVALIDITY")
        ):
            return self._list_all(info)
        self._take_cursor()
        if not info.get("EXISTS"):
            return {}
        uids = set(self.store.call("uids", "ALL", folder=self))
        changed = self._fetch_meta("1:*", modifiers=[f"CHANGEDSINCE {modseq}"])
        new = [uid for uid in uids if str(uid) not in known and str(uid) not in changed]
        fresh = {}
        for start in range(0, len(new), META_BATCH):
            fresh.update(self._fetch_meta(_uid_ranges(new[start : start + META_BATCH])))
        listing: dict[str, Info] = {}
        for uid in uids:
            key = str(uid)
            if key in changed:
                listing[key] = changed[key]
            elif key in fresh:
                listing[key] = fresh[key]
            elif key in known:
                listing[key] = Info(frozenset(known[key]), self._sizes.get(uid, 0), 0.0)
        return listing

    def _fetch_meta(self, uid_set: str, modifiers: list[str] | None = None) -> dict[str, Info]:
        items = ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"]
        response = self.store.call("fetch", uid_set, items, modifiers, folder=self)
        listing = {}
        for uid, data in response.items():
            size = data.get(b"RFC822.SIZE")
            if not isinstance(size, int) or size < 0:
                size = 0
            else:
                self._sizes[uid] = size
            flags = data.get(b"FLAGS") or ()
            if not isinstance(flags, tuple | list):
                flags = ()
            listing[str(uid)] = Info(
                normalise_flags(flags), size, _timestamp(data.get(b"INTERNALDATE"))
            )
        return listing

    # bodies ---------------------------------------------------------------------------
    def fetch(self, key: str) -> bytes:
        return self._fetch_one(key)

    def fetch_many(
        self, keys: Iterable[str]
    ) -> Iterator[tuple[str, bytes | bytearray | MessageError]]:
        """Bodies (LF) in the order given, batched by RFC822.SIZE.  A body above
        FETCH_LARGE_BYTES is fetched alone, in pieces, and comes as a bytearray."""
        keys = list(keys)
        self._select_appended()
        uids: list[int | None] = []
        for key in keys:
            uids.append(int(key) if key.isascii() and key.isdigit() else None)
        missing = [u for u in uids if u is not None and u not in self._sizes]
        for start in range(0, len(missing), META_BATCH):
            # Sizes first, so a batch is bounded by bytes even for messages not listed.
            chunk = missing[start : start + META_BATCH]
            response = self.store.call(
                "fetch", _uid_ranges(chunk), ["UID", "RFC822.SIZE"], folder=self
            )
            for uid, data in response.items():
                size = data.get(b"RFC822.SIZE")
                if isinstance(size, int):
                    self._sizes[uid] = size
        batch: list[int] = []
        batch_bytes = 0
        for key, uid in zip(keys, uids, strict=True):
            if uid is None:
                if batch:  # in the order given (base.py)
                    yield from self._fetch_bodies(batch)
                    batch, batch_bytes = [], 0
                yield key, MessageError(f"{self.name}: {key!r} is not an IMAP UID")
                continue
            size = self._sizes.get(uid, 0)
            if size > FETCH_LARGE_BYTES:
                if batch:
                    yield from self._fetch_bodies(batch)
                    batch, batch_bytes = [], 0
                # The bytearray is referenced by the yielded tuple only: once the caller
                # drops it, it is gone (this frame keeps no copy while suspended).
                yield key, self._fetch_large(uid)
                continue
            if batch and (batch_bytes + size > FETCH_BATCH_BYTES or len(batch) >= FETCH_BATCH_MAX):
                yield from self._fetch_bodies(batch)
                batch, batch_bytes = [], 0
            batch.append(uid)
            batch_bytes += size
        if batch:
            yield from self._fetch_bodies(batch)

    def _fetch_bodies(self, uids: list[int]):
        """Bodies of a batch in one UID FETCH, whose literals may hold twice what
        RFC822.SIZE announced for the batch (FETCH_LARGE_BYTES for a message without
        one) and 1 MiB more: room for servers whose sizes are estimates (Exchange).  A
        server that sends more (RFC822.SIZE understated, by mistake or on purpose) is cut
        off before the excess is read, and the batch is fetched again one message at a
        time in pieces (_fetch_large): memory follows the bytes that arrive, not what the
        server claims."""
        announced = sum(self._sizes.get(uid, FETCH_LARGE_BYTES) for uid in uids)
        budget = 2 * announced + (1 << 20)
        try:
            response = self.store.call(
                "fetch", _uid_ranges(uids), ["BODY.PEEK[]"], folder=self, literal_budget=budget
            )
        except _Oversized as error:
            log.warning(
                "%s: the server sent a body of %s bytes in a batch of %d messages it said "
                "hold %d bytes together (RFC822.SIZE); fetching them one at a time, in pieces",
                self.name,
                error,
                len(uids),
                announced,
            )
            for uid in uids:
                yield str(uid), self._fetch_large(uid)
            return
        for uid in uids:
            data = response.get(uid, {}).get(b"BODY[]")
            if isinstance(data, bytes):
                yield str(uid), to_lf(data)
            elif uid in response or data is not None:
                yield str(uid), MessageError(f"{self.name}: the server sent no body for UID {uid}")
            else:
                yield (
                    str(uid),
                    MessageError(f"{self.name}: message UID {uid} is gone from the server"),
                )

    def _fetch_large(self, uid: int) -> bytearray | MessageError:
        """One big body in pieces of FETCH_PIECE_BYTES (``UID FETCH uid (RFC822.SIZE
        BODY.PEEK[]<offset.length>)``), each turned CRLF -> LF straight into one bytearray.
        At most the buffer plus one piece and its LF copy are alive, never the whole
        literal next to a whole LF copy; a piece longer than asked for is refused before
        it is read.

        RFC822.SIZE is the server's word: it sizes the buffer (one block, filled in place:
        allocating it piece by piece costs glibc's heap a third more memory) only as far
        as the first piece proves, PRESIZE_FACTOR times the bytes that arrived in it; a
        body longer than that grows the buffer as it arrives.  So 1 GB announced for a
        small message costs nothing, and for a 4 MB one at most 64 MB.

        The result equals to_lf() of the whole body.  CRs ending a piece are not taken
        from it: the next piece starts at the first of them, so a CRLF split by a piece
        boundary is seen whole, and no piece ever starts right after a CR (Dovecot 2.3
        then drops the byte after a lone CR, serves a short body and renames its own file
        as broken).  The end is the first short piece (never RFC822.SIZE: some servers
        report it inexactly).  A message that vanishes, or whose RFC822.SIZE changes, in
        mid-read is this message's MessageError; a lost connection is retried once per
        piece."""
        where = f"{self.name}: message UID {uid}"
        buf: bytearray | None = None  # sized once the first piece has arrived
        end = 0  # bytes of buf filled so far
        offset = 0  # wire bytes taken so far
        length = FETCH_PIECE_BYTES
        announced: int | None = None
        while True:
            items = ["RFC822.SIZE", f"BODY.PEEK[]<{offset}.{length}>"]
            try:
                response = self.store.call(
                    "fetch", str(uid), items, folder=self, message_level=True, literal_budget=length
                )
            except MessageError as error:
                return MessageError(f"{where}: {error}")
            except _Oversized as error:
                return MessageError(
                    f"{where}: the server sent {error} bytes where at most {length} were asked for"
                )
            record = response.pop(uid, None)
            del response
            if record is None:
                if offset:
                    return MessageError(f"{where} vanished from the server while being read")
                return MessageError(f"{where} is gone from the server")
            piece = record.pop(f"BODY[]<{offset}>".encode(), None)
            reported = record.get(b"RFC822.SIZE")
            del record
            if isinstance(reported, int):
                if announced is None:
                    announced = reported
                elif reported != announced:
                    if not reported:  # Dovecot, after another client expunged it
                        return MessageError(f"{where} vanished from the server while being read")
                    return MessageError(
                        f"{where} changed size while being read ({announced} -> {reported} "
                        "bytes); rerun"
                    )
            if not isinstance(piece, bytes):
                return MessageError(f"{self.name}: the server sent no body for UID {uid}")
            if len(piece) > length:
                return MessageError(
                    f"{where}: the server sent {len(piece)} bytes where at most {length} "
                    "were asked for"
                )
            last = len(piece) < length
            take = len(piece)
            if not last:
                while take and piece[take - 1] == 13:  # trailing CRs: the next piece's
                    take -= 1
                if not take:  # nothing but CRs: ask for more at once, not after a CR
                    del piece
                    length *= 2
                    if length > MAX_LITERAL:
                        return MessageError(f"{where}: over {MAX_LITERAL} CRs in a row; refusing")
                    continue
                length = FETCH_PIECE_BYTES
            offset += take
            if offset > MAX_LITERAL:
                return MessageError(f"{where} is larger than {MAX_LITERAL} bytes; refusing")
            held = len(piece) - take  # the CRs left for the next piece
            lf = piece.replace(b"\r\n", b"\n") if b"\r\n" in piece else piece
            del piece
            n = len(lf) - held  # replace() leaves the trailing CRs (no LF after them) alone
            if buf is None:
                proven = PRESIZE_FACTOR * offset
                buf = bytearray(n if last else min(max(announced or 0, n), proven))
            buf[end : end + n] = memoryview(lf)[:n]  # grows buf past what was presized
            end += n
            del lf
            if last:
                break
        if announced is not None and announced != offset:
            log.debug("%s: RFC822.SIZE says %d bytes, the body had %d", where, announced, offset)
        del buf[end:]  # the CRs that went (a small shrink keeps the block: no copy)
        return buf

    def fingerprints(self, keys: Iterable[str]) -> dict[str, str]:
        """Content hashes, fetched in byte-bounded batches (not one round trip each)."""
        out = {}
        for key, data in self.fetch_many(keys):
            if not isinstance(data, MessageError):
                out[key] = fingerprint(data)
            del data  # not kept alive while the next (maybe 50 MB) body is fetched
        return out

    def header_digests(self, keys: Iterable[str]) -> dict[str, str]:
        """header_digest() of these messages from BODY.PEEK[HEADER] and RFC822.SIZE only:
        a cheap identity for re-matching without downloading bodies."""
        self._select_appended()
        uids = [int(k) for k in keys if k.isascii() and k.isdigit()]
        out = {}
        items = ["UID", "RFC822.SIZE", "BODY.PEEK[HEADER]"]
        for start in range(0, len(uids), META_BATCH):
            chunk = _uid_ranges(uids[start : start + META_BATCH])
            for uid, data in self.store.call("fetch", chunk, items, folder=self).items():
                header, size = data.get(b"BODY[HEADER]"), data.get(b"RFC822.SIZE")
                if isinstance(header, bytes) and isinstance(size, int):
                    out[str(uid)] = header_digest(header, size)
        return out

    # writes -----------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise FolderError(f"{self.store.url} {self.name} is read-only")

    def append(self, data: bytes, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        self.flush()  # pending flag changes and deletions go first
        info = self.select()
        uidplus = self.store.has("UIDPLUS")
        if not uidplus and self._high_uid is None:
            self._high_uid = self._highest_uid()
        wire = to_crlf(data)
        keep = sorted(f for f in flags if self.persists(f))
        when = dt.datetime.fromtimestamp(arrival, dt.UTC) if arrival else None
        try:
            response = self.store.call(
                "append", self.server_name, wire, keep, when, retry=False, folder=self
            )
        except ConnectError:
            raise MessageError(
                f"{self.name}: the connection dropped while appending; the next run finds "
                "the message if it arrived"
            )
        except RefusedError as error:
            raise RefusedError(f"{self.name}: the server refuses the message", error.reason)
        except MailsyncError as error:
            raise MessageError(f"{self.name}: the server refused a message ({error})")
        match = re.search(r"\[APPENDUID (\d+) (\d+)\]", response or "", re.I)
        if match:
            if str(match.group(1)) != str(info.get("UIDVALIDITY")):
                raise FolderError(f"{self.name}: UIDVALIDITY changed during the sync; rerun")
            uid = int(match.group(2))
            self._unannounced = True
        else:
            uid = self._find_appended(data)
            self._high_uid = max(self._high_uid or 0, uid)
        self._sizes[uid] = len(wire)
        self._uids_assigned.add(uid)
        return str(uid)

    def _highest_uid(self) -> int:
        """The highest UID now in the folder (0 if empty)."""
        self.store.call("noop", folder=self)
        try:
            response = self.store.call("fetch", "*", ["UID"], folder=self)
        except ConnectError:
            raise
        except FolderError:  # some servers answer BAD for "*" in an empty folder
            return 0
        return max(response, default=0)

    def _find_appended(self, data: bytes) -> int:
        """No APPENDUID: the new message is among the UIDs above the highest one before,
        the only one there, or the one with the same content, exact or as the server may
        have stored it (message.tolerant_fingerprint)."""
        start = (self._high_uid or 0) + 1
        self.store.call("noop", folder=self)  # hear about the new message
        candidates = [
            u
            for u in self.store.call("uids", f"UID {start}:*", folder=self)
            if u >= start and u not in self._uids_assigned
        ]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise MessageError(
                f"{self.name}: appended a message but the server shows no new UID; rerun"
            )
        # The exact bytes first; then as the server may have stored them (normalises).
        digest, stored = fingerprint(data), tolerant_fingerprint(data)
        rewritten = None
        for uid, body in self._fetch_bodies(sorted(candidates)):
            if isinstance(body, MessageError):
                continue
            if fingerprint(body) == digest:
                return int(uid)
            if rewritten is None and tolerant_fingerprint(body) == stored:
                rewritten = int(uid)
        if rewritten is not None:
            return rewritten
        raise MessageError(f"{self.name}: appended a message but cannot find its UID; rerun")

    def _uid(self, key: str) -> int:
        """The UID `key` names; MessageError if it names none (it would fail the folder's
        whole batch of changes at flush)."""
        if key.isascii() and key.isdigit() and 0 < int(key) <= MAX_UID:
            return int(key)
        raise MessageError(f"{self.name}: {key!r} is not an IMAP UID")

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        self._writable()
        uid = self._uid(key)
        add = frozenset(f for f in add if self.persists(f))
        remove = frozenset(f for f in remove if self.persists(f)) - add
        if add or remove:
            self._flag_ops.setdefault((add, remove), []).append(uid)

    def delete(self, key: str) -> str:
        self._writable()
        self._deletions.append(self._uid(key))
        return key

    def flush(self) -> None:
        if not self._flag_ops and not self._deletions:
            return
        flag_ops, deletions = self._flag_ops, self._deletions
        self._flag_ops, self._deletions = {}, []  # a failure drops them: nothing recorded
        self._select_appended()
        try:
            for (add, remove), uids in flag_ops.items():
                for start in range(0, len(uids), STORE_BATCH):
                    chunk = _uid_ranges(uids[start : start + STORE_BATCH])
                    if add:
                        self.store.call("add_flags", chunk, sorted(add), silent=True, folder=self)
                    if remove:
                        self.store.call(
                            "remove_flags", chunk, sorted(remove), silent=True, folder=self
                        )
            for start in range(0, len(deletions), STORE_BATCH):
                self._expunge(deletions[start : start + STORE_BATCH])
        except (ConnectError, FolderError):
            raise
        except MailsyncError as error:
            raise FolderError(f"{self.name}: the server refused a change: {error}")

    def _expunge(self, uids: list[int]) -> None:
        """\\Deleted, then UID EXPUNGE of exactly these UIDs.  Without UIDPLUS a plain
        EXPUNGE would also remove messages someone else marked \\Deleted: then nothing is
        touched and the folder fails (the state keeps the pairs, a rerun tries again)."""
        ranges = _uid_ranges(uids)
        if self.store.has("UIDPLUS"):
            self.store.call("add_flags", ranges, ["\\Deleted"], silent=True, folder=self)
            self.store.call("uid_expunge", ranges, folder=self)
            return
        others = set(self.store.call("uids", "DELETED", folder=self)) - set(uids)
        if others:
            raise FolderError(
                f"{self.store.url} {self.name}: cannot delete {len(uids)} messages: the "
                f"server lacks UIDPLUS and {len(others)} other messages are marked \\Deleted, "
                "which EXPUNGE would remove too; expunge or undelete them and rerun"
            )
        self.store.call("add_flags", ranges, ["\\Deleted"], silent=True, folder=self)
        self.store.call("expunge", retry=False, folder=self)

    def close(self) -> None:
        self.flush()

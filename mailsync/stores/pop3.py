"""POP3 store: one folder, INBOX, keyed by UIDL.

RFC 1939 (POP3), RFC 2449 (CAPA, response codes), RFC 2595 (STLS), RFC 5034 (SASL
PLAIN), APOP.  URLs ``pop3s://USER@HOST[:PORT]`` (implicit TLS, 995) and
``pop3://USER@HOST[:PORT]`` (STLS required, 110); ``tls=none`` and ``cafile=`` as for
IMAP, and the same password sources.  The session itself (TLS, login, reading bounded
responses) is pop3_session.py's.

A maildrop has no folders and no flags: ``list`` is UIDL + LIST, ``fetch_many`` is RETR
(pipelined when the server offers PIPELINING), ``delete`` is DELE.  The server carries
out DELEs only when the session ends with QUIT, and an interrupted session deletes
nothing; so ``flush`` sends the DELEs and then QUIT, and once it returns the deletions
are done and the engine records them.

Keys are UIDLs, which RFC 1939 makes permanent for a message.  A server without UIDL
(or one that reports a UIDL twice, or an unusable one) gets keys from the message
itself instead: the digest of its header (TOP n 0) and its size, or of its whole
content where TOP is missing too.  A warning says what that costs.

The store deletes nothing by itself.  Its ``delete`` / ``delete_after_days`` options
become the folder's ``retention``; the engine asks mailsync.retention which messages it allows
to go, among those durable on the other side and recorded in the state.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import re
import ssl
from collections import deque
from collections.abc import Iterable, Iterator

from mailsync.errors import (
    ConfigError,
    ConnectError,
    FolderError,
    MailsyncError,
    MessageError,
    StoreError,
)
from mailsync.message import Body, Info, fingerprint, header_digest, to_lf
from mailsync.net import (
    TooSlow,
    parse_endpoint,
    password_for,
)
from mailsync.policy import Retention
from mailsync.stores.base import Folder, Store
from mailsync.stores.pop3_session import (
    _Dropped,
    _human,
    _Malformed,
    _ServerError,
    _Session,
)
from mailsync.tokens import SASL_AUTH, TokenSource, store_token_source

log = logging.getLogger("mailsync")

#: "password": the best password login the server offers (as "auto" without a token
#: source); "xoauth2", "oauthbearer": SASL with an OAuth2 token (RFC 5034, RFC 7628).
AUTH_METHODS = ("auto", "password", "plain", "apop", "user", *SASL_AUTH)
DELETE_MODES = ("keep", "after-download")
# Pipelined RETRs outstanding at once (at most _Session.depth of them): their LIST sizes
# together.
INFLIGHT_BYTES = 4 * 1024 * 1024
_UIDL_OK = re.compile(rb"[\x21-\x7e]{1,70}")  # RFC 1939: 1 to 70 printable characters
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(value, url: str) -> int | None:
    """max_size: bytes, or a number with K, M or G (1024-based)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ConfigError(f"store {url!r}: max_size must be a size such as 10M")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", str(value), re.I)
        if not match:
            raise ConfigError(f"store {url!r}: max_size must be a size such as 10M or 500000")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    if size <= 0:
        raise ConfigError(f"store {url!r}: max_size must be positive")
    return size


def _digest(keys) -> str:
    """A POP folder's cursor: the set of its message keys."""
    return _digest_ascii([key.encode() for key in keys])


def _digest_ascii(keys: list[bytes]) -> str:
    """_digest of ASCII keys as they came off the wire: bytes sort as their text does,
    so this is the same digest without decoding 5,000 UIDLs on every rerun."""
    return hashlib.sha256(b"\n".join(sorted(keys))).hexdigest()


class POP3Store(Store):
    def __init__(
        self,
        url: str,
        options: dict | None = None,
        read_only: bool = False,
        name: str | None = None,
    ):
        self.endpoint = parse_endpoint(url, options)
        self.url = self.endpoint.display
        #: The store's name: its [store.NAME] (``mailsync login NAME``), else its URL.
        self.name = name or self.url
        self.read_only = read_only
        opts = self.endpoint.options
        auth = str(opts.pop("auth", "auto")).lower()
        if auth not in AUTH_METHODS:
            raise ConfigError(f"store {self.url}: auth must be one of {', '.join(AUTH_METHODS)}")
        #: Where OAuth2 access tokens come from, or None: a password login.
        self.tokens: TokenSource | None = store_token_source(self.name, self.endpoint, auth, "pop3")
        delete = str(opts.pop("delete", "keep")).lower()
        if delete not in DELETE_MODES:
            raise ConfigError(
                f"store {self.url}: delete must be one of {', '.join(DELETE_MODES)} "
                "(delete_after_days = N deletes what was downloaded N days ago)"
            )
        days = opts.pop("delete_after_days", None)
        if days is not None and days != "":
            try:
                days = float(days)
            except (TypeError, ValueError):
                days = -1.0
            if days < 0 or isinstance(days, bool):
                raise ConfigError(
                    f"store {self.url}: delete_after_days must be a number of days (0 or more)"
                )
        else:
            days = None
        self.max_size = parse_size(opts.pop("max_size", None), self.url)
        # password_command stays in the endpoint's options: net.get_password reads it
        # there when connecting (popped, a URL's or an accounts file's was never used).
        unknown = set(opts) - {"password_command"}
        if unknown:
            raise ConfigError(f"store {self.url}: unknown option(s) {', '.join(sorted(unknown))}")
        self.auth = auth
        self.retention = (
            Retention(after_download=delete == "after-download", after_days=days)
            if delete == "after-download" or days is not None
            else None
        )
        self._folder: POP3Folder | None = None

    def password_endpoint(self):
        return None if self.tokens is not None else self.endpoint

    def list_folders(self) -> list[str]:
        return ["INBOX"]

    def open_folder(self, name: str, create: bool = False, kind: str = "mail") -> POP3Folder:
        if kind != "mail":
            raise FolderError(
                f"{self.url}: cannot hold {kind} items; back them up into a Maildir tree"
            )
        if name != "INBOX":
            raise FolderError(
                f"{self.url}: a POP3 mailbox has one folder, INBOX (not {name!r}); "
                'name the local folder with folder = "..." in the channel'
            )
        if self._folder is None:
            self._folder = POP3Folder(self)
        return self._folder

    def close(self) -> None:
        if self._folder is not None:
            self._folder.close()


class POP3Folder(Folder):
    name = "INBOX"
    validity = ""  # UIDLs are permanent: nothing ever voids the keys
    read_only = True

    def __init__(self, store: POP3Store):
        self.store = store
        self.retention = store.retention
        self.skipped: list[str] = []  # messages left out of the listing, one note each
        self._session: _Session | None = None
        self._numbers: dict[str, int] = {}  # key -> message number in this session
        self._sizes: dict[str, int] = {}  # key -> LIST size
        self._deletions: list[str] = []
        self._fresh: dict[str, Info] | None = None  # a listing unchanged() just took
        self._cursor: dict = {}
        self.reconnects = 0

    def __repr__(self) -> str:
        return f"<POP3Folder {self.store.url}>"

    # session ------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return self.store.url

    def _guard(self, action: str, error: BaseException) -> MailsyncError:
        """A low-level failure -> the error the engine understands."""
        if isinstance(error, MailsyncError):
            return error
        self._drop()
        if isinstance(error, _ServerError):
            return FolderError(f"{self.where}: the server refused {action}: {error}")
        if isinstance(error, _Malformed):
            return FolderError(
                f"{self.where}: the server sent a response mailsync cannot read ({action}: {error})"
            )
        if isinstance(error, ssl.SSLCertVerificationError):
            return ConnectError(
                f"{self.where}: the server's certificate is not trusted "
                f"({error.verify_message or error}); for a private CA give cafile=PATH"
            )
        if isinstance(error, ssl.SSLError):
            return ConnectError(f"{self.where}: TLS failed ({error.reason or error})")
        if isinstance(error, TooSlow):
            return ConnectError(f"{self.where}: gave up during {action} ({error})")
        if isinstance(error, TimeoutError):
            return ConnectError(
                f"{self.where}: no answer within {self.store.endpoint.timeout:g} s during "
                f"{action}; check the host and port (timeout=SECONDS changes the limit)"
            )
        if isinstance(error, OSError) and action == "login":
            ep = self.store.endpoint
            return ConnectError(
                f"cannot connect to {ep.host}:{ep.port} ({error.strerror or error}); check "
                "the host name and port, and that the server is up"
            )
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return ConnectError(f"{self.where}: connection lost during {action} ({reason})")

    @property
    def session(self) -> _Session:
        if self._session is None:
            ep = self.store.endpoint
            tokens = self.store.tokens
            session = _Session(ep, self.store.auth, self.where, tokens)
            try:
                session.open(None if tokens is not None else password_for(ep))
            except BaseException as error:
                session.close(quit=False)
                if isinstance(error, _ServerError):
                    raise ConnectError(f"{self.where}: the server refused the session ({error})")
                if isinstance(error, MailsyncError | _Malformed | _Dropped | OSError):
                    raise self._guard("login", error)
                raise
            self._session = session
        return self._session

    def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close(quit=False)  # no QUIT: nothing of this session takes effect
        self._deletions.clear()

    def _map(self, uidls: list | None = None) -> dict[str, Info]:
        """UIDL + LIST in the current session -> keys, numbers and sizes.  `uidls`: the
        UIDL listing when this session already has it."""
        session = self.session
        sizes = {int(n): int(size) for n, size in session.listing("LIST") if size.isdigit()}
        if uidls is None:
            try:
                uidls = session.listing("UIDL")
            except _ServerError:
                uidls = None
        numbers: dict[str, int] = {}
        by_uidl: dict[bytes, list[int]] = {}
        if uidls is not None:
            for number, uidl in uidls:
                n = int(number)
                if n in sizes:
                    by_uidl.setdefault(uidl, []).append(n)
            unusable = []
            for uidl, ns in by_uidl.items():
                if len(ns) == 1 and _UIDL_OK.fullmatch(uidl):
                    numbers[uidl.decode("ascii")] = ns[0]
                else:
                    unusable.extend(ns)
            if unusable:
                log.warning(
                    "%s: the server gives %d message(s) a duplicate or unusable UIDL "
                    "(numbers %s); telling them apart by their content instead",
                    self.where,
                    len(unusable),
                    ", ".join(map(str, sorted(unusable)[:10])),
                )
            listed = {n for ns in by_uidl.values() for n in ns}
            unusable.extend(n for n in sizes if n not in listed)
        else:
            unusable = list(sizes)
            if unusable:
                cost = (
                    "every run reads the headers of all messages (TOP) to tell new mail from old"
                    if "TOP" in session.capabilities or not session.capabilities
                    else f"every run downloads all {len(sizes)} messages "
                    f"({_human(sum(sizes.values()))}) to tell new mail from old"
                )
                log.warning("%s: the server does not support UIDL; %s", self.where, cost)
        numbers.update(self._content_keys(sorted(set(unusable)), sizes))
        self._numbers = numbers
        self._sizes = {key: sizes[n] for key, n in numbers.items()}
        return {key: Info(frozenset(), self._sizes[key], 0.0) for key in numbers}

    def _content_keys(self, numbers: list[int], sizes: dict[int, int]) -> dict[str, int]:
        """Keys for messages without a usable UIDL: the digest of the header and size
        (TOP n 0), or of the whole content without TOP; equal ones get #2, #3..."""
        if not numbers:
            return {}
        session = self.session
        out: dict[str, int] = {}
        use_top = True
        for n in numbers:
            key = None
            if use_top:
                try:
                    session.command(f"TOP {n} 0")
                    key = "h:" + header_digest(to_lf(session._block()), sizes[n])[:40]
                except _ServerError:
                    use_top = False  # not supported: whole messages from here on
            if key is None:
                session.command(f"RETR {n}")
                key = "c:" + fingerprint(session._block())[:40]
            unique, count = key, 1
            while unique in out:
                count += 1
                unique = f"{key}#{count}"
            out[unique] = n
        return out

    # listing ------------------------------------------------------------------------
    def _listing(self, uidls: list | None = None) -> dict[str, Info]:
        if self._fresh is not None:
            listing, self._fresh = self._fresh, None
            return listing
        try:
            listing = self._map(uidls)
        except (MailsyncError, _ServerError, _Malformed, _Dropped, OSError) as error:
            raise self._guard("listing", error)
        self._cursor = {"keys": _digest(listing), **self._settings()}
        return listing

    def _settings(self) -> dict:
        """What else the cursor must match: a new max_size or delete rule is a change."""
        rule = self.retention.describe() if self.retention is not None else None
        return {"max_size": self.store.max_size, "delete": rule}

    def _uidls(self) -> tuple[list | None, str | None]:
        """The UIDL listing (None without UIDL) and the key digest it gives when every
        UIDL is a usable key (else None)."""
        try:
            uidls = self.session.listing("UIDL")
        except _ServerError:
            return None, None
        except (MailsyncError, _Malformed, _Dropped, OSError) as error:
            raise self._guard("listing", error)
        keys = [uidl for _, uidl in uidls]
        if len(set(keys)) != len(keys) or not all(map(_UIDL_OK.fullmatch, keys)):
            return uidls, None
        return uidls, _digest_ascii(keys)

    def cursor(self) -> dict:
        """The set of messages on the server (a digest of their keys) as of list()."""
        return dict(self._cursor)

    def unchanged(self, cursor: dict) -> bool:
        """Same messages as at `cursor` (POP has no flags to change).  Never with
        delete_after_days: time alone can make a message due."""
        if self.retention is not None and self.retention.after_days is not None:
            return False
        if not cursor:
            return False
        self._fresh = None
        uidls = None
        if self.store.max_size is None:
            # UIDL alone tells (no LIST of sizes), when every UIDL is a usable key.
            uidls, digest = self._uidls()
            if digest is not None and cursor == {"keys": digest, **self._settings()}:
                self._cursor = dict(cursor)
                return True
        self._fresh = self._listing(uidls)  # the UIDL listing is not asked for twice
        limit = self.store.max_size
        if limit is not None and any(info.size > limit for info in self._fresh.values()):
            return False  # a run that skips messages says so, every time
        return cursor == self._cursor

    def list(self) -> dict[str, Info]:
        listing = dict(self._listing())
        self.skipped = []
        limit = self.store.max_size
        if limit is not None:
            for key in [k for k, info in listing.items() if info.size > limit]:
                self.skipped.append(
                    f"message {key} ({_human(listing[key].size)}) is larger than max_size "
                    f"({_human(limit)}): left on the server, not downloaded"
                )
                del listing[key]
        return listing

    def persists(self, flag: str) -> bool:
        return False  # POP has no flags

    # bodies ------------------------------------------------------------------------
    def fetch(self, key: str) -> Body:
        return self._fetch_one(key)

    def fetch_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | MessageError]]:
        keys = list(keys)
        if not self._numbers and keys:
            self.list()
        done = 0
        retried = False
        while done < len(keys):
            try:
                for item in self._retrieve(keys[done:]):
                    yield item
                    done += 1
            except (_Dropped, OSError) as error:
                if retried:
                    raise self._guard("RETR", error)
                retried = True
                log.warning(
                    "%s: connection lost while downloading (%s); reconnecting",
                    self.where,
                    getattr(error, "strerror", None) or error,
                )
                self._drop()
                self.reconnects += 1
                try:
                    self._map()  # new session, new message numbers
                except (MailsyncError, _ServerError, _Malformed, _Dropped, OSError) as again:
                    raise self._guard("listing", again)
            except (_ServerError, _Malformed) as error:
                raise self._guard("RETR", error)

    def _retrieve(self, keys: builtins.list[str]) -> Iterator[tuple[str, bytes | MessageError]]:
        session = self.session
        depth = session.depth
        window: deque[tuple[str, int | None]] = deque()
        todo = iter(keys)
        inflight = 0
        exhausted = False
        while True:
            commands = []
            while not exhausted and len(window) < depth and inflight < INFLIGHT_BYTES:
                key = next(todo, None)
                if key is None:
                    exhausted = True
                    break
                number = self._numbers.get(key)
                window.append((key, number))
                if number is not None:
                    commands.append(f"RETR {number}")
                    inflight += self._sizes.get(key, 0)
            if commands:
                session._send(*commands)
            if not window:
                return
            key, number = window.popleft()
            if number is None:
                yield key, MessageError(f"{self.where}: message {key} is gone from the server")
                continue
            inflight -= self._sizes.get(key, 0)
            try:
                session._status()
            except _ServerError as error:
                yield key, MessageError(f"{self.where}: the server refused message {key}: {error}")
                continue
            yield key, to_lf(session._block())

    # writing ------------------------------------------------------------------------
    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        raise StoreError(
            f"{self.where}: a POP3 mailbox cannot receive messages; POP3 stores can only be "
            "pulled from"
        )

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        pass  # nothing persists (see persists); the state keeps flags

    def delete(self, key: str) -> str:
        """Marks the message for deletion; flush() makes it happen (DELE, then QUIT)."""
        self._deletions.append(key)
        return key

    def flush(self) -> None:
        if not self._deletions:
            return
        session = self.session
        if any(key not in self._numbers for key in self._deletions):
            try:
                self._map()  # this session's numbers (the listing may have been skipped)
            except (_ServerError, _Malformed, _Dropped, OSError) as error:
                raise self._guard("listing", error)
        numbers = [self._numbers[key] for key in self._deletions if key in self._numbers]
        try:
            for start in range(0, len(numbers), session.depth):
                chunk = numbers[start : start + session.depth]
                session._send(*(f"DELE {n}" for n in chunk))
                for n in chunk:
                    try:
                        session._status()
                    except _ServerError as error:  # already deleted: nothing to do
                        log.debug("%s: DELE %d: %s", self.where, n, error)
            self._deletions.clear()
            self._session = None
            session.close(quit=True)  # the deletions happen here, or not at all
        except (_ServerError, _Malformed, _Dropped, OSError) as error:
            self._drop()
            raise ConnectError(
                f"{self.where}: the session ended before the server confirmed the deletions "
                f"({getattr(error, 'strerror', None) or error}); the next run finds out "
                "which messages are gone and deletes the rest"
            )
        self._numbers = {}  # the next session numbers messages anew

    def close(self) -> None:
        session, self._session = self._session, None
        self._deletions.clear()  # not flushed: not to take effect
        if session is None:
            return
        try:
            session.command("RSET")
            session.close(quit=True)
        except (_ServerError, _Malformed, _Dropped, OSError):
            session.close(quit=False)

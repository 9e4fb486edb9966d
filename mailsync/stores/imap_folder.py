"""IMAP folders: one server folder, selected on the store's connection.

Keys are UIDs (as strings) under the folder's UIDVALIDITY, which must not change in
mid-run (FolderError: the next run re-matches).  What it does on the wire:

* listings fetch FLAGS, RFC822.SIZE and INTERNALDATE; with CONDSTORE a rerun asks only
  for what changed since the last HIGHESTMODSEQ (plus the UID list, to see expunges), and
  a folder whose STATUS is unchanged is not even selected, and one this run only
  appended to proves it (cursor_after_writes), so the next run need not list it either;
* bodies with ``UID FETCH ... BODY.PEEK[]`` (never marks mail read) in batches bounded
  by bytes; every FETCH response is kept by its UID (never by sequence number).  A body
  above FETCH_LARGE_BYTES comes in pieces (``BODY.PEEK[]<offset.length>``), each turned
  CRLF -> LF into one bytearray as it arrives, so a 50 MB message costs about 50 MB (not
  the literal plus its LF copy); such a body is handed on as that bytearray;
* APPEND with flags and INTERNALDATE and the message bytes exactly as given (CRLF line
  ends, lone CRs untouched), never of a message over the server's or the folder's
  APPENDLIMIT (RFC 7889: refused for good, RefusedError, without sending it);
  APPENDUID when offered, otherwise the new UID is found among the UIDs above the old
  highest one, by content if need be (no header is injected); a NOOP before the new
  UIDs are used, as a server need not announce them (Courier);
* flag changes with UID STORE in batches; deletions with \\Deleted plus UID EXPUNGE of
  exactly those UIDs (without UIDPLUS, EXPUNGE only if no other message is \\Deleted,
  otherwise the folder fails untouched).

The connection (reconnects, limits, raw operations) is imap_connection.py's; reading
bodies off the wire, imap_bodies.py's; which folders there are and their names, the
store's (imap.py); Gmail's folders are subclasses (imap_gmail.py) that fetch more with a
listing (META_ITEMS, _listed_flags).

It is over 700 lines, because an APPEND's outcome (its UID, the cursor after our own
appends, the sizes a listing would give) is folder state the listing and the writes share;
what moves out first is appending without UIDPLUS (_highest_uid, _find_appended).
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from mailsync.errors import (
    ConnectError,
    FolderError,
    MailsyncError,
    MessageError,
    RefusedError,
    StoreError,
)
from mailsync.message import (
    Body,
    Info,
    fingerprint,
    header_digest,
    normalise_flags,
    tolerant_fingerprint,
)
from mailsync.stores import imap_bodies
from mailsync.stores.base import Folder
from mailsync.stores.imap_append import wire_of, wire_size
from mailsync.stores.imap_connection import _text
from mailsync.stores.imap_patience import ThrottledFolder
from mailsync.stores.imap_wire import MAX_UID, _uid_ranges

if TYPE_CHECKING:
    from mailsync.stores.imap import IMAPStore

log = logging.getLogger("mailsync")
SETTLE_PAUSE = 1.0  # seconds between two looks at a folder a killed run wrote to
SETTLE_MAX = 30.0  # and how long it may take to stop changing

FETCH_BATCH_BYTES = 3 * 1024 * 1024  # bodies per UID FETCH, by RFC822.SIZE (x --jobs in RAM)
FETCH_BATCH_MAX = 500  # messages per UID FETCH
META_BATCH = 2000  # UIDs per metadata FETCH given as a UID list
PIPELINE_MESSAGES = 100  # APPENDs sent before their answers are read (LITERAL+)
PIPELINE_BYTES = 8 * 1024 * 1024  # and their bytes, at most (one message may be more)
STORE_BATCH = 1000  # UIDs per UID STORE / UID EXPUNGE
SYSTEM_FLAGS = frozenset({"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"})
_ATOM_SPECIALS = re.compile(r'[\x00-\x20\x7f(){%*"\\\]]')


def _timestamp(value) -> float:
    """INTERNALDATE -> seconds.  imapclient is told not to normalise times, so the value
    is aware; a missing or unreadable date counts as now (never 1970)."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return time.time()


def _gmail_message_id(value) -> str | None:
    """X-GM-MSGID as Info.account_id: an unsigned 64-bit number [Gmail's IMAP extensions];
    anything else (a hostile or broken server) is no id, and the message is downloaded."""
    if isinstance(value, bytes) and value.isdigit() and len(value) <= 20:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**64:
        return str(value)
    return None


def valid_keyword(flag: str) -> bool:
    """Whether `flag` can be sent as an IMAP keyword (an atom, ASCII, no specials)."""
    return (
        bool(flag)
        and flag.isascii()
        and not flag.startswith("\\")
        and not _ATOM_SPECIALS.search(flag)
    )


class IMAPFolder(Folder):
    #: Servers rewrite what they store (Cyrus: 8-bit header bytes as "X"; Courier: lone
    #: CRs dropped, a final CRLF added; Dovecot: NUL as 0x80), tests/servers/ measures.
    normalises = True
    META_ITEMS: tuple[str, ...] = ()  # what a listing fetches besides FLAGS, size, date

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
        # What this object appended (UID -> the flags the server was asked to keep), and
        # whether it changed anything else: cursor_after_writes() proves the rest.
        self._appended: dict[int, frozenset[str]] = {}
        self._other_writes = False
        self._high_uid: int | None = None  # without UIDPLUS: highest UID before our APPENDs
        self._unannounced = False  # appended to since the server last told what it holds
        self._limit: tuple[int | None] | None = None  # (APPENDLIMIT,) once asked

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

    @property
    def account_ids(self) -> bool:  # type: ignore[override]  # (Folder: an attribute; see base)
        return self.store.gmail

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
    def validity(self) -> str:  # type: ignore[override]  # (Folder: an attribute; see base)
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

    def settle(self) -> None:
        """STATUS (UIDNEXT, MESSAGES) every SETTLE_PAUSE seconds until two agree, for at
        most SETTLE_MAX: Dovecot stores the pipelined APPENDs a killed client had sent
        after the client is gone (base.py)."""
        deadline = time.monotonic() + SETTLE_MAX
        last = None
        while True:
            try:
                status = self.store.call("folder_status", self.server_name, ["UIDNEXT", "MESSAGES"])
            except ConnectError:
                raise
            except MailsyncError as error:
                log.debug("%s: cannot wait for it to settle: %s", self.name, error)
                return
            now = sorted((_text(k).upper(), v) for k, v in status.items())
            if now == last:
                return
            if time.monotonic() > deadline:
                log.warning(
                    "%s: still changing after %g s; listing it anyway", self.name, SETTLE_MAX
                )
                return
            last = now
            time.sleep(SETTLE_PAUSE)

    def cursor_after_writes(self) -> dict:
        """After appends only (no flag changes or deletions of ours): the folder as it
        is now, proven to hold nothing but the listing plus our appends.  A new SELECT
        gives UIDNEXT, EXISTS and HIGHESTMODSEQ; then every message changed since the
        listing's HIGHESTMODSEQ (CHANGEDSINCE, RFC 7162) must be one we appended, with
        the flags we sent.  A change by anyone else before that FETCH shows in it or in
        the counts; one after it has a higher MODSEQ than the cursor.  Else {}: the next
        run lists the folder (always safe)."""
        pre, appended = self._cursor, self._appended
        if (
            self._other_writes
            or self._flag_ops
            or self._deletions
            or not appended
            or "highestmodseq" not in pre
            or not self.store.has("CONDSTORE")
            or not self.store.has("UIDPLUS")
            or type(self).append is not IMAPFolder.append  # (Gmail's append does more)
            or not isinstance(pre.get("messages"), int)
            or not isinstance(pre.get("uidnext"), int)
        ):
            return {}
        try:
            # A fresh SELECT, not STATUS: Dovecot answers STATUS of the selected folder
            # from this session's view, which has not heard of another's EXPUNGE yet.
            info = self._fresh_select()
            if (
                info.get("UIDVALIDITY") != pre.get("uidvalidity")
                or info.get("EXISTS") != pre["messages"] + len(appended)
                or info.get("UIDNEXT") != max(appended) + 1
                or min(appended) < pre["uidnext"]
                or not isinstance(info.get("HIGHESTMODSEQ"), int)
            ):
                return {}
            changed = self._fetch_meta("1:*", modifiers=[f"CHANGEDSINCE {pre['highestmodseq']}"])
        except MailsyncError as error:
            log.debug("%s: no cursor after writes: %s", self.name, error)
            return {}
        if changed.keys() != {str(uid) for uid in appended} or any(
            changed[str(uid)].flags != normalise_flags(flags) for uid, flags in appended.items()
        ):
            return {}
        return {
            **pre,
            "uidnext": info["UIDNEXT"],
            "messages": info["EXISTS"],
            "highestmodseq": info["HIGHESTMODSEQ"],
        }

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

    def _fetch_meta(
        self, uid_set: str, modifiers: builtins.list[str] | None = None
    ) -> dict[str, Info]:
        items = ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", *self.META_ITEMS]
        if self.store.gmail:
            items.append("X-GM-MSGID")  # the same message in every label: Info.account_id
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
                self._listed_flags(flags, data),
                size,
                _timestamp(data.get(b"INTERNALDATE")),
                _gmail_message_id(data.get(b"X-GM-MSGID")),
            )
        return listing

    def _listed_flags(self, flags: tuple | builtins.list, data: dict) -> frozenset[str]:
        """A listed message's flags, from its FLAGS (and what else META_ITEMS fetched)."""
        return normalise_flags(flags)

    # bodies ---------------------------------------------------------------------------
    def fetch(self, key: str) -> Body:
        return self._fetch_one(key)

    def fetch_many(
        self, keys: Iterable[str]
    ) -> Iterator[tuple[str, bytes | bytearray | MessageError]]:
        """Bodies (LF) in the order given, batched by RFC822.SIZE.  A body above
        FETCH_LARGE_BYTES (imap_bodies.py) is fetched alone, in pieces, and comes as a
        bytearray."""
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
                    yield from imap_bodies.fetch_batch(self, batch)
                    batch, batch_bytes = [], 0
                yield key, MessageError(f"{self.name}: {key!r} is not an IMAP UID")
                continue
            size = self._sizes.get(uid, 0)
            if size > imap_bodies.FETCH_LARGE_BYTES:
                if batch:
                    yield from imap_bodies.fetch_batch(self, batch)
                    batch, batch_bytes = [], 0
                # The bytearray is referenced by the yielded tuple only: once the caller
                # drops it, it is gone (this frame keeps no copy while suspended).
                yield key, imap_bodies.fetch_large(self, uid)
                continue
            if batch and (batch_bytes + size > FETCH_BATCH_BYTES or len(batch) >= FETCH_BATCH_MAX):
                yield from imap_bodies.fetch_batch(self, batch)
                batch, batch_bytes = [], 0
            batch.append(uid)
            batch_bytes += size
        if batch:
            yield from imap_bodies.fetch_batch(self, batch)

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

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        self.flush()  # pending flag changes and deletions go first
        info = self.select()
        uidplus = self.store.has("UIDPLUS")
        if not uidplus and self._high_uid is None:
            self._high_uid = self._highest_uid()
        wire = wire_of(data)
        keep = sorted(f for f in flags if self.persists(f))
        when = dt.datetime.fromtimestamp(arrival, dt.UTC) if arrival else None
        limit = self._append_limit()
        try:
            response = self.store.call(
                "append", self.server_name, wire, keep, when, limit, retry=False, folder=self
            )
        except ThrottledFolder:
            raise  # the folder's, not this message's
        except MailsyncError as error:
            raise self._append_failure(error)
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
        self._appended[uid] = frozenset(keep)
        return str(uid)

    @property
    def appends_at_once(self) -> int:  # type: ignore[override]  # (Folder: an attribute; see base)
        """PIPELINE_MESSAGES where append_many() pipelines: the server takes
        non-synchronizing literals (LITERAL+) and names each new UID (UIDPLUS), append()
        does nothing more (Gmail's labels do), and the server is not known to throttle
        (IMAPConnection.throttles: APPENDs sent before a throttled answer is read reach
        the server before the backoff it asks for has passed, each answered throttled
        again; Microsoft 365 counts them against the client); else 1."""
        pipelines = (
            type(self).append is IMAPFolder.append
            and self.store.has("LITERAL+")
            and self.store.has("UIDPLUS")
            and not self.store.throttles
        )
        return PIPELINE_MESSAGES if pipelines else 1

    def append_many(
        self, messages: Sequence[tuple[Body, frozenset[str], float]]
    ) -> builtins.list[str | MessageError]:
        """append() of each message (base.py), PIPELINE_MESSAGES (or PIPELINE_BYTES) at a
        time in one round trip where the server takes non-synchronizing literals
        (LITERAL+) and names each new UID (UIDPLUS): each message's APPEND is a command
        of its own, so each has its own APPENDUID and its own refusal.  A message the
        server asks to send again later (throttled, a "try later" code, anything else
        but OK or a refusal for good) goes again alone through append(), which knows
        what to do with that answer.  Elsewhere, and in folders whose append() does
        more (Gmail's labels), or to a server known to throttle, append() one by one."""
        self._writable()
        out: builtins.list[str | MessageError] = []
        rest = list(messages)
        while len(rest) > 1 and self.appends_at_once > 1:  # (it drops once throttled)
            # At most PIPELINE_MESSAGES and PIPELINE_BYTES in flight (a bigger message
            # alone).
            end, size = 1, len(rest[0][0])
            while end < min(len(rest), PIPELINE_MESSAGES):
                size += len(rest[end][0])
                if size > PIPELINE_BYTES:
                    break
                end += 1
            out += self._append_pipelined(rest[:end])
            del rest[:end]
        return out + super().append_many(rest)

    def _append_pipelined(
        self, batch: builtins.list[tuple[Body, frozenset[str], float]]
    ) -> builtins.list[str | MessageError]:
        self.flush()  # pending flag changes and deletions go first
        info = self.select()
        limit = self._append_limit()
        out: builtins.list[str | MessageError] = []
        # By position: what is sent (made CRLF only as it goes: IMAPConnection).
        sent: dict[int, tuple[Body, list[str], dt.datetime | None]] = {}
        for n, (data, flags, arrival) in enumerate(batch):
            if limit is None or wire_size(data) <= limit:  # (else append() refuses it, unsent)
                keep = sorted(f for f in flags if self.persists(f))
                when = dt.datetime.fromtimestamp(arrival, dt.UTC) if arrival else None
                sent[n] = (data, keep, when)
        try:
            answers = self.store.call(
                "append_pipelined", self.server_name, list(sent.values()), retry=False, folder=self
            )
        except ThrottledFolder:
            raise  # the folder's, not these messages'
        except MailsyncError as error:
            answers = [(error, 0)] * len(sent)
        answer_of = dict(zip(sent, answers, strict=True))
        for n, message in enumerate(batch):
            answer, size = answer_of.get(n, (None, 0))
            if isinstance(answer, MailsyncError):
                out.append(self._append_failure(answer))
                continue
            if answer is None:  # unsent (over the limit), or to send alone: append() sees to it
                try:
                    out.append(self.append(*message))
                except MessageError as error:
                    out.append(error)
                continue
            match = re.search(r"\[APPENDUID (\d+) (\d+)\]", answer, re.I)
            if match is None:  # stored, its UID unknown: sent again, it would be there twice
                out.append(
                    MessageError(
                        f"{self.name}: the server took a message without naming its UID "
                        "(no APPENDUID); the next run finds it"
                    )
                )
                continue
            if str(match.group(1)) != str(info.get("UIDVALIDITY")):
                raise FolderError(f"{self.name}: UIDVALIDITY changed during the sync; rerun")
            uid = int(match.group(2))
            self._unannounced = True
            self._sizes[uid] = size
            self._uids_assigned.add(uid)
            self._appended[uid] = frozenset(sent[n][1])
            out.append(str(uid))
        return out

    def _append_failure(self, error: MailsyncError) -> MessageError:
        """The message's error for an APPEND that failed with `error` (call()'s)."""
        if isinstance(error, ConnectError):
            return MessageError(
                f"{self.name}: the connection dropped while appending; the next run finds "
                "the message if it arrived"
            )
        if isinstance(error, RefusedError):
            return RefusedError(f"{self.name}: the server refuses the message", error.reason)
        return MessageError(f"{self.name}: the server refused a message ({error})")

    def _append_limit(self) -> int | None:
        """The largest message this folder takes (RFC 7889): the server's APPENDLIMIT=N,
        or this folder's STATUS APPENDLIMIT where the server announces limits per folder
        (NIL, or no answer: none known)."""
        if self._limit is None:
            limit = self.store.append_limit()
            if limit is True:
                try:
                    status = self.store.call("folder_status", self.server_name, ["APPENDLIMIT"])
                except ConnectError:
                    raise
                except StoreError as error:
                    log.debug("%s: no APPENDLIMIT: %s", self.name, error)
                    status = {}
                value = {_text(k).upper(): v for k, v in status.items()}.get("APPENDLIMIT")
                limit = value if isinstance(value, int) and not isinstance(value, bool) else None
            self._limit = (limit,)
        return self._limit[0]

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

    def _find_appended(self, data: Body) -> int:
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
        for uid, body in imap_bodies.fetch_batch(self, sorted(candidates)):
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
        self._other_writes = True
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

    def _expunge(self, uids: builtins.list[int]) -> None:
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

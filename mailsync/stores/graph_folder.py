"""Graph mail folders: one mail folder of the mailbox, through the store's HTTP (graph.py).

Keys are immutable message ids (``Prefer: IdType="ImmutableId"``), which survive moves.
A folder's cursor is a link of its ``messages/delta`` round: the @odata.nextLink of the
last page applied while a round is under way, its @odata.deltaLink once it is done.  A
rerun asks for the changes since (new and changed messages in full, removed ones as
``@removed``), page by page; a link the server no longer knows (HTTP 410,
syncStateNotFound / resyncRequired) means a full listing, which the engine re-matches by
id and content, so nothing is downloaded twice.

Bodies come from ``GET messages/{id}/$value`` (the MIME as Exchange makes it), several at
once within the store's limit of concurrent requests, each read up to MAX_MESSAGE bytes.
An immutable id names its message in whatever folder it is, so a key no delta page of this
folder showed is first checked to be in it (parentFolderId).

Flags: isRead <-> \\Seen, flag.flagStatus "flagged" <-> \\Flagged, categories <->
keywords, PR_LAST_VERB_EXECUTED (the extended property "Integer 0x1081": 102/103 reply,
104 forward) <-> \\Answered / $Forwarded; receivedDateTime is the arrival date, and
PR_MESSAGE_SIZE ("Integer 0x0E08") the size (Graph's message has no size property).  Flag
changes go back by PATCH; deletions by a move to Deleted Items (DELETE from Deleted Items
itself), or ``permanentDelete`` with the store's hard_delete, each only of a message that
is still in this folder.  Graph creates a message posted as MIME as a draft only
(user-post-messages.md), so append() cannot make a message: it moves one that is on the
server already (a message moved between local folders), or refuses; restoring goes
through IMAP, which stores messages as received.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from mailsync.errors import CannotCreate, FolderError, MessageError, StoreError
from mailsync.message import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    FORWARDED,
    SEEN,
    Body,
    Info,
    fingerprint,
    header_value,
    to_lf,
)
from mailsync.stores import graph
from mailsync.stores.base import PagedFolder
from mailsync.stores.graph import MAX_CONCURRENT, GraphError, TooLarge

if TYPE_CHECKING:
    from mailsync.stores.graph import GraphStore

log = logging.getLogger("mailsync")

# Changes per delta page (Prefer: odata.maxpagesize); MAILSYNC_GRAPH_PAGE_SIZE is for tests
# that need many pages from a small folder.
PAGE_SIZE = int(os.environ.get("MAILSYNC_GRAPH_PAGE_SIZE") or 100)
LAST_VERB = "Integer 0x1081"  # PR_LAST_VERB_EXECUTED (MS-OXOMSG 2.2.1.29)
MESSAGE_SIZE = "Integer 0x0E08"  # PR_MESSAGE_SIZE: Graph's message has no size property
VERB_REPLY, VERB_REPLY_ALL, VERB_FORWARD = 102, 103, 104
VERBS = frozenset({ANSWERED, FORWARDED})  # the flags of the last verb
NO_VERB = 0  # Graph cannot remove an extended property by PATCH: 0 is no verb
LIST_SELECT = "id,changeKey,isRead,flag,categories,receivedDateTime"
LIST_EXPAND = (
    f"singleValueExtendedProperties($filter=id eq '{LAST_VERB}' or id eq '{MESSAGE_SIZE}')"
)
# Messages of one Message-ID looked at (listed, and each downloaded to compare) when
# append() looks for the message on the server: a Message-ID is a hint shared by copies
# and by hostile mail, so the search is bounded.
MAX_CANDIDATES = 20
MAX_MESSAGE_ID = 998  # characters: a header line's limit (RFC 5322 2.1.1)
# Error codes of a delta link the server no longer knows (errors.md, delta-query-overview.md).
VOID_DELTA = ("syncStateNotFound", "resyncRequired", "syncStateInvalid")


def delta_page(content: bytes, where: str) -> tuple[list[dict], str | None, str]:
    """One page of a Graph delta round: (its entries, the nextLink to go on from or None
    on the last page, the deltaLink that ends the round: "" before it).  FolderError for
    a page that has neither link."""
    answer = _json_object(content, where)
    entries = [entry for entry in answer.get("value") or () if isinstance(entry, dict)]
    next_link, delta_link = answer.get("@odata.nextLink"), answer.get("@odata.deltaLink")
    if isinstance(next_link, str) and next_link:
        return entries, next_link, ""
    if not isinstance(delta_link, str) or not delta_link:
        raise FolderError(f"{where}: Graph's delta page has neither nextLink nor deltaLink")
    return entries, None, delta_link


class GraphFolder(PagedFolder):
    validity = ""  # immutable ids stay valid; a void delta link means a full listing
    # Exchange keeps a message as its properties and makes its MIME again when asked:
    # $value may differ from what was once delivered (folded headers, encodings).
    normalises = True
    # \Answered and $Forwarded are one property, the last verb (PR_LAST_VERB_EXECUTED).
    exclusive_flags = frozenset({VERBS})

    def __init__(self, store: GraphStore, name: str, folder_id: str, well_known: str | None):
        self.store = store
        self.name = name
        self.folder_id = folder_id
        self.well_known = well_known  # "Trash" etc. for a well-known folder, else None
        self.read_only = store.read_only
        self.where = f"{store.url} {name}"
        self._link: str | None = None  # the deltaLink of the last complete round
        self._changekeys: dict[str, str] = {}
        # Keys a delta page of this folder showed and that have not left it since: their
        # bodies are fetched directly.  An immutable id names its message wherever it is,
        # so any other key is first checked to be in this folder.
        self._listed: set[str] = set()
        self._flag_changes: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._deletions: list[str] = []

    def __repr__(self) -> str:
        return f"<GraphFolder {self.store.url} {self.name}>"

    def _request(self, method: str, url: str, what: str, **kwargs) -> tuple[int, bytes]:
        """store.request() for this folder: a refusal or throttling given up on is the
        folder's error (the other folders go on); AuthError and ConnectError stay the
        store's."""
        try:
            return self.store.request(method, url, what=what, where=self.where, **kwargs)
        except GraphError as error:
            if error.code in VOID_DELTA or error.status == 410:
                raise
            raise FolderError(str(error))
        except TooLarge as error:
            raise FolderError(str(error))

    # listing --------------------------------------------------------------------------
    def pages(
        self, cursor: dict, known: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[dict[str, Info | None] | None, dict]]:
        """The changes since `cursor` page by page (base.Folder.pages): each delta page
        as {key: Info, or None if the message left the folder}, with the link to go on
        from after it.  A void link: (None, {}), then every message from scratch."""
        link = (cursor or {}).get("link")
        url = link or f"mailFolders/{quote(self.folder_id, safe='')}/messages/delta"
        params = None if link else {"$select": LIST_SELECT, "$expand": LIST_EXPAND}
        headers = {"Prefer": f'IdType="ImmutableId", odata.maxpagesize={PAGE_SIZE}'}
        pages = 0
        while True:
            try:
                _status, content = self._request(
                    "GET", url, "messages/delta", params=params, headers=headers
                )
            except GraphError as error:
                if not link:
                    raise FolderError(str(error))
                log.warning(
                    "%s: Graph no longer knows the last delta link (%s); listing the folder "
                    "again (messages already here are matched, not downloaded again)",
                    self.where,
                    error.code or f"HTTP {error.status}",
                )
                yield None, {}
                yield from self.pages({}, known)
                return
            entries, next_link, delta_link = delta_page(content, self.where)
            page: dict[str, Info | None] = {}
            for entry in entries:
                self._apply(page, entry)
            pages += 1
            if next_link:
                yield page, {"link": next_link}
                url, params = next_link, None
                continue
            self._link = delta_link
            yield page, {"link": delta_link}
            break
        log.debug("%s: %d delta page(s)", self.name, pages)

    def _apply(self, page: dict[str, Info | None], entry: dict) -> None:
        key = entry.get("id")
        if not isinstance(key, str) or not key:
            return
        if "@removed" in entry:
            page[key] = None
            self._changekeys.pop(key, None)
            self._listed.discard(key)
            return
        self._listed.add(key)
        size = _extended(entry, MESSAGE_SIZE) or 0
        page[key] = Info(flags_of(entry), max(size, 0), _when(entry.get("receivedDateTime")))
        changekey = entry.get("changeKey")
        if isinstance(changekey, str):
            self._changekeys[key] = changekey

    def cursor(self) -> dict:
        return {"link": self._link} if self._link else {}

    def cursor_after_writes(self) -> dict:
        """The delta link of the listing, though this run wrote since: a delta round
        reports every change after its link, this run's own ones included (seen again
        as they are, they change nothing), so it never hides a change; the next run
        asks for the changes instead of listing the folder from scratch."""
        return self.cursor()

    def persists(self, flag: str) -> bool:
        return flag not in (DRAFT, DELETED)

    def version(self, key: str) -> str | None:
        return self._changekeys.get(key)

    def recall_versions(self, versions: Mapping[str, str]) -> None:
        for key, changekey in versions.items():
            self._changekeys.setdefault(key, changekey)

    # bodies ---------------------------------------------------------------------------
    def fetch(self, key: str) -> Body:
        return self._fetch_one(key)

    def fetch_many(self, keys: Iterable[str]) -> Iterator[tuple[str, Body | MessageError]]:
        """Bodies in the order given, up to MAX_CONCURRENT downloads at a time (the
        store's limit holds the whole mailbox to it)."""
        with ThreadPoolExecutor(max_workers=MAX_CONCURRENT) as pool:
            pending: deque[tuple[str, Future]] = deque()
            try:
                for key in keys:
                    pending.append((key, pool.submit(self._body, key)))
                    if len(pending) >= MAX_CONCURRENT:
                        done_key, future = pending.popleft()
                        yield done_key, _result(future)
                while pending:
                    done_key, future = pending.popleft()
                    yield done_key, _result(future)
            finally:
                for _key, future in pending:
                    future.cancel()

    def _body(self, key: str) -> Body | MessageError:
        try:
            # (A listed key is asked too if this run moved it since: an immutable id
            # reads the message wherever it is, and another folder holds it now.)
            if (key not in self._listed or key in self.store.moved) and not self._here(key):
                return MessageError(f"{self.where}: message {key[:24]}... is not in this folder")
            content = self._mime(key)
        except TooLarge as error:
            return MessageError(f"{error}; skipped")
        except GraphError as error:
            if error.status in (404, 400):
                return MessageError(f"{self.where}: message {key[:24]}... is gone ({error.code})")
            if error.status in (429, 503):
                raise
            text = f"{self.where}: Graph cannot give message {key[:24]}... ({error}); skipped"
            log.warning("%s", text)
            return MessageError(text)
        if not content:
            return MessageError(f"{self.where}: message {key[:24]}... has no MIME content")
        return to_lf(content)

    def _mime(self, key: str) -> bytes:
        """Message `key`'s $value as Graph sends it (GraphError, TooLarge)."""
        _status, content = self.store.request(
            "GET",
            f"messages/{quote(key, safe='')}/$value",
            what="$value",
            where=self.where,
            limit=graph.MAX_MESSAGE,
        )
        return content

    def _here(self, key: str) -> bool:
        """Whether message `key` is in this folder now (one GET of its parentFolderId)."""
        _status, content = self.store.request(
            "GET",
            f"messages/{quote(key, safe='')}",
            what="reading a message",
            where=self.where,
            params={"$select": "parentFolderId"},
        )
        return _json_object(content, self.where).get("parentFolderId") == self.folder_id

    # writing --------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.store.url}: opened read-only")

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        """Graph creates a message posted as MIME only as a draft (user-post-messages.md),
        and no documented call makes received mail, so append() makes none.  What it can
        do is move a message that is on the server already: a message the user moved
        between two local folders in a two-way run is a deletion in the old folder's
        pair and a new message in this one's, and the engine syncs one pair at a time.

        The message is looked up by its Message-ID (GET messages?$filter=internetMessageId
        eq '...', at most MAX_CANDIDATES), and a candidate counts only if its $value, with
        LF line ends, is `data` byte for byte (fingerprint): the local copy of a Graph
        message is exactly that.  Then, by where the candidate is:

        - Deleted Items: the old folder's deletion went back first (this run or an
          earlier one), so no folder of the mailbox claims the message: moved here
          (POST messages/{id}/move; its immutable id stays), its flags made `flags`,
          and its id is the new key.  (A message that was in Deleted Items on its own
          and that the user copied, not moved, locally into this folder moves too: its
          copy in the local Trash goes when the Trash pair sees it leave.)
        - another folder: the deletion from there has not gone back yet (folders are
          synced in any order, several at once), or the user copied the message rather
          than moved it.  A store cannot tell the two apart (it sees no other pair's
          state), and a move now would take a copied message out of a folder that
          still has it locally (that folder's pair would then delete the local copy).
          So: a plain MessageError, not a refusal (exit 1); after a move, the next run
          finds the message in Deleted Items and moves it.  (A local copy of such a
          message is named again on every run: Graph cannot hold a second copy.)
        - this folder: not looked at.  The engine's matching (copies.py) has linked it
          already unless it is paired with another local message: not taken twice.

        Nothing found (no Message-ID, another content, or with hard_delete the message
        removed for good by the old folder's deletion): errors.CannotCreate as before,
        which a two-way run records as a refusal (exit 1 once, then held back) and a
        one-way run stops at (exit 2)."""
        self._writable()
        trash = self.store.well_known_id("Trash")
        elsewhere = False
        for entry in self._same_message(data, trash):  # (those in Deleted Items first)
            if entry.get("parentFolderId") == trash:
                return self._move_here(entry, flags)
            elsewhere = True
            break
        if elsewhere:
            raise MessageError(
                f"{self.where}: message {header_value(data, 'Message-ID')} is still in "
                "another folder on the server: if it was moved locally, the next run moves it "
                "here once its deletion from the old folder has gone back (rerun); if it was "
                "copied, Graph cannot hold a second copy: delete this local copy"
            )
        imap = (
            f"use IMAP: imaps://{self.store.endpoint.user}@outlook.office365.com with "
            'oauth2 = "microsoft" (XOAUTH2)'
        )
        raise CannotCreate(
            f"{self.where}: Graph can only create a message as a draft, not as received "
            f"mail; to restore messages, {imap}",
            f"Graph can only create a message as a draft, so it stays local; to put it on "
            f"the server, {imap}",
        )

    def _same_message(self, data: Body, trash: str | None) -> Iterator[dict]:
        """The mailbox's messages outside this folder with the Message-ID of `data` whose
        $value (LF) is `data` exactly (their id, parentFolderId and flag properties),
        those in Deleted Items (`trash`) first.  At most MAX_CANDIDATES are looked at; a
        message gone or unreadable since it was listed is not one."""
        message_id = header_value(data, "Message-ID")
        if not message_id or len(message_id) > MAX_MESSAGE_ID or "\x00" in message_id:
            return
        literal = message_id.replace("'", "''")  # (OData: a quote doubled in a literal)
        params = {
            "$filter": f"internetMessageId eq '{literal}'",
            "$select": f"{LIST_SELECT},parentFolderId",
            "$expand": LIST_EXPAND,
            "$top": str(MAX_CANDIDATES),
        }
        digest = fingerprint(data)
        try:
            listed = self.store.collection("messages", what="messages by Message-ID", params=params)
            candidates = [
                entry
                for _n, entry in zip(range(MAX_CANDIDATES), listed, strict=False)
                if isinstance(entry.get("id"), str)
                and entry["id"]
                and entry.get("parentFolderId") != self.folder_id
            ]
            candidates.sort(key=lambda entry: entry.get("parentFolderId") != trash)
            for entry in candidates:
                try:
                    content = self._mime(entry["id"])
                except GraphError as error:
                    if error.status in (400, 404):  # (gone since it was listed)
                        continue
                    raise
                if fingerprint(to_lf(content)) == digest:
                    yield entry
        except (GraphError, TooLarge) as error:
            if isinstance(error, GraphError) and error.status in (429, 503):
                raise FolderError(str(error))
            raise MessageError(f"{self.where}: cannot look for the message on the server: {error}")

    def _move_here(self, entry: dict, flags: frozenset[str]) -> str:
        """Move the message `entry` into this folder and give it `flags` (a PATCH at the
        next flush, as set_flags); its key, which a move keeps (immutable ids)."""
        key: str = entry["id"]
        self.store.moved.add(key)  # (before: a folder that listed it must ask)
        try:
            _status, content = self.store.request(
                "POST",
                f"messages/{quote(key, safe='')}/move",
                what="move",
                where=self.where,
                body={"destinationId": self.folder_id},
            )
        except GraphError as error:
            raise self._message_error(key, error)
        moved = _json_object(content, self.where) if content else {}
        # Graph answers with the moved message: its id is the key (the same one with
        # immutable ids; a new one were they not).
        answered = moved.get("id")
        moved_key = answered if isinstance(answered, str) and answered else key
        log.info("%s: moved message %s... here from Deleted Items", self.where, key[:24])
        self._listed.add(moved_key)
        if isinstance(moved.get("changeKey"), str):
            self._changekeys[moved_key] = moved["changeKey"]
        wanted = frozenset(f for f in flags if self.persists(f))
        now = flags_of(entry)
        if wanted != now:
            add, remove = wanted - now, now - wanted
            if VERBS & (add | remove):  # (one property: name each that is to stay)
                add |= wanted & VERBS
            self.set_flags(moved_key, add, remove)
        return moved_key

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        self._writable()
        old_add, old_remove = self._flag_changes.get(key, (frozenset(), frozenset()))
        self._flag_changes[key] = ((old_add - remove) | add, (old_remove - add) | remove)

    def delete(self, key: str) -> str:
        self._writable()
        self._deletions.append(key)
        return key

    def flush(self) -> None:
        if self._flag_changes:
            changes, self._flag_changes = self._flag_changes, {}
            for key, (add, remove) in changes.items():
                self._update(key, add, remove)
        if self._deletions:
            keys, self._deletions = self._deletions, []
            for key in keys:
                self._remove(key)

    def _update(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        """PATCH the properties these flags live in; the categories are read first, as the
        keywords are merged into them."""
        url = f"messages/{quote(key, safe='')}"
        categories: set[str] = set()
        if _keywords(add) or _keywords(remove):
            try:
                _status, content = self.store.request(
                    "GET",
                    url,
                    what="reading categories",
                    where=self.where,
                    params={"$select": "categories"},
                )
            except GraphError as error:
                raise self._message_error(key, error)
            found = _json_object(content, self.where).get("categories") or ()
            categories = {c for c in found if isinstance(c, str)}
        body = flag_properties(add, remove, categories)
        if not body:
            return
        try:
            _status, content = self.store.request(
                "PATCH", url, what="PATCH of flags", where=self.where, body=body
            )
        except GraphError as error:
            raise self._message_error(key, error)
        changekey = _json_object(content, self.where).get("changeKey") if content else None
        if isinstance(changekey, str):
            self._changekeys[key] = changekey

    def _remove(self, key: str) -> None:
        """Delete message `key` if it is still in this folder.  An immutable id names its
        message wherever it is: one moved since (by the user on another device, or by
        append() into the folder the user moved it to locally) is not this folder's to
        delete, and is left where it is (for this folder, gone: what was asked).  404:
        gone already."""
        url = f"messages/{quote(key, safe='')}"
        try:
            if not self._here(key):  # (asked even of a listed key: a move may be newer)
                log.info(
                    "%s: message %s... is no longer in this folder; not deleted",
                    self.where,
                    key[:24],
                )
                self._changekeys.pop(key, None)
                return
            if self.store.hard_delete:
                self.store.request(
                    "POST", f"{url}/permanentDelete", what="permanentDelete", where=self.where
                )
            elif self.well_known == "Trash":
                # Deleted from Deleted Items: where Outlook puts it too (Recoverable Items).
                self.store.request("DELETE", url, what="DELETE", where=self.where)
            else:
                self.store.request(
                    "POST",
                    f"{url}/move",
                    what="move to Deleted Items",
                    where=self.where,
                    body={"destinationId": "deleteditems"},
                )
        except GraphError as error:
            if error.status != 404:  # gone already: what was asked
                raise self._message_error(key, error)
        self._changekeys.pop(key, None)
        self._listed.discard(key)

    def _message_error(self, key: str, error: GraphError) -> MessageError | FolderError:
        if error.status in (429, 503):
            return FolderError(str(error))
        if error.status == 404:
            return MessageError(f"{self.where}: message {key[:24]}... is gone")
        return MessageError(str(error))


# -- flags <-> message properties -------------------------------------------------------------


def flags_of(message: dict) -> frozenset[str]:
    """A Graph message's properties -> IMAP-style flags."""
    flags = set()
    if message.get("isRead") is True:
        flags.add(SEEN)
    flag = message.get("flag")
    if isinstance(flag, dict) and flag.get("flagStatus") == "flagged":
        flags.add(FLAGGED)
    verb = _extended(message, LAST_VERB)
    if verb in (VERB_REPLY, VERB_REPLY_ALL):
        flags.add(ANSWERED)
    elif verb == VERB_FORWARD:
        flags.add(FORWARDED)
    for category in message.get("categories") or ():
        if isinstance(category, str) and category and not category.startswith("\\"):
            flags.add(category)
    return frozenset(flags)


def _extended(message: dict, ident: str) -> int | None:
    """The integer extended property `ident` of a message, as $expand gave it (values
    come as strings; ids compare as Graph writes them back, case and spacing aside)."""
    for prop in message.get("singleValueExtendedProperties") or ():
        if (
            isinstance(prop, dict)
            and " ".join(str(prop.get("id", "")).split()).lower() == ident.lower()
        ):
            try:
                return int(str(prop.get("value")))
            except ValueError:
                return None
    return None


def _keywords(flags: Iterable[str]) -> set[str]:
    """The flags that are categories on Exchange (not system flags, not $Forwarded)."""
    return {f for f in flags if not f.startswith("\\") and f != FORWARDED}


def flag_properties(add: frozenset[str], remove: frozenset[str], categories: set[str]) -> dict:
    """The PATCH body that adds `add` and removes `remove`; `categories`: the message's
    categories now, which keywords are merged into."""
    body: dict = {}
    if SEEN in add or SEEN in remove:
        body["isRead"] = SEEN in add
    if FLAGGED in add or FLAGGED in remove:
        body["flag"] = {"flagStatus": "flagged" if FLAGGED in add else "notFlagged"}
    if {ANSWERED, FORWARDED} & (add | remove):
        # One property holds both: the engine names in `add` each of the two that is to
        # stay (Folder.exclusive_flags); \Answered wins where both are, as on EWS.
        if ANSWERED in add:
            verb = VERB_REPLY
        elif FORWARDED in add:
            verb = VERB_FORWARD
        else:
            verb = NO_VERB
        body["singleValueExtendedProperties"] = [{"id": LAST_VERB, "value": str(verb)}]
    keywords_add, keywords_remove = _keywords(add), _keywords(remove)
    if keywords_add or keywords_remove:
        body["categories"] = sorted((categories | keywords_add) - keywords_remove)
    return body


def _when(value: object) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return 0.0


def _result(future: Future) -> Body | MessageError:
    """A download's outcome; throttling given up on fails the folder, not the store."""
    try:
        return future.result()
    except GraphError as error:
        raise FolderError(str(error))


def _json_object(content: bytes, where: str) -> dict:
    import json

    try:
        data = json.loads(content)
    except ValueError:
        raise FolderError(f"{where}: Graph's answer is not JSON")
    if not isinstance(data, dict):
        raise FolderError(f"{where}: Graph's answer is not a JSON object")
    return data

"""Exchange folders: one folder of the account, through the store's exchangelib Account.

Keys are ItemIds.  A folder's cursor is its SyncFolderItems SyncState: a rerun asks for
the changes since (creates, updates, read-flag changes, deletions), page by page; an
expired or invalid SyncState (ErrorInvalidSyncStateData) means a full listing, which the
engine re-matches by ItemId and content, so nothing is downloaded twice.  Bodies come
from GetItem with MIME content in batches sized by item size; an item the server cannot
convert (ErrorMimeContentConversionFailed, ErrorItemNotFound...) is skipped with a
warning.  Creating a message, and flags as item properties, are ews_items.py's.
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from mailsync.errors import FolderError, MailsyncError, MessageError, RefusedError, StoreError
from mailsync.message import ANSWERED, DELETED, DRAFT, FORWARDED, SEEN, Body, Info, to_lf
from mailsync.stores.base import PagedFolder
from mailsync.stores.ews_items import (
    LIST_FIELDS,
    _clean,
    _exchangelib,
    _keywords,
    _SyncStateError,
    _when,
    flags_of,
    new_message,
    set_flag_fields,
)

if TYPE_CHECKING:
    from mailsync.stores.ews import EWSStore

log = logging.getLogger("mailsync")

# Changes per SyncFolderItems page (Exchange's own maximum); MAILSYNC_EWS_PAGE_SIZE is for
# tests that need many pages from a small folder.
PAGE_SIZE = int(os.environ.get("MAILSYNC_EWS_PAGE_SIZE") or 512)
FETCH_BATCH_BYTES = 4 * 1024 * 1024  # MIME per GetItem, by item size
FETCH_BATCH_MAX = 100


class EWSFolder(PagedFolder):
    validity = ""  # ItemIds stay valid; an invalid SyncState is handled by a full listing
    # Exchange keeps a message as its own properties and makes its MIME again when asked:
    # what it gives back may differ from what CreateItem was given (folded headers,
    # encodings, added headers).  Copies to it are journaled and matched tolerantly.
    normalises = True
    # \Answered and $Forwarded are one property, the last verb (PR_LAST_VERB_EXECUTED):
    # a message keeps one of the two (\Answered where both are to stay: set_flag_fields).
    exclusive_flags = frozenset({frozenset({ANSWERED, FORWARDED})})

    def __init__(self, store: EWSStore, name: str, folder, kind: str = "mail"):
        self.store = store
        self.name = name
        self.folder = folder
        self.read_only = store.read_only
        self.kind = kind  # calendar and contacts folders are backed up (pulled) only
        # An event or contact changes under its ItemId (a new ChangeKey, version());
        # a message's ChangeKey changes with its flags only.
        self.mutable_items = kind != "mail"
        self._fields = LIST_FIELDS if kind == "mail" else ["size", "datetime_received"]
        self._sync_state: str | None = None
        self._changekeys: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self._flag_changes: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._deletions: list[str] = []

    def __repr__(self) -> str:
        return f"<EWSFolder {self.store.url} {self.name}>"

    def _call(self, what, function, *args, **kwargs):
        return self.store.call(what, function, *args, folder=self.name, **kwargs)

    # listing --------------------------------------------------------------------------
    def _pages(self, sync_state: str | None) -> Iterator[tuple[list, str]]:
        """SyncFolderItems from `sync_state`, one page at a time: (changes, SyncState
        after them).  self._sync_state follows."""
        from exchangelib.services import SyncFolderItems

        account = self.store.account
        folder = self.folder
        exl = _exchangelib()
        self._item_type = {
            "mail": exl.Message,
            "calendar": exl.CalendarItem,
            "contacts": exl.Contact,
        }[self.kind]
        fields = {
            f for f in folder.normalize_fields(fields=self._fields) if not f.field.is_attribute
        }
        state = sync_state
        pages = 0
        while True:
            service = SyncFolderItems(account=account)
            changes = self._call(
                "SyncFolderItems",
                lambda s=state, service=service: list(
                    service.call(
                        folder=folder,
                        shape="IdOnly",
                        additional_fields=fields,
                        sync_state=s,
                        ignore=None,
                        max_changes_returned=PAGE_SIZE,
                        sync_scope=None,
                    )
                ),
            )
            pages += 1
            new_state: str | None = service.sync_state
            if new_state is None:
                raise FolderError(
                    f"{self.store.url} {self.name}: SyncFolderItems gave no SyncState"
                )
            last = service.includes_last_item_in_range or new_state == state
            state = new_state
            self._sync_state = state
            yield changes, state
            if last:
                break
        log.debug("%s: %d SyncFolderItems page(s)", self.name, pages)

    def pages(
        self, cursor: dict, known: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[dict[str, Info | None] | None, dict]]:
        """The changes since `cursor` page by page, for the engine to apply and commit
        one page at a time: ({key: Info, or None if the message is gone}, the cursor
        after that page).  Without a cursor every message comes as a change.  When the
        server no longer knows the cursor, (None, {}) says so, and a full listing from
        scratch follows: messages it does not mention are gone.  `known`: the flags the
        state has for each key, which a read-flag change updates."""
        state = (cursor or {}).get("sync_state")
        try:
            for changes, new_state in self._pages(state):
                page: dict[str, Info | None] = {}
                for change, item in changes:
                    self._apply(page, change, item, known)
                yield page, {"sync_state": new_state}
        except _SyncStateError:
            if state is None:
                raise
            log.warning(
                "%s %s: the server no longer knows the last sync state; listing the folder "
                "again (messages already here are matched, not downloaded again)",
                self.store.url,
                self.name,
            )
            yield None, {}
            yield from self.pages({}, known)

    def _apply(self, page: dict, change: str, item, known: Mapping[str, frozenset[str]]) -> None:
        if change == "delete":
            page[item.id] = None
            self._changekeys.pop(item.id, None)
            return
        if change == "read_flag_change":
            item_id, is_read = item
            key = item_id.id
            old = page.get(key)
            if old is None and key in known:
                old = Info(known[key], 0, 0.0)
            if old is not None:
                flags = (old.flags | {SEEN}) if is_read else (old.flags - {SEEN})
                page[key] = Info(flags, old.size, old.arrival)
            if item_id.changekey:
                self._changekeys[key] = item_id.changekey
            return
        if isinstance(item, self._item_type):
            key = item.id
            flags = flags_of(item) if self.kind == "mail" else frozenset()
            page[key] = Info(flags, item.size or 0, _when(item.datetime_received))
            self._changekeys[key] = item.changekey
            self._sizes[key] = item.size or 0
        elif change == "create":
            log.debug("%s: skipping a %s (not mail)", self.name, type(item).__name__)

    def cursor(self) -> dict:
        return {"sync_state": self._sync_state} if self._sync_state else {}

    def unchanged(self, cursor: dict) -> bool:
        """No change since `cursor`: one SyncFolderItems asking for a single change."""
        from exchangelib.services import SyncFolderItems

        state = cursor.get("sync_state")
        if not state:
            return False
        service = SyncFolderItems(account=self.store.account)
        try:
            changes = self._call(
                "SyncFolderItems",
                lambda: list(
                    service.call(
                        folder=self.folder,
                        shape="IdOnly",
                        additional_fields=set(),
                        sync_state=state,
                        ignore=None,
                        max_changes_returned=1,
                        sync_scope=None,
                    )
                ),
            )
        except _SyncStateError:
            return False
        if changes:
            return False
        self._sync_state = state
        return True

    def persists(self, flag: str) -> bool:
        return self.kind == "mail" and flag not in (DRAFT, DELETED)

    def version(self, key: str) -> str | None:
        return self._changekeys.get(key)

    def recall_versions(self, versions: Mapping[str, str]) -> None:
        for key, changekey in versions.items():
            self._changekeys.setdefault(key, changekey)

    # bodies ---------------------------------------------------------------------------
    def fetch(self, key: str) -> Body:
        return self._fetch_one(key)

    def fetch_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | MessageError]]:
        batch: list[str] = []
        size = 0
        for key in keys:
            item_size = self._sizes.get(key, 0)
            if batch and (size + item_size > FETCH_BATCH_BYTES or len(batch) >= FETCH_BATCH_MAX):
                yield from self._fetch_batch(batch)
                batch, size = [], 0
            batch.append(key)
            size += item_size
        if batch:
            yield from self._fetch_batch(batch)

    def _fetch_batch(self, keys: builtins.list[str]):
        account = self.store.account
        ids = [(key, self._changekeys.get(key)) for key in keys]
        results = self._call(
            "GetItem",
            lambda: list(account.fetch(ids=ids, only_fields=["mime_content"])),
        )
        for key, result in zip(keys, results, strict=False):
            if isinstance(result, Exception):
                code = type(result).__name__
                text = (
                    f"{self.store.url} {self.name}: the server cannot give message "
                    f"{key[:24]}... ({code}: {_clean(result)}); skipped"
                )
                log.warning("%s", text)
                yield key, MessageError(text)
                continue
            mime = getattr(result, "mime_content", None)
            if not mime:
                yield (
                    key,
                    MessageError(
                        f"{self.store.url} {self.name}: message {key[:24]}... has no MIME content"
                    ),
                )
                continue
            if isinstance(mime, str):
                mime = mime.encode("utf-8")
            yield key, to_lf(mime)

    # writing --------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.store.url}: opened read-only")

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        if self.kind != "mail":
            raise MessageError(
                f"{self.store.url} {self.name}: {self.kind} items are backed up (pulled) "
                "only; mailsync does not create them on the server"
            )
        message = new_message(_exchangelib(), self.store.account, self.folder, data, flags, arrival)
        try:
            self._call("CreateItem", message.save)
        except RefusedError:
            raise
        except MailsyncError as error:
            raise MessageError(str(error))
        key = message.id
        self._changekeys[key] = message.changekey
        self._sizes[key] = len(data)
        return key

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
            self._remove(keys)

    def _update(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        """UpdateItem of the fields these flags live in, guarded by the ChangeKey the
        listing saw (NeverOverwrite); a ChangeKey gone stale meanwhile is fetched again
        once, as the change is per flag and still what we want."""
        exl = _exchangelib()
        account = self.store.account
        keywords_add, keywords_remove = _keywords(add), _keywords(remove)
        for attempt in (1, 2):
            changekey = self._changekeys.get(key)
            categories: set[str] = set()
            # The item as it is now: for a ChangeKey we lack or that went stale, and for
            # the categories the keywords are merged into.
            if changekey is None or attempt == 2 or keywords_add or keywords_remove:
                current = self._call(
                    "GetItem",
                    lambda: list(account.fetch(ids=[(key, None)], only_fields=LIST_FIELDS)),
                )
                if not current or isinstance(current[0], Exception):
                    raise MessageError(
                        f"{self.store.url} {self.name}: message {key[:24]}... is gone"
                    )
                self._changekeys[key] = changekey = current[0].changekey
                categories = set(current[0].categories or ())
            message = exl.Message(account=account, id=key, changekey=changekey)
            fields = set_flag_fields(message, add, remove, categories)
            if not fields:
                return
            try:
                self._call(
                    "UpdateItem",
                    lambda m=message, f=fields: m.save(
                        update_fields=f, conflict_resolution="NeverOverwrite"
                    ),
                )
            except MailsyncError as error:
                if "ErrorIrresolvableConflict" not in str(error):
                    raise MessageError(str(error))
                if attempt == 2:
                    raise MessageError(
                        f"{self.store.url} {self.name}: message {key[:24]}... keeps changing; "
                        "flags not set"
                    )
                continue
            self._changekeys[key] = message.changekey
            return

    def _remove(self, keys: builtins.list[str]) -> None:
        exl = _exchangelib()
        account = self.store.account
        items = [
            exl.Message(account=account, id=key, changekey=self._changekeys.get(key))
            for key in keys
        ]
        delete_type = "HardDelete" if self.store.hard_delete else "MoveToDeletedItems"
        results = self._call(
            "DeleteItem",
            lambda: list(account.bulk_delete(ids=items, delete_type=delete_type)),
        )
        for key, result in zip(keys, results, strict=False):
            if isinstance(result, Exception) and type(result).__name__ != "ErrorItemNotFound":
                raise MessageError(
                    f"{self.store.url} {self.name}: cannot delete message {key[:24]}... "
                    f"({_clean(result)})"
                )
            self._changekeys.pop(key, None)

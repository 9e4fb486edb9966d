"""Graph calendars and contact folders: backed up (pulled) only, into the vdirs of a local
Maildir tree (one .ics per event or series, one .vcf per contact), as the EWS store does.

Keys: a contact's id; a single event's id; for a recurring series, its master's id (one
file holds the series with its changed occurrences).  Listing is by delta, page by page
like mail (graph_folder.GraphFolder.pages): ``contacts/delta`` of a contact folder, and
``calendarView/delta`` of a calendar over the store's calendar_window (by default five
years before the run to two years after it; an event that leaves the window is reported
removed, and a pull keeps its file).  calendarView lists the occurrences and exceptions
of a series, never its master: each names the master (seriesMasterId), whose key is
listed instead.  Bodies are
made from Graph's JSON by graph_vcard.contact_to_vcf and graph_ical.event_to_ics (a
series: GET of the master, and every page of its ``instances`` over the window: the
exceptions, and the cancelled occurrences as those the pattern makes that ``instances``
leaves out, graph_ical.cancelled_occurrences; Graph v1.0 has no list of them).  A series
is read only when its version changed.

Items change on the server (``mutable_items``): version() is a contact's or single
event's changeKey; a series has none of its own in calendarView, so its version is a
digest of the ids and changeKeys of the occurrences and exceptions (and the removals)
the delta has named for it so far: an incremental delta names a series only when one of
them changed, and a new exception or a changed master gives new changeKeys.  The engine
then copies the item again over its old file.  A removal of an occurrence whose series
this process has not seen (a cancelled occurrence, seen by the next run) names no series:
the calendar's events are listed once, each known series is read again and each known
item gone is removed (_unattributed_removals).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

from mailsync.errors import FolderError, MailsyncError, MessageError, StoreError
from mailsync.message import Body, Info, to_lf
from mailsync.stores.base import PagedFolder
from mailsync.stores.graph import GraphError, TooLarge
from mailsync.stores.graph_folder import PAGE_SIZE, VOID_DELTA, _json_object, _when, delta_page

if TYPE_CHECKING:
    from mailsync.stores.graph import GraphStore

log = logging.getLogger("mailsync")

EVENTS_PAGE = 500  # $top of events and instances lists (Graph pages them with nextLinks)
MAX_INSTANCE_PAGES = 200  # 100,000 instances: a daily series over 270 years
# How much wider than the window a series' instances are listed (see _instances).
INSTANCES_MARGIN = dt.timedelta(days=31)


class GraphItemsFolder(PagedFolder):
    """A calendar (`kind` "calendar") or contact folder ("contacts") of the mailbox.
    `collection`: its URL relative to the mailbox (``calendars/ID``, ``contactFolders/ID``,
    or ``contacts``'s parent "" for the default contact folder)."""

    validity = ""
    mutable_items = True

    def __init__(self, store: GraphStore, name: str, kind: str, collection: str):
        self.store = store
        self.name = name
        self.kind = kind
        self.collection = collection
        self.read_only = store.read_only
        self.where = f"{store.url} {name}"
        self._link: str | None = None
        self._items: dict[str, dict] = {}  # key -> the JSON a delta page gave (not series)
        self._series_of: dict[str, str] = {}  # occurrence id -> its master's id
        self._versions: dict[str, str] = {}  # key -> version() (see the module's docstring)
        # Removals of occurrences of series the delta named to another process (see
        # _unattributed_removals).
        self._removed_unknown: list[str] = []
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        back, ahead = store.calendar_window
        self._span = (now - back, now + ahead)
        self._window = _window_params(*self._span)

    def __repr__(self) -> str:
        return f"<GraphItemsFolder {self.store.url} {self.name}>"

    def _get(self, url: str, what: str, params: dict | None = None) -> dict:
        try:
            _status, content = self.store.request(
                "GET", url, what=what, where=self.where, params=params
            )
        except TooLarge as error:
            raise FolderError(str(error))
        return _json_object(content, self.where)

    # listing --------------------------------------------------------------------------
    def pages(
        self, cursor: dict, known: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[dict[str, Info | None] | None, dict]]:
        """As GraphFolder.pages: the delta of the collection, page by page."""
        link = (cursor or {}).get("link")
        if link:
            url, params = link, None
        elif self.kind == "contacts":
            url, params = f"{self.collection}/contacts/delta".lstrip("/"), None
        else:
            url, params = f"{self.collection}/calendarView/delta", dict(self._window)
        headers = {"Prefer": f'IdType="ImmutableId", odata.maxpagesize={PAGE_SIZE}'}
        while True:
            try:
                _status, content = self.store.request(
                    "GET", url, what="delta", where=self.where, params=params, headers=headers
                )
            except GraphError as error:
                if link and (error.status == 410 or error.code in VOID_DELTA):
                    log.warning(
                        "%s: Graph no longer knows the last delta link (%s); listing the "
                        "folder again (items already here are matched, not downloaded again)",
                        self.where,
                        error.code or f"HTTP {error.status}",
                    )
                    yield None, {}
                    yield from self.pages({}, known)
                    return
                raise FolderError(str(error))
            except TooLarge as error:
                raise FolderError(str(error))
            entries, next_link, delta_link = delta_page(content, self.where)
            page: dict[str, Info | None] = {}
            for entry in entries:
                self._apply(page, entry, known)
            if next_link:
                yield page, {"link": next_link}
                url, params = next_link, None
                continue
            if self._removed_unknown:
                self._unattributed_removals(page, known)
            self._link = delta_link
            yield page, {"link": delta_link}
            return

    def _apply(self, page: dict[str, Info | None], entry: dict, known: Mapping) -> None:
        item_id = entry.get("id")
        if not isinstance(item_id, str) or not item_id:
            return
        arrival = _when(entry.get("createdDateTime"))
        change_key = entry.get("changeKey")
        change_key = change_key if isinstance(change_key, str) else ""
        if "@removed" in entry:
            master = self._series_of.get(item_id)
            if master is not None:  # one occurrence gone: the series is still there
                page.setdefault(master, Info(frozenset(), 0, 0.0))
                self._series_version(master, f"removed {item_id}")
            elif item_id not in self._series_of.values():
                page[item_id] = None
                self._items.pop(item_id, None)
                self._versions.pop(item_id, None)
                if self.kind == "calendar" and item_id not in known:
                    self._removed_unknown.append(item_id)
            return
        master = entry.get("seriesMasterId")
        if self.kind == "calendar" and isinstance(master, str) and master:
            self._series_of[item_id] = master
            self._series_version(master, f"{item_id} {change_key}")
            if master not in page:
                page[master] = Info(frozenset(), 0, arrival)
            return
        self._items[item_id] = entry
        if change_key:
            self._versions[item_id] = change_key
        else:
            self._versions.pop(item_id, None)
        page[item_id] = Info(frozenset(), 0, arrival)

    def _unattributed_removals(self, page: dict[str, Info | None], known: Mapping) -> None:
        """The delta removed ids this folder never had as items: occurrences of a series
        (cancelled, or all of a deleted series), named to the run that first listed them;
        nothing says which series (their ids only in that run's memory).  Each known
        series still in the calendar changes version (read again: an occurrence gone is
        an EXDATE), and each known item the calendar no longer holds is removed.  One
        listing of the calendar's events, only in a round with such removals."""
        removals, self._removed_unknown = self._removed_unknown, []
        listed: dict[str, str] = {}  # id -> type
        url: str | None = f"{self.collection}/events"
        params: dict | None = {"$select": "id,type", "$top": str(EVENTS_PAGE)}
        while url:
            try:
                answer = self._get(url, "listing the calendar's events", params=params)
            except GraphError as error:
                raise FolderError(str(error))
            for event in answer.get("value") or ():
                if isinstance(event, dict) and isinstance(event.get("id"), str):
                    listed[event["id"]] = str(event.get("type") or "")
            link = answer.get("@odata.nextLink")
            url, params = (link, None) if isinstance(link, str) and link else (None, None)
        note = "removed " + " ".join(sorted(removals))
        for key in known:
            if key in page:
                continue
            kind = listed.get(key)
            if kind is None:
                page[key] = None
                self._versions.pop(key, None)
            elif kind == "seriesMaster":
                self._series_version(key, note)
                page[key] = Info(frozenset(), 0, 0.0)

    def _series_version(self, master: str, instance: str) -> None:
        """Fold what the delta says of one instance of series `master` into its version."""
        before = self._versions.get(master, "")
        digest = hashlib.sha256(f"{before}\n{instance}".encode()).hexdigest()[:32]
        self._versions[master] = f"series:{digest}"

    def version(self, key: str) -> str | None:
        return self._versions.get(key)

    def recall_versions(self, versions: Mapping[str, str]) -> None:
        for key, version in versions.items():
            self._versions.setdefault(key, version)

    def cursor(self) -> dict:
        return {"link": self._link} if self._link else {}

    def persists(self, flag: str) -> bool:
        return False  # items have no flags

    # bodies ---------------------------------------------------------------------------
    def fetch(self, key: str) -> Body:
        return self._fetch_one(key)

    def fetch_many(self, keys: Iterable[str]) -> Iterator[tuple[str, Body | MessageError]]:
        for key in keys:
            try:
                yield key, to_lf(self._item(key))
            except MessageError as error:
                yield key, error

    def _item(self, key: str) -> bytes:
        from mailsync.stores.graph_ical import cancelled_occurrences, event_to_ics
        from mailsync.stores.graph_vcard import contact_to_vcf

        quoted = quote(key, safe="")
        try:
            entry = self._items.get(key)
            if self.kind == "contacts":
                if entry is None:
                    entry = self._get(f"contacts/{quoted}", "reading a contact")
                return contact_to_vcf(entry)
            if entry is None:
                entry = self._get(f"events/{quoted}", "reading an event")
            exceptions: list[dict] = []
            cancelled: list = []
            if entry.get("type") == "seriesMaster" or entry.get("recurrence"):
                instances = self._instances(quoted)
                exceptions = [event for event in instances if event.get("type") == "exception"]
                cancelled = cancelled_occurrences(entry, instances, *self._span)
            return event_to_ics(entry, exceptions, cancelled)
        except GraphError as error:
            if error.status in (404, 400):
                raise MessageError(f"{self.where}: item {key[:24]}... is gone ({error.code})")
            if error.status in (429, 503):
                raise FolderError(str(error))
            raise MessageError(f"{self.where}: Graph cannot give item {key[:24]}... ({error})")
        except ValueError as error:
            text = f"{self.where}: item {key[:24]}... cannot be converted ({error}); skipped"
            log.warning("%s", text)
            raise MessageError(text)

    def _instances(self, quoted: str) -> list[dict]:
        """Every occurrence and exception of series `quoted` (its id, URL-quoted) Graph
        lists over the window widened by INSTANCES_MARGIN on each side (an exception moved
        out of the window is still found in its original place), every page."""
        start, end = self._span
        url: str | None = f"events/{quoted}/instances"
        params: dict | None = {
            **_window_params(start - INSTANCES_MARGIN, end + INSTANCES_MARGIN),
            "$top": str(EVENTS_PAGE),
        }
        found: list[dict] = []
        for _ in range(MAX_INSTANCE_PAGES):
            if url is None:
                return found
            answer = self._get(url, "reading a series", params=params)
            found += [event for event in answer.get("value") or () if isinstance(event, dict)]
            link = answer.get("@odata.nextLink")
            url, params = (link, None) if isinstance(link, str) and link else (None, None)
        if url is None:
            return found
        raise ValueError(f"the series has more than {MAX_INSTANCE_PAGES} pages of instances")

    # writing: pulled only ---------------------------------------------------------------
    def _refuse(self) -> MailsyncError:
        if self.read_only:
            return StoreError(f"{self.store.url}: opened read-only")
        return MessageError(
            f"{self.where}: {self.kind} items are backed up (pulled) only; mailsync does not "
            "change them on the server"
        )

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        raise self._refuse()

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        raise self._refuse()

    def delete(self, key: str) -> str:
        raise self._refuse()


def _window_params(start: dt.datetime, end: dt.datetime) -> dict[str, str]:
    """startDateTime and endDateTime, in UTC, as calendarView and instances take them."""
    return {
        "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }

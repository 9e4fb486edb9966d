"""A stateful fake Microsoft Graph server (v1.0, the Outlook mail, calendar and contacts
resources) on 127.0.0.1, for tests of mailsync's Graph store.  No Microsoft 365 can be reached
from here, so this server is written from Microsoft's documentation; each behaviour below names
the page it follows (learn.microsoft.com/graph/..., the same text as the Markdown sources in
github.com/microsoftgraph/microsoft-graph-docs-contrib).  Where the documentation is silent the
fake makes a choice and says so ("fake's choice"): a store must not depend on those.

Wire protocol
-------------
* HTTP/1.1 (keep-alive), plain or HTTPS (``ssl_context``), JSON bodies with ``Content-Type:
  application/json``. Resources live under ``/v1.0/me/...`` and ``/v1.0/users/{id |
  userPrincipalName}/...``; the user principal name compares case-insensitively, an unknown user
  is 404 ``ErrorInvalidUser``. Path segment names are case-insensitive (the docs write both
  ``mailFolders`` and ``mailfolders``), ids are not; the OData key form ``mailFolders('ID')`` is
  accepted (Graph's own nextLinks use it). Nested folders may be addressed as
  ``mailFolders/A/childFolders/B/...``.
* Errors (concepts/errors.md): ``{"error": {"code", "message", "innerError": {"date",
  "request-id", "client-request-id"}}}`` with the HTTP status. Every response carries
  ``request-id`` and echoes ``client-request-id``.
* Auth: ``Authorization: Bearer TOKEN`` with tokens the test issues (``add_token``). A missing,
  unknown or expired token is 401 ``InvalidAuthenticationToken`` ("Access token is empty." /
  "Access token has expired or is not yet valid." / "IDX14100: JWT is not well formed...") with
  ``WWW-Authenticate: Bearer realm="", authorization_uri="https://login.microsoftonline.com/
  common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`` as Graph sends
  it. ``/me`` with an application (client-credentials) token is 400 BadRequest "/me request is
  only valid with delegated authentication flow." (Graph's answer). A valid token of another
  user is 403 ``ErrorAccessDenied`` "Access is denied. Check credentials and try again."
* Throttling (concepts/throttling-limits.md, "Outlook service limits", per app ID and mailbox:
  10,000 requests per 10 minutes, 4 concurrent requests, 150 MB uploaded per 5 minutes;
  concepts/throttling.md: 429 with ``Retry-After``; errors.md: 503 may carry ``Retry-After``;
  the body seen from Outlook, Microsoft Q&A 2143058 and 1660054): a fifth request in flight to
  the mailbox is 429 ``ApplicationThrottled`` "Application is over its MailboxConcurrency
  limit." with ``Retry-After: 1``. ``throttle()`` makes chosen requests answer 429
  (``ApplicationThrottled``, "... RequestRate limit.") or 503 (``serviceNotAvailable``) with
  ``Retry-After``. Auth is checked before throttling.

Mail (resources/mailfolder.md, resources/message.md)
----------------------------------------------------
* Folders: the hidden root ``msgfolderroot`` ("Top of Information Store") holds Inbox, Drafts,
  Sent Items, Deleted Items, Junk Email, Outbox, Archive and Conversation History, addressed by
  id or by well-known name (``inbox``, ``drafts``, ``sentitems``, ``deleteditems``,
  ``junkemail``, ``outbox``, ``archive``, ``conversationhistory``, ``msgfolderroot``,
  ``recoverableitemsdeletions``; names compare case-insensitively).
  ``recoverableitemsdeletions`` (where DELETE puts messages) is outside msgfolderroot and never
  listed. ``GET mailFolders`` lists the children of msgfolderroot, ``childFolders`` the children
  of a folder; hidden folders (``isHidden``) only with ``includeHiddenFolders=true``
  (mailfolder-list.md). Lists are paged: 10 a page unless ``$top`` (at most 1000, fake's choice)
  with ``@odata.nextLink`` (``$skip``), as Graph does for collections (concepts/paging.md).
  Folder JSON: id, displayName, parentFolderId, childFolderCount, unreadItemCount,
  totalItemCount, sizeInBytes, isHidden. ``POST mailFolders`` / ``childFolders``
  (``displayName``, ``isHidden``) create (201; a sibling with the same name, case-insensitively,
  is 409 ``ErrorFolderExists``), ``PATCH`` renames (``displayName``), ``DELETE`` removes the
  folder and its subtree (fake's choice: Graph's page does not say where it goes), ``POST
  .../move`` (``destinationId``) moves it. Folder ids never change.
* Message lists (``mailFolders/{id}/messages``, and ``messages``: every message of the mailbox,
  "including the Deleted Items and Clutter folders", not Recoverable Items, user-list-messages.md)
  come newest first, paged like folder lists. ``$filter`` understands one expression,
  ``internetMessageId eq '<...>'`` (message.md: internetMessageId is "the message ID in the
  format specified by RFC2822"; OData doubles a quote inside a literal); any other ``$filter`` is
  501 (not modelled); ``$orderby``, ``$search`` and ``$count`` are ignored (a store should not
  need them).
* Messages: the MIME is stored as given; ``GET .../messages/{id}/$value`` returns it byte for
  byte (message-get.md, "Get MIME content"; Content-Type ``text/plain``, fake's choice) and
  counts the download in ``value_downloads``. JSON: id, @odata.etag (``W/"changeKey"``),
  changeKey, createdDateTime, lastModifiedDateTime, receivedDateTime, sentDateTime,
  hasAttachments, internetMessageId, subject, bodyPreview, importance, parentFolderId,
  conversationId, isRead, isDraft, body, sender, from, toRecipients, ccRecipients,
  bccRecipients, replyTo, flag {flagStatus}, categories, inferenceClassification; ``$select``
  (id and @odata.etag always) and ``$expand=singleValueExtendedProperties($filter=id eq 'Integer
  0x1081')`` (singlevaluelegacyextendedproperty-get.md; values are strings). ``Prefer:
  outlook.body-content-type="text"`` gives message and event bodies as text (HTML tags stripped:
  an approximation of Outlook's conversion).
* Ids: by default a message's id changes when it moves to another folder; with ``Prefer:
  IdType="ImmutableId"`` (outlook-immutable-id.md) responses carry an id that never changes.
  Both kinds of id are accepted in URLs whatever the header. An id this server could not have
  made is 400 ``ErrorInvalidIdMalformed``; a well-formed id of nothing is 404
  ``ErrorItemNotFound`` (an old id of a moved message included).
* ``PATCH`` a message: isRead, categories, flag {flagStatus notFlagged/flagged/complete},
  importance, inferenceClassification, singleValueExtendedProperties ([{id, value}], added or
  replaced); subject/body only on drafts. Anything else is 400 ``ErrorInvalidProperty`` (fake's
  choice). Every change gives a new changeKey and shows in delta.
* ``DELETE`` a message moves it to Recoverable Items\\Deletions, out of every listed folder
  (fake's reading: message-delete.md does not say, docs issue
  microsoftgraph/microsoft-graph-docs-contrib#285 "Specify delete action" asks; Microsoft's own
  SDK feedback, msgraph-sdk-powershell#3265, says deleted messages "can be recovered from
  recoverable items"). Deleted Items is reached by ``move`` with ``destinationId:
  deleteditems``; ``POST .../permanentDelete`` (message-permanentdelete.md) removes it from
  everything a client can see (Purges is not modelled). ``POST .../move`` and ``.../copy``
  (``destinationId``: id or well-known name) answer 201 with the moved/new message.
* ``POST .../messages`` with ``Content-Type: text/plain`` and a base64 MIME body creates a
  *draft* (isDraft true) in Drafts, or in the folder of ``mailFolders/{id}/messages``
  (user-post-messages.md, "Create a message in MIME format"); bad base64 is 400
  ``ErrorMimeContentInvalidBase64String`` "Invalid base64 string for MIME content.". A JSON body
  (subject, body, recipients) creates a draft with a minimal MIME. There is no way to create a
  non-draft message through Graph's documented API; ``add_message`` (test API) does.

Delta (concepts/delta-query-overview.md, delta-query-messages.md, delta-query-events.md,
api/message-delta.md, api/event-delta.md, api/contact-delta.md)
----------------------------------------------------------------------------------------
* ``GET mailFolders/{id}/messages/delta``, ``calendars/{id}/calendarView/delta?startDateTime=
  &endDateTime=`` (also ``calendarView/delta`` and ``calendar/calendarView/delta`` for the
  default calendar), ``contactFolders/{id}/contacts/delta`` and ``contacts/delta`` (the default
  folder). A round is pages linked by ``@odata.nextLink`` (``$skiptoken``) ending with an
  ``@odata.deltaLink`` (``$deltatoken``); the query options of the first request (``$select``,
  ``$expand``, ``changeType``, the window) are encoded in the tokens and not repeated. Page
  size: ``Prefer: odata.maxpagesize=N`` (answered with ``Preference-Applied``), default 10, at
  most ``max_page_size``. Tokens are opaque random strings naming server-side state ("internal
  delta token cache", delta-query-overview.md, Token duration).
* A round reports the difference between what the client was sent at the end of the previous
  round (id -> changeKey) and the collection now: new or changed items in full, items gone
  (deleted, moved out, out of the window, cancelled occurrences) as ``{"@odata.type", "id",
  "@removed": {"reason": "deleted"}}`` with the id the client knew. The reason is
  ``removed_reason`` ("deleted" as in the Outlook examples; "changed" is documented for
  directory objects). The first round lists what exists, never removals. Each round is a
  snapshot taken at its first page: pages are exact, and a round can be resumed from any
  nextLink (a client killed between pages). ``changeType=created|updated|deleted`` filters
  message rounds (delta-query-messages.md).
* A void token (``invalidate_delta_tokens()``, or evicted beyond ``delta_token_limit``) is 410
  Gone with ``{"error": {"code": "syncStateNotFound"}}`` (or ``resyncRequired``, the two codes
  errors.md gives for expired delta tokens) and a ``Location`` header with the initial delta URL
  ("Synchronization reset", delta-query-overview.md). A string that is not a token of this
  server is 400 ``BadRequest`` (fake's choice).
* calendarView delta (delta-query-events.md): ``$select`` is not supported (400); the view holds
  single instances, occurrences and exceptions of series in the window, never series masters
  (GET ``events/{seriesMasterId}`` gives the master with its recurrence;
  ``calendars/{id}/events`` lists singles and masters). Times come back in UTC unless ``Prefer:
  outlook.timezone="Zone"`` (event.md); ``originalStartTimeZone`` / ``originalEndTimeZone`` keep
  the zone the event was made in. All-day events are not converted: they come back as midnight
  to midnight in the zone they were made in, and a window catches them by that zone's midnights
  (Microsoft Q&A 1382503 and 970643; the UTC default is event.md's "start ... By default, the
  start time is in UTC").

Calendars and contacts
----------------------
``GET calendars``, ``calendar``, ``calendars/{id}``, ``calendars/{id}/events`` (single events
and series masters), ``events/{id}`` (an occurrence id works too), ``events/{id}/instances`` and
``calendarView`` (both with ``startDateTime``/``endDateTime``, paged); ``contactFolders``
(children of the default Contacts folder, contactfolder-list.md), ``contactFolders/{id}``,
``.../childFolders``, ``.../contacts``, ``contacts`` (default folder), ``contacts/{id}``. Events
and contacts are given by the test as Graph JSON and returned with the server's id, changeKey,
@odata.etag, createdDateTime and lastModifiedDateTime. Recurrence (patternedrecurrence.md):
daily, weekly, absoluteMonthly, relativeMonthly, absoluteYearly, relativeYearly patterns;
endDate, noEnd and numbered ranges. An occurrence is ``type: occurrence`` with
``seriesMasterId`` and ``originalStart``; ``modify_occurrence`` makes it an ``exception``;
``cancel_occurrence`` removes it from the view, as ``DELETE events/{id}`` and ``POST
events/{id}/cancel`` of its id do (event-delete.md, event-cancel.md: cancel is the
organizer's only, else 400); those of a single event or a master remove the whole event.

Folder hierarchy and batching
-----------------------------
``GET mailFolders/delta`` (mailfolder-delta.md) follows the same rules over every folder below
msgfolderroot (hidden ones included, as isHidden says what they are): new, renamed and moved
folders in full, deleted ones as ``@removed``.  ``POST /v1.0/$batch`` (json-batching.md): see
``FakeGraph._batch``.

Test API
--------
Server: ``FakeGraph(user="alice@example.org", *, ssl_context=None, max_page_size=1000)``;
``start()``/``stop()`` or ``with``; ``url`` (``http://127.0.0.1:PORT``), ``base`` (``url`` +
``/v1.0``), ``user``, ``user_id``.  The fixtures (conftest.py) add ``token`` (a delegated
token) and, over HTTPS, ``cafile``.

Tokens: ``add_token(token=None, *, lifetime=3600, app=False, user=None) -> token`` (``app``: a
client-credentials token; ``user``: whose, the mailbox's by default), ``expire_token(token)``,
``trust(oauth_server)``: also accept the access tokens of tests/servers/oauth.py's server
(valid while it says so; client-credentials tokens, which come without a refresh token, are
application tokens), so that tests can log in with ``mailsync login`` and then use Graph.

Mail (``path``: a well-known name then display names, ``"inbox/Sub"``; ``key``: either id of
a message): ``folder_id(path)``, ``add_folder(parent_path, name, hidden=False) -> id``,
``rename_folder(path, name)``, ``delete_folder(path)``, ``add_message(folder_path, mime, *,
is_read=False, flag="notFlagged", categories=(), received=None, is_draft=False,
last_verb=None) -> immutable id`` (delivers as mail flow does: not a draft),
``update_message(key, *, is_read, flag, categories, last_verb)``, ``move_message(key,
folder_path) -> new id``, ``delete_message(key, hard=False)`` (soft: to Recoverable Items),
``message(key) -> dict`` (immutable_id, id, folder_id, mime, is_read, flag, categories,
is_draft, change_key, extended), ``messages(folder_path) -> [dict]``.

Calendars (``calendar``: an id, a name or None for the default one): ``calendar_id(name=None)``,
``add_calendar(name) -> id``, ``add_event(calendar, event_json) -> id``, ``update_event(id,
**fields)``, ``delete_event(id)``, ``modify_occurrence(master_id, date, **fields) -> id``,
``cancel_occurrence(master_id, date)``, ``instances(master_id, start, end) -> [event_json]``.

Contacts: ``contact_folder_id(name=None)``, ``add_contact_folder(name, parent=None) -> id``,
``add_contact(folder, contact_json) -> id``, ``update_contact(id, **fields)``,
``delete_contact(id)``.

Faults: ``throttle(n=1, *, status=429, retry_after=1, match=None, method=None)`` (the next n
authenticated requests, or $batch steps, whose path contains ``match``); ``fail(n=1, *,
status, code, message=..., match=None, method=None)`` (the same with any error, without
Retry-After); ``hold(match=None)`` /
``release()`` (authenticated requests, or those whose path contains ``match``, wait before
being served, counted in ``in_flight``); ``invalidate_delta_tokens(code="syncStateNotFound")``;
attributes ``delta_token_limit`` (None), ``removed_reason`` ("deleted"), ``replays`` (False:
when set, an incremental round also repeats what the previous round gave in full, as
delta-query-overview.md, "Replays", warns may happen),
``concurrency_limit`` (4), ``max_page_size``.

Records: ``requests`` (``Request(method, path, query, status, prefer, batch)`` for every
request and every $batch step, logged before the answer is sent), ``value_downloads``
(Counter of successful ``$value`` downloads by immutable id), ``sent_delta_pages``.
"""

from __future__ import annotations

import base64
import binascii
import calendar as calendar_module
import copy
import email.parser
import email.policy
import hmac
import html
import json
import re
import secrets
import socket
import ssl
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from servers.httpfake import ThreadedHTTPFake

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
JSON_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"
DEFAULT_PAGE_SIZE = 10
_PARSER = email.parser.BytesParser(policy=email.policy.default)

# Windows time zone names Graph accepts beside IANA names (a few; enough for tests).
WINDOWS_ZONES = {
    "UTC": "UTC",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Eastern Standard Time": "America/New_York",
    "Pacific Standard Time": "America/Los_Angeles",
    "Tokyo Standard Time": "Asia/Tokyo",
}

WELL_KNOWN_MAIL = (
    # (well-known name, display name, parent well-known name, hidden)
    ("msgfolderroot", "Top of Information Store", None, False),
    ("inbox", "Inbox", "msgfolderroot", False),
    ("drafts", "Drafts", "msgfolderroot", False),
    ("sentitems", "Sent Items", "msgfolderroot", False),
    ("deleteditems", "Deleted Items", "msgfolderroot", False),
    ("junkemail", "Junk Email", "msgfolderroot", False),
    ("outbox", "Outbox", "msgfolderroot", False),
    ("archive", "Archive", "msgfolderroot", False),
    ("conversationhistory", "Conversation History", "msgfolderroot", False),
    ("recoverableitemsdeletions", "Deletions", None, True),
)
WRITABLE_MESSAGE = {
    "isRead",
    "categories",
    "flag",
    "importance",
    "inferenceClassification",
    "singleValueExtendedProperties",
}
DRAFT_WRITABLE = {"subject", "body", "toRecipients", "ccRecipients", "bccRecipients"}


class Request(NamedTuple):
    method: str
    path: str
    query: dict
    status: int
    prefer: str
    batch: bool = False  # a step of a $batch request (the $batch POST is logged too)


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(WINDOWS_ZONES.get(name, name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise GraphError(
            400, "TimeZoneNotSupportedException", f"'{name}' is not supported."
        ) from exc


def _parse_local(text: str) -> datetime:
    """Graph's dateTimeTimeZone.dateTime: ISO 8601 without offset, up to 7 decimals."""
    main, _, fraction = text.partition(".")
    value = datetime.fromisoformat(main.rstrip("Z"))
    return value.replace(tzinfo=None)


def _fmt_local(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.0000000")


def _parse_window(text: str | None, name: str) -> datetime:
    if not text:
        raise GraphError(
            400,
            "ErrorInvalidParameter",
            f"This request requires a time window specified by "
            f"the query string parameters StartDateTime and EndDateTime. ({name} missing)",
        )
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise GraphError(400, "ErrorInvalidParameter", f"Invalid {name}: {text}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _mime_summary(mime: bytes) -> dict:
    """The message properties Graph derives from the MIME."""
    out: dict = {
        "subject": None,
        "internetMessageId": None,
        "sentDateTime": None,
        "from": None,
        "toRecipients": [],
        "ccRecipients": [],
        "bccRecipients": [],
        "replyTo": [],
        "body": {"contentType": "text", "content": ""},
        "hasAttachments": False,
    }
    try:
        msg = _PARSER.parsebytes(mime)
    except Exception:
        return out

    def addresses(name: str) -> list:
        try:
            header = msg.get(name)
            if header is None:
                return []
            return [
                {"emailAddress": {"name": a.display_name or a.addr_spec, "address": a.addr_spec}}
                for a in header.addresses
            ]
        except Exception:
            return []

    try:
        out["subject"] = str(msg["Subject"]) if msg.get("Subject") is not None else None
        out["internetMessageId"] = str(msg["Message-ID"]) if msg.get("Message-ID") else None
        if msg.get("Date") is not None and msg["Date"].datetime is not None:
            sent = msg["Date"].datetime
            out["sentDateTime"] = _iso(sent if sent.tzinfo else sent.replace(tzinfo=UTC))
    except Exception:
        pass
    senders = addresses("From")
    out["from"] = senders[0] if senders else None
    out["toRecipients"] = addresses("To")
    out["ccRecipients"] = addresses("Cc")
    out["bccRecipients"] = addresses("Bcc")
    out["replyTo"] = addresses("Reply-To")
    try:
        part = msg.get_body(preferencelist=("html", "plain"))
        if part is not None:
            kind = "html" if part.get_content_subtype() == "html" else "text"
            out["body"] = {"contentType": kind, "content": part.get_content()}
        if msg.is_multipart():
            out["hasAttachments"] = any(True for _ in msg.iter_attachments())
    except Exception:
        pass
    return out


def _message_id_filter(ctx) -> str | None:
    """The Message-ID of a ``$filter=internetMessageId eq '...'`` (quotes doubled inside
    the literal, as OData writes them), None without a $filter; 501 for another one."""
    value = ctx.query.get("$filter")
    if not value:
        return None
    match = re.fullmatch(r"\s*internetMessageId\s+eq\s+'((?:[^']|'')*)'\s*", value)
    if match is None:
        raise GraphError(501, "notSupported", f"The fake does not model $filter={value}.")
    return match.group(1).replace("''", "'")


def _as_text(body: dict | None) -> dict:
    """An itemBody as ``Prefer: outlook.body-content-type="text"`` gives it: HTML bodies lose
    their tags (a plain approximation of Outlook's conversion)."""
    body = body or {"contentType": "text", "content": ""}
    if str(body.get("contentType", "")).lower() != "html":
        return {"contentType": "text", "content": body.get("content") or ""}
    text = re.sub(r"<(br|/p|/div)\b[^>]*>", "\n", body.get("content") or "", flags=re.I)
    text = re.sub(r"<[^>]*>", "", text)
    return {"contentType": "text", "content": html.unescape(text).strip()}


def _minimal_mime(data: dict) -> bytes:
    def addrs(key: str) -> str:
        return ", ".join(r["emailAddress"]["address"] for r in data.get(key) or [])

    lines = [f"Subject: {data.get('subject') or ''}"]
    for header, key in (("To", "toRecipients"), ("Cc", "ccRecipients")):
        if data.get(key):
            lines.append(f"{header}: {addrs(key)}")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", ""]
    body = (data.get("body") or {}).get("content") or ""
    return ("\r\n".join(lines) + "\r\n" + body).encode()


# ------------------------------------------------------------------------------ recurrence

_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_INDEXES = {"first": 0, "second": 1, "third": 2, "fourth": 3, "last": -1}


def _nth_weekday(year: int, month: int, weekdays: list[str], index: str) -> date | None:
    days = [
        date(year, month, d)
        for d in range(1, calendar_module.monthrange(year, month)[1] + 1)
        if _WEEKDAYS[date(year, month, d).weekday()] in weekdays
    ]
    try:
        return days[_INDEXES[index]]
    except IndexError:
        return None


def _recurrence_dates(recurrence: dict, until: date, limit: int = 5000) -> list[date]:
    """The dates of a patternedRecurrence (patternedrecurrence.md, recurrencepattern.md,
    recurrencerange.md) up to ``until`` (inclusive)."""
    pattern, rng = recurrence["pattern"], recurrence["range"]
    kind = pattern["type"]
    interval = int(pattern.get("interval") or 1)
    start = date.fromisoformat(rng["startDate"])
    end = date.fromisoformat(rng["endDate"]) if rng.get("type") == "endDate" else None
    count = int(rng["numberOfOccurrences"]) if rng.get("type") == "numbered" else None
    last = min(until, end) if end else until
    out: list[date] = []

    def take(day: date) -> bool:
        if day < start:
            return True
        if day > last or (count is not None and len(out) >= count) or len(out) >= limit:
            return False
        out.append(day)
        return True

    if kind == "daily":
        day = start
        while take(day):
            day += timedelta(days=interval)
    elif kind == "weekly":
        days = [_WEEKDAYS.index(d.lower()) for d in pattern["daysOfWeek"]]
        first = (pattern.get("firstDayOfWeek") or "sunday").lower()
        week = start - timedelta(days=(start.weekday() - _WEEKDAYS.index(first)) % 7)
        going = True
        while going:
            for offset in sorted((d - _WEEKDAYS.index(first)) % 7 for d in days):
                if not take(week + timedelta(days=offset)):
                    going = False
                    break
            week += timedelta(weeks=interval)
    elif kind in ("absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"):
        yearly = kind.endswith("Yearly")
        step = 12 * interval if yearly else interval
        month_index = start.year * 12 + (
            (int(pattern["month"]) - 1) if yearly else (start.month - 1)
        )
        if yearly and month_index < start.year * 12 + start.month - 1:
            month_index += 12
        while True:
            year, month = divmod(month_index, 12)
            month += 1
            if date(year, month, 1) > last:
                break
            if kind.startswith("absolute"):
                dom = int(pattern["dayOfMonth"])
                day = (
                    date(year, month, dom)
                    if dom <= calendar_module.monthrange(year, month)[1]
                    else None
                )
            else:
                weekdays = [d.lower() for d in pattern["daysOfWeek"]]
                day = _nth_weekday(year, month, weekdays, (pattern.get("index") or "first").lower())
            if day is not None and not take(day):
                break
            month_index += step
    else:
        raise GraphError(400, "ErrorInvalidRecurrence", f"Unknown recurrence type {kind!r}.")
    return out


# ------------------------------------------------------------------------------ the model


@dataclass
class _MailFolder:
    id: str
    name: str
    parent_id: str | None
    well_known: str | None = None
    hidden: bool = False
    version: int = 0  # bumped by a rename or a move: what mailFolders/delta compares


@dataclass
class _Message:
    immutable_id: str
    id: str
    folder_id: str
    mime: bytes
    change_key: str
    created: datetime
    modified: datetime
    received: datetime
    is_read: bool = False
    flag: str = "notFlagged"
    categories: list = field(default_factory=list)
    is_draft: bool = False
    importance: str = "normal"
    inference: str = "focused"
    extended: dict = field(default_factory=dict)  # lower-cased id -> (id, value)
    overrides: dict = field(default_factory=dict)  # draft properties set by PATCH


@dataclass
class _Calendar:
    id: str
    name: str
    is_default: bool = False


@dataclass
class _Event:
    id: str
    calendar_id: str
    data: dict
    change_key: str
    created: datetime
    modified: datetime
    exceptions: dict = field(default_factory=dict)  # date -> (id, fields, change_key)
    cancelled: set = field(default_factory=set)
    occurrence_ids: dict = field(default_factory=dict)  # date -> id


@dataclass
class _ContactFolder:
    id: str
    name: str
    parent_id: str | None


@dataclass
class _Contact:
    id: str
    folder_id: str
    data: dict
    change_key: str
    created: datetime
    modified: datetime


@dataclass
class _DeltaState:
    """What a deltatoken or skiptoken stands for.  ``sent``: key -> (client id, changeKey)
    as of the end of the round; ``pending``: the rendered objects still to page (skiptoken)."""

    kind: str  # "messages", "events", "contacts"
    collection: str
    params: dict
    sent: dict
    epoch: int
    initial_url: str
    pending: list = field(default_factory=list)
    final: bool = True
    reported: list = field(default_factory=list)  # keys the round gave in full (for replays)


@dataclass
class _Throttle:
    """Chosen requests answer an error instead of being served."""

    remaining: int
    status: int
    retry_after: int | None
    match: str | None
    method: str | None
    code: str = ""
    message: str = ""

    def error(self) -> GraphError:
        if self.code:
            code, text = self.code, self.message
        elif self.status == 429:
            code, text = "ApplicationThrottled", "Application is over its RequestRate limit."
        else:
            code, text = "serviceNotAvailable", "The service is temporarily unavailable."
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return GraphError(self.status, code, text, headers)


class FakeGraph(ThreadedHTTPFake):
    """The fake server; see the module docstring for the protocol and the test API."""

    def __init__(
        self,
        user: str = "alice@example.org",
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_page_size: int = 1000,
    ):
        self.user = user
        self.user_id = str(uuid.uuid4())
        self.ssl_context = ssl_context
        self.max_page_size = max_page_size
        self.concurrency_limit = 4
        self.removed_reason = "deleted"
        self.replays = False
        self.delta_token_limit: int | None = None
        self.requests: list[Request] = []
        self.value_downloads: Counter = Counter()
        self.sent_delta_pages = 0
        self.url = ""
        self.base = ""
        self.port = 0
        self.in_flight = 0
        self._lock = threading.RLock()
        self._gate = threading.Event()
        self._gate.set()
        self._hold_match: str | None = None
        self._tokens: dict[str, tuple[float, bool, str]] = {}
        self._oauth = None
        self._throttles: list[_Throttle] = []
        self._epoch = 0
        self._void_code = "syncStateNotFound"
        self._delta_tokens: dict[str, _DeltaState] = {}
        self._mail_folders: dict[str, _MailFolder] = {}
        self._well_known: dict[str, str] = {}
        self._messages: dict[str, _Message] = {}  # by immutable id
        self._message_ids: dict[str, str] = {}  # current regular id -> immutable id
        self._evicted_tokens: dict[str, str] = {}  # token -> the initial delta URL
        self._calendars: dict[str, _Calendar] = {}
        self._events: dict[str, _Event] = {}
        self._contact_folders: dict[str, _ContactFolder] = {}
        self._contacts: dict[str, _Contact] = {}
        self._issued: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        for well_known, name, parent, hidden in WELL_KNOWN_MAIL:
            parent_id = self._well_known[parent] if parent else None
            folder = _MailFolder(self._new_id("AAMkAF"), name, parent_id, well_known, hidden)
            self._mail_folders[folder.id] = folder
            self._well_known[well_known] = folder.id
        default = _Calendar(self._new_id("AAMkAC"), "Calendar", True)
        self._calendars[default.id] = default
        contacts = _ContactFolder(self._new_id("AAMkAK"), "Contacts", None)
        self._contact_folders[contacts.id] = contacts
        self._default_contacts = contacts.id

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeGraph:
        self.url = self._serve(_Handler, "fakegraph")
        self.base = self.url + "/v1.0"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._gate.set()
        super().stop()

    # ---------------------------------------------------------------- ids

    def _new_id(self, prefix: str) -> str:
        """Graph ids are opaque base64 strings; these use the URL-safe alphabet with padding
        (so a client must percent-encode '=' or send it as is: both work)."""
        value = prefix + base64.urlsafe_b64encode(secrets.token_bytes(33)).decode() + "AAA="
        self._issued.add(value)
        return value

    @staticmethod
    def _change_key() -> str:
        return base64.b64encode(secrets.token_bytes(12)).decode()

    # ---------------------------------------------------------------- test API: auth, faults

    def add_token(
        self,
        token: str | None = None,
        *,
        lifetime: float = 3600,
        app: bool = False,
        user: str | None = None,
    ) -> str:
        """Issue an access token valid for ``lifetime`` seconds; ``app``: an application
        (client credentials) token, which cannot use /me; ``user``: whose token it is (the
        mailbox's user by default; another user's token gets 403 ErrorAccessDenied)."""
        token = token or ".".join(
            ("eyJ0eXAiOiJKV1Qi", secrets.token_urlsafe(24), secrets.token_urlsafe(8))
        )
        with self._lock:
            self._tokens[token] = (time.time() + lifetime, app, user or self.user)
        return token

    def expire_token(self, token: str) -> None:
        with self._lock:
            _, app, user = self._tokens[token]
            self._tokens[token] = (0.0, app, user)

    def trust(self, oauth) -> None:
        """Also accept the access tokens of ``oauth`` (tests/servers/oauth.py's OAuthServer):
        a token is valid while ``oauth`` says so; it is the token of its grant's user, an
        application token when it came without a refresh token (client credentials)."""
        self._oauth = oauth

    def throttle(
        self,
        n: int = 1,
        *,
        status: int = 429,
        retry_after: int = 1,
        match: str | None = None,
        method: str | None = None,
    ) -> None:
        with self._lock:
            self._throttles.append(_Throttle(n, status, retry_after, match, method))

    def fail(
        self,
        n: int = 1,
        *,
        status: int,
        code: str,
        message: str = "Injected by the test.",
        match: str | None = None,
        method: str | None = None,
    ) -> None:
        """The next n authenticated requests (or $batch steps) whose path contains ``match``
        answer ``status`` with the error ``code`` (no Retry-After): faults real servers
        produce at random, e.g. 500 generalException or 404 ErrorItemNotFound."""
        with self._lock:
            self._throttles.append(_Throttle(n, status, None, match, method, code, message))

    def hold(self, match: str | None = None) -> None:
        """Authenticated requests (whose path contains ``match``, if given) wait, counted in
        ``in_flight``, until ``release()``."""
        self._hold_match = match
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def invalidate_delta_tokens(self, code: str = "syncStateNotFound") -> None:
        with self._lock:
            self._epoch += 1
            self._void_code = code

    # ---------------------------------------------------------------- test API: mail

    def _mail_path(self, path: str) -> _MailFolder:
        parts = [p for p in path.split("/") if p]
        folder_id = self._well_known.get(parts[0].lower())
        if folder_id is None:
            raise KeyError(path)
        folder = self._mail_folders[folder_id]
        for name in parts[1:]:
            child = self._child_named(folder.id, name)
            if child is None:
                raise KeyError(path)
            folder = child
        return folder

    def _child_named(self, parent_id: str, name: str) -> _MailFolder | None:
        for folder in self._mail_folders.values():
            if folder.parent_id == parent_id and folder.name.casefold() == name.casefold():
                return folder
        return None

    def folder_id(self, path: str) -> str:
        with self._lock:
            return self._mail_path(path).id

    def add_folder(self, parent_path: str, name: str, hidden: bool = False) -> str:
        with self._lock:
            return self._create_folder(self._mail_path(parent_path).id, name, hidden).id

    def rename_folder(self, path: str, name: str) -> None:
        with self._lock:
            folder = self._mail_path(path)
            folder.name, folder.version = name, folder.version + 1

    def delete_folder(self, path: str) -> None:
        with self._lock:
            self._remove_folder(self._mail_path(path))

    def add_message(
        self,
        folder_path: str,
        mime: bytes,
        *,
        is_read: bool = False,
        flag: str = "notFlagged",
        categories=(),
        received: datetime | None = None,
        is_draft: bool = False,
        last_verb: int | None = None,
    ) -> str:
        """Deliver a message (as mail flow would: not a draft); returns its immutable id."""
        with self._lock:
            folder = self._mail_path(folder_path)
            message = self._new_message(folder.id, mime, is_draft=is_draft, received=received)
            message.is_read = is_read
            message.flag = flag
            message.categories = list(categories)
            if last_verb is not None:
                message.extended["integer 0x1081"] = ("Integer 0x1081", str(last_verb))
            return message.immutable_id

    def _find_message(self, key: str) -> _Message:
        message = self._messages.get(key) or self._messages.get(self._message_ids.get(key, ""))
        if message is None:
            raise KeyError(key)
        return message

    def update_message(self, key: str, **changes) -> None:
        with self._lock:
            message = self._find_message(key)
            if "is_read" in changes:
                message.is_read = bool(changes["is_read"])
            if "flag" in changes:
                message.flag = changes["flag"]
            if "categories" in changes:
                message.categories = list(changes["categories"])
            if "last_verb" in changes:
                message.extended["integer 0x1081"] = ("Integer 0x1081", str(changes["last_verb"]))
            self._touch(message)

    def move_message(self, key: str, folder_path: str) -> str:
        """Returns the message's new (regular) id."""
        with self._lock:
            message = self._find_message(key)
            self._move(message, self._mail_path(folder_path).id)
            return message.id

    def delete_message(self, key: str, hard: bool = False) -> None:
        with self._lock:
            message = self._find_message(key)
            if hard:
                self._purge(message)
            else:
                self._move(message, self._well_known["recoverableitemsdeletions"])

    def message(self, key: str) -> dict:
        with self._lock:
            m = self._find_message(key)
            return {
                "immutable_id": m.immutable_id,
                "id": m.id,
                "folder_id": m.folder_id,
                "mime": m.mime,
                "is_read": m.is_read,
                "flag": m.flag,
                "categories": list(m.categories),
                "is_draft": m.is_draft,
                "change_key": m.change_key,
                "extended": {ident: value for ident, value in m.extended.values()},
            }

    def messages(self, folder_path: str) -> list[dict]:
        with self._lock:
            folder_id = self._mail_path(folder_path).id
            keys = [m.immutable_id for m in self._messages.values() if m.folder_id == folder_id]
        return [self.message(k) for k in keys]

    # ---------------------------------------------------------------- test API: calendars

    def calendar_id(self, name: str | None = None) -> str:
        with self._lock:
            for cal in self._calendars.values():
                if (name is None and cal.is_default) or (name is not None and cal.name == name):
                    return cal.id
        raise KeyError(name)

    def add_calendar(self, name: str) -> str:
        with self._lock:
            cal = _Calendar(self._new_id("AAMkAC"), name)
            self._calendars[cal.id] = cal
            return cal.id

    def add_event(self, calendar: str | None, event: dict) -> str:
        """``event``: Graph event JSON (subject, body, start, end, isAllDay, location, organizer,
        attendees, recurrence, reminderMinutesBeforeStart, categories, iCalUId...).  ``calendar``:
        an id, a name or None (the default calendar)."""
        with self._lock:
            cal_id = calendar if calendar in self._calendars else self.calendar_id(calendar)
            data = copy.deepcopy(event)
            for key in ("start", "end"):
                _zone(data[key]["timeZone"])
                _parse_local(data[key]["dateTime"])
            if data.get("recurrence"):
                _recurrence_dates(
                    data["recurrence"], date.fromisoformat(data["recurrence"]["range"]["startDate"])
                )
            data.setdefault(
                "iCalUId", "040000008200E00074C5B7101A82E008" + secrets.token_hex(28).upper()
            )
            now = _now()
            ev = _Event(self._new_id("AAMkAE"), cal_id, data, self._change_key(), now, now)
            self._events[ev.id] = ev
            return ev.id

    def update_event(self, event_id: str, **fields) -> None:
        with self._lock:
            ev = self._events[event_id]
            ev.data.update(copy.deepcopy(fields))
            ev.change_key, ev.modified = self._change_key(), _now()

    def delete_event(self, event_id: str) -> None:
        with self._lock:
            del self._events[event_id]

    def modify_occurrence(self, master_id: str, day: date, **fields) -> str:
        with self._lock:
            ev = self._events[master_id]
            occ_id = self._occurrence_id(ev, day)
            old = ev.exceptions.get(day, (occ_id, {}, ""))[1]
            ev.exceptions[day] = (occ_id, {**old, **copy.deepcopy(fields)}, self._change_key())
            return occ_id

    def cancel_occurrence(self, master_id: str, day: date) -> None:
        with self._lock:
            ev = self._events[master_id]
            ev.cancelled.add(day)
            ev.exceptions.pop(day, None)

    def instances(self, master_id: str, start: datetime, end: datetime) -> list[dict]:
        with self._lock:
            return [
                self._event_json(ev, day, fields, key, "UTC")
                for ev, day, fields, key in self._instances(self._events[master_id], start, end)
            ]

    # ---------------------------------------------------------------- test API: contacts

    def contact_folder_id(self, name: str | None = None) -> str:
        with self._lock:
            if name is None:
                return self._default_contacts
            for folder in self._contact_folders.values():
                if folder.name == name:
                    return folder.id
        raise KeyError(name)

    def add_contact_folder(self, name: str, parent: str | None = None) -> str:
        with self._lock:
            folder = _ContactFolder(self._new_id("AAMkAK"), name, parent or self._default_contacts)
            self._contact_folders[folder.id] = folder
            return folder.id

    def add_contact(self, folder: str | None, contact: dict) -> str:
        with self._lock:
            folder_id = (
                folder if folder in self._contact_folders else self.contact_folder_id(folder)
            )
            now = _now()
            item = _Contact(
                self._new_id("AAMkAD"),
                folder_id,
                copy.deepcopy(contact),
                self._change_key(),
                now,
                now,
            )
            self._contacts[item.id] = item
            return item.id

    def update_contact(self, contact_id: str, **fields) -> None:
        with self._lock:
            item = self._contacts[contact_id]
            item.data.update(copy.deepcopy(fields))
            item.change_key, item.modified = self._change_key(), _now()

    def delete_contact(self, contact_id: str) -> None:
        with self._lock:
            del self._contacts[contact_id]

    # ---------------------------------------------------------------- model operations

    def _create_folder(self, parent_id: str, name: str, hidden: bool) -> _MailFolder:
        if not name or not name.strip():
            raise GraphError(400, "ErrorInvalidRequest", "The folder name cannot be empty.")
        if self._child_named(parent_id, name) is not None:
            raise GraphError(
                409, "ErrorFolderExists", "A folder with the specified name already exists."
            )
        folder = _MailFolder(self._new_id("AAMkAF"), name, parent_id, None, hidden)
        self._mail_folders[folder.id] = folder
        return folder

    def _subtree(self, folder_id: str) -> list[str]:
        out = [folder_id]
        for f in list(self._mail_folders.values()):
            if f.parent_id == folder_id:
                out += self._subtree(f.id)
        return out

    def _remove_folder(self, folder: _MailFolder) -> None:
        if folder.well_known:
            raise GraphError(
                403, "ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted."
            )
        for folder_id in self._subtree(folder.id):
            for message in [m for m in self._messages.values() if m.folder_id == folder_id]:
                self._purge(message)
            del self._mail_folders[folder_id]

    def _new_message(
        self, folder_id: str, mime: bytes, *, is_draft: bool, received: datetime | None = None
    ) -> _Message:
        now = _now()
        message = _Message(
            immutable_id=self._new_id("AAkALg"),
            id=self._new_id("AAMkAG"),
            folder_id=folder_id,
            mime=bytes(mime),
            change_key=self._change_key(),
            created=now,
            modified=now,
            received=(received or now).astimezone(UTC).replace(microsecond=0),
            is_draft=is_draft,
            is_read=is_draft,
        )
        self._messages[message.immutable_id] = message
        self._message_ids[message.id] = message.immutable_id
        return message

    def _touch(self, message: _Message) -> None:
        message.change_key, message.modified = self._change_key(), _now()

    def _move(self, message: _Message, folder_id: str) -> None:
        if message.folder_id == folder_id:
            return
        # A regular id names an item in a folder: a move makes a new one (outlook-immutable-id.md).
        del self._message_ids[message.id]
        message.id = self._new_id("AAMkAG")
        self._message_ids[message.id] = message.immutable_id
        message.folder_id = folder_id
        self._touch(message)

    def _purge(self, message: _Message) -> None:
        del self._messages[message.immutable_id]
        del self._message_ids[message.id]

    def _copy(self, message: _Message, folder_id: str) -> _Message:
        new = self._new_message(
            folder_id, message.mime, is_draft=message.is_draft, received=message.received
        )
        for attr in ("is_read", "flag", "importance", "inference"):
            setattr(new, attr, getattr(message, attr))
        new.categories = list(message.categories)
        new.extended = dict(message.extended)
        new.overrides = copy.deepcopy(message.overrides)
        return new

    @staticmethod
    def _occurrence_id(ev: _Event, day: date) -> str:
        if day not in ev.occurrence_ids:
            ev.occurrence_ids[day] = ev.id[:-4] + "OCC" + day.strftime("%Y%m%d") + "AAA="
        return ev.occurrence_ids[day]

    def _instances(self, ev: _Event, start: datetime, end: datetime) -> list[tuple]:
        """(event, occurrence date or None, exception fields, change key) of the instances of
        ``ev`` that overlap [start, end)."""
        out = []
        if not ev.data.get("recurrence"):
            s, e = self._span(ev.data, None)
            if e > start and s < end:
                out.append((ev, None, {}, ev.change_key))
            return out
        until = (end + timedelta(days=2)).date()
        for day in _recurrence_dates(ev.data["recurrence"], until):
            if day in ev.cancelled:
                continue
            occ_id, fields, key = ev.exceptions.get(day, (None, {}, None))
            s, e = self._span({**ev.data, **fields}, None if fields.get("start") else day)
            if e > start and s < end:
                out.append((ev, day, fields, key or ev.change_key))
        return out

    @staticmethod
    def _span(data: dict, day: date | None) -> tuple[datetime, datetime]:
        """UTC start and end of an event, or of its occurrence on ``day``."""
        zone = _zone(data["start"]["timeZone"])
        s = _parse_local(data["start"]["dateTime"])
        e = _parse_local(data["end"]["dateTime"])
        if day is not None:
            shift = datetime.combine(day, s.time()) - s
            s, e = s + shift, e + shift
        end_zone = _zone(data["end"].get("timeZone") or data["start"]["timeZone"])
        return s.replace(tzinfo=zone).astimezone(UTC), e.replace(tzinfo=end_zone).astimezone(UTC)

    # ---------------------------------------------------------------- rendering

    def _folder_json(self, folder: _MailFolder) -> dict:
        children = [f for f in self._mail_folders.values() if f.parent_id == folder.id]
        items = [m for m in self._messages.values() if m.folder_id == folder.id]
        return {
            "id": folder.id,
            "displayName": folder.name,
            "parentFolderId": folder.parent_id or self._well_known["msgfolderroot"],
            "childFolderCount": len(children),
            "unreadItemCount": sum(1 for m in items if not m.is_read),
            "totalItemCount": len(items),
            "sizeInBytes": sum(len(m.mime) for m in items),
            "isHidden": folder.hidden,
        }

    def _message_json(
        self, m: _Message, ctx: _Ctx, select: list | None, expand: list | None
    ) -> dict:
        summary = _mime_summary(m.mime)
        summary.update(m.overrides)
        client_id = m.immutable_id if ctx.immutable else m.id
        body_text = re.sub(r"<[^>]*>", "", summary["body"]["content"] or "")
        full = {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": f'W/"{m.change_key}"',
            "id": client_id,
            "createdDateTime": _iso(m.created),
            "lastModifiedDateTime": _iso(m.modified),
            "changeKey": m.change_key,
            "categories": list(m.categories),
            "receivedDateTime": _iso(m.received),
            "sentDateTime": summary["sentDateTime"] or _iso(m.received),
            "hasAttachments": summary["hasAttachments"],
            "internetMessageId": summary["internetMessageId"],
            "subject": summary["subject"],
            "bodyPreview": " ".join(body_text.split())[:255],
            "importance": m.importance,
            "parentFolderId": m.folder_id,
            "conversationId": "AAQk" + m.immutable_id[6:30],
            "isDeliveryReceiptRequested": False,
            "isReadReceiptRequested": False,
            "isRead": m.is_read,
            "isDraft": m.is_draft,
            "inferenceClassification": m.inference,
            "body": _as_text(summary["body"]) if ctx.text_body else summary["body"],
            "sender": summary["from"],
            "from": summary["from"],
            "toRecipients": summary["toRecipients"],
            "ccRecipients": summary["ccRecipients"],
            "bccRecipients": summary["bccRecipients"],
            "replyTo": summary["replyTo"],
            "flag": {"flagStatus": m.flag},
        }
        if select:
            wanted = {s.casefold() for s in select}
            full = {
                k: v
                for k, v in full.items()
                if k in ("@odata.type", "@odata.etag", "id") or k.casefold() in wanted
            }
        for item in expand or []:
            name, filter_ids = item
            if name == "singlevalueextendedproperties":
                props = [
                    {"id": ident, "value": value}
                    for key, (ident, value) in m.extended.items()
                    if filter_ids is None or key in filter_ids
                ]
                full["singleValueExtendedProperties@odata.context"] = (
                    f"{self.base}/$metadata#users('{self.user_id}')/messages('{client_id}')"
                    "/singleValueExtendedProperties"
                )
                full["singleValueExtendedProperties"] = props
        return full

    def _event_json(
        self, ev: _Event, day: date | None, fields: dict, key: str, tz: str, text_body=False
    ) -> dict:
        data = {**copy.deepcopy(ev.data), **copy.deepcopy(fields)}
        master = ev.data.get("recurrence") and day is None
        if day is not None:
            s_local = _parse_local(ev.data["start"]["dateTime"])
            e_local = _parse_local(ev.data["end"]["dateTime"])
            shift = datetime.combine(day, s_local.time()) - s_local
            if "start" not in fields:
                data["start"] = {**ev.data["start"], "dateTime": _fmt_local(s_local + shift)}
            if "end" not in fields:
                data["end"] = {**ev.data["end"], "dateTime": _fmt_local(e_local + shift)}
        original_zone = data["start"]["timeZone"]
        original_end_zone = data["end"].get("timeZone") or original_zone
        out_zone = _zone(tz)
        for name in ("start", "end"):
            local = _parse_local(data[name]["dateTime"])
            zone_name = data[name].get("timeZone") or original_zone
            if data.get("isAllDay"):
                # All-day events are not converted: midnight to midnight in the zone they were
                # made in, whatever outlook.timezone asks (Microsoft Q&A 1382503).
                data[name] = {"dateTime": _fmt_local(local), "timeZone": zone_name}
                continue
            value = local.replace(tzinfo=_zone(zone_name)).astimezone(out_zone)
            data[name] = {"dateTime": _fmt_local(value.replace(tzinfo=None)), "timeZone": tz}
        event_id = ev.id if day is None else self._occurrence_id(ev, day)
        out = {
            "@odata.type": "#microsoft.graph.event",
            "@odata.etag": f'W/"{key}"',
            "id": event_id,
            "createdDateTime": _iso(ev.created),
            "lastModifiedDateTime": _iso(ev.modified),
            "changeKey": key,
            "categories": [],
            "originalStartTimeZone": original_zone,
            "originalEndTimeZone": original_end_zone,
            "reminderMinutesBeforeStart": 15,
            "isReminderOn": True,
            "isAllDay": False,
            "isCancelled": False,
            "showAs": "busy",
            "body": {"contentType": "text", "content": ""},
            "location": {"displayName": ""},
            "attendees": [],
            "organizer": {"emailAddress": {"name": self.user, "address": self.user}},
            "recurrence": None,
            "seriesMasterId": None,
            "type": "singleInstance",
        }
        out.update(data)
        if text_body:
            out["body"] = _as_text(out["body"])
        if master:
            out["type"] = "seriesMaster"
        elif day is not None:
            out["type"] = "exception" if fields else "occurrence"
            out["seriesMasterId"] = ev.id
            out["recurrence"] = None
            start_local = datetime.combine(day, _parse_local(ev.data["start"]["dateTime"]).time())
            out["originalStart"] = _iso(start_local.replace(tzinfo=_zone(original_zone)))
        return out

    def _contact_json(self, c: _Contact) -> dict:
        out = {
            "@odata.type": "#microsoft.graph.contact",
            "@odata.etag": f'W/"{c.change_key}"',
            "id": c.id,
            "createdDateTime": _iso(c.created),
            "lastModifiedDateTime": _iso(c.modified),
            "changeKey": c.change_key,
            "categories": [],
            "parentFolderId": c.folder_id,
            "birthday": None,
            "displayName": "",
            "givenName": None,
            "surname": None,
            "emailAddresses": [],
            "businessPhones": [],
            "homePhones": [],
            "mobilePhone": None,
            "homeAddress": {},
            "businessAddress": {},
            "otherAddress": {},
            "companyName": None,
            "jobTitle": None,
            "personalNotes": "",
        }
        out.update(copy.deepcopy(c.data))
        return out

    # ---------------------------------------------------------------- HTTP

    def _check_auth(self, header: str | None) -> tuple[str | None, bool, str]:
        """(None, app, user) for a valid token, else (error message, False, "")."""
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            return "Access token is empty.", False, ""
        token = header[7:].strip()
        with self._lock:
            found = None
            for known, entry in self._tokens.items():
                if hmac.compare_digest(known.encode(), token.encode()):
                    found = entry
        if found is None and self._oauth is not None:
            grant = self._oauth.grants.get(token)
            if grant is not None and grant.kind == "access":
                expiry = 0.0 if grant.revoked else grant.expires_at
                found = (expiry, grant.parent is None, grant.user or "")
        if found is None:
            return "IDX14100: JWT is not well formed, there are no dots (.).", False, ""
        expiry, app, user = found
        if time.time() >= expiry:
            return "Access token has expired or is not yet valid.", False, ""
        return None, app, user

    def _error_body(self, code: str, message: str, request_id: str, client_id: str) -> bytes:
        inner = {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": request_id,
            "client-request-id": client_id,
        }
        return json.dumps(
            {"error": {"code": code, "message": message, "innerError": inner}}
        ).encode()

    def _take_throttle(self, method: str, path: str) -> _Throttle | None:
        with self._lock:
            for t in self._throttles:
                if (
                    t.remaining > 0
                    and (t.match is None or t.match in path)
                    and (t.method is None or t.method == method)
                ):
                    t.remaining -= 1
                    return t
        return None

    def _handle_http(self, h: _Handler, method: str) -> None:
        split = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        prefer = ", ".join(h.headers.get_all("Prefer") or [])
        request_id = str(uuid.uuid4())
        client_id = h.headers.get("client-request-id") or request_id
        common = {"request-id": request_id, "client-request-id": client_id}

        def send(code: int, body: bytes, headers: dict | None = None) -> None:
            # Logged before the answer leaves, so a client that has its answer sees the entry.
            with self._lock:
                self.requests.append(Request(method, split.path, query, code, prefer))
            h.reply(code, body, {**common, **(headers or {})})

        def error_reply(err: GraphError) -> tuple[int, bytes, dict]:
            body = self._error_body(err.code, err.message, request_id, client_id)
            return err.status, body, {"Content-Type": "application/json", **err.headers}

        length = h.headers.get("Content-Length")
        if method in ("POST", "PATCH", "PUT") and (length is None or not length.isdigit()):
            send(
                *error_reply(
                    GraphError(411, "LengthRequired", "A Content-Length header is required.")
                )
            )
            return
        body = h.rfile.read(int(length)) if length and length.isdigit() else b""
        problem, app, token_user = self._check_auth(h.headers.get("Authorization"))
        if problem is not None:
            challenge = (
                'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
                f'oauth2/authorize", client_id="{GRAPH_APP_ID}"'
            )
            err = GraphError(
                401, "InvalidAuthenticationToken", problem, {"WWW-Authenticate": challenge}
            )
            send(*error_reply(err))
            return
        with self._lock:
            self.in_flight += 1
            over = self.in_flight > self.concurrency_limit
        try:
            if over:
                raise GraphError(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    {"Retry-After": "1"},
                )
            throttle = self._take_throttle(method, split.path)
            if throttle is not None:
                raise throttle.error()
            if self._hold_match is None or self._hold_match in split.path:
                self._gate.wait()
            content_type = h.headers.get("Content-Type") or ""
            ctx = _Ctx(method, split.path, query, prefer, body, content_type, app, token_user)
            with self._lock:
                result = self._route(ctx)
        except GraphError as err:
            result = error_reply(err)
        except Exception:
            result = error_reply(GraphError(500, "generalException", traceback.format_exc()))
        finally:
            # Out of flight before the answer leaves: a client that has its answer may send
            # the next request at once.
            with self._lock:
                self.in_flight -= 1
        send(*result)

    # ---------------------------------------------------------------- routing

    def _route(self, ctx: _Ctx) -> tuple[int, bytes, dict]:
        segs = [unquote(s) for s in ctx.path.split("/") if s]
        expanded: list[str] = []
        for seg in segs:
            m = re.fullmatch(r"([A-Za-z$]+)\('(.*)'\)", seg)
            expanded += [m.group(1), m.group(2)] if m else [seg]
        segs = expanded
        if not segs or segs[0] != "v1.0":
            raise GraphError(400, "BadRequest", f"Invalid version: {segs[0] if segs else ''}")
        segs = segs[1:]
        if segs == ["$batch"] and ctx.method == "POST" and not ctx.in_batch:
            return self._encode(self._batch(ctx))
        if segs and segs[0].lower() == "me":
            if ctx.app:
                raise GraphError(
                    400,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                )
            owner, segs = "me", segs[1:]
        elif len(segs) >= 2 and segs[0].lower() == "users":
            if segs[1].casefold() not in (self.user.casefold(), self.user_id):
                raise GraphError(
                    404, "ErrorInvalidUser", f"The requested user '{segs[1]}' is invalid."
                )
            owner, segs = f"users/{quote(segs[1], safe='@')}", segs[2:]
        else:
            raise GraphError(
                400,
                "BadRequest",
                f"Resource not found for the segment '{segs[0] if segs else ''}'.",
            )
        if ctx.user.casefold() != self.user.casefold():
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        ctx.owner = owner
        names = [s.lower() for s in segs]
        # mailFolders/A/childFolders/B/... is mailFolders/B/...
        while (
            len(names) >= 4
            and names[0] in ("mailfolders", "contactfolders")
            and names[2] == "childfolders"
        ):
            segs, names = [segs[0], *segs[3:]], [names[0], *names[3:]]
        return self._encode(self._dispatch(ctx, segs, names))

    @staticmethod
    def _encode(result: tuple) -> tuple[int, bytes, dict]:
        """(status, JSON object or bytes[, headers]) -> (status, bytes, headers)."""
        status, payload = result[0], result[1]
        headers = result[2] if len(result) > 2 else {}
        if isinstance(payload, (dict, list)):
            return status, json.dumps(payload).encode(), {"Content-Type": JSON_TYPE, **headers}
        return status, payload, headers

    def _dispatch(self, ctx: _Ctx, segs: list[str], names: list[str]) -> tuple:
        m = ctx.method
        n = len(names)
        if names == ["mailfolders", "delta"] and m == "GET":
            return self._delta(ctx, "mailFolders", self._well_known["msgfolderroot"])
        if names[:1] == ["mailfolders"]:
            if n == 1:
                root = self._well_known["msgfolderroot"]
                if m == "GET":
                    return 200, self._list_folders(ctx, root)
                if m == "POST":
                    return self._post_folder(ctx, root)
            folder = self._resolve_folder(segs[1]) if n >= 2 else None
            if n == 2:
                if m == "GET":
                    return 200, self._folder_json(folder)
                if m == "PATCH":
                    data = ctx.json()
                    if set(data) - {"displayName"}:
                        raise GraphError(
                            400, "ErrorInvalidProperty", "Only displayName can be updated."
                        )
                    if "displayName" in data:
                        other = self._child_named(folder.parent_id or "", data["displayName"])
                        if other is not None and other.id != folder.id:
                            raise GraphError(
                                409,
                                "ErrorFolderExists",
                                "A folder with the specified name already exists.",
                            )
                        folder.name = data["displayName"]
                        folder.version += 1
                    return 200, self._folder_json(folder)
                if m == "DELETE":
                    self._remove_folder(folder)
                    return 204, b""
            if n == 3 and names[2] == "childfolders":
                if m == "GET":
                    return 200, self._list_folders(ctx, folder.id)
                if m == "POST":
                    return self._post_folder(ctx, folder.id)
            if n == 3 and names[2] in ("move", "copy") and m == "POST":
                dest = self._resolve_folder(ctx.json().get("destinationId", ""))
                if names[2] == "copy":
                    raise GraphError(
                        501, "notSupported", "Folder copy is not modelled by the fake."
                    )
                if folder.well_known:
                    raise GraphError(
                        403,
                        "ErrorMoveDistinguishedFolder",
                        "Distinguished folders cannot be moved.",
                    )
                if dest.id in self._subtree(folder.id):
                    raise GraphError(
                        400, "ErrorMoveCopyFailed", "Cannot move a folder into itself."
                    )
                if self._child_named(dest.id, folder.name) is not None:
                    raise GraphError(
                        409, "ErrorFolderExists", "A folder with the specified name already exists."
                    )
                folder.parent_id = dest.id
                folder.version += 1
                return 201, self._folder_json(folder)
            if n >= 3 and names[2] == "messages":
                if n == 3:
                    if m == "GET":
                        return 200, self._list_messages(ctx, folder.id)
                    if m == "POST":
                        return self._post_message(ctx, folder.id)
                if n == 4 and names[3] == "delta" and m == "GET":
                    return self._delta(ctx, "messages", folder.id)
                return self._message_op(ctx, segs[3], names[4:])
        if names[:1] == ["messages"]:
            if n == 1 and m == "POST":
                return self._post_message(ctx, self._well_known["drafts"])
            if n == 1 and m == "GET":
                if _message_id_filter(ctx) is None:
                    raise GraphError(
                        501, "notSupported", "Listing all messages is not modelled by the fake."
                    )
                return 200, self._list_messages(ctx, None)
            if n >= 2:
                return self._message_op(ctx, segs[1], names[2:])
        if names[:1] == ["calendars"] and m == "GET":
            if n == 1:
                return 200, self._paged(
                    ctx, [self._calendar_json(c) for c in self._calendars.values()]
                )
            cal = self._resolve_calendar(segs[1])
            return self._calendar_op(ctx, cal, names[2:], segs[2:])
        if names[:1] == ["calendar"] and m == "GET":
            cal = next(c for c in self._calendars.values() if c.is_default)
            return self._calendar_op(ctx, cal, names[1:], segs[1:])
        if names[:2] == ["calendarview", "delta"] and n == 2 and m == "GET":
            cal = next(c for c in self._calendars.values() if c.is_default)
            return self._delta(ctx, "events", cal.id)
        if names[:1] == ["events"] and n == 2 and m == "GET":
            return 200, self._get_event(ctx, segs[1])
        if names[:1] == ["events"] and n == 2 and m == "DELETE":
            self._remove_event(segs[1], cancel=False)
            return 204, b""
        if names[:1] == ["events"] and n == 3 and names[2] == "cancel" and m == "POST":
            self._remove_event(segs[1], cancel=True)
            return 202, b""
        if names[:1] == ["events"] and n == 3 and names[2] == "instances" and m == "GET":
            return 200, self._event_instances(ctx, segs[1])
        if names == ["calendarview"] and m == "GET":
            cal = next(c for c in self._calendars.values() if c.is_default)
            return 200, self._calendar_view(ctx, cal)
        if names[:1] == ["contactfolders"] and m == "GET":
            if n == 1:
                return 200, self._list_contact_folders(ctx, self._default_contacts)
            folder = self._resolve_contact_folder(segs[1])
            if n == 2:
                return 200, self._contact_folder_json(folder)
            if n == 3 and names[2] == "childfolders":
                return 200, self._list_contact_folders(ctx, folder.id)
            if names[2:3] == ["contacts"]:
                return self._contacts_op(ctx, folder.id, names[3:], segs[3:])
        if names[:1] == ["contacts"] and m == "GET":
            return self._contacts_op(ctx, self._default_contacts, names[1:], segs[1:])
        raise GraphError(
            400, "BadRequest", f"Resource not found for the segment '{segs[-1] if segs else ''}'."
        )

    # ---------------------------------------------------------------- mail handlers

    def _resolve_folder(self, key: str) -> _MailFolder:
        folder_id = self._well_known.get(key.lower(), key)
        folder = self._mail_folders.get(folder_id)
        if folder is not None:
            return folder
        if key in self._issued:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")

    def _resolve_message(self, key: str) -> _Message:
        imm = key if key in self._messages else self._message_ids.get(key)
        if imm is not None:
            return self._messages[imm]
        if key in self._issued:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")

    def _list_folders(self, ctx: _Ctx, parent_id: str) -> dict:
        hidden = ctx.query.get("includeHiddenFolders", "").lower() == "true"
        folders = [
            self._folder_json(f)
            for f in self._mail_folders.values()
            if f.parent_id == parent_id and (hidden or not f.hidden)
        ]
        return self._paged(ctx, folders)

    def _post_folder(self, ctx: _Ctx, parent_id: str) -> tuple:
        data = ctx.json()
        folder = self._create_folder(
            parent_id, data.get("displayName") or "", bool(data.get("isHidden"))
        )
        return 201, self._folder_json(folder)

    def _list_messages(self, ctx: _Ctx, folder_id: str | None) -> dict:
        """A folder's messages, or (folder_id None) the mailbox's: every folder but
        Recoverable Items; only those of the Message-ID a ``$filter`` names, if it does."""
        hidden = self._well_known["recoverableitemsdeletions"]
        wanted = _message_id_filter(ctx)
        items = sorted(
            (
                m
                for m in self._messages.values()
                if (m.folder_id == folder_id if folder_id else m.folder_id != hidden)
                and (wanted is None or _mime_summary(m.mime)["internetMessageId"] == wanted)
            ),
            key=lambda m: m.received,
            reverse=True,
        )
        select, expand = ctx.select(), ctx.expand()
        return self._paged(ctx, [self._message_json(m, ctx, select, expand) for m in items])

    def _paged(self, ctx: _Ctx, objects: list) -> dict:
        """A collection page of ``$top`` (default 10, at most max_page_size) from ``$skip``."""
        try:
            top = int(ctx.query.get("$top") or ctx.max_page_size() or DEFAULT_PAGE_SIZE)
            skip = int(ctx.query.get("$skip") or 0)
        except ValueError as exc:
            raise GraphError(400, "BadRequest", "Invalid $top or $skip.") from exc
        top = max(1, min(top, self.max_page_size))
        page = {
            "@odata.context": f"{self.base}/$metadata#Collection",
            "value": objects[skip : skip + top],
        }
        if skip + top < len(objects):
            query = {**ctx.query, "$top": str(top), "$skip": str(skip + top)}
            page["@odata.nextLink"] = f"{self.url}{ctx.path}?{urlencode(query)}"
        return page

    def _post_message(self, ctx: _Ctx, folder_id: str) -> tuple:
        ctype = ctx.content_type.split(";")[0].strip().lower()
        if ctype == "text/plain":
            try:
                mime = base64.b64decode(ctx.body.strip(), validate=True)
            except (binascii.Error, ValueError):
                mime = b""
            if not mime:
                raise GraphError(
                    400,
                    "ErrorMimeContentInvalidBase64String",
                    "Invalid base64 string for MIME content.",
                )
            message = self._new_message(folder_id, mime, is_draft=True)
        elif ctype == "application/json":
            message = self._new_message(folder_id, _minimal_mime(ctx.json()), is_draft=True)
        else:
            raise GraphError(
                415, "UnsupportedMediaType", f"Content type {ctype!r} is not supported."
            )
        return 201, self._message_json(message, ctx, None, None)

    def _message_op(self, ctx: _Ctx, key: str, rest: list[str]) -> tuple:
        message = self._resolve_message(key)
        m = ctx.method
        if not rest:
            if m == "GET":
                return 200, self._message_json(message, ctx, ctx.select(), ctx.expand())
            if m == "PATCH":
                self._patch_message(message, ctx.json())
                return 200, self._message_json(message, ctx, None, None)
            if m == "DELETE":
                self._move(message, self._well_known["recoverableitemsdeletions"])
                return 204, b""
        if rest == ["$value"] and m == "GET":
            self.value_downloads[message.immutable_id] += 1
            return 200, message.mime, {"Content-Type": "text/plain"}
        if rest == ["permanentdelete"] and m == "POST":
            self._purge(message)
            return 204, b""
        if rest in (["move"], ["copy"]) and m == "POST":
            dest = self._resolve_folder(ctx.json().get("destinationId") or "")
            if rest == ["copy"]:
                message = self._copy(message, dest.id)
            else:
                self._move(message, dest.id)
            return 201, self._message_json(message, ctx, None, None)
        raise GraphError(
            400, "BadRequest", f"Resource not found for the segment '{rest[-1] if rest else key}'."
        )

    def _patch_message(self, message: _Message, data: dict) -> None:
        allowed = WRITABLE_MESSAGE | (DRAFT_WRITABLE if message.is_draft else set())
        unknown = set(data) - allowed
        if unknown:
            raise GraphError(
                400, "ErrorInvalidProperty", f"Property {sorted(unknown)[0]} cannot be updated."
            )
        if "isRead" in data:
            if not isinstance(data["isRead"], bool):
                raise GraphError(400, "BadRequest", "isRead must be a boolean.")
            message.is_read = data["isRead"]
        if "categories" in data:
            message.categories = [str(c) for c in data["categories"] or []]
        if "flag" in data:
            status = (data["flag"] or {}).get("flagStatus", "notFlagged")
            if status not in ("notFlagged", "flagged", "complete"):
                raise GraphError(400, "BadRequest", f"Invalid flagStatus {status!r}.")
            message.flag = status
        if "importance" in data:
            message.importance = data["importance"]
        if "inferenceClassification" in data:
            message.inference = data["inferenceClassification"]
        for prop in data.get("singleValueExtendedProperties") or []:
            ident = " ".join(str(prop["id"]).split())
            message.extended[ident.lower()] = (ident, str(prop.get("value")))
        for key in DRAFT_WRITABLE & set(data):
            message.overrides[key] = data[key]
        self._touch(message)

    # ---------------------------------------------------------------- calendar and contact handlers

    def _resolve_calendar(self, key: str) -> _Calendar:
        cal = self._calendars.get(key)
        if cal is None:
            raise GraphError(
                404 if key in self._issued else 400,
                "ErrorItemNotFound" if key in self._issued else "ErrorInvalidIdMalformed",
                "The specified object was not found in the store."
                if key in self._issued
                else "Id is malformed.",
            )
        return cal

    def _calendar_json(self, cal: _Calendar) -> dict:
        return {
            "id": cal.id,
            "name": cal.name,
            "isDefaultCalendar": cal.is_default,
            "canEdit": True,
            "owner": {"name": self.user, "address": self.user},
            "changeKey": cal.id[-12:],
        }

    def _calendar_op(self, ctx: _Ctx, cal: _Calendar, names: list[str], segs: list[str]) -> tuple:
        if not names:
            return 200, self._calendar_json(cal)
        if names == ["calendarview", "delta"]:
            return self._delta(ctx, "events", cal.id)
        if names == ["events"]:
            evs = [e for e in self._events.values() if e.calendar_id == cal.id]
            return 200, self._paged(
                ctx,
                [
                    self._event_json(e, None, {}, e.change_key, ctx.timezone, ctx.text_body)
                    for e in evs
                ],
            )
        if len(names) == 2 and names[0] == "events":
            return 200, self._get_event(ctx, segs[1])
        if len(names) == 3 and names[0] == "events" and names[2] == "instances":
            return 200, self._event_instances(ctx, segs[1])
        if names == ["calendarview"]:
            return 200, self._calendar_view(ctx, cal)
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segs[-1]}'.")

    def _window(self, ctx: _Ctx) -> tuple[datetime, datetime]:
        start = ctx.query.get("startDateTime") or ctx.query.get("startdatetime")
        end = ctx.query.get("endDateTime") or ctx.query.get("enddatetime")
        return _parse_window(start, "startDateTime"), _parse_window(end, "endDateTime")

    def _calendar_view(self, ctx: _Ctx, cal: _Calendar) -> dict:
        """``calendarView?startDateTime&endDateTime`` (calendar-list-calendarview.md): the
        instances in the window, as calendarView/delta gives them, paged."""
        start, end = self._window(ctx)
        params = {"start": start.isoformat(), "end": end.isoformat()}
        found = self._current("events", cal.id, ctx, params)
        return self._paged(ctx, [obj for _, _, obj in found.values()])

    def _event_instances(self, ctx: _Ctx, master_id: str) -> dict:
        """``events/{id}/instances?startDateTime&endDateTime`` (event-list-instances.md): the
        occurrences and exceptions of a series in the window; cancelled ones are absent, which
        is how a client learns them."""
        ev = self._events.get(master_id)
        if ev is None or not ev.data.get("recurrence"):
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        start, end = self._window(ctx)
        found = [
            self._event_json(e, day, fields, key, ctx.timezone, ctx.text_body)
            for e, day, fields, key in self._instances(ev, start, end)
        ]
        return self._paged(ctx, found)

    def _get_event(self, ctx: _Ctx, key: str) -> dict:
        ev = self._events.get(key)
        if ev is not None:
            return self._event_json(ev, None, {}, ev.change_key, ctx.timezone, ctx.text_body)
        for ev in self._events.values():
            for day, occ_id in ev.occurrence_ids.items():
                if occ_id == key and day not in ev.cancelled:
                    _, fields, change_key = ev.exceptions.get(day, (None, {}, ev.change_key))
                    return self._event_json(
                        ev, day, fields, change_key, ctx.timezone, ctx.text_body
                    )
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )

    def _remove_event(self, key: str, cancel: bool) -> None:
        """``DELETE events/{id}`` (event-delete.md: 204) and ``POST events/{id}/cancel``
        (event-cancel.md: 202, organizer only, else 400 with the page's message; the code
        is the fake's choice): a single event or a series master
        goes with its series; an occurrence's or exception's id removes that occurrence,
        which then is missing from ``instances`` and calendarView and reported removed by
        delta.  (Both put the item into Deleted Items on Outlook: not modelled.)"""
        ev = self._events.get(key)
        day = None
        if ev is None:
            for candidate in self._events.values():
                for occurrence_day, occ_id in candidate.occurrence_ids.items():
                    if occ_id == key and occurrence_day not in candidate.cancelled:
                        ev, day = candidate, occurrence_day
        if ev is None:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        if cancel:
            organizer = (ev.data.get("organizer") or {}).get("emailAddress") or {}
            if str(organizer.get("address") or self.user).lower() != self.user.lower():
                raise GraphError(
                    400,
                    "ErrorAccessDenied",
                    "Your request can't be completed. You need to be an organizer to cancel "
                    "a meeting.",
                )
        if day is None:
            del self._events[ev.id]
        else:
            ev.cancelled.add(day)
            ev.exceptions.pop(day, None)

    def _resolve_contact_folder(self, key: str) -> _ContactFolder:
        folder = self._contact_folders.get(key)
        if folder is None:
            raise GraphError(
                404 if key in self._issued else 400,
                "ErrorItemNotFound" if key in self._issued else "ErrorInvalidIdMalformed",
                "The specified object was not found in the store."
                if key in self._issued
                else "Id is malformed.",
            )
        return folder

    def _contact_folder_json(self, folder: _ContactFolder) -> dict:
        return {
            "id": folder.id,
            "displayName": folder.name,
            "parentFolderId": folder.parent_id or "AAMkAKroot",
        }

    def _list_contact_folders(self, ctx: _Ctx, parent_id: str) -> dict:
        return self._paged(
            ctx,
            [
                self._contact_folder_json(f)
                for f in self._contact_folders.values()
                if f.parent_id == parent_id
            ],
        )

    def _contacts_op(self, ctx: _Ctx, folder_id: str, names: list[str], segs: list[str]) -> tuple:
        if not names:
            items = [c for c in self._contacts.values() if c.folder_id == folder_id]
            return 200, self._paged(ctx, [self._contact_json(c) for c in items])
        if names == ["delta"]:
            return self._delta(ctx, "contacts", folder_id)
        if len(names) == 1:
            contact = self._contacts.get(segs[0])
            if contact is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            return 200, self._contact_json(contact)
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segs[-1]}'.")

    # ---------------------------------------------------------------- $batch

    def _batch(self, ctx: _Ctx) -> tuple:
        """JSON batching (concepts/json-batching.md): at most 20 steps with unique ids (else
        400); ``dependsOn`` runs steps in order and fails the dependants of a failed step with
        424; each step is checked against the throttling rules on its own (429 in its
        response).  Graph "dispatches up to four individual requests from a batch to the
        Outlook service simultaneously" (Microsoft Q&A 1660054): steps of a batch without
        dependsOn occupy up to four mailbox slots at a time, so a batch sent while other
        requests are in flight gets 429 MailboxConcurrency for the steps over the limit.
        A non-JSON response body (``$value``) is base64 (standard alphabet) in the step's
        ``body``, as OData JSON batching carries binary bodies (fake's choice of alphabet: a
        client should accept both)."""
        steps = ctx.json().get("requests")
        if not isinstance(steps, list) or not steps or not all(isinstance(r, dict) for r in steps):
            raise GraphError(400, "BadRequest", "Invalid batch payload format.")
        if len(steps) > 20:
            raise GraphError(
                400, "BadRequest", "Number of batch request steps exceeds the maximum of 20."
            )
        ids = [str(r.get("id", "")) for r in steps]
        if "" in ids or len({i.lower() for i in ids}) != len(ids):
            raise GraphError(400, "BadRequest", "Batch request ids must be present and unique.")
        sequential = any(r.get("dependsOn") for r in steps)
        width = 1 if sequential else 4
        statuses: dict[str, int] = {}
        responses = []
        self.in_flight -= 1  # the $batch POST itself is not a request to the mailbox
        try:
            for first in range(0, len(steps), width):
                group = steps[first : first + width]
                base = self.in_flight
                self.in_flight += len(group)
                try:
                    for position, step in enumerate(group):
                        over = base + position + 1 > self.concurrency_limit
                        responses.append(self._batch_step(ctx, step, over, statuses))
                finally:
                    self.in_flight -= len(group)
        finally:
            self.in_flight += 1
        return 200, {"responses": responses}

    def _batch_step(self, ctx: _Ctx, step: dict, over: bool, statuses: dict) -> dict:
        step_id = str(step["id"])
        method = str(step.get("method") or "").upper()
        url = str(step.get("url") or "")
        headers = {str(k).lower(): str(v) for k, v in (step.get("headers") or {}).items()}
        split = urlsplit(url if url.startswith("/") else "/" + url)
        path = "/v1.0" + split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            if split.scheme or split.netloc:
                raise GraphError(400, "BadRequest", "A batch step's url must be relative.")
            if any(statuses.get(str(d), 424) >= 400 for d in step.get("dependsOn") or []):
                raise GraphError(424, "FailedDependency", "A request this one depends on failed.")
            if over:
                raise GraphError(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    {"Retry-After": "1"},
                )
            throttle = self._take_throttle(method, path)
            if throttle is not None:
                raise throttle.error()
            body = step.get("body")
            if body is not None and "content-type" not in headers:
                raise GraphError(400, "BadRequest", "A step with a body needs a Content-Type.")
            raw = (
                b""
                if body is None
                else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
            )
            sub = _Ctx(
                method,
                path,
                query,
                headers.get("prefer", ""),
                raw,
                headers.get("content-type", ""),
                ctx.app,
                ctx.user,
                in_batch=True,
            )
            status, payload, out_headers = self._route(sub)
        except GraphError as err:
            status = err.status
            payload = self._error_body(err.code, err.message, str(uuid.uuid4()), step_id)
            out_headers = {"Content-Type": "application/json", **err.headers}
        statuses[step_id] = status
        self.requests.append(Request(method, path, query, status, headers.get("prefer", ""), True))
        response: dict = {"id": step_id, "status": status, "headers": out_headers}
        if payload:
            if out_headers.get("Content-Type", "").startswith("application/json"):
                response["body"] = json.loads(payload)
            else:
                response["body"] = base64.b64encode(payload).decode()
        return response

    # ---------------------------------------------------------------- delta

    def _current(self, kind: str, collection: str, ctx: _Ctx, params: dict) -> dict:
        """key -> (client id, changeKey, rendered object) of what the collection holds now."""
        out: dict = {}
        if kind == "mailFolders":
            for folder_id in self._subtree(collection)[1:]:
                folder = self._mail_folders[folder_id]
                out[folder_id] = (folder_id, str(folder.version), self._folder_json(folder))
        elif kind == "messages":
            select, expand = params.get("select"), params.get("expand")
            for msg in self._messages.values():
                if msg.folder_id == collection:
                    obj = self._message_json(msg, ctx, select, expand)
                    out[msg.immutable_id] = (obj["id"], msg.change_key, obj)
        elif kind == "contacts":
            for c in self._contacts.values():
                if c.folder_id == collection:
                    out[c.id] = (c.id, c.change_key, self._contact_json(c))
        else:
            start = datetime.fromisoformat(params["start"])
            end = datetime.fromisoformat(params["end"])
            found = []
            for ev in self._events.values():
                if ev.calendar_id == collection:
                    found += self._instances(ev, start, end)
            found.sort(
                key=lambda inst: self._span(
                    {**inst[0].data, **inst[2]}, None if inst[2].get("start") else inst[1]
                )[0]
            )
            for ev, day, fields, key in found:
                obj = self._event_json(ev, day, fields, key, ctx.timezone, ctx.text_body)
                out[obj["id"]] = (obj["id"], key, obj)
        return out

    def _delta(self, ctx: _Ctx, kind: str, collection: str) -> tuple:
        skiptoken = ctx.query.get("$skiptoken")
        deltatoken = ctx.query.get("$deltatoken")
        initial_url = f"{self.url}{ctx.path}"
        if skiptoken or deltatoken:
            token = skiptoken or deltatoken
            state = self._delta_tokens.get(token)
            if token in self._evicted_tokens:
                raise GraphError(
                    410,
                    "syncStateNotFound",
                    "The sync state generation is not found. The delta token is expired "
                    "and data must be synchronized again.",
                    {"Location": self._evicted_tokens[token]},
                )
            if (
                state is None
                or state.kind != kind
                or state.collection != collection
                or (skiptoken and state.final)
                or (deltatoken and not state.final)
            ):
                raise GraphError(400, "BadRequest", "The delta or skip token is not valid.")
            if state.epoch != self._epoch:
                raise GraphError(
                    410,
                    self._void_code,
                    "The sync state generation is not found. The delta token is expired "
                    "and data must be synchronized again.",
                    {"Location": state.initial_url},
                )
            if skiptoken:
                return self._delta_page(ctx, state)
            params, sent, initial_url = state.params, state.sent, state.initial_url
            previous: _DeltaState | None = state
        else:
            previous = None
            params = {}
            if kind == "messages":
                if ctx.select():
                    params["select"] = ctx.select()
                if ctx.expand():
                    params["expand"] = ctx.expand()
                if ctx.query.get("$top"):
                    # delta-query-messages.md: delta supports $top (a page size, kept in the
                    # tokens like the other options).
                    try:
                        params["top"] = int(ctx.query["$top"])
                    except ValueError as exc:
                        raise GraphError(400, "BadRequest", "Invalid $top.") from exc
                change_type = ctx.query.get("changeType")
                if change_type is not None:
                    if change_type not in ("created", "updated", "deleted"):
                        raise GraphError(400, "BadRequest", f"Invalid changeType {change_type!r}.")
                    params["changeType"] = change_type
            elif "$select" in ctx.query:
                raise GraphError(
                    400, "ErrorInvalidUrlQuery", "$select is not supported on this delta query."
                )
            if kind == "events":
                start = _parse_window(
                    ctx.query.get("startDateTime") or ctx.query.get("startdatetime"),
                    "startDateTime",
                )
                end = _parse_window(
                    ctx.query.get("endDateTime") or ctx.query.get("enddatetime"), "endDateTime"
                )
                params["start"], params["end"] = start.isoformat(), end.isoformat()
                initial_url += "?" + urlencode(
                    {"startDateTime": _iso(start), "endDateTime": _iso(end)}
                )
            sent = None
        current = self._current(kind, collection, ctx, params)
        changes: list = []
        change_type = params.get("changeType")
        replay = list(previous.reported) if self.replays and previous is not None else []
        if sent is not None:
            for key, (client_id, _) in sent.items():
                if key not in current and change_type in (None, "deleted"):
                    changes.append(
                        {
                            "@odata.type": f"#microsoft.graph.{kind[:-1]}",
                            "id": client_id,
                            "@removed": {"reason": self.removed_reason},
                        }
                    )
        for key, (client_id, change_key, obj) in current.items():
            known = sent.get(key) if sent is not None else None
            if known is None:
                if change_type in (None, "created"):
                    changes.append(obj)
            elif (known[1], known[0]) != (change_key, client_id) and change_type in (
                None,
                "updated",
            ):
                changes.append(obj)
            elif key in replay:
                # delta-query-overview.md, "Replays": a change may show again in a later round.
                changes.append(obj)
        new_sent = {
            key: (client_id, change_key) for key, (client_id, change_key, _) in current.items()
        }
        if sent is not None and change_type is not None:
            # A filtered round moves the cursor only for the kind of change it reports.
            merged = dict(sent)
            if change_type == "deleted":
                merged = {k: v for k, v in merged.items() if k in current}
            else:
                for key, value in new_sent.items():
                    if (key in sent) == (change_type == "updated"):
                        merged[key] = value
            new_sent = merged
        shown = {id(change) for change in changes}
        reported = [key for key, (_, _, obj) in current.items() if id(obj) in shown]
        state = _DeltaState(
            kind,
            collection,
            params,
            new_sent,
            self._epoch,
            initial_url,
            changes,
            final=False,
            reported=reported,
        )
        return self._delta_page(ctx, state)

    def _store_token(self, state: _DeltaState) -> str:
        token = secrets.token_urlsafe(24)
        self._delta_tokens[token] = state
        if self.delta_token_limit is not None:
            while len(self._delta_tokens) > self.delta_token_limit:
                oldest = next(iter(self._delta_tokens))
                self._evicted_tokens[oldest] = self._delta_tokens.pop(oldest).initial_url
        return token

    def _delta_page(self, ctx: _Ctx, state: _DeltaState) -> tuple:
        wanted = ctx.max_page_size() or state.params.get("top") or DEFAULT_PAGE_SIZE
        size = max(1, min(wanted, self.max_page_size))
        page, rest = state.pending[:size], state.pending[size:]
        body: dict = {"@odata.context": f"{self.base}/$metadata#Collection({state.kind[:-1]})"}
        if rest:
            nxt = replace(state, pending=rest, final=False)
            body["@odata.nextLink"] = self._link(
                state.initial_url, "$skiptoken", self._store_token(nxt)
            )
        else:
            done = replace(state, pending=[], final=True)
            body["@odata.deltaLink"] = self._link(
                state.initial_url, "$deltatoken", self._store_token(done)
            )
        body["value"] = page
        self.sent_delta_pages += 1
        headers = {}
        if ctx.max_page_size():
            headers["Preference-Applied"] = f"odata.maxpagesize={size}"
        return 200, body, headers

    @staticmethod
    def _link(initial_url: str, name: str, token: str) -> str:
        """A nextLink/deltaLink in the OData key form Graph's own links use
        (``mailfolders('ID')/messages/delta?$skiptoken=...``, delta-query-messages.md): a
        client must follow links as given, not rebuild them."""
        base = initial_url.split("?", 1)[0]
        base = re.sub(
            r"/(mailFolders|calendars|contactFolders)/([^/]+)/",
            lambda m: f"/{m.group(1).lower()}('{m.group(2)}')/",
            base,
        )
        return f"{base}?{name}={token}"


@dataclass
class _Ctx:
    method: str
    path: str
    query: dict
    prefer: str
    body: bytes
    content_type: str
    app: bool
    user: str
    owner: str = "me"
    in_batch: bool = False

    def json(self) -> dict:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as exc:
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload.") from exc
        if not isinstance(data, dict):
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload.")
        return data

    def _prefer(self, name: str) -> str | None:
        for part in self.prefer.split(","):
            key, _, value = part.strip().partition("=")
            if key.strip().lower() == name.lower():
                return value.strip().strip('"')
        return None

    @property
    def immutable(self) -> bool:
        return (self._prefer("IdType") or "").lower() == "immutableid"

    @property
    def text_body(self) -> bool:
        """``Prefer: outlook.body-content-type="text"`` (message-get.md, event-get.md)."""
        return (self._prefer("outlook.body-content-type") or "").lower() == "text"

    @property
    def timezone(self) -> str:
        zone = self._prefer("outlook.timezone") or "UTC"
        _zone(zone)
        return zone

    def max_page_size(self) -> int | None:
        value = self._prefer("odata.maxpagesize")
        if value is None:
            return None
        try:
            return int(value)
        except ValueError as exc:
            raise GraphError(400, "BadRequest", f"Invalid odata.maxpagesize {value!r}.") from exc

    def select(self) -> list | None:
        value = self.query.get("$select")
        return [s.strip() for s in value.split(",") if s.strip()] if value else None

    def expand(self) -> list | None:
        """[(navigation property lower-cased, set of lower-cased ids in its $filter or None)]."""
        value = self.query.get("$expand")
        if not value:
            return None
        out = []
        for m in re.finditer(r"([A-Za-z]+)(?:\(\$filter=([^)]*)\))?", value):
            ids = None
            if m.group(2) is not None:
                ids = {
                    " ".join(i.split()).lower()
                    for i in re.findall(r"id\s+eq\s+'([^']*)'", m.group(2))
                }
            out.append((m.group(1).lower(), ids))
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    disable_nagle_algorithm = True
    fake: FakeGraph

    def version_string(self) -> str:
        return "Microsoft-IIS/10.0"

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._track(self.connection, False)

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        self.fake._handle_http(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.fake._handle_http(self, "POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self.fake._handle_http(self, "PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self.fake._handle_http(self, "DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self.fake._handle_http(self, "PUT")

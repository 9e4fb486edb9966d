"""Microsoft Graph store: one Exchange Online mailbox through Microsoft Graph (v1.0), the
way the EWS store (ews.py) reaches it through EWS: its URL options, the login (OAuth2
tokens from mailsync.tokens), HTTP with throttling waited out, the folder hierarchy,
creating folders.  A folder's messages are graph_folder.py's.

URLs: ``graph://USER@graph.microsoft.com``.  USER is the mailbox's address, written as
it is (``graph://alice@corp.example@graph.microsoft.com``: the host follows the last
``@``) or percent-encoded (``alice%40corp.example``); requests go to
``/v1.0/users/USER/...``, which serves a delegated login of that user as well as an
application with access to the mailbox.  HTTPS with certificates checked (``cafile=``
trusts a private CA for this store only; ``tls=none``, plain HTTP, is for tests).

Options: the OAuth2 ones of mailsync.tokens (``token_command``, or ``oauth2 =
"microsoft"`` with ``client_id``, ``tenant``, and for an application ``grant =
"client_credentials"`` with ``client_secret_command``); the scope defaults to Graph's:
``https://graph.microsoft.com/.default`` for client credentials, ``Mail.ReadWrite
Calendars.Read Contacts.Read offline_access`` for a user's sign-in.  ``hard_delete``
(deletions skip Deleted Items), ``items`` (``mail``, ``calendar``, ``contacts``: the
latter two pulled into vdirs by graph_items.py), ``calendar_window`` (the events backed
up: "5y,2y", five years back to two ahead, unless it says otherwise), ``timeout``.

HTTP: plain ``requests`` (no SDK), one Session, at most MAX_CONCURRENT requests in
flight (Graph's limit per app and mailbox: 4), JSON answers read up to MAX_JSON bytes
and message bodies up to MAX_MESSAGE, so a hostile server cannot exhaust memory.  A 401
renews the token once, then AuthError (exit 3).  429 and 503 with Retry-After are
waited out (each wait at most MAX_ONE_WAIT, MAX_WAIT in all, each one reported); then
the request fails (the folder, exit 1) with the state as the last committed page left it.

Folders are the mail folders below the message folder root (mailFolders and their
childFolders, hidden ones included when they hold messages): the well-known ones by
name (inbox, sentitems, deleteditems, drafts, junkemail, archive -> INBOX, Sent, Trash,
Drafts, Junk, Archive), the others by display-name path; calendars as Calendar (the
default) and Calendar/NAME, contact folders as Contacts and Contacts/NAME/...
``folder_ids`` gives each name's folder id, so the engine follows a folder renamed on
the server.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mailsync import tokens
from mailsync.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    FolderError,
    StoreError,
)
from mailsync.net import Endpoint, parse_endpoint
from mailsync.stores.base import MAX_FOLDER_DEPTH, Store

if TYPE_CHECKING:  # (graph_folder imports this module)
    from mailsync.stores.graph_folder import GraphFolder
    from mailsync.stores.graph_items import GraphItemsFolder

__all__ = ["GraphStore", "GraphError", "TooLarge"]

log = logging.getLogger("mailsync")

#: Graph's scopes when the options name none (tokens.token_source's default is IMAP's).
APP_SCOPE = "https://graph.microsoft.com/.default"
DELEGATED_SCOPES = "Mail.ReadWrite Calendars.Read Contacts.Read offline_access"
# Well-known folder name -> local name (mailfolder.md, "Use well-known folder names").
WELL_KNOWN = {
    "inbox": "INBOX",
    "sentitems": "Sent",
    "deleteditems": "Trash",
    "drafts": "Drafts",
    "junkemail": "Junk",
    "archive": "Archive",
}
MAX_CONCURRENT = 4  # Outlook service limit: 4 concurrent requests per app and mailbox
MAX_JSON = 32 * 1024 * 1024  # bytes of one JSON answer (a page, a folder list)
MAX_MESSAGE = 200 * 1024 * 1024  # bytes of one message (Exchange Online allows 150 MB)
MAX_ONE_WAIT = 120.0  # seconds: a longer Retry-After is waited this long, then tried
MAX_WAIT = 300.0  # seconds of throttling waited out per request before giving up
DEFAULT_RETRY_AFTER = 5.0  # a 429/503 without a usable Retry-After
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
#: The calendar window's default (issue 13): five years back to two years ahead.
DEFAULT_WINDOW = (dt.timedelta(days=5 * 365 + 1), dt.timedelta(days=2 * 365 + 1))
MIN_RATE = 1024  # bytes a second an answer must keep up after its first `timeout` seconds
_TRUE = ("1", "true", "yes")


class TooLarge(StoreError):
    """An answer longer than the limit its request allows."""


class GraphError(StoreError):
    """Graph answered an error: `status` (HTTP), `code` (its error.code)."""

    def __init__(self, text: str, status: int, code: str):
        super().__init__(text)
        self.status = status
        self.code = code


def _error_code(body: bytes) -> tuple[str, str]:
    """(code, message) of a Graph error body {"error": {"code", "message"}}, as far as
    it is one."""
    try:
        error = json.loads(body.decode("utf-8", "replace")).get("error") or {}
        code, message = str(error.get("code") or ""), str(error.get("message") or "")
    except (ValueError, AttributeError):
        return "", ""
    return code[:100], " ".join(message.split())[:300]


class GraphStore(Store):
    def __init__(
        self,
        url: str,
        options: dict | None = None,
        read_only: bool = False,
        name: str | None = None,
    ):
        self.endpoint: Endpoint = parse_endpoint(url, options)
        ep = self.endpoint
        self.url = ep.display
        self.read_only = read_only
        opts = ep.options
        items = opts.pop("items", ["mail"])
        if isinstance(items, str):
            items = [i.strip() for i in items.split(",") if i.strip()]
        if not isinstance(items, list) or not set(items) <= {"mail", "calendar", "contacts"}:
            raise ConfigError(
                f'store {self.url}: items must be a list of "mail", "calendar", "contacts"'
            )
        self.items = items
        self.hard_delete = str(opts.pop("hard_delete", "false")).lower() in _TRUE
        self.calendar_window = calendar_window(opts.pop("calendar_window", None), self.url)
        opts.pop("password_command", None)  # (a generic network option: no use here)
        if opts.get("oauth2") and "scope" not in opts:
            client_credentials = opts.get("grant") == "client_credentials"
            opts["scope"] = APP_SCOPE if client_credentials else DELEGATED_SCOPES
        self.tokens = tokens.token_source(
            name or f"graph-{ep.user}", ep.user, opts, timeout=ep.timeout
        )
        if opts:
            raise ConfigError(f"store {self.url}: unknown option(s) {', '.join(sorted(opts))}")
        if self.tokens is None:
            raise ConfigError(
                f"store {self.url}: Graph needs OAuth2: give token_command, or "
                'oauth2 = "microsoft" with client_id (see mailsync.conf(5), OAUTH2)'
            )
        if ep.tls == "starttls":
            ep.tls = "implicit"  # graph:// is HTTPS unless tls=none
        scheme = "http" if ep.tls == "none" else "https"
        port = "" if (scheme, ep.port) in (("https", 443), ("http", 80)) else f":{ep.port}"
        self.base = f"{scheme}://{ep.host}{port}/v1.0/users/{quote(ep.user, safe='@')}"
        self._origin = f"{scheme}://{ep.host}{port}/"
        self._session: Any = None
        self._slots = _mailbox_slots(f"{ep.host.lower()}:{ep.port}/{ep.user.lower()}")
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._folders: dict[str, str] | None = None  # name -> folder id
        self._well_known_ids: dict[str, str] = {}  # folder id -> well-known name
        # Messages this run moved between folders (GraphFolder.append), shared with the
        # parallel workers' stores: a folder that listed one before asks where it is now.
        self.moved: set[str] = set()
        # Calendars and contact folders: name -> (kind, collection URL in the mailbox).
        self._item_folders: dict[str, tuple[str, str]] = {}

    def password_endpoint(self) -> Endpoint | None:
        return None  # OAuth2 only

    # HTTP -----------------------------------------------------------------------------
    @property
    def session(self):
        if self._session is None:
            import requests

            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(
                pool_connections=1, pool_maxsize=MAX_CONCURRENT, max_retries=0
            )
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.verify = self.endpoint.cafile or True
            # Not the environment wholesale: a ~/.netrc entry would replace the bearer
            # token.  Its proxy (https_proxy, no_proxy) yes, except for this machine, as
            # oauth.post_form does.
            session.trust_env = False
            if self.endpoint.host.lower() not in _LOOPBACK_HOSTS:
                session.proxies = requests.utils.get_environ_proxies(self.base)
            session.headers["User-Agent"] = "mailsync"
            self._session = session
        return self._session

    def _current_token(self, rejected: str | None = None) -> str:
        assert self.tokens is not None
        with self._token_lock:
            token = self._token
            if token is None:
                token = self.tokens.token()
            elif token == rejected:  # (else another thread renewed it already)
                token = self.tokens.renew(rejected)
            self._token = token
            return token

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        where: str = "",
        params: dict | None = None,
        body: Any = None,
        headers: dict | None = None,
        limit: int | None = None,
    ) -> tuple[int, bytes]:
        """Send a request (`url` relative to the mailbox, or a link Graph gave) and return
        (status, body) of a 2xx answer, the body read up to `limit` bytes.  401 renews the
        token once, then AuthError; 429/503 are waited out (bounded); `limit` defaults to
        MAX_JSON; a longer answer is TooLarge (StoreError); other errors are
        GraphError (StoreError) naming `what`; transport errors ConnectError."""
        where = where or self.url
        if not url.startswith(("http://", "https://")):
            url = f"{self.base}/{url}"
        elif not url.startswith(self._origin):
            # A link from an answer (nextLink, deltaLink) must stay on this server: the
            # token goes with it.
            raise StoreError(f"{where}: the server sent a link to another host; refusing it")
        waited = 0.0
        renewed = False
        token = self._current_token()
        while True:
            status, content, retry_after = self._send(
                method, url, where, what, params, body, headers, token, limit or MAX_JSON
            )
            if 200 <= status < 300:
                return status, content
            code, message = _error_code(content)
            if status == 401:
                if renewed:
                    raise AuthError(
                        f"{where}: Graph refused a fresh OAuth2 token ({code or 'HTTP 401'}: "
                        f"{message or 'no reason given'}); check the token's account and scope "
                        "(Mail.ReadWrite)"
                    )
                log.info("%s: Graph refused the access token; renewing it", where)
                token = self._current_token(rejected=token)
                renewed = True
                continue
            if status in (429, 503):
                delay = min(
                    retry_after if retry_after is not None else DEFAULT_RETRY_AFTER, MAX_ONE_WAIT
                )
                if waited + delay > MAX_WAIT:
                    raise GraphError(
                        f"{where}: Graph kept throttling {what} (HTTP {status}, {waited:g} s "
                        "waited); gave up. The state is consistent: rerun later",
                        status,
                        code,
                    )
                log.warning(
                    "%s: Graph is busy (HTTP %d, throttling%s); waiting %g s",
                    where,
                    status,
                    f": {code}" if code else "",
                    delay,
                )
                time.sleep(delay)
                waited += delay
                continue
            raise GraphError(
                f"{where}: Graph refused {what} (HTTP {status}"
                + (f", {code}: {message}" if code else "")
                + ")",
                status,
                code,
            )

    def _send(self, method, url, where, what, params, body, headers, token, limit):
        """One request: (status, body up to `limit`, Retry-After seconds or None)."""
        import requests

        ep = self.endpoint
        all_headers = {
            "Authorization": f"Bearer {token}",
            # Immutable ids: a message keeps its id when it moves (outlook-immutable-id.md).
            "Prefer": 'IdType="ImmutableId"',
            **(headers or {}),
        }
        kwargs: dict[str, Any] = {"params": params, "headers": all_headers}
        if isinstance(body, (bytes, str)):
            kwargs["data"] = body
        elif body is not None:
            kwargs["json"] = body
        with self._slots:
            try:
                response = self.session.request(
                    method, url, timeout=ep.timeout, stream=True, allow_redirects=False, **kwargs
                )
                try:
                    content = _read_limited(response, limit, where, what, ep.timeout)
                finally:
                    response.close()
            except requests.exceptions.SSLError as error:
                raise ConnectError(
                    f"{where}: TLS with {ep.host} failed ({_one_line(error)}); for a private CA "
                    "give cafile=PATH"
                )
            except requests.exceptions.Timeout:
                raise ConnectError(f"{where}: {what}: no answer within {ep.timeout:g} s")
            except requests.exceptions.RequestException as error:
                raise ConnectError(
                    f"{where}: cannot reach {ep.host}:{ep.port} ({_one_line(error)}); check the "
                    "host name and the network"
                )
        retry_after = None
        value = response.headers.get("Retry-After")
        if value is not None:
            try:
                retry_after = max(0.0, float(value))
            except ValueError:
                retry_after = None
        return response.status_code, content, retry_after

    def get_json(self, url: str, *, what: str, where: str = "", **kwargs) -> dict:
        _status, content = self.request("GET", url, what=what, where=where, **kwargs)
        return _json(content, where or self.url, what)

    def collection(self, url: str, *, what: str, params: dict | None = None) -> Iterator[dict]:
        """Every entity of a paged collection (value + @odata.nextLink)."""
        page = self.get_json(url, what=what, params=params)
        while True:
            values = page.get("value")
            if not isinstance(values, list):
                raise StoreError(f"{self.url}: Graph's answer to {what} has no list of values")
            for value in values:
                if isinstance(value, dict):
                    yield value
            link = page.get("@odata.nextLink")
            if not link:
                return
            page = self.get_json(str(link), what=what)

    # folders --------------------------------------------------------------------------
    def _hierarchy(self) -> dict[str, str]:
        if self._folders is not None:
            return self._folders
        folders = self._mail_hierarchy() if "mail" in self.items else {}
        if "calendar" in self.items:
            self._calendars(folders)
        if "contacts" in self.items:
            self._contact_folders(folders)
        self._folders = folders
        return folders

    def _calendars(self, folders: dict[str, str]) -> None:
        """The default calendar as Calendar, the others as Calendar/NAME."""
        for entry in self.collection("calendars", what="calendars", params={"$top": "100"}):
            calendar_id, display = entry.get("id"), entry.get("name")
            if not isinstance(calendar_id, str) or not isinstance(display, str):
                continue
            if entry.get("isDefaultCalendar") is True:
                name = "Calendar"
            elif _mappable(display):
                name = f"Calendar/{display}"
            else:
                log.warning(
                    "%s: calendar %r has a name mailsync cannot map; skipped", self.url, display
                )
                continue
            if name in folders:
                log.warning("%s: two calendars are named %r; skipped the second", self.url, name)
                continue
            folders[name] = calendar_id
            self._item_folders[name] = ("calendar", f"calendars/{quote(calendar_id, safe='')}")

    def _contact_folders(self, folders: dict[str, str]) -> None:
        """The default contact folder as Contacts, its subfolders as Contacts/NAME/..."""
        folders["Contacts"] = "contacts"
        self._item_folders["Contacts"] = ("contacts", "")
        todo: list[tuple[str, str, int]] = [("Contacts", "contactFolders", 2)]
        while todo:
            parent, url, depth = todo.pop()
            for entry in self.collection(url, what="contactFolders", params={"$top": "100"}):
                folder_id, display = entry.get("id"), entry.get("displayName")
                if not isinstance(folder_id, str) or not isinstance(display, str):
                    continue
                if not _mappable(display) or depth > MAX_FOLDER_DEPTH:
                    log.warning(
                        "%s: contact folder %r cannot be mapped; skipped", self.url, display
                    )
                    continue
                name = f"{parent}/{display}"
                if name in folders:
                    continue
                quoted = quote(folder_id, safe="")
                folders[name] = folder_id
                self._item_folders[name] = ("contacts", f"contactFolders/{quoted}")
                todo.append((name, f"contactFolders/{quoted}/childFolders", depth + 1))

    def _mail_hierarchy(self) -> dict[str, str]:
        for well_known, name in WELL_KNOWN.items():
            try:
                folder = self.get_json(
                    f"mailFolders/{well_known}", what="mailFolders", params={"$select": "id"}
                )
            except GraphError as error:
                if error.status == 403:  # (the first request: the mailbox, not a folder)
                    raise AuthError(
                        f"{error}; this login may not read {self.endpoint.user}'s mailbox: "
                        "sign in as that user (mailsync login), or give the application "
                        "Mail.ReadWrite for it"
                    ) from None
                if error.status != 404:
                    raise
                log.debug("%s: no %s folder", self.url, well_known)
                continue
            if isinstance(folder.get("id"), str):
                self._well_known_ids[folder["id"]] = name
        folders: dict[str, str] = {}
        select = "id,displayName,parentFolderId,childFolderCount,totalItemCount,isHidden"
        params = {"includeHiddenFolders": "true", "$top": "100", "$select": select}
        # (parent's local name or None at the top, the collection's URL, depth)
        todo: list[tuple[str | None, str, int]] = [(None, "mailFolders", 1)]
        while todo:
            parent, url, depth = todo.pop()
            for entry in self.collection(url, what="mailFolders", params=params):
                folder_id, display = entry.get("id"), entry.get("displayName")
                if not isinstance(folder_id, str) or not isinstance(display, str):
                    continue
                known = self._well_known_ids.get(folder_id)
                if known is not None:
                    name = known
                elif not _mappable(display):
                    log.warning(
                        "%s: folder %r has a name mailsync cannot map to a local folder "
                        "('/', '.', '..' or control characters in it); skipped",
                        self.url,
                        display,
                    )
                    continue
                else:
                    name = display if parent is None else f"{parent}/{display}"
                if depth > MAX_FOLDER_DEPTH:
                    self.problems = [
                        *self.problems,
                        f"{self.url}: folder {name} is nested deeper than {MAX_FOLDER_DEPTH} "
                        "levels; not synced",
                    ]
                    continue
                # Hidden folders are system folders unless they hold mail (or folders that do).
                hidden = entry.get("isHidden") is True
                if name in folders:
                    log.warning("%s: two folders are named %r; skipped the second", self.url, name)
                    continue
                if not hidden or (entry.get("totalItemCount") or 0) > 0:
                    folders[name] = folder_id
                if (entry.get("childFolderCount") or 0) > 0:
                    todo.append(
                        (name, f"mailFolders/{quote(folder_id, safe='')}/childFolders", depth + 1)
                    )
        return folders

    def adopt_listing(self, other: Store) -> None:
        """A parallel worker's store takes the main store's folder listing (the same
        mailbox): no second round of mailFolders requests."""
        if isinstance(other, GraphStore):
            self.moved = other.moved  # (the same set)
        if isinstance(other, GraphStore) and other._folders is not None:
            self._folders = dict(other._folders)
            self._well_known_ids = dict(other._well_known_ids)
            self._item_folders = dict(other._item_folders)

    def well_known_id(self, name: str) -> str | None:
        """The folder id of well-known folder `name` (its local name: "Trash" for
        deleteditems), None if the mailbox has none."""
        self._hierarchy()
        return next((fid for fid, known in self._well_known_ids.items() if known == name), None)

    def list_folders(self) -> list[str]:
        return sorted(self._hierarchy())

    def folder_ids(self) -> dict[str, str]:
        return dict(self._hierarchy())

    def folder_kinds(self) -> dict[str, str]:
        self._hierarchy()
        return {name: kind for name, (kind, _url) in self._item_folders.items()}

    def open_folder(
        self, name: str, create: bool = False, kind: str = "mail"
    ) -> GraphFolder | GraphItemsFolder:
        from mailsync.stores.graph_folder import GraphFolder

        folders = self._hierarchy()
        if name in self._item_folders:
            from mailsync.stores.graph_items import GraphItemsFolder

            kind, collection = self._item_folders[name]
            return GraphItemsFolder(self, name, kind, collection)
        if name not in folders:
            if not create:
                raise FolderError(f"{self.url}: no folder {name!r}")
            problem = self.creation_problem(name, kind)
            if problem:
                raise FolderError(f"{self.url}: cannot create {name}: {problem}")
            self._create_folder(name)
        folder_id = folders[name]
        return GraphFolder(self, name, folder_id, self._well_known_ids.get(folder_id))

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        if kind != "mail":
            return f"mailsync does not create {kind} folders"
        if self.read_only:
            return "the store is read-only"
        parts = name.split("/")
        if len(parts) > MAX_FOLDER_DEPTH or any(
            not part or part in (".", "..") or _BAD_NAME.search(part) for part in parts
        ):
            return f"no folder can be named {name!r} here"
        return None

    def _create_folder(self, name: str) -> str:
        folders = self._hierarchy()
        parent_name, _, leaf = name.rpartition("/")
        if parent_name:
            parent_id = folders.get(parent_name) or self._create_folder(parent_name)
            url = f"mailFolders/{quote(parent_id, safe='')}/childFolders"
        else:
            url = "mailFolders"
        try:
            _status, content = self.request(
                "POST",
                url,
                what="creating a folder",
                where=f"{self.url} {name}",
                body={"displayName": leaf},
            )
        except GraphError as error:
            if error.code == "ErrorFolderExists":
                raise FolderError(
                    f"{self.url} {name}: the server has a folder of this name already (Sent "
                    "Items, Deleted Items and Junk Email are mailsync's Sent, Trash and Junk); "
                    "rename the folder"
                )
            raise FolderError(str(error))
        created = _json(content, self.url, "creating a folder")
        folder_id = created.get("id")
        if not isinstance(folder_id, str):
            raise FolderError(f"{self.url} {name}: Graph created the folder but gave no id")
        folders[name] = folder_id
        return folder_id

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


def calendar_window(value: object, where: str) -> tuple[dt.timedelta, dt.timedelta]:
    """The calendar_window option, "BACK,AHEAD" with each a number of days (``d``) or
    years (``y``, 365 days), as (back, ahead); the default five years back to two
    ahead.  ConfigError for anything else."""
    if value is None or value == "":
        return DEFAULT_WINDOW
    parts = str(value).replace(" ", "").split(",")
    spans = []
    for part in parts:
        match = re.fullmatch(r"(\d{1,5})([dy])", part)
        if match is None or len(parts) != 2:
            raise ConfigError(
                f'store {where}: calendar_window is "BACK,AHEAD" in days or years, such as '
                f'"5y,2y" (the default) or "400d,90d"'
            )
        days = int(match.group(1)) * (365 if match.group(2) == "y" else 1)
        spans.append(dt.timedelta(days=min(days, 100 * 365)))
    return spans[0], spans[1]


def _mappable(display: str) -> bool:
    """Whether a display name can be one part of a local folder name."""
    return (
        bool(display)
        and "/" not in display
        and display not in (".", "..")
        and not (_BAD_NAME.search(display))
    )


_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _mailbox_slots(mailbox: str) -> threading.BoundedSemaphore:
    """The slots of requests in flight to one mailbox, shared by every store of it in
    this process: parallel workers each open their own store, and Graph's limit is per
    app and mailbox."""
    with _SLOTS_LOCK:
        slots = _SLOTS.get(mailbox)
        if slots is None:
            slots = _SLOTS[mailbox] = threading.BoundedSemaphore(MAX_CONCURRENT)
        return slots


def _read_limited(response, limit: int, where: str, what: str, timeout: float) -> bytes:
    """The body of `response`, refusing one longer than `limit` bytes (read in chunks,
    never whole, so a hostile length costs at most `limit`), or one that arrives slower
    than MIN_RATE on average after its first `timeout` seconds (ConnectError: a server
    dripping a byte at a time cannot hold a run)."""
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(
            f"{where}: Graph's answer to {what} is {int(declared)} bytes, over the limit of {limit}"
        )
    chunks = bytearray()
    started = time.monotonic()
    for chunk in _pieces(response):
        chunks += chunk
        late = time.monotonic() - started - timeout
        if late > 0 and len(chunks) < MIN_RATE * late:
            raise ConnectError(
                f"{where}: Graph's answer to {what} is arriving too slowly "
                f"({len(chunks)} bytes in {late + timeout:.0f} s); gave up"
            )
        if len(chunks) > limit:
            raise TooLarge(f"{where}: Graph's answer to {what} is over the limit of {limit} bytes")
    return bytes(chunks)


def _pieces(response) -> Iterator[bytes]:
    """The body as it arrives: urllib3's read1() gives what is there (up to 64 KiB), where
    iter_content() would wait for whole chunks, which a dripping server never fills."""
    raw = response.raw
    if not hasattr(raw, "read1"):  # urllib3 1.x
        yield from response.iter_content(chunk_size=1024)
        return
    while True:
        piece = raw.read1(1 << 16, decode_content=True)
        if not piece:
            return
        yield piece


def _json(content: bytes, where: str, what: str) -> dict:
    try:
        data = json.loads(content)
    except ValueError:
        raise StoreError(f"{where}: Graph's answer to {what} is not JSON")
    if not isinstance(data, dict):
        raise StoreError(f"{where}: Graph's answer to {what} is not a JSON object")
    return data


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(error).__name__

"""Exchange store: Exchange Web Services through exchangelib.

URLs: ``ews://USER@HOST/EWS/Exchange.asmx`` (HTTPS; ``tls=none`` for plain HTTP only when
asked for, ``cafile=`` trusts a private CA for this endpoint only) or
``ews://USER@HOST?autodiscover=1``.  Options: ``auth`` = ntlm | basic | oauth2 (for
oauth2: ``client_id``, ``tenant_id`` and ``client_secret``, or a ``token_command``
printing an access token), ``hard_delete`` (deletions skip Deleted Items), ``address``
(the mailbox's SMTP address when the login is not one).  The endpoint, auth type and
server version found by the first connection are cached
(``$XDG_CACHE_HOME/mailsync/ews-*.json``) so later runs do not probe again.

Folders are the mail folders (class IPF.Note and its subclasses) below the message
folder root: the well-known ones by their distinguished ids (inbox -> INBOX, sentitems
-> Sent, deleteditems -> Trash, drafts -> Drafts, junkemail -> Junk), the others by
display-name path.  ``folder_ids`` gives each name's folder id, so the engine can follow
a folder renamed on the server.

Keys are ItemIds.  A folder's cursor is its SyncFolderItems SyncState: a rerun asks for
the changes since (creates, updates, read-flag changes, deletions), page by page; an
expired or invalid SyncState (ErrorInvalidSyncStateData) means a full listing, which the
engine re-matches by ItemId and content, so nothing is downloaded twice.  Bodies come
from GetItem with MIME content in batches sized by item size; an item the server cannot
convert (ErrorMimeContentConversionFailed, ErrorItemNotFound...) is skipped with a
warning.  Flags: IsRead <-> \\Seen, the follow-up flag (PR_FLAG_STATUS) <-> \\Flagged,
PR_LAST_VERB_EXECUTED (reply / forward) <-> \\Answered / $Forwarded, categories <->
keywords; the arrival date is DateTimeReceived.  New messages are created from their
MIME with their read state (PR_MESSAGE_FLAGS, so they are not drafts), flags and
original delivery time (PR_MESSAGE_DELIVERY_TIME).  Throttling (ErrorServerBusy with
BackOffMilliseconds, HTTP 503/429) is waited out by exchangelib's retry policy and
reported; a run that gives up says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import urlsplit

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
from mailsync.message import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    FORWARDED,
    SEEN,
    Info,
    to_crlf,
    to_lf,
)
from mailsync.net import (
    Endpoint,
    forget_password,
    parse_endpoint,
    password_for,
    secret_from_command,
)
from mailsync.stores.base import Folder, Store

log = logging.getLogger("mailsync")

AUTH_TYPES = ("ntlm", "basic", "oauth2")
# Distinguished folder id -> (local name, exchangelib Account attribute, what it holds).
WELL_KNOWN = {
    "inbox": ("INBOX", "inbox", "mail"),
    "sentitems": ("Sent", "sent", "mail"),
    "deleteditems": ("Trash", "trash", "mail"),
    "drafts": ("Drafts", "drafts", "mail"),
    "junkemail": ("Junk", "junk", "mail"),
    "calendar": ("Calendar", "calendar", "calendar"),
    "contacts": ("Contacts", "contacts", "contacts"),
}
# what a folder holds -> its folder class (and subclasses: "IPF.Note.x")
KIND_CLASSES = {"mail": "IPF.Note", "calendar": "IPF.Appointment", "contacts": "IPF.Contact"}


def kind_of(folder_class: str) -> str | None:
    for kind, cls in KIND_CLASSES.items():
        if folder_class == cls or folder_class.startswith(cls + "."):
            return kind
    return None


# Changes per SyncFolderItems page (Exchange's own maximum); MAILSYNC_EWS_PAGE_SIZE is for
# tests that need many pages from a small folder.
PAGE_SIZE = int(os.environ.get("MAILSYNC_EWS_PAGE_SIZE") or 512)
FETCH_BATCH_BYTES = 4 * 1024 * 1024  # MIME per GetItem, by item size
FETCH_BATCH_MAX = 100
MAX_WAIT = 300  # seconds of throttling waited out before a run gives up
ITEM_ERRORS = (
    "ErrorItemNotFound",
    "ErrorMimeContentConversionFailed",
    "ErrorCorruptData",
    "ErrorInvalidItemForOperation",
    "ErrorAccessDenied",
    "ErrorMessageSizeExceeded",
)
# CreateItem errors about the message itself: creating it again will fail again
# (RefusedError, recorded, not offered again unless --retry-refused).  Others, such as
# ErrorQuotaExceeded or ErrorServerBusy, may pass and are retried on the next run.
CREATE_REFUSALS = frozenset(
    {
        "ErrorMessageSizeExceeded",
        "ErrorMimeContentConversionFailed",
        "ErrorMimeContentInvalid",
        "ErrorMimeContentInvalidBase64String",
        "ErrorCorruptData",
        "ErrorInvalidPropertyValue",
    }
)
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")
# PR_LAST_VERB_EXECUTED values (MS-OXOMSG 2.2.1.29)
VERB_REPLY, VERB_REPLY_ALL, VERB_FORWARD = 102, 103, 104
FLAG_STATUS_FLAGGED = 2  # PR_FLAG_STATUS: 0 none, 1 complete, 2 flagged
MSGFLAG_READ = 0x1  # PR_MESSAGE_FLAGS; without MSGFLAG_UNSENT (0x8) it is no draft


# -- exchangelib glue ---------------------------------------------------------------------

# Message fields for the MAPI properties this store reads and writes (MS-OXPROPS).
MAPI_PROPERTIES = {
    "ms_flag_status": (0x1090, "Integer"),  # PR_FLAG_STATUS: the follow-up flag
    "ms_last_verb": (0x1081, "Integer"),  # PR_LAST_VERB_EXECUTED: replied, forwarded
    "ms_message_flags": (0x0E07, "Integer"),  # PR_MESSAGE_FLAGS: read, not a draft
    "ms_delivery_time": (0x0E06, "SystemTime"),  # PR_MESSAGE_DELIVERY_TIME: received
}
_SETUP_LOCK = threading.Lock()
_SET_UP = False


def _exchangelib():
    """Import exchangelib (slow: only when an ews:// store is used) and register the MAPI
    properties this store reads and writes, once."""
    global _SET_UP
    import exchangelib

    if _SET_UP:
        return exchangelib
    from exchangelib import ExtendedProperty, Message
    from exchangelib.protocol import BaseProtocol

    with _SETUP_LOCK:
        if _SET_UP:
            return exchangelib
        for name, (tag, kind) in MAPI_PROPERTIES.items():
            try:
                Message.get_field_by_fieldname(name)
            except Exception:
                cls = type(name, (ExtendedProperty,), {"property_tag": tag, "property_type": kind})
                Message.register(name, cls)
        BaseProtocol.HTTP_ADAPTER_CLS = _adapter_class(BaseProtocol.HTTP_ADAPTER_CLS)
        _route_exchangelib_log()
        _SET_UP = True
    return exchangelib


_CAFILES: dict[str, str] = {}  # "host:port" -> CA file trusted for that endpoint only


def _adapter_class(base):
    """An HTTP adapter that adds a store's cafile= to the requests for its endpoint, and
    leaves certificate checks on for everything (never process-wide verify=False)."""
    if getattr(base, "_mailsync", False):
        return base

    class CAFileAdapter(base):
        _mailsync = True

        def send(self, request, **kwargs):
            parts = urlsplit(request.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            cafile = _CAFILES.get(f"{(parts.hostname or '').lower()}:{port}")
            # verify may be True or a bundle from REQUESTS_CA_BUNDLE; False only if some
            # other code turned checks off on purpose, which we leave alone.
            if cafile and kwargs.get("verify", True) is not False:
                kwargs["verify"] = cafile
            return super().send(request, **kwargs)

    return CAFileAdapter


class _BackOffReporter(logging.Handler):
    """exchangelib says when the server asked it to back off; say it in our log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            return
        if "back off" in text.lower() or "throttl" in text.lower():
            log.warning("exchange: the server is busy (throttling): %s", text)


def _route_exchangelib_log() -> None:
    for name in ("exchangelib.util", "exchangelib.protocol"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _BackOffReporter) for h in logger.handlers):
            logger.addHandler(_BackOffReporter(level=logging.WARNING))


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "mailsync")


def _when(value) -> float:
    if value is None:
        return 0.0
    try:
        return value.timestamp()
    except (AttributeError, OverflowError, OSError, ValueError):
        return 0.0


def flags_of(item) -> frozenset[str]:
    """An exchangelib Message's fields -> IMAP-style flags."""
    flags = set()
    if getattr(item, "is_read", False):
        flags.add(SEEN)
    if getattr(item, "ms_flag_status", None) == FLAG_STATUS_FLAGGED:
        flags.add(FLAGGED)
    verb = getattr(item, "ms_last_verb", None)
    if verb in (VERB_REPLY, VERB_REPLY_ALL):
        flags.add(ANSWERED)
    elif verb == VERB_FORWARD:
        flags.add(FORWARDED)
    for category in getattr(item, "categories", None) or ():
        if category:
            flags.add(category)
    return frozenset(flags)


LIST_FIELDS = [
    "is_read",
    "categories",
    "size",
    "datetime_received",
    "ms_flag_status",
    "ms_last_verb",
]


# -- store ---------------------------------------------------------------------------------


class EWSStore(Store):
    def __init__(self, url: str, options: dict | None = None, read_only: bool = False):
        self.endpoint: Endpoint = parse_endpoint(url, options)
        ep = self.endpoint
        self.url = ep.display
        self.read_only = read_only
        opts = ep.options
        self.auth = str(opts.pop("auth", "ntlm")).lower()
        if self.auth not in AUTH_TYPES:
            raise ConfigError(f"store {self.url}: auth must be one of {', '.join(AUTH_TYPES)}")
        self.autodiscover = str(opts.pop("autodiscover", "0")).lower() in ("1", "true", "yes")
        items = opts.pop("items", ["mail"])
        if isinstance(items, str):
            items = [i.strip() for i in items.split(",") if i.strip()]
        if not isinstance(items, list) or not set(items) <= {"mail", "calendar", "contacts"}:
            raise ConfigError(
                f'store {self.url}: items must be a list of "mail", "calendar", "contacts"'
            )
        self.items = items
        self.hard_delete = str(opts.pop("hard_delete", "false")).lower() in ("1", "true", "yes")
        self.address = opts.pop("address", None) or ep.user
        self.oauth = {
            k: opts.pop(k)
            for k in ("client_id", "tenant_id", "client_secret", "token_command")
            if k in opts
        }
        opts.pop("password_command", None)  # read by net.get_password
        if opts:
            raise ConfigError(f"store {self.url}: unknown option(s) {', '.join(sorted(opts))}")
        if self.auth == "oauth2" and not (
            self.oauth.get("token_command") or {"client_id", "client_secret"} <= set(self.oauth)
        ):
            raise ConfigError(
                f"store {self.url}: auth = oauth2 needs client_id and client_secret (and "
                "tenant_id), or token_command"
            )
        if ep.tls == "starttls":
            ep.tls = "implicit"  # ews:// is HTTPS unless tls=none
        if ep.cafile:
            _CAFILES[f"{ep.host.lower()}:{ep.port}"] = ep.cafile
        self._account = None
        self._folders: dict[str, object] | None = None  # name -> exchangelib folder
        self._ids: dict[str, str] = {}
        self._kinds: dict[str, str] = {}  # name -> "mail" / "calendar" / "contacts"

    def password_endpoint(self):
        return None if self.auth == "oauth2" else self.endpoint

    # connection -----------------------------------------------------------------------
    def _cache_path(self) -> str:
        key = f"{self.endpoint.user}@{self.endpoint.host}:{self.endpoint.port}{self.endpoint.path}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return os.path.join(_cache_dir(), f"ews-{digest}.json")

    def _load_cache(self) -> dict:
        try:
            with open(self._cache_path(), encoding="utf-8") as handle:
                data = json.load(handle)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_cache(self, data: dict) -> None:
        path = self._cache_path()
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, sort_keys=True)
            os.replace(tmp, path)
        except OSError as error:
            log.debug("cannot write the EWS cache %s: %s", path, error)

    def _credentials(self, exl):
        ep = self.endpoint
        if self.auth == "oauth2":
            if ep.tls == "none":
                # oauthlib refuses plain HTTP unless told; tls=none asked for exactly that.
                os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
            command = self.oauth.get("token_command")
            if command:
                token = secret_from_command(command, f"token_command for {ep.display}")
                return exl.OAuth2AuthorizationCodeCredentials(
                    access_token={"access_token": token, "token_type": "Bearer"}
                )
            return exl.OAuth2Credentials(
                client_id=self.oauth["client_id"],
                client_secret=self.oauth["client_secret"],
                tenant_id=self.oauth.get("tenant_id"),
                identity=exl.Identity(primary_smtp_address=self.address),
            )
        return exl.Credentials(ep.user, password_for(ep))

    @property
    def account(self):
        if self._account is None:
            self._account = self._patiently(self.url, "login", self._connect)
        return self._account

    def _connect(self):
        exl = _exchangelib()
        from exchangelib.errors import (
            ErrorServerBusy,
            EWSError,
            MalformedResponseError,
            ResponseMessageError,
            TransportError,
            UnauthorizedError,
        )
        from exchangelib.protocol import FailFast, FaultTolerance
        from exchangelib.version import Build, Version

        ep = self.endpoint
        auth_type = {"ntlm": exl.NTLM, "basic": exl.BASIC, "oauth2": exl.OAUTH2}[self.auth]
        cache = self._load_cache()
        scheme = "http" if ep.tls == "none" else "https"
        endpoint = cache.get("endpoint")
        if not endpoint and not self.autodiscover:
            endpoint = f"{scheme}://{ep.host}:{ep.port}{ep.path or '/EWS/Exchange.asmx'}"
        version = None
        if cache.get("build"):
            try:
                build = Build(*[int(p) for p in cache["build"].split(".")])
                version = Version(build=build, api_version=cache.get("api_version"))
            except (TypeError, ValueError):
                version = None
        retry = FaultTolerance(max_wait=min(MAX_WAIT, max(ep.timeout, 1) * 5))
        try:
            credentials = self._credentials(exl)
            if endpoint:
                config = exl.Configuration(
                    service_endpoint=endpoint,
                    credentials=credentials,
                    auth_type=auth_type,
                    version=version,
                    # A 401 while logging in is a wrong password, not throttling: fail
                    # fast until the first request worked, then wait throttling out.
                    retry_policy=FailFast(),
                    max_connections=4,
                )
                account = exl.Account(
                    primary_smtp_address=self.address,
                    config=config,
                    autodiscover=False,
                    access_type=exl.DELEGATE,
                )
            else:
                config = exl.Configuration(
                    credentials=credentials, auth_type=auth_type, retry_policy=retry
                )
                account = exl.Account(
                    primary_smtp_address=self.address,
                    config=config,
                    autodiscover=True,
                    access_type=exl.DELEGATE,
                )
            account.protocol.TIMEOUT = ep.timeout
            found_version = account.version  # probes the server when not cached
            account.msg_folder_root  # noqa: B018  (the first real request: credentials)
            account.protocol.config.retry_policy = retry
        except UnauthorizedError as error:
            forget_password(ep)
            raise AuthError(
                f"{ep.display}: login failed ({_clean(error)}); check the user name, password "
                "and auth (ntlm, basic or oauth2)"
            )
        except ErrorServerBusy:
            raise  # throttled while logging in: _patiently waits
        except ResponseMessageError as error:  # the server answered: not a transport problem
            raise _ews_error(ep.display, error)
        except MalformedResponseError:
            raise  # HTTP 429: _patiently waits
        except TransportError as error:
            if "ErrorServerBusy" in str(error) or isinstance(error.__context__, ErrorServerBusy):
                raise  # throttled while logging in: _patiently waits
            raise ConnectError(_transport_message(ep, error))
        except EWSError as error:
            raise _ews_error(ep.display, error)
        except MailsyncError:
            raise
        except Exception as error:
            raise ConnectError(f"{ep.display}: {_clean(error)}")
        fresh = {
            "endpoint": account.protocol.service_endpoint,
            "auth_type": account.protocol.auth_type,
            "build": str(found_version.build) if found_version and found_version.build else None,
            "api_version": getattr(found_version, "api_version", None),
        }
        if fresh != {k: cache.get(k) for k in fresh}:
            self._save_cache(fresh)
        log.debug("connected to %s (%s)", ep.display, fresh)
        return account

    def call(self, what: str, function, *args, folder: str | None = None, **kwargs):
        """Run an exchangelib call; its errors become ours."""

        where = self.url + (f" {folder}" if folder else "")
        return self._patiently(where, what, self._call_once, where, what, function, *args, **kwargs)

    @staticmethod
    def _patiently(where: str, what: str, function, *args, **kwargs):
        """function(), sent again when the server said it is busy and not to come back
        before a while: HTTP 429 with Retry-After (exchangelib does not retry those), and
        ErrorServerBusy while logging in (fail-fast there, for wrong passwords).  Either
        way the request was not carried out, so sending it again is safe."""
        from exchangelib.errors import ErrorServerBusy, MalformedResponseError, TransportError

        waited = 0.0
        while True:
            try:
                return function(*args, **kwargs)
            except MalformedResponseError as error:
                if not re.search(r"Code: 429\b", str(error)):
                    raise StoreError(f"{where}: unreadable response to {what} ({_clean(error)})")
                after = re.search(r"['\"]retry-after['\"]:\s*['\"](\d+)", str(error), re.I)
                delay, why = (float(after.group(1)) if after else 5.0), "HTTP 429"
            except (ErrorServerBusy, TransportError) as error:
                busy = error if isinstance(error, ErrorServerBusy) else error.__context__
                if not isinstance(busy, ErrorServerBusy) and "ErrorServerBusy" not in str(error):
                    raise
                delay = float(getattr(busy, "back_off", None) or 5.0)
                why = "ErrorServerBusy"
            if waited + delay > MAX_WAIT:
                raise StoreError(
                    f"{where}: the server kept throttling {what} ({why}, {waited:g} s waited); "
                    "gave up. The state is consistent: rerun later"
                )
            log.warning("%s: the server is busy (%s, throttling); waiting %g s", where, why, delay)
            time.sleep(delay)
            waited += delay

    def _call_once(self, where: str, what: str, function, *args, **kwargs):
        from exchangelib.errors import (
            ErrorServerBusy,
            EWSError,
            MalformedResponseError,
            RateLimitError,
            ResponseMessageError,
            TransportError,
            UnauthorizedError,
        )

        try:
            return function(*args, **kwargs)
        except (MailsyncError, MalformedResponseError):
            raise
        except UnauthorizedError as error:
            raise AuthError(f"{where}: the server no longer accepts the login ({_clean(error)})")
        except (RateLimitError, ErrorServerBusy) as error:
            raise StoreError(
                f"{where}: the server kept throttling {what} ({_clean(error)}); gave up. The "
                "state is consistent: rerun later"
            )
        except ResponseMessageError as error:
            raise _ews_error(where, error, what=what)
        except TransportError as error:
            raise ConnectError(f"{where}: {what}: {_transport_message(self.endpoint, error)}")
        except EWSError as error:
            raise _ews_error(where, error, what=what)

    # folders --------------------------------------------------------------------------
    def _hierarchy(self) -> dict[str, object]:
        if self._folders is not None:
            return self._folders
        exl = _exchangelib()
        account = self.account
        root = self.call("GetFolder", lambda: account.msg_folder_root)
        well_known = {}
        for distinguished, (name, attribute, kind) in WELL_KNOWN.items():
            if kind not in self.items:
                continue
            try:
                folder = self.call("GetFolder", lambda a=attribute: getattr(account, a))
            except MailsyncError as error:
                log.debug("%s: no %s folder: %s", self.url, distinguished, error)
                continue
            if folder is not None:
                well_known[folder.id] = (name, folder)
                self._kinds[name] = kind
        folders: dict[str, object] = {}
        by_id: dict[str, object] = {}

        def collect():
            for change, folder in root.sync_hierarchy(
                only_fields=["name", "folder_class", "parent_folder_id"]
            ):
                if change in ("create", "update") and isinstance(folder, exl.folders.BaseFolder):
                    # exchangelib builds these with the class of the folder synced from
                    # (MsgFolderRoot), which it would address by that distinguished id:
                    # a plain Folder with the real id instead.
                    by_id[folder.id] = exl.Folder(
                        root=account.root,
                        id=folder.id,
                        changekey=folder.changekey,
                        name=folder.name,
                        folder_class=folder.folder_class,
                        parent_folder_id=folder.parent_folder_id,
                    )

        self.call("SyncFolderHierarchy", collect)
        for folder_id, (_name, folder) in well_known.items():
            by_id[folder_id] = folder
        names: dict[str, str] = {}

        def path(folder, depth=0) -> str | None:
            if folder.id in well_known:
                return well_known[folder.id][0]
            if folder.id in names:
                return names[folder.id]
            display = folder.name or ""
            if not display or "/" in display or display in (".", "..") or _BAD_NAME.search(display):
                return None
            parent_id = folder.parent_folder_id.id if folder.parent_folder_id else None
            if parent_id == root.id or parent_id is None or depth > 64:
                result = display
            else:
                parent = by_id.get(parent_id)
                if parent is None:
                    return None
                parent_path = path(parent, depth + 1)
                if parent_path is None:
                    return None
                result = f"{parent_path}/{display}"
            names[folder.id] = result
            return result

        for folder_id, folder in by_id.items():
            kind = kind_of(getattr(folder, "folder_class", None) or "")
            if folder_id in well_known:
                kind = self._kinds[well_known[folder_id][0]]
            if kind not in self.items:
                continue
            name = path(folder)
            if name is None:
                log.warning(
                    "%s: folder %r has a name mailsync cannot map to a local folder "
                    "('/', '.', '..' or control characters in it); skipped",
                    self.url,
                    folder.name,
                )
                continue
            if name in folders:
                log.warning("%s: two folders are named %r; skipped the second", self.url, name)
                continue
            folders[name] = folder
            self._ids[name] = folder_id
            self._kinds[name] = kind
        self._folders = folders
        return folders

    def list_folders(self) -> list[str]:
        return sorted(self._hierarchy())

    def folder_ids(self) -> dict[str, str]:
        self._hierarchy()
        return dict(self._ids)

    def folder_kinds(self) -> dict[str, str]:
        self._hierarchy()
        return {name: kind for name, kind in self._kinds.items() if kind != "mail"}

    def open_folder(self, name: str, create: bool = False, kind: str = "mail") -> EWSFolder:
        folders = self._hierarchy()
        if name not in folders:
            if not create:
                raise FolderError(f"{self.url}: no folder {name!r}")
            if kind != "mail":
                raise FolderError(f"{self.url}: mailsync does not create {kind} folders")
            if self.read_only:
                raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
            folders[name] = self._create_folder(name)
            self._ids[name] = folders[name].id
            self._kinds[name] = "mail"
        return EWSFolder(self, name, folders[name], self._kinds.get(name, "mail"))

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        if kind != "mail":
            return f"{self.url}: mailsync does not create {kind} folders"
        if self.read_only:
            return "the store is read-only"
        if any(
            not part or part in (".", "..") or _BAD_NAME.search(part) for part in name.split("/")
        ):
            return f"{self.url}: cannot create a folder named {name!r}"
        return None

    def _create_folder(self, name: str):
        exl = _exchangelib()
        folders = self._hierarchy()
        # Every part: the parents are created by name below (an empty first part, as in
        # "/tmp/x", would make "tmp" at the top).
        if any(
            not part or part in (".", "..") or _BAD_NAME.search(part) for part in name.split("/")
        ):
            raise FolderError(f"{self.url}: cannot create a folder named {name!r}")
        parent_name, _, leaf = name.rpartition("/")
        if parent_name:
            parent = folders.get(parent_name) or self._create_folder(parent_name)
            folders[parent_name] = parent
            self._ids[parent_name] = parent.id
        else:
            parent = self.call("GetFolder", lambda: self.account.msg_folder_root)
        folder = exl.Folder(parent=parent, name=leaf, folder_class="IPF.Note")
        self.call("CreateFolder", folder.save, folder=name)
        return folder

    def close(self) -> None:
        account, self._account = self._account, None
        if account is not None:
            try:
                account.protocol.close()
            except Exception:
                pass


# -- folder --------------------------------------------------------------------------------


class EWSFolder(Folder):
    validity = ""  # ItemIds stay valid; an invalid SyncState is handled by a full listing
    # Exchange keeps a message as its own properties and makes its MIME again when asked:
    # what it gives back may differ from what CreateItem was given (folded headers,
    # encodings, added headers).  Copies to it are journaled and matched tolerantly.
    normalises = True

    def __init__(self, store: EWSStore, name: str, folder, kind: str = "mail"):
        self.store = store
        self.name = name
        self.folder = folder
        self.read_only = store.read_only
        self.kind = kind  # calendar and contacts folders are backed up (pulled) only
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
            new_state = service.sync_state
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

    def list(self) -> dict[str, Info]:
        return self.list_since({}, {})

    def list_since(self, cursor: dict, known: Mapping[str, frozenset[str]]) -> dict[str, Info]:
        listing = {key: Info(flags, 0, 0.0) for key, flags in known.items()} if cursor else {}
        for page, _cursor in self.pages(cursor, known):
            if page is None:  # the cursor is void: a full listing follows
                listing = {}
                continue
            for key, info in page.items():
                if info is None:
                    listing.pop(key, None)
                else:
                    listing[key] = info
        return listing

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
    def fetch(self, key: str) -> bytes:
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

    def _fetch_batch(self, keys: list[str]):
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

    def append(self, data: bytes, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        if self.kind != "mail":
            raise MessageError(
                f"{self.store.url} {self.name}: {self.kind} items are backed up (pulled) "
                "only; mailsync does not create them on the server"
            )
        exl = _exchangelib()
        account = self.store.account
        message = exl.Message(
            account=account,
            folder=self.folder,
            mime_content=to_crlf(data),
            is_read=SEEN in flags,
            categories=sorted(_keywords(flags)) or None,
        )
        message.ms_message_flags = MSGFLAG_READ if SEEN in flags else 0
        if FLAGGED in flags:
            message.ms_flag_status = FLAG_STATUS_FLAGGED
        if ANSWERED in flags:
            message.ms_last_verb = VERB_REPLY
        elif FORWARDED in flags:
            message.ms_last_verb = VERB_FORWARD
        if arrival:
            message.ms_delivery_time = exl.EWSDateTime.from_datetime(
                dt.datetime.fromtimestamp(arrival, dt.UTC)
            )
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
            fields = []
            if SEEN in add or SEEN in remove:
                message.is_read = SEEN in add
                fields.append("is_read")
            if FLAGGED in add or FLAGGED in remove:
                message.ms_flag_status = FLAG_STATUS_FLAGGED if FLAGGED in add else None
                fields.append("ms_flag_status")
            if {ANSWERED, FORWARDED} & (add | remove):
                # One property holds both: the last verb.  Removing one clears it.
                if ANSWERED in add:
                    message.ms_last_verb = VERB_REPLY
                elif FORWARDED in add:
                    message.ms_last_verb = VERB_FORWARD
                else:
                    message.ms_last_verb = None
                fields.append("ms_last_verb")
            if keywords_add or keywords_remove:
                message.categories = sorted((categories | keywords_add) - keywords_remove) or None
                fields.append("categories")
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

    def _remove(self, keys: list[str]) -> None:
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


# -- helpers -------------------------------------------------------------------------------


def _keywords(flags) -> set[str]:
    """The flags that are categories on Exchange (not system flags, not $Forwarded)."""
    return {f for f in flags if not f.startswith("\\") and f != FORWARDED}


def _clean(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return text or type(error).__name__


def _transport_message(ep: Endpoint, error: BaseException) -> str:
    text = _clean(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"{ep.display}: the server's certificate is not trusted; for a private CA give "
            "cafile=PATH"
        )
    if "Connection refused" in text or "Name or service not known" in text or "Max retries" in text:
        return (
            f"cannot connect to {ep.host}:{ep.port} ({text}); check the host name and port, "
            "and that the server is up"
        )
    return f"{ep.display}: {text}"


def _ews_error(where: str, error: BaseException, what: str = "") -> MailsyncError:
    code = type(error).__name__
    if code == "ErrorInvalidSyncStateData":
        return _SyncStateError(str(error))
    if code in ("ErrorFolderNotFound",):
        return FolderError(f"{where}: the folder is gone from the server ({code})")
    if code == "ErrorFolderExists":  # a folder of the name, maybe a well-known one
        return FolderError(
            f"{where}: the server has a folder of this name already ({code}; Sent Items, "
            "Deleted Items and Junk Email are mailsync's Sent, Trash and Junk); rename the folder"
        )
    doing = f" during {what}" if what else ""
    if what == "CreateItem" and code in CREATE_REFUSALS:
        return RefusedError(f"{where}: the server refuses the message", f"{code}: {_clean(error)}")
    return StoreError(f"{where}: the server refused the request{doing} ({code}: {_clean(error)})")


class _SyncStateError(FolderError):
    pass

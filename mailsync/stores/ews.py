"""Exchange store: one Exchange account through Exchange Web Services (exchangelib): its
URL options, the login (endpoint, auth, the cache of what the first connection found),
calls with throttling waited out, the folder hierarchy, creating folders.  A folder's
messages are ews_folder.py's; exchangelib's items and errors in mailsync's terms
ews_items.py's.

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

Throttling (ErrorServerBusy with BackOffMilliseconds, HTTP 503/429) is waited out by
exchangelib's retry policy and reported; a run that gives up says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from typing import Any

from mailsync.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    FolderError,
    MailsyncError,
    StoreError,
)
from mailsync.net import (
    Endpoint,
    forget_password,
    parse_endpoint,
    password_for,
    secret_from_command,
)
from mailsync.stores.base import Store
from mailsync.stores.ews_folder import EWSFolder
from mailsync.stores.ews_items import _CAFILES, _clean, _ews_error, _exchangelib, _transport_message

__all__ = ["EWSStore", "EWSFolder"]

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


MAX_WAIT = 300  # seconds of throttling waited out before a run gives up
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "mailsync")


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
        # password_command stays in the endpoint's options: net.get_password reads it
        # there when connecting (popped, a URL's or an accounts file's was never used).
        unknown = set(opts) - {"password_command"}
        if unknown:
            raise ConfigError(f"store {self.url}: unknown option(s) {', '.join(sorted(unknown))}")
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
        self._folders: dict[str, Any] | None = None  # name -> exchangelib folder (untyped)
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
    def _hierarchy(self) -> dict[str, Any]:
        if self._folders is not None:
            return self._folders
        exl = _exchangelib()
        account = self.account
        root = self.call("GetFolder", lambda: account.msg_folder_root)
        well_known = {}
        for distinguished, (known_name, attribute, known_kind) in WELL_KNOWN.items():
            if known_kind not in self.items:
                continue
            try:
                folder = self.call("GetFolder", lambda a=attribute: getattr(account, a))
            except MailsyncError as error:
                log.debug("%s: no %s folder: %s", self.url, distinguished, error)
                continue
            if folder is not None:
                well_known[folder.id] = (known_name, folder)
                self._kinds[known_name] = known_kind
        folders: dict[str, Any] = {}
        by_id: dict[str, Any] = {}

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
            if kind is None or kind not in self.items:
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

"""IMAP store (imapclient): folders, incremental listings, batched fetch and writes.

Keys are UIDs (as strings) under the folder's UIDVALIDITY.  What it does on the wire:

* connect with TLS (implicit on imaps://, STARTTLS required on imap://) verifying the
  certificate and host name; PREAUTH without TLS is refused; ``tls=none`` only on request;
* bodies with ``UID FETCH ... BODY.PEEK[]`` (never marks mail read) in batches bounded by
  bytes; FLAGS, RFC822.SIZE and INTERNALDATE for the listing;
* with CONDSTORE, a rerun asks only for what changed since the last HIGHESTMODSEQ, and an
  unchanged folder (same STATUS) is not even selected;
* APPEND with flags and INTERNALDATE (APPENDUID when offered; otherwise the new UID is
  found among the new UIDs, by content if need be, never by an injected header);
* flag changes with UID STORE in batches; deletions with \\Deleted plus UID EXPUNGE of
  exactly those UIDs (without UIDPLUS, EXPUNGE only if no other message is \\Deleted).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping

from mailsync.errors import AuthError, ConnectError, FolderError, MessageError
from mailsync.message import Info, fingerprint, normalise_flags, to_crlf, to_lf
from mailsync.net import Endpoint, get_password, parse_endpoint
from mailsync.stores.base import Folder, Store

log = logging.getLogger("mailsync")

FETCH_BATCH_BYTES = 8 * 1024 * 1024
FETCH_BATCH_MAX = 500
LIST_BATCH = 5000
SPECIAL_USE = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")
_NETWORK_ERRORS = (OSError, socket.timeout, EOFError)


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


def _timestamp(value) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # imapclient normalises to local time unless told not to
            return value.timestamp()
        return value.timestamp()
    return 0.0


class IMAPStore(Store):
    def __init__(self, url: str, options: dict | None = None, read_only: bool = False):
        self.endpoint: Endpoint = parse_endpoint(url, options)
        self.url = self.endpoint.display
        self.read_only = read_only
        self._client = None
        self._password: str | None = None
        self._delimiter = "/"
        self._names: dict[str, str] = {}  # our name -> server name
        self.special_use: dict[str, str] = {}
        self.selected: IMAPFolder | None = None

    # connection -----------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self):
        from imapclient import IMAPClient
        from imapclient.exceptions import LoginError

        ep = self.endpoint
        context = ep.ssl_context() if ep.tls != "none" else None
        try:
            client = IMAPClient(
                ep.host,
                port=ep.port,
                ssl=ep.tls == "implicit",
                ssl_context=context,
                timeout=ep.timeout,
            )
            client.normalise_times = False
            if ep.tls == "starttls":
                if client._imap.state == "AUTH":
                    raise ConnectError(
                        f"{ep.display} greeted with PREAUTH before TLS; refusing an "
                        "unencrypted session (use imaps:// or ask the server admin)"
                    )
                if not client.has_capability("STARTTLS"):
                    raise ConnectError(
                        f"{ep.display} does not offer STARTTLS; refusing to send the password "
                        "in clear (use imaps://, or tls=none if you really mean it)"
                    )
                client.starttls(context)
            if client._imap.state != "AUTH":
                if self._password is None:
                    self._password = get_password(ep)
                try:
                    client.login(ep.user, self._password)
                except LoginError as error:
                    raise AuthError(
                        f"{ep.display}: login failed ({_clean(error)}); check the user name "
                        "and password"
                    )
        except ssl.SSLCertVerificationError as error:
            raise ConnectError(
                f"{ep.display}: the server's certificate is not trusted "
                f"({error.verify_message}); for a private CA give cafile=PATH"
            )
        except ssl.SSLError as error:
            raise ConnectError(f"{ep.display}: TLS failed ({error.reason or error})")
        except (socket.gaierror, ConnectionRefusedError, TimeoutError, OSError) as error:
            raise ConnectError(
                f"cannot connect to {ep.host}:{ep.port} ({error.strerror or error}); "
                "check the host name and port, and that the server is up"
            )
        except Exception as error:
            if isinstance(error, (ConnectError, AuthError)):
                raise
            raise ConnectError(f"{ep.display}: {_clean(error)}")
        self.capabilities = {c.decode().upper() for c in client.capabilities()}
        if "CONDSTORE" in self.capabilities or "QRESYNC" in self.capabilities:
            try:
                client.enable("CONDSTORE")
            except Exception:
                pass
        log.debug("connected to %s: %s", ep.display, " ".join(sorted(self.capabilities)))
        return client

    def has(self, capability: str) -> bool:
        self.client  # noqa: B018  (connects)
        return capability in self.capabilities

    def reconnect(self) -> None:
        log.warning("%s: connection lost; reconnecting", self.endpoint.display)
        old, self._client = self._client, None
        self.selected = None
        try:
            if old is not None:
                old.shutdown()
        except Exception:
            pass
        self.client  # noqa: B018

    def call(self, operation, *args, retry: bool = True, **kwargs):
        """Run client.operation; a dropped connection is reconnected and the call retried
        once (for operations that are safe to repeat)."""
        from imapclient.exceptions import IMAPClientAbortError

        folder = kwargs.pop("_reselect", None)
        try:
            return self._invoke(operation, *args, **kwargs)
        except (IMAPClientAbortError, *_NETWORK_ERRORS) as error:
            if not retry:
                raise ConnectError(f"{self.endpoint.display}: connection lost ({error})")
            self.reconnect()
            if folder is not None:
                folder._info = None
                folder.select()
            return self._invoke(operation, *args, **kwargs)

    def _invoke(self, operation, *args, **kwargs):
        if operation == "fetch":
            return self._fetch(*args, **kwargs)
        return getattr(self.client, operation)(*args, **kwargs)

    def _fetch(self, uid_set: str, data: list[str], modifiers: list[str] | None = None) -> dict:
        """UID FETCH of a UID set string ("1:*", "4:9,12"), keeping every FETCH response
        (imapclient's own fetch drops responses for UIDs not listed one by one)."""
        from imapclient.imapclient import seq_to_parenstr_upper
        from imapclient.response_parser import parse_fetch_response

        client = self.client
        args = ["UID", "FETCH", uid_set, seq_to_parenstr_upper(data)]
        if modifiers:
            args.append(seq_to_parenstr_upper(modifiers))
        tag = client._imap._command(*args)
        typ, response = client._imap._command_complete("FETCH", tag)
        client._checkok("fetch", typ, response)
        typ, response = client._imap._untagged_response(typ, response, "FETCH")
        return parse_fetch_response(response, client.normalise_times, True)

    def close(self) -> None:
        if self._client is not None:
            try:
                if self.selected is not None:
                    self.selected.flush()
                self._client.logout()
            except Exception:
                pass
            self._client = None

    # folders --------------------------------------------------------------------------
    def list_folders(self) -> list[str]:
        names = []
        self._names = {}
        self.special_use = {}
        for flags, delimiter, server_name in self.call("list_folders"):
            flags = {f.decode() if isinstance(f, bytes) else f for f in flags}
            if isinstance(delimiter, bytes):
                delimiter = delimiter.decode()
            if isinstance(server_name, bytes):
                server_name = server_name.decode("utf-8", "replace")
            if "\\Noselect" in flags or "\\NonExistent" in flags:
                continue
            self._delimiter = delimiter or "/"
            name = self._local_name(server_name, delimiter)
            if name is None:
                continue
            names.append(name)
            self._names[name] = server_name
            for attribute in SPECIAL_USE:
                if attribute in flags:
                    self.special_use[name] = attribute
        return sorted(names)

    def _local_name(self, server_name: str, delimiter: str | None) -> str | None:
        if server_name.upper() == "INBOX":
            return "INBOX"
        if delimiter and delimiter != "/" and "/" in server_name:
            log.warning(
                "skipping folder %r: it contains '/', which is not its hierarchy delimiter here",
                server_name,
            )
            return None
        name = server_name.replace(delimiter, "/") if delimiter else server_name
        parts = name.split("/")
        if _BAD_NAME.search(name) or any(part in ("", ".", "..") for part in parts):
            log.warning("skipping folder %r: its name could escape the local tree", server_name)
            return None
        if parts[0].upper() == "INBOX":
            parts[0] = "INBOX"
        return "/".join(parts)

    def server_name(self, name: str) -> str:
        if name in self._names:
            return self._names[name]
        if name == "INBOX":
            return "INBOX"
        return name.replace("/", self._delimiter)

    def open_folder(self, name: str, create: bool = False) -> IMAPFolder:
        if not self._names:
            self.list_folders()
        if name not in self._names:
            if not create:
                raise FolderError(f"{self.url}: no folder {name}")
            if self.read_only:
                raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
            server_name = self.server_name(name)
            try:
                self.call("create_folder", server_name)
                self.call("subscribe_folder", server_name)
            except Exception as error:
                if isinstance(error, ConnectError):
                    raise
                raise FolderError(f"{self.url}: cannot create folder {name}: {_clean(error)}")
            self._names[name] = server_name
        return IMAPFolder(self, name, self._names[name])


class IMAPFolder(Folder):
    def __init__(self, store: IMAPStore, name: str, server_name: str):
        self.store = store
        self.name = name
        self.server_name = server_name
        self.read_only = store.read_only
        self._info: dict | None = None  # SELECT response
        self._cursor: dict = {}
        self._sizes: dict[int, int] = {}
        self._permanent: frozenset[str] | None = None
        self._keywords_ok = True
        self._flag_ops: dict[tuple[frozenset, frozenset], list[int]] = {}
        self._deletions: list[int] = []
        self._uids_assigned: set[int] = set()

    # selection ----------------------------------------------------------------------
    def select(self) -> dict:
        if self.store.selected is not self or self._info is None:
            if self.store.selected is not None and self.store.selected is not self:
                self.store.selected.flush()
            try:
                info = self.store.call("select_folder", self.server_name, readonly=self.read_only)
            except ConnectError:
                raise
            except Exception as error:
                raise FolderError(f"{self.store.url}: cannot select {self.name}: {_clean(error)}")
            self._info = {
                k.decode().upper() if isinstance(k, bytes) else k: v for k, v in info.items()
            }
            self.store.selected = self
            permanent = self._info.get("PERMANENTFLAGS")
            if permanent is not None:
                flags = {f.decode() if isinstance(f, bytes) else f for f in permanent}
                self._keywords_ok = "\\*" in flags
                self._permanent = normalise_flags(f for f in flags if f != "\\*")
        return self._info

    @property
    def validity(self) -> str:  # type: ignore[override]
        if self._info is not None:
            return str(self._info.get("UIDVALIDITY", ""))
        status = self._status()
        return str(status.get("UIDVALIDITY", ""))

    def _status(self) -> dict:
        what = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if self.store.has("CONDSTORE"):
            what.append("HIGHESTMODSEQ")
        status = self.store.call("folder_status", self.server_name, what)
        return {k.decode().upper() if isinstance(k, bytes) else k: v for k, v in status.items()}

    def persists(self, flag: str) -> bool:
        if flag == "\\Recent":
            return False
        if flag.startswith("\\"):
            return self._permanent is None or flag in self._permanent
        return self._keywords_ok or (self._permanent is not None and flag in self._permanent)

    # listing ------------------------------------------------------------------------
    def cursor(self) -> dict:
        return dict(self._cursor)

    def unchanged(self, cursor: dict) -> bool:
        if "highestmodseq" not in cursor or not self.store.has("CONDSTORE"):
            return False
        status = self._status()
        now = {
            "uidvalidity": status.get("UIDVALIDITY"),
            "uidnext": status.get("UIDNEXT"),
            "messages": status.get("MESSAGES"),
            "highestmodseq": status.get("HIGHESTMODSEQ"),
        }
        return all(cursor.get(k) == v for k, v in now.items())

    def _take_cursor(self) -> None:
        info = self._info or {}
        self._cursor = {
            "uidvalidity": info.get("UIDVALIDITY"),
            "uidnext": info.get("UIDNEXT"),
            "messages": info.get("EXISTS"),
        }
        if "HIGHESTMODSEQ" in info:
            self._cursor["highestmodseq"] = info["HIGHESTMODSEQ"]
        special = self.store.special_use.get(self.name)
        if special:
            self._cursor["special_use"] = special

    def list(self) -> dict[str, Info]:
        info = self.select()
        self._take_cursor()
        if not info.get("EXISTS"):
            return {}
        return self._fetch_meta("1:*")

    def list_since(self, cursor: dict, known: Mapping[str, frozenset[str]]) -> dict[str, Info]:
        info = self.select()
        modseq = cursor.get("highestmodseq")
        if (
            modseq is None
            or "HIGHESTMODSEQ" not in info
            or cursor.get("uidvalidity") != info.get("UIDVALIDITY")
        ):
            return self.list()
        self._take_cursor()
        if not info.get("EXISTS"):
            return {}
        uids = set(self.store.call("search", ["ALL"], _reselect=self))
        changed = self.store.call(
            "fetch",
            "1:*",
            ["UID", "FLAGS"],
            modifiers=[f"CHANGEDSINCE {modseq}"],
            _reselect=self,
        )
        listing: dict[str, Info] = {}
        new = [uid for uid in uids if str(uid) not in known]
        fresh = self._fetch_meta(_uid_ranges(new)) if new else {}
        for uid in uids:
            key = str(uid)
            if key in fresh:
                listing[key] = fresh[key]
            elif uid in changed:
                listing[key] = Info(normalise_flags(changed[uid].get(b"FLAGS", ())), 0, 0.0)
            else:
                listing[key] = Info(known[key], 0, 0.0)
        return listing

    def _fetch_meta(self, uid_set: str) -> dict[str, Info]:
        response = self.store.call(
            "fetch", uid_set, ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"], _reselect=self
        )
        listing = {}
        for uid, data in response.items():
            size = data.get(b"RFC822.SIZE", 0)
            self._sizes[uid] = size
            listing[str(uid)] = Info(
                normalise_flags(data.get(b"FLAGS", ())), size, _timestamp(data.get(b"INTERNALDATE"))
            )
        return listing

    # bodies ---------------------------------------------------------------------------
    def fetch(self, key: str) -> bytes:
        for _, data in self.fetch_many([key]):
            if isinstance(data, MessageError):
                raise data
            return data
        raise MessageError(f"{self.name}: message {key} is gone")

    def fetch_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | MessageError]]:
        self.select()
        batch: list[int] = []
        batch_bytes = 0
        for key in keys:
            uid = int(key)
            batch.append(uid)
            batch_bytes += self._sizes.get(uid, 0)
            if batch_bytes >= FETCH_BATCH_BYTES or len(batch) >= FETCH_BATCH_MAX:
                yield from self._fetch_bodies(batch)
                batch, batch_bytes = [], 0
        if batch:
            yield from self._fetch_bodies(batch)

    def _fetch_bodies(self, uids: list[int]):
        response = self.store.call("fetch", _uid_ranges(uids), ["BODY.PEEK[]"], _reselect=self)
        for uid in uids:
            data = response.get(uid, {}).get(b"BODY[]")
            if data is None:
                yield (
                    str(uid),
                    MessageError(f"{self.name}: message UID {uid} is gone from the server"),
                )
            else:
                yield str(uid), to_lf(data)

    # writes -----------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise FolderError(f"{self.store.url} {self.name} is read-only")

    def append(self, data: bytes, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        self.flush()  # pending flag changes and deletions go first
        info = self.select()
        uidnext = info.get("UIDNEXT")
        wire = to_crlf(data)
        keep = [f for f in flags if self.persists(f) and f != "\\Recent"]
        when = dt.datetime.fromtimestamp(arrival, dt.UTC) if arrival else None
        try:
            response = self.store.call("append", self.server_name, wire, keep, when, retry=False)
        except ConnectError:
            raise MessageError(
                f"{self.name}: the connection dropped while appending; the next run finds "
                "the message if it arrived"
            )
        except Exception as error:
            raise MessageError(f"{self.name}: the server refused a message ({_clean(error)})")
        if isinstance(response, bytes):
            response = response.decode("utf-8", "replace")
        match = re.search(r"\[APPENDUID (\d+) (\d+)\]", response or "", re.I)
        self._info = None  # EXISTS/UIDNEXT changed; reselect lazily
        if match:
            if str(match.group(1)) != str(info.get("UIDVALIDITY")):
                raise FolderError(f"{self.name}: UIDVALIDITY changed during the sync; rerun")
            uid = int(match.group(2))
        else:
            uid = self._find_appended(data, uidnext)
        self._sizes[uid] = len(wire)
        self._uids_assigned.add(uid)
        return str(uid)

    def _find_appended(self, data: bytes, uidnext) -> int:
        """No UIDPLUS: the new message is among the UIDs from the old UIDNEXT on."""
        self.select()
        start = uidnext or 1
        candidates = [
            u
            for u in self.store.call("search", ["UID", f"{start}:*"], _reselect=self)
            if u >= start and u not in self._uids_assigned
        ]
        if len(candidates) == 1:
            return candidates[0]
        digest = fingerprint(data)
        for uid, body in self._fetch_bodies(candidates):
            if not isinstance(body, MessageError) and fingerprint(body) == digest:
                return int(uid)
        raise MessageError(f"{self.name}: appended a message but cannot find its UID; rerun")

    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        self._writable()
        add = frozenset(f for f in add if self.persists(f))
        remove = frozenset(f for f in remove if self.persists(f))
        if add or remove:
            self._flag_ops.setdefault((add, remove), []).append(int(key))

    def delete(self, key: str) -> str:
        self._writable()
        self._deletions.append(int(key))
        return key

    def flush(self) -> None:
        if not self._flag_ops and not self._deletions:
            return
        self.select()
        try:
            for (add, remove), uids in self._flag_ops.items():
                for start in range(0, len(uids), LIST_BATCH):
                    chunk = _uid_ranges(uids[start : start + LIST_BATCH])
                    if add:
                        self.store.call("add_flags", chunk, sorted(add), silent=True)
                    if remove:
                        self.store.call("remove_flags", chunk, sorted(remove), silent=True)
            self._flag_ops = {}
            if self._deletions:
                self._expunge(self._deletions)
                self._deletions = []
        except ConnectError:
            raise
        except Exception as error:
            self._flag_ops, self._deletions = {}, []
            raise FolderError(f"{self.name}: the server refused a change: {_clean(error)}")

    def _expunge(self, uids: list[int]) -> None:
        ranges = _uid_ranges(uids)
        self.store.call("add_flags", ranges, ["\\Deleted"], silent=True)
        if self.store.has("UIDPLUS"):
            self.store.call("uid_expunge", ranges)
            return
        others = set(self.store.call("search", ["DELETED"])) - set(uids)
        if others:
            log.warning(
                "%s: the server lacks UIDPLUS and %d other messages are marked \\Deleted; "
                "leaving ours marked \\Deleted rather than expunging theirs",
                self.name,
                len(others),
            )
            return
        self.store.call("expunge")

    def close(self) -> None:
        self.flush()


def _clean(error: Exception) -> str:
    text = str(error)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return text.strip() or type(error).__name__

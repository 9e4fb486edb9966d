"""IMAP store: the folders of one account, over one connection (IMAPConnection in
imap_connection.py): listing them, their names, the personal namespace, their ids,
creating them.  A folder's messages are imap_folder.py's.

Folder names are decoded from modified UTF-7 and mapped to "/"-separated names; names
that could escape a local tree ("..", ".", empty parts, control characters), or
nested deeper than MAX_FOLDER_DEPTH, are skipped with a warning; SPECIAL-USE
attributes are recorded in the cursor.  Servers that put personal folders under a
namespace prefix (RFC 2342: ``INBOX.`` on Cyrus and Courier) have the prefix left out of
our names; other users' and shared folders are not synced.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

from mailsync.errors import ConfigError, ConnectError, FolderError, StoreError
from mailsync.stores.base import MAX_FOLDER_DEPTH, Store
from mailsync.stores.imap_connection import IMAPConnection, _text
from mailsync.stores.imap_folder import IMAPFolder
from mailsync.stores.imap_gmail import (
    GmailAllMailFolder,
    GmailFolder,
    GmailLabelsFolder,
    gmail_labels_mode,
)

__all__ = ["IMAPStore", "IMAPFolder"]

log = logging.getLogger("mailsync")

#: Gmail's special folders (RFC 6154 attributes, lower case) -> their local folders: by
#: attribute, as localized accounts name them otherwise (``[Google Mail]/Gesendet``).
GMAIL_LOCAL_NAMES = {
    "\\sent": "Sent",
    "\\trash": "Trash",
    "\\drafts": "Drafts",
    "\\junk": "Junk",
    "\\all": "Archive",
}
#: Gmail's folders that show again what other folders and flags hold, left out unless asked.
GMAIL_REDUNDANT = {
    "\\important": "Gmail's Important folder: its messages are in All Mail (Archive)",
    "\\flagged": "Gmail's Starred folder: its messages are in All Mail (Archive), flagged",
}
# (\Important: Gmail's, as its LIST shows it; imap_gmail.py needs to know that folder.)
SPECIAL_USE = (
    "\\All",
    "\\Archive",
    "\\Drafts",
    "\\Flagged",
    "\\Important",
    "\\Junk",
    "\\Sent",
    "\\Trash",
)
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")
_OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # RFC 8474 objectid


class IMAPStore(IMAPConnection, Store):
    def __init__(
        self,
        url: str,
        options: dict | None = None,
        read_only: bool = False,
        name: str | None = None,
    ):
        super().__init__(url, options, name)
        self.read_only = read_only
        self._delimiter = "/"
        self._names: dict[str, str] = {}  # our name -> server name (decoded)
        # The personal namespace (RFC 2342): its prefix is not part of our names.  None
        # until asked; "" where the server has no NAMESPACE or no prefix.
        self._prefix: str | None = None
        self._prefix_delimiter: str | None = None
        self._other_prefixes: tuple[str, ...] = ()  # other users' and shared namespaces
        self._former: dict[str, str] = {}  # our name -> what mailsync called it before
        self._outside: dict[str, str] = {}  # former names of folders in other namespaces
        self._listed = False
        self.special_use: dict[str, str] = {}
        #: gmail_labels: "folders" or "keywords" (imap_gmail.py); only Gmail heeds it.
        self.gmail_labels = gmail_labels_mode(self.endpoint.options, self.url)
        self._all_mail: IMAPFolder | None = None  # gmail_all_mail()
        self._attributes: dict[str, set[str]] = {}  # our name -> LIST attributes, lower case

    @property
    def gmail(self) -> bool:
        """Whether the server is Gmail's (it announces X-GM-EXT-1): a label is a folder, so
        one message may be in several folders, known in each by its X-GM-MSGID."""
        return self.has("X-GM-EXT-1")

    # folders --------------------------------------------------------------------------
    def _namespaces(self) -> None:
        """The personal namespace's prefix and delimiter, and the other namespaces'
        prefixes, from NAMESPACE (RFC 2342) when the server offers it.  Its answer decides
        every folder's name, so a refusal stops the store: guessing instead could name
        the same folders differently from one run to the next."""
        if self._prefix is not None:
            return
        if not self.has("NAMESPACE"):
            self._prefix = ""
            return
        personal, other, shared = self.call("namespace")
        personal = list(personal or ())
        others = [*personal[1:], *(other or ()), *(shared or ())]
        self._other_prefixes = tuple(_text(prefix) for prefix, _ in others)
        if personal:
            prefix, delimiter = personal[0]
            self._prefix = _text(prefix)
            self._prefix_delimiter = _text(delimiter) if delimiter else None
        else:
            self._prefix = ""
        log.debug(
            "%s: personal namespace %r, others %r",
            self.endpoint.display,
            self._prefix,
            self._other_prefixes,
        )

    def _personal(self, server_name: str) -> bool | None:
        """Whether a folder is in the personal namespace (the one whose prefix matches
        it longest): True, False (another user's or a shared folder), or None when no
        namespace the server announced matches it."""
        own = self._prefix
        assert own is not None  # (list_folders() asked the server first: _namespaces)
        if server_name.upper() == "INBOX" or not self._other_prefixes and not own:
            return True
        best, personal = -1, None
        for prefix, mine in ((own, True), *((p, False) for p in self._other_prefixes)):
            if len(prefix) > best and _has_prefix(server_name, prefix):
                best, personal = len(prefix), mine
        return personal

    def list_folders(self) -> list[str]:
        from imapclient.imap_utf7 import decode, encode

        self._namespaces()
        names: dict[str, str] = {}
        former: dict[str, str] = {}
        outside: dict[str, str] = {}
        special: dict[str, str] = {}
        listed_attributes: dict[str, set[str]] = {}
        delimiters: list[str] = []
        for flags, delimiter, raw in self.call("list"):
            attributes = {_text(f).lower() for f in flags or ()}
            if isinstance(delimiter, bytes):
                delimiter = delimiter.decode("ascii", "replace")
            if isinstance(raw, int):
                raw = str(raw).encode()
            if isinstance(raw, str):
                raw = raw.encode("utf-8")
            if _BAD_NAME.search(raw.decode("latin-1")):
                log.warning("skipping folder %r: its name contains control characters", _text(raw))
                continue
            try:
                server_name = decode(raw)
                if encode(server_name) != raw:
                    raise ValueError("does not round-trip")
            except (ValueError, UnicodeError):
                log.warning("skipping folder %r: its name is not valid modified UTF-7", _text(raw))
                continue
            if delimiter:
                delimiters.append(delimiter)
            if "\\noselect" in attributes or "\\nonexistent" in attributes:
                continue
            personal = self._personal(server_name)
            if not personal:
                old = self._map_name(server_name, server_name, delimiter, quiet=True)
                if old is not None:
                    outside[old] = server_name
                if personal is None:
                    log.warning(
                        "skipping folder %r: it is in no namespace the server announced",
                        server_name,
                    )
                else:
                    log.info(
                        "skipping folder %r: it is another user's or a shared folder",
                        server_name,
                    )
                continue
            name = self._local_name(server_name, delimiter)
            if name is None:
                continue
            if name in names:
                log.warning(
                    "skipping folder %r: it maps to %r like %r", server_name, name, names[name]
                )
                continue
            names[name] = server_name
            listed_attributes[name] = attributes
            old = self._map_name(server_name, server_name, delimiter, quiet=True)
            if old is not None and old != name:
                former[name] = old
            for attribute in SPECIAL_USE:
                if attribute.lower() in attributes:
                    special[name] = attribute
        if self._prefix_delimiter:
            self._delimiter = self._prefix_delimiter
        elif delimiters:
            self._delimiter = max(set(delimiters), key=delimiters.count)
        self._names, self.special_use, self._listed = names, special, True
        self._former, self._outside = former, outside
        self._attributes = listed_attributes
        return self._gmail_keyword_folders(sorted(names))

    def gmail_all_mail(self) -> IMAPFolder | None:
        """Gmail's All Mail (the folder with the \\All attribute) as a folder of this
        store, or None where there is none (not Gmail, or hidden from IMAP)."""
        if not self._listed:
            self.list_folders()
        name = next((n for n, use in self.special_use.items() if use == "\\All"), None)
        if name is None or not self.gmail:
            return None
        if self._all_mail is None or self._all_mail.name != name:
            self._all_mail = IMAPFolder(self, name, self._names[name])
        return self._all_mail

    def labels_as_keywords(self) -> bool:
        """Whether this store lists Gmail's labels as keywords (gmail_labels = "keywords"
        on a Gmail server): then its folders are All Mail, Spam and Trash."""
        return self.gmail_labels == "keywords" and self.gmail

    def _gmail_keyword_folders(self, names: list[str]) -> list[str]:
        """With labels as keywords, the folders a sync sees: All Mail (every message not
        in Spam or Trash, its labels as keywords), Spam and Trash.  The others stay known
        (a folder pushed to the store is still found or created)."""
        if self.gmail_labels != "keywords":
            return names
        if not self.gmail:
            log.warning(
                "%s: gmail_labels = keywords has no effect: the server is not Gmail "
                "(no X-GM-EXT-1)",
                self.url,
            )
            return names
        kept = [n for n in names if self.special_use.get(n) in ("\\All", "\\Junk", "\\Trash")]
        if not any(self.special_use.get(n) == "\\All" for n in kept):
            raise ConfigError(
                f"{self.url}: gmail_labels = keywords needs [Gmail]/All Mail, which this "
                "account hides from IMAP; tick 'Show in IMAP' for All Mail in Gmail's "
                "settings (Labels), or use gmail_labels = folders"
            )
        return kept

    def local_names(self) -> dict[str, str]:
        """Gmail's special folders -> Sent, Trash, Drafts, Junk, Archive (GMAIL_LOCAL_NAMES),
        except where another folder of the account has that name already."""
        if not self.gmail:
            return {}
        if not self._listed:
            self.list_folders()
        out = {}
        for name, attributes in self._attributes.items():
            for attribute, local in GMAIL_LOCAL_NAMES.items():
                if attribute in attributes and local not in self._names and name != "INBOX":
                    out[name] = local
        taken = Counter(out.values())  # (two folders of one kind: neither gets the name)
        return {name: local for name, local in out.items() if taken[local] == 1}

    def redundant_folders(self) -> dict[str, str]:
        if not self.gmail:
            return {}
        if not self._listed:
            self.list_folders()
        return {
            name: why
            for name, attributes in self._attributes.items()
            for attribute, why in GMAIL_REDUNDANT.items()
            if attribute in attributes
        }

    def special_folders(self) -> dict[str, str]:
        if not self._listed:
            self.list_folders()
        return dict(self.special_use)

    def reserved_in_names(self) -> str:
        if not self._listed:
            self.list_folders()
        return "" if self._delimiter == "/" else self._delimiter

    def folder_ids(self) -> dict[str, str]:
        """MAILBOXID (RFC 8474) of each folder, which a RENAME keeps, where the server
        offers OBJECTID: one ``LIST "" "*" RETURN (STATUS (MAILBOXID))`` with
        LIST-STATUS, else a STATUS per folder.  MAILBOXID is asked for alone: Cyrus 3.6
        sends bytes of freed memory (line breaks too) for it next to MESSAGES or UIDNEXT.
        An id that is no RFC 8474 objectid is left out."""
        if not self.has("OBJECTID"):
            return {}
        if not self._listed:
            self.list_folders()
        if "LIST-STATUS" in self.capabilities:
            try:
                by_server = self.call("mailbox_ids")
            except ConnectError:
                raise
            except StoreError as error:
                log.warning("%s: no folder ids, so renames are not followed: %s", self.url, error)
                return {}
        else:
            by_server = {}
            for server_name in self._names.values():
                try:
                    status = self.call("folder_status", server_name, ["MAILBOXID"])
                except ConnectError:
                    raise
                except StoreError as error:
                    log.debug("%s: no MAILBOXID for %s: %s", self.url, server_name, error)
                    continue
                by_server[server_name] = status.get(b"MAILBOXID")
        ids = {}
        for name, server_name in self._names.items():
            value = by_server.get(server_name)
            if isinstance(value, tuple | list) and len(value) == 1:
                value = value[0]
            value = _text(value) if isinstance(value, bytes | str) else ""
            if _OBJECT_ID.fullmatch(value):
                ids[name] = value
        return ids

    def former_names(self) -> dict[str, str]:
        """Names given before personal namespace prefixes were left out: the server's
        ``INBOX.Sent`` was ``INBOX/Sent``, now ``Sent``."""
        if not self._listed:
            self.list_folders()
        return dict(self._former)

    def adopt_listing(self, other: Store) -> None:
        if isinstance(other, IMAPStore) and other._listed and not self._listed:
            self._names, self.special_use = dict(other._names), dict(other.special_use)
            self._attributes = dict(other._attributes)
            self._delimiter, self._listed = other._delimiter, True
            self._prefix, self._prefix_delimiter = other._prefix, other._prefix_delimiter
            self._other_prefixes = other._other_prefixes
            self._former, self._outside = dict(other._former), dict(other._outside)

    def _local_name(self, server_name: str, delimiter: str | None) -> str | None:
        """Our name for a personal folder: without the namespace prefix (``INBOX.Sent``
        is ``Sent``), except where that would be INBOX itself (``INBOX.INBOX`` stays
        ``INBOX/INBOX``)."""
        if server_name.upper() == "INBOX":
            return "INBOX"
        rest = server_name
        if self._prefix and _has_prefix(server_name, self._prefix):
            stripped = server_name[len(self._prefix) :]
            if stripped and stripped.upper() != "INBOX":
                rest = stripped
        return self._map_name(rest, server_name, delimiter)

    def _map_name(
        self, name: str, server_name: str, delimiter: str | None, quiet: bool = False
    ) -> str | None:
        """A server name (without the prefix) -> "/"-separated, or None (with a warning
        unless `quiet`) if it cannot be a local name."""
        if name.upper() == "INBOX":
            return "INBOX"
        if delimiter and delimiter != "/" and "/" in name:
            if quiet:
                return None
            log.warning(
                "skipping folder %r: it contains '/', which is not its hierarchy delimiter here",
                server_name,
            )
            return None
        name = name.replace(delimiter, "/") if delimiter else name
        parts = name.split("/")
        if _BAD_NAME.search(name) or any(part in ("", ".", "..") for part in parts):
            if not quiet:
                log.warning("skipping folder %r: its name could escape the local tree", server_name)
            return None
        if len(parts) > MAX_FOLDER_DEPTH:
            log.warning(
                "skipping folder %r: it is nested %d levels deep, more than %d",
                server_name[:200],
                len(parts),
                MAX_FOLDER_DEPTH,
            )
            return None
        if parts[0].upper() == "INBOX":
            parts[0] = "INBOX"
        return "/".join(parts)

    def server_name(self, name: str) -> str:
        """The server's name for our folder `name`, under the personal namespace's
        prefix (FolderError if it cannot be one)."""
        if name in self._names:
            return self._names[name]
        if name == "INBOX":
            return "INBOX"
        parts = name.split("/")
        if _BAD_NAME.search(name) or any(part in ("", ".", "..") for part in parts):
            raise FolderError(f"{self.url}: folder name {name!r} cannot be created on the server")
        if name in self._outside:
            raise FolderError(
                f"{self.url}: {name} was the server's {self._outside[name]!r}, another "
                "user's or a shared folder, which mailsync does not sync; leave it out with "
                f"--folders '!{name}'"
            )
        delimiter = self._delimiter
        if delimiter != "/" and any(delimiter in part for part in parts):
            raise FolderError(
                f"{self.url}: folder name {name!r} contains {delimiter!r}, the server's "
                "hierarchy delimiter; rename the folder"
            )
        return (self._prefix or "") + delimiter.join(parts)  # (known once listed)

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        if kind != "mail":
            return f"{self.url}: cannot hold {kind} items; back them up into a Maildir tree"
        if self.read_only:
            return "the store is read-only"
        try:
            self.server_name(name)
        except FolderError as error:
            return str(error)
        return None

    def open_folder(self, name: str, create: bool = False, kind: str = "mail") -> IMAPFolder:
        if kind != "mail":
            raise FolderError(
                f"{self.url}: cannot hold {kind} items ({name}); back them up into a Maildir tree"
            )
        if not self._listed:
            self.list_folders()
        if name not in self._names:
            if not create:
                raise FolderError(f"{self.url}: no folder {name}")
            if self.read_only:
                raise FolderError(f"{self.url}: cannot create {name}, the store is read-only")
            server_name = self.server_name(name)
            try:
                self.call("create_folder", server_name)
            except ConnectError:
                raise
            except StoreError as error:
                # It may exist already (a \Noselect parent made selectable, a race).
                self.list_folders()
                if name not in self._names:
                    raise FolderError(f"{self.url}: cannot create folder {name}: {error}")
            try:
                self.call("subscribe_folder", server_name)
            except ConnectError:
                raise
            except StoreError as error:
                log.debug("%s: cannot subscribe to %s: %s", self.url, name, error)
            self._names[name] = server_name
        return self._folder_class(name)(self, name, self._names[name])

    def _folder_class(self, name: str) -> type[IMAPFolder]:
        """IMAPFolder, or at Gmail (imap_gmail.py) GmailFolder, and for All Mail
        GmailAllMailFolder (GmailLabelsFolder when labels are keywords)."""
        if not self.gmail:
            return IMAPFolder
        if self.special_use.get(name) == "\\All":
            return GmailLabelsFolder if self.labels_as_keywords() else GmailAllMailFolder
        return GmailFolder


def _has_prefix(server_name: str, prefix: str) -> bool:
    """Whether `server_name` starts with a namespace prefix (INBOX in any case)."""
    if server_name.startswith(prefix):
        return True
    head = prefix[:5]
    return (
        head.upper() == "INBOX"
        and server_name[:5].upper() == "INBOX"
        and server_name[5:].startswith(prefix[5:])
    )

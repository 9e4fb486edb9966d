"""The Store/Folder interface every backend implements.

The engine sees two Folders and a state; it knows no protocol.  Contract, for every
store (tests/stores/test_contract.py runs the same suite against every store that can
take it: memory, Maildir (and its vdirs), mbox, IMAP on the private Dovecot, Cyrus and
Courier, EWS on the fake Exchange server; POP3, which cannot append, is left out):

* Message bodies are bytes with LF line endings (message.Body: a large one may come as a
  bytearray, which ``append`` takes as well).  ``fetch`` returns exactly the bytes
  ``append`` was given (after CRLF -> LF), except in a folder that ``normalises``, whose
  copy may differ (mbox gives a message without a final newline one; IMAP servers
  rewrite, as far as message.tolerant_fingerprint() knows, or further).  Bodies never
  change; only flags do; except in a folder of ``mutable_items`` (calendars, contacts),
  whose version() tells a change.
* A key names one message within one folder for as long as ``validity`` is unchanged.
  It survives flag changes (a Maildir file renamed by a mail reader keeps its key).
* ``append``, ``set_flags`` and ``delete`` may be buffered; after ``flush`` returns
  they are durable (fsynced).  The engine records state only after ``flush``.
* Flags are IMAP-style strings (``\\Seen``, ``$Forwarded``, keywords).  ``persists``
  says which flags a folder can keep; the engine keeps the others in its state.
* Errors are ``mailsync.errors`` exceptions: MessageError for one message,
  FolderError for the folder, StoreError/ConnectError for the whole store.
* Nothing that looks like mail is left out silently: what a listing cannot read goes
  into ``problems`` (of the folder, or of the store for parts of a tree that are no
  folder), and the engine reports each one (report.report_problems).
* Folder names have at most MAX_FOLDER_DEPTH parts: deeper folders are not listed (a
  store problem) and cannot be created (FolderError).
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from mailsync.errors import MessageError, RenameRefused
from mailsync.message import Body, Info, fingerprint
from mailsync.policy import Retention

if TYPE_CHECKING:  # (only stores with a login import net)
    from mailsync.net import Endpoint

#: The deepest folder nesting a store lists or creates (parts of a "/"-separated name):
#: far beyond real mail hierarchies, and it keeps every walk, path and name bounded.
MAX_FOLDER_DEPTH = 100

#: What a folder says of itself as of a listing, for the state to keep (as JSON) and
#: hand back next run (Folder.cursor): MODSEQ, UIDLs, a SyncState, mtimes.
Cursor = dict[str, Any]


class Folder(ABC):
    name: str  # "/"-separated, "INBOX" for the inbox
    #: Token that changes when every key of the folder becomes void (IMAP UIDVALIDITY).
    validity: str = ""
    read_only: bool = False
    # (The engine only reads these two; a store may make them properties (IMAP asks the
    # server, memory its store).  mypy calls a property in place of an attribute that
    # can be set an incompatible override, and Python can declare no attribute
    # read-only: those overrides carry the one ignore that is about mailsync's own code.)
    #: What the last list() found in the folder that looks like mail but cannot be read
    #: (one sentence each, naming the file and what to do).  On a side a run copies
    #: from, the engine makes each one an error of the folder (exit 1), so the folder is
    #: not vouched for by a cursor and is listed again next run; elsewhere a warning.
    problems: Sequence[str] = ()
    #: True if list() marks with \Recent (message.RECENT) exactly the messages no mail
    #: reader has seen yet (Maildir: new/), so that a message without it is known to be
    #: old, and append() files a message given \Recent as unseen that way.  False (most
    #: stores): a listing's \Recent means nothing, and the engine never gives it to
    #: append().  \Recent is no flag: persists() is False for it.
    marks_recent: bool = False
    #: True if the folder may keep a message with other bytes than append() was given
    #: (beyond CRLF -> LF): mbox ends a message with a newline, IMAP servers rewrite
    #: what they store.  The engine then recognises a copy it did not record (a run
    #: killed before its state commit) by message.tolerant_fingerprint() too, after the
    #: exact fingerprint found nothing, and journals the copies it sends so that the next
    #: run can tell a copy rewritten beyond that by its headers (copies.py); in other
    #: folders only the exact fingerprint counts.
    normalises: bool = False

    # Optional capabilities, as isync's driver.h declares its get_caps: each has a safe
    # default here, and a store that has the capability says so; the engine asks these
    # and nothing else (no probing for attributes).
    #: Messages the last list() left out on purpose, one sentence each naming the message
    #: and why (a POP3 message over max_size stays on the server).  The engine counts them
    #: as skipped and warns on every run; they are not synced.
    skipped: Sequence[str] = ()
    #: The rule by which this folder's messages may be deleted from it once they are
    #: durable and recorded on the other side (POP3 delete = "after-download",
    #: delete_after_days; mailsync.retention), or None: no such rule.  The engine applies
    #: it to a remote folder (side a) after a clean run of the folder.
    retention: Retention | None = None
    #: True if pages() works: the folder reports its changes since a cursor page by page
    #: (EWS SyncFolderItems), so that a keep-pull from it applies and commits one page at
    #: a time and an interruption costs at most a page.
    paged: bool = False
    #: Groups of flags of which the folder keeps one at most, each group a frozenset: a
    #: message given several keeps one of them (EWS keeps \Answered and $Forwarded in
    #: one property, the last verb).  persists() is true for each; list() shows the one
    #: kept.  While a message's listing shows any flag of a group, the engine takes the
    #: group's other flags it last synced as still there (planner.effective_flags), and
    #: a flag change that touches a group names in `add` every flag of the group that is
    #: to stay, so that the folder keeps one of those.
    exclusive_flags: frozenset[frozenset[str]] = frozenset()
    #: True if list() gives each message its Info.account_id (Gmail: X-GM-MSGID).  The
    #: engine then lists the folder in full (no cursor) while the state has pairs of it
    #: without one (copied by a mailsync before account ids), to learn them.
    account_ids: bool = False
    #: True if an item's content may change under the same key (calendar events and
    #: contacts on EWS and Graph: the exception to "bodies never change"), and version(key)
    #: then changes with it, for every listed item.  The engine copies such an item again
    #: when its version differs from the one it recorded, and the new copy replaces the
    #: old one on the other side (copies.py).  False (mail): a version that changes with
    #: flags (EWS ChangeKey) is no reason to copy a message again.
    mutable_items: bool = False
    #: How many messages the engine gives append_many() at once (and at most
    #: copies.QUEUE_BYTES of them): more than 1 where the store sends several without
    #: waiting for each answer (IMAP with LITERAL+ and UIDPLUS: one round trip for the
    #: lot); 1, the default, sends each message as it comes, as append() would.  It
    #: may drop during a run (IMAP: to 1 once the server throttles).
    appends_at_once: int = 1

    @abstractmethod
    def list(self) -> dict[str, Info]:
        """Every message now in the folder: key -> Info(flags, size, arrival)."""

    @abstractmethod
    def fetch(self, key: str) -> Body:
        """The message's bytes, LF line endings.  MessageError if it is gone."""

    @abstractmethod
    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        """Store a new message with these flags and arrival date; return its key."""

    def append_many(
        self, messages: Sequence[tuple[Body, frozenset[str], float]]
    ) -> builtins.list[str | MessageError]:
        """append() of each (data, flags, arrival) of `messages`, in the order given:
        for each its key, or the MessageError (RefusedError included) that append()
        would raise for it; any other error is raised, as append()'s.  Buffered and
        made durable by flush() as append().  Stores that can send several messages at
        once do (IMAP with LITERAL+: one round trip, not one each).  Default: append()
        one by one."""
        out: builtins.list[str | MessageError] = []
        for data, flags, arrival in messages:
            try:
                out.append(self.append(data, flags, arrival))
            except MessageError as error:
                out.append(error)
        return out

    def append_copy(
        self, data: Body, flags: frozenset[str], arrival: float, origin: Folder, origin_key: str
    ) -> str:
        """append() of a message whose identical copy is message `origin_key` of `origin`
        (a folder of the same store, maybe this one; `data` are its bytes), without
        writing the bytes again where the store can: Maildir links the file (a hard
        link on the same file system).  The new message is a message of its own: its
        flags are `flags`, and a change of one copy's flags leaves the other's alone.
        Buffered and made durable by flush() as append().  Default: append()."""
        return self.append(data, flags, arrival)

    @abstractmethod
    def set_flags(self, key: str, add: frozenset[str], remove: frozenset[str]) -> None:
        """Add and remove flags.  Flags the folder does not persist are ignored."""

    @abstractmethod
    def delete(self, key: str) -> str:
        """Remove the message for good.  Returns the key that was removed, which is
        `key` except in stores where identical copies are interchangeable (mbox)."""

    # Incremental listing.  A folder that can tell cheaply whether it changed returns a
    # cursor after list(); the engine saves it with the state and hands it back next run.
    def cursor(self) -> Cursor:
        """A token describing the folder as of the last list() (taken before reading, so
        a change made during the listing makes it stale).  {}: no cursor."""
        return {}

    def settle(self) -> None:
        """Before listing a folder that a run which died was copying into (the journal
        of copies under way is not empty): wait, bounded, until it stops changing.  A
        server may go on storing what a killed client had already sent (pipelined
        APPENDs), and a copy listed as missing before it lands would be sent twice.
        Default: nothing to wait for (local stores write nothing after the writer)."""

    def unchanged(self, cursor: Cursor) -> bool:
        """True only if nothing (messages or flags) changed since `cursor` was taken; the
        engine then uses the state instead of listing.  Must never say True wrongly."""
        return False

    def cursor_after_writes(self) -> Cursor:
        """After this run wrote to the folder: a cursor for it as it is now, if the
        folder can prove that nothing but this object changed it since list().  {}: the
        next run lists it again (always safe)."""
        return {}

    def list_since(self, cursor: Cursor, known: Mapping[str, frozenset[str]]) -> dict[str, Info]:
        """Like list(), helped by the previous cursor and the flags the state knows for
        each key (IMAP CONDSTORE fetches only what changed).  Default: list()."""
        return self.list()

    def pages(
        self, cursor: Cursor, known: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[dict[str, Info | None] | None, Cursor]]:
        """For a folder that is ``paged``: the changes since `cursor`, page by page, as
        (page, the cursor after that page); a page maps each changed key to its Info, or
        to None if the message is gone.  Without a cursor every message comes as a
        change.  When the folder no longer knows the cursor, (None, {}) says so and a
        listing from scratch follows, in which messages it does not mention are gone.
        `known`: the flags the state has for each key (a change of one flag may be all
        a page says).  Called only when ``paged`` is True."""
        raise NotImplementedError(f"{self.name}: this folder does not list by pages")

    def _fetch_one(self, key: str) -> Body:
        """fetch() for stores whose fetch_many() is the real thing (network stores)."""
        for _, data in self.fetch_many([key]):
            if isinstance(data, MessageError):
                raise data
            return data
        raise MessageError(f"{self.name}: message {key} is gone")

    def fetch_many(self, keys: Iterable[str]) -> Iterator[tuple[str, Body | MessageError]]:
        """Fetch in the order given; network stores override this to pipeline.
        A message that cannot be read yields its MessageError instead of bytes."""
        for key in keys:
            try:
                yield key, self.fetch(key)
            except MessageError as error:
                yield key, error

    def version(self, key: str) -> str | None:
        """The message's own version as this folder last saw it (EWS ChangeKey), for the
        state to record; None where the store has no such thing."""
        return None

    def recall_versions(self, versions: Mapping[str, str]) -> None:
        """The versions the state recorded, for keys this run did not list afresh."""

    def flush(self) -> None:
        """Make every change so far durable."""

    def close(self) -> None:
        self.flush()

    def persists(self, flag: str) -> bool:
        """Whether this folder can keep `flag`."""
        return True

    def header_digests(self, keys: Iterable[str]) -> dict[str, str] | None:
        """message.header_digest() of these messages, if the folder can tell without
        reading whole bodies; None if it cannot (the engine then uses fingerprints)."""
        return None

    def fingerprints(self, keys: Iterable[str]) -> dict[str, str]:
        """Content hashes of these messages (skipping ones that vanished)."""
        out = {}
        for key in keys:
            try:
                out[key] = fingerprint(self.fetch(key))
            except MessageError:
                continue
        return out


class PagedFolder(Folder):
    """A folder that reports its changes page by page (``paged``: EWS SyncFolderItems,
    Graph delta): its listings are the pages of pages() put together."""

    paged = True

    def list(self) -> dict[str, Info]:
        return self.list_since({}, {})

    def list_since(self, cursor: Cursor, known: Mapping[str, frozenset[str]]) -> dict[str, Info]:
        """The keys known at `cursor` (with the flags the state has), changed by the pages
        since it; a void cursor starts a listing from scratch."""
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


class Store(ABC):
    url: str  # as given, without secrets
    read_only: bool = False
    #: What the last list_folders() found that looks like mail but is no folder it can
    #: list (an unreadable directory, a name no folder can have, nesting deeper than
    #: MAX_FOLDER_DEPTH), one sentence each.  The engine reports each one as an error
    #: of the run (exit 1) on a side the run copies from, elsewhere as a warning.
    problems: Sequence[str] = ()

    @property
    def throttled(self) -> tuple[int, float]:
        """(waits, seconds) this store has waited so far because its server asked it to
        (throttling): the engine reports each folder's share."""
        return (0, 0.0)

    @abstractmethod
    def list_folders(self) -> list[str]:
        """Names of every folder, "/"-separated, "INBOX" for the inbox."""

    @abstractmethod
    def open_folder(self, name: str, create: bool = False, kind: str = "mail") -> Folder:
        """Open a folder; with create, make it first if it is missing.  `kind` says what
        it holds when it is created: "mail", or "calendar" / "contacts" (EWS items,
        which only Maildir trees keep, as vdirs).  FolderError if it does not exist (and
        create is false) or cannot be opened."""

    def adopt_listing(self, other: Store) -> None:
        """Take the folder listing another instance of the same account already made
        (a parallel worker's connection need not list the folders again)."""

    def folder_kinds(self) -> dict[str, str]:
        """Folders holding something else than mail: name -> "calendar" / "contacts"."""
        return {}

    def folder_ids(self) -> dict[str, str]:
        """Folder name -> the folder's own id, which stays when the folder is renamed
        (EWS FolderId, IMAP MAILBOXID); {} where folders have none.  The engine follows
        a folder whose id it knows under another name.  May cost a round trip: the
        engine asks only when a rename is possible."""
        return {}

    def former_names(self) -> dict[str, str]:
        """Folder name -> the name an earlier mailsync version gave the same folder,
        where that differs (IMAP folders under a personal namespace prefix: ``Sent``
        was ``INBOX/Sent``).  The engine moves state and local folders to the new
        names, so nothing is copied twice after an upgrade."""
        return {}

    def local_names(self) -> dict[str, str]:
        """Folder name -> the name its local folder should have where that is another
        (Gmail: its special folders by their SPECIAL-USE attribute, ``[Gmail]/Sent Mail``
        -> ``Sent``), as of the last list_folders() (made first if there was none).  The
        engine takes it for folders its state does not know under another local name
        (folders.map_folders)."""
        return {}

    def special_folders(self) -> dict[str, str]:
        """Folder name -> its SPECIAL-USE attribute (RFC 6154: ``\\Sent``, ``\\Trash``,
        ...), where the store marks folders so, as of the last list_folders() (as
        local_names()).  folder_names.pair_names pairs folders of one role by it."""
        return {}

    def reserved_in_names(self) -> str:
        """The characters one level of a folder name cannot hold here, '/' aside (an
        IMAP server's hierarchy delimiter where it is another: ``.``); '' where any
        can.  folder_names escapes them in the names of folders copied here."""
        return ""

    def redundant_folders(self) -> dict[str, str]:
        """Folder name -> why a job leaves it out unless its folder patterns name it
        exactly (Gmail's Important and Starred: views of what the other folders and the
        flags already hold), as of the last list_folders() (as local_names())."""
        return {}

    #: Whether rename_folder() works here.  The engine then moves a local folder when
    #: its remote folder was renamed; where it cannot, the old local name stays.
    can_rename: bool = False

    def rename_folder(self, old: str, new: str) -> None:
        """Move folder `old`, and every folder below it (``old/x`` becomes ``new/x``),
        to `new`, keeping every message, its key and its flags.

        Resumable: a move cut short (a crash) is completed by calling it again with the
        same names; once `old` is gone and `new` is there it does nothing.
        RenameRefused, before anything moved, if a part of the move's destination is
        taken or `new` cannot be a folder name here; FolderError for an I/O error in
        mid-move (calling it again then completes the move)."""
        raise RenameRefused(f"{self.url}: cannot rename folders")

    def describe(self) -> str:
        return self.url

    def creation_problem(self, name: str, kind: str = "mail") -> str | None:
        """Why open_folder(name, create=True, kind=kind) would fail here, or None as far
        as the store can tell without creating anything (the dry run asks, for folders
        it would create).  This default knows only read-only stores."""
        return "the store is read-only" if self.read_only else None

    def password_endpoint(self) -> Endpoint | None:
        """The net.Endpoint whose password this store will ask for (net.password_for), or
        None: local stores, logins without a password (OAuth2)."""
        return getattr(self, "endpoint", None)

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def path_creation_problem(path: str) -> str | None:
    """Why a directory or file could not be created at `path` by this process: something
    that is no directory on the way, or no permission in the nearest existing directory.
    None if nothing is in the way (for local stores' creation_problem())."""
    import os

    if os.path.lexists(path):
        return None
    parent = os.path.dirname(path)
    while parent and not os.path.lexists(parent):
        path, parent = parent, os.path.dirname(parent)
    parent = parent or "."
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no permission to create {os.path.basename(path)} in {parent}"
    return None

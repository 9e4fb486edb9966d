"""Gmail's labels (X-GM-EXT-1): labels as keywords, and pushing a message once.

Gmail keeps a message once, with a set of labels; its IMAP folders are views of the
labels (INBOX shows ``\\Inbox``, the folder ``Work`` the label ``Work``), ``[Gmail]/All
Mail`` shows every message but those in Spam and Trash.

``gmail_labels = "keywords"`` (a store option, ``?gmail_labels=keywords`` in the URL)
backs such an account up as one copy of each message: the store lists only All Mail,
Spam and Trash, and a message of All Mail (GmailLabelsFolder) carries its labels as
keywords (fetched with X-GM-LABELS, changed with ``UID STORE +/-X-GM-LABELS``; a
deletion is the ``\\Trash`` label, as an EXPUNGE from All Mail only archives).  The
default, ``"folders"``, lists every label as a folder (GmailFolder).

The keyword of a label, label_keyword() (and back, keyword_label()), is exact both ways:

* the system labels ``\\Inbox \\Important \\Sent \\Draft \\Trash \\Spam`` are ``$Inbox
  $Important $Sent $Draft $Trash $Spam``; ``\\Starred`` is no keyword (it is the
  ``\\Flagged`` flag);
* a user label is its name with every character that cannot be in an IMAP keyword
  (RFC 3501 atom-specials: space, controls, ``( ) { % * " \\ ]``; 8-bit), and ``[`` and
  ``=`` (the escape), written as ``=XX`` per UTF-8 byte (upper-case hex, as in
  quoted-printable), and a ``$`` at its start as ``=24``: ``Work`` is ``Work``, ``My
  Label/Sub ü`` is ``My=20Label/Sub=20=C3=BC``, ``$x`` is ``=24x``;
* so a keyword is a label if it is one of the six above or does not start with ``$``
  (or ``\\``) and is the encoding of its own decoding; other keywords (``$Forwarded``,
  ``$Junk``, ``$label1``) are the message's IMAP keywords on Gmail too.  Keywords on
  Gmail's side that read as labels (a ``NonJunk`` set by Thunderbird) are left out of
  the listing, with a debug line: they would come back as labels.

Pushing to Gmail in folders mode (restore, migration) uploads a message once: before it
APPENDs a message with a Message-ID to a folder that is a label (INBOX, a user label,
Sent, Drafts, Important), the folder looks for it in All Mail (``X-GM-RAW
rfc822msgid:``, then the same RFC822.SIZE or message.tolerant_fingerprint()), and if it
is there adds the label (``UID STORE +X-GM-LABELS``) and finds the message's UID in the
folder by its X-GM-MSGID, instead of a second upload.  A message the folder holds
already (another local copy's: Gmail keeps one copy per account) is refused.

IMAPStore.open_folder() gives a Gmail folder one of the two classes at the end of this
module; IMAPFolder itself knows of Gmail only the two hooks they use (META_ITEMS,
_listed_flags).
"""

from __future__ import annotations

import builtins
import logging
import re
import threading
from collections.abc import Iterable, Mapping

from mailsync.crashhook import step
from mailsync.errors import (
    ConfigError,
    ConnectError,
    FolderError,
    MailsyncError,
    MessageError,
    RefusedError,
)
from mailsync.message import (
    Body,
    Info,
    header_value,
    normalise_flags,
    to_crlf,
    tolerant_fingerprint,
)
from mailsync.stores.base import Cursor
from mailsync.stores.imap_folder import STORE_BATCH, IMAPFolder
from mailsync.stores.imap_wire import _uid_ranges

log = logging.getLogger("mailsync")

GMAIL_LABELS_MODES = ("folders", "keywords")

#: System labels -> their keywords.  \Starred is the \Flagged flag, not a keyword.
SYSTEM_LABEL_KEYWORDS = {
    "\\Inbox": "$Inbox",
    "\\Important": "$Important",
    "\\Sent": "$Sent",
    "\\Draft": "$Draft",
    "\\Trash": "$Trash",
    "\\Spam": "$Spam",
}
_KEYWORD_LABELS = {keyword.lower(): label for label, keyword in SYSTEM_LABEL_KEYWORDS.items()}
STARRED = "\\Starred"
#: The label a system folder's messages have, by its SPECIAL-USE attribute (INBOX has
#: \Inbox); other special folders (All Mail, Spam, Trash, Starred) are no plain label.
SPECIAL_FOLDER_LABELS = {"\\Sent": "\\Sent", "\\Drafts": "\\Draft", "\\Important": "\\Important"}
#: Printable ASCII that needs no escape in a keyword: no atom-special (RFC 3501), no
#: "=" (the escape), no "[" (some servers treat it as resp-special).
_PLAIN = re.compile(r"[!#$&'+,\-./0-9:;<>?@A-Z^_`a-z|}~]")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


def gmail_labels_mode(options: dict, where: str) -> str:
    """The store's gmail_labels option (taken out of `options`): "folders" (the default)
    or "keywords"; ConfigError for anything else."""
    mode = str(options.pop("gmail_labels", "folders") or "folders").lower()
    if mode not in GMAIL_LABELS_MODES:
        raise ConfigError(
            f"store {where}: gmail_labels must be one of {', '.join(GMAIL_LABELS_MODES)}"
        )
    return mode


def label_keyword(label: str) -> str | None:
    """The keyword of a Gmail label (as X-GM-LABELS names it, decoded), or None for
    \\Starred (the \\Flagged flag)."""
    if label.startswith("\\"):
        lowered = label.lower()
        for system, keyword in SYSTEM_LABEL_KEYWORDS.items():
            if system.lower() == lowered:
                return keyword
        if label.lower() == STARRED.lower():
            return None
        # An unknown system label (Gmail may add some): kept, as an escaped name.
    out = []
    for index, char in enumerate(label):
        if _PLAIN.fullmatch(char) and not (index == 0 and char == "$"):
            out.append(char)
        else:
            out.extend(f"={byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def keyword_label(keyword: str) -> str | None:
    """The Gmail label a keyword stands for (label_keyword() reversed), or None if it is
    a plain keyword or a flag."""
    system = _KEYWORD_LABELS.get(keyword.lower())
    if system is not None:
        return system
    if not keyword or keyword.startswith(("$", "\\")):
        return None
    try:
        label = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), keyword)
        label = label.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None
    return label if label and label_keyword(label) == keyword else None


def folder_label(name: str, server_name: str, special_use: str | None) -> str | None:
    """The label that puts a message into this Gmail folder: \\Inbox for INBOX, the
    system label of Sent, Drafts, Important, a user label's own name; None for All Mail,
    Spam, Trash, Starred and any other folder of Gmail's own (under ``[Gmail]/``), where
    adding a label is not the same as filing a message."""
    if name == "INBOX":
        return "\\Inbox"
    if special_use is not None:
        return SPECIAL_FOLDER_LABELS.get(special_use)
    if server_name.startswith(("[Gmail]/", "[Google Mail]/")):
        return None
    return server_name


def split_labels(flags: Iterable[str]) -> tuple[frozenset[str], list[str]]:
    """Flags (keywords-mode names) -> (the flags that are not labels, the labels)."""
    plain, labels = set(), []
    for flag in flags:
        label = keyword_label(flag)
        if label is None:
            plain.add(flag)
        else:
            labels.append(label)
    return frozenset(plain), sorted(labels)


def listed_flags(flags: frozenset[str], labels: object, where: str) -> frozenset[str]:
    """A message's flags in keywords mode: its FLAGS (without keywords that would read
    as labels) and the keywords of its X-GM-LABELS (as fetched: atoms, quoted strings or
    numbers, in modified UTF-7)."""
    out = set()
    for flag in flags:
        if keyword_label(flag) is None:
            out.add(flag)
        else:
            log.debug("%s: leaving out keyword %r: it would read as a label", where, flag)
    for label in decode_labels(labels):
        keyword = label_keyword(label)
        if keyword is not None:
            out.add(keyword)
    return frozenset(out)


def decode_labels(labels: object) -> list[str]:
    """X-GM-LABELS as fetched (atoms, quoted strings or numbers, in modified UTF-7) ->
    the label names."""
    from imapclient.imap_utf7 import decode

    out = []
    for raw in labels if isinstance(labels, tuple | list) else ():
        if isinstance(raw, int):
            raw = str(raw).encode()
        if not isinstance(raw, bytes | str):
            continue
        try:
            out.append(decode(raw) if isinstance(raw, bytes) else raw)
        except (ValueError, UnicodeError):
            out.append(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
    return out


def label_list(labels: Iterable[str]) -> str:
    """A parenthesised list of labels for STORE X-GM-LABELS: system labels as the atoms
    Gmail itself writes (``\\Inbox``), the others as quoted strings in modified UTF-7."""
    from imapclient.imap_utf7 import encode

    parts = []
    for label in labels:
        if re.fullmatch(r"\\[A-Za-z]+", label):
            parts.append(label)
        else:
            text = encode(label).decode("ascii")
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "(" + " ".join(parts) + ")"


def store_labels(folder: IMAPFolder, change: str, uid_set: str, labels: Iterable[str]) -> None:
    """UID STORE uid_set +X-GM-LABELS.SILENT (labels) (`change` "+"), or - to remove
    them, in `folder`; nothing if there are no labels."""
    labels = sorted(labels)
    if labels:
        operation = f"{change}X-GM-LABELS.SILENT"
        folder.store.call(
            "_command_and_check",
            "store",
            uid_set,
            operation,
            label_list(labels),
            uid=True,
            folder=folder,
        )


def message_id_term(data: Body) -> str | None:
    """The message's Message-ID without its angle brackets, if it can go into a Gmail
    search as it is (printable ASCII, no space, quote or backslash); else None."""
    value = header_value(data, "Message-ID")
    match = re.fullmatch(r"\s*<([\x21-\x7e]+)>\s*", value or "")
    if match is None or re.search(r'["\\<>]', match.group(1)):
        return None
    return match.group(1)


_push_locks: dict[str, threading.Lock] = {}
_push_locks_guard = threading.Lock()


def push_lock(account: str) -> threading.Lock:
    """The lock that the look-up and upload of a message to this Gmail account hold, so
    that parallel workers (--jobs) pushing one message into two folders upload it once."""
    with _push_locks_guard:
        return _push_locks.setdefault(account, threading.Lock())


def file_existing(folder: IMAPFolder, data: Body, wire: bytes, flags: list[str]) -> int | None:
    """Pushing to Gmail in folders mode: if the account holds this message already (in
    All Mail: same Message-ID, and the same size or message.tolerant_fingerprint()),
    give it the label of `folder` instead of uploading it again, add `flags`, and return
    its UID in `folder`.  None (nothing done): the folder is no label folder, the message
    has no usable Message-ID, or the account does not hold it; the caller APPENDs."""
    store = folder.store
    label = folder_label(folder.name, folder.server_name, store.special_use.get(folder.name))
    term = message_id_term(data)
    all_mail = store.gmail_all_mail()
    if label is None or term is None or all_mail is None or all_mail is folder:
        return None
    try:
        uids = store.call("uids", f'X-GM-RAW "rfc822msgid:{term}"', folder=all_mail)
        found = _same_message(all_mail, sorted(uids)[:MAX_CANDIDATES], data, wire)
    except FolderError as error:  # (a lost connection is the store's: ConnectError)
        log.warning(
            "%s: cannot look for %s in All Mail, uploading it: %s", folder.name, term, error
        )
        return None
    if found is None:
        return None
    uid, msgid, labels, has_flags = found
    if label.lower() in labels:
        # In the folder already, and the engine did not match it by content to this
        # copy: it is another local copy's (Gmail keeps one copy per account).
        raise RefusedError(
            f"{folder.name}: Gmail holds this message once, and in this folder already as "
            "the copy of another local message",
            "Gmail keeps one copy of a message (same Message-ID) per account",
        )
    store_labels(all_mail, "+", str(uid), [label])
    step("gmail label")
    missing = sorted(set(flags) - has_flags)  # (a message's flags are shared by its folders)
    if missing:
        store.call("add_flags", str(uid), missing, silent=True, folder=all_mail)
    log.debug("%s: message %s was in the account: labelled %r", folder.name, msgid, label)
    folder.select()  # (a new SELECT: it shows the message that just entered the folder)
    here = store.call("uids", f"X-GM-MSGID {msgid}", folder=folder)
    if not here:
        raise MessageError(
            f"{folder.name}: gave message {msgid} the label {label!r} but the folder does not "
            "show it; rerun"
        )
    return max(here)


MAX_CANDIDATES = 20  # messages of one Message-ID compared with one that is pushed


def _same_message(
    all_mail: IMAPFolder, uids: list[int], data: Body, wire: bytes
) -> tuple[int, int, set[str], frozenset[str]] | None:
    """(UID in All Mail, X-GM-MSGID, its labels in lower case, its flags) of the first
    of `uids` that is `data`: the same RFC822.SIZE as its wire form, else (bodies
    fetched) the same tolerant_fingerprint."""
    if not uids:
        return None
    store = all_mail.store
    items = ["UID", "FLAGS", "RFC822.SIZE", "X-GM-MSGID", "X-GM-LABELS"]
    meta = store.call("fetch", ",".join(map(str, uids)), items, folder=all_mail)
    known = {}
    for uid, record in meta.items():
        msgid = record.get(b"X-GM-MSGID")
        if isinstance(msgid, int):
            labels = {label.lower() for label in decode_labels(record.get(b"X-GM-LABELS"))}
            flags = record.get(b"FLAGS")
            flags = normalise_flags(flags if isinstance(flags, tuple | list) else ())
            known[uid] = (uid, msgid, labels, flags)
    for uid in uids:
        if uid in known and meta[uid].get(b"RFC822.SIZE") == len(wire):
            return known[uid]
    wanted = tolerant_fingerprint(data)
    for key, body in all_mail.fetch_many([str(u) for u in uids if u in known]):
        if not isinstance(body, MessageError) and tolerant_fingerprint(body) == wanted:
            return known[int(key)]
    return None


class _GmailFolder(IMAPFolder):
    """What both kinds of Gmail folder share: a cursor says which kind took it, as the
    flags of All Mail mean something else with labels as keywords (a cursor of the other
    kind: the folder is listed in full)."""

    labels_as_keywords = False

    def _take_cursor(self) -> None:
        super()._take_cursor()
        if self.labels_as_keywords:
            self._cursor["x-gm-labels"] = True

    def _same_kind(self, cursor: Cursor) -> bool:
        return bool(cursor.get("x-gm-labels")) == self.labels_as_keywords

    def unchanged(self, cursor: Cursor) -> bool:
        return self._same_kind(cursor) and super().unchanged(cursor)

    def list_since(self, cursor: Cursor, known: Mapping[str, frozenset[str]]) -> dict[str, Info]:
        return super().list_since(cursor if self._same_kind(cursor) else {}, known)


class GmailFolder(_GmailFolder):
    """A folder of Gmail in folders mode.  A message pushed into a label's folder that
    the account holds already gets the label instead of a second upload
    (file_existing()); parallel workers take turns to look it up and upload it
    (push_lock()), so that one message pushed into two folders at once is uploaded once."""

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        self._writable()
        with push_lock(self.store.url):
            self.flush()
            self.select()  # (PERMANENTFLAGS: which flags it keeps)
            keep = sorted(f for f in flags if self.persists(f))
            filed = file_existing(self, data, to_crlf(data), keep)
            if filed is not None:
                self._uids_assigned.add(filed)
                return str(filed)
            return super().append(data, flags, arrival)


def trash(folder: IMAPFolder, uids: builtins.list[int]) -> None:
    """Delete messages of All Mail: an EXPUNGE there deletes nothing at Gmail (by
    default it archives, and the message is listed again on the next run), so they get
    the \\Trash label, as a deletion in Gmail's own interface does, and leave All Mail."""
    store_labels(folder, "+", _uid_ranges(uids), ["\\Trash"])


class GmailAllMailFolder(GmailFolder):
    """All Mail in folders mode (the local Archive): a message deleted here goes to
    Gmail's Trash (trash())."""

    def _expunge(self, uids: builtins.list[int]) -> None:
        trash(self, uids)


class GmailLabelsFolder(_GmailFolder):
    """Gmail's All Mail with gmail_labels = "keywords": each message's labels are keywords
    (label_keyword()), listed with X-GM-LABELS, changed with UID STORE +/-X-GM-LABELS,
    given to an appended message right after its APPEND; a deletion is the \\Trash label."""

    labels_as_keywords = True
    META_ITEMS = ("X-GM-LABELS",)

    def _listed_flags(self, flags: tuple | builtins.list, data: dict) -> frozenset[str]:
        return listed_flags(normalise_flags(flags), data.get(b"X-GM-LABELS"), self.name)

    def persists(self, flag: str) -> bool:
        return keyword_label(flag) is not None or super().persists(flag)

    def append(self, data: Body, flags: frozenset[str], arrival: float) -> str:
        plain, labels = split_labels(flags)
        key = super().append(data, plain, arrival)
        if labels:  # a run killed before they are set finds the message by its content
            # and adds the labels missing (copies.py: "match or append")
            step("gmail append")
            self._select_appended()
            store_labels(self, "+", key, labels)
        return key

    def flush(self) -> None:
        """Flag changes and deletions as IMAPFolder's, then the label changes."""
        label_ops = []
        for (add, remove), uids in builtins.list(self._flag_ops.items()):
            plain_add, add_labels = split_labels(add)
            plain_remove, remove_labels = split_labels(remove)
            if add_labels or remove_labels:
                del self._flag_ops[(add, remove)]
                if plain_add or plain_remove:
                    self._flag_ops.setdefault((plain_add, plain_remove), []).extend(uids)
                label_ops.append((add_labels, remove_labels, uids))
        super().flush()
        if not label_ops:
            return
        self._select_appended()
        try:
            for add_labels, remove_labels, uids in label_ops:
                for start in range(0, len(uids), STORE_BATCH):
                    chunk = _uid_ranges(uids[start : start + STORE_BATCH])
                    store_labels(self, "+", chunk, add_labels)
                    store_labels(self, "-", chunk, remove_labels)
        except (ConnectError, FolderError):
            raise
        except MailsyncError as error:
            raise FolderError(f"{self.name}: the server refused a change of labels: {error}")

    def _expunge(self, uids: builtins.list[int]) -> None:
        trash(self, uids)

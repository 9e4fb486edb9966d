"""A stateful fake Gmail IMAP server (X-GM-EXT-1) on 127.0.0.1, plain or with implicit TLS,
for the tests of mailsync's Gmail support.  No real Gmail can be reached from the tests,
so this one answers as Gmail is documented or widely reported to answer; the sources are
listed at the end of this docstring as [name] and cited where they decide something.

The model: a message is stored once (``GmailMessage``: one X-GM-MSGID, one X-GM-THRID,
one body, one INTERNALDATE, one set of flags shared by every folder, and a set of
labels).  Folders are views of the labels [EXT, SYNC]:

* ``INBOX`` shows the messages labelled ``\\Inbox``; ``[Gmail]/Sent Mail`` ``\\Sent``,
  ``[Gmail]/Drafts`` ``\\Draft``, ``[Gmail]/Important`` ``\\Important``, a user label's
  folder (names nest with "/") that label;
* ``[Gmail]/Starred`` shows the messages flagged ``\\Flagged`` (a star is the flag [SYNC];
  X-GM-LABELS shows it as ``\\Starred``);
* ``[Gmail]/All Mail`` every message that is not in Spam or Trash; ``[Gmail]/Spam`` and
  ``[Gmail]/Trash`` those labelled ``\\Spam`` / ``\\Trash``, which no other folder shows (a
  message moved to the Trash leaves every other folder [YZ]);
* ``[Gmail]`` itself cannot be selected: ``NO [NONEXISTENT] Unknown Mailbox: [Gmail] (now
  in authenticated state) (Failure)`` [IMAPSYNC].

Each folder has its own UIDVALIDITY, UIDNEXT and UIDs; a message gets a UID in a folder
when it enters it, and a new one if it leaves and comes back [PHP].  The label names in
X-GM-LABELS are the system labels ``\\Inbox \\Sent \\Draft \\Important \\Starred \\Trash
\\Spam`` [PEERS: offlineimap's ignorelabels, gmvault] (Google's own example shows
``\\Drafts``; both are accepted in STORE) and user labels as astrings, quoted when they
need it, in modified UTF-7 (UTF-8 after ``ENABLE UTF8=ACCEPT``) [EXT].  The label of the
selected folder is left out of X-GM-LABELS [GMB] (a report of 2012 that nothing since
contradicts; ``omit_selected_label=False`` turns it off), so a client must not read a
message's labels from one folder only.

Writes, as [SYNC] and Gmail's IMAP settings [SETTINGS] describe them, with Gmail's
defaults (Auto-Expunge on, "Archive the message"):

* COPY to a folder adds its label (to Starred: the flag; to Trash/Spam: trashes or
  spams the message; to All Mail: nothing); MOVE also removes the source folder's label;
* STORE +/-X-GM-LABELS (and .SILENT [PEERS: gmvault]) adds and removes labels; a label
  that does not exist yet is created;
* APPEND to a folder creates the message with that folder's label (nothing for All Mail);
  an APPEND whose Message-ID is already in the account creates nothing: the existing
  message gets the folder's label [IMAPSYNC: "Gmail will accept the new duplicate message
  and throw away the new copy"; that the label is added is this fake's reading];
* a message marked ``\\Deleted`` is expunged at once (``auto_expunge``), otherwise by
  EXPUNGE / CLOSE: in a label folder that removes the label and the message stays in All
  Mail; in Spam or Trash it deletes the message forever; from the last visible folder
  (All Mail, unless ``show_all_mail=False``) what ``expunge_behavior`` says: "archive"
  (Gmail's default: remove ``\\Inbox``, the message stays), "trash" or "delete_forever"
  [SETTINGS; IMAPSYNC "Gmail does not really delete messages in All Mail"; reports that
  an expunge in All Mail deletes nothing by default: sweetrb/apple-mail-mcp#88,
  overseers-desk/courier#53].

Protocol: CAPABILITY as measured on imap.gmail.com before and after login [CAPS]; LOGIN
(app passwords; the account password gets Gmail's "Application-specific password
required" [IMAPSYNC]); AUTHENTICATE XOAUTH2 [XOAUTH2], OAUTHBEARER (RFC 7628) and PLAIN,
with or without an initial response (SASL-IR); a refused token gets the base64 JSON error
challenge, the client's empty answer, then ``NO [AUTHENTICATIONFAILED] Invalid
credentials (Failure)`` (the text clients report; Google's page shows "NO SASL
authentication failed").  ID, NAMESPACE, ENABLE (CONDSTORE, UTF8=ACCEPT), COMPRESS
DEFLATE, LIST (LIST-EXTENDED selection SUBSCRIBED/SPECIAL-USE, RETURN SPECIAL-USE /
CHILDREN / SUBSCRIBED / STATUS), XLIST, LSUB, STATUS, SELECT/EXAMINE (CONDSTORE), CREATE,
DELETE, RENAME, SUBSCRIBE, GETQUOTAROOT, APPEND (APPENDUID; over ``append_limit``:
``BAD [TOOBIG] Message too large. https://support.google.com/mail/answer/6584#limit``
before the literal is sent [TOOBIG]; LITERAL- (RFC 7888): a non-synchronizing literal over
4096 bytes is refused), (UID) FETCH (UID FLAGS INTERNALDATE RFC822.SIZE X-GM-MSGID
X-GM-THRID X-GM-LABELS MODSEQ RFC822 RFC822.HEADER RFC822.TEXT BODY[...] BODY.PEEK[...]
with HEADER, TEXT, HEADER.FIELDS (.NOT) and <partial>; CHANGEDSINCE), (UID) SEARCH (the
RFC 3501 keys, MODSEQ, X-GM-MSGID, X-GM-THRID, X-GM-LABELS, a minimal X-GM-RAW: ``in:``,
``label:``, ``is:``, ``rfc822msgid:`` and words; ESEARCH RETURN), (UID) STORE (FLAGS and
X-GM-LABELS, UNCHANGEDSINCE), (UID) COPY / MOVE (COPYUID), EXPUNGE, UID EXPUNGE, CLOSE,
UNSELECT, CHECK, NOOP, IDLE, LOGOUT.  EXPUNGE reaches a session only when RFC 3501 allows
it (never during FETCH, STORE or SEARCH; EXISTS may come then), so its sequence numbers
stay right while other sessions change the folders.

Gmail's limits: ``download_limit`` bytes of bodies (2500 MB a day at Gmail [LIMITS]),
after which a body FETCH gets ``NO [OVERQUOTA] Account exceeded command or bandwidth
limits.`` [ha-email-sensor#16]; ``expire_session`` / the fault action "expire" send ``*
BYE Session expired, please login again.`` and hang up [IMAPSYNC, imap-backup#92].

For the tests: ``deliver()`` puts a message in the account; ``message(msgid)``,
``labels_of(msgid)``, ``uid(folder, msgid)``, ``folder_messages(folder)`` inspect it
server-side; ``body_downloads[msgid]`` counts whole-body downloads (BODY[] / RFC822
without a range) and ``body_bytes[msgid]`` every body byte sent, per message
(``body_bytes_total`` for all), so a test can say "each message was downloaded once
however many labels it has"; ``logins`` lists (connection, mechanism, user, secret) of
each successful login; ``log`` / ``commands()`` every command line (fakeimap.py);
``revoke_token`` refuses a token from now on (sessions already logged in go on, as they
do at Gmail when a token expires [node-imap#789]).  ``fault(server, connection,
command, args)`` may return "hang", "drop" (hang up without answering), "drop_in_body"
(half a body literal, then hang up), "expire" (the BYE above), bytes to send instead of
the answer, or ``action(send, tag, session)``.

Sources:
[EXT] https://developers.google.com/gmail/imap/imap-extensions (as of 2026).
[XOAUTH2] https://developers.google.com/gmail/imap/xoauth2-protocol.
[SYNC] "How actions sync in IMAP", https://support.google.com/mail/answer/77657.
[SETTINGS] https://developers.google.com/gmail/api/reference/rest/v1/ImapSettings
  (autoExpunge, expungeBehavior archive|trash|deleteForever).
[CAPS] "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR
  AUTH=XOAUTH2 AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER" before login, and
  "... X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT
  LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584" after, in protocol
  logs of imap.gmail.com quoted in public code and issues.
[LIMITS] https://support.google.com/a/answer/1071518 (IMAP: 2500 MB down, 500 MB up a day).
[TOOBIG] OfflineIMAP/offlineimap#724.
[IMAPSYNC] imapsync's FAQ.d/FAQ.Gmail.txt.
[PEERS] offlineimap3 offlineimap/folder/Gmail.py; gmvault src/gmv/imap_utils.py.
[GMB] dlech/gmailbuttons#10: "FETCH (X-GM-LABELS) does not include the selected folder".
[YZ] http://yz.mit.edu/wp/gmail-and-imap/.
[PHP] php.net imap_uid, user note: Gmail gives a message a new UID when it comes back.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from urllib.parse import quote

from fakeimap import Disconnect, FakeIMAPServer, internaldate, parse_set, tokens
from imapclient import imap_utf7

INBOX, SENT, DRAFT, IMPORTANT = "\\Inbox", "\\Sent", "\\Draft", "\\Important"
STARRED, TRASH, SPAM = "\\Starred", "\\Trash", "\\Spam"
SYSTEM_LABELS = (INBOX, SENT, DRAFT, IMPORTANT, STARRED, TRASH, SPAM)
FLAGGED, SEEN, DELETED = "\\Flagged", "\\Seen", "\\Deleted"
SYSTEM_FLAGS = ("\\Answered", FLAGGED, "\\Draft", DELETED, SEEN)

# (kind, name under the prefix, RFC 6154 attribute, XLIST attribute, label shown)
SYSTEM_FOLDERS = (
    ("inbox", "INBOX", None, "\\Inbox", INBOX),
    ("all", "All Mail", "\\All", "\\AllMail", None),
    ("drafts", "Drafts", "\\Drafts", "\\Drafts", DRAFT),
    ("important", "Important", "\\Important", "\\Important", IMPORTANT),
    ("sent", "Sent Mail", "\\Sent", "\\Sent", SENT),
    ("spam", "Spam", "\\Junk", "\\Spam", SPAM),
    ("starred", "Starred", "\\Flagged", "\\Starred", STARRED),
    ("trash", "Trash", "\\Trash", "\\Trash", TRASH),
)

CAPABILITIES_BEFORE_LOGIN = (
    "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR "
    "AUTH=XOAUTH2 AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER"
)
CAPABILITIES = (
    "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS "
    "COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS "
    "LITERAL- SPECIAL-USE APPENDLIMIT={limit}"
)
GREETING = "* OK Gimap ready for requests from 127.0.0.1 k2if6111336rvb.0"
AUTH_FAILED = "NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"
APP_PASSWORD_REQUIRED = (
    "NO [ALERT] Application-specific password required: "
    "https://support.google.com/accounts/answer/185833 (Failure)"
)
# [XOAUTH2]: base64 of {"status":"401","schemes":"bearer mac","scope":"https://mail.google.com/"}
XOAUTH2_ERROR = (
    "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG1hYyIsInNjb3BlIjoiaHR0cHM6Ly9tYWlsLmdv"
    "b2dsZS5jb20vIn0K"
)
TOO_BIG = "BAD [TOOBIG] Message too large. https://support.google.com/mail/answer/6584#limit"
OVERQUOTA = "NO [OVERQUOTA] Account exceeded command or bandwidth limits."
SESSION_EXPIRED = "* BYE Session expired, please login again."
LITERAL_MINUS_MAX = 4096  # RFC 7888: the largest non-synchronizing literal with LITERAL-
_ATOM = re.compile(r"[^\x00-\x20\x7f-\uffff(){%*\"\\\]]+")
_FETCH_ITEM = re.compile(
    r"(BODY(?:\.PEEK)?\[[^\]]*\](?:<\d+(?:\.\d+)?>)?|[A-Z0-9.\-]+)", re.IGNORECASE
)
_SECTION = re.compile(r"^([\d.]*?)\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?$")
_MSGID_BASE, _MSGID_STEP = 1_650_000_000_000_000_000, 4_294_967_311


@dataclass
class GmailMessage:
    msgid: int  # X-GM-MSGID (64 bits)
    thrid: int  # X-GM-THRID
    body: bytes  # as stored and sent: CRLF
    date: datetime  # INTERNALDATE
    flags: set[str] = field(default_factory=set)  # shared by every folder (no \Deleted)
    labels: set[str] = field(default_factory=set)  # system labels and user label names
    modseq: int = 1

    def header(self, name: str) -> str:
        return str(BytesHeaderParser().parsebytes(self.body).get(name, ""))


@dataclass
class GmailFolder:
    name: str  # as the user sees it (Unicode), e.g. "[Gmail]/Sent Mail", "Work/2024"
    kind: str  # inbox all drafts important sent spam starred trash | label | noselect
    label: str | None  # the label whose messages it shows (kind "label" and system kinds)
    uidvalidity: int
    special: str | None = None  # RFC 6154 attribute
    xlist: str | None = None  # the attribute XLIST gives it
    uidnext: int = 1
    members: dict[int, int] = field(default_factory=dict)  # uid -> msgid, ascending UIDs
    uid_of: dict[int, int] = field(default_factory=dict)  # msgid -> uid
    deleted: set[int] = field(default_factory=set)  # msgids marked \Deleted here
    highestmodseq: int = 1

    @property
    def selectable(self) -> bool:
        return self.kind != "noselect"


class _Session:
    """One connection: its I/O (TLS, COMPRESS), login and selected folder.  ``view`` is
    the folder's UIDs as this session knows them: its sequence numbers."""

    def __init__(self, conn: socket.socket, number: int):
        self.conn, self.number = conn, number
        self.reader = conn.makefile("rb")
        self.write_lock = threading.Lock()
        self.deflater = None
        self.user: str | None = None
        self.secret: str | None = None
        self.selected: GmailFolder | None = None
        self.readonly = False
        self.view: list[int] = []
        self.condstore = False
        self.utf8 = False
        self.idling = False

    def send(self, data: bytes | str) -> None:
        data = data if isinstance(data, bytes) else data.encode()
        with self.write_lock:
            if self.deflater is not None:
                data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
            self.conn.sendall(data)

    def start_compression(self) -> None:
        self.reader = _InflatingReader(self.reader)
        self.deflater = zlib.compressobj(wbits=-15)


class _InflatingReader:
    """readline()/read() over a DEFLATE stream (RFC 4978) read from ``raw``."""

    def __init__(self, raw):
        self.raw, self.inflater, self.buffer = raw, zlib.decompressobj(-15), b""

    def _fill(self) -> bool:
        chunk = self.raw.read1(65536)
        if not chunk:
            return False
        self.buffer += self.inflater.decompress(chunk)
        return True

    def readline(self) -> bytes:
        while b"\n" not in self.buffer:
            if not self._fill():
                line, self.buffer = self.buffer, b""
                return line
        end = self.buffer.index(b"\n") + 1
        line, self.buffer = self.buffer[:end], self.buffer[end:]
        return line

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size and self._fill():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


class _Refused(Exception):
    """A command refused while it was being read (its literal was not accepted)."""


class FakeGmail(FakeIMAPServer):
    def __init__(
        self,
        *,
        user: str = "alice@gmail.com",
        password: str = "abcdefghijklmnop",  # an app password
        account_password: str | None = None,  # refused: an app password is required
        tokens: tuple[str, ...] | set[str] = ("ya29.fake-access-token",),
        tls_context=None,
        prefix: str = "[Gmail]",  # "[Google Mail]" for accounts in the UK and Germany
        names: dict[str, str] | None = None,  # kind -> localized name, e.g. {"trash": "Bin"}
        labels: tuple[str, ...] = (),  # user labels that exist from the start
        show_all_mail: bool = True,  # Gmail's "Show in IMAP" for All Mail
        auto_expunge: bool = True,
        expunge_behavior: str = "archive",  # archive | trash | delete_forever
        omit_selected_label: bool = True,
        dedupe_appends: bool = True,
        xoauth2_error_challenge: bool = True,
        append_limit: int = 35_651_584,
        download_limit: int | None = None,
        fault=None,
    ):
        super().__init__(
            user=user, password=password, greeting=GREETING, fault=fault, tls_context=tls_context
        )
        if expunge_behavior not in ("archive", "trash", "delete_forever"):
            raise ValueError(f"expunge_behavior {expunge_behavior!r}")
        self.mailboxes = {}  # fakeimap's model is not used here
        self.account_password = account_password
        self.tokens = set(tokens)
        self.show_all_mail = show_all_mail
        self.auto_expunge = auto_expunge
        self.expunge_behavior = expunge_behavior
        self.omit_selected_label = omit_selected_label
        self.dedupe_appends = dedupe_appends
        self.xoauth2_error_challenge = xoauth2_error_challenge
        self.append_limit = append_limit
        self.download_limit = download_limit
        self.messages: dict[int, GmailMessage] = {}
        self.folders: list[GmailFolder] = []
        self.modseq = 1
        self._msgids = itertools.count()
        self._uidvalidities = itertools.count(1)
        self.body_downloads: Counter[int] = Counter()
        self.body_bytes: Counter[int] = Counter()
        self.body_bytes_total = 0
        self.logins: list[tuple[int, str, str, str]] = []  # (connection, mechanism, user, secret)
        self.sessions: dict[int, _Session] = {}
        names = dict(names or {})
        self.folders.append(GmailFolder(prefix, "noselect", None, 0))
        for kind, name, special, xlist, label in SYSTEM_FOLDERS:
            full = "INBOX" if kind == "inbox" else f"{prefix}/{names.get(kind, name)}"
            folder = GmailFolder(full, kind, label, next(self._uidvalidities), special, xlist)
            if kind != "all" or show_all_mail:
                self.folders.append(folder)
            else:
                self.hidden_all_mail = folder
        for name in labels:
            self.create_label(name)

    # -- the account, for tests ---------------------------------------------------------
    def deliver(
        self,
        body: bytes,
        labels=(INBOX,),
        flags=(),
        date: datetime | None = None,
        thread: GmailMessage | None = None,
    ) -> GmailMessage:
        """A new message (body as sent on the wire: CRLF) with these labels (system
        labels as in X-GM-LABELS, user labels by name, created when missing) and flags
        (``\\Flagged`` stars it)."""
        with self.lock:
            msgid = _MSGID_BASE + next(self._msgids) * _MSGID_STEP
            msg = GmailMessage(msgid, thread.thrid if thread else msgid, body, date or _now())
            self.messages[msgid] = msg
            msg.flags = {f for f in flags if f != DELETED}
            self._add_labels(msg, [x for x in map(self._label, labels) if x])
            self._changed(msg)
            return msg

    def url(self, scheme: str = "imap", query: str = "tls=none") -> str:
        user = quote(self.user, safe="")
        return f"{scheme}://{user}@{self.host}:{self.port}" + (f"?{query}" if query else "")

    def message(self, msgid: int) -> GmailMessage:
        return self.messages[msgid]

    def labels_of(self, msgid: int) -> set[str]:
        """Every label of a message, as X-GM-LABELS shows them outside its folders."""
        with self.lock:
            return self._shown_labels(self.messages[msgid], None)

    def folder(self, name: str) -> GmailFolder:
        found = self._folder(name)
        if found is None:
            raise KeyError(name)
        return found

    def uid(self, folder: str, msgid: int) -> int | None:
        return self.folder(folder).uid_of.get(msgid)

    def folder_messages(self, folder: str) -> list[GmailMessage]:
        with self.lock:
            return [self.messages[m] for m in self.folder(folder).members.values()]

    def create_label(self, name: str) -> GmailFolder:
        """A user label and its folder, with its parents ("a/b" needs "a", RFC 3501)."""
        with self.lock:
            parts = name.split("/")
            for depth in range(1, len(parts) + 1):
                each = "/".join(parts[:depth])
                folder = self._folder(each)
                if folder is None:
                    folder = GmailFolder(each, "label", each, next(self._uidvalidities))
                    self.folders.append(folder)
            return folder

    def revoke_token(self, token: str) -> None:
        with self.lock:
            self.tokens.discard(token)

    def expire_session(self, number: int) -> None:
        """Gmail ends a session: ``* BYE Session expired, please login again.``"""
        session = self.sessions.get(number)
        if session is not None:
            _hang_up(session, SESSION_EXPIRED)

    # -- labels and folders ----------------------------------------------------------------
    def _folder(self, name: str) -> GmailFolder | None:
        lowered = name.lower()
        return next((f for f in self.folders if f.name.lower() == lowered), None)

    def _label(self, text: str, create: bool = True) -> str | None:
        """A label as a client names it -> as stored: system labels whatever their case
        (and ``\\Drafts``, Google's spelling, and the system folders' names), user labels
        case-insensitively matched to one that exists, else created (or None)."""
        system = {label.lower(): label for label in SYSTEM_LABELS}
        system["\\drafts"] = DRAFT
        if text.lower() in system:
            return system[text.lower()]
        folder = self._folder(text)
        if folder is not None:
            return folder.label  # None for All Mail and [Gmail]: no label to add
        return self.create_label(text).label if create else None

    def _add_labels(self, msg: GmailMessage, labels) -> None:
        for label in labels:
            if label == STARRED:
                msg.flags.add(FLAGGED)
            elif label in (TRASH, SPAM):
                msg.labels = {label}  # it leaves every other folder [YZ]
            else:
                msg.labels -= {TRASH, SPAM}  # a label brings it back from Trash or Spam
                msg.labels.add(label)

    def _remove_labels(self, msg: GmailMessage, labels) -> None:
        for label in labels:
            if label == STARRED:
                msg.flags.discard(FLAGGED)
            else:
                msg.labels.discard(label)

    def _shows(self, folder: GmailFolder, msg: GmailMessage) -> bool:
        if msg.msgid not in self.messages or not folder.selectable:
            return False
        if folder.kind in ("trash", "spam"):
            return folder.label in msg.labels
        if msg.labels & {TRASH, SPAM}:
            return False
        if folder.kind == "all":
            return True
        if folder.kind == "starred":
            return FLAGGED in msg.flags
        return folder.label in msg.labels

    def _shown_labels(self, msg: GmailMessage, selected: GmailFolder | None) -> set[str]:
        labels = set(msg.labels)
        if FLAGGED in msg.flags:
            labels.add(STARRED)
        if self.omit_selected_label and selected is not None and selected.label is not None:
            labels.discard(selected.label)  # [GMB]
        return labels

    def _changed(self, msg: GmailMessage) -> None:
        """After any change to a message: a new MODSEQ, and every folder's UIDs brought up
        to date (a message entering a folder gets its next UID)."""
        self.modseq += 1
        msg.modseq = self.modseq
        for folder in self.folders:
            shown, known = self._shows(folder, msg), msg.msgid in folder.uid_of
            if shown and not known:
                folder.uid_of[msg.msgid] = folder.uidnext
                folder.members[folder.uidnext] = msg.msgid
                folder.uidnext += 1
            elif known and not shown:
                del folder.members[folder.uid_of.pop(msg.msgid)]
                folder.deleted.discard(msg.msgid)
            if shown or known:
                folder.highestmodseq = self.modseq

    def _expunge_from(self, folder: GmailFolder, msg: GmailMessage) -> None:
        """A message expunged from a folder, as Gmail does it [SYNC, SETTINGS]."""
        folder.deleted.discard(msg.msgid)
        if folder.kind in ("trash", "spam"):
            del self.messages[msg.msgid]
        elif folder.kind == "all":
            self._leave_last_folder(msg)
        else:
            self._remove_labels(msg, [STARRED if folder.kind == "starred" else folder.label])
            if not any(self._shows(f, msg) for f in self.folders if f is not folder):
                self._leave_last_folder(msg)
        self._changed(msg)

    def _leave_last_folder(self, msg: GmailMessage) -> None:
        if self.expunge_behavior == "delete_forever":
            del self.messages[msg.msgid]
        elif self.expunge_behavior == "trash":
            self._add_labels(msg, [TRASH])
        else:
            msg.labels.discard(INBOX)  # archived: it stays in All Mail

    def _copy_to(self, msg: GmailMessage, folder: GmailFolder) -> None:
        if folder.kind == "starred":
            msg.flags.add(FLAGGED)
        elif folder.kind != "all":
            self._add_labels(msg, [folder.label])
        self._changed(msg)

    # -- connections ------------------------------------------------------------------------
    def _serve(self, conn: socket.socket, number: int) -> None:
        session = None
        try:
            if self.tls_context is not None:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
                self.clients.append(conn)
            session = _Session(conn, number)
            with self.lock:
                self.sessions[number] = session
            session.send(self.greeting + "\r\n")
            while not self.stop_event.is_set():
                try:
                    tag, line, literals = self._read(session)
                except _Refused:
                    continue
                if tag is None:
                    return
                self._command(session, tag, line, literals)
        except (Disconnect, OSError):
            pass
        finally:
            with self.lock:
                self.sessions.pop(number, None)
            try:
                conn.close()
            except OSError:
                pass

    def _read(self, session: _Session):
        """One command: (tag, line with literals replaced by \\x00LITERAL, literals)."""
        data, literals, tag = b"", [], None
        while True:
            line = session.reader.readline()
            if not line:
                return None, b"", []
            line = line.rstrip(b"\r\n")
            if tag is None:
                tag = line.split(b" ", 1)[0].decode("utf-8", "replace")
            match = re.search(rb"\{(\d+)(\+?)\}$", line)
            if not match:
                return tag, data + line, literals
            size, sync = int(match.group(1)), not match.group(2)
            verb = (data + line).split(b" ")[1:2]
            if not sync and size > LITERAL_MINUS_MAX:
                session.send(f"{tag} BAD [TOOBIG] Literal too large for LITERAL- (Failure)\r\n")
                raise Disconnect  # its bytes are on their way and cannot be told from commands
            if verb and verb[0].upper() == b"APPEND" and size > self.append_limit:
                if sync:
                    session.send(f"{tag} {TOO_BIG}\r\n")  # [TOOBIG]: the client sends nothing
                    raise _Refused
                session.reader.read(size)
                session.reader.readline()
                session.send(f"{tag} {TOO_BIG}\r\n")
                raise _Refused
            if sync:
                session.send(self.continuation)
            literals.append(session.reader.read(size))
            data += line[: match.start()] + b"\x00LITERAL"

    def _command(self, session: _Session, tag: str, line: bytes, literals) -> None:
        parts = line.split(b" ", 2)
        command = parts[1].decode().upper() if len(parts) > 1 else ""
        rest = parts[2] if len(parts) > 2 else b""
        if command == "UID":
            sub, _, rest = rest.partition(b" ")
            command = "UID " + sub.decode().upper()
        shown = line.decode("utf-8", "replace").replace("\x00LITERAL", "{literal}")
        with self.lock:
            self.log.append((session.number, shown[len(tag) + 1 :]))
        args = tokens(rest, list(literals))
        action = self.fault(self, session.number, command, args) if self.fault else None
        if isinstance(action, bytes):
            session.send(action)
            return
        if action == "hang":
            self.stop_event.wait(30)
            raise Disconnect
        if action == "drop":
            raise Disconnect
        if action == "expire":
            _hang_up(session, SESSION_EXPIRED)
            raise Disconnect
        if callable(action):
            action(session.send, tag, session)
            return
        method = getattr(self, "_cmd_" + command.replace(" ", "_").lower(), None)
        if method is None:
            session.send(f"{tag} BAD Unknown command (Failure)\r\n")
            return
        if session.user is None and command not in _BEFORE_LOGIN:
            session.send(f"{tag} BAD Command not valid in this state (Failure)\r\n")
            return
        if command in _NEEDS_SELECTED and session.selected is None:
            session.send(f"{tag} BAD Command not valid in this state (Failure)\r\n")
            return
        context = _Context(session, tag, rest.decode("utf-8", "replace"), action)
        if command in _UNLOCKED:
            method(context, args)
            return
        with self.lock:
            method(context, args)

    # -- names on the wire ------------------------------------------------------------------
    @staticmethod
    def _quoted(name: str, session: _Session) -> str:
        wire = name if session.utf8 else imap_utf7.encode(name).decode()
        return '"' + wire.replace("\\", "\\\\").replace('"', '\\"') + '"'

    @staticmethod
    def _astring(text: str, session: _Session) -> str:
        if text in SYSTEM_LABELS:
            return text
        wire = text if session.utf8 else imap_utf7.encode(text).decode()
        if _ATOM.fullmatch(wire):
            return wire
        return '"' + wire.replace("\\", "\\\\").replace('"', '\\"') + '"'

    @staticmethod
    def _from_wire(arg, session: _Session) -> str:
        if isinstance(arg, bytes):
            arg = arg.decode("utf-8", "replace")
        if session.utf8 or not isinstance(arg, str):
            return str(arg)
        return imap_utf7.decode(arg.encode())

    # -- commands: any state ----------------------------------------------------------------
    def _caps(self, session: _Session) -> str:
        if session.user is None:
            return CAPABILITIES_BEFORE_LOGIN
        return CAPABILITIES.format(limit=self.append_limit)

    def _cmd_capability(self, c, args):
        c.send(f"* CAPABILITY {self._caps(c.session)}\r\n{c.tag} OK Success\r\n")

    def _cmd_noop(self, c, args):
        self._notify(c.session, expunge=True)
        c.send(f"{c.tag} OK Success\r\n")

    _cmd_check = _cmd_noop

    def _cmd_logout(self, c, args):
        c.send(f"* BYE LOGOUT Requested\r\n{c.tag} OK 73 good day (Success)\r\n")
        raise Disconnect

    def _cmd_id(self, c, args):
        c.send(
            '* ID ("name" "GImap" "vendor" "Google, Inc." "support-url" '
            '"https://support.google.com/mail" "remote-host" "127.0.0.1")\r\n'
            f"{c.tag} OK Success\r\n"
        )

    def _cmd_login(self, c, args):
        user, password = (list(map(str, args)) + ["", ""])[:2]
        if user.lower() == self.user.lower() and password == self.password:
            self._logged_in(c, "LOGIN", password, f"{self.user} authenticated (Success)")
        elif self.account_password is not None and password == self.account_password:
            c.send(f"{c.tag} {APP_PASSWORD_REQUIRED}\r\n")
        else:
            c.send(f"{c.tag} {AUTH_FAILED}\r\n")

    def _logged_in(self, c, mechanism: str, secret: str, text: str = "Success") -> None:
        c.session.user, c.session.secret = self.user, secret
        with self.lock:
            self.logins.append((c.session.number, mechanism, self.user, secret))
        c.send(f"* CAPABILITY {self._caps(c.session)}\r\n{c.tag} OK {text}\r\n")

    def _cmd_authenticate(self, c, args):
        mechanism = str(args[0]).upper() if args else ""
        if mechanism not in ("XOAUTH2", "OAUTHBEARER", "PLAIN"):
            c.send(f"{c.tag} NO Unsupported authentication mechanism (Failure)\r\n")
            return
        if len(args) > 1:
            response = str(args[1])
        else:  # no SASL-IR: an empty challenge first
            c.send("+ \r\n")
            response = c.session.reader.readline().rstrip(b"\r\n").decode("ascii", "replace")
        if response == "*":
            c.send(f"{c.tag} BAD AUTHENTICATE cancelled (Failure)\r\n")
            return
        try:
            decoded = base64.b64decode(response, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            c.send(f"{c.tag} BAD Invalid SASL argument. (Failure)\r\n")
            return
        if mechanism == "PLAIN":
            _, _, rest = decoded.partition("\x00")
            user, _, password = rest.partition("\x00")
            if user.lower() == self.user.lower() and password == self.password:
                self._logged_in(c, "PLAIN", password)
            else:
                c.send(f"{c.tag} {AUTH_FAILED}\r\n")
            return
        user, token = sasl_bearer(decoded, mechanism)
        with self.lock:
            valid = token in self.tokens
        if user is not None and user.lower() == self.user.lower() and valid:
            self._logged_in(c, mechanism, token)
            return
        if mechanism == "OAUTHBEARER" or self.xoauth2_error_challenge:
            # [XOAUTH2] / RFC 7628 3.2.2: the error as a challenge, the client's (empty)
            # answer, then the failure.
            challenge = XOAUTH2_ERROR
            if mechanism == "OAUTHBEARER":
                error = {"status": "invalid_token", "scope": "https://mail.google.com/"}
                challenge = base64.b64encode(json.dumps(error).encode()).decode()
            c.send(f"+ {challenge}\r\n")
            c.session.reader.readline()
        c.send(f"{c.tag} {AUTH_FAILED}\r\n")

    def _cmd_compress(self, c, args):
        if not args or str(args[0]).upper() != "DEFLATE":
            c.send(f"{c.tag} BAD Unknown compression mechanism (Failure)\r\n")
        elif c.session.deflater is not None:
            c.send(f"{c.tag} NO [COMPRESSIONACTIVE] Compression already active (Failure)\r\n")
        else:
            c.send(f"{c.tag} OK Success\r\n")
            c.session.start_compression()

    # -- commands: authenticated ------------------------------------------------------------
    def _cmd_enable(self, c, args):
        enabled = []
        for capability in map(str, args):
            if capability.upper() == "CONDSTORE":
                c.session.condstore = True
                enabled.append("CONDSTORE")
            elif capability.upper() == "UTF8=ACCEPT":
                c.session.utf8 = True
                enabled.append("UTF8=ACCEPT")
        c.send(f"* ENABLED {' '.join(enabled)}\r\n{c.tag} OK Success\r\n")

    def _cmd_namespace(self, c, args):
        c.send(f'* NAMESPACE (("" "/")) NIL NIL\r\n{c.tag} OK Success\r\n')

    def _cmd_getquotaroot(self, c, args):
        used = sum(len(m.body) for m in self.messages.values()) // 1024
        c.send(
            f'* QUOTAROOT {self._quoted(self._from_wire(args[0], c.session), c.session)} ""\r\n'
            f'* QUOTA "" (STORAGE {used} 15728640)\r\n{c.tag} OK Success\r\n'
        )

    def _listed(self) -> list[GmailFolder]:
        return sorted(self.folders, key=lambda f: (f.kind != "inbox", f.name.lower()))

    def _attributes(self, folder: GmailFolder, xlist: bool = False) -> list[str]:
        children = any(f.name.startswith(folder.name + "/") for f in self.folders)
        attributes = ["\\HasChildren" if children else "\\HasNoChildren"]
        if not folder.selectable:
            attributes.append("\\Noselect")
        special = folder.xlist if xlist else folder.special
        if special:
            attributes.append(special)
        return attributes

    def _cmd_list(self, c, args, verb: str = "LIST"):
        args = list(args)
        selection = []
        if args and isinstance(args[0], list):  # LIST-EXTENDED selection options
            selection = [str(a).upper() for a in args.pop(0)]
        returns: list = []
        if "RETURN" in [str(a).upper() for a in args[2:]]:
            index = [str(a).upper() for a in args].index("RETURN")
            returns, args = list(args[index + 1]), args[:index]
        if len(args) < 2:
            c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
            return
        reference = self._from_wire(args[0], c.session)
        patterns = args[1] if isinstance(args[1], list) else [args[1]]
        patterns = [reference + self._from_wire(p, c.session) for p in patterns]
        status_items = None
        for i, item in enumerate(returns):
            if str(item).upper() == "STATUS" and i + 1 < len(returns):
                status_items = [str(s).upper() for s in returns[i + 1]]
        if patterns == [reference] and not selection:  # LIST "" "": the hierarchy delimiter
            c.send(f'* {verb} (\\Noselect) "/" ""\r\n{c.tag} OK Success\r\n')
            return
        for folder in self._listed():
            if not any(_matches(p, folder.name) for p in patterns):
                continue
            if "SPECIAL-USE" in selection and not folder.special:
                continue
            attributes = self._attributes(folder, xlist=verb == "XLIST")
            if "SUBSCRIBED" in selection or "SUBSCRIBED" in map(str, returns):
                attributes.append("\\Subscribed")
            name = self._quoted(folder.name, c.session)
            c.send(f'* {verb} ({" ".join(attributes)}) "/" {name}\r\n')
            if status_items and folder.selectable:
                c.send(f"* STATUS {name} ({self._status(folder, status_items)})\r\n")
        c.send(f"{c.tag} OK Success\r\n")

    def _cmd_xlist(self, c, args):
        self._cmd_list(c, args, verb="XLIST")

    def _cmd_lsub(self, c, args):
        self._cmd_list(c, args, verb="LSUB")

    def _status(self, folder: GmailFolder, items: list[str]) -> str:
        values = {
            "MESSAGES": len(folder.members),
            "RECENT": 0,
            "UIDNEXT": folder.uidnext,
            "UIDVALIDITY": folder.uidvalidity,
            "UNSEEN": sum(SEEN not in self.messages[m].flags for m in folder.members.values()),
            "HIGHESTMODSEQ": folder.highestmodseq,
        }
        return " ".join(f"{item} {values[item]}" for item in items if item in values)

    def _unknown(self, c, name: str) -> None:
        c.send(f"{c.tag} NO [NONEXISTENT] Unknown Mailbox: {name} (Failure)\r\n")

    def _cmd_status(self, c, args):
        name = self._from_wire(args[0], c.session)
        folder = self._folder(name)
        if folder is None or not folder.selectable:
            self._unknown(c, name)
            return
        items = [str(i).upper() for i in args[1]]
        if any(i not in ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
                         "HIGHESTMODSEQ") for i in items):  # fmt: skip
            c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
            return
        c.send(f"* STATUS {self._quoted(folder.name, c.session)} ({self._status(folder, items)})")
        c.send(f"\r\n{c.tag} OK Success\r\n")

    def _cmd_select(self, c, args, readonly: bool = False):
        session = c.session
        session.selected, session.view = None, []
        name = self._from_wire(args[0], session)
        folder = self._folder(name)
        if folder is None or not folder.selectable:
            c.send(
                f"{c.tag} NO [NONEXISTENT] Unknown Mailbox: {name} "
                "(now in authenticated state) (Failure)\r\n"
            )
            return
        if len(args) > 1 and "CONDSTORE" in [str(a).upper() for a in args[1]]:
            session.condstore = True
        session.selected, session.readonly = folder, readonly
        session.view = list(folder.members)
        keywords = sorted({k for m in self.messages.values() for k in m.flags} - set(SYSTEM_FLAGS))
        flags = " ".join([*SYSTEM_FLAGS, "$NotPhishing", "$Phishing", *keywords])
        permanent = "" if readonly else f"{flags} \\*"
        access = "READ-ONLY" if readonly else "READ-WRITE"
        c.send(
            f"* FLAGS ({flags})\r\n"
            f"* OK [PERMANENTFLAGS ({permanent})] Flags permitted.\r\n"
            f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid.\r\n"
            f"* {len(session.view)} EXISTS\r\n* 0 RECENT\r\n"
            f"* OK [UIDNEXT {folder.uidnext}] Predicted next UID.\r\n"
            f"* OK [HIGHESTMODSEQ {folder.highestmodseq}]\r\n"
            f"{c.tag} OK [{access}] {self._quoted(folder.name, session)[1:-1]} selected. "
            "(Success)\r\n"
        )

    def _cmd_examine(self, c, args):
        self._cmd_select(c, args, readonly=True)

    def _cmd_create(self, c, args):
        name = self._from_wire(args[0], c.session).rstrip("/")
        if re.search(r"(^|/)\s|\s($|/)|\s\s", name):
            c.send(f"{c.tag} NO [CANNOT] Folder contains excess whitespace (Failure)\r\n")
            return
        if self._folder(name) is not None:
            c.send(f"{c.tag} NO [ALREADYEXISTS] Duplicate folder name {name} (Failure)\r\n")
            return
        self.create_label(name)
        c.send(f"{c.tag} OK Success\r\n")

    def _user_folder(self, c, name: str) -> GmailFolder | None:
        folder = self._folder(name)
        if folder is None:
            self._unknown(c, name)
        elif folder.kind != "label":
            c.send(f"{c.tag} NO [CANNOT] Cannot change a system folder (Failure)\r\n")
            folder = None
        return folder

    def _cmd_delete(self, c, args):
        folder = self._user_folder(c, self._from_wire(args[0], c.session))
        if folder is None:
            return
        self.folders.remove(folder)
        for msgid in list(folder.members.values()):
            msg = self.messages[msgid]
            msg.labels.discard(folder.label)
            self._changed(msg)
        c.send(f"{c.tag} OK Success\r\n")

    def _cmd_rename(self, c, args):
        old, new = (self._from_wire(a, c.session) for a in args[:2])
        folder = self._user_folder(c, old)
        if folder is None:
            return
        if self._folder(new) is not None:
            c.send(f"{c.tag} NO [ALREADYEXISTS] Duplicate folder name {new} (Failure)\r\n")
            return
        renamed = [f for f in self.folders if f is folder or f.name.startswith(old + "/")]
        for each in renamed:  # a label's children are renamed with it
            was = each.label
            each.name = each.label = new + each.name[len(old) :]
            for msgid in each.members.values():
                labels = self.messages[msgid].labels
                labels.discard(was)
                labels.add(each.label)
        c.send(f"{c.tag} OK Success\r\n")

    def _cmd_subscribe(self, c, args):
        c.send(f"{c.tag} OK Success\r\n")

    _cmd_unsubscribe = _cmd_subscribe

    def _cmd_append(self, c, args):
        name = self._from_wire(args[0], c.session)
        folder = self._folder(name)
        if folder is None or not folder.selectable:
            c.send(f"{c.tag} NO [TRYCREATE] Folder doesn't exist. (Failure)\r\n")
            return
        body, flags, date = args[-1], set(), None
        if not isinstance(body, bytes):
            c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
            return
        for arg in args[1:-1]:
            if isinstance(arg, list):
                flags = {str(f) for f in arg}
            else:
                date = datetime.strptime(str(arg).strip(), "%d-%b-%Y %H:%M:%S %z")
        msg = self._duplicate_of(body) if self.dedupe_appends else None
        if msg is None:
            kind = folder.kind
            labels = [] if kind in ("all", "starred") else [folder.label]
            if kind == "starred":
                flags.add(FLAGGED)
            msg = self.deliver(body, labels, flags, date)
        else:
            self._copy_to(msg, folder)
        self._notify(c.session, expunge=True)
        c.send(f"{c.tag} OK [APPENDUID {folder.uidvalidity} {folder.uid_of[msg.msgid]}] (Success)")
        c.send("\r\n")

    def _duplicate_of(self, body: bytes) -> GmailMessage | None:
        wanted = GmailMessage(0, 0, body, _now()).header("Message-ID").strip()
        if not wanted:
            return None
        for msg in self.messages.values():
            if TRASH not in msg.labels and msg.header("Message-ID").strip() == wanted:
                return msg
        return None

    def _cmd_idle(self, c, args):
        session = c.session
        c.send("+ idling\r\n")
        done = threading.Event()

        def notify():
            while not done.wait(0.05):
                with self.lock:
                    self._notify(session, expunge=True)

        notifier = threading.Thread(target=notify, daemon=True)
        notifier.start()
        try:
            line = session.reader.readline()
        finally:
            done.set()
            notifier.join(5)
        if not line:
            raise Disconnect
        with self.lock:
            self._notify(session, expunge=True)
        if line.strip().upper() != b"DONE":
            c.send(f"{c.tag} BAD Expected DONE (Failure)\r\n")
            return
        c.send(f"{c.tag} OK IDLE terminated (Success)\r\n")

    # -- commands: selected ----------------------------------------------------------------
    def _notify(self, session: _Session, expunge: bool) -> None:
        """EXPUNGE (when allowed) and EXISTS for what changed in the selected folder since
        the session last heard of it."""
        folder = session.selected
        if folder is None:
            return
        if expunge:
            for index in reversed(
                [i for i, u in enumerate(session.view) if u not in folder.members]
            ):
                del session.view[index]
                session.send(f"* {index + 1} EXPUNGE\r\n")
        known = set(session.view)
        new = [uid for uid in folder.members if uid not in known]
        if new:
            session.view.extend(new)  # UIDs only grow: new ones come after every known one
            session.send(f"* {len(session.view)} EXISTS\r\n")

    def _targets(self, c, text: str, uid: bool) -> list[tuple[int, int, GmailMessage]]:
        """(sequence number, UID, message) of a sequence or UID set, among the messages the
        session knows that are still in the folder."""
        session, folder = c.session, c.session.selected
        known = [(n, u) for n, u in enumerate(session.view, 1) if u in folder.members]
        if uid:
            wanted = parse_set(text, [u for _, u in known])
            chosen = [(n, u) for n, u in known if u in wanted]
        else:
            numbers = parse_set(text, list(range(1, len(session.view) + 1)))
            chosen = [(n, u) for n, u in known if n in numbers]
        return [(n, u, self.messages[folder.members[u]]) for n, u in chosen]

    def _flags_shown(self, folder: GmailFolder, msg: GmailMessage) -> set[str]:
        return msg.flags | ({DELETED} if msg.msgid in folder.deleted else set())

    def _cmd_fetch(self, c, args, uid: bool = False):
        session, folder = c.session, c.session.selected
        text = c.rest.strip()
        set_text, _, text = text.partition(" ")
        items, modifiers = _fetch_items(text)
        if items is None:
            c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
            return
        changed_since = None
        if modifiers:
            match = re.search(r"CHANGEDSINCE (\d+)", modifiers, re.IGNORECASE)
            if not match:
                c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
                return
            changed_since, session.condstore = int(match.group(1)), True
        if uid and "UID" not in items:
            items.insert(0, "UID")
        if "MODSEQ" in items or changed_since is not None:
            session.condstore = True
            if "MODSEQ" not in items:
                items.append("MODSEQ")
        self._notify(session, expunge=False)
        for number, message_uid, msg in self._targets(c, set_text, uid):
            if changed_since is not None and msg.modseq <= changed_since:
                continue
            parts, seen = [], False
            for item in items:
                rendered = self._fetch_item(c, folder, msg, message_uid, item)
                if rendered is None:
                    return  # the command was refused; the answer is sent
                parts.append(rendered)
                # RFC 3501: BODY[...] and RFC822(.TEXT) set \Seen; .PEEK and RFC822.HEADER not
                seen = seen or item.upper().startswith("BODY[") or item.upper() in _SETS_SEEN
            if seen and not session.readonly and SEEN not in msg.flags:
                msg.flags.add(SEEN)  # a body fetched without PEEK marks the message read
                self._changed(msg)
                parts.append(f"FLAGS ({' '.join(sorted(self._flags_shown(folder, msg)))})".encode())
            session.send(f"* {number} FETCH (".encode() + b" ".join(parts) + b")\r\n")
        c.send(f"{c.tag} OK Success\r\n")

    def _cmd_uid_fetch(self, c, args):
        self._cmd_fetch(c, args, uid=True)

    def _fetch_item(self, c, folder, msg: GmailMessage, uid: int, item: str) -> bytes | None:
        name = item.upper()
        if name == "UID":
            return f"UID {uid}".encode()
        if name == "FLAGS":
            return f"FLAGS ({' '.join(sorted(self._flags_shown(folder, msg)))})".encode()
        if name == "INTERNALDATE":
            return f'INTERNALDATE "{internaldate(msg.date)}"'.encode()
        if name == "RFC822.SIZE":
            return f"RFC822.SIZE {len(msg.body)}".encode()
        if name == "X-GM-MSGID":
            return f"X-GM-MSGID {msg.msgid}".encode()
        if name == "X-GM-THRID":
            return f"X-GM-THRID {msg.thrid}".encode()
        if name == "MODSEQ":
            return f"MODSEQ ({msg.modseq})".encode()
        if name == "X-GM-LABELS":
            shown = self._shown_labels(msg, folder)
            ordered = [x for x in SYSTEM_LABELS if x in shown] + sorted(shown - set(SYSTEM_LABELS))
            return (
                f"X-GM-LABELS ({' '.join(self._astring(x, c.session) for x in ordered)})".encode()
            )
        if name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
            section = {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}[name]
            return self._body(c, msg, name, _section(msg.body, section), whole=section == "")
        if name.startswith(("BODY[", "BODY.PEEK[")):
            inside, _, partial = item[item.index("[") + 1 :].partition("]")
            data = _section(msg.body, inside)
            label = f"BODY[{inside}]"
            if partial:
                offset, _, length = partial.strip("<>").partition(".")
                data = (
                    data[int(offset) : int(offset) + int(length)] if length else data[int(offset) :]
                )
                label += f"<{offset}>"
            return self._body(c, msg, label, data, whole=inside == "" and not partial)
        c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
        return None

    def _body(self, c, msg: GmailMessage, label: str, data: bytes, whole: bool) -> bytes | None:
        """A body literal, counted; refused past the download limit [LIMITS]."""
        if (
            self.download_limit is not None
            and self.body_bytes_total + len(data) > self.download_limit
        ):
            c.send(f"{c.tag} {OVERQUOTA}\r\n")
            return None
        if c.action == "drop_in_body":
            c.send(f"* 1 FETCH ({label} {{{len(data)}}}\r\n".encode() + data[: len(data) // 2])
            raise Disconnect
        self.body_bytes[msg.msgid] += len(data)
        self.body_bytes_total += len(data)
        if whole:
            self.body_downloads[msg.msgid] += 1
        return f"{label} {{{len(data)}}}\r\n".encode() + data

    def _cmd_search(self, c, args, uid: bool = False):
        session, folder = c.session, c.session.selected
        args = list(args)
        returns = None
        if args and str(args[0]).upper() == "RETURN":  # ESEARCH (RFC 4731)
            returns = [str(r).upper() for r in args[1]] or ["ALL"]
            args = args[2:]
        if args and str(args[0]).upper() == "CHARSET":
            args = args[2:]
        self._notify(session, expunge=False)
        known = self._targets(c, "1:*", uid=False)
        try:
            matcher = _Search(self, folder, args, known, len(session.view))
            found = [(n, u) for n, u, msg in known if matcher.matches(msg, n, u)]
        except (ValueError, IndexError):
            c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
            return
        results = [u if uid else n for n, u in found]
        if returns is None:
            c.send(f"* SEARCH{''.join(f' {r}' for r in results)}\r\n")
        else:
            out = [f'(TAG "{c.tag}")'] + (["UID"] if uid else [])
            if results and "MIN" in returns:
                out.append(f"MIN {min(results)}")
            if results and "MAX" in returns:
                out.append(f"MAX {max(results)}")
            if results and "ALL" in returns:
                out.append(f"ALL {_compact(results)}")
            if "COUNT" in returns:
                out.append(f"COUNT {len(results)}")
            c.send(f"* ESEARCH {' '.join(out)}\r\n")
        c.send(f"{c.tag} OK SEARCH completed (Success)\r\n")

    def _cmd_uid_search(self, c, args):
        self._cmd_search(c, args, uid=True)

    def _cmd_store(self, c, args, uid: bool = False):
        session, folder = c.session, c.session.selected
        if session.readonly:
            c.send(f"{c.tag} NO STORE attempt on READ-ONLY folder (Failure)\r\n")
            return
        args = list(args)
        unchanged_since = None
        if len(args) > 1 and isinstance(args[1], list):  # (UNCHANGEDSINCE n), RFC 7162
            modifier = [str(a).upper() for a in args.pop(1)]
            unchanged_since = int(modifier[1])
            session.condstore = True
        if len(args) < 3:
            c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
            return
        operation = str(args[1]).upper()
        values = args[2] if isinstance(args[2], list) else args[2:]
        silent = operation.endswith(".SILENT")
        mode, what = operation[0] if operation[0] in "+-" else "", operation.lstrip("+-")
        what = what.removesuffix(".SILENT")
        if what not in ("FLAGS", "X-GM-LABELS"):
            c.send(f"{c.tag} BAD Could not parse command (Failure)\r\n")
            return
        self._notify(session, expunge=False)
        modified = []
        for number, message_uid, msg in self._targets(c, str(args[0]), uid):
            if unchanged_since is not None and msg.modseq > unchanged_since:
                modified.append(message_uid if uid else number)
                continue
            if what == "FLAGS":
                self._store_flags(folder, msg, mode, {str(v) for v in values})
            else:
                labels = [self._label(self._from_wire(v, session)) for v in values]
                labels = [label for label in labels if label]
                if mode == "+":
                    self._add_labels(msg, labels)
                elif mode == "-":
                    self._remove_labels(msg, labels)
                else:
                    self._remove_labels(msg, msg.labels - set(labels))
                    self._add_labels(msg, labels)
                self._changed(msg)
            if not silent:
                item = (
                    f"FLAGS ({' '.join(sorted(self._flags_shown(folder, msg)))})"
                    if what == "FLAGS"
                    else self._fetch_item(c, folder, msg, message_uid, "X-GM-LABELS").decode()
                )
                extra = f"UID {message_uid} " if uid else ""
                extra += f"MODSEQ ({msg.modseq}) " if session.condstore else ""
                session.send(f"* {number} FETCH ({extra}{item})\r\n")
            if self.auto_expunge and msg.msgid in folder.deleted and msg.msgid in self.messages:
                self._expunge_from(folder, msg)  # [SETTINGS] autoExpunge, Gmail's default
        code = f"[MODIFIED {_compact(modified)}] " if modified else ""
        c.send(f"{c.tag} OK {code}STORE (Success)\r\n")

    def _cmd_uid_store(self, c, args):
        self._cmd_store(c, args, uid=True)

    def _store_flags(self, folder: GmailFolder, msg: GmailMessage, mode: str, flags) -> None:
        before = (set(msg.flags), msg.msgid in folder.deleted)
        wanted = {f for f in flags if f != DELETED}
        if mode == "+":
            msg.flags |= wanted
        elif mode == "-":
            msg.flags -= wanted
        else:
            msg.flags = wanted
        if DELETED in flags and mode != "-":
            folder.deleted.add(msg.msgid)
        elif mode == "-" and DELETED in flags or mode == "" and DELETED not in flags:
            folder.deleted.discard(msg.msgid)
        if (set(msg.flags), msg.msgid in folder.deleted) != before:
            self._changed(msg)

    def _cmd_copy(self, c, args, uid: bool = False, move: bool = False):
        session, source = c.session, c.session.selected
        name = self._from_wire(args[1], session)
        target = self._folder(name)
        if target is None or not target.selectable:
            c.send(f"{c.tag} NO [TRYCREATE] No folder {name} (Failure)\r\n")
            return
        self._notify(session, expunge=False)
        chosen = self._targets(c, str(args[0]), uid)
        pairs = []
        for _, message_uid, msg in chosen:
            self._copy_to(msg, target)
            if move and source is not target and source.kind not in ("all", "trash", "spam"):
                # MOVE (RFC 6851) takes the source folder's label away; out of All Mail
                # nothing can be taken (the message stays there), out of Trash or Spam
                # the copy has already taken it.
                self._remove_labels(msg, [STARRED if source.kind == "starred" else source.label])
                self._changed(msg)
            if msg.msgid in target.uid_of:
                pairs.append((message_uid, target.uid_of[msg.msgid]))
        code = ""
        if pairs:
            code = (
                f"[COPYUID {target.uidvalidity} {_compact([p[0] for p in pairs], sort=False)} "
                f"{_compact([p[1] for p in pairs], sort=False)}] "
            )
        if move:
            c.send(f"* OK {code}(Success)\r\n")
            self._notify(session, expunge=True)
            c.send(f"{c.tag} OK Success\r\n")
        else:
            c.send(f"{c.tag} OK {code}(Success)\r\n")

    def _cmd_uid_copy(self, c, args):
        self._cmd_copy(c, args, uid=True)

    def _cmd_move(self, c, args):
        self._cmd_copy(c, args, move=True)

    def _cmd_uid_move(self, c, args):
        self._cmd_copy(c, args, uid=True, move=True)

    def _expunge(self, c, only: set[int] | None) -> None:
        folder = c.session.selected
        for msgid in list(folder.deleted):
            if only is None or folder.uid_of.get(msgid) in only:
                self._expunge_from(folder, self.messages[msgid])

    def _cmd_expunge(self, c, args):
        if c.session.readonly:
            c.send(f"{c.tag} NO EXPUNGE attempt on READ-ONLY folder (Failure)\r\n")
            return
        self._expunge(c, None)
        self._notify(c.session, expunge=True)
        c.send(f"{c.tag} OK Success\r\n")

    def _cmd_uid_expunge(self, c, args):
        if c.session.readonly:
            c.send(f"{c.tag} NO EXPUNGE attempt on READ-ONLY folder (Failure)\r\n")
            return
        self._expunge(c, parse_set(str(args[0]), list(c.session.selected.members)))
        self._notify(c.session, expunge=True)
        c.send(f"{c.tag} OK Success\r\n")

    def _cmd_close(self, c, args):
        if not c.session.readonly:
            self._expunge(c, None)
        c.session.selected, c.session.view = None, []
        c.send(f"{c.tag} OK Returned to authenticated state. (Success)\r\n")

    def _cmd_unselect(self, c, args):
        c.session.selected, c.session.view = None, []
        c.send(f"{c.tag} OK Returned to authenticated state. (Success)\r\n")


_SETS_SEEN = ("RFC822", "RFC822.TEXT")
# Commands that wait for the client (a SASL answer, DONE): they take the lock themselves.
_UNLOCKED = {"IDLE", "AUTHENTICATE"}
_BEFORE_LOGIN = {"CAPABILITY", "NOOP", "LOGOUT", "ID", "LOGIN", "AUTHENTICATE", "COMPRESS"}
_NEEDS_SELECTED = {
    "FETCH", "UID FETCH", "SEARCH", "UID SEARCH", "STORE", "UID STORE", "COPY", "UID COPY",
    "MOVE", "UID MOVE", "EXPUNGE", "UID EXPUNGE", "CLOSE", "UNSELECT",
}  # fmt: skip


@dataclass
class _Context:
    session: _Session
    tag: str
    rest: str  # the command's arguments as sent (literals replaced)
    action: object = None  # what the fault hook asked for

    def send(self, data) -> None:
        self.session.send(data)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _hang_up(session: _Session, bye: str) -> None:
    """Send the BYE and close the connection (its thread then ends)."""
    try:
        session.send(bye + "\r\n")
        session.conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def sasl_bearer(decoded: str, mechanism: str) -> tuple[str | None, str | None]:
    """(user, token) of an XOAUTH2 ("user=U^Aauth=Bearer T^A^A" [XOAUTH2]) or
    OAUTHBEARER ("n,a=U,^Ahost=...^Aauth=Bearer T^A^A", RFC 7628) initial response."""
    fields = decoded.split("\x01")
    user = token = None
    if mechanism == "OAUTHBEARER":
        gs2 = fields[0].split(",")
        if len(gs2) >= 2 and gs2[1].startswith("a="):
            user = gs2[1][2:].replace("=2C", ",").replace("=3D", "=")
    for item in fields:
        if mechanism == "XOAUTH2" and item.startswith("user="):
            user = item[5:]
        elif item.startswith("auth=Bearer "):
            token = item[len("auth=Bearer ") :]
    return user, token


def _matches(pattern: str, name: str) -> bool:
    """LIST wildcards: * anything, % anything but the delimiter; INBOX in any case."""
    regex = "".join(
        ".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch) for ch in pattern
    )
    if name == "INBOX":
        return re.fullmatch(regex, name, re.IGNORECASE) is not None
    return re.fullmatch(regex, name) is not None


def _compact(numbers, sort: bool = True) -> str:
    """[1, 2, 3, 7] -> "1:3,7" (kept in order when ``sort`` is false, as COPYUID needs)."""
    numbers = sorted(numbers) if sort else list(numbers)
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in runs)


def _fetch_items(text: str) -> tuple[list[str] | None, str]:
    """'(UID BODY.PEEK[HEADER.FIELDS (A B)]) (CHANGEDSINCE 5)' -> (items, modifiers)."""
    text = text.strip()
    macros = {
        "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    }
    if not text.startswith("("):
        item, _, modifiers = text.partition(" ")
        if item.upper() in macros:
            return list(macros[item.upper()]), modifiers
        return ([item] if _FETCH_ITEM.fullmatch(item) else None), modifiers
    end = _closing(text)
    inner, modifiers = text[1:end], text[end + 1 :].strip()
    items, position = [], 0
    while position < len(inner):
        if inner[position] == " ":
            position += 1
            continue
        match = _FETCH_ITEM.match(inner, position)
        if not match:
            return None, modifiers
        items.append(match.group(1))
        position = match.end()
    return items, modifiers


def _closing(text: str) -> int:
    """Where the parenthesis that opens ``text`` closes (brackets nest inside it)."""
    depth = 0
    for position, ch in enumerate(text):
        depth += 1 if ch in "([" else -1 if ch in ")]" else 0
        if depth == 0:
            return position
    return len(text)


def _section(body: bytes, section: str) -> bytes:
    """A BODY[] section of a message: "", HEADER, TEXT, HEADER.FIELDS (..), .NOT, or
    part 1 of a message that is not multipart (its text)."""
    end = body.find(b"\r\n\r\n")
    header, text = (body[: end + 4], body[end + 4 :]) if end >= 0 else (body, b"")
    section = section.strip().upper()
    if section == "":
        return body
    if section in ("HEADER", "MIME"):
        return header
    if section in ("TEXT", "1", "1.TEXT"):
        return text
    match = re.match(r"HEADER\.FIELDS(\.NOT)?\s*\((.*)\)", section)
    if match:
        wanted = {f.strip('"').lower() for f in match.group(2).split()}
        lines = re.split(rb"\r\n(?![ \t])", header.rstrip(b"\r\n"))
        kept = [
            line
            for line in lines
            if line
            and (line.split(b":", 1)[0].decode("latin-1").lower() in wanted) != bool(match.group(1))
        ]
        return b"".join(line + b"\r\n" for line in kept) + b"\r\n"
    return b""


class _Search:
    """RFC 3501 SEARCH keys, MODSEQ (RFC 7162), X-GM-MSGID, X-GM-THRID, X-GM-LABELS and a
    minimal X-GM-RAW [EXT] over the messages a session knows in the selected folder."""

    def __init__(self, server: FakeGmail, folder: GmailFolder, args, known, count: int):
        self.server, self.folder = server, folder
        self.count = count  # messages the session knows: its sequence numbers
        self.uids = [u for _, u, _ in known]
        self.keys = list(args)

    def matches(self, msg: GmailMessage, number: int, uid: int) -> bool:
        keys = list(self.keys)
        result = True
        while keys:
            result = self._one(keys, msg, number, uid) and result
        return result

    def _one(self, keys: list, msg: GmailMessage, number: int, uid: int) -> bool:
        key = keys.pop(0)
        if isinstance(key, list):
            sub = list(key)
            result = True
            while sub:
                result = self._one(sub, msg, number, uid) and result
            return result
        word = str(key).upper()
        flags = self.server._flags_shown(self.folder, msg)
        simple = {
            "ALL": True,
            "SEEN": SEEN in flags,
            "UNSEEN": SEEN not in flags,
            "FLAGGED": FLAGGED in flags,
            "UNFLAGGED": FLAGGED not in flags,
            "DELETED": DELETED in flags,
            "UNDELETED": DELETED not in flags,
            "ANSWERED": "\\Answered" in flags,
            "UNANSWERED": "\\Answered" not in flags,
            "DRAFT": "\\Draft" in flags,
            "UNDRAFT": "\\Draft" not in flags,
            "RECENT": False,
            "NEW": False,
            "OLD": True,
        }
        if word in simple:
            return simple[word]
        if word == "NOT":
            return not self._one(keys, msg, number, uid)
        if word == "OR":
            first = self._one(keys, msg, number, uid)
            return self._one(keys, msg, number, uid) or first
        if word == "UID":
            return uid in parse_set(str(keys.pop(0)), self.uids)
        if re.fullmatch(r"[\d:*,]+", word):
            return number in parse_set(word, list(range(1, self.count + 1)))
        text = _text(keys.pop(0))
        if word == "KEYWORD":
            return text in flags
        if word == "UNKEYWORD":
            return text not in flags
        if word == "MODSEQ":
            return msg.modseq >= int(text)
        if word == "X-GM-MSGID":
            return msg.msgid == int(text)
        if word == "X-GM-THRID":
            return msg.thrid == int(text)
        if word == "X-GM-LABELS":
            label = self.server._label(imap_utf7.decode(text.encode()), create=False)
            return label in self.server._shown_labels(msg, None)
        if word == "X-GM-RAW":
            return self._raw(text, msg)
        if word in ("LARGER", "SMALLER"):
            size = len(msg.body)
            return size > int(text) if word == "LARGER" else size < int(text)
        if word in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"):
            day = datetime.strptime(text, "%d-%b-%Y").date()
            have = msg.date.date()
            return {"BEFORE": have < day, "ON": have == day, "SINCE": have >= day}[
                word.removeprefix("SENT")
            ]
        if word == "HEADER":  # HEADER field-name string
            return _text(keys.pop(0)).lower() in msg.header(text).lower()
        if word in ("SUBJECT", "FROM", "TO", "CC", "BCC"):
            return text.lower() in msg.header(word.title()).lower()
        if word in ("BODY", "TEXT"):
            return text.lower().encode() in msg.body.lower()
        raise ValueError(word)

    def _raw(self, query: str, msg: GmailMessage) -> bool:
        """Gmail's search syntax, the little of it a test needs: in:inbox|sent|drafts|
        trash|spam|starred|important|anywhere, label:NAME, is:read|unread|starred|
        important, rfc822msgid:ID, and words (searched in the message)."""
        labels = self.server._shown_labels(msg, None)
        places = {"inbox": INBOX, "sent": SENT, "drafts": DRAFT, "trash": TRASH, "spam": SPAM,
                  "starred": STARRED, "important": IMPORTANT}  # fmt: skip
        for term in query.split():
            kind, _, value = term.partition(":")
            kind, value = kind.lower(), value.lower()
            if kind == "in" and value == "anywhere":
                continue
            if kind == "in" and value in places:
                ok = places[value] in labels
            elif kind == "label":
                ok = any(x.lower().replace(" ", "-") == value for x in labels)
            elif kind == "is":
                ok = {"read": SEEN in msg.flags, "unread": SEEN not in msg.flags,
                      "starred": FLAGGED in msg.flags, "important": IMPORTANT in labels}.get(
                    value, False)  # fmt: skip
            elif kind == "rfc822msgid":
                ok = msg.header("Message-ID").strip("<> ").lower() == value.strip("<>")
            else:
                ok = term.lower().encode() in msg.body.lower()
            if not ok:
                return False
        # Like the web interface, a search leaves out Trash and Spam unless asked for.
        wanted = {term.lower() for term in query.split()}
        return not labels & {TRASH, SPAM} or bool(wanted & {"in:trash", "in:spam", "in:anywhere"})

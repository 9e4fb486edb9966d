"""A stateful fake Exchange Web Services server on 127.0.0.1, for tests driven by the real
exchangelib client.  No Exchange server can be installed here, so this one speaks the wire
protocol as exchangelib 5.6 sends and parses it, and refuses what Exchange 2016 would refuse.

Wire protocol
-------------
* SOAP 1.1 over HTTP/1.1 (keep-alive) at ``/EWS/Exchange.asmx``; HTTPS when ``ssl_context`` is
  given.  Requests must be ``text/xml`` (else HTTP 415).  Every response envelope carries
  ``<t:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507"
  MinorBuildNumber="6" Version="V2017_07_11"/>`` in its header (SOAP faults carry no
  header).  Namespaces: ``m`` = .../2006/messages, ``t`` = .../2006/types, faults carry
  ``e:ResponseCode``/``e:Message`` (.../2006/errors) and ``t:MessageXml`` in an unqualified
  ``detail``.  Faults are sent with HTTP 500, like Exchange does.
* HTTP Basic auth.  A request without valid credentials gets HTTP 401 with
  ``WWW-Authenticate: Basic realm="..."`` (exchangelib's auth-type guessing POSTs an
  unauthenticated ``ConvertId`` and reads that header).  The user name compares
  case-insensitively, the password exactly.  ``ExchangeImpersonation`` headers are refused
  (ErrorImpersonateUserDenied).
* ``RequestServerVersion`` must be an ExchangeVersionType value up to ``V2017_07_11``; newer
  values get ErrorInvalidServerVersion, unknown ones ErrorSchemaValidation.
* Requests are checked against the parts of messages.xsd/types.xsd that matter here: element
  order and cardinality, enumerations (BaseShape, Traversal, DeleteType, ConflictResolution,
  MessageDisposition, DistinguishedFolderIdNameType, ...), FieldURI values (the full folder:,
  item: and message: enumerations; other prefixes by syntax), ExtendedFieldURI combinations,
  xs:boolean/xs:int/base64 values, MaxChangesReturned in 1..512.  A violation is a SOAP fault
  ErrorSchemaValidation (with LineNumber/LinePosition/Violation), which exchangelib raises.
  Unparseable XML and DTDs are refused the same way.
* Operations: ConvertId (the version probe), GetFolder, FindFolder, SyncFolderHierarchy,
  CreateFolder, UpdateFolder (DisplayName), DeleteFolder, GetItem, FindItem, SyncFolderItems,
  CreateItem, UpdateItem, DeleteItem, MoveItem, CopyItem.  Other EWS operations get a fault
  ErrorInvalidOperation; names that are not EWS operations get ErrorSchemaValidation.

Mailbox model
-------------
* Folders: root (display name "", no class) holding "Top of Information Store"
  (msgfolderroot, no class), "Common Views" and "Finder" (searchfolders), and the hidden
  "Recoverable Items" subtree (recoverableitemsroot/-deletions/-purges/-versions; reachable
  by distinguished id only, as on Exchange).  Under msgfolderroot: Inbox, Sent Items, Deleted
  Items, Drafts, Junk Email, Outbox (IPF.Note), Calendar (IPF.Appointment, returned as
  ``t:CalendarFolder``), Contacts (IPF.Contact, ``t:ContactsFolder``), Tasks (IPF.Task,
  ``t:TasksFolder``).  Other valid distinguished ids answer ErrorFolderNotFound.  Sibling names
  are unique case-insensitively (ErrorFolderExists).  Folder change keys change on every folder
  property change (rename); item changes do not touch the folder's change key.
* Ids and change keys are opaque base64 strings (with ``+``, ``/`` and ``=``).  A string that
  is not one of this server's ids is ErrorInvalidIdMalformed; a well-formed id of an item
  that no longer exists is ErrorItemNotFound (ErrorFolderNotFound for folders).  Every
  modification gives a new change key; a move (and a soft delete) gives a new ItemId, as
  Exchange does.  A malformed ChangeKey is ErrorInvalidChangeKey.
* Items are messages: the MIME is stored as given and returned byte-exact (base64,
  ``CharacterSet="UTF-8"``); Subject, From, To, Cc, Date, Message-ID, In-Reply-To,
  References are parsed from it.  Size is ``len(mime)``.  (Real Exchange regenerates MIME
  from its properties; set ``mime_filter`` to a callable to simulate that on GetItem.)
* IsDraft: items created through CreateItem are not drafts, unless PR_MESSAGE_FLAGS
  (ExtendedFieldURI PropertyTag 0x0E07, Integer) is given with MSGFLAG_UNSENT (8) set, or
  ``drafts_by_default=True`` and no PR_MESSAGE_FLAGS is given (that is what Exchange does:
  a client importing mail must send PR_MESSAGE_FLAGS, e.g. 1 = read and not a draft).  Its
  MSGFLAG_READ bit sets IsRead unless IsRead is also given.  0x0E07 is read-only after
  creation (ErrorInvalidPropertySet); reading it gives the computed flags.
* Flags: ``item:Flag`` (FlagType, FlagStatus NotFlagged/Flagged/Complete) and PR_FLAG_STATUS
  (0x1090 Integer; absent = not flagged, 1 = complete, 2 = flagged -- exchangelib's
  ``extended_properties.Flag``) are two views of one state.  PR_LAST_VERB_EXECUTED (0x1081
  Integer: 102 reply, 103 reply all, 104 forward) is stored per item.  PR_MESSAGE_SIZE
  (0x0E08) is read-only.  Any other extended property (by tag, or by property set + name/id)
  is stored as sent and returned when requested.  Returned ``ExtendedFieldURI`` elements
  echo the request's attributes with PropertyTag as lower-case hex without padding
  (``0xe07``), which is the form exchangelib compares against.
* UpdateItem supports Set/DeleteItemField for message:IsRead, item:Categories, item:Flag,
  item:Importance, item:Sensitivity, item:Culture, the reminder and receipt-request booleans
  and extended properties; other properties (Subject, Body, MimeContent, recipients, ...)
  are refused with ErrorInvalidPropertySet (the fake does not re-render MIME).  A change
  element must hold exactly one property (ErrorIncorrectUpdatePropertyCount) matching the
  path (ErrorUpdatePropertyMismatch).  ConflictResolution NeverOverwrite needs a ChangeKey
  (ErrorChangeKeyRequiredForWriteOperations) that is current (ErrorIrresolvableConflict);
  AutoResolve and AlwaysOverwrite accept stale keys.  Each ItemChange applies atomically.
* DeleteItem: HardDelete removes; SoftDelete moves to recoverableitemsdeletions;
  MoveToDeletedItems moves to deleteditems (soft-deletes if already there).  Change keys in
  GetItem/DeleteItem/MoveItem/CopyItem requests are not checked (as on Exchange).
* CreateItem: Message (or Item) elements, MessageDisposition required; SaveOnly saves into
  SavedItemFolderId (default drafts); SendOnly/SendAndSaveCopy append the MIME to
  ``sent`` (SendAndSaveCopy also saves a read, non-draft copy into SavedItemFolderId or
  sentitems) and return no ItemId.  A message without MimeContent gets a minimal MIME built
  from Subject and Body; recipient and other MIME-derived properties sent alongside
  MimeContent are ignored (the MIME is the source of truth).  Read-only properties in a new
  item are ErrorInvalidPropertySet.
* A request is checked completely before anything in it is executed, so a schema fault never
  follows a partial change.  A bug in the fake answers a fault ErrorInternalServerError with
  the traceback (``details["exception"]`` in ``requests``).

Shapes
------
BaseShape IdOnly/Default/AllProperties, IncludeMimeContent and AdditionalProperties
(FieldURI, ExtendedFieldURI; IndexedFieldURI accepted and ignored) are honoured; properties
the fake does not model are silently absent, like unset properties on Exchange.  MimeContent
is only ever returned by GetItem.  SyncFolderItems silently drops MimeContent, Body,
UniqueBody, NormalizedBody, TextBody, Attachments and InternetMessageHeaders (exchangelib's
default ``sync_items()`` asks for all of them); FindItem refuses MimeContent, Body,
UniqueBody, NormalizedBody, TextBody and Attachments with ErrorInvalidPropertyRequest, and so
does FindFolder for folder:PermissionSet.

Synchronisation
---------------
Every folder has a change log (create/move-in, update, read-flag change, delete/move-out),
the hierarchy has one too (create, rename, delete).  A SyncState is an opaque, signed
(HMAC with a per-server secret), gzipped and base64-encoded (folder id, sequence number,
epoch); a state from another server, folder or operation, a tampered one, or one from before
``invalidate_sync_states()`` is ErrorInvalidSyncStateData (the response message still carries
``m:SyncState`` and ``m:IncludesLast...InRange``, which exchangelib reads first).  A page
covers the log up to a sequence number and reports each touched item's net change over that
window: Create (item properties as they are now), Update, ReadFlagChange (only the read flag
changed; IsRead as of the window's end) or Delete (ItemId without ChangeKey); an item created
and deleted within the window is not reported.  A page holds at most
``min(MaxChangesReturned, page_size_limit)`` changes (SyncFolderHierarchy: page_size_limit)
and its SyncState covers exactly what it reports, so paging is exact.  The Ignore list is
honoured.  Hierarchy sync is scoped to the descendants of SyncFolderId (root if absent) and
never shows the hidden Recoverable Items subtree.

FindFolder/FindItem
-------------------
Shallow and Deep traversal (SoftDeleted: empty), IndexedPage*View paging with
IndexedPagingOffset/TotalItemsInView/IncludesLastItemInRange; Restriction with And/Or/Not,
Exists, IsEqualTo/IsNotEqualTo/IsGreaterThan[OrEqualTo]/IsLessThan[OrEqualTo] and Contains on
string, boolean, integer and date properties; FindItem SortOrder on such properties (default:
DateTimeReceived descending).  QueryString, grouping and calendar/contacts views get
ErrorUnsupportedQueryFilter.  Find page sizes are capped at page_size_limit.

Test API (beyond the constructor documented in ``FakeEWS``)
---------------------------------------------------------
``folder_id(path)`` -- paths start with a distinguished id (``inbox``, ``msgfolderroot``,
``root``, ...) followed by display names, case-insensitively: ``"inbox/Sub"``.
``add_folder``, ``rename_folder``, ``delete_folder(path)`` (addition; removes the subtree),
``add_item(folder_path, mime, *, is_read, flagged, categories, received, is_draft=False,
last_verb=None)`` (is_draft/last_verb are additions), ``update_item(item_id, *, is_read,
flagged (bool) or flag ("NotFlagged"/"Flagged"/"Complete"), categories, last_verb, mime)``
(``mime``, an addition: the item's owner changed it, as an organizer moving a meeting or an
edited contact; the MIME Exchange would now render, a new ChangeKey, an Update in the log),
``delete_item(item_id, hard=False)`` (soft: into deleteditems; returns the new id or None),
``move_item(item_id, folder_path) -> new id`` (addition), ``item(item_id) -> dict``
(addition), ``items(folder_path) -> [dict]`` (id, change_key, folder_id, mime, subject,
is_read, flag, categories, received, is_draft, last_verb, extended), ``invalidate_sync_states()``,
``busy(n, back_off_ms, http)`` (the next n authenticated, well-formed requests: a SOAP fault
ErrorServerBusy with ``BackOffMilliseconds``, or with ``http`` set that HTTP status with
``Retry-After: ceil(back_off_ms/1000)`` seconds), ``fail_item(item_id, code)`` (GetItem of
that item answers ``code``; ErrorMimeContentConversionFailed only when MimeContent is asked
for; ``code=None`` clears), ``requests`` (a list of ``(operation, details)``: every request
that reached the server, with ``details["codes"]`` the ResponseCodes or fault code sent and
operation-specific keys, see the handlers), ``sent`` (MIME of sent messages), ``url``,
``port``, ``user``, ``password``.  ``page_size_limit``, ``drafts_by_default`` and
``mime_filter`` may be changed while the server runs.
"""

from __future__ import annotations

import base64
import binascii
import copy
import email.parser
import email.policy
import gzip
import hashlib
import hmac
import json
import math
import re
import secrets
import socket
import ssl
import threading
import traceback
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from lxml import etree
from servers.httpfake import HOST, ThreadedHTTPFake

SOAPNS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12NS = "http://www.w3.org/2003/05/soap-envelope"
MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TNS = "http://schemas.microsoft.com/exchange/services/2006/types"
ENS = "http://schemas.microsoft.com/exchange/services/2006/errors"
XML_NS = "http://www.w3.org/XML/1998/namespace"
NSMAP = {"s": SOAPNS, "m": MNS, "t": TNS}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


SERVER_VERSION = {
    "MajorVersion": "15",
    "MinorVersion": "1",
    "MajorBuildNumber": "2507",
    "MinorBuildNumber": "6",
    "Version": "V2017_07_11",
}
# ExchangeVersionType values this server (Exchange 2016, V2017_07_11) accepts, and newer ones.
ACCEPTED_VERSIONS = frozenset(
    _words(
        "Exchange2007 Exchange2007_SP1 Exchange2009 Exchange2010 Exchange2010_SP1 "
        "Exchange2010_SP2 Exchange2012 Exchange2013 Exchange2013_SP1 Exchange2015 Exchange2016 "
        "V2015_10_05 V2016_01_06 V2016_04_13 V2016_07_13 V2016_10_10 V2017_01_07 V2017_04_14 "
        "V2017_07_11"
    )
)
NEWER_VERSIONS = frozenset({"V2017_10_09", "V2018_01_08"})

# DistinguishedFolderIdNameType as of Exchange 2016.
DISTINGUISHED_NAMES = frozenset(
    _words(
        "calendar contacts deleteditems drafts inbox journal notes outbox sentitems tasks "
        "msgfolderroot publicfoldersroot root junkemail searchfolders voicemail "
        "recoverableitemsroot recoverableitemsdeletions recoverableitemsversions "
        "recoverableitemspurges archiveroot archivemsgfolderroot archivedeleteditems "
        "archiveinbox archiverecoverableitemsroot archiverecoverableitemsdeletions "
        "archiverecoverableitemsversions archiverecoverableitemspurges syncissues conflicts "
        "localfailures serverfailures recipientcache quickcontacts conversationhistory "
        "adminauditlogs todosearch mycontacts directory imcontactlist peopleconnect favorites"
    )
)

# UnindexedFieldURIType: the folder:, item: and message: values are checked exactly.
FOLDER_URIS = frozenset(
    "folder:" + name
    for name in _words(
        "FolderId ParentFolderId DisplayName UnreadCount TotalCount ChildFolderCount "
        "FolderClass SearchParameters ManagedFolderInformation PermissionSet EffectiveRights "
        "SharingEffectiveRights DistinguishedFolderId PolicyTag ArchiveTag"
    )
)
ITEM_URIS = frozenset(
    "item:" + name
    for name in _words(
        "ItemId ParentFolderId ItemClass MimeContent Attachments Subject DateTimeReceived Size "
        "Categories HasAttachments Importance InReplyTo InternetMessageHeaders IsAssociated "
        "IsDraft IsFromMe IsResend IsSubmitted IsUnmodified DateTimeSent DateTimeCreated Body "
        "ResponseObjects Sensitivity ReminderDueBy ReminderIsSet ReminderNextTime "
        "ReminderMinutesBeforeStart DisplayTo DisplayCc Culture EffectiveRights "
        "LastModifiedName LastModifiedTime ConversationId UniqueBody Flag StoreEntryId "
        "InstanceKey NormalizedBody EntityExtractionResult PolicyTag ArchiveTag RetentionDate "
        "Preview NextPredictedAction GroupingAction PredictedActionReasons IsClutter "
        "RightsManagementLicenseData BlockStatus HasBlockedImages WebClientReadFormQueryString "
        "WebClientEditFormQueryString TextBody IconIndex"
    )
)
MESSAGE_URIS = frozenset(
    "message:" + name
    for name in _words(
        "ConversationIndex ConversationTopic InternetMessageId IsRead IsResponseRequested "
        "IsReadReceiptRequested IsDeliveryReceiptRequested ReceivedBy ReceivedRepresenting "
        "References ReplyTo From Sender ToRecipients CcRecipients BccRecipients "
        "ApprovalRequestData VotingInformation ReminderMessageData"
    )
)
OTHER_URI_PREFIXES = frozenset(
    _words(
        "meeting meetingRequest calendar task contacts distributionlist postitem conversation "
        "persona"
    )
)
_URI_RE = re.compile(r"^([A-Za-z]+):([A-Za-z0-9]+)$")
PROPERTY_TYPES = frozenset(
    _words(
        "ApplicationTime ApplicationTimeArray Binary BinaryArray Boolean CLSID CLSIDArray "
        "Currency CurrencyArray Double DoubleArray Error Float FloatArray Integer IntegerArray "
        "Long LongArray Null Object ObjectArray Short ShortArray SystemTime SystemTimeArray "
        "String StringArray"
    )
)
DISTINGUISHED_PROPERTY_SETS = {
    "Meeting": "6ed8da90-450b-101b-98da-00aa003f1305",
    "Appointment": "00062002-0000-0000-c000-000000000046",
    "Common": "00062008-0000-0000-c000-000000000046",
    "PublicStrings": "00020329-0000-0000-c000-000000000046",
    "Address": "00062004-0000-0000-c000-000000000046",
    "InternetHeaders": "00020386-0000-0000-c000-000000000046",
    "CalendarAssistant": "11000e07-b51b-40d6-af21-caa85edab1d0",
    "UnifiedMessaging": "4442858e-a9e3-4e80-b900-317a210cc15b",
    "Task": "00062003-0000-0000-c000-000000000046",
    "Sharing": "00062040-0000-0000-c000-000000000046",
}

# Operation names of EWS (messages.xsd); the ones not in FakeEWS._ops get ErrorInvalidOperation.
EWS_OPERATIONS = frozenset(
    _words(
        "AddDelegate ApplyConversationAction ArchiveItem ConvertId CopyFolder CopyItem "
        "CreateAttachment CreateFolder CreateFolderPath CreateItem CreateManagedFolder "
        "CreateUserConfiguration DeleteAttachment DeleteFolder DeleteItem "
        "DeleteUserConfiguration EmptyFolder ExpandDL ExportItems FindConversation FindFolder "
        "FindItem FindPeople GetAttachment GetDelegate GetEvents GetFolder GetInboxRules GetItem "
        "GetMailTips GetPasswordExpirationDate GetPersona GetRoomLists GetRooms "
        "GetSearchableMailboxes GetServerTimeZones GetServiceConfiguration GetSharingFolder "
        "GetSharingMetadata GetStreamingEvents GetUserAvailabilityRequest GetUserConfiguration "
        "GetUserOofSettingsRequest GetUserPhoto MarkAllItemsAsRead MarkAsJunk MoveFolder "
        "MoveItem RefreshSharingFolder RemoveDelegate ResolveNames SendItem SendNotification "
        "SetUserOofSettingsRequest Subscribe SyncFolderHierarchy SyncFolderItems Unsubscribe "
        "UpdateDelegate UpdateFolder UpdateInboxRules UpdateItem UpdateUserConfiguration "
        "UploadItems"
    )
)

ERROR_TEXT = {
    "ErrorItemNotFound": "The specified object was not found in the store., The process "
    "failed to get the correct properties.",
    "ErrorFolderNotFound": "The specified folder could not be found in the store.",
    "ErrorInvalidIdMalformed": "Id is malformed.",
    "ErrorInvalidChangeKey": "The change key is invalid.",
    "ErrorInvalidSyncStateData": "Synchronization state data is corrupt or otherwise invalid.",
    "ErrorIrresolvableConflict": "The send or update operation could not be performed because "
    "the change key passed in the request does not match the current change key for the item.",
    "ErrorChangeKeyRequiredForWriteOperations": "A change key is required for this operation.",
    "ErrorMimeContentConversionFailed": "Content conversion failed.",
    "ErrorNonExistentMailbox": "No mailbox with such guid.",
    "ErrorFolderExists": "A folder with the specified name already exists.",
    "ErrorMessageDispositionRequired": "MessageDisposition attribute is required.",
    "ErrorIncorrectUpdatePropertyCount": "An object within a change description must contain "
    "one and only one property to modify.",
    "ErrorUpdatePropertyMismatch": "The property in the change description does not match "
    "the property being changed.",
    "ErrorDeleteDistinguishedFolder": "Distinguished folders cannot be deleted.",
    "ErrorServerBusy": "The server cannot service this request right now. Try again later.",
    "ErrorSchemaValidation": "The request failed schema validation.",
    "ErrorInvalidServerVersion": "The specified server version is invalid.",
    "ErrorImpersonateUserDenied": "The account does not have permission to impersonate the "
    "requested user.",
}

MSGFLAG_READ = 0x1
MSGFLAG_UNSENT = 0x8
TAG_MESSAGE_FLAGS = 0x0E07
TAG_MESSAGE_SIZE = 0x0E08
TAG_LAST_VERB = 0x1081
TAG_FLAG_STATUS = 0x1090
TAG_DELIVERY_TIME = 0x0E06  # PR_MESSAGE_DELIVERY_TIME: DateTimeReceived, settable at creation
FLAG_STATUSES = ("NotFlagged", "Flagged", "Complete")

# The ItemType sequence, then MessageType's additions (types.xsd).
ITEM_SEQUENCE = _words(
    "MimeContent ItemId ParentFolderId ItemClass Subject Sensitivity Body Attachments "
    "DateTimeReceived Size Categories Importance InReplyTo IsSubmitted IsDraft IsFromMe "
    "IsResend IsUnmodified InternetMessageHeaders DateTimeSent DateTimeCreated ResponseObjects "
    "ReminderDueBy ReminderIsSet ReminderNextTime ReminderMinutesBeforeStart DisplayCc "
    "DisplayTo HasAttachments ExtendedProperty Culture EffectiveRights LastModifiedName "
    "LastModifiedTime IsAssociated WebClientReadFormQueryString WebClientEditFormQueryString "
    "ConversationId UniqueBody Flag StoreEntryId InstanceKey NormalizedBody "
    "EntityExtractionResult PolicyTag ArchiveTag RetentionDate Preview "
    "RightsManagementLicenseData PredictedActionReasons IsClutter BlockStatus HasBlockedImages "
    "TextBody IconIndex SearchKey SortKey Hashtags Mentions MentionedMe MentionsPreview "
    "MentionsEx AppliedHashtags AppliedHashtagsPreview Likes LikesPreview "
    "PendingSocialActivityTagIds AtAllMention CanDelete InferenceClassification"
)
#: Item classes served as their own EWS types (IPM.Note and the rest are Messages).
ITEM_KINDS = {"IPM.Appointment": "CalendarItem", "IPM.Contact": "Contact"}
#: A folder class -> the item class add_item() gives the items put into it.
FOLDER_ITEM_CLASS = {"IPF.Appointment": "IPM.Appointment", "IPF.Contact": "IPM.Contact"}

MESSAGE_SEQUENCE = ITEM_SEQUENCE + _words(
    "Sender ToRecipients CcRecipients BccRecipients IsReadReceiptRequested "
    "IsDeliveryReceiptRequested ConversationIndex ConversationTopic From InternetMessageId "
    "IsRead IsResponseRequested References ReplyTo ReceivedBy ReceivedRepresenting "
    "ApprovalRequestData VotingInformation ReminderMessageData MessageSafety SenderSMTPAddress "
    "MailboxGuids"
)
_MESSAGE_POS = {name: i for i, name in enumerate(MESSAGE_SEQUENCE)}
# Properties a client may give a new message (the rest are read-only).
CREATE_SETTABLE = frozenset(
    _words(
        "MimeContent ItemClass Subject Sensitivity Body Categories Importance InReplyTo "
        "ReminderDueBy ReminderIsSet ReminderMinutesBeforeStart ExtendedProperty Culture Flag "
        "ToRecipients CcRecipients BccRecipients IsReadReceiptRequested "
        "IsDeliveryReceiptRequested From InternetMessageId IsRead IsResponseRequested "
        "References ReplyTo"
    )
)
# Properties the fake returns (in ITEM_SEQUENCE/MESSAGE_SEQUENCE order).
EMITTED = frozenset(
    _words(
        "MimeContent ItemId ParentFolderId ItemClass Subject Sensitivity Body DateTimeReceived "
        "Size Categories Importance InReplyTo IsSubmitted IsDraft IsFromMe IsResend "
        "IsUnmodified InternetMessageHeaders DateTimeSent DateTimeCreated ReminderIsSet "
        "ReminderMinutesBeforeStart DisplayCc DisplayTo HasAttachments ExtendedProperty "
        "Culture EffectiveRights LastModifiedName LastModifiedTime IsAssociated Flag Sender "
        "ToRecipients CcRecipients BccRecipients IsReadReceiptRequested "
        "IsDeliveryReceiptRequested ConversationTopic From InternetMessageId IsRead "
        "IsResponseRequested References ReplyTo ReceivedBy ReceivedRepresenting"
    )
)
DEFAULT_ITEM_PROPS = frozenset(
    _words(
        "ItemId Subject Sensitivity HasAttachments IsAssociated DateTimeSent DateTimeCreated "
        "Size ToRecipients From IsRead"
    )
)
ALL_ITEM_PROPS = EMITTED - {"MimeContent", "InternetMessageHeaders"}
NOT_IN_SYNC = frozenset(
    _words("MimeContent Body UniqueBody NormalizedBody TextBody Attachments InternetMessageHeaders")
)
NOT_IN_FIND = frozenset(_words("MimeContent Body UniqueBody NormalizedBody TextBody Attachments"))
UPDATABLE = frozenset(
    _words(
        "IsRead Categories Flag Importance Sensitivity Culture ReminderIsSet "
        "ReminderMinutesBeforeStart ReminderDueBy IsReadReceiptRequested "
        "IsDeliveryReceiptRequested IsResponseRequested"
    )
)
UNDELETABLE = frozenset(_words("IsRead Importance Sensitivity"))

FOLDER_TAGS = _words("Folder CalendarFolder ContactsFolder SearchFolder TasksFolder")
FOLDER_SEQUENCE = _words(
    "FolderId ParentFolderId FolderClass DisplayName TotalCount ChildFolderCount "
    "ExtendedProperty ManagedFolderInformation EffectiveRights DistinguishedFolderId PolicyTag "
    "ArchiveTag ReplicaList SharingEffectiveRights PermissionSet SourceId AccountName "
    "UnreadCount"
)
DEFAULT_FOLDER_PROPS = frozenset(
    _words("FolderId DisplayName TotalCount ChildFolderCount UnreadCount")
)
ALL_FOLDER_PROPS = frozenset(
    _words(
        "FolderId ParentFolderId FolderClass DisplayName TotalCount ChildFolderCount "
        "EffectiveRights DistinguishedFolderId UnreadCount"
    )
)

_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _T(name: str) -> str:
    return f"{{{TNS}}}{name}"


def _M(name: str) -> str:
    return f"{{{MNS}}}{name}"


def _S(name: str) -> str:
    return f"{{{SOAPNS}}}{name}"


def _local(elem) -> str:
    return etree.QName(elem).localname


def _xml_text(value: str) -> str:
    return _INVALID_XML_CHARS.sub("?", value)


def _el(tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    elem = etree.Element(tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = _xml_text(text)
    return elem


def _sub(parent, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    elem = _el(tag, text, **attrs)
    parent.append(elem)
    return elem


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class SchemaError(Exception):
    """The request violates the schema: a SOAP fault ErrorSchemaValidation."""

    def __init__(self, violation: str, elem=None):
        super().__init__(violation)
        self.violation = violation
        self.line = getattr(elem, "sourceline", None) or 1


class Fault(Exception):
    """A SOAP-level fault (the whole request fails)."""

    def __init__(self, code: str, text: str | None = None, *, back_off_ms: int | None = None):
        super().__init__(code)
        self.code = code
        self.text = text or ERROR_TEXT.get(code, code)
        self.back_off_ms = back_off_ms


class ResponseError(Exception):
    """An error in one response message (the others in the request are unaffected)."""

    def __init__(self, code: str, text: str | None = None):
        super().__init__(code)
        self.code = code
        self.text = text or ERROR_TEXT.get(code, code)


# --------------------------------------------------------------------------------------------
# Request parsing helpers
# --------------------------------------------------------------------------------------------


def _children(elem) -> list:
    return [c for c in elem if isinstance(c.tag, str)]


def _expect(parent, spec: list[tuple[str, int, int | None]]) -> dict[str, list]:
    """Check parent's children against an ordered sequence of (tag, min, max); max None is
    unbounded.  Return the children by tag."""
    found: dict[str, list] = {tag: [] for tag, _, _ in spec}
    pos = 0
    for child in _children(parent):
        while pos < len(spec) and spec[pos][0] != child.tag:
            pos += 1
        if pos == len(spec):
            raise SchemaError(
                f"The element '{_local(parent)}' in namespace '{etree.QName(parent).namespace}' "
                f"has invalid child element '{_local(child)}' in namespace "
                f"'{etree.QName(child).namespace}'.",
                child,
            )
        tag, _, most = spec[pos]
        found[tag].append(child)
        if most is not None and len(found[tag]) > most:
            raise SchemaError(
                f"The element '{_local(parent)}' has invalid child element '{_local(child)}'.",
                child,
            )
    for tag, least, _ in spec:
        if len(found[tag]) < least:
            raise SchemaError(
                f"The element '{_local(parent)}' has incomplete content. List of possible "
                f"elements expected: '{etree.QName(tag).localname}'.",
                parent,
            )
    return found


def _one(found: dict[str, list], tag: str):
    values = found[tag]
    return values[0] if values else None


def _attr_enum(elem, name: str, allowed: Iterable[str], *, required: bool = False) -> str | None:
    value = elem.get(name)
    if value is None:
        if required:
            raise SchemaError(f"The required attribute '{name}' is missing.", elem)
        return None
    if value not in allowed:
        raise SchemaError(
            f"The '{name}' attribute is invalid - The value '{value}' is invalid according to "
            "its datatype - The Enumeration constraint failed.",
            elem,
        )
    return value


def _text_enum(elem, allowed: Iterable[str]) -> str:
    value = (elem.text or "").strip()
    if value not in allowed:
        raise SchemaError(
            f"The '{_local(elem)}' element is invalid - The value '{value}' is invalid according "
            "to its datatype - The Enumeration constraint failed.",
            elem,
        )
    return value


def _parse_bool(text: str | None, elem) -> bool:
    value = (text or "").strip()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise SchemaError(
        f"The '{_local(elem)}' element is invalid - The value '{value}' is invalid according to "
        "its datatype 'http://www.w3.org/2001/XMLSchema:boolean'.",
        elem,
    )


def _parse_int(text: str | None, elem, *, lo: int | None = None, hi: int | None = None) -> int:
    value = (text or "").strip()
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or (lo is not None and number < lo) or (hi is not None and number > hi):
        raise SchemaError(
            f"The '{_local(elem)}' element is invalid - The value '{value}' is invalid according "
            "to its datatype.",
            elem,
        )
    return number


def _parse_datetime(text: str | None, elem) -> datetime:
    value = (text or "").strip()
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SchemaError(
            f"The '{_local(elem)}' element is invalid - The value '{value}' is invalid according "
            "to its datatype 'http://www.w3.org/2001/XMLSchema:dateTime'.",
            elem,
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_base64(text: str | None, elem) -> bytes:
    value = re.sub(r"\s+", "", text or "")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SchemaError(
            f"The '{_local(elem)}' element is invalid - The value is invalid according to its "
            "datatype 'http://www.w3.org/2001/XMLSchema:base64Binary'.",
            elem,
        ) from None


def _check_field_uri(uri: str | None, elem) -> str:
    if uri is None:
        raise SchemaError("The required attribute 'FieldURI' is missing.", elem)
    ok = uri in FOLDER_URIS or uri in ITEM_URIS or uri in MESSAGE_URIS
    if not ok:
        match = _URI_RE.match(uri)
        ok = bool(match) and match.group(1) in OTHER_URI_PREFIXES
    if not ok:
        raise SchemaError(
            f"The 'FieldURI' attribute is invalid - The value '{uri}' is invalid according to its "
            "datatype 'http://schemas.microsoft.com/exchange/services/2006/types:"
            "UnindexedFieldURIType' - The Enumeration constraint failed.",
            elem,
        )
    return uri


@dataclass(frozen=True)
class ExtUri:
    """A parsed ExtendedFieldURI: ``key`` identifies the property, ``attrs`` are echoed back."""

    key: tuple
    attrs: tuple[tuple[str, str], ...]
    ptype: str
    tag: int | None

    @property
    def is_array(self) -> bool:
        return self.ptype.endswith("Array")


def _parse_ext_uri(elem) -> ExtUri:
    attrs = dict(elem.attrib)
    ptype = _attr_enum(elem, "PropertyType", PROPERTY_TYPES, required=True)
    tag_text = attrs.get("PropertyTag")
    dset = attrs.get("DistinguishedPropertySetId")
    pset = attrs.get("PropertySetId")
    name = attrs.get("PropertyName")
    pid = attrs.get("PropertyId")
    if dset is not None and dset not in DISTINGUISHED_PROPERTY_SETS:
        _attr_enum(elem, "DistinguishedPropertySetId", DISTINGUISHED_PROPERTY_SETS)
    if tag_text is not None:
        if dset or pset or name or pid:
            raise SchemaError("ExtendedFieldURI: PropertyTag cannot be combined with a set.", elem)
        try:
            tag = int(tag_text, 16) if tag_text.lower().startswith("0x") else int(tag_text)
        except ValueError:
            tag = -1
        if not 0 <= tag <= 0xFFFF:
            raise SchemaError(
                f"The 'PropertyTag' attribute is invalid - The value '{tag_text}' is invalid.",
                elem,
            )
        attrs["PropertyTag"] = hex(tag)
        key: tuple = ("tag", tag, ptype)
    else:
        if bool(dset) == bool(pset) or bool(name) == bool(pid):
            raise SchemaError(
                "ExtendedFieldURI needs PropertyTag, or one of DistinguishedPropertySetId/"
                "PropertySetId with one of PropertyName/PropertyId.",
                elem,
            )
        guid = (DISTINGUISHED_PROPERTY_SETS[dset] if dset else pset).lower()
        if pid is not None:
            pid_value = _parse_int(pid, elem)
            key = ("id", guid, pid_value, ptype)
        else:
            key = ("name", guid, name, ptype)
        tag = None
    return ExtUri(key=key, attrs=tuple(sorted(attrs.items())), ptype=ptype, tag=tag)


def _path_name(path) -> str:
    if isinstance(path, ExtUri):
        return "ext:" + ",".join(f"{k}={v}" for k, v in path.attrs)
    return path


@dataclass
class Shape:
    base: str
    mime: bool = False
    body_type: str = "Best"
    uris: set[str] = field(default_factory=set)
    exts: list[ExtUri] = field(default_factory=list)

    def names(self, default: frozenset, everything: frozenset) -> set[str]:
        names = {"IdOnly": set(), "Default": set(default), "AllProperties": set(everything)}[
            self.base
        ]
        names |= {uri.split(":", 1)[1] for uri in self.uris}
        return names


def _parse_additional(elem, shape: Shape) -> None:
    kids = _children(elem)
    if not kids:
        raise SchemaError("The element 'AdditionalProperties' has incomplete content.", elem)
    for child in kids:
        if child.tag == _T("FieldURI"):
            shape.uris.add(_check_field_uri(child.get("FieldURI"), child))
        elif child.tag == _T("ExtendedFieldURI"):
            shape.exts.append(_parse_ext_uri(child))
        elif child.tag in (_T("IndexedFieldURI"), _T("ExceptionFieldURI")):
            if child.get("FieldURI") is None:
                raise SchemaError("The required attribute 'FieldURI' is missing.", child)
        else:
            raise SchemaError(
                f"The element 'AdditionalProperties' has invalid child element '{_local(child)}'.",
                child,
            )


def _parse_item_shape(elem) -> Shape:
    found = _expect(
        elem,
        [
            (_T("BaseShape"), 1, 1),
            (_T("IncludeMimeContent"), 0, 1),
            (_T("BodyType"), 0, 1),
            (_T("UniqueBodyType"), 0, 1),
            (_T("NormalizedBodyType"), 0, 1),
            (_T("FilterHtmlContent"), 0, 1),
            (_T("ConvertHtmlCodePageToUTF8"), 0, 1),
            (_T("InlineImageUrlTemplate"), 0, 1),
            (_T("BlockExternalImages"), 0, 1),
            (_T("AddBlankTargetToLinks"), 0, 1),
            (_T("MaximumBodySize"), 0, 1),
            (_T("AdditionalProperties"), 0, 1),
        ],
    )
    shape = Shape(_text_enum(found[_T("BaseShape")][0], ("IdOnly", "Default", "AllProperties")))
    if found[_T("IncludeMimeContent")]:
        mime_elem = found[_T("IncludeMimeContent")][0]
        shape.mime = _parse_bool(mime_elem.text, mime_elem)
    if found[_T("BodyType")]:
        shape.body_type = _text_enum(found[_T("BodyType")][0], ("Best", "HTML", "Text"))
    if found[_T("AdditionalProperties")]:
        _parse_additional(found[_T("AdditionalProperties")][0], shape)
    if "item:MimeContent" in shape.uris:
        shape.mime = True
    return shape


def _parse_folder_shape(elem) -> Shape:
    found = _expect(elem, [(_T("BaseShape"), 1, 1), (_T("AdditionalProperties"), 0, 1)])
    shape = Shape(_text_enum(found[_T("BaseShape")][0], ("IdOnly", "Default", "AllProperties")))
    if found[_T("AdditionalProperties")]:
        _parse_additional(found[_T("AdditionalProperties")][0], shape)
    return shape


# --------------------------------------------------------------------------------------------
# MIME helpers
# --------------------------------------------------------------------------------------------

_PARSER = email.parser.BytesParser(policy=email.policy.default)


@dataclass
class MimeInfo:
    subject: str | None = None
    message_id: str | None = None
    date: datetime | None = None
    sender: list = field(default_factory=list)
    from_: list = field(default_factory=list)
    to: list = field(default_factory=list)
    cc: list = field(default_factory=list)
    bcc: list = field(default_factory=list)
    reply_to: list = field(default_factory=list)
    in_reply_to: str | None = None
    references: str | None = None
    headers: list = field(default_factory=list)


def _mime_info(mime: bytes) -> MimeInfo:
    info = MimeInfo()
    try:
        msg = _PARSER.parsebytes(mime, headersonly=True)
    except Exception:
        return info

    def text(name: str) -> str | None:
        try:
            value = msg.get(name)
        except Exception:
            return None
        return None if value is None else str(value)

    def addresses(name: str) -> list:
        try:
            header = msg.get(name)
            return [(a.display_name or None, a.addr_spec) for a in header.addresses]
        except Exception:
            return []

    info.subject = text("Subject")
    info.message_id = text("Message-ID")
    info.in_reply_to = text("In-Reply-To")
    info.references = text("References")
    info.sender = addresses("Sender")
    info.from_ = addresses("From")
    info.to = addresses("To")
    info.cc = addresses("Cc")
    info.bcc = addresses("Bcc")
    info.reply_to = addresses("Reply-To")
    try:
        date = msg["Date"].datetime if msg.get("Date") is not None else None
        if date is not None and date.tzinfo is None:
            date = date.replace(tzinfo=UTC)
        info.date = date
    except Exception:
        info.date = None
    for name in msg:
        try:
            info.headers.append((name, str(msg.get(name))))
        except Exception:
            continue
    return info


def _mime_body(mime: bytes, body_type: str) -> tuple[str, str]:
    """(BodyType, text) of the message's body, for GetItem's item:Body."""
    try:
        msg = _PARSER.parsebytes(mime)
        part = msg.get_body(preferencelist=("html", "plain") if body_type != "Text" else ("plain",))
        if part is None and body_type == "Text":
            part = msg.get_body(preferencelist=("html",))
        if part is None:
            return "Text", ""
        content = part.get_content()
        if part.get_content_subtype() == "html":
            if body_type == "Text":
                return "Text", re.sub(r"<[^>]*>", "", content)
            return "HTML", content
        return "Text", content
    except Exception:
        return "Text", ""


def _has_attachments(mime: bytes) -> bool:
    try:
        msg = _PARSER.parsebytes(mime)
        return any(True for _ in msg.iter_attachments()) if msg.is_multipart() else False
    except Exception:
        return False


def _minimal_mime(subject: str | None, body) -> bytes:
    """The MIME of a message created without MimeContent: Subject and Body only."""
    subtype = "html" if body is not None and body.get("BodyType") == "HTML" else "plain"
    head = f"MIME-Version: 1.0\r\nContent-Type: text/{subtype}; charset=utf-8\r\n"
    if subject is not None:
        smtp = email.policy.SMTP
        head = smtp.header_factory("Subject", subject).fold(policy=smtp) + head
    text = (body.text or "") if body is not None else ""
    return (head + "\r\n" + text).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Mailbox state
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Folder:
    id: str
    change_key: str
    parent_id: str | None
    name: str
    folder_class: str | None
    distinguished: str | None = None
    hidden: bool = False

    @property
    def tag(self) -> str:
        cls = self.folder_class or ""
        if cls.startswith("IPF.Appointment"):
            return "CalendarFolder"
        if cls.startswith("IPF.Contact"):
            return "ContactsFolder"
        if cls.startswith("IPF.Task"):
            return "TasksFolder"
        return "Folder"


@dataclass(eq=False)
class _Item:
    id: str
    change_key: str
    folder_id: str
    mime: bytes
    received: datetime
    created: datetime
    modified: datetime
    is_read: bool = False
    flag: str = "NotFlagged"
    categories: list[str] = field(default_factory=list)
    is_draft: bool = False
    last_verb: int | None = None
    importance: str = "Normal"
    sensitivity: str = "Normal"
    item_class: str = "IPM.Note"
    subject_override: str | None = None
    misc: dict[str, str] = field(default_factory=dict)  # element name -> text
    extended: dict[tuple, tuple[ExtUri, object]] = field(default_factory=dict)
    info: MimeInfo = field(default_factory=MimeInfo)
    has_attachments: bool = False

    @property
    def subject(self) -> str | None:
        return self.subject_override if self.subject_override is not None else self.info.subject

    @property
    def message_flags(self) -> int:
        return (MSGFLAG_READ if self.is_read else 0) | (MSGFLAG_UNSENT if self.is_draft else 0)


@dataclass(frozen=True)
class _Net:
    """An object's net change over a sync window."""

    existed: bool
    present: bool
    content: bool = False
    read: bool = False
    read_value: bool | None = None

    def after(self, kind: str, read_value) -> _Net:
        if kind == "add":
            return replace(self, present=True)
        if kind == "remove":
            return replace(self, present=False)
        if kind == "update":
            return replace(self, content=True, read_value=read_value)
        return replace(self, read=True, read_value=read_value)

    @property
    def change(self) -> str | None:
        if not self.existed:
            return "create" if self.present else None
        if not self.present:
            return "delete"
        if self.content:
            return "update"
        return "read" if self.read else None


def _page(log: list, start: int, limit: int, skip: set[str]) -> tuple[dict, int, bool]:
    """Walk log entries (seq, oid, kind, read) after sequence ``start``; return the net changes
    ({oid: _Net}, in order of first change), the last sequence covered and whether the end
    of the log was reached.  At most ``limit`` non-empty changes are covered."""
    i = bisect_right(log, start, key=lambda entry: entry[0])
    nets: dict[str, _Net] = {}
    count, cut = 0, start
    while i < len(log):
        seq, oid, kind, read_value = log[i]
        old = nets.get(oid)
        new = (old or _Net(existed=kind != "add", present=kind != "add")).after(kind, read_value)
        delta = int(new.change is not None and oid not in skip)
        delta -= int(old is not None and old.change is not None and oid not in skip)
        if count + delta > limit:
            return nets, cut, False
        nets[oid] = new
        count += delta
        cut = seq
        i += 1
    return nets, cut, True


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    op: str
    body: etree._Element
    version: str | None
    details: dict


class FakeEWS(ThreadedHTTPFake):
    """The fake server.  ``FakeEWS(user, password, *, page_size_limit=512, ssl_context=None,
    drafts_by_default=False)``; ``start()``/``stop()`` or a ``with`` block.  See the module
    docstring for the protocol and the test API."""

    # Distinguished folders: (name, parent, display name, folder class, hidden).
    LAYOUT = (
        ("root", None, "", None, False),
        ("msgfolderroot", "root", "Top of Information Store", None, False),
        (None, "root", "Common Views", None, False),
        ("searchfolders", "root", "Finder", None, False),
        ("recoverableitemsroot", "root", "Recoverable Items", None, True),
        ("recoverableitemsdeletions", "recoverableitemsroot", "Deletions", None, True),
        ("recoverableitemspurges", "recoverableitemsroot", "Purges", None, True),
        ("recoverableitemsversions", "recoverableitemsroot", "Versions", None, True),
        ("inbox", "msgfolderroot", "Inbox", "IPF.Note", False),
        ("sentitems", "msgfolderroot", "Sent Items", "IPF.Note", False),
        ("deleteditems", "msgfolderroot", "Deleted Items", "IPF.Note", False),
        ("drafts", "msgfolderroot", "Drafts", "IPF.Note", False),
        ("junkemail", "msgfolderroot", "Junk Email", "IPF.Note", False),
        ("outbox", "msgfolderroot", "Outbox", "IPF.Note", False),
        ("calendar", "msgfolderroot", "Calendar", "IPF.Appointment", False),
        ("contacts", "msgfolderroot", "Contacts", "IPF.Contact", False),
        ("tasks", "msgfolderroot", "Tasks", "IPF.Task", False),
    )

    def __init__(
        self,
        user: str = "alice@example.org",
        password: str = "secret",
        *,
        page_size_limit: int = 512,
        ssl_context: ssl.SSLContext | None = None,
        drafts_by_default: bool = False,
    ):
        self.user = user
        self.password = password
        #: When set, "Authorization: Bearer <this>" is accepted too (OAuth2 tests).
        self.bearer_token: str | None = None
        self.page_size_limit = page_size_limit
        self.ssl_context = ssl_context
        self.drafts_by_default = drafts_by_default
        self.mime_filter: Callable[[bytes], bytes] | None = None
        self.requests: list[tuple[str, dict]] = []
        self.sent: list[bytes] = []
        self.url = ""
        self.port = 0
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(32)
        self._instance = secrets.token_bytes(4)
        self._seq = 0
        self._epoch = 0
        self._folders: dict[str, _Folder] = {}
        self._folder_tombs: dict[str, _Folder] = {}
        self._distinguished: dict[str, str] = {}
        self._items: dict[str, _Item] = {}
        self._item_tombs: dict[str, _Item] = {}
        self._item_logs: dict[str, list] = {}
        self._hier_log: list = []
        self._failures: dict[str, str] = {}
        self._busy: list = [0, 50, None]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._ops: dict[str, Callable[[_Ctx], list]] = {
            "ConvertId": self._op_convert_id,
            "GetFolder": self._op_get_folder,
            "FindFolder": self._op_find_folder,
            "SyncFolderHierarchy": self._op_sync_folder_hierarchy,
            "CreateFolder": self._op_create_folder,
            "UpdateFolder": self._op_update_folder,
            "DeleteFolder": self._op_delete_folder,
            "GetItem": self._op_get_item,
            "FindItem": self._op_find_item,
            "SyncFolderItems": self._op_sync_folder_items,
            "CreateItem": self._op_create_item,
            "UpdateItem": self._op_update_item,
            "DeleteItem": self._op_delete_item,
            "MoveItem": self._op_move_item,
            "CopyItem": self._op_copy_item,
        }
        by_name: dict[str, str] = {}
        for dist, parent, name, folder_class, hidden in self.LAYOUT:
            parent_id = by_name[parent] if parent else None
            folder = self._create_folder(parent_id, name, folder_class, dist=dist, hidden=hidden)
            if dist:
                by_name[dist] = folder.id

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeEWS:
        self.url = self._serve(_Handler, "fakeews") + "/EWS/Exchange.asmx"
        return self

    # ---------------------------------------------------------------- ids and logs

    def _tick(self) -> int:
        self._seq += 1
        return self._seq

    def _new_id(self, kind: bytes) -> str:
        raw = b"\x00\x00\x00\x46FEWS" + kind + self._instance + self._tick().to_bytes(8, "big")
        return base64.b64encode(raw + secrets.token_bytes(10)).decode()

    def _new_change_key(self) -> str:
        raw = b"\x09\x00\x00\x00CK" + self._instance + self._tick().to_bytes(8, "big")
        return base64.b64encode(raw + secrets.token_bytes(3)).decode()

    def _id_kind(self, value: str | None) -> bytes | None:
        """b"F"/b"I" for a well-formed id of this server, else None."""
        if not value:
            return None
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 31 or raw[:8] != b"\x00\x00\x00\x46FEWS" or raw[9:13] != self._instance:
            return None
        return raw[8:9]

    def _check_change_key(self, value: str | None) -> None:
        if value is None:
            return
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if raw[:6] != b"\x09\x00\x00\x00CK":
            raise ResponseError("ErrorInvalidChangeKey")

    def _log_item(self, folder_id: str, item: _Item, kind: str) -> None:
        self._item_logs.setdefault(folder_id, []).append((self._seq, item.id, kind, item.is_read))

    def _log_folder(self, folder: _Folder, kind: str) -> None:
        self._hier_log.append((self._seq, folder.id, kind, None))

    # ---------------------------------------------------------------- state operations

    def _create_folder(self, parent_id, name, folder_class, *, dist=None, hidden=False) -> _Folder:
        folder = _Folder(
            id=self._new_id(b"F"),
            change_key=self._new_change_key(),
            parent_id=parent_id,
            name=name,
            folder_class=folder_class,
            distinguished=dist,
            hidden=hidden,
        )
        self._folders[folder.id] = folder
        if dist:
            self._distinguished[dist] = folder.id
        self._item_logs[folder.id] = []
        self._log_folder(folder, "add")
        return folder

    def _child_named(self, parent_id: str, name: str) -> _Folder | None:
        for folder in self._folders.values():
            if folder.parent_id == parent_id and folder.name.casefold() == name.casefold():
                return folder
        return None

    def _children_of(self, folder_id: str, *, deep: bool = False) -> list[_Folder]:
        result = []
        for folder in self._folders.values():
            if folder.parent_id == folder_id and not folder.hidden:
                result.append(folder)
                if deep:
                    result.extend(self._children_of(folder.id, deep=True))
        return result

    def _remove_folder(self, folder: _Folder) -> None:
        for child in [f for f in self._folders.values() if f.parent_id == folder.id]:
            self._remove_folder(child)
        for item in [i for i in self._items.values() if i.folder_id == folder.id]:
            self._remove_item(item)
        del self._folders[folder.id]
        self._folder_tombs[folder.id] = folder
        self._tick()
        self._log_folder(folder, "remove")

    def _rename_folder(self, folder: _Folder, name: str) -> None:
        if folder.parent_id is not None:
            other = self._child_named(folder.parent_id, name)
            if other is not None and other is not folder:
                raise ResponseError("ErrorFolderExists")
        folder.name = name
        folder.change_key = self._new_change_key()
        self._log_folder(folder, "update")

    def _new_item(self, folder: _Folder, mime: bytes, *, received=None, **attrs) -> _Item:
        now = _now()
        item = _Item(
            id=self._new_id(b"I"),
            change_key=self._new_change_key(),
            folder_id=folder.id,
            mime=mime,
            received=received or now,
            created=now,
            modified=now,
            info=_mime_info(mime),
            has_attachments=_has_attachments(mime),
            **attrs,
        )
        self._items[item.id] = item
        self._log_item(folder.id, item, "add")
        return item

    def _touch_item(self, item: _Item, kind: str) -> None:
        item.change_key = self._new_change_key()
        item.modified = _now()
        self._log_item(item.folder_id, item, kind)

    def _remove_item(self, item: _Item) -> None:
        del self._items[item.id]
        self._item_tombs[item.id] = item
        self._tick()
        self._log_item(item.folder_id, item, "remove")

    def _move_item(self, item: _Item, dest: _Folder, *, copy_only: bool = False) -> _Item:
        moved = copy.deepcopy(item)
        moved.id = self._new_id(b"I")
        moved.change_key = self._new_change_key()
        moved.folder_id = dest.id
        if copy_only:
            moved.created = moved.modified = _now()
        self._items[moved.id] = moved
        self._log_item(dest.id, moved, "add")
        if not copy_only:
            self._remove_item(item)
        return moved

    def _folder_by_dist(self, name: str) -> _Folder:
        return self._folders[self._distinguished[name]]

    # ---------------------------------------------------------------- test API

    def _path(self, path: str) -> _Folder:
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts or parts[0].lower() not in self._distinguished:
            raise KeyError(f"{path!r} does not start with a distinguished folder id")
        folder = self._folders.get(self._distinguished[parts[0].lower()])
        if folder is None:
            raise KeyError(path)
        for part in parts[1:]:
            folder = self._child_named(folder.id, part)
            if folder is None:
                raise KeyError(path)
        return folder

    def folder_id(self, path: str) -> str:
        with self._lock:
            return self._path(path).id

    def add_folder(self, parent_path: str, name: str, folder_class: str = "IPF.Note") -> str:
        with self._lock:
            parent = self._path(parent_path)
            if self._child_named(parent.id, name) is not None:
                raise ValueError(f"{parent_path}/{name} exists")
            return self._create_folder(parent.id, name, folder_class).id

    def rename_folder(self, path: str, new_name: str) -> None:
        with self._lock:
            try:
                self._rename_folder(self._path(path), new_name)
            except ResponseError as e:
                raise ValueError(e.code) from None

    def delete_folder(self, path: str) -> None:
        with self._lock:
            folder = self._path(path)
            if folder.distinguished:
                raise ValueError("distinguished folders cannot be deleted")
            self._remove_folder(folder)

    def add_item(
        self,
        folder_path: str,
        mime: bytes,
        *,
        is_read: bool = False,
        flagged: bool = False,
        categories: Iterable[str] = (),
        received: datetime | None = None,
        is_draft: bool = False,
        last_verb: int | None = None,
    ) -> str:
        with self._lock:
            folder = self._path(folder_path)
            item = self._new_item(
                folder,
                bytes(mime),
                received=received.astimezone(UTC).replace(microsecond=0) if received else None,
                is_read=is_read,
                flag="Flagged" if flagged else "NotFlagged",
                categories=list(categories),
                is_draft=is_draft,
                last_verb=last_verb,
                # a calendar's items are appointments, a contacts folder's contacts
                item_class=FOLDER_ITEM_CLASS.get(folder.folder_class or "", "IPM.Note"),
            )
            return item.id

    def update_item(self, item_id: str, **changes) -> None:
        allowed = {"is_read", "flagged", "flag", "categories", "last_verb", "mime"}
        if not changes or set(changes) - allowed:
            raise TypeError(f"update_item() takes some of {sorted(allowed)}")
        with self._lock:
            item = self._items[item_id]
            if "is_read" in changes:
                item.is_read = bool(changes["is_read"])
            if "flagged" in changes:
                item.flag = "Flagged" if changes["flagged"] else "NotFlagged"
            if "flag" in changes:
                if changes["flag"] not in FLAG_STATUSES:
                    raise ValueError(changes["flag"])
                item.flag = changes["flag"]
            if "categories" in changes:
                item.categories = list(changes["categories"])
            if "last_verb" in changes:
                item.last_verb = changes["last_verb"]
            if "mime" in changes:
                mime = bytes(changes["mime"])
                item.mime, item.info = mime, _mime_info(mime)
                item.has_attachments = _has_attachments(mime)
            self._touch_item(item, "read" if set(changes) == {"is_read"} else "update")

    def delete_item(self, item_id: str, hard: bool = False) -> str | None:
        with self._lock:
            item = self._items[item_id]
            if hard:
                self._remove_item(item)
                return None
            return self._move_item(item, self._folder_by_dist("deleteditems")).id

    def move_item(self, item_id: str, folder_path: str) -> str:
        with self._lock:
            return self._move_item(self._items[item_id], self._path(folder_path)).id

    def _item_dict(self, item: _Item) -> dict:
        return {
            "id": item.id,
            "change_key": item.change_key,
            "folder_id": item.folder_id,
            "mime": item.mime,
            "subject": item.subject,
            "is_read": item.is_read,
            "flag": item.flag,
            "categories": list(item.categories),
            "received": item.received,
            "is_draft": item.is_draft,
            "last_verb": item.last_verb,
            "extended": {ext.attrs: value for ext, value in item.extended.values()},
        }

    def item(self, item_id: str) -> dict:
        with self._lock:
            return self._item_dict(self._items[item_id])

    def items(self, folder_path: str) -> list[dict]:
        with self._lock:
            folder = self._path(folder_path)
            return [self._item_dict(i) for i in self._items.values() if i.folder_id == folder.id]

    def invalidate_sync_states(self) -> None:
        with self._lock:
            self._epoch += 1

    def busy(self, n: int = 1, back_off_ms: int = 50, http: int | None = None) -> None:
        with self._lock:
            self._busy = [n, back_off_ms, http]

    def fail_item(self, item_id: str, code: str | None = "ErrorMimeContentConversionFailed"):
        with self._lock:
            if code is None:
                self._failures.pop(item_id, None)
            else:
                self._failures[item_id] = code

    # ---------------------------------------------------------------- HTTP

    def _check_auth(self, header: str | None) -> bool:
        if header and header.startswith("Bearer ") and self.bearer_token:
            # OAuth2 (as Exchange Online and Exchange with hybrid modern auth accept it).
            return hmac.compare_digest(header[7:].strip().encode(), self.bearer_token.encode())
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return False
        return user.casefold() == self.user.casefold() and hmac.compare_digest(
            password.encode(), self.password.encode()
        )

    @staticmethod
    def _peek_op(raw: bytes) -> str:
        match = re.search(rb"<(?:[\w.-]+:)?Body\b[^>]*>\s*<(?:[\w.-]+:)?([A-Za-z]+)", raw)
        return match.group(1).decode() if match else "?"

    def _handle_http(self, h: _Handler) -> None:
        if urlsplit(h.path).path.lower() != "/ews/exchange.asmx":
            h.reply(404, b"<html><body>404 - File or directory not found.</body></html>")
            return
        length = h.headers.get("Content-Length")
        if length is None or not length.isdigit():
            h.reply(411, b"<html><body>411 - Length Required</body></html>")
            return
        raw = h.rfile.read(int(length))
        op = self._peek_op(raw)
        if not self._check_auth(h.headers.get("Authorization")):
            self.requests.append((op, {"http_status": 401, "authenticated": False, "codes": []}))
            h.reply(
                401,
                b"<html><body>401 - Unauthorized: Access is denied due to invalid credentials."
                b"</body></html>",
                {"WWW-Authenticate": f'Basic realm="{HOST}"'},
            )
            return
        ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "text/xml":
            self.requests.append((op, {"http_status": 415, "codes": []}))
            h.reply(415, b"<html><body>415 - Unsupported Media Type</body></html>")
            return
        with self._lock:
            status, body, headers = self._handle_soap(raw)
        h.reply(status, body, {"Content-Type": "text/xml; charset=utf-8", **headers})

    # ---------------------------------------------------------------- SOAP

    def _handle_soap(self, raw: bytes) -> tuple[int, bytes, dict]:
        details: dict = {"http_status": 200, "codes": []}
        op = self._peek_op(raw)
        try:
            ctx = self._parse_envelope(raw, details)
            op = ctx.op
            if self._busy[0] > 0:
                self._busy[0] -= 1
                _, back_off_ms, http = self._busy
                details["throttled"] = True
                if http is not None:
                    details["http_status"] = http
                    self.requests.append((op, details))
                    retry_after = str(max(1, math.ceil(back_off_ms / 1000)))
                    page = f"<html><body>{http} - Server Too Busy</body></html>".encode()
                    return http, page, {"Retry-After": retry_after, "Content-Type": "text/html"}
                raise Fault("ErrorServerBusy", back_off_ms=back_off_ms)
            handler = self._ops.get(op)
            if handler is None:
                raise Fault("ErrorInvalidOperation", f"FakeEWS does not implement {op}.")
            messages = handler(ctx)
            details["codes"] = [m.findtext(_M("ResponseCode")) for m in messages]
            body = self._envelope(op, messages)
            self.requests.append((op, details))
            return 200, body, {}
        except SchemaError as e:
            fault = self._fault(
                "ErrorSchemaValidation",
                "The request failed schema validation: " + e.violation,
                schema=(e.line, e.violation),
            )
            code = "ErrorSchemaValidation"
        except Fault as e:
            fault = self._fault(e.code, e.text, back_off_ms=e.back_off_ms)
            code = e.code
        except ResponseError as e:  # an operation-level error outside a per-item loop
            fault = self._fault(e.code, e.text)
            code = e.code
        except Exception as e:  # a bug in the fake: make it loud on the client side
            code = "ErrorInternalServerError"
            fault = self._fault(code, f"FakeEWS crashed: {traceback.format_exc()}")
            details["exception"] = repr(e)
        details["codes"] = [code]
        details["fault"] = True
        details["http_status"] = 500
        self.requests.append((op, details))
        return 500, fault, {}

    def _parse_envelope(self, raw: bytes, details: dict) -> _Ctx:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        try:
            root = etree.fromstring(raw, parser)
        except etree.XMLSyntaxError as e:
            raise SchemaError(str(e), None) from None
        if root.getroottree().docinfo.doctype:
            raise SchemaError("DTD is prohibited in this XML document.", root)
        if root.tag != _S("Envelope"):
            if root.tag == f"{{{SOAP12NS}}}Envelope":
                raise Fault("ErrorSchemaValidation", "SOAP 1.2 is not supported on this endpoint.")
            raise SchemaError(
                f"The root element '{_local(root)}' is not a SOAP 1.1 envelope.", root
            )
        found = _expect(root, [(_S("Header"), 0, 1), (_S("Body"), 1, 1)])
        version = None
        header = _one(found, _S("Header"))
        if header is not None:
            for child in _children(header):
                if child.tag == _T("RequestServerVersion"):
                    version = child.get("Version")
                    if version is None:
                        raise SchemaError("The required attribute 'Version' is missing.", child)
                    if version in NEWER_VERSIONS:
                        raise Fault("ErrorInvalidServerVersion")
                    if version not in ACCEPTED_VERSIONS:
                        _attr_enum(child, "Version", ACCEPTED_VERSIONS)
                elif child.tag == _T("ExchangeImpersonation"):
                    raise Fault("ErrorImpersonateUserDenied")
                elif child.tag in (
                    _T("TimeZoneContext"),
                    _T("MailboxCulture"),
                    _T("DateTimePrecision"),
                    _T("ManagementRole"),
                ):
                    continue
                elif child.get(_S("mustUnderstand")) in ("1", "true"):
                    raise Fault("ErrorSchemaValidation", f"Header {_local(child)} not understood.")
        details["version"] = version
        content = _children(found[_S("Body")][0])
        if len(content) != 1:
            raise SchemaError("The SOAP body must hold exactly one request element.", root)
        body = content[0]
        op = _local(body)
        if etree.QName(body).namespace != MNS or op not in EWS_OPERATIONS:
            raise SchemaError(f"The element '{op}' is not an EWS request.", body)
        return _Ctx(op=op, body=body, version=version, details=details)

    def _envelope(self, op: str, messages: list) -> bytes:
        envelope = etree.Element(_S("Envelope"), nsmap=NSMAP)
        header = etree.SubElement(envelope, _S("Header"))
        etree.SubElement(header, _T("ServerVersionInfo"), SERVER_VERSION)
        body = etree.SubElement(envelope, _S("Body"))
        response = etree.SubElement(body, _M(f"{op}Response"))
        container = etree.SubElement(response, _M("ResponseMessages"))
        for message in messages:
            container.append(message)
        etree.cleanup_namespaces(envelope, top_nsmap=NSMAP)
        return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")

    @staticmethod
    def _fault(code, text, *, back_off_ms=None, schema=None) -> bytes:
        envelope = etree.Element(_S("Envelope"), nsmap={"s": SOAPNS})
        fault = etree.SubElement(etree.SubElement(envelope, _S("Body")), _S("Fault"))
        faultcode = etree.SubElement(fault, "faultcode", nsmap={"a": TNS})
        faultcode.text = f"a:{code}"
        faultstring = etree.SubElement(fault, "faultstring")
        faultstring.set(f"{{{XML_NS}}}lang", "en-US")
        faultstring.text = _xml_text(text)
        detail = etree.SubElement(fault, "detail")
        etree.SubElement(detail, f"{{{ENS}}}ResponseCode", nsmap={"e": ENS}).text = code
        etree.SubElement(detail, f"{{{ENS}}}Message", nsmap={"e": ENS}).text = _xml_text(text)
        if back_off_ms is not None or schema is not None:
            xml = etree.SubElement(detail, _T("MessageXml"), nsmap={"t": TNS})
            if back_off_ms is not None:
                _sub(xml, _T("Value"), str(back_off_ms), Name="BackOffMilliseconds")
            if schema is not None:
                _sub(xml, _T("LineNumber"), str(schema[0]))
                _sub(xml, _T("LinePosition"), "1")
                _sub(xml, _T("Violation"), schema[1])
        return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")

    @staticmethod
    def _ok(op: str, *children) -> etree._Element:
        message = _el(_M(f"{op}ResponseMessage"), ResponseClass="Success")
        _sub(message, _M("ResponseCode"), "NoError")
        for child in children:
            message.append(child)
        return message

    @staticmethod
    def _error(op: str, error: ResponseError, *children) -> etree._Element:
        message = _el(_M(f"{op}ResponseMessage"), ResponseClass="Error")
        _sub(message, _M("MessageText"), error.text)
        _sub(message, _M("ResponseCode"), error.code)
        _sub(message, _M("DescriptiveLinkKey"), "0")
        for child in children:
            message.append(child)
        return message

    # ---------------------------------------------------------------- id resolution

    def _check_mailbox(self, id_elem) -> None:
        mailbox = id_elem.find(_T("Mailbox"))
        if mailbox is None:
            return
        found = _expect(
            mailbox,
            [
                (_T("Name"), 0, 1),
                (_T("EmailAddress"), 0, 1),
                (_T("RoutingType"), 0, 1),
                (_T("MailboxType"), 0, 1),
                (_T("ItemId"), 0, 1),
            ],
        )
        address = _one(found, _T("EmailAddress"))
        if address is not None and (address.text or "").strip().casefold() != self.user.casefold():
            raise ResponseError("ErrorNonExistentMailbox")

    def _folder_ref(self, elem) -> str:
        """Validate a FolderId/DistinguishedFolderId element; return a printable reference."""
        if elem.tag == _T("FolderId"):
            if elem.get("Id") is None:
                raise SchemaError("The required attribute 'Id' is missing.", elem)
            return elem.get("Id")
        if elem.tag == _T("DistinguishedFolderId"):
            _expect(elem, [(_T("Mailbox"), 0, 1)])
            name = _attr_enum(elem, "Id", DISTINGUISHED_NAMES, required=True)
            return name
        raise SchemaError(f"'{_local(elem)}' is not a folder id.", elem)

    def _resolve_folder(self, elem) -> _Folder:
        self._folder_ref(elem)
        if elem.tag == _T("DistinguishedFolderId"):
            self._check_mailbox(elem)
            folder_id = self._distinguished.get(elem.get("Id"))
            if folder_id is None or folder_id not in self._folders:
                raise ResponseError("ErrorFolderNotFound")
            return self._folders[folder_id]
        self._check_change_key(elem.get("ChangeKey"))
        folder_id = elem.get("Id")
        kind = self._id_kind(folder_id)
        if kind is None:
            raise ResponseError("ErrorInvalidIdMalformed")
        if kind != b"F" or folder_id not in self._folders:
            raise ResponseError("ErrorFolderNotFound")
        return self._folders[folder_id]

    def _folder_ids(self, container) -> list:
        kids = _children(container)
        if not kids:
            raise SchemaError(
                f"The element '{_local(container)}' has incomplete content.", container
            )
        for kid in kids:
            self._folder_ref(kid)
        return kids

    def _single_folder(self, container) -> _Folder:
        kids = _children(container)
        if len(kids) != 1:
            raise SchemaError(f"'{_local(container)}' must hold one folder id.", container)
        return self._resolve_folder(kids[0])

    def _item_ids(self, container) -> list:
        kids = _children(container)
        if not kids:
            raise SchemaError(
                f"The element '{_local(container)}' has incomplete content.", container
            )
        for kid in kids:
            if kid.tag not in (_T("ItemId"), _T("OccurrenceItemId"), _T("RecurringMasterItemId")):
                raise SchemaError(
                    f"The element '{_local(container)}' has invalid child element '{_local(kid)}'.",
                    kid,
                )
            if kid.tag == _T("ItemId") and kid.get("Id") is None:
                raise SchemaError("The required attribute 'Id' is missing.", kid)
        return kids

    def _resolve_item(self, elem) -> _Item:
        if elem.tag != _T("ItemId"):
            raise ResponseError("ErrorItemNotFound")
        self._check_change_key(elem.get("ChangeKey"))
        item_id = elem.get("Id")
        kind = self._id_kind(item_id)
        if kind is None:
            raise ResponseError("ErrorInvalidIdMalformed")
        if kind != b"I" or item_id not in self._items:
            raise ResponseError("ErrorItemNotFound")
        return self._items[item_id]

    # ---------------------------------------------------------------- XML of objects

    @staticmethod
    def _mailbox(parent, tag: str, name: str | None, address: str) -> None:
        mailbox = _sub(parent, tag)
        if name:
            _sub(mailbox, _T("Name"), name)
        _sub(mailbox, _T("EmailAddress"), address)
        _sub(mailbox, _T("RoutingType"), "SMTP")
        _sub(mailbox, _T("MailboxType"), "OneOff")

    def _item_xml(self, item: _Item, shape: Shape, context: str, root_tag: str = "Message"):
        # Calendar items and contacts are ItemType plus their own properties, of which the
        # fake keeps none but the MIME (iCalendar / vCard, as Exchange exports them).
        kind = ITEM_KINDS.get(item.item_class)
        sequence = ITEM_SEQUENCE if kind else MESSAGE_SEQUENCE
        elem = _el(_T(kind or root_tag))
        names = shape.names(DEFAULT_ITEM_PROPS, ALL_ITEM_PROPS)
        names.add("ItemId")
        if shape.mime:
            names.add("MimeContent")
        if context != "get":
            names -= NOT_IN_SYNC
        info = item.info
        for name in sequence:
            if name == "ExtendedProperty":
                self._ext_props_xml(elem, item, shape.exts)
                continue
            if name not in names or name not in EMITTED:
                continue
            self._item_prop(elem, item, info, name, shape)
        return elem

    def _item_prop(self, elem, item: _Item, info: MimeInfo, name: str, shape: Shape) -> None:
        simple = {
            "ItemClass": item.item_class,
            "Sensitivity": item.sensitivity,
            "DateTimeReceived": _iso(item.received),
            "Size": str(len(item.mime)),
            "Importance": item.importance,
            "IsSubmitted": "false",
            "IsDraft": _bool(item.is_draft),
            "IsFromMe": "false",
            "IsResend": "false",
            "IsUnmodified": _bool(item.modified == item.created),
            "DateTimeSent": _iso(info.date or item.received),
            "DateTimeCreated": _iso(item.created),
            "ReminderIsSet": item.misc.get("ReminderIsSet", "false"),
            "ReminderMinutesBeforeStart": item.misc.get("ReminderMinutesBeforeStart", "0"),
            "HasAttachments": _bool(item.has_attachments),
            "Culture": item.misc.get("Culture", "en-US"),
            "LastModifiedName": self.user,
            "LastModifiedTime": _iso(item.modified),
            "IsAssociated": "false",
            "IsReadReceiptRequested": item.misc.get("IsReadReceiptRequested", "false"),
            "IsDeliveryReceiptRequested": item.misc.get("IsDeliveryReceiptRequested", "false"),
            "IsRead": _bool(item.is_read),
            "IsResponseRequested": item.misc.get("IsResponseRequested", "false"),
        }
        if name in simple:
            _sub(elem, _T(name), simple[name])
        elif name == "MimeContent":
            mime = self.mime_filter(item.mime) if self.mime_filter else item.mime
            _sub(elem, _T(name), base64.b64encode(mime).decode(), CharacterSet="UTF-8")
        elif name == "ItemId":
            _sub(elem, _T(name), Id=item.id, ChangeKey=item.change_key)
        elif name == "ParentFolderId":
            folder = self._folders.get(item.folder_id) or self._folder_tombs[item.folder_id]
            _sub(elem, _T(name), Id=folder.id, ChangeKey=folder.change_key)
        elif name in ("Subject", "ConversationTopic") and item.subject is not None:
            _sub(elem, _T(name), item.subject)
        elif name == "Body":
            body_type, text = _mime_body(item.mime, shape.body_type)
            _sub(elem, _T(name), text, BodyType=body_type, IsTruncated="false")
        elif name == "Categories" and item.categories:
            categories = _sub(elem, _T(name))
            for category in item.categories:
                _sub(categories, _T("String"), category)
        elif name == "InReplyTo" and info.in_reply_to:
            _sub(elem, _T(name), info.in_reply_to)
        elif name == "InternetMessageHeaders" and info.headers:
            headers = _sub(elem, _T(name))
            for header, value in info.headers:
                _sub(headers, _T("InternetMessageHeader"), value, HeaderName=header)
        elif name in ("DisplayTo", "DisplayCc"):
            people = info.to if name == "DisplayTo" else info.cc
            _sub(elem, _T(name), "; ".join(n or a for n, a in people))
        elif name == "EffectiveRights":
            rights = _sub(elem, _T(name))
            for right, value in (
                ("CreateAssociated", False),
                ("CreateContents", False),
                ("CreateHierarchy", False),
                ("Delete", True),
                ("Modify", True),
                ("Read", True),
                ("ViewPrivateItems", True),
            ):
                _sub(rights, _T(right), _bool(value))
        elif name == "Flag":
            _sub(_sub(elem, _T(name)), _T("FlagStatus"), item.flag)
        elif name in ("Sender", "From"):
            people = (info.sender or info.from_) if name == "Sender" else info.from_
            if people:
                self._mailbox(_sub(elem, _T(name)), _T("Mailbox"), *people[0])
        elif name in ("ToRecipients", "CcRecipients", "BccRecipients", "ReplyTo"):
            people = {
                "ToRecipients": info.to,
                "CcRecipients": info.cc,
                "BccRecipients": info.bcc,
                "ReplyTo": info.reply_to,
            }[name]
            if people:
                container = _sub(elem, _T(name))
                for person, address in people:
                    self._mailbox(container, _T("Mailbox"), person, address)
        elif name == "InternetMessageId" and info.message_id:
            _sub(elem, _T(name), info.message_id)
        elif name == "References" and info.references:
            _sub(elem, _T(name), info.references)
        elif name in ("ReceivedBy", "ReceivedRepresenting"):
            self._mailbox(_sub(elem, _T(name)), _T("Mailbox"), None, self.user)

    def _ext_value(self, item: _Item, ext: ExtUri):
        if ext.tag is not None and ext.ptype == "Integer":
            if ext.tag == TAG_MESSAGE_FLAGS:
                return str(item.message_flags)
            if ext.tag == TAG_MESSAGE_SIZE:
                return str(len(item.mime))
            if ext.tag == TAG_LAST_VERB:
                return None if item.last_verb is None else str(item.last_verb)
            if ext.tag == TAG_FLAG_STATUS:
                return {"NotFlagged": None, "Complete": "1", "Flagged": "2"}[item.flag]
        stored = item.extended.get(ext.key)
        return None if stored is None else stored[1]

    def _ext_props_xml(self, elem, item: _Item, exts: list[ExtUri]) -> None:
        for ext in exts:
            value = self._ext_value(item, ext)
            if value is None:
                continue
            prop = _sub(elem, _T("ExtendedProperty"))
            _sub(prop, _T("ExtendedFieldURI"), **dict(ext.attrs))
            if ext.is_array:
                values = _sub(prop, _T("Values"))
                for v in value:
                    _sub(values, _T("Value"), v)
            else:
                _sub(prop, _T("Value"), value)

    def _folder_xml(self, folder: _Folder, shape: Shape, tag: str | None = None):
        elem = _el(_T(tag or folder.tag))
        names = shape.names(DEFAULT_FOLDER_PROPS, ALL_FOLDER_PROPS)
        names.add("FolderId")
        allowed = set(FOLDER_SEQUENCE[:13])
        if elem.tag in (_T("Folder"), _T("TasksFolder"), _T("SearchFolder")):
            allowed.add("UnreadCount")
        items = [i for i in self._items.values() if i.folder_id == folder.id]
        for name in FOLDER_SEQUENCE:
            if name not in names or name not in allowed:
                continue
            if name == "FolderId":
                _sub(elem, _T(name), Id=folder.id, ChangeKey=folder.change_key)
            elif name == "ParentFolderId" and folder.parent_id:
                parent = self._folders.get(folder.parent_id) or self._folder_tombs[folder.parent_id]
                _sub(elem, _T(name), Id=parent.id, ChangeKey=parent.change_key)
            elif name == "FolderClass" and folder.folder_class:
                _sub(elem, _T(name), folder.folder_class)
            elif name == "DisplayName":
                _sub(elem, _T(name), folder.name)
            elif name == "TotalCount":
                _sub(elem, _T(name), str(len(items)))
            elif name == "ChildFolderCount":
                _sub(elem, _T(name), str(len(self._children_of(folder.id))))
            elif name == "EffectiveRights":
                rights = _sub(elem, _T(name))
                for right in ("CreateAssociated", "CreateContents", "CreateHierarchy"):
                    _sub(rights, _T(right), "true")
                _sub(rights, _T("Delete"), _bool(not folder.distinguished))
                for right in ("Modify", "Read", "ViewPrivateItems"):
                    _sub(rights, _T(right), "true")
            elif name == "DistinguishedFolderId" and folder.distinguished:
                _sub(elem, _T(name), folder.distinguished)
            elif name == "UnreadCount":
                _sub(elem, _T(name), str(sum(1 for i in items if not i.is_read)))
        return elem

    # ---------------------------------------------------------------- sync states

    def _encode_state(self, kind: str, folder_id: str, seq: int) -> str:
        payload = json.dumps([kind, folder_id, seq, self._epoch], separators=(",", ":")).encode()
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]
        return base64.b64encode(gzip.compress(mac + payload, mtime=0)).decode()

    def _decode_state(self, kind: str, folder_id: str, text: str) -> int:
        try:
            raw = gzip.decompress(base64.b64decode(re.sub(r"\s+", "", text), validate=True))
            mac, payload = raw[:16], raw[16:]
            expected = hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]
            if not hmac.compare_digest(mac, expected):
                raise ValueError("bad mac")
            state_kind, state_folder, seq, epoch = json.loads(payload)
        except Exception:
            raise ResponseError("ErrorInvalidSyncStateData") from None
        if (state_kind, state_folder, epoch) != (kind, folder_id, self._epoch):
            raise ResponseError("ErrorInvalidSyncStateData")
        return seq

    # ---------------------------------------------------------------- restrictions and order

    def _prop_value(self, obj, uri: str):
        """The value of a restrictable/sortable property; ErrorUnsupportedQueryFilter if the
        fake cannot evaluate it."""
        if isinstance(obj, _Folder):
            items = [i for i in self._items.values() if i.folder_id == obj.id]
            values = {
                "folder:DisplayName": lambda: obj.name,
                "folder:FolderClass": lambda: obj.folder_class,
                "folder:FolderId": lambda: obj.id,
                "folder:TotalCount": lambda: len(items),
                "folder:ChildFolderCount": lambda: len(self._children_of(obj.id)),
                "folder:UnreadCount": lambda: sum(1 for i in items if not i.is_read),
            }
        else:
            values = {
                "item:Subject": lambda: obj.subject,
                "item:DateTimeReceived": lambda: obj.received,
                "item:DateTimeCreated": lambda: obj.created,
                "item:DateTimeSent": lambda: obj.info.date or obj.received,
                "item:LastModifiedTime": lambda: obj.modified,
                "item:Size": lambda: len(obj.mime),
                "item:ItemClass": lambda: obj.item_class,
                "item:Importance": lambda: obj.importance,
                "item:Sensitivity": lambda: obj.sensitivity,
                "item:IsDraft": lambda: obj.is_draft,
                "item:HasAttachments": lambda: obj.has_attachments,
                "item:ItemId": lambda: obj.id,
                "message:IsRead": lambda: obj.is_read,
                "message:InternetMessageId": lambda: obj.info.message_id,
            }
        if uri not in values:
            raise ResponseError("ErrorUnsupportedQueryFilter", f"FakeEWS cannot evaluate {uri}.")
        return values[uri]()

    def _operand(self, elem, obj):
        if elem.tag == _T("FieldURI"):
            return self._prop_value(obj, _check_field_uri(elem.get("FieldURI"), elem))
        raise ResponseError("ErrorUnsupportedQueryFilter", f"FakeEWS: unsupported {_local(elem)}.")

    @staticmethod
    def _constant(text: str, like):
        if isinstance(like, bool):
            return text.strip() in ("true", "1")
        if isinstance(like, int):
            return int(text)
        if isinstance(like, datetime):
            parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return text

    def _matches(self, elem, obj) -> bool:
        name = _local(elem)
        kids = _children(elem)
        if name == "And":
            return all(self._matches(k, obj) for k in kids)
        if name == "Or":
            return any(self._matches(k, obj) for k in kids)
        if name == "Not":
            return not self._matches(kids[0], obj)
        if name == "Exists":
            return self._operand(kids[0], obj) is not None
        if name in (
            "IsEqualTo",
            "IsNotEqualTo",
            "IsGreaterThan",
            "IsGreaterThanOrEqualTo",
            "IsLessThan",
            "IsLessThanOrEqualTo",
        ):
            left = self._operand(kids[0], obj)
            constant = kids[1].find(_T("Constant")) if len(kids) > 1 else None
            if constant is None:
                raise ResponseError("ErrorUnsupportedQueryFilter", "FakeEWS needs a Constant.")
            if left is None:
                return name == "IsNotEqualTo"
            try:
                right = self._constant(constant.get("Value") or "", left)
            except ValueError:
                raise ResponseError("ErrorInvalidValueForProperty") from None
            if isinstance(left, str):
                left, right = left.casefold(), right.casefold()
            return {
                "IsEqualTo": left == right,
                "IsNotEqualTo": left != right,
                "IsGreaterThan": left > right,
                "IsGreaterThanOrEqualTo": left >= right,
                "IsLessThan": left < right,
                "IsLessThanOrEqualTo": left <= right,
            }[name]
        if name == "Contains":
            left = self._operand(kids[0], obj)
            constant = elem.find(_T("Constant"))
            needle = constant.get("Value") if constant is not None else ""
            if left is None:
                return False
            if elem.get("ContainmentComparison", "Exact") != "Exact":
                left, needle = str(left).casefold(), needle.casefold()
            mode = elem.get("ContainmentMode", "FullString")
            return {
                "FullString": left == needle,
                "Prefixed": str(left).startswith(needle),
                "Substring": needle in str(left),
                "PrefixOnWords": any(w.startswith(needle) for w in str(left).split()),
                "ExactPhrase": needle in str(left),
            }.get(mode, False)
        raise ResponseError("ErrorUnsupportedQueryFilter", f"FakeEWS does not support {name}.")

    def _restrict(self, restriction, objects: list) -> list:
        if restriction is None:
            return objects
        kids = _children(restriction)
        if len(kids) != 1:
            raise SchemaError("'Restriction' must hold one search expression.", restriction)
        return [o for o in objects if self._matches(kids[0], o)]

    @staticmethod
    def _paged(view, objects: list, limit: int) -> tuple[list, dict]:
        offset, maximum, from_end = 0, None, False
        if view is not None:
            if view.tag in (_M("IndexedPageFolderView"), _M("IndexedPageItemView")):
                offset = _parse_int(view.get("Offset"), view, lo=0)
                from_end = (
                    _attr_enum(view, "BasePoint", ("Beginning", "End"), required=True) == "End"
                )
                if view.get("MaxEntriesReturned") is not None:
                    maximum = _parse_int(view.get("MaxEntriesReturned"), view, lo=1)
            else:
                raise ResponseError(
                    "ErrorUnsupportedQueryFilter", f"FakeEWS does not support {_local(view)}."
                )
        maximum = min(maximum or limit, limit)
        total = len(objects)
        if from_end:
            end = max(0, total - offset)
            page = objects[max(0, end - maximum) : end]
        else:
            page = objects[offset : offset + maximum]
        done = (offset + len(page)) >= total
        attrs = {
            "IndexedPagingOffset": str(offset + len(page)),
            "TotalItemsInView": str(total),
            "IncludesLastItemInRange": _bool(done),
        }
        return page, attrs

    # ---------------------------------------------------------------- operations: folders

    def _op_convert_id(self, ctx: _Ctx) -> list:
        formats = ("EwsLegacyId", "EwsId", "EntryId", "HexEntryId", "StoreId", "OwaId")
        dest = _attr_enum(ctx.body, "DestinationFormat", formats, required=True)
        found = _expect(ctx.body, [(_M("SourceIds"), 1, 1)])
        sources = _children(found[_M("SourceIds")][0])
        if not sources:
            raise SchemaError("The element 'SourceIds' has incomplete content.", ctx.body)
        ctx.details["ids"] = [s.get("Id") for s in sources]
        messages = []
        for source in sources:
            try:
                if source.tag != _T("AlternateId"):
                    raise ResponseError("ErrorInvalidIdMalformed")
                _attr_enum(source, "Format", formats, required=True)
                if source.get("Id") is None or source.get("Mailbox") is None:
                    raise SchemaError("AlternateId needs Id and Mailbox.", source)
                value = source.get("Id")
                if source.get("Format") not in ("EwsId", "EwsLegacyId") or not self._id_kind(value):
                    raise ResponseError("ErrorInvalidIdMalformed")
                if source.get("Mailbox").casefold() != self.user.casefold():
                    raise ResponseError("ErrorNonExistentMailbox")
                raw = base64.b64decode(value)
                converted = {
                    "EntryId": base64.b64encode(b"\x00\x00\x00\x00" + raw).decode(),
                    "HexEntryId": ("00000000" + raw.hex()).upper(),
                    "StoreId": base64.b64encode(raw).decode(),
                    "OwaId": base64.b64encode(raw).decode(),
                }.get(dest, value)
                alt = _el(_M("AlternateId"), Format=dest, Id=converted, Mailbox=self.user)
                alt.set("{http://www.w3.org/2001/XMLSchema-instance}type", "t:AlternateIdType")
                messages.append(self._ok("ConvertId", alt))
            except ResponseError as e:
                messages.append(self._error("ConvertId", e))
        return messages

    def _op_get_folder(self, ctx: _Ctx) -> list:
        found = _expect(ctx.body, [(_M("FolderShape"), 1, 1), (_M("FolderIds"), 1, 1)])
        shape = _parse_folder_shape(found[_M("FolderShape")][0])
        ids = self._folder_ids(found[_M("FolderIds")][0])
        ctx.details["ids"] = [self._folder_ref(i) for i in ids]
        ctx.details["fields"] = sorted(shape.uris)
        messages = []
        for ref in ids:
            folders = _el(_M("Folders"))
            try:
                folders.append(self._folder_xml(self._resolve_folder(ref), shape))
                messages.append(self._ok("GetFolder", folders))
            except ResponseError as e:
                messages.append(self._error("GetFolder", e, folders))
        return messages

    def _op_find_folder(self, ctx: _Ctx) -> list:
        traversal = _attr_enum(
            ctx.body, "Traversal", ("Shallow", "Deep", "SoftDeleted"), required=True
        )
        found = _expect(
            ctx.body,
            [
                (_M("FolderShape"), 1, 1),
                (_M("IndexedPageFolderView"), 0, 1),
                (_M("FractionalPageFolderView"), 0, 1),
                (_M("Restriction"), 0, 1),
                (_M("ParentFolderIds"), 1, 1),
            ],
        )
        shape = _parse_folder_shape(found[_M("FolderShape")][0])
        views = found[_M("IndexedPageFolderView")] + found[_M("FractionalPageFolderView")]
        if len(views) > 1:
            raise SchemaError("FindFolder takes one paging view.", views[1])
        view = views[0] if views else None
        restriction = _one(found, _M("Restriction"))
        parents = self._folder_ids(found[_M("ParentFolderIds")][0])
        ctx.details.update(
            parents=[self._folder_ref(p) for p in parents],
            traversal=traversal,
            offset=None if view is None else view.get("Offset"),
            fields=sorted(shape.uris),
        )
        messages = []
        for parent_ref in parents:
            try:
                if "folder:PermissionSet" in shape.uris:
                    raise ResponseError(
                        "ErrorInvalidPropertyRequest",
                        "The property PermissionSet can't be used in FindFolder requests.",
                    )
                parent = self._resolve_folder(parent_ref)
                if traversal == "SoftDeleted":
                    candidates = []
                else:
                    candidates = self._children_of(parent.id, deep=traversal == "Deep")
                matching = self._restrict(restriction, candidates)
                page, attrs = self._paged(view, matching, self.page_size_limit)
                root = _el(_M("RootFolder"), **attrs)
                folders = _sub(root, _T("Folders"))
                for folder in page:
                    folders.append(self._folder_xml(folder, shape))
                messages.append(self._ok("FindFolder", root))
            except ResponseError as e:
                messages.append(self._error("FindFolder", e))
        return messages

    def _in_scope(self, folder_id: str, scope_id: str) -> bool:
        folder = self._folders.get(folder_id) or self._folder_tombs.get(folder_id)
        while folder is not None and folder.parent_id is not None:
            if folder.hidden:
                return False
            if folder.parent_id == scope_id:
                return True
            folder = self._folders.get(folder.parent_id) or self._folder_tombs.get(folder.parent_id)
        return False

    def _op_sync_folder_hierarchy(self, ctx: _Ctx) -> list:
        found = _expect(
            ctx.body,
            [(_M("FolderShape"), 1, 1), (_M("SyncFolderId"), 0, 1), (_M("SyncState"), 0, 1)],
        )
        shape = _parse_folder_shape(found[_M("FolderShape")][0])
        state_elem = _one(found, _M("SyncState"))
        state = (state_elem.text or "").strip() if state_elem is not None else ""
        ctx.details.update(sync_state=state or None, fields=sorted(shape.uris))
        op = "SyncFolderHierarchy"
        try:
            container = _one(found, _M("SyncFolderId"))
            if container is not None:
                scope = self._single_folder(container)
            else:
                scope = self._folder_by_dist("root")
            ctx.details["folder"] = scope.id
            start = self._decode_state("h", scope.id, state) if state else 0
            log = [e for e in self._hier_log if self._in_scope(e[1], scope.id)]
            nets, cut, done = _page(log, start, self.page_size_limit, set())
        except ResponseError as e:
            return [
                self._error(
                    op,
                    e,
                    _el(_M("SyncState")),
                    _el(_M("IncludesLastFolderInRange"), "true"),
                )
            ]
        changes = _el(_M("Changes"))
        counts: dict[str, int] = {}
        for folder_id, net in nets.items():
            change = net.change
            if change is None:
                continue
            counts[change] = counts.get(change, 0) + 1
            if change == "delete":
                _sub(_sub(changes, _T("Delete")), _T("FolderId"), Id=folder_id)
                continue
            folder = self._folders.get(folder_id) or self._folder_tombs[folder_id]
            wrapper = _sub(changes, _T("Create" if change == "create" else "Update"))
            wrapper.append(self._folder_xml(folder, shape))
        ctx.details.update(changes=counts, includes_last=done)
        return [
            self._ok(
                op,
                _el(_M("SyncState"), self._encode_state("h", scope.id, cut)),
                _el(_M("IncludesLastFolderInRange"), _bool(done)),
                changes,
            )
        ]

    def _op_create_folder(self, ctx: _Ctx) -> list:
        found = _expect(ctx.body, [(_M("ParentFolderId"), 1, 1), (_M("Folders"), 1, 1)])
        new_folders = _children(found[_M("Folders")][0])
        if not new_folders:
            raise SchemaError("The element 'Folders' has incomplete content.", ctx.body)
        messages = []
        try:
            parent = self._single_folder(found[_M("ParentFolderId")][0])
        except ResponseError as e:
            return [self._error("CreateFolder", e, _el(_M("Folders"))) for _ in new_folders]
        ctx.details["parent"] = parent.id
        defaults = {
            "Folder": "IPF.Note",
            "CalendarFolder": "IPF.Appointment",
            "ContactsFolder": "IPF.Contact",
            "TasksFolder": "IPF.Task",
            "SearchFolder": None,
        }
        for elem in new_folders:
            if _local(elem) not in FOLDER_TAGS or etree.QName(elem).namespace != TNS:
                raise SchemaError(f"'{_local(elem)}' is not a folder type.", elem)
            folders = _el(_M("Folders"))
            try:
                name_elem = elem.find(_T("DisplayName"))
                class_elem = elem.find(_T("FolderClass"))
                for child in _children(elem):
                    if _local(child) not in ("DisplayName", "FolderClass", "ExtendedProperty"):
                        raise ResponseError(
                            "ErrorInvalidPropertySet", f"FakeEWS cannot set {_local(child)}."
                        )
                if name_elem is None or not (name_elem.text or "").strip():
                    raise ResponseError("ErrorInvalidPropertySet", "DisplayName is required.")
                name = name_elem.text
                if self._child_named(parent.id, name) is not None:
                    raise ResponseError("ErrorFolderExists")
                folder_class = class_elem.text if class_elem is not None else None
                folder = self._create_folder(
                    parent.id, name, folder_class or defaults[_local(elem)]
                )
                _sub(
                    _sub(folders, _T(_local(elem))),
                    _T("FolderId"),
                    Id=folder.id,
                    ChangeKey=folder.change_key,
                )
                messages.append(self._ok("CreateFolder", folders))
            except ResponseError as e:
                messages.append(self._error("CreateFolder", e, folders))
        return messages

    def _op_update_folder(self, ctx: _Ctx) -> list:
        found = _expect(ctx.body, [(_M("FolderChanges"), 1, 1)])
        changes = _children(found[_M("FolderChanges")][0])
        if not changes:
            raise SchemaError("The element 'FolderChanges' has incomplete content.", ctx.body)
        messages = []
        for change in changes:
            if change.tag != _T("FolderChange"):
                raise SchemaError(f"Invalid child element '{_local(change)}'.", change)
            kids = _children(change)
            if len(kids) != 2 or kids[1].tag != _T("Updates") or not _children(kids[1]):
                raise SchemaError("FolderChange needs a folder id and Updates.", change)
            folders = _el(_M("Folders"))
            try:
                folder = self._resolve_folder(kids[0])
                new_name = None
                for update in _children(kids[1]):
                    path = _children(update)[0] if _children(update) else None
                    if path is None or path.tag != _T("FieldURI"):
                        raise ResponseError(
                            "ErrorInvalidPropertySet", "FakeEWS updates folder:DisplayName only."
                        )
                    uri = _check_field_uri(path.get("FieldURI"), path)
                    if _local(update) == "DeleteFolderField" and uri == "folder:PermissionSet":
                        continue
                    value = _children(update)[1] if len(_children(update)) > 1 else None
                    props = _children(value) if value is not None else []
                    if uri == "folder:FolderClass" and len(props) == 1:
                        if props[0].text != folder.folder_class:
                            raise ResponseError("ErrorInvalidPropertySet")
                        continue
                    if uri != "folder:DisplayName" or _local(update) != "SetFolderField":
                        raise ResponseError(
                            "ErrorInvalidPropertySet", f"FakeEWS cannot update {uri}."
                        )
                    if len(props) != 1:
                        raise ResponseError("ErrorIncorrectUpdatePropertyCount")
                    if props[0].tag != _T("DisplayName"):
                        raise ResponseError("ErrorUpdatePropertyMismatch")
                    new_name = props[0].text or ""
                if new_name is not None and new_name != folder.name:
                    self._rename_folder(folder, new_name)
                _sub(
                    _sub(folders, _T(folder.tag)),
                    _T("FolderId"),
                    Id=folder.id,
                    ChangeKey=folder.change_key,
                )
                messages.append(self._ok("UpdateFolder", folders))
            except ResponseError as e:
                messages.append(self._error("UpdateFolder", e, folders))
        return messages

    def _op_delete_folder(self, ctx: _Ctx) -> list:
        delete_type = _attr_enum(
            ctx.body,
            "DeleteType",
            ("HardDelete", "SoftDelete", "MoveToDeletedItems"),
            required=True,
        )
        found = _expect(ctx.body, [(_M("FolderIds"), 1, 1)])
        ids = self._folder_ids(found[_M("FolderIds")][0])
        ctx.details.update(delete_type=delete_type, ids=[self._folder_ref(i) for i in ids])
        messages = []
        for ref in ids:
            try:
                folder = self._resolve_folder(ref)
                if folder.distinguished:
                    raise ResponseError("ErrorDeleteDistinguishedFolder")
                if delete_type == "MoveToDeletedItems":
                    raise ResponseError(
                        "ErrorInvalidOperation", "FakeEWS does not move folders; use HardDelete."
                    )
                self._remove_folder(folder)
                messages.append(self._ok("DeleteFolder"))
            except ResponseError as e:
                messages.append(self._error("DeleteFolder", e))
        return messages

    # ---------------------------------------------------------------- operations: items

    def _op_get_item(self, ctx: _Ctx) -> list:
        found = _expect(ctx.body, [(_M("ItemShape"), 1, 1), (_M("ItemIds"), 1, 1)])
        shape = _parse_item_shape(found[_M("ItemShape")][0])
        ids = self._item_ids(found[_M("ItemIds")][0])
        ctx.details.update(
            ids=[i.get("Id") for i in ids],
            shape=shape.base,
            mime=shape.mime,
            fields=sorted(shape.uris),
            extended=[dict(e.attrs) for e in shape.exts],
        )
        messages = []
        for ref in ids:
            items = _el(_M("Items"))
            try:
                item = self._resolve_item(ref)
                failure = self._failures.get(item.id)
                if failure and (failure != "ErrorMimeContentConversionFailed" or shape.mime):
                    raise ResponseError(failure)
                items.append(self._item_xml(item, shape, "get"))
                messages.append(self._ok("GetItem", items))
            except ResponseError as e:
                messages.append(self._error("GetItem", e, items))
        return messages

    def _op_find_item(self, ctx: _Ctx) -> list:
        traversal = _attr_enum(
            ctx.body, "Traversal", ("Shallow", "SoftDeleted", "Associated"), required=True
        )
        found = _expect(
            ctx.body,
            [
                (_M("ItemShape"), 1, 1),
                (_M("IndexedPageItemView"), 0, 1),
                (_M("FractionalPageItemView"), 0, 1),
                (_M("SeekToConditionPageItemView"), 0, 1),
                (_M("CalendarView"), 0, 1),
                (_M("ContactsView"), 0, 1),
                (_M("GroupBy"), 0, 1),
                (_M("DistinguishedGroupBy"), 0, 1),
                (_M("Restriction"), 0, 1),
                (_M("SortOrder"), 0, 1),
                (_M("ParentFolderIds"), 1, 1),
                (_M("QueryString"), 0, 1),
            ],
        )
        shape = _parse_item_shape(found[_M("ItemShape")][0])
        views = [
            v
            for tag in (
                "IndexedPageItemView",
                "FractionalPageItemView",
                "SeekToConditionPageItemView",
                "CalendarView",
                "ContactsView",
            )
            for v in found[_M(tag)]
        ]
        if len(views) > 1:
            raise SchemaError("FindItem takes one paging view.", views[1])
        view = views[0] if views else None
        parents = self._folder_ids(found[_M("ParentFolderIds")][0])
        ctx.details.update(
            parents=[self._folder_ref(p) for p in parents],
            traversal=traversal,
            fields=sorted(shape.uris),
            offset=None if view is None else view.get("Offset"),
        )
        messages = []
        for parent_ref in parents:
            try:
                unsupported = [
                    found[_M(t)] for t in ("GroupBy", "DistinguishedGroupBy", "QueryString")
                ]
                if any(unsupported):
                    raise ResponseError(
                        "ErrorUnsupportedQueryFilter", "FakeEWS does not group or QueryString."
                    )
                bad = sorted(u for u in shape.uris if u.split(":", 1)[1] in NOT_IN_FIND)
                if bad or shape.mime:
                    raise ResponseError(
                        "ErrorInvalidPropertyRequest",
                        f"The property {(bad or ['item:MimeContent'])[0]} can't be used in "
                        "FindItem requests.",
                    )
                folder = self._resolve_folder(parent_ref)
                candidates = []
                if traversal == "Shallow":
                    candidates = [i for i in self._items.values() if i.folder_id == folder.id]
                candidates = self._restrict(_one(found, _M("Restriction")), candidates)
                candidates = self._sorted(_one(found, _M("SortOrder")), candidates)
                page, attrs = self._paged(view, candidates, self.page_size_limit)
                root = _el(_M("RootFolder"), **attrs)
                items = _sub(root, _T("Items"))
                for item in page:
                    items.append(self._item_xml(item, shape, "find"))
                messages.append(self._ok("FindItem", root))
            except ResponseError as e:
                messages.append(self._error("FindItem", e))
        return messages

    def _sorted(self, order, items: list) -> list:
        if order is None:
            return sorted(items, key=lambda i: (i.received, i.created), reverse=True)
        result = sorted(items, key=lambda i: (i.received, i.created))
        for field_order in reversed(_children(order)):
            kids = _children(field_order)
            if field_order.tag != _T("FieldOrder") or len(kids) != 1:
                raise SchemaError("SortOrder holds FieldOrder elements.", field_order)
            descending = (
                _attr_enum(field_order, "Order", ("Ascending", "Descending"), required=True)
                == "Descending"
            )
            if kids[0].tag != _T("FieldURI"):
                raise ResponseError("ErrorUnsupportedQueryFilter", "FakeEWS sorts on FieldURI.")
            uri = _check_field_uri(kids[0].get("FieldURI"), kids[0])
            keyed = [(self._prop_value(i, uri), i) for i in result]
            present = sorted((p for p in keyed if p[0] is not None), key=lambda p: p[0])
            absent = [p for p in keyed if p[0] is None]
            ordered = present + absent if not descending else absent + present
            result = [i for _, i in (reversed(ordered) if descending else ordered)]
        return result

    def _op_sync_folder_items(self, ctx: _Ctx) -> list:
        found = _expect(
            ctx.body,
            [
                (_M("ItemShape"), 1, 1),
                (_M("SyncFolderId"), 1, 1),
                (_M("SyncState"), 0, 1),
                (_M("Ignore"), 0, 1),
                (_M("MaxChangesReturned"), 1, 1),
                (_M("SyncScope"), 0, 1),
            ],
        )
        shape = _parse_item_shape(found[_M("ItemShape")][0])
        max_elem = found[_M("MaxChangesReturned")][0]
        max_changes = _parse_int(max_elem.text, max_elem, lo=1, hi=512)
        if found[_M("SyncScope")]:
            _text_enum(found[_M("SyncScope")][0], ("NormalItems", "NormalAndAssociatedItems"))
        ignore = set()
        if found[_M("Ignore")]:
            ignore = {i.get("Id") for i in self._item_ids(found[_M("Ignore")][0])}
        state_elem = _one(found, _M("SyncState"))
        state = (state_elem.text or "").strip() if state_elem is not None else ""
        ctx.details.update(
            sync_state=state or None,
            max_changes=max_changes,
            shape=shape.base,
            fields=sorted(shape.uris),
            extended=[dict(e.attrs) for e in shape.exts],
        )
        op = "SyncFolderItems"
        try:
            folder = self._single_folder(found[_M("SyncFolderId")][0])
            ctx.details["folder"] = folder.id
            start = self._decode_state("i", folder.id, state) if state else 0
            limit = min(max_changes, self.page_size_limit)
            nets, cut, done = _page(self._item_logs[folder.id], start, limit, ignore)
        except ResponseError as e:
            return [
                self._error(op, e, _el(_M("SyncState")), _el(_M("IncludesLastItemInRange"), "true"))
            ]
        changes = _el(_M("Changes"))
        counts: dict[str, int] = {}
        for item_id, net in nets.items():
            change = net.change
            if change is None or item_id in ignore:
                continue
            counts[change] = counts.get(change, 0) + 1
            item = self._items.get(item_id) or self._item_tombs[item_id]
            if change == "delete":
                _sub(_sub(changes, _T("Delete")), _T("ItemId"), Id=item_id)
            elif change == "read":
                wrapper = _sub(changes, _T("ReadFlagChange"))
                _sub(wrapper, _T("ItemId"), Id=item.id, ChangeKey=item.change_key)
                _sub(wrapper, _T("IsRead"), _bool(net.read_value))
            else:
                wrapper = _sub(changes, _T("Create" if change == "create" else "Update"))
                wrapper.append(self._item_xml(item, shape, "sync"))
        ctx.details.update(changes=counts, includes_last=done)
        return [
            self._ok(
                op,
                _el(_M("SyncState"), self._encode_state("i", folder.id, cut)),
                _el(_M("IncludesLastItemInRange"), _bool(done)),
                changes,
            )
        ]

    # ---------------------------------------------------------------- property values

    def _ext_from_elem(self, prop) -> tuple[ExtUri, object]:
        kids = _children(prop)
        if not kids or kids[0].tag != _T("ExtendedFieldURI") or len(kids) != 2:
            raise SchemaError("ExtendedProperty needs ExtendedFieldURI and Value(s).", prop)
        ext = _parse_ext_uri(kids[0])
        if ext.is_array:
            if kids[1].tag != _T("Values"):
                raise SchemaError("An array property needs Values.", kids[1])
            value: object = [v.text or "" for v in _children(kids[1])]
            samples = value
        else:
            if kids[1].tag != _T("Value"):
                raise SchemaError("A single-valued property needs Value.", kids[1])
            value = kids[1].text or ""
            samples = [value]
        base = ext.ptype.removesuffix("Array")
        for sample in samples:
            try:
                if base in ("Integer", "Long", "Short", "Currency"):
                    int(sample)
                elif base == "Boolean":
                    _parse_bool(sample, kids[1])
                elif base == "SystemTime":
                    _parse_datetime(sample, kids[1])
                elif base == "Binary":
                    _parse_base64(sample, kids[1])
            except (ValueError, SchemaError):
                raise ResponseError(
                    "ErrorInvalidValueForProperty", f"{sample!r} is not a valid {base}."
                ) from None
        if base in ("Integer", "Long", "Short", "Currency") and not ext.is_array:
            value = str(int(value))
        return ext, value

    def _set_ext(self, item: _Item, ext: ExtUri, value, *, creating: bool) -> None:
        if ext.tag == TAG_DELIVERY_TIME and ext.ptype == "SystemTime":
            # Exchange takes PR_MESSAGE_DELIVERY_TIME as DateTimeReceived when an item is
            # created (how importers keep arrival dates); afterwards it is read-only.
            if not creating:
                raise ResponseError(
                    "ErrorInvalidPropertySet", "PR_MESSAGE_DELIVERY_TIME is read-only."
                )
            if value is not None:
                item.received = _parse_datetime(value, None).astimezone(UTC).replace(microsecond=0)
            return
        if ext.tag is not None and ext.ptype == "Integer":
            if ext.tag == TAG_MESSAGE_FLAGS:
                if not creating:
                    raise ResponseError(
                        "ErrorInvalidPropertySet", "PR_MESSAGE_FLAGS is read-only after creation."
                    )
                flags = int(value) if value is not None else 0
                item.is_draft = bool(flags & MSGFLAG_UNSENT)
                item.is_read = bool(flags & MSGFLAG_READ)
                return
            if ext.tag == TAG_MESSAGE_SIZE:
                raise ResponseError("ErrorInvalidPropertySet", "PR_MESSAGE_SIZE is read-only.")
            if ext.tag == TAG_LAST_VERB:
                item.last_verb = None if value is None else int(value)
                return
            if ext.tag == TAG_FLAG_STATUS:
                status = {None: "NotFlagged", 0: "NotFlagged", 1: "Complete", 2: "Flagged"}
                number = None if value is None else int(value)
                if number not in status:
                    raise ResponseError("ErrorInvalidValueForProperty", "PR_FLAG_STATUS is 0-2.")
                item.flag = status[number]
                return
        if value is None:
            item.extended.pop(ext.key, None)
        else:
            item.extended[ext.key] = (ext, value)

    def _set_prop(self, item: _Item, prop, *, creating: bool) -> None:
        """Apply one property element of a Message to item."""
        name = _local(prop)
        if name == "ExtendedProperty":
            ext, value = self._ext_from_elem(prop)
            self._set_ext(item, ext, value, creating=creating)
        elif name == "IsRead":
            item.is_read = _parse_bool(prop.text, prop)
        elif name == "Categories":
            strings = _children(prop)
            if any(s.tag != _T("String") for s in strings):
                raise SchemaError("Categories holds String elements.", prop)
            item.categories = [s.text or "" for s in strings]
        elif name == "Importance":
            item.importance = _text_enum(prop, ("Low", "Normal", "High"))
        elif name == "Sensitivity":
            item.sensitivity = _text_enum(prop, ("Normal", "Personal", "Private", "Confidential"))
        elif name == "Flag":
            found = _expect(
                prop,
                [
                    (_T("FlagStatus"), 1, 1),
                    (_T("StartDate"), 0, 1),
                    (_T("DueDate"), 0, 1),
                    (_T("CompleteDate"), 0, 1),
                ],
            )
            item.flag = _text_enum(found[_T("FlagStatus")][0], FLAG_STATUSES)
        elif name in (
            "ReminderIsSet",
            "IsReadReceiptRequested",
            "IsDeliveryReceiptRequested",
            "IsResponseRequested",
        ):
            item.misc[name] = _bool(_parse_bool(prop.text, prop))
        elif name == "ReminderMinutesBeforeStart":
            item.misc[name] = str(_parse_int(prop.text, prop))
        elif name == "ReminderDueBy":
            item.misc[name] = _iso(_parse_datetime(prop.text, prop))
        elif name == "Culture":
            item.misc[name] = (prop.text or "").strip()
        elif creating and name == "ItemClass":
            item.item_class = (prop.text or "").strip() or "IPM.Note"
        elif creating and name == "Subject":
            item.subject_override = prop.text or ""
        elif creating and name in CREATE_SETTABLE:
            pass  # consumed by _op_create_item (MIME and the MIME-derived properties)
        else:
            raise ResponseError(
                "ErrorInvalidPropertySet",
                f"Set action is invalid for property {name}"
                + ("." if creating else " (FakeEWS does not update it)."),
            )

    # ---------------------------------------------------------------- operations: item writes

    def _op_create_item(self, ctx: _Ctx) -> list:
        disposition = _attr_enum(
            ctx.body, "MessageDisposition", ("SaveOnly", "SendOnly", "SendAndSaveCopy")
        )
        _attr_enum(
            ctx.body,
            "SendMeetingInvitations",
            ("SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy"),
        )
        found = _expect(ctx.body, [(_M("SavedItemFolderId"), 0, 1), (_M("Items"), 1, 1)])
        new_items = _children(found[_M("Items")][0])
        if not new_items:
            raise SchemaError("The element 'Items' has incomplete content.", ctx.body)
        for elem in new_items:  # schema checks first: a fault must not follow side effects
            if etree.QName(elem).namespace != TNS:
                raise SchemaError(f"'{_local(elem)}' is not an item type.", elem)
            if _local(elem) in ("Message", "Item"):
                self._check_message_order(elem)
                self._dry_run(lambda e=elem: self._create_from_xml(e, None, "SaveOnly"))
        ctx.details.update(disposition=disposition, count=len(new_items), ids=[])
        saved = _one(found, _M("SavedItemFolderId"))
        messages = []
        for elem in new_items:
            items = _el(_M("Items"))
            try:
                if _local(elem) not in ("Message", "Item"):
                    raise ResponseError(
                        "ErrorInvalidItemForOperationCreateItem",
                        f"FakeEWS's CreateItem does not create {_local(elem)} items.",
                    )
                if disposition is None:
                    raise ResponseError("ErrorMessageDispositionRequired")
                if saved is not None:
                    folder = self._single_folder(saved)
                elif disposition == "SaveOnly":
                    folder = self._folder_by_dist("drafts")
                else:
                    folder = self._folder_by_dist("sentitems")
                item = self._create_from_xml(elem, folder, disposition)
                if item is not None:
                    ctx.details["ids"].append(item.id)
                    _sub(
                        _sub(items, _T(_local(elem))),
                        _T("ItemId"),
                        Id=item.id,
                        ChangeKey=item.change_key,
                    )
                ctx.details["folder"] = folder.id
                messages.append(self._ok("CreateItem", items))
            except ResponseError as e:
                messages.append(self._error("CreateItem", e, items))
        return messages

    @staticmethod
    def _check_message_order(elem) -> None:
        last = -1
        for child in _children(elem):
            pos = _MESSAGE_POS.get(_local(child))
            if etree.QName(child).namespace != TNS or pos is None or pos < last:
                raise SchemaError(
                    f"The element '{_local(elem)}' in namespace '{TNS}' has invalid child "
                    f"element '{_local(child)}'.",
                    child,
                )
            if pos == last and _local(child) != "ExtendedProperty":
                raise SchemaError(f"Duplicate element '{_local(child)}'.", child)
            last = pos

    @staticmethod
    def _blank_item() -> _Item:
        now = _now()
        return _Item(
            id="", change_key="", folder_id="", mime=b"", received=now, created=now, modified=now
        )

    @staticmethod
    def _dry_run(action: Callable[[], object]) -> None:
        """Run a parse on a throwaway object to raise its SchemaErrors before any state changes;
        per-item ResponseErrors are reported later, in order."""
        try:
            action()
        except ResponseError:
            pass

    def _create_from_xml(self, elem, folder: _Folder | None, disposition: str) -> _Item | None:
        """Create the message described by elem in folder; with folder None, only parse it."""
        props = _children(elem)
        mime_elem = elem.find(_T("MimeContent"))
        draft = self._blank_item()
        for prop in props:
            if _local(prop) not in CREATE_SETTABLE:
                raise ResponseError(
                    "ErrorInvalidPropertySet", f"Set action is invalid for property {_local(prop)}."
                )
        has_flags = any(
            _local(p) == "ExtendedProperty"
            and _children(p)
            and _parse_ext_uri(_children(p)[0]).key == ("tag", TAG_MESSAGE_FLAGS, "Integer")
            for p in props
        )
        draft.is_draft = self.drafts_by_default and not has_flags
        # PR_MESSAGE_FLAGS first, so that an explicit IsRead wins over its read bit.
        ordered = sorted(props, key=lambda p: _local(p) != "ExtendedProperty")
        for prop in ordered:
            self._set_prop(draft, prop, creating=True)
        if mime_elem is not None:
            mime = _parse_base64(mime_elem.text, mime_elem)
        else:
            body = elem.find(_T("Body"))
            mime = _minimal_mime(draft.subject_override, body)
        if folder is None:
            return None
        if disposition != "SaveOnly":
            self.sent.append(mime)
            if disposition == "SendOnly":
                return None
            draft.is_draft, draft.is_read = False, True
        item = self._new_item(
            folder,
            mime,
            received=draft.received,  # now, or PR_MESSAGE_DELIVERY_TIME
            **{
                name: getattr(draft, name)
                for name in (
                    "is_read",
                    "flag",
                    "categories",
                    "is_draft",
                    "last_verb",
                    "importance",
                    "sensitivity",
                    "item_class",
                    "subject_override",
                    "misc",
                    "extended",
                )
            },
        )
        return None if disposition != "SaveOnly" else item

    def _op_update_item(self, ctx: _Ctx) -> list:
        conflict = _attr_enum(
            ctx.body,
            "ConflictResolution",
            ("NeverOverwrite", "AutoResolve", "AlwaysOverwrite"),
            required=True,
        )
        disposition = _attr_enum(
            ctx.body, "MessageDisposition", ("SaveOnly", "SendOnly", "SendAndSaveCopy")
        )
        _attr_enum(
            ctx.body,
            "SendMeetingInvitationsOrCancellations",
            (
                "SendToNone",
                "SendOnlyToAll",
                "SendOnlyToChanged",
                "SendToAllAndSaveCopy",
                "SendToChangedAndSaveCopy",
            ),
        )
        if ctx.body.get("SuppressReadReceipts") is not None:
            _parse_bool(ctx.body.get("SuppressReadReceipts"), ctx.body)
        found = _expect(ctx.body, [(_M("SavedItemFolderId"), 0, 1), (_M("ItemChanges"), 1, 1)])
        changes = _children(found[_M("ItemChanges")][0])
        if not changes:
            raise SchemaError("The element 'ItemChanges' has incomplete content.", ctx.body)
        parsed = []
        for change in changes:
            if change.tag != _T("ItemChange"):
                raise SchemaError(f"Invalid child element '{_local(change)}'.", change)
            kids = _children(change)
            if len(kids) != 2 or kids[1].tag != _T("Updates") or not _children(kids[1]):
                raise SchemaError("ItemChange needs an item id and Updates.", change)
            if kids[0].tag not in (
                _T("ItemId"),
                _T("OccurrenceItemId"),
                _T("RecurringMasterItemId"),
            ):
                raise SchemaError(f"'{_local(kids[0])}' is not an item id.", kids[0])
            if kids[0].tag == _T("ItemId") and kids[0].get("Id") is None:
                raise SchemaError("The required attribute 'Id' is missing.", kids[0])
            updates = [self._parse_update(u) for u in _children(kids[1])]
            blank = self._blank_item()
            for action, path, value in updates:  # schema checks before any change is applied
                self._dry_run(
                    lambda b=blank, a=action, p=path, v=value: self._apply_update(b, a, p, v)
                )
            parsed.append((kids[0], updates))
        ctx.details.update(
            conflict_resolution=conflict,
            items=[(ref.get("Id"), ref.get("ChangeKey")) for ref, _ in parsed],
            fields=sorted({_path_name(path) for _, updates in parsed for _, path, _ in updates}),
        )
        messages = []
        for ref, updates in parsed:
            items = _el(_M("Items"))
            try:
                item = self._resolve_item(ref)
                if disposition is None:
                    raise ResponseError("ErrorMessageDispositionRequired")
                if disposition != "SaveOnly":
                    raise ResponseError(
                        "ErrorInvalidOperation", "FakeEWS does not send from UpdateItem."
                    )
                if conflict == "NeverOverwrite":
                    if ref.get("ChangeKey") is None:
                        raise ResponseError("ErrorChangeKeyRequiredForWriteOperations")
                    if ref.get("ChangeKey") != item.change_key:
                        raise ResponseError("ErrorIrresolvableConflict")
                work = copy.deepcopy(item)
                for action, path, value in updates:
                    self._apply_update(work, action, path, value)
                for name in (
                    "is_read",
                    "flag",
                    "categories",
                    "last_verb",
                    "importance",
                    "sensitivity",
                    "misc",
                    "extended",
                ):
                    setattr(item, name, getattr(work, name))
                only_read = all(path == "message:IsRead" for _, path, _ in updates)
                self._touch_item(item, "read" if only_read else "update")
                _sub(
                    _sub(items, _T("Message")), _T("ItemId"), Id=item.id, ChangeKey=item.change_key
                )
                conflicts = _el(_M("ConflictResults"))
                _sub(conflicts, _T("Count"), "0")
                messages.append(self._ok("UpdateItem", items, conflicts))
            except ResponseError as e:
                messages.append(self._error("UpdateItem", e, items))
        return messages

    def _parse_update(self, update) -> tuple[str, str, object]:
        """(action, path, value element) of a Set/Append/DeleteItemField element."""
        action = _local(update)
        if action not in ("SetItemField", "AppendToItemField", "DeleteItemField"):
            raise SchemaError(f"Invalid child element '{action}' in Updates.", update)
        kids = _children(update)
        want = 1 if action == "DeleteItemField" else 2
        if len(kids) != want:
            raise SchemaError(f"'{action}' has invalid content.", update)
        path_elem = kids[0]
        if path_elem.tag == _T("FieldURI"):
            path: object = _check_field_uri(path_elem.get("FieldURI"), path_elem)
        elif path_elem.tag == _T("ExtendedFieldURI"):
            path = _parse_ext_uri(path_elem)
        elif path_elem.tag == _T("IndexedFieldURI"):
            path = "indexed:" + (path_elem.get("FieldURI") or "")
        else:
            raise SchemaError(f"'{_local(path_elem)}' is not a property path.", path_elem)
        value = kids[1] if want == 2 else None
        item_types = ("Item", "Message", "Request", "Response", "Cancellation")
        if value is not None and (
            etree.QName(value).namespace != TNS or not _local(value).endswith(item_types)
        ):
            raise SchemaError(f"'{_local(value)}' is not an item type.", value)
        return action, path, value

    def _apply_update(self, item: _Item, action: str, path, value) -> None:
        if action == "AppendToItemField":
            raise ResponseError("ErrorInvalidPropertySet", "FakeEWS does not append to fields.")
        if isinstance(path, ExtUri):
            if action == "DeleteItemField":
                self._set_ext(item, path, None, creating=False)
                return
            props = _children(value)
            if len(props) != 1:
                raise ResponseError("ErrorIncorrectUpdatePropertyCount")
            if props[0].tag != _T("ExtendedProperty"):
                raise ResponseError("ErrorUpdatePropertyMismatch")
            ext, new = self._ext_from_elem(props[0])
            if ext.key != path.key:
                raise ResponseError("ErrorUpdatePropertyMismatch")
            self._set_ext(item, ext, new, creating=False)
            return
        name = path.split(":", 1)[1]
        if path.startswith("indexed:") or name not in UPDATABLE:
            raise ResponseError(
                "ErrorInvalidPropertySet",
                f"Set action is invalid for property {path} (FakeEWS does not update it).",
            )
        if action == "DeleteItemField":
            if name in UNDELETABLE:
                raise ResponseError("ErrorInvalidPropertyDelete")
            if name == "Categories":
                item.categories = []
            elif name == "Flag":
                item.flag = "NotFlagged"
            else:
                item.misc.pop(name, None)
            return
        props = _children(value)
        if len(props) != 1:
            raise ResponseError("ErrorIncorrectUpdatePropertyCount")
        if _local(props[0]) != name:
            raise ResponseError("ErrorUpdatePropertyMismatch")
        self._set_prop(item, props[0], creating=False)

    def _op_delete_item(self, ctx: _Ctx) -> list:
        delete_type = _attr_enum(
            ctx.body,
            "DeleteType",
            ("HardDelete", "SoftDelete", "MoveToDeletedItems"),
            required=True,
        )
        _attr_enum(
            ctx.body,
            "SendMeetingCancellations",
            ("SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy"),
        )
        _attr_enum(
            ctx.body, "AffectedTaskOccurrences", ("AllOccurrences", "SpecifiedOccurrenceOnly")
        )
        if ctx.body.get("SuppressReadReceipts") is not None:
            _parse_bool(ctx.body.get("SuppressReadReceipts"), ctx.body)
        found = _expect(ctx.body, [(_M("ItemIds"), 1, 1)])
        ids = self._item_ids(found[_M("ItemIds")][0])
        ctx.details.update(delete_type=delete_type, ids=[i.get("Id") for i in ids], new_ids=[])
        messages = []
        deleted_items = self._folder_by_dist("deleteditems")
        dumpster = self._folder_by_dist("recoverableitemsdeletions")
        for ref in ids:
            try:
                item = self._resolve_item(ref)
                if delete_type == "HardDelete" or item.folder_id == dumpster.id:
                    self._remove_item(item)
                    ctx.details["new_ids"].append(None)
                else:
                    to_trash = delete_type == "MoveToDeletedItems"
                    target = deleted_items if to_trash else dumpster
                    if item.folder_id == deleted_items.id:
                        target = dumpster
                    ctx.details["new_ids"].append(self._move_item(item, target).id)
                messages.append(self._ok("DeleteItem"))
            except ResponseError as e:
                messages.append(self._error("DeleteItem", e))
        return messages

    def _op_move_item(self, ctx: _Ctx, copy_only: bool = False) -> list:
        op = "CopyItem" if copy_only else "MoveItem"
        if ctx.body.get("ReturnNewItemIds") is not None:
            return_ids = _parse_bool(ctx.body.get("ReturnNewItemIds"), ctx.body)
        else:
            return_ids = True
        found = _expect(ctx.body, [(_M("ToFolderId"), 1, 1), (_M("ItemIds"), 1, 1)])
        ids = self._item_ids(found[_M("ItemIds")][0])
        ctx.details.update(ids=[i.get("Id") for i in ids], new_ids=[])
        messages = []
        try:
            dest = self._single_folder(found[_M("ToFolderId")][0])
            ctx.details["to_folder"] = dest.id
        except ResponseError as e:
            return [self._error(op, e, _el(_M("Items"))) for _ in ids]
        for ref in ids:
            items = _el(_M("Items"))
            try:
                item = self._resolve_item(ref)
                moved = self._move_item(item, dest, copy_only=copy_only)
                ctx.details["new_ids"].append(moved.id)
                if return_ids:
                    _sub(
                        _sub(items, _T("Message")),
                        _T("ItemId"),
                        Id=moved.id,
                        ChangeKey=moved.change_key,
                    )
                messages.append(self._ok(op, items))
            except ResponseError as e:
                messages.append(self._error(op, e, items))
        return messages

    def _op_copy_item(self, ctx: _Ctx) -> list:
        return self._op_move_item(ctx, copy_only=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    # The headers and the body of a response are two writes: with Nagle's algorithm the
    # body waits for the client's delayed ACK of the headers, 40 ms a request.
    disable_nagle_algorithm = True
    fake: FakeEWS

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
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "text/html")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-AspNet-Version", "4.0.30319")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - the base class's naming
        self.fake._handle_http(self)

    def do_GET(self) -> None:  # noqa: N802
        self.reply(405, b"<html><body>405 - Method Not Allowed</body></html>", {"Allow": "POST"})

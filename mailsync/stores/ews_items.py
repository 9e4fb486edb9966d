"""Exchange items as mailsync sees them through exchangelib: exchangelib loaded once (the
MAPI properties this store reads and writes registered on Message, an HTTP adapter that
trusts a store's own cafile=, throttling notes routed to our log); flags <-> item
properties; a new message from MIME; exchangelib's errors as mailsync's.

Flags: IsRead <-> \\Seen, the follow-up flag (PR_FLAG_STATUS) <-> \\Flagged,
PR_LAST_VERB_EXECUTED (reply / forward) <-> \\Answered / $Forwarded, categories <->
keywords; the arrival date is DateTimeReceived.  New messages are created from their
MIME with their read state (PR_MESSAGE_FLAGS, so they are not drafts), flags and
original delivery time (PR_MESSAGE_DELIVERY_TIME).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from mailsync.errors import FolderError, MailsyncError, RefusedError, StoreError
from mailsync.message import ANSWERED, FLAGGED, FORWARDED, SEEN, Body, to_crlf
from mailsync.net import Endpoint

log = logging.getLogger("mailsync")

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
# PR_LAST_VERB_EXECUTED values (MS-OXOMSG 2.2.1.29)
VERB_REPLY, VERB_REPLY_ALL, VERB_FORWARD = 102, 103, 104
FLAG_STATUS_FLAGGED = 2  # PR_FLAG_STATUS: 0 none, 1 complete, 2 flagged
MSGFLAG_READ = 0x1  # PR_MESSAGE_FLAGS; without MSGFLAG_UNSENT (0x8) it is no draft

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


def _adapter_class(base: Any) -> Any:
    """An HTTP adapter that adds a store's cafile= to the requests for its endpoint, and
    leaves certificate checks on for everything (never process-wide verify=False)."""
    if getattr(base, "_mailsync", False):
        return base

    class CAFileAdapter(base):
        _mailsync = True

        def send(self, request: Any, **kwargs: Any) -> Any:
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


def new_message(exl, account, folder, data: Body, flags: frozenset[str], arrival: float):
    """An exchangelib Message to create in `folder` from MIME `data`, with these flags as
    its properties and `arrival` as its delivery time (not saved yet)."""
    message = exl.Message(
        account=account,
        folder=folder,
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
    return message


def set_flag_fields(message, add: frozenset[str], remove: frozenset[str], categories: set[str]):
    """Set on `message` the fields that adding `add` and removing `remove` change, and
    return their names (UpdateItem's update_fields).  `categories`: the item's categories
    now, which keywords are merged into."""
    keywords_add, keywords_remove = _keywords(add), _keywords(remove)
    fields = []
    if SEEN in add or SEEN in remove:
        message.is_read = SEEN in add
        fields.append("is_read")
    if FLAGGED in add or FLAGGED in remove:
        message.ms_flag_status = FLAG_STATUS_FLAGGED if FLAGGED in add else None
        fields.append("ms_flag_status")
    if {ANSWERED, FORWARDED} & (add | remove):
        # One property holds both: the last verb.  The engine names in `add` each of the
        # two that is to stay (Folder.exclusive_flags); with neither there, none is left.
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
    return fields

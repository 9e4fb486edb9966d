"""The fake EWS server (fakeews.py), driven by the real exchangelib client."""

import datetime
import ipaddress
import ssl
import time

import pytest
import requests
from exchangelib import (
    BASIC,
    DELEGATE,
    Account,
    Build,
    Configuration,
    Credentials,
    ItemId,
    Message,
    Version,
)
from exchangelib.errors import (
    ErrorChangeKeyRequiredForWriteOperations,
    ErrorFolderNotFound,
    ErrorInvalidIdMalformed,
    ErrorInvalidPropertySet,
    ErrorInvalidSyncStateData,
    ErrorIrresolvableConflict,
    ErrorItemNotFound,
    ErrorMimeContentConversionFailed,
    ErrorSchemaValidation,
    ErrorServerBusy,
    MalformedResponseError,
    UnauthorizedError,
)
from exchangelib.ewsdatetime import UTC
from exchangelib.extended_properties import ExtendedProperty, Flag
from exchangelib.folders import Folder, Inbox
from exchangelib.items import ID_ONLY, NEVER_OVERWRITE
from exchangelib.properties import FolderId
from exchangelib.protocol import FaultTolerance, close_connections
from exchangelib.services import SyncFolderItems, UpdateItem
from fakeews import FakeEWS
from lxml import etree

BUILD = Build(15, 1, 2507, 6)
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
TYPES = "http://schemas.microsoft.com/exchange/services/2006/types"


class LastVerb(ExtendedProperty):
    """PR_LAST_VERB_EXECUTED: 102 reply, 103 reply all, 104 forward."""

    property_tag = 0x1081
    property_type = "Integer"


class MessageFlags(ExtendedProperty):
    """PR_MESSAGE_FLAGS: 1 read, 8 unsent (draft)."""

    property_tag = 0x0E07
    property_type = "Integer"


@pytest.fixture
def fake():
    with FakeEWS() as server:
        yield server
    close_connections()


@pytest.fixture
def ext_props():
    """Register the extended properties on Message for one test (registration is global)."""
    names = {"last_verb": LastVerb, "flag_status": Flag, "message_flags": MessageFlags}
    for name, cls in names.items():
        Message.register(name, cls)
    yield
    for name in names:
        Message.deregister(name)


def connect(fake, *, version=True, auth_type=BASIC, retry_policy=None, password=None):
    # exchangelib caches one Protocol (with its Configuration) per (endpoint, credentials):
    # drop it, or a second Account would silently reuse the first one's retry policy/version.
    close_connections()
    config = Configuration(
        service_endpoint=fake.url,
        credentials=Credentials(fake.user, password or fake.password),
        auth_type=auth_type,
        version=Version(BUILD) if version else None,
        retry_policy=retry_policy,
    )
    return Account(
        fake.user, config=config, autodiscover=False, access_type=DELEGATE, default_timezone=UTC
    )


def mime(n: int, subject: str | None = None) -> bytes:
    return (
        f"From: Bob <bob@example.net>\r\nTo: alice@example.org\r\n"
        f"Subject: {subject or f'message {n}'}\r\nMessage-ID: <{n}@example.net>\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:{n % 60:02d} +0000\r\n\r\nbody {n}\r\n"
    ).encode()


def calls(fake, op):
    return [details for name, details in fake.requests if name == op]


# ------------------------------------------------------------------------------ setup


def test_version_probe_and_auth_type_guessing(fake):
    account = connect(fake, version=False, auth_type=None)
    assert account.root.name == "root"  # Exchange's root has an empty DisplayName
    assert account.version.build == BUILD
    assert account.version.api_version == "Exchange2016"
    assert account.protocol.auth_type == BASIC
    probe, guess = fake.requests[0], fake.requests[1]
    # The auth-type probe: an unauthenticated ConvertId answered 401 + WWW-Authenticate: Basic.
    assert probe == ("ConvertId", {"http_status": 401, "authenticated": False, "codes": []})
    # The version probe: ConvertId of a dummy id, answered with the ServerVersionInfo header.
    assert guess[0] == "ConvertId"
    assert guess[1]["ids"] == ["DUMMY"]
    assert guess[1]["codes"] == ["ErrorInvalidIdMalformed"]
    assert guess[1]["version"] == "Exchange2016"


def test_wrong_password_is_refused(fake):
    account = connect(fake, password="wrong")
    with pytest.raises(UnauthorizedError):
        account.root  # noqa: B018
    assert fake.requests[-1][1]["http_status"] == 401


def test_folders_walk_and_classes(fake):
    fake.add_folder("inbox", "Sub")
    fake.add_folder("inbox/Sub", "Deeper")
    fake.add_folder("msgfolderroot", "Projects")
    account = connect(fake)
    inbox = account.inbox
    assert (inbox.id, inbox.name, inbox.folder_class) == (
        fake.folder_id("inbox"),
        "Inbox",
        "IPF.Note",
    )
    classes = {f.absolute: f.folder_class for f in account.root.walk()}
    top = "/root/Top of Information Store"
    assert classes[f"{top}/Inbox/Sub/Deeper"] == "IPF.Note"
    assert classes[f"{top}/Calendar"] == "IPF.Appointment"
    assert classes[f"{top}/Contacts"] == "IPF.Contact"
    mail = {f.name for f in account.msg_folder_root.walk() if f.folder_class == "IPF.Note"}
    assert {"Inbox", "Sub", "Deeper", "Projects", "Sent Items", "Deleted Items"} <= mail
    assert not mail & {"Calendar", "Contacts", "Tasks"}
    find = calls(fake, "FindFolder")
    assert find[0]["traversal"] == "Deep" and find[0]["parents"] == ["root"]
    # FindFolder Shallow with a DisplayName restriction:
    assert (inbox // "sub").id == fake.folder_id("inbox/Sub")
    assert calls(fake, "FindFolder")[-1]["traversal"] == "Shallow"
    counts = account.inbox.refresh()
    assert (counts.child_folder_count, counts.total_count, counts.unread_count) == (1, 0, 0)


def test_unknown_folder_ids(fake):
    account = connect(fake)
    with pytest.raises(ErrorFolderNotFound):
        account.journal  # noqa: B018 - a valid distinguished id this mailbox lacks
    gone = fake.add_folder("inbox", "Gone")
    fake.delete_folder("inbox/Gone")
    folder = Folder(root=account.root, _id=FolderId(gone))
    with pytest.raises(ErrorFolderNotFound):
        folder.refresh()


def test_sync_hierarchy_sees_creates_renames_and_deletes(fake):
    account = connect(fake)
    inbox = account.inbox
    a = fake.add_folder("inbox", "A")
    changes = list(inbox.sync_hierarchy())
    assert [(kind, f.id, f.name) for kind, f in changes] == [("create", a, "A")]
    # exchangelib quirk: folders parsed from a sync of a distinguished folder get that folder's
    # class and DistinguishedFolderId; use f.id, not the folder object, for later calls.
    assert type(changes[0][1]) is Inbox
    assert list(inbox.sync_hierarchy()) == []
    old_key = changes[0][1].changekey
    fake.rename_folder("inbox/A", "B")
    [(kind, renamed)] = list(inbox.sync_hierarchy())
    assert (kind, renamed.id, renamed.name) == ("update", a, "B")
    assert renamed.changekey != old_key
    fake.add_folder("inbox/B", "C")  # created and deleted between two syncs: not reported
    fake.delete_folder("inbox/B")
    [(kind, folder_id)] = list(inbox.sync_hierarchy())
    assert kind == "delete" and folder_id.id == a
    # A sync of the root shows the mailbox's folders but not the Recoverable Items subtree.
    names = {f.name for kind, f in account.root.sync_hierarchy() if kind == "create"}
    assert {"Top of Information Store", "Inbox", "Calendar", "Common Views"} <= names
    assert "Recoverable Items" not in names and "Deletions" not in names


# ------------------------------------------------------------------------------ items: sync


def test_sync_items_pages_until_the_last_item(fake):
    ids = [fake.add_item("inbox", mime(n)) for n in range(5)]
    account = connect(fake)
    inbox = account.inbox
    changes = list(inbox.sync_items(max_changes_returned=2))
    assert [kind for kind, _ in changes] == ["create"] * 5
    assert [item.id for _, item in changes] == ids
    assert changes[0][1].subject == "message 0"
    assert changes[0][1].mime_content is None  # SyncFolderItems never returns MIME
    pages = calls(fake, "SyncFolderItems")
    assert [p["includes_last"] for p in pages] == [False, False, True]
    assert [p["max_changes"] for p in pages] == [2, 2, 2]
    assert pages[0]["sync_state"] is None and pages[1]["sync_state"] is not None
    assert inbox.item_sync_state is not None
    assert list(inbox.sync_items(only_fields=["subject"])) == []


def test_sync_items_reports_net_changes(fake):
    fake.add_folder("inbox", "Sub")
    ids = [fake.add_item("inbox", mime(n)) for n in range(5)]
    account = connect(fake)
    inbox = account.inbox
    list(inbox.sync_items(only_fields=["subject"]))
    fake.update_item(ids[0], is_read=True)
    fake.update_item(ids[1], categories=["Work"])
    fake.update_item(ids[2], is_read=True)
    fake.update_item(ids[2], flagged=True)  # read and flagged: an Update, not a ReadFlagChange
    fake.delete_item(ids[3], hard=True)
    fake.move_item(ids[4], "inbox/Sub")  # moved out: a Delete
    short_lived = fake.add_item("inbox", mime(9))
    fake.delete_item(short_lived, hard=True)  # created and deleted in the window: not reported
    new = fake.add_item("inbox", mime(10), is_read=True)
    changes = list(inbox.sync_items(only_fields=["subject", "is_read", "categories"]))
    kinds = {}
    for kind, payload in changes:
        key = payload[0].id if kind == "read_flag_change" else payload.id
        kinds[key] = (kind, payload)
    assert set(kinds) == {ids[0], ids[1], ids[2], ids[3], ids[4], new}
    assert kinds[ids[0]][0] == "read_flag_change" and kinds[ids[0]][1][1] is True
    assert kinds[ids[1]][0] == "update" and kinds[ids[1]][1].categories == ["Work"]
    assert kinds[ids[2]][0] == "update" and kinds[ids[2]][1].is_read is True
    assert kinds[ids[3]][0] == "delete" and kinds[ids[4]][0] == "delete"
    assert kinds[new][0] == "create" and kinds[new][1].is_read is True
    sub = inbox / "Sub"  # a FolderId, not a DistinguishedFolderId
    [(kind, moved)] = list(sub.sync_items(only_fields=["subject"]))
    assert (kind, moved.subject) == ("create", "message 4")


def test_an_item_changed_by_its_owner_has_new_mime_and_change_key(fake):
    item_id = fake.add_item("inbox", mime(1))
    account = connect(fake)
    inbox = account.inbox
    list(inbox.sync_items(only_fields=["subject"]))
    before = fake.item(item_id)["change_key"]
    fake.update_item(item_id, mime=mime(1, "moved"))
    [(kind, item)] = list(inbox.sync_items(only_fields=["subject", "size"]))
    assert (kind, item.id, item.subject) == ("update", item_id, "moved")
    assert item.changekey != before and item.size == len(mime(1, "moved"))
    [fetched] = account.fetch([ItemId(item_id)], only_fields=["mime_content"])
    assert fetched.mime_content == mime(1, "moved")
    with pytest.raises(TypeError):
        fake.update_item(item_id, subject="not a test API")


def test_server_page_size_limit_caps_pages(fake):
    for n in range(5):
        fake.add_item("inbox", mime(n))
    fake.page_size_limit = 2  # the server returns fewer changes than the client asked for
    account = connect(fake)
    assert len(list(account.inbox.sync_items(max_changes_returned=100))) == 5
    pages = calls(fake, "SyncFolderItems")
    assert [p["changes"] for p in pages] == [{"create": 2}, {"create": 2}, {"create": 1}]


def test_sync_state_covers_exactly_the_changes_returned(fake):
    ids = [fake.add_item("inbox", mime(n)) for n in range(3)]
    account = connect(fake)
    inbox = account.inbox
    svc = SyncFolderItems(account=account)

    def page(state):
        result = list(svc.call(inbox, ID_ONLY, set(), state, None, 2, None))
        return [item.id for _, item in result], svc.sync_state, svc.includes_last_item_in_range

    first, state, last = page(None)
    assert (first, last) == (ids[:2], False)
    fake.update_item(ids[0], categories=["x"])  # a change behind the page boundary
    again = page(state)
    assert again[0] == [ids[2], ids[0]] and again[2] is True
    assert page(state)[0] == again[0]  # a state can be replayed: nothing is lost
    assert page(again[1])[0] == []


def test_invalid_sync_states_are_refused(fake):
    fake.add_item("inbox", mime(1))
    account = connect(fake)
    inbox = account.inbox
    list(inbox.sync_items(only_fields=["subject"]))
    state = inbox.item_sync_state
    with pytest.raises(ErrorInvalidSyncStateData):
        list(account.sent.sync_items(sync_state=state))  # another folder's state
    with pytest.raises(ErrorInvalidSyncStateData):
        list(inbox.sync_items(sync_state="H4sIAAAAAAAEAO29B2AcSZY="))  # garbage
    with pytest.raises(ErrorInvalidSyncStateData):
        list(inbox.sync_hierarchy(sync_state=state))  # an item state for the hierarchy
    fake.invalidate_sync_states()
    with pytest.raises(ErrorInvalidSyncStateData):
        list(inbox.sync_items(sync_state=state))
    assert calls(fake, "SyncFolderItems")[-1]["codes"] == ["ErrorInvalidSyncStateData"]
    # sync_items(sync_state=None) falls back to the folder's item_sync_state: reset that to
    # start over.
    with pytest.raises(ErrorInvalidSyncStateData):
        list(inbox.sync_items(sync_state=None, only_fields=["subject"]))
    inbox.item_sync_state = None
    assert len(list(inbox.sync_items(only_fields=["subject"]))) == 1


# ------------------------------------------------------------------------------ items: reads


def test_fetch_mime_with_errors_as_results(fake):
    ok, failing, gone = (fake.add_item("inbox", mime(n)) for n in range(3))
    fake.delete_item(gone, hard=True)
    fake.fail_item(failing)
    account = connect(fake)
    # account.fetch() takes (id, changekey) tuples or ItemId objects; a bare string would be
    # splatted into characters.
    refs = [ItemId(ok), (failing, None), ItemId(gone), ("not an id", None)]
    results = list(account.fetch(refs, only_fields=["mime_content", "is_read", "subject"]))
    assert isinstance(results[0], Message) and results[0].mime_content == mime(0)
    assert results[0].subject == "message 0" and results[0].is_read is False
    assert isinstance(results[1], ErrorMimeContentConversionFailed)
    assert isinstance(results[2], ErrorItemNotFound)
    assert isinstance(results[3], ErrorInvalidIdMalformed)
    [get] = calls(fake, "GetItem")
    assert get["mime"] is True and get["codes"] == [
        "NoError",
        "ErrorMimeContentConversionFailed",
        "ErrorItemNotFound",
        "ErrorInvalidIdMalformed",
    ]
    # The conversion failure only hits requests for MIME.
    [item] = account.fetch([ItemId(failing)], only_fields=["subject"])
    assert item.subject == "message 1"
    full = list(account.fetch([ItemId(ok)]))[0]  # all fields, IdOnly + every property
    assert full.author.email_address == "bob@example.net"
    assert full.message_id == "<0@example.net>"
    assert full.size == len(mime(0))
    assert full.datetime_sent == datetime.datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)


def test_find_items_with_restrictions_and_order(fake):
    for n in range(4):
        fake.add_item("inbox", mime(n), is_read=n % 2 == 1)
    account = connect(fake)
    inbox = account.inbox
    assert inbox.all().count() == 4
    unread = [i.subject for i in inbox.filter(is_read=False).order_by("subject").only("subject")]
    assert unread == ["message 0", "message 2"]
    assert [i.subject for i in inbox.filter(subject="message 3")] == ["message 3"]


# ------------------------------------------------------------------------------ items: writes


def test_create_item_round_trips_non_ascii_mime(fake):
    raw = (
        "From: =?utf-8?q?J=C3=B6rg?= <joerg@example.net>\r\n"
        "To: alice@example.org\r\n"
        "Subject: =?utf-8?b?R3LDvMOfZSDigJQg5pel5pys6Kqe?=\r\n"
        "Message-ID: <nonascii@example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße — 日本語\r\n\x00\xff?\r\n"
    ).encode()
    account = connect(fake)
    message = Message(account=account, folder=account.inbox, mime_content=raw, is_read=True)
    message.save()
    stored = fake.item(message.id)
    assert stored["mime"] == raw
    assert (stored["subject"], stored["is_read"], stored["is_draft"]) == (
        "Grüße — 日本語",
        True,
        False,
    )
    assert stored["change_key"] == message.changekey
    [create] = calls(fake, "CreateItem")
    assert create["disposition"] == "SaveOnly" and create["folder"] == fake.folder_id("inbox")
    [fetched] = account.fetch([message], only_fields=["mime_content", "subject", "size"])
    assert fetched.mime_content == raw
    assert fetched.subject == "Grüße — 日本語" and fetched.size == len(raw)


def test_update_is_read_and_change_key_conflicts(fake):
    item_id = fake.add_item("inbox", mime(1), is_read=True)
    account = connect(fake)
    [item] = account.fetch([ItemId(item_id)], only_fields=["is_read", "categories"])
    [stale] = account.fetch([ItemId(item_id)], only_fields=["is_read", "categories"])
    item.is_read = False
    item.save(update_fields=["is_read"])
    assert fake.item(item_id)["is_read"] is False
    assert item.changekey == fake.item(item_id)["change_key"] != stale.changekey
    stale.is_read = True
    with pytest.raises(ErrorIrresolvableConflict):
        stale.save(update_fields=["is_read"], conflict_resolution=NEVER_OVERWRITE)
    assert fake.item(item_id)["is_read"] is False
    assert calls(fake, "UpdateItem")[-1]["codes"] == ["ErrorIrresolvableConflict"]
    assert calls(fake, "UpdateItem")[-1]["conflict_resolution"] == "NeverOverwrite"
    stale.save(update_fields=["is_read"])  # AutoResolve (exchangelib's default) accepts it
    assert fake.item(item_id)["is_read"] is True
    # NeverOverwrite without a change key cannot be checked, so Exchange refuses it.
    with pytest.raises(ErrorChangeKeyRequiredForWriteOperations):
        UpdateItem(account=account).get(
            items=[(Message(account=account, _id=ItemId(item_id)), ["is_read"])],
            conflict_resolution=NEVER_OVERWRITE,
            message_disposition="SaveOnly",
            send_meeting_invitations_or_cancellations="SendToNone",
            suppress_read_receipts=True,
        )
    stale.categories = ["A", "B"]
    stale.save(update_fields=["categories"])
    assert fake.item(item_id)["categories"] == ["A", "B"]
    stale.categories = []
    stale.save(update_fields=["categories"])  # sent as DeleteItemField
    assert fake.item(item_id)["categories"] == []
    stale.subject = "changed"
    with pytest.raises(ErrorInvalidPropertySet):
        stale.save(update_fields=["subject"])


def test_extended_properties_flags_and_drafts(fake, ext_props):
    item_id = fake.add_item("inbox", mime(1), flagged=True, last_verb=103)
    account = connect(fake)
    inbox = account.inbox
    fields = ["last_verb", "flag_status", "message_flags", "is_read", "is_draft"]
    [(_, item)] = list(inbox.sync_items(only_fields=fields))
    assert (item.flag_status, item.last_verb, item.message_flags) == (2, 103, 0)
    item.last_verb = 102
    item.flag_status = 1
    item.save(update_fields=["last_verb", "flag_status"])
    assert (fake.item(item_id)["last_verb"], fake.item(item_id)["flag"]) == (102, "Complete")
    item.flag_status = None
    item.save(update_fields=["flag_status"])
    assert fake.item(item_id)["flag"] == "NotFlagged"
    [(kind, _)] = list(inbox.sync_items(only_fields=fields))
    assert kind == "update"
    item.message_flags = 1
    with pytest.raises(ErrorInvalidPropertySet):
        item.save(update_fields=["message_flags"])
    # Exchange makes CreateItem messages drafts unless PR_MESSAGE_FLAGS says otherwise.
    fake.drafts_by_default = True
    draft = Message(account=account, folder=inbox, mime_content=mime(2)).save()
    imported = Message(
        account=account, folder=inbox, mime_content=mime(3), message_flags=1, is_read=True
    ).save()
    assert fake.item(draft.id)["is_draft"] is True
    assert (fake.item(imported.id)["is_draft"], fake.item(imported.id)["is_read"]) == (False, True)
    [fetched] = account.fetch([imported], only_fields=["message_flags", "is_draft"])
    assert (fetched.message_flags, fetched.is_draft) == (1, False)


def test_delete_soft_delete_trash_and_move(fake):
    ids = [fake.add_item("inbox", mime(n)) for n in range(4)]
    fake.add_item("deleteditems", mime(9))
    account = connect(fake)
    inbox = account.inbox
    list(inbox.sync_items(only_fields=["subject"]))
    hard, soft, trash, moved = account.fetch([ItemId(i) for i in ids], only_fields=["subject"])
    hard.delete()
    soft.soft_delete()
    trash.move_to_trash()
    moved.move(account.junk)
    assert fake.items("inbox") == []
    assert [i["mime"] for i in fake.items("recoverableitemsdeletions")] == [mime(1)]
    assert [i["mime"] for i in fake.items("deleteditems")] == [mime(9), mime(2)]
    [junk] = fake.items("junkemail")
    assert junk["id"] == moved.id != ids[3]  # a move gives a new ItemId
    assert [d["delete_type"] for d in calls(fake, "DeleteItem")] == [
        "HardDelete",
        "SoftDelete",
        "MoveToDeletedItems",
    ]
    deletes = [item.id for kind, item in inbox.sync_items(only_fields=["subject"])]
    assert deletes == ids
    [result] = account.bulk_delete([ItemId(ids[0])])
    assert isinstance(result, ErrorItemNotFound)
    copied = account.bulk_copy([ItemId(moved.id)], to_folder=inbox)
    assert fake.items("inbox")[0]["id"] == copied[0][0]


def test_folder_create_rename_delete_through_exchangelib(fake):
    account = connect(fake)
    inbox = account.inbox
    list(inbox.sync_hierarchy())
    folder = Folder(parent=inbox, name="Projects").save()
    assert fake.folder_id("inbox/Projects") == folder.id
    folder.name = "Archive"
    folder.save(update_fields=["name"])
    assert fake.folder_id("inbox/Archive") == folder.id
    [(kind, synced)] = list(inbox.sync_hierarchy())
    assert (kind, synced.id, synced.name) == ("create", folder.id, "Archive")
    folder.delete()
    with pytest.raises(KeyError):
        fake.folder_id("inbox/Archive")


# ------------------------------------------------------------------------------ throttling


def test_server_busy_fault_backs_off_and_succeeds(fake):
    account = connect(fake, retry_policy=FaultTolerance(max_wait=10))
    account.root  # noqa: B018
    fake.busy(2, back_off_ms=50)
    assert account.inbox.name == "Inbox"
    throttled = [(op, d) for op, d in fake.requests if d.get("throttled")]
    assert [op for op, _ in throttled] == ["GetFolder", "GetFolder"]
    assert all(d["codes"] == ["ErrorServerBusy"] for _, d in throttled)
    # With the default fail-fast policy the fault surfaces, with the server's back-off.
    account = connect(fake)
    fake.busy(1, back_off_ms=1234)
    with pytest.raises(ErrorServerBusy) as excinfo:
        account.root  # noqa: B018
    assert excinfo.value.back_off == 1.234


def test_http_503_with_retry_after(fake):
    account = connect(fake, retry_policy=FaultTolerance(max_wait=10))
    account.root  # noqa: B018
    fake.busy(1, back_off_ms=1000, http=503)
    started = time.monotonic()
    assert account.inbox.name == "Inbox"
    assert time.monotonic() - started >= 0.9  # Retry-After: 1
    assert [d["http_status"] for op, d in fake.requests if d.get("throttled")] == [503]
    # exchangelib does not retry HTTP 429: it surfaces as MalformedResponseError.
    fake.busy(1, http=429)
    with pytest.raises(MalformedResponseError):
        account.drafts  # noqa: B018


# ------------------------------------------------------------------------------ refusals


def soap(fake, body: str, *, version="Exchange2016", auth=True, content_type="text/xml"):
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:m="http://schemas.microsoft.com/exchange/'
        f'services/2006/messages" xmlns:t="{TYPES}"><s:Header>'
        f'<t:RequestServerVersion Version="{version}"/></s:Header><s:Body>{body}</s:Body>'
        "</s:Envelope>"
    )
    return requests.post(
        fake.url,
        data=envelope.encode(),
        headers={"Content-Type": f"{content_type}; charset=utf-8"},
        auth=(fake.user, fake.password) if auth else None,
        timeout=10,
    )


def fault_code(response) -> str:
    root = etree.fromstring(response.content)
    return root.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault/faultcode").text


SHAPE = "<m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            "<m:GetItem><m:ItemIds><t:ItemId Id='x'/></m:ItemIds></m:GetItem>",
            "ErrorSchemaValidation",
        ),
        (
            "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
            "<m:FolderIds><t:DistinguishedFolderId Id='bogus'/></m:FolderIds></m:GetFolder>",
            "ErrorSchemaValidation",
        ),
        (
            "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>"
            "<t:FieldURI FieldURI='item:Bogus'/></t:AdditionalProperties></m:ItemShape>"
            "<m:ItemIds><t:ItemId Id='x'/></m:ItemIds></m:GetItem>",
            "ErrorSchemaValidation",
        ),
        (
            f"<m:SyncFolderItems>{SHAPE}<m:SyncFolderId><t:DistinguishedFolderId Id='inbox'/>"
            "</m:SyncFolderId><m:MaxChangesReturned>513</m:MaxChangesReturned>"
            "</m:SyncFolderItems>",
            "ErrorSchemaValidation",
        ),
        (
            "<m:CreateItem MessageDisposition='SaveOnly'><m:Items><t:Message>"
            "<t:IsRead>true</t:IsRead><t:MimeContent>AAAA</t:MimeContent></t:Message>"
            "</m:Items></m:CreateItem>",
            "ErrorSchemaValidation",
        ),
        (
            "<m:DeleteItem DeleteType='Shred'><m:ItemIds><t:ItemId Id='x'/></m:ItemIds>"
            "</m:DeleteItem>",
            "ErrorSchemaValidation",
        ),
        ("<m:FrobnicateItem/>", "ErrorSchemaValidation"),
        ("<m:ResolveNames/>", "ErrorInvalidOperation"),
    ],
)
def test_malformed_requests_get_soap_faults(fake, body, code):
    response = soap(fake, body)
    assert response.status_code == 500
    assert fault_code(response) == f"a:{code}"
    assert fake.requests[-1][1]["codes"] == [code]


def test_protocol_level_refusals(fake):
    assert soap(fake, SHAPE, auth=False).status_code == 401
    assert soap(fake, "<m:GetItem/>", content_type="application/soap+xml").status_code == 415
    assert fault_code(soap(fake, "<m:GetItem/>", version="V2018_01_08")).endswith(
        "ErrorInvalidServerVersion"
    )
    response = requests.post(
        fake.url,
        data=b"<not xml",
        auth=(fake.user, fake.password),
        timeout=10,
        headers={"Content-Type": "text/xml"},
    )
    assert fault_code(response) == "a:ErrorSchemaValidation"
    # exchangelib raises schema faults as exceptions.
    account = connect(fake)
    with pytest.raises(ErrorSchemaValidation):
        list(
            SyncFolderItems(account=account).call(
                account.inbox, ID_ONLY, set(), None, None, 600, None
            )
        )


def test_https(fake, tmp_path, monkeypatch):
    crypto = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = crypto.Name([crypto.NameAttribute(crypto.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        crypto.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(crypto.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            crypto.SubjectAlternativeName([crypto.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(crypto.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))
    with FakeEWS(ssl_context=context) as secure:
        assert secure.url.startswith("https://127.0.0.1:")
        account = connect(secure)
        assert account.inbox.name == "Inbox"
    close_connections()

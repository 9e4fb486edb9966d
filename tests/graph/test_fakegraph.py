"""The fake Microsoft Graph server (fakegraph.py), driven with plain ``requests`` as the Graph
store will drive it: what each test checks is a documented Graph behaviour the store relies on
(see the module docstring of fakegraph.py for the sources)."""

import base64
import threading
import time
from datetime import UTC, date, datetime

import pytest
import requests
from fakegraph import FakeGraph

MIME = (
    b"From: Bob Example <bob@example.org>\r\n"
    b"To: alice@example.org\r\n"
    b"Subject: Hello there\r\n"
    b"Message-ID: <hello@example.org>\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, trailing space \r\n"
    b"line without CR\n"
    b"\r\n"
)


def mime(n: int) -> bytes:
    return MIME.replace(b"Hello there", f"Message {n}".encode()).replace(
        b"<hello@", f"<m{n}@".encode()
    )


class Graph:
    """A bare Graph client: a requests.Session with the bearer token and the Prefer header."""

    def __init__(self, fake: FakeGraph, token: str | None = None, prefer: str | None = None):
        self.fake = fake
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token or fake.token}"
        if prefer:
            self.session.headers["Prefer"] = prefer

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.fake.base + path

    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.url(path), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.session.post(self.url(path), **kw)

    def patch(self, path: str, **kw) -> requests.Response:
        return self.session.patch(self.url(path), **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self.session.delete(self.url(path), **kw)

    def ok(self, method: str, path: str, **kw) -> dict:
        response = getattr(self, method)(path, **kw)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def round(self, link: str, **kw) -> tuple[list, str, list]:
        """Follow a delta round from ``link``: (all items, the deltaLink, the links followed)."""
        items, links = [], []
        while True:
            page = self.ok("get", link, **kw)
            items += page["value"]
            links.append(link)
            if "@odata.deltaLink" in page:
                assert "@odata.nextLink" not in page
                return items, page["@odata.deltaLink"], links
            link = page["@odata.nextLink"]


def error(response: requests.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "innerError"} <= set(body["error"])
    return body["error"]["code"]


# ------------------------------------------------------------------------------ auth


def test_missing_unknown_and_expired_tokens_get_401_invalid_authentication_token(fake_graph):
    url = fake_graph.base + "/me/mailFolders"
    expiring = fake_graph.add_token()
    assert requests.get(url, headers={"Authorization": f"Bearer {expiring}"}).status_code == 200
    fake_graph.expire_token(expiring)
    answers = [
        requests.get(url),
        requests.get(url, headers={"Authorization": "Bearer not-a-token"}),
        requests.get(url, headers={"Authorization": f"Bearer {expiring}"}),
    ]
    messages = set()
    for response in answers:
        assert response.status_code == 401
        assert error(response) == "InvalidAuthenticationToken"
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm=""')
        messages.add(response.json()["error"]["message"])
    assert "Access token has expired or is not yet valid." in messages
    assert len(messages) == 3
    assert [r.status for r in fake_graph.requests] == [200, 401, 401, 401]


def test_a_token_expires_after_its_lifetime(fake_graph):
    short = fake_graph.add_token(lifetime=0)
    response = Graph(fake_graph, short).get("/me/mailFolders")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Access token has expired or is not yet valid."


def test_application_tokens_use_users_paths_not_me(fake_graph):
    app = Graph(fake_graph, fake_graph.add_token(app=True))
    response = app.get("/me/mailFolders")
    assert response.status_code == 400 and error(response) == "BadRequest"
    for who in (
        fake_graph.user,
        fake_graph.user.upper(),
        fake_graph.user_id,
        "alice%40example.org",
    ):
        assert app.get(f"/users/{who}/mailFolders/inbox").status_code == 200
    response = app.get("/users/mallory@example.org/mailFolders")
    assert response.status_code == 404 and error(response) == "ErrorInvalidUser"


def test_a_delegated_login_reaches_its_mailbox_by_me_or_by_address(fake_graph):
    """users.md ("Working with users"): /me is the same as /users/{the signed-in user's
    id}; mail-api-overview.md: a user is named by id, address or /me.  A delegated token
    reaches its own mailbox all three ways, another user's mailbox not at all."""
    graph = Graph(fake_graph)
    mine = graph.ok("get", "/me/mailFolders/inbox")
    for who in (fake_graph.user, fake_graph.user.upper(), fake_graph.user_id):
        assert graph.ok("get", f"/users/{who}/mailFolders/inbox") == mine
    bobs = Graph(fake_graph, fake_graph.add_token(user="bob@example.org"))
    denied = bobs.get(f"/users/{fake_graph.user}/mailFolders/inbox")
    assert denied.status_code == 403 and error(denied) == "ErrorAccessDenied"


def test_https_with_the_tests_ca(fake_graph_tls):
    url = fake_graph_tls.base + "/me/mailFolders/inbox"
    headers = {"Authorization": f"Bearer {fake_graph_tls.token}"}
    assert fake_graph_tls.url.startswith("https://")
    response = requests.get(url, headers=headers, verify=str(fake_graph_tls.cafile))
    assert response.status_code == 200 and response.json()["displayName"] == "Inbox"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, headers=headers, verify=True)


def test_tokens_of_the_tests_oauth_server_once_trusted(fake_graph, oauth_server):
    client = oauth_server.add_client()
    access, _ = oauth_server.issue(fake_graph.user, client)
    assert Graph(fake_graph, access).get("/me/mailFolders/inbox").status_code == 401
    fake_graph.trust(oauth_server)
    assert Graph(fake_graph, access).get("/me/mailFolders/inbox").status_code == 200
    oauth_server.expire(access)
    expired = Graph(fake_graph, access).get("/me/mailFolders/inbox")
    assert expired.status_code == 401
    assert expired.json()["error"]["message"] == "Access token has expired or is not yet valid."
    bobs, _ = oauth_server.issue("bob@example.org", client)
    denied = Graph(fake_graph, bobs).get(f"/users/{fake_graph.user}/mailFolders/inbox")
    assert denied.status_code == 403 and error(denied) == "ErrorAccessDenied"
    daemon = oauth_server.add_client(secret="s3cret", app_user=fake_graph.user)
    answer = requests.post(
        oauth_server.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": daemon.client_id,
            "client_secret": "s3cret",
            "scope": "https://graph.microsoft.com/.default",
        },
    )
    app = Graph(fake_graph, answer.json()["access_token"])
    assert app.get("/me/mailFolders/inbox").status_code == 400
    assert app.get(f"/users/{fake_graph.user}/mailFolders/inbox").status_code == 200


# ------------------------------------------------------------------------------ folders


def test_folders_by_well_known_name_hidden_only_on_request(fake_graph):
    graph = Graph(fake_graph)
    names = {f["displayName"]: f for f in graph.ok("get", "/me/mailFolders?$top=50")["value"]}
    assert set(names) == {
        "Inbox",
        "Drafts",
        "Sent Items",
        "Deleted Items",
        "Junk Email",
        "Outbox",
        "Archive",
        "Conversation History",
    }
    for well_known, name in (
        ("inbox", "Inbox"),
        ("SentItems", "Sent Items"),
        ("junkemail", "Junk Email"),
    ):
        assert graph.ok("get", f"/me/mailFolders/{well_known}")["id"] == names[name]["id"]
    root = graph.ok("get", "/me/mailFolders/msgfolderroot")["id"]
    assert {f["parentFolderId"] for f in names.values()} == {root}
    hidden = fake_graph.add_folder("msgfolderroot", "Secret", hidden=True)
    listed = [f["id"] for f in graph.ok("get", "/me/mailFolders?$top=50")["value"]]
    assert hidden not in listed
    listed = graph.ok("get", "/me/mailFolders?$top=50&includeHiddenFolders=true")["value"]
    assert [f["isHidden"] for f in listed if f["id"] == hidden] == [True]
    # Where DELETE puts messages exists, but is never listed.
    assert graph.ok("get", "/me/mailFolders/recoverableitemsdeletions")["isHidden"] is True
    listed = graph.ok("get", "/me/mailFolders?$top=50&includeHiddenFolders=true")["value"]
    assert "Deletions" not in {f["displayName"] for f in listed}


def test_folder_lists_are_paged_by_ten_with_next_links(fake_graph):
    graph = Graph(fake_graph)
    made = {fake_graph.add_folder("inbox", f"Sub {n:02}") for n in range(12)}
    page = graph.ok("get", "/me/mailFolders/inbox/childFolders")
    assert len(page["value"]) == 10 and "@odata.nextLink" in page
    rest = graph.ok("get", page["@odata.nextLink"])
    assert len(rest["value"]) == 2 and "@odata.nextLink" not in rest
    assert {f["id"] for f in page["value"] + rest["value"]} == made
    inbox = graph.ok("get", "/me/mailFolders/inbox")
    assert inbox["childFolderCount"] == 12
    # Nested addressing and the OData key form.
    sub = page["value"][0]["id"]
    assert graph.ok("get", f"/me/mailFolders('{sub}')")["id"] == sub
    nested = graph.ok("get", f"/me/mailFolders/inbox/childFolders/{sub}/messages")
    assert nested["value"] == []


def test_folder_create_rename_move_delete(fake_graph):
    graph = Graph(fake_graph)
    made = graph.post("/me/mailFolders/inbox/childFolders", json={"displayName": "Work"})
    assert made.status_code == 201
    work = made.json()["id"]
    clash = graph.post("/me/mailFolders/inbox/childFolders", json={"displayName": "WORK"})
    assert clash.status_code == 409 and error(clash) == "ErrorFolderExists"
    renamed = graph.ok("patch", f"/me/mailFolders/{work}", json={"displayName": "Job"})
    assert renamed["id"] == work and renamed["displayName"] == "Job"
    assert fake_graph.folder_id("inbox/Job") == work
    moved = graph.ok("post", f"/me/mailFolders/{work}/move", json={"destinationId": "archive"})
    assert moved["id"] == work and moved["parentFolderId"] == fake_graph.folder_id("archive")
    top = graph.ok("post", "/me/mailFolders", json={"displayName": "Top"})
    assert top["parentFolderId"] == fake_graph.folder_id("msgfolderroot")
    fake_graph.add_message("archive/Job", mime(1))
    assert graph.delete(f"/me/mailFolders/{work}").status_code == 204
    gone = graph.get(f"/me/mailFolders/{work}")
    assert gone.status_code == 404 and error(gone) == "ErrorItemNotFound"
    bad = graph.get("/me/mailFolders/nosuchwellknownname")
    assert bad.status_code == 400 and error(bad) == "ErrorInvalidIdMalformed"
    refused = graph.delete("/me/mailFolders/inbox")
    assert refused.status_code == 403


def test_mail_folder_delta_reports_new_renamed_moved_and_deleted_folders(fake_graph):
    graph = Graph(fake_graph)
    work = fake_graph.add_folder("inbox", "Work")
    items, delta_link, _ = graph.round("/me/mailFolders/delta")
    names = {f["displayName"]: f for f in items}
    assert names["Work"]["parentFolderId"] == fake_graph.folder_id("inbox")
    assert {"Inbox", "Archive", "Deleted Items"} <= set(names)
    assert "Deletions" not in names and "Top of Information Store" not in names
    fake_graph.rename_folder("inbox/Work", "Job")
    old = fake_graph.add_folder("archive", "Old")
    items, delta_link, _ = graph.round(delta_link)
    assert {f["id"]: f["displayName"] for f in items} == {work: "Job", old: "Old"}
    fake_graph.delete_folder("archive/Old")
    graph.ok("post", f"/me/mailFolders/{work}/move", json={"destinationId": "archive"})
    items, _, _ = graph.round(delta_link)
    assert {f["id"]: "@removed" in f for f in items} == {work: False, old: True}


# ------------------------------------------------------------------------------ messages


def test_value_is_the_stored_mime_byte_for_byte_and_counted(fake_graph):
    graph = Graph(fake_graph)
    key = fake_graph.add_message("inbox", MIME)
    [listed] = graph.ok("get", "/me/mailFolders/inbox/messages")["value"]
    for _ in range(2):
        response = graph.get(f"/me/messages/{listed['id']}/$value")
        assert response.status_code == 200
        assert response.content == MIME
    assert fake_graph.value_downloads[key] == 2
    via_folder = graph.get(f"/me/mailFolders/inbox/messages/{listed['id']}/$value")
    assert via_folder.content == MIME and fake_graph.value_downloads[key] == 3


def test_message_properties_select_and_extended_properties(fake_graph):
    graph = Graph(fake_graph)
    received = datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
    fake_graph.add_message(
        "inbox",
        MIME,
        is_read=True,
        flag="flagged",
        categories=["Red"],
        received=received,
        last_verb=102,
    )
    [m] = graph.ok("get", "/me/mailFolders/inbox/messages")["value"]
    assert m["subject"] == "Hello there"
    assert m["internetMessageId"] == "<hello@example.org>"
    assert m["receivedDateTime"] == "2026-12-01T10:05:00Z"
    assert (m["isRead"], m["flag"], m["categories"], m["isDraft"]) == (
        True,
        {"flagStatus": "flagged"},
        ["Red"],
        False,
    )
    assert m["from"]["emailAddress"]["address"] == "bob@example.org"
    assert m["@odata.etag"] == f'W/"{m["changeKey"]}"'
    assert m["parentFolderId"] == fake_graph.folder_id("inbox")
    assert "singleValueExtendedProperties" not in m
    picked = graph.ok("get", f"/me/messages/{m['id']}?$select=isRead,flag")
    assert set(picked) == {"@odata.type", "@odata.etag", "id", "isRead", "flag"}
    expand = "$expand=singleValueExtendedProperties($filter=id eq 'Integer 0x1081')"
    full = graph.ok("get", f"/me/messages/{m['id']}?$select=isRead&{expand}")
    assert full["singleValueExtendedProperties"] == [{"id": "Integer 0x1081", "value": "102"}]
    other = "$expand=singleValueExtendedProperties($filter=id eq 'Integer 0x1090')"
    assert graph.ok("get", f"/me/messages/{m['id']}?{other}")["singleValueExtendedProperties"] == []


def test_patch_flags_gives_a_new_change_key(fake_graph):
    graph = Graph(fake_graph)
    key = fake_graph.add_message("inbox", MIME)
    [m] = graph.ok("get", "/me/mailFolders/inbox/messages")["value"]
    changed = graph.ok(
        "patch",
        f"/me/messages/{m['id']}",
        json={
            "isRead": True,
            "flag": {"flagStatus": "complete"},
            "categories": ["Blue", "Green"],
            "singleValueExtendedProperties": [{"id": "Integer 0x1081", "value": "104"}],
        },
    )
    assert changed["changeKey"] != m["changeKey"]
    state = fake_graph.message(key)
    assert (state["is_read"], state["flag"], state["categories"]) == (
        True,
        "complete",
        ["Blue", "Green"],
    )
    assert state["extended"] == {"Integer 0x1081": "104"}
    refused = graph.patch(f"/me/messages/{m['id']}", json={"subject": "rewritten"})
    assert refused.status_code == 400 and error(refused) == "ErrorInvalidProperty"
    assert graph.get(f"/me/messages/{m['id']}/$value").content == MIME


def test_ids_change_on_move_unless_immutable_ids_are_asked_for(fake_graph):
    graph = Graph(fake_graph)
    immutable = Graph(fake_graph, prefer='IdType="ImmutableId"')
    key = fake_graph.add_message("inbox", MIME)
    [m] = graph.ok("get", "/me/mailFolders/inbox/messages")["value"]
    [mi] = immutable.ok("get", "/me/mailFolders/inbox/messages")["value"]
    assert mi["id"] == key != m["id"]
    moved = graph.ok("post", f"/me/messages/{m['id']}/move", json={"destinationId": "archive"})
    assert moved["id"] != m["id"] and moved["parentFolderId"] == fake_graph.folder_id("archive")
    old = graph.get(f"/me/messages/{m['id']}")
    assert old.status_code == 404 and error(old) == "ErrorItemNotFound"
    again = immutable.ok("post", f"/me/messages/{key}/move", json={"destinationId": "inbox"})
    assert again["id"] == key
    # Either kind of id works in a URL whatever the Prefer header says.
    assert graph.ok("get", f"/me/messages/{key}")["id"] == fake_graph.message(key)["id"]


def test_delete_goes_to_recoverable_items_permanent_delete_removes(fake_graph):
    graph = Graph(fake_graph, prefer='IdType="ImmutableId"')
    key = fake_graph.add_message("inbox", MIME)
    assert graph.delete(f"/me/messages/{key}").status_code == 204
    assert fake_graph.message(key)["folder_id"] == fake_graph.folder_id("recoverableitemsdeletions")
    assert fake_graph.messages("deleteditems") == [] and fake_graph.messages("inbox") == []
    assert graph.post(f"/me/messages/{key}/permanentDelete").status_code == 204
    assert graph.get(f"/me/messages/{key}").status_code == 404
    trash = fake_graph.add_message("inbox", MIME)
    graph.ok("post", f"/me/messages/{trash}/move", json={"destinationId": "deleteditems"})
    assert [m["immutable_id"] for m in fake_graph.messages("deleteditems")] == [trash]


def test_messages_of_the_mailbox_by_internet_message_id(fake_graph):
    """GET messages?$filter=internetMessageId eq '<...>' (user-list-messages.md: the
    mailbox's messages, Deleted Items included): every folder's messages with that
    Message-ID, paged, with $select; not those in Recoverable Items; a quote doubled in
    the literal; another $filter is not modelled (501), nor is a listing without one."""
    graph = Graph(fake_graph, prefer='IdType="ImmutableId"')
    inbox = fake_graph.add_message("inbox", MIME)
    trash = fake_graph.add_message("deleteditems", MIME)
    archived = [fake_graph.add_message("archive", MIME) for _ in range(2)]
    fake_graph.add_message("inbox", mime(1))
    gone = fake_graph.add_message("inbox", MIME)
    fake_graph.delete_message(gone)
    quoted = fake_graph.add_message("inbox", MIME.replace(b"<hello@", b"<it's@"))
    params = {"$filter": "internetMessageId eq '<hello@example.org>'", "$top": "2"}
    params["$select"] = "id,parentFolderId"
    found, link = [], "/me/messages"
    while link:
        page = graph.ok("get", link, params=params if link == "/me/messages" else None)
        found += page["value"]
        link = page.get("@odata.nextLink")
    assert sorted(m["id"] for m in found) == sorted([inbox, trash, *archived])
    assert {m["id"]: m["parentFolderId"] for m in found}[trash] == fake_graph.folder_id(
        "deleteditems"
    )
    assert all("subject" not in m for m in found)
    one = {"$filter": "internetMessageId eq '<it''s@example.org>'"}
    assert [m["id"] for m in graph.ok("get", "/me/messages", params=one)["value"]] == [quoted]
    folder = graph.ok(
        "get", "/me/mailFolders/archive/messages", params={"$filter": params["$filter"]}
    )
    assert sorted(m["id"] for m in folder["value"]) == sorted(archived)
    assert graph.get("/me/messages", params={"$filter": "isRead eq false"}).status_code == 501
    assert graph.get("/me/messages").status_code == 501


def test_copy_makes_a_new_message(fake_graph):
    graph = Graph(fake_graph, prefer='IdType="ImmutableId"')
    key = fake_graph.add_message("inbox", MIME, is_read=True)
    copied = graph.ok("post", f"/me/messages/{key}/copy", json={"destinationId": "archive"})
    assert copied["id"] != key and copied["isRead"] is True
    assert graph.get(f"/me/messages/{copied['id']}/$value").content == MIME
    assert len(fake_graph.messages("inbox")) == len(fake_graph.messages("archive")) == 1


def test_a_message_posted_as_mime_is_a_draft(fake_graph):
    graph = Graph(fake_graph)
    body = base64.b64encode(MIME)
    made = graph.post("/me/messages", data=body, headers={"Content-Type": "text/plain"})
    assert made.status_code == 201
    draft = made.json()
    assert draft["isDraft"] is True and draft["parentFolderId"] == fake_graph.folder_id("drafts")
    assert graph.get(f"/me/messages/{draft['id']}/$value").content == MIME
    into = graph.ok(
        "post", "/me/mailFolders/inbox/messages", data=body, headers={"Content-Type": "text/plain"}
    )
    assert into["isDraft"] is True and into["parentFolderId"] == fake_graph.folder_id("inbox")
    # A draft's subject may change; a received message's may not (see the PATCH test).
    assert graph.ok("patch", f"/me/messages/{into['id']}", json={"subject": "x"})["subject"] == "x"
    bad = graph.post("/me/messages", data=b"not base64!", headers={"Content-Type": "text/plain"})
    assert bad.status_code == 400 and error(bad) == "ErrorMimeContentInvalidBase64String"
    as_json = graph.ok("post", "/me/messages", json={"subject": "Plan", "body": {"content": "hi"}})
    assert as_json["isDraft"] is True and as_json["subject"] == "Plan"


def test_bodies_as_text_on_request(fake_graph):
    text = Graph(fake_graph, prefer='outlook.body-content-type="text"')
    html_mime = MIME.replace(b"text/plain", b"text/html").replace(
        b"Gr\xc3\xbc\xc3\x9fe, trailing space \r\n", b"<p>Hi &amp; bye</p>\r\n"
    )
    key = fake_graph.add_message("inbox", html_mime)
    assert Graph(fake_graph).ok("get", f"/me/messages/{key}")["body"]["contentType"] == "html"
    body = text.ok("get", f"/me/messages/{key}")["body"]
    assert body["contentType"] == "text" and body["content"].startswith("Hi & bye")
    assert "<p>" not in body["content"]
    event = fake_graph.add_event(
        None,
        {
            "subject": "Party",
            "body": {"contentType": "html", "content": "<div>Bring<br>cake</div>"},
            "start": berlin("2026-12-12", "20"),
            "end": berlin("2026-12-12", "23"),
        },
    )
    assert text.ok("get", f"/me/events/{event}")["body"] == {
        "contentType": "text",
        "content": "Bring\ncake",
    }
    assert text.get(f"/me/messages/{key}/$value").content == html_mime


# ------------------------------------------------------------------------------ delta


def test_delta_pages_follow_maxpagesize_and_end_with_a_delta_link(fake_graph):
    graph = Graph(fake_graph, prefer="odata.maxpagesize=2")
    keys = [fake_graph.add_message("inbox", mime(n)) for n in range(5)]
    first = graph.get("/me/mailFolders/inbox/messages/delta")
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"
    assert len(first.json()["value"]) == 2 and "$skiptoken=" in first.json()["@odata.nextLink"]
    # Graph's own links use the OData key form; a client follows them as given.
    assert "/mailfolders('" in first.json()["@odata.nextLink"]
    items, delta_link, links = graph.round("/me/mailFolders/inbox/messages/delta")
    assert len(links) == 3 and "$deltatoken=" in delta_link
    assert sorted(i["id"] for i in items) == sorted(fake_graph.message(k)["id"] for k in keys)
    assert all("@removed" not in i for i in items)
    again, next_link, _ = graph.round(delta_link)
    assert again == [] and "$deltatoken=" in next_link
    default = Graph(fake_graph)
    for n in range(5, 12):
        fake_graph.add_message("inbox", mime(n))
    page = default.ok("get", "/me/mailFolders/inbox/messages/delta")
    assert len(page["value"]) == 10  # Graph's default page
    top = default.ok("get", "/me/mailFolders/inbox/messages/delta?$top=4")
    assert len(top["value"]) == 4
    assert len(default.ok("get", top["@odata.nextLink"])["value"]) == 4


def test_delta_cycle_reports_adds_updates_deletes_and_moves(fake_graph):
    graph = Graph(fake_graph, prefer="odata.maxpagesize=3")
    keys = [fake_graph.add_message("inbox", mime(n)) for n in range(4)]
    ids = {k: fake_graph.message(k)["id"] for k in keys}
    _, delta_link, _ = graph.round("/me/mailFolders/inbox/messages/delta")
    new = fake_graph.add_message("inbox", mime(9))
    fake_graph.update_message(keys[0], is_read=True)
    graph.ok("patch", f"/me/messages/{ids[keys[1]]}", json={"flag": {"flagStatus": "flagged"}})
    assert graph.delete(f"/me/messages/{ids[keys[2]]}").status_code == 204
    moved = graph.ok("post", f"/me/messages/{ids[keys[3]]}/move", json={"destinationId": "archive"})
    items, delta_link, _ = graph.round(delta_link)
    removed = {i["id"] for i in items if "@removed" in i}
    changed = {i["id"]: i for i in items if "@removed" not in i}
    assert removed == {ids[keys[2]], ids[keys[3]]}
    assert {i["@removed"]["reason"] for i in items if "@removed" in i} == {"deleted"}
    assert set(changed) == {ids[keys[0]], ids[keys[1]], fake_graph.message(new)["id"]}
    assert changed[ids[keys[0]]]["isRead"] is True
    assert changed[ids[keys[1]]]["flag"] == {"flagStatus": "flagged"}
    assert graph.round(delta_link)[0] == []
    archive, _, _ = graph.round("/me/mailFolders/archive/messages/delta")
    assert [i["id"] for i in archive] == [moved["id"]]


def test_delta_with_immutable_ids_reports_immutable_ids(fake_graph):
    graph = Graph(fake_graph, prefer='IdType="ImmutableId", odata.maxpagesize=5')
    key = fake_graph.add_message("inbox", MIME)
    items, delta_link, _ = graph.round("/me/mailFolders/inbox/messages/delta")
    assert [i["id"] for i in items] == [key]
    fake_graph.move_message(key, "archive")
    items, _, _ = graph.round(delta_link)
    assert items == [
        {"@odata.type": "#microsoft.graph.message", "id": key, "@removed": {"reason": "deleted"}}
    ]


def test_delta_query_options_are_kept_in_the_tokens(fake_graph):
    graph = Graph(fake_graph, prefer="odata.maxpagesize=1")
    for n in range(2):
        fake_graph.add_message("inbox", mime(n), last_verb=103)
    expand = "$expand=singleValueExtendedProperties($filter=id eq 'Integer 0x1081')"
    items, delta_link, links = graph.round(
        f"/me/mailFolders/inbox/messages/delta?$select=isRead&{expand}"
    )
    assert len(links) == 2 and "$select" not in links[1]
    for item in items:
        assert set(item) == {
            "@odata.type",
            "@odata.etag",
            "id",
            "isRead",
            "singleValueExtendedProperties@odata.context",
            "singleValueExtendedProperties",
        }
        assert item["singleValueExtendedProperties"] == [{"id": "Integer 0x1081", "value": "103"}]
    fake_graph.update_message(items[0]["id"], last_verb=104)
    [changed], _, _ = graph.round(delta_link)
    assert set(changed) >= {"isRead", "singleValueExtendedProperties"} and "subject" not in changed


def test_a_round_resumes_from_any_next_link_with_the_same_pages(fake_graph):
    """A client killed between pages asks for the saved nextLink again: the same page comes
    back, and changes made meanwhile arrive in the next round."""
    graph = Graph(fake_graph, prefer="odata.maxpagesize=2")
    keys = [fake_graph.add_message("inbox", mime(n)) for n in range(4)]
    first = graph.ok("get", "/me/mailFolders/inbox/messages/delta")
    saved = first["@odata.nextLink"]
    second = graph.ok("get", saved)
    fake_graph.update_message(keys[0], is_read=True)
    late = fake_graph.add_message("inbox", mime(7))
    assert graph.ok("get", saved)["value"] == second["value"]
    rest, delta_link, _ = graph.round(saved)
    assert len(first["value"]) + len(rest) == 4
    items, _, _ = graph.round(delta_link)
    assert {i["id"] for i in items} == {fake_graph.message(k)["id"] for k in (keys[0], late)}


def test_void_delta_tokens_answer_410_with_the_initial_url(fake_graph):
    graph = Graph(fake_graph, prefer="odata.maxpagesize=1")
    for n in range(2):
        fake_graph.add_message("inbox", mime(n))
    page = graph.ok("get", "/me/mailFolders/inbox/messages/delta")
    _, delta_link, _ = graph.round("/me/mailFolders/inbox/messages/delta")
    fake_graph.invalidate_delta_tokens()
    for link in (delta_link, page["@odata.nextLink"]):
        gone = graph.get(link)
        assert gone.status_code == 410 and error(gone) == "syncStateNotFound"
        assert gone.headers["Location"] == fake_graph.base + "/me/mailFolders/inbox/messages/delta"
    items, delta_link, _ = graph.round(gone.headers["Location"])
    assert len(items) == 2
    fake_graph.invalidate_delta_tokens("resyncRequired")
    assert error(graph.get(delta_link)) == "resyncRequired"
    garbage = graph.get("/me/mailFolders/inbox/messages/delta?$deltatoken=forged")
    assert garbage.status_code == 400


def test_old_delta_tokens_fall_out_of_the_token_cache(fake_graph):
    graph = Graph(fake_graph)
    fake_graph.delta_token_limit = 2
    fake_graph.add_message("inbox", MIME)
    _, oldest, _ = graph.round("/me/mailFolders/inbox/messages/delta")
    graph.round("/me/mailFolders/archive/messages/delta")
    graph.round("/me/mailFolders/drafts/messages/delta")
    gone = graph.get(oldest)
    assert gone.status_code == 410 and error(gone) == "syncStateNotFound"
    assert gone.headers["Location"] == fake_graph.base + "/me/mailFolders/inbox/messages/delta"


def test_change_type_created_reports_only_new_messages(fake_graph):
    graph = Graph(fake_graph)
    old = fake_graph.add_message("inbox", mime(1))
    _, delta_link, _ = graph.round("/me/mailFolders/inbox/messages/delta?changeType=created")
    new = fake_graph.add_message("inbox", mime(2))
    fake_graph.update_message(old, is_read=True)
    items, _, _ = graph.round(delta_link)
    assert [i["id"] for i in items] == [fake_graph.message(new)["id"]]


def test_replays_and_the_removed_reason_are_knobs(fake_graph):
    graph = Graph(fake_graph)
    first, second = (fake_graph.add_message("inbox", mime(n)) for n in range(2))
    second_id = fake_graph.message(second)["id"]
    _, delta_link, _ = graph.round("/me/mailFolders/inbox/messages/delta")
    fake_graph.update_message(first, is_read=True)
    [changed], delta_link, _ = graph.round(delta_link)
    fake_graph.replays = True
    fake_graph.removed_reason = "changed"
    fake_graph.delete_message(second)
    items, delta_link, _ = graph.round(delta_link)
    assert {i["id"]: i.get("@removed") for i in items} == {
        changed["id"]: None,  # reported again although unchanged: a replay
        second_id: {"reason": "changed"},
    }
    pages = fake_graph.sent_delta_pages
    graph.round(delta_link)
    assert fake_graph.sent_delta_pages == pages + 1


# -------------------------------------------------------------------- throttling, faults, batching


def test_chosen_requests_answer_429_or_503_with_retry_after(fake_graph):
    graph = Graph(fake_graph)
    key = fake_graph.add_message("inbox", MIME)
    url = f"/me/messages/{key}/$value"
    fake_graph.throttle(1, match="/$value", retry_after=7)
    fake_graph.throttle(1, status=503, match="/$value", retry_after=3)
    throttled = graph.get(url)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    assert error(throttled) == "ApplicationThrottled"
    unavailable = graph.get(url)
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "3"
    assert graph.get(url).content == MIME
    assert fake_graph.value_downloads[key] == 1
    assert [(r.method, r.status) for r in fake_graph.requests if r.path.endswith("/$value")] == [
        ("GET", 429),
        ("GET", 503),
        ("GET", 200),
    ]
    assert graph.get("/me/mailFolders/inbox").status_code == 200  # others are untouched


def test_a_fifth_concurrent_request_gets_429_mailbox_concurrency(fake_graph):
    fake_graph.hold()
    statuses: list[int] = []

    def call():
        statuses.append(Graph(fake_graph).get("/me/mailFolders/inbox").status_code)

    threads = [threading.Thread(target=call) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while fake_graph.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake_graph.in_flight == 4
        fifth = Graph(fake_graph).get("/me/mailFolders/inbox")
        assert fifth.status_code == 429 and fifth.headers["Retry-After"] == "1"
        assert (
            fifth.json()["error"]["message"] == "Application is over its MailboxConcurrency limit."
        )
    finally:
        fake_graph.release()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 4
    assert Graph(fake_graph).get("/me/mailFolders/inbox").status_code == 200


def test_chosen_requests_fail_with_any_error(fake_graph):
    graph = Graph(fake_graph)
    key = fake_graph.add_message("inbox", MIME)
    fake_graph.fail(1, status=500, code="generalException", match="/$value", method="GET")
    broken = graph.get(f"/me/messages/{key}/$value")
    assert broken.status_code == 500 and error(broken) == "generalException"
    assert "Retry-After" not in broken.headers
    assert graph.get(f"/me/messages/{key}/$value").content == MIME


def test_batch_runs_steps_and_base64s_mime(fake_graph):
    graph = Graph(fake_graph)
    keys = [fake_graph.add_message("inbox", mime(n)) for n in range(3)]
    steps = [
        {"id": str(n), "method": "GET", "url": f"/me/messages/{k}/$value"}
        for n, k in enumerate(keys)
    ]
    steps.append(
        {
            "id": "flag",
            "method": "PATCH",
            "url": f"/me/messages/{keys[0]}",
            "headers": {"Content-Type": "application/json"},
            "body": {"isRead": True},
        }
    )
    steps.append(
        {"id": "folder", "method": "GET", "url": "me/mailFolders/inbox?$select=displayName"}
    )
    answer = graph.ok("post", "/$batch", json={"requests": steps})
    by_id = {r["id"]: r for r in answer["responses"]}
    for n, key in enumerate(keys):
        assert by_id[str(n)]["status"] == 200
        assert base64.b64decode(by_id[str(n)]["body"]) == mime(n)
        assert fake_graph.value_downloads[key] == 1
    assert by_id["flag"]["status"] == 200 and fake_graph.message(keys[0])["is_read"] is True
    assert by_id["folder"]["body"]["displayName"] == "Inbox"
    assert sum(1 for r in fake_graph.requests if r.batch) == 5
    too_many = [{"id": str(n), "method": "GET", "url": "/me/mailFolders/inbox"} for n in range(21)]
    assert graph.post("/$batch", json={"requests": too_many}).status_code == 400
    twice = [{"id": "a", "method": "GET", "url": "/me/mailFolders"}] * 2
    assert graph.post("/$batch", json={"requests": twice}).status_code == 400


def test_batch_steps_over_four_at_once_or_after_a_failure_do_not_run(fake_graph):
    graph = Graph(fake_graph)
    key = fake_graph.add_message("inbox", MIME)
    five = [{"id": str(n), "method": "GET", "url": f"/me/messages/{key}/$value"} for n in range(5)]
    statuses = sorted(
        r["status"] for r in graph.ok("post", "/$batch", json={"requests": five})["responses"]
    )
    assert statuses == [200] * 5  # four at a time, in two rounds
    fake_graph.hold(match="/mailFolders/inbox")
    holder = threading.Thread(target=lambda: Graph(fake_graph).get("/me/mailFolders/inbox"))
    holder.start()
    try:
        deadline = time.monotonic() + 30
        while fake_graph.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake_graph.in_flight == 1
        four = five[:4]
        answer = graph.ok("post", "/$batch", json={"requests": four})["responses"]
        statuses = sorted(r["status"] for r in answer)
        assert statuses == [200, 200, 200, 429]
        [throttled] = [r for r in answer if r["status"] == 429]
        assert throttled["headers"]["Retry-After"] == "1"
        assert throttled["body"]["error"]["code"] == "ApplicationThrottled"
    finally:
        fake_graph.release()
        holder.join()
    chain = [
        {"id": "1", "method": "GET", "url": "/me/messages/AAMkAGnothing/$value"},
        {"id": "2", "dependsOn": ["1"], "method": "GET", "url": f"/me/messages/{key}/$value"},
    ]
    by_id = {
        r["id"]: r["status"]
        for r in graph.ok("post", "/$batch", json={"requests": chain})["responses"]
    }
    assert by_id == {"1": 400, "2": 424}


# ------------------------------------------------------------------------------ calendars


WINDOW = "startDateTime=2026-11-01T00:00:00Z&endDateTime=2027-01-31T00:00:00Z"


def berlin(day: str, hour: str) -> dict:
    return {"dateTime": f"{day}T{hour}:00:00.0000000", "timeZone": "W. Europe Standard Time"}


def test_calendar_view_delta_expands_series_in_the_window(fake_graph):
    graph = Graph(fake_graph, prefer="odata.maxpagesize=2")
    single = fake_graph.add_event(
        None,
        {
            "subject": "Dentist",
            "start": berlin("2026-12-03", "10"),
            "end": berlin("2026-12-03", "11"),
        },
    )
    fake_graph.add_event(
        None,
        {
            "subject": "Long ago",
            "start": berlin("2020-01-01", "10"),
            "end": berlin("2020-01-01", "11"),
        },
    )
    allday = fake_graph.add_event(
        None,
        {
            "subject": "Holiday",
            "isAllDay": True,
            "start": {"dateTime": "2026-12-24T00:00:00.0000000", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-25T00:00:00.0000000", "timeZone": "UTC"},
        },
    )
    weekly = {
        "subject": "Standup",
        "start": berlin("2026-12-07", "09"),
        "end": berlin("2026-12-07", "10"),
        "attendees": [
            {
                "emailAddress": {"address": "bob@example.org"},
                "type": "required",
                "status": {"response": "accepted"},
            }
        ],
        "recurrence": {
            "pattern": {
                "type": "weekly",
                "interval": 1,
                "daysOfWeek": ["monday"],
                "firstDayOfWeek": "sunday",
            },
            "range": {"type": "numbered", "startDate": "2026-12-07", "numberOfOccurrences": 4},
        },
    }
    master = fake_graph.add_event(None, weekly)
    items, delta_link, links = graph.round(f"/me/calendarView/delta?{WINDOW}")
    assert len(links) == 3 and all("startDateTime" not in link for link in links[1:])
    by_type: dict = {}
    for item in items:
        by_type.setdefault(item["type"], []).append(item)
    assert {i["id"] for i in by_type["singleInstance"]} == {single, allday}
    occurrences = by_type["occurrence"]
    assert len(occurrences) == 4 and "seriesMaster" not in by_type
    assert {o["seriesMasterId"] for o in occurrences} == {master}
    assert [o["start"] for o in occurrences] == [
        {"dateTime": f"2026-12-{d}T08:00:00.0000000", "timeZone": "UTC"}
        for d in ("07", "14", "21", "28")
    ]
    assert {o["originalStartTimeZone"] for o in occurrences} == {"W. Europe Standard Time"}
    holiday = next(i for i in items if i["id"] == allday)
    assert (
        holiday["isAllDay"] is True
        and holiday["start"]["dateTime"] == "2026-12-24T00:00:00.0000000"
    )
    series = graph.ok("get", f"/me/events/{master}")
    assert series["type"] == "seriesMaster" and series["recurrence"] == weekly["recurrence"]
    local = Graph(fake_graph, prefer='outlook.timezone="Europe/Berlin"').ok(
        "get", f"/me/events/{single}"
    )
    assert local["start"] == {
        "dateTime": "2026-12-03T10:00:00.0000000",
        "timeZone": "Europe/Berlin",
    }

    second = sorted(occurrences, key=lambda o: o["start"]["dateTime"])[1]
    third = sorted(occurrences, key=lambda o: o["start"]["dateTime"])[2]
    exception = fake_graph.modify_occurrence(
        master,
        date(2026, 12, 14),
        subject="Standup (moved)",
        start=berlin("2026-12-15", "09"),
        end=berlin("2026-12-15", "10"),
    )
    assert exception == second["id"]
    fake_graph.cancel_occurrence(master, date(2026, 12, 21))
    fake_graph.delete_event(single)
    fake_graph.update_event(allday, subject="Christmas Eve")
    items, delta_link, _ = graph.round(delta_link)
    removed = {i["id"] for i in items if "@removed" in i}
    changed = {i["id"]: i for i in items if "@removed" not in i}
    assert removed == {third["id"], single}
    assert changed[exception]["type"] == "exception"
    assert changed[exception]["start"]["dateTime"] == "2026-12-15T08:00:00.0000000"
    assert changed[allday]["subject"] == "Christmas Eve"
    assert set(changed) == {exception, allday}
    assert graph.round(delta_link)[0] == []
    # The series' instances: a client learns cancelled occurrences by their absence.
    plain = Graph(fake_graph)
    listed = plain.ok("get", f"/me/events/{master}/instances?{WINDOW}")["value"]
    assert [(i["id"], i["type"]) for i in listed] == [
        (occurrences[0]["id"], "occurrence"),
        (exception, "exception"),
        (occurrences[3]["id"], "occurrence"),
    ]
    view = plain.ok("get", f"/me/calendar/calendarView?{WINDOW}")["value"]
    assert {i["id"] for i in view} == {i["id"] for i in listed} | {allday}


def test_deleting_or_cancelling_an_occurrence_or_a_series(fake_graph):
    """event-delete.md (204) and event-cancel.md (202; the organizer's only, else 400): an
    occurrence's id removes that occurrence from instances and calendarView, and delta
    reports it removed; a master's id removes the series."""
    graph = Graph(fake_graph)
    weekly = {
        "subject": "Standup",
        "start": berlin("2026-12-07", "09"),
        "end": berlin("2026-12-07", "10"),
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
            "range": {"type": "numbered", "startDate": "2026-12-07", "numberOfOccurrences": 4},
        },
    }
    master = fake_graph.add_event(None, weekly)
    foreign = fake_graph.add_event(
        None, {**weekly, "organizer": {"emailAddress": {"address": "bob@example.org"}}}
    )
    _, delta_link, _ = graph.round(f"/me/calendarView/delta?{WINDOW}")
    first, second, third, fourth = graph.ok("get", f"/me/events/{master}/instances?{WINDOW}")[
        "value"
    ]
    assert graph.delete(f"/me/events/{second['id']}").status_code == 204
    cancel = graph.post(f"/me/events/{third['id']}/cancel", json={"Comment": "no"})
    assert cancel.status_code == 202
    listed = graph.ok("get", f"/me/events/{master}/instances?{WINDOW}")["value"]
    assert [i["id"] for i in listed] == [first["id"], fourth["id"]]
    assert graph.get(f"/me/events/{second['id']}").status_code == 404
    assert graph.delete(f"/me/events/{second['id']}").status_code == 404
    items, delta_link, _ = graph.round(delta_link)
    assert {i["id"] for i in items} == {second["id"], third["id"]}
    assert all(i["@removed"] == {"reason": "deleted"} for i in items)
    (theirs, *_) = graph.ok("get", f"/me/events/{foreign}/instances?{WINDOW}")["value"]
    refused = graph.post(f"/me/events/{theirs['id']}/cancel", json={})
    assert refused.status_code == 400 and error(refused)
    assert "You need to be an organizer" in refused.json()["error"]["message"]
    assert graph.delete(f"/me/events/{master}").status_code == 204
    assert graph.get(f"/me/events/{master}").status_code == 404
    items, _, _ = graph.round(delta_link)
    assert {i["id"] for i in items} == {first["id"], fourth["id"]}


def test_calendar_view_delta_needs_a_window_and_refuses_select(fake_graph):
    graph = Graph(fake_graph)
    assert graph.get("/me/calendarView/delta").status_code == 400
    assert graph.get(f"/me/calendarView/delta?{WINDOW}&$select=subject").status_code == 400
    other = fake_graph.add_calendar("Team")
    fake_graph.add_event(
        "Team",
        {
            "subject": "Offsite",
            "start": berlin("2026-12-10", "09"),
            "end": berlin("2026-12-10", "17"),
        },
    )
    calendars = graph.ok("get", "/me/calendars")["value"]
    assert {c["name"]: c["isDefaultCalendar"] for c in calendars} == {
        "Calendar": True,
        "Team": False,
    }
    assert graph.round(f"/me/calendarView/delta?{WINDOW}")[0] == []
    [offsite] = graph.round(f"/me/calendars/{other}/calendarView/delta?{WINDOW}")[0]
    assert offsite["subject"] == "Offsite" and offsite["iCalUId"]


def test_recurrence_patterns(fake_graph):
    def days(pattern: dict, rng: dict) -> list[str]:
        event = {
            "subject": "r",
            "start": berlin(rng["startDate"], "12"),
            "end": berlin(rng["startDate"], "13"),
            "recurrence": {"pattern": pattern, "range": rng},
        }
        master = fake_graph.add_event(None, event)
        found = fake_graph.instances(
            master, datetime(2026, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC)
        )
        return [i["start"]["dateTime"][:10] for i in found]

    numbered = {"type": "numbered", "startDate": "2026-01-31", "numberOfOccurrences": 3}
    assert days({"type": "daily", "interval": 2}, numbered) == [
        "2026-01-31",
        "2026-02-02",
        "2026-02-04",
    ]
    assert days({"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 31}, numbered) == [
        "2026-01-31",
        "2026-03-31",
        "2026-05-31",
    ]
    assert days(
        {"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["friday"], "index": "last"},
        {"type": "endDate", "startDate": "2026-01-01", "endDate": "2026-03-31"},
    ) == ["2026-01-30", "2026-02-27", "2026-03-27"]
    assert days(
        {"type": "absoluteYearly", "interval": 1, "month": 2, "dayOfMonth": 28},
        {"type": "numbered", "startDate": "2026-01-01", "numberOfOccurrences": 2},
    ) == ["2026-02-28", "2027-02-28"]
    assert days(
        {
            "type": "weekly",
            "interval": 2,
            "daysOfWeek": ["tuesday", "thursday"],
            "firstDayOfWeek": "monday",
        },
        {"type": "numbered", "startDate": "2026-06-02", "numberOfOccurrences": 4},
    ) == ["2026-06-02", "2026-06-04", "2026-06-16", "2026-06-18"]


def test_all_day_events_stay_in_the_zone_they_were_made_in(fake_graph):
    pacific = Graph(fake_graph, prefer='outlook.timezone="Pacific Standard Time"')
    tokyo = "Tokyo Standard Time"
    allday = fake_graph.add_event(
        None,
        {
            "subject": "Tenno",
            "isAllDay": True,
            "start": {"dateTime": "2026-12-23T00:00:00.0000000", "timeZone": tokyo},
            "end": {"dateTime": "2026-12-24T00:00:00.0000000", "timeZone": tokyo},
        },
    )
    timed = fake_graph.add_event(
        None,
        {"subject": "Call", "start": berlin("2026-12-23", "18"), "end": berlin("2026-12-23", "19")},
    )
    got = {e["id"]: e for e in pacific.round(f"/me/calendarView/delta?{WINDOW}")[0]}
    assert got[allday]["start"] == {"dateTime": "2026-12-23T00:00:00.0000000", "timeZone": tokyo}
    assert got[timed]["start"] == {
        "dateTime": "2026-12-23T09:00:00.0000000",
        "timeZone": "Pacific Standard Time",
    }
    # Tokyo's 23 December ends at 15:00 UTC.
    before = "startDateTime=2026-12-23T14:00:00Z&endDateTime=2026-12-23T15:00:00Z"
    after = "startDateTime=2026-12-23T15:00:00Z&endDateTime=2026-12-23T16:00:00Z"
    assert [e["id"] for e in pacific.round(f"/me/calendarView/delta?{before}")[0]] == [allday]
    assert pacific.round(f"/me/calendarView/delta?{after}")[0] == []


# ------------------------------------------------------------------------------ contacts


def test_contact_folders_and_contacts_delta(fake_graph):
    graph = Graph(fake_graph, prefer="odata.maxpagesize=2")
    family = fake_graph.add_contact_folder("Family")
    carol = fake_graph.add_contact(
        None,
        {
            "givenName": "Carol",
            "surname": "Example",
            "displayName": "Carol Example",
            "emailAddresses": [{"name": "Carol", "address": "carol@example.org"}],
            "businessPhones": ["+1 555 0100"],
            "homeAddress": {"street": "1 Main St", "city": "Springfield", "countryOrRegion": "US"},
            "birthday": "1990-05-17T00:00:00Z",
            "categories": ["Friends"],
        },
    )
    dave = fake_graph.add_contact(None, {"givenName": "Dave", "displayName": "Dave"})
    mum = fake_graph.add_contact(family, {"givenName": "Mum", "displayName": "Mum"})
    folders = graph.ok("get", "/me/contactFolders")["value"]
    assert [f["displayName"] for f in folders] == ["Family"]
    items, delta_link, _ = graph.round("/me/contacts/delta")
    assert {i["id"] for i in items} == {carol, dave}
    full = next(i for i in items if i["id"] == carol)
    assert full["homeAddress"]["city"] == "Springfield" and full["surname"] == "Example"
    assert [i["id"] for i in graph.round(f"/me/contactFolders/{family}/contacts/delta")[0]] == [mum]
    fake_graph.update_contact(carol, jobTitle="Engineer")
    fake_graph.delete_contact(dave)
    items, _, _ = graph.round(delta_link)
    assert {i["id"]: "@removed" in i for i in items} == {carol: False, dave: True}
    assert graph.ok("get", f"/me/contacts/{carol}")["jobTitle"] == "Engineer"


# ------------------------------------------------------------------------------ misc


def test_request_log_and_error_shape(fake_graph):
    graph = Graph(fake_graph)
    response = graph.get("/me/nosuchthing", headers={"client-request-id": "abc"})
    assert response.status_code == 400 and error(response) == "BadRequest"
    assert response.headers["client-request-id"] == "abc"
    assert response.json()["error"]["innerError"]["client-request-id"] == "abc"
    graph.get(
        "/me/mailFolders/inbox/messages/delta?$top=5", headers={"Prefer": "odata.maxpagesize=3"}
    )
    last = fake_graph.requests[-1]
    assert (last.method, last.path, last.query, last.status) == (
        "GET",
        "/v1.0/me/mailFolders/inbox/messages/delta",
        {"$top": "5"},
        200,
    )
    assert last.prefer == "odata.maxpagesize=3"

"""The Microsoft Graph store through the CLI, against the fake Graph server: the pull of
every mail folder, reruns that download nothing, incremental changes (new, read, flagged,
deleted, moved, a folder renamed), a void delta link, throttling, a refused token, flags
and deletions going back, a message Graph could only make a draft refused, kill -9
between delta pages, and events, series and contacts changed on the server replacing
their files (kill -9 at every step of that)."""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from fakegraph import FakeGraph
from imaptools import file_flags, maildir_bodies, maildir_files, run, run_process, write_local

from mailsync.message import to_lf
from mailsync.stores import canonical_url
from mailsync.stores import graph as graphmod

USER = "alice@example.org"
CRASHED = 137


def mime(n: int, subject: str = "", extra: str = "") -> bytes:
    subject = subject or f"message {n}"
    return (
        f"From: bob@example.org\r\nTo: {USER}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{n}.graph@example.org>\r\nDate: Mon, 4 Mar 2019 05:06:07 +0000\r\n\r\n"
        f"Body {n}.\r\n{extra}"
    ).encode()


@pytest.fixture
def graph(mailenv, monkeypatch):
    """url(server, **options): a graph:// URL of the fake's mailbox whose token_command
    prints the file mailenv/token (the server's token to begin with)."""
    monkeypatch.setattr(graphmod, "MAX_WAIT", 30.0)
    token_file = mailenv / "token"

    def url(server: FakeGraph, **query) -> str:
        if not token_file.exists():
            token_file.write_text(server.token + "\n")
        options = {"tls": "none", "token_command": f"cat {token_file}", **query}
        host = server.url.removeprefix("http://").removeprefix("https://")
        return f"graph://{USER}@{host}?" + "&".join(
            f"{k}={quote(str(v), safe='/')}" for k, v in options.items()
        )

    return url


def pull(url: str, root: Path, *extra: str):
    return run("-v", "pull", *extra, url, root)


def value_fetches(server: FakeGraph) -> int:
    return sum(server.value_downloads.values())


def set_flags(path: Path, letters: str) -> None:
    """What a mail reader does to a message it reads or flags: into cur/, with these
    Maildir flag letters."""
    path.rename(path.parent.parent / "cur" / (path.name.split(":")[0] + ":2," + letters))


def test_initial_pull_of_every_mail_folder(fake_graph, graph, mailenv):
    fake = fake_graph
    received = datetime(2021, 5, 6, 7, 8, 9, tzinfo=UTC)
    fake.add_message("inbox", mime(1), is_read=True, received=received)
    fake.add_message("inbox", mime(2), flag="flagged", categories=["work", "Project X"])
    fake.add_message("inbox", mime(3, extra="Grüße ✓\r\n.\r\n"), last_verb=102)
    fake.add_message("inbox", mime(4), last_verb=104, is_read=True)
    fake.add_message("sentitems", mime(5), is_read=True)
    fake.add_message("deleteditems", mime(6))
    fake.add_message("junkemail", mime(7))
    fake.add_message("archive", mime(8))
    fake.add_message("drafts", mime(9), is_draft=True)
    fake.add_folder("inbox", "Projects")
    fake.add_folder("inbox/Projects", "2024")
    fake.add_message("inbox/Projects/2024", mime(10))
    fake.add_folder("msgfolderroot", "Lists")
    fake.add_message("msgfolderroot/Lists", mime(11))
    fake.add_folder("msgfolderroot", "Hidden mail", hidden=True)
    fake.add_message("msgfolderroot/Hidden mail", mime(12))
    fake.add_folder("msgfolderroot", "Hidden empty", hidden=True)
    root = mailenv / "mail"
    result = pull(graph(fake), root)
    assert result.exit_code == 0, result.output
    bodies = maildir_bodies(root)
    assert {k for k, v in bodies.items() if v} == {
        "INBOX", "Sent", "Trash", "Junk", "Archive", "Drafts", "INBOX/Projects/2024", "Lists",
        "Hidden mail",
    }  # fmt: skip
    assert "Hidden empty" not in bodies
    third = mime(3, extra="Grüße ✓\r\n.\r\n")
    assert bodies["INBOX"] == Counter(to_lf(m) for m in (mime(1), mime(2), third, mime(4)))
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    assert file_flags(files[to_lf(mime(1))]) == {"\\Seen"}
    assert files[to_lf(mime(1))].stat().st_mtime == received.timestamp()
    assert file_flags(files[to_lf(mime(2))]) == {"\\Flagged"}
    keywords = (root / "INBOX" / "dovecot-keywords").read_text().split()
    letter = chr(ord("a") + int(keywords[keywords.index("work") - 1]))
    assert letter in files[to_lf(mime(2))].name.split(":2,")[1]
    assert file_flags(files[to_lf(third)]) == {"\\Answered"}
    assert file_flags(files[to_lf(mime(4))]) == {"\\Seen", "$Forwarded"}
    # Every request asked for immutable ids and went to /users/USER (the address as is).
    assert all(r.path.startswith(f"/v1.0/users/{USER}/") for r in fake.requests), fake.requests
    assert value_fetches(fake) == 12
    # A body of a message the listing showed is fetched without asking where it is.
    reads = [r for r in fake.requests if r.query.get("$select") == "parentFolderId"]
    assert reads == [], reads


def test_user_written_percent_encoded_is_the_same_mailbox(fake_graph, graph, mailenv):
    fake_graph.add_message("inbox", mime(1))
    url = graph(fake_graph).replace(f"graph://{USER}@", "graph://alice%40example.org@")
    result = pull(url, mailenv / "mail")
    assert result.exit_code == 0, result.output
    assert maildir_bodies(mailenv / "mail")["INBOX"] == Counter([to_lf(mime(1))])
    # Both spellings are one account: one state, so nothing is downloaded again.
    assert pull(graph(fake_graph), mailenv / "mail").exit_code == 0
    assert value_fetches(fake_graph) == 1
    assert canonical_url(url) == canonical_url(graph(fake_graph))


def test_rerun_downloads_nothing_and_sees_changes(fake_graph, graph, mailenv):
    fake = fake_graph
    ids = [fake.add_message("inbox", mime(n)) for n in range(5)]
    fake.add_folder("inbox", "Old")
    root = mailenv / "mail"
    url = graph(fake)
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert value_fetches(fake) == 5
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert value_fetches(fake) == 5  # nothing downloaded again
    fake.update_message(ids[0], is_read=True)
    fake.update_message(ids[1], flag="flagged", categories=["todo"])
    fake.delete_message(ids[2])  # DELETE: to Recoverable Items, out of sight
    fake.move_message(ids[3], "inbox/Old")
    fake.add_message("inbox", mime(10))
    result = pull(url, root, "--mirror")
    assert result.exit_code == 0, result.output
    assert value_fetches(fake) == 5 + 2  # the new one, and the moved one in its new folder
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    assert set(files) == {to_lf(mime(n)) for n in (0, 1, 4, 10)}
    assert file_flags(files[to_lf(mime(0))]) == {"\\Seen"}
    assert file_flags(files[to_lf(mime(1))]) == {"\\Flagged"}
    assert "todo" in (root / "INBOX" / "dovecot-keywords").read_text().split()
    assert maildir_bodies(root)["INBOX/Old"] == Counter([to_lf(mime(3))])
    # The rename of a folder on the server is followed by its id: nothing downloaded.
    fake.rename_folder("inbox/Old", "Older")
    result = pull(url, root, "--mirror")
    assert result.exit_code == 0, result.output
    assert value_fetches(fake) == 7
    bodies = maildir_bodies(root)
    assert bodies["INBOX/Older"] == Counter([to_lf(mime(3))]) and "INBOX/Old" not in bodies


def test_delta_comes_in_pages_of_the_size_asked_for(fake_graph, graph, mailenv, monkeypatch):
    from mailsync.stores import graph_folder

    monkeypatch.setattr(graph_folder, "PAGE_SIZE", 3)
    for n in range(10):
        fake_graph.add_message("inbox", mime(n))
    root = mailenv / "mail"
    assert pull(graph(fake_graph), root).exit_code == 0
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in range(10))
    inbox = fake_graph.folder_id("inbox")
    pages = [
        r
        for r in fake_graph.requests
        if "delta" in r.path and inbox in unquote(r.path) + str(r.query)
    ]
    assert len(pages) == 4, fake_graph.requests
    assert all("odata.maxpagesize=3" in (r.prefer or "") for r in pages)


def test_void_delta_link_is_a_full_listing_without_downloads(fake_graph, graph, mailenv):
    for n in range(5):
        fake_graph.add_message("inbox", mime(n))
    root = mailenv / "mail"
    url = graph(fake_graph)
    assert pull(url, root).exit_code == 0
    for code in ("syncStateNotFound", "resyncRequired"):
        fake_graph.invalidate_delta_tokens(code)
        fake_graph.add_message("inbox", mime(5 if code == "syncStateNotFound" else 6))
        result = pull(url, root)
        assert result.exit_code == 0, result.output
        assert "no longer knows the last delta link" in result.output
    assert value_fetches(fake_graph) == 7
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in range(7))


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_is_waited_out_and_reported(fake_graph, graph, mailenv, status):
    fake_graph.add_message("inbox", mime(1))
    url = graph(fake_graph)
    root = mailenv / "mail"
    assert pull(url, root).exit_code == 0
    fake_graph.add_message("inbox", mime(2))
    fake_graph.throttle(2, status=status, retry_after=1, match="delta")
    fake_graph.throttle(1, status=status, retry_after=1, match="$value")
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert result.output.count(f"Graph is busy (HTTP {status}") == 3
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(1)), to_lf(mime(2))])
    assert sum(1 for r in fake_graph.requests if r.status == status) == 3


def test_throttling_that_never_ends_gives_up_cleanly(fake_graph, graph, mailenv, monkeypatch):
    fake_graph.add_message("inbox", mime(1))
    fake_graph.add_message("sentitems", mime(2))
    url = graph(fake_graph)
    root = mailenv / "mail"
    monkeypatch.setattr(graphmod, "MAX_WAIT", 2.0)
    fake_graph.throttle(1000, retry_after=1, match="$value")
    result = pull(url, root)
    assert result.exit_code == 1, result.output  # a rerun helps; the state is consistent
    assert "kept throttling" in result.output and "gave up" in result.output
    assert not maildir_bodies(root).get("INBOX")
    fake_graph.throttle(0)
    fake_graph._throttles.clear()
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(1))])
    assert maildir_bodies(root)["Sent"] == Counter([to_lf(mime(2))])


def test_expired_token_is_renewed_once_and_a_refused_one_is_exit_3(fake_graph, graph, mailenv):
    fake_graph.add_message("inbox", mime(1))
    url = graph(fake_graph)
    root = mailenv / "mail"
    # The token the command prints expires; the command prints a fresh one when run again.
    fake_graph.expire_token(fake_graph.token)
    fresh = fake_graph.add_token()
    (mailenv / "token").write_text(f"{fresh}\n")
    assert pull(url, root).exit_code == 0
    (mailenv / "token").write_text("not-a-token\n")
    result = pull(url, root)
    assert result.exit_code == 3, result.output
    assert "refused a fresh OAuth2 token" in result.output
    assert "not-a-token" not in result.output


def test_requests_name_the_mailbox_whatever_the_login(fake_graph, graph, mailenv):
    """Requests go to /v1.0/users/USER/... for a user's own (delegated) login too, never
    /me: a login of another account is refused by Graph (403, exit 3) instead of
    quietly backing up that account's mailbox into this one's folders."""
    fake_graph.add_message("inbox", mime(1))
    root = mailenv / "mail"
    result = pull(graph(fake_graph), root)
    assert result.exit_code == 0, result.output
    paths = {r.path for r in fake_graph.requests}
    assert paths and all(p.startswith(f"/v1.0/users/{USER}/") for p in paths), paths
    (mailenv / "token").write_text(fake_graph.add_token(user="bob@example.org") + "\n")
    other = mailenv / "other"
    result = pull(graph(fake_graph), other)
    assert result.exit_code == 3 and "ErrorAccessDenied" in result.output, result.output
    assert "may not read alice@example.org's mailbox" in result.output
    assert not maildir_bodies(other).get("INBOX")


def test_without_a_token_source_is_a_config_error(fake_graph, mailenv):
    host = fake_graph.url.removeprefix("http://")
    result = pull(f"graph://{USER}@{host}?tls=none", mailenv / "mail")
    assert result.exit_code == 2, result.output
    assert "Graph needs OAuth2" in result.output


def test_two_way_flags_and_deletions_reach_the_server(fake_graph, graph, mailenv):
    fake = fake_graph
    ids = [
        fake.add_message("inbox", mime(n), categories=["old"] if n == 3 else ()) for n in range(5)
    ]
    root = mailenv / "mail"
    url = graph(fake)
    assert run("sync", url, root).exit_code == 0
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    set_flags(files[to_lf(mime(0))], "S")
    set_flags(files[to_lf(mime(1))], "F")
    set_flags(files[to_lf(mime(4))], "R")
    files[to_lf(mime(2))].unlink()
    result = run("-v", "sync", url, root)
    assert result.exit_code == 0, result.output
    assert fake.message(ids[0])["is_read"] is True
    assert fake.message(ids[1])["flag"] == "flagged"
    assert fake.message(ids[4])["extended"] == {"Integer 0x1081": "102"}
    assert fake.message(ids[3])["categories"] == ["old"]  # untouched
    gone = fake.message(ids[2])  # moved to Deleted Items, not out of sight
    assert gone["folder_id"] == fake.folder_id("deleteditems")
    # The next run changes nothing on either side and downloads nothing new
    # but the deleted message, now in Trash.
    result = run("sync", url, root)
    assert result.exit_code == 0, result.output
    assert "copied 0 to local, 0 to remote, flags 0" in result.output.split("INBOX:")[1]
    assert maildir_bodies(root)["Trash"] == Counter([to_lf(mime(2))])
    # A flag taken away locally is taken away on the server.
    (path,) = (p for p in maildir_files(root)["INBOX"] if p.read_bytes() == to_lf(mime(1)))
    set_flags(path, "")
    assert run("sync", url, root).exit_code == 0
    assert fake.message(ids[1])["flag"] == "notFlagged"
    # After runs that wrote to it, the folder is asked for its changes, not listed anew.
    inbox = fake.folder_id("inbox")
    fake.requests.clear()
    assert run("sync", url, root).exit_code == 0
    (asked,) = [r for r in fake.requests if "delta" in r.path and inbox in unquote(r.path)]
    assert "$deltatoken" in asked.query


def test_answered_and_forwarded_both_stay_though_graph_keeps_one(fake_graph, graph, mailenv):
    key = fake_graph.add_message("inbox", mime(1), last_verb=104)
    root = mailenv / "mail"
    url = graph(fake_graph)
    assert run("sync", url, root).exit_code == 0
    (path,) = maildir_files(root)["INBOX"]
    assert file_flags(path) == {"$Forwarded"}
    set_flags(path, "".join(sorted(path.name.rpartition(":2,")[2] + "R")))
    for _ in range(2):
        result = run("sync", url, root)
        assert result.exit_code == 0, result.output
        (path,) = maildir_files(root)["INBOX"]
        assert file_flags(path) == {"\\Answered", "$Forwarded"}
        assert fake_graph.message(key)["extended"] == {"Integer 0x1081": "102"}


def test_hard_delete_when_asked(fake_graph, graph, mailenv):
    keys = [fake_graph.add_message("inbox", mime(n)) for n in range(3)]
    root = mailenv / "mail"
    url = graph(fake_graph, hard_delete="true")
    assert run("sync", url, root).exit_code == 0
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    files[to_lf(mime(1))].unlink()
    assert run("sync", url, root).exit_code == 0
    assert len(fake_graph.messages("inbox")) == 2 and fake_graph.messages("deleteditems") == []
    assert any(r.path.endswith("/permanentDelete") for r in fake_graph.requests)
    del keys


def test_new_local_mail_is_refused_with_exit_2_and_the_way_to_restore(fake_graph, graph, mailenv):
    """A one-way push of new mail into Graph stops (exit 2): Graph could only make it a
    draft, and restoring is what IMAP is for."""
    fake_graph.add_message("inbox", mime(1))
    root = mailenv / "mail"
    url = graph(fake_graph)
    assert run("sync", url, root).exit_code == 0
    write_local(root, "INBOX", to_lf(mime(2)))
    result = run("push", root, url)
    assert result.exit_code == 2, result.output
    assert "only create a message as a draft" in result.output
    assert f"imaps://{USER}@outlook.office365.com" in result.output
    assert len(fake_graph.messages("inbox")) == 1 and fake_graph.messages("drafts") == []
    assert not any(r.method == "POST" and r.path.endswith("/messages") for r in fake_graph.requests)


def move_local(root: Path, path: Path, folder: str) -> Path:
    """What a mail reader does to move a message: its file, name and flags kept, into
    the other folder's cur/."""
    target = root / folder
    for sub in ("cur", "new", "tmp"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    moved = target / "cur" / path.name
    path.rename(moved)
    return moved


def drafts_posted(fake: FakeGraph) -> bool:
    return any(r.method == "POST" and r.path.endswith("/messages") for r in fake.requests)


def test_two_way_a_message_moved_locally_is_moved_on_the_server(fake_graph, graph, mailenv):
    """Two-way, a message moved from INBOX to Archive in a mail reader, with INBOX synced
    first (--jobs 1: INBOX, then the others by name): INBOX's deletion puts it in Deleted
    Items, then Archive finds it there by Message-ID and content and moves it: one run,
    exit 0, the same id and bytes in Archive, the flags it has locally (read, a flag
    taken off), nothing in Deleted Items,
    no draft; the next run changes and downloads nothing.  A message deleted locally and
    one new locally behave as before: to Deleted Items; refused by name (exit 1)."""
    fake = fake_graph
    keys = [fake.add_message("inbox", mime(n)) for n in range(3)]
    fake.update_message(keys[1], flag="flagged")
    root = mailenv / "mail"
    url = graph(fake)
    assert run("sync", url, root).exit_code == 0
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    set_flags(files[to_lf(mime(1))], "S")  # read, and unflagged
    (path,) = (p for p in maildir_files(root)["INBOX"] if p.read_bytes() == to_lf(mime(1)))
    moved = move_local(root, path, "Archive")
    fake.requests.clear()
    result = run("-v", "sync", "--jobs", "1", url, root)
    assert result.exit_code == 0, result.output
    assert [m["immutable_id"] for m in fake.messages("archive")] == [keys[1]]
    message = fake.message(keys[1])
    assert message["mime"] == mime(1) and not message["is_draft"]
    assert message["is_read"] is True and message["flag"] == "notFlagged"
    assert fake.messages("deleteditems") == [] and fake.messages("drafts") == []
    assert not drafts_posted(fake)
    assert maildir_bodies(root)["Archive"] == Counter([to_lf(mime(1))])
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(0)), to_lf(mime(2))])
    assert moved.exists() and not maildir_bodies(root).get("Trash")
    downloads = value_fetches(fake)
    for _ in range(2):
        result = run("sync", url, root)
        assert result.exit_code == 0, result.output
        assert "copied 0 to local, 0 to remote, flags 0, deleted 0" in result.output
    assert value_fetches(fake) == downloads
    assert maildir_bodies(root)["Archive"] == Counter([to_lf(mime(1))])
    # Deleted locally: to Deleted Items.  New locally (on the server nowhere): refused.
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    files[to_lf(mime(0))].unlink()
    write_local(root, "Archive", to_lf(mime(7)))
    result = run("sync", url, root)
    assert result.exit_code == 1, result.output
    assert "refuses local message" in result.output and "<7.graph@example.org>" in result.output
    assert "only create a message as a draft" in result.output
    assert [m["immutable_id"] for m in fake.messages("deleteditems")] == [keys[0]]
    assert [m["immutable_id"] for m in fake.messages("archive")] == [keys[1]]
    assert not drafts_posted(fake)
    result = run("sync", url, root)
    assert result.exit_code == 0 and "held back 1" in result.output, result.output


def test_a_moved_message_answered_and_forwarded_keeps_answered(fake_graph, graph, mailenv):
    """A message answered on the server, forwarded locally, then moved locally: Graph
    keeps one last verb, and with both flags it is the reply's (as set_flags does), not
    the forward's the move's flag change names; both flags stay locally."""
    key = fake_graph.add_message("inbox", mime(1), last_verb=102)
    fake_graph.add_message("inbox", mime(2))  # (INBOX not emptied: the engine guards that)
    root = mailenv / "mail"
    url = graph(fake_graph)
    assert run("sync", url, root).exit_code == 0
    files = {p.read_bytes(): p for p in maildir_files(root)["INBOX"]}
    set_flags(files[to_lf(mime(1))], "PR")
    (path,) = (p for p in maildir_files(root)["INBOX"] if p.read_bytes() == to_lf(mime(1)))
    move_local(root, path, "Archive")
    result = run("sync", "--jobs", "1", url, root)
    assert result.exit_code == 0, result.output
    assert fake_graph.message(key)["folder_id"] == fake_graph.folder_id("archive")
    assert fake_graph.message(key)["extended"] == {"Integer 0x1081": "102"}
    (path,) = maildir_files(root)["Archive"]
    assert file_flags(path) == {"\\Answered", "$Forwarded"}


@pytest.mark.parametrize("old", ["Zeta", "Projects"])
def test_a_local_move_whose_deletion_comes_second_is_moved_by_the_next_run(
    fake_graph, graph, mailenv, old
):
    """The other order (--jobs 1, from a folder synced after Archive): Archive finds
    the message still in the old folder on the server and does not move it (a store
    cannot tell a move from a copy the user kept there): named, exit 1, no draft.  The
    old folder's deletion puts it in Deleted Items, and the next run moves it to
    Archive (exit 0), same id, nothing left in Deleted Items or in the local Trash.
    From Projects, synced before Trash, the first run also brings it into the local
    Trash from Deleted Items, and the next run takes it out again when it leaves.
    (Deleted Items holds another message: had the move emptied it, the engine's guard
    against a folder that is suddenly empty would hold back that local deletion.)"""
    fake = fake_graph
    fake.add_folder("msgfolderroot", old)
    keys = [fake.add_message(f"msgfolderroot/{old}", mime(n)) for n in range(2)]
    trashed = fake.add_message("deleteditems", mime(5))
    root = mailenv / "mail"
    url = graph(fake)
    assert run("sync", url, root).exit_code == 0
    (path,) = (p for p in maildir_files(root)[old] if p.read_bytes() == to_lf(mime(1)))
    move_local(root, path, "Archive")
    result = run("sync", "--jobs", "1", url, root)
    assert result.exit_code == 1, result.output
    assert "<1.graph@example.org> is still in another folder" in result.output
    assert "refuses" not in result.output
    in_trash = sorted(m["immutable_id"] for m in fake.messages("deleteditems"))
    assert in_trash == sorted([keys[1], trashed])
    assert fake.messages("archive") == [] and not drafts_posted(fake)
    trash = maildir_bodies(root)["Trash"]
    assert trash == Counter([to_lf(mime(5))] + [to_lf(mime(1))] * (old == "Projects"))
    result = run("sync", "--jobs", "1", url, root)
    assert result.exit_code == 0, result.output
    assert [m["immutable_id"] for m in fake.messages("archive")] == [keys[1]]
    assert fake.message(keys[1])["mime"] == mime(1)
    assert [m["immutable_id"] for m in fake.messages("deleteditems")] == [trashed]
    assert not drafts_posted(fake)
    bodies = maildir_bodies(root)
    assert bodies["Archive"] == Counter([to_lf(mime(1))])
    assert bodies[old] == Counter([to_lf(mime(0))])
    assert bodies["Trash"] == Counter([to_lf(mime(5))])
    result = run("sync", url, root)
    assert result.exit_code == 0 and "held back" not in result.output, result.output


def test_only_the_same_message_no_folder_still_claims_is_moved(fake_graph, graph, mailenv):
    """What append() does not move: a message the user copied (not moved) locally from
    INBOX to Archive, which the server's INBOX still has (named, exit 1 on each run,
    left in INBOX: a store cannot tell it from a move whose deletion has not gone back
    yet); a local message whose Message-ID is that of one in Deleted Items with other
    content (refused as new mail, the Deleted Items message left there)."""
    fake = fake_graph
    inbox = fake.add_message("inbox", mime(1))
    trashed = fake.add_message("deleteditems", mime(2, extra="the server's own text\r\n"))
    root = mailenv / "mail"
    url = graph(fake)
    assert run("sync", url, root).exit_code == 0
    (path,) = maildir_files(root)["INBOX"]
    write_local(root, "Archive", path.read_bytes())
    write_local(root, "Archive", to_lf(mime(2)))
    for n in range(2):
        result = run("sync", "--jobs", "1", url, root)
        assert result.exit_code == 1, result.output
        assert "<1.graph@example.org> is still in another folder" in result.output
        assert "if it was copied" in result.output
        if n == 0:
            assert "refuses local message" in result.output
            assert "<2.graph@example.org>" in result.output
        else:
            assert "held back 1" in result.output
        assert fake.message(inbox)["folder_id"] == fake.folder_id("inbox")
        assert fake.message(trashed)["folder_id"] == fake.folder_id("deleteditems")
        assert fake.messages("archive") == [] and not drafts_posted(fake)
    bodies = maildir_bodies(root)
    assert bodies["Archive"] == Counter([to_lf(mime(1)), to_lf(mime(2))])
    assert bodies["INBOX"] == Counter([to_lf(mime(1))])


def test_kill_at_every_step_of_a_local_move_then_rerun(graph, mailenv):
    """The crash hook at every step of the two-way run that makes a local move a server
    move (INBOX to Archive, --jobs 1), each time from a fresh mailbox and a fresh local
    copy, then a rerun: exit 0, and the message exactly once on the server (in Archive,
    its id kept, nowhere else, no draft) and once locally (in Archive).  Killed between
    the move and the state's commit, the rerun finds it in Archive's listing and links
    it by content; killed after INBOX's deletion, the rerun's deletion finds it gone
    from INBOX."""
    import shutil

    root, state, token = mailenv / "mail", mailenv / "state", mailenv / "token"
    killed_after_move = 0
    for crash_at in range(1, 100):
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        token.unlink(missing_ok=True)
        with FakeGraph() as fake:
            fake.token = fake.add_token()
            url = graph(fake)
            keys = [fake.add_message("inbox", mime(n)) for n in range(3)]
            assert run("sync", url, root).exit_code == 0
            (path,) = (p for p in maildir_files(root)["INBOX"] if p.read_bytes() == to_lf(mime(1)))
            move_local(root, path, "Archive")
            done = run_process(
                "-v", "sync", "--jobs", "1", url, root, password="", state=state,
                crash_at=crash_at,
            )  # fmt: skip
            assert done.returncode in (0, CRASHED), done.stderr
            killed_after_move += done.returncode == CRASHED and "moved message" in done.stderr
            result = run("sync", "--jobs", "1", url, root)
            assert result.exit_code == 0, (crash_at, done.stderr, result.output)
            where = f"step {crash_at}: {done.stderr}"
            assert [m["immutable_id"] for m in fake.messages("archive")] == [keys[1]], where
            assert fake.message(keys[1])["mime"] == mime(1)
            assert sorted(m["immutable_id"] for m in fake.messages("inbox")) == sorted(
                [keys[0], keys[2]]
            )
            assert fake.messages("deleteditems") == [] and not drafts_posted(fake), where
            bodies = maildir_bodies(root)
            assert bodies["Archive"] == Counter([to_lf(mime(1))]), where
            assert bodies["INBOX"] == Counter([to_lf(mime(0)), to_lf(mime(2))]), where
            assert not bodies.get("Trash"), where
        if done.returncode == 0:
            break
    assert crash_at > 3 and killed_after_move > 0


@pytest.mark.parametrize(
    "folder, options",
    [("INBOX", {}), ("Trash", {}), ("INBOX", {"hard_delete": "true"})],
    ids=["to-deleted-items", "from-deleted-items", "hard-delete"],
)
def test_a_deletion_leaves_a_message_moved_out_of_the_folder_since(
    fake_graph, graph, mailenv, folder, options
):
    """An immutable id names its message wherever it is: a message listed in a folder
    and moved elsewhere since (by the user on another device, or by a local move that
    append() made a server move) is not deleted by that folder's deletion of it (move
    to Deleted Items, DELETE, permanentDelete), which takes it as gone; a message still
    there is deleted; one gone altogether (404) is what was asked."""
    from mailsync.stores import open_store

    where = {"INBOX": "inbox", "Trash": "deleteditems"}[folder]
    moved, kept, purged = (fake_graph.add_message(where, mime(n)) for n in range(3))
    store = open_store(graph(fake_graph, **options))
    try:
        opened = store.open_folder(folder)
        assert set(opened.list()) == {moved, kept, purged}
        fake_graph.move_message(moved, "archive")
        fake_graph.delete_message(purged, hard=True)
        for key in (moved, kept, purged):
            assert opened.delete(key) == key
        opened.flush()
    finally:
        store.close()
    assert fake_graph.message(moved)["folder_id"] == fake_graph.folder_id("archive")
    assert [m["immutable_id"] for m in fake_graph.messages(where)] == []
    with pytest.raises(KeyError):
        fake_graph.message(purged)
    if folder == "INBOX" and not options:
        assert [m["immutable_id"] for m in fake_graph.messages("deleteditems")] == [kept]


def inbox_cursor(state_home: Path) -> dict:
    for db in (state_home / "mailsync").glob("*.db"):
        con = sqlite3.connect(db)
        try:
            row = con.execute("SELECT cursor_a FROM folders WHERE name_a = 'INBOX'").fetchone()
        finally:
            con.close()
        if row and row[0]:
            return json.loads(row[0])
    return {}


def test_kill_between_pages_then_rerun(fake_graph, graph, mailenv):
    """The crash hook at every step of a paged pull (pages of 2), then a rerun: every
    message exactly once locally, a page's link committed with its messages (a rerun goes
    on from there), and a run after the last one downloads nothing."""
    for n in range(9):
        fake_graph.add_message("inbox", mime(n))
    root = mailenv / "mail"
    url = graph(fake_graph, items="mail")
    env_state = mailenv / "state"
    log = []
    partial_cursors = 0
    for crash_at in range(1, 100):
        done = run_process(
            "-v", "pull", url, root, password="", state=env_state, crash_at=crash_at,
            env={"MAILSYNC_GRAPH_PAGE_SIZE": "2"},
        )  # fmt: skip
        log.append(f"step {crash_at}: {done.returncode}\n{done.stderr}")
        assert done.returncode in (0, CRASHED), done.stderr
        got = maildir_bodies(root).get("INBOX", Counter())
        assert max(got.values(), default=0) <= 1, log[-1]
        cursor = inbox_cursor(env_state)
        if sum(got.values()) < 9 and cursor:
            assert "link" in cursor
            partial_cursors += 1  # a nextLink was committed with its page's messages
        if done.returncode == 0:
            break
    assert crash_at > 5
    assert partial_cursors > 0
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in range(9))
    # (A message copied but not yet recorded when killed is downloaded again to be
    # recognised, as on EWS; once recorded, never again.)
    downloads = value_fetches(fake_graph)
    assert pull(url, root).exit_code == 0
    assert value_fetches(fake_graph) == downloads


def test_stores_of_one_mailbox_share_four_requests_in_flight(fake_graph, graph, mailenv):
    """Two stores of one mailbox (as parallel workers open them) fetching six bodies
    each while the fake holds every request: four are in flight, never a fifth (which
    the fake would answer 429, MailboxConcurrency); released, all twelve arrive."""
    import threading
    import time

    from mailsync.stores import open_store

    for n in range(12):
        fake_graph.add_message("inbox", mime(n))
    url = graph(fake_graph)
    stores = [open_store(url) for _ in range(2)]
    folders = [store.open_folder("INBOX") for store in stores]
    keys = sorted(folders[0].list())
    folders[1].list()
    got: list = []
    fake_graph.hold()
    threads = [
        threading.Thread(target=lambda f=f, k=k: got.extend(f.fetch_many(k)))
        for f, k in ((folders[0], keys[:6]), (folders[1], keys[6:]))
    ]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while fake_graph.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # room for a fifth request, if one were sent
        assert fake_graph.in_flight == 4
    finally:
        fake_graph.release()
        for thread in threads:
            thread.join()
        for store in stores:
            store.close()
    assert [r for r in fake_graph.requests if r.status == 429] == []
    assert sorted(to_lf(body) for _, body in got) == sorted(to_lf(mime(n)) for n in range(12))


def test_over_large_answers_are_refused_not_buffered(fake_graph, graph, mailenv, monkeypatch):
    """A message over MAX_MESSAGE is skipped with a sentence (the others are copied, the
    run exits 1 and tries it again next time); a JSON answer over MAX_JSON (here the
    folder list) fails the run with exit 1 rather than fill memory."""
    fake_graph.add_message("inbox", mime(1))
    fake_graph.add_message("inbox", mime(2, extra="x" * 5000 + "\r\n"))
    root = mailenv / "mail"
    url = graph(fake_graph)
    monkeypatch.setattr(graphmod, "MAX_MESSAGE", 2000)
    result = pull(url, root)
    assert result.exit_code == 1, result.output
    assert "over the limit of 2000" in result.output, result.output
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(1))])
    monkeypatch.setattr(graphmod, "MAX_JSON", 100)
    fake_graph.add_message("inbox", mime(3))
    result = pull(url, root)
    assert result.exit_code == 1, result.output
    assert "over the limit of 100" in result.output, result.output
    monkeypatch.undo()
    monkeypatch.setattr(graphmod, "MAX_WAIT", 30.0)
    assert pull(url, root).exit_code == 0
    assert maildir_bodies(root)["INBOX"] == Counter(
        to_lf(mime(n, extra="x" * 5000 + "\r\n" if n == 2 else "")) for n in (1, 2, 3)
    )


def test_private_ca_over_https(fake_graph_tls, graph, mailenv):
    fake_graph_tls.add_message("inbox", mime(1))
    base = graph(fake_graph_tls).replace("tls=none&", "")
    result = pull(base, mailenv / "a")
    assert result.exit_code == 3, result.output
    assert "cafile=" in result.output
    result = pull(f"{base}&cafile={fake_graph_tls.cafile}", mailenv / "b")
    assert result.exit_code == 0, result.output
    assert maildir_bodies(mailenv / "b")["INBOX"] == Counter([to_lf(mime(1))])


def _event(subject: str, start: str, end: str, zone: str = "W. Europe Standard Time", **more):
    return {
        "subject": subject,
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        **more,
    }


def _calendars(root: Path, folder: str = "Calendar") -> dict[str, object]:
    """SUMMARY (of the first VEVENT) -> the parsed calendar of each .ics in the vdir."""
    import icalendar

    out = {}
    for path in (root / folder).glob("*.ics"):
        assert path.stat().st_mode & 0o777 == 0o600
        calendar = icalendar.Calendar.from_ical(path.read_bytes())
        first = next(c for c in calendar.walk("VEVENT"))
        out[str(first["SUMMARY"])] = calendar
    return out


def test_calendars_and_contacts_are_backed_up_as_vdirs(fake_graph, graph, mailenv):
    from datetime import date, timedelta

    fake = fake_graph
    fake.add_message("inbox", mime(1))
    soon = datetime.now(UTC).date() + timedelta(days=10)
    fake.add_event(None, _event("Lunch", f"{soon}T12:00:00", f"{soon}T13:00:00"))
    fake.add_event(
        None,
        _event("Holiday", f"{soon}T00:00:00", f"{soon + timedelta(days=1)}T00:00:00",
               isAllDay=True),
    )  # fmt: skip
    series = fake.add_event(
        None,
        _event(
            "Standup", f"{soon}T09:00:00", f"{soon}T09:15:00", "Pacific Standard Time",
            recurrence={
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": str(soon), "numberOfOccurrences": 5},
            },
        ),
    )  # fmt: skip
    fake.modify_occurrence(series, soon + timedelta(days=2), subject="Standup (moved)")
    team = fake.add_calendar("Team")
    fake.add_event(team, _event("Offsite", f"{soon}T08:00:00", f"{soon}T18:00:00"))
    fake.add_contact(None, {"displayName": "Bob Example", "givenName": "Bob",
                            "emailAddresses": [{"address": "bob@example.org"}]})  # fmt: skip
    friends = fake.add_contact_folder("Friends")
    fake.add_contact(friends, {"displayName": "Carol", "mobilePhone": "+1 555 0100"})
    root = mailenv / "mail"
    url = graph(fake, items="mail,calendar,contacts")
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert maildir_bodies(root)["INBOX"] == Counter([to_lf(mime(1))])
    calendars = _calendars(root)
    assert set(calendars) == {"Lunch", "Holiday", "Standup"}
    standup = calendars["Standup"]
    (rule,) = [c["RRULE"] for c in standup.walk("VEVENT") if "RRULE" in c]
    assert rule["FREQ"] == ["DAILY"] and rule["COUNT"] == [5]
    moved = [c for c in standup.walk("VEVENT") if "RECURRENCE-ID" in c]
    assert [str(c["SUMMARY"]) for c in moved] == ["Standup (moved)"]
    holiday = next(iter(calendars["Holiday"].walk("VEVENT")))
    assert holiday.decoded("DTSTART") == date.fromisoformat(str(soon))  # all day: a date
    assert set(_calendars(root, "Calendar/Team")) == {"Offsite"}
    cards = sorted(p.read_bytes() for p in (root / "Contacts").glob("*.vcf"))
    assert len(cards) == 1 and b"FN:Bob Example" in cards[0] and b"bob@example.org" in cards[0]
    (carol,) = (root / "Contacts" / "Friends").glob("*.vcf")
    assert b"FN:Carol" in carol.read_bytes() and b"\r" not in carol.read_bytes()
    # Reruns ask for changes only: one new contact, nothing else again.
    fake.requests.clear()
    fake.add_contact(None, {"displayName": "Dave"})
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert len(list((root / "Contacts").glob("*.vcf"))) == 2
    deltas = [r for r in fake.requests if "delta" in r.path]
    assert deltas and all("$deltatoken" in r.query for r in deltas)
    assert not any("/events/" in r.path for r in fake.requests)
    # Void delta links: every calendar and folder listed again, no item twice.
    fake.invalidate_delta_tokens()
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert set(_calendars(root)) == {"Lunch", "Holiday", "Standup"}
    assert len(list((root / "Calendar").glob("*.ics"))) == 3
    assert len(list((root / "Contacts").glob("*.vcf"))) == 2
    assert len(list((root / "Contacts" / "Friends").glob("*.vcf"))) == 1


def test_mail_only_by_default(fake_graph, graph, mailenv):
    fake_graph.add_event(None, _event("Lunch", "2030-01-01T12:00:00", "2030-01-01T13:00:00"))
    fake_graph.add_contact(None, {"displayName": "Bob"})
    fake_graph.add_message("inbox", mime(1))
    root = mailenv / "mail"
    assert pull(graph(fake_graph), root).exit_code == 0
    assert not (root / "Calendar").exists() and not (root / "Contacts").exists()
    assert not any("calendar" in r.path.lower() or "contact" in r.path.lower()
                   for r in fake_graph.requests)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "scopes"),
    [
        ({"grant": "client_credentials", "client_secret": "s"}, (graphmod.APP_SCOPE,)),
        ({}, tuple(graphmod.DELEGATED_SCOPES.split())),
        ({"scope": "Mail.Read offline_access"}, ("Mail.Read", "offline_access")),
    ],
)
def test_oauth2_asks_for_graph_scopes(options, scopes, mailenv):
    """oauth2 = "microsoft" asks for Graph's scopes, not IMAP's, unless scope says."""
    from mailsync.stores import open_store

    store = open_store(
        f"graph://{USER}@graph.microsoft.com",
        {"oauth2": "microsoft", "client_id": "app-id", "tenant": "corp.example", **options},
    )
    assert store.tokens.client.scopes == scopes
    assert store.base == f"https://graph.microsoft.com/v1.0/users/{USER}"


def test_bad_options_are_config_errors(mailenv):
    from mailsync.errors import ConfigError
    from mailsync.stores import open_store

    for options in ({"items": "mail,notes"}, {"token_command": "x", "bogus": "1"}):
        with pytest.raises(ConfigError):
            open_store(f"graph://{USER}@graph.microsoft.com", options)


def test_an_answer_dripping_in_is_given_up(mailenv):
    """A server that starts an answer and then sends a byte at a time: given up once it
    falls below 1 KiB/s after the first `timeout` seconds (exit 3), not waited on."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    stop = threading.Event()

    class Dripping(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while not stop.wait(0.05):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = (
            f"graph://{USER}@127.0.0.1:{server.server_port}?tls=none&timeout=1"
            "&token_command=echo%20t"
        )
        result = pull(url, mailenv / "mail")
        assert result.exit_code == 3, result.output
        assert "arriving too slowly" in result.output
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_calendar_window_chooses_the_events(fake_graph, graph, mailenv):
    from datetime import timedelta

    today = datetime.now(UTC).date()
    for subject, day in (("Old", today - timedelta(days=60)), ("Soon", today + timedelta(days=5)),
                         ("Later", today + timedelta(days=60))):  # fmt: skip
        fake_graph.add_event(None, _event(subject, f"{day}T10:00:00", f"{day}T11:00:00"))
    root = mailenv / "mail"
    url = graph(fake_graph, items="calendar", calendar_window="30d,30d")
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert set(_calendars(root)) == {"Soon"}
    root = mailenv / "default"
    assert pull(graph(fake_graph, items="calendar"), root).exit_code == 0
    assert set(_calendars(root)) == {"Old", "Soon", "Later"}
    for bad in ("5y", "x,2y", "5y,2y,1d", "-1d,2d"):
        result = pull(graph(fake_graph, items="calendar", calendar_window=bad), root)
        assert result.exit_code == 2, result.output
        assert "calendar_window" in result.output


def test_parallel_workers_list_the_folders_once(fake_graph, graph, mailenv):
    for name in ("A", "B", "C"):
        fake_graph.add_folder("inbox", name)
        fake_graph.add_message(f"inbox/{name}", mime(ord(name)))
    root = mailenv / "mail"
    result = run("pull", "--jobs", "3", graph(fake_graph), root)
    assert result.exit_code == 0, result.output
    assert all(maildir_bodies(root)[f"INBOX/{n}"] for n in "ABC")
    asked = [r for r in fake_graph.requests if r.path.endswith("/mailFolders/inbox")]
    assert len(asked) == 1


def test_a_message_graph_cannot_give_is_skipped_then_retried(fake_graph, graph, mailenv):
    keys = [fake_graph.add_message("inbox", mime(n)) for n in range(3)]
    root = mailenv / "mail"
    url = graph(fake_graph)
    fake_graph.fail(1, status=500, code="generalException", match=keys[1].rstrip("="))
    result = pull(url, root)
    assert result.exit_code == 1, result.output
    assert "generalException" in result.output
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in (0, 2))
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert maildir_bodies(root)["INBOX"] == Counter(to_lf(mime(n)) for n in range(3))
    assert fake_graph.value_downloads[keys[0]] == 1 and fake_graph.value_downloads[keys[1]] == 1


def _vdir_files(root: Path) -> dict[str, bytes]:
    """Every item file of the vdirs under `root`: path relative to it -> bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for pattern in ("Calendar/**/*.ics", "Contacts/**/*.vcf")
        for path in root.glob(pattern)
    }


def _changing_items(fake: FakeGraph) -> dict[str, str]:
    """A mailbox with a message, a single event, a series and a contact; their ids."""
    from datetime import timedelta

    soon = datetime.now(UTC).date() + timedelta(days=10)
    ids = {"message": fake.add_message("inbox", mime(1))}
    ids["soon"] = str(soon)
    ids["lunch"] = fake.add_event(None, _event("Lunch", f"{soon}T12:00:00", f"{soon}T13:00:00"))
    ids["standup"] = fake.add_event(
        None,
        _event(
            "Standup", f"{soon}T09:00:00", f"{soon}T09:15:00",
            recurrence={
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": str(soon), "numberOfOccurrences": 5},
            },
        ),
    )  # fmt: skip
    ids["bob"] = fake.add_contact(
        None, {"displayName": "Bob Example", "mobilePhone": "+1 555 0100"}
    )
    return ids


def _change_items(fake: FakeGraph, ids: dict[str, str]) -> None:
    """The event moved and renamed, an exception in the series, the contact's phone."""
    from datetime import date, timedelta

    soon = date.fromisoformat(ids["soon"])
    fake.update_event(
        ids["lunch"],
        subject="Lunch with Carol",
        start={"dateTime": f"{soon}T12:30:00", "timeZone": "W. Europe Standard Time"},
        end={"dateTime": f"{soon}T13:30:00", "timeZone": "W. Europe Standard Time"},
    )
    fake.modify_occurrence(ids["standup"], soon + timedelta(days=1), subject="Standup (moved)")
    fake.update_contact(ids["bob"], mobilePhone="+1 555 0199")


def _assert_changed_items_current(root: Path) -> None:
    """One file per item, each with its changed content."""
    calendars = _calendars(root)
    assert set(calendars) == {"Lunch with Carol", "Standup"}
    assert len(list((root / "Calendar").glob("*.ics"))) == 2
    lunch = next(iter(calendars["Lunch with Carol"].walk("VEVENT")))
    assert lunch.decoded("DTSTART").strftime("%H:%M") == "12:30"
    moved = [c for c in calendars["Standup"].walk("VEVENT") if "RECURRENCE-ID" in c]
    assert [str(c["SUMMARY"]) for c in moved] == ["Standup (moved)"]
    (card,) = (root / "Contacts").glob("*.vcf")
    assert b"+1 555 0199" in card.read_bytes() and b"+1 555 0100" not in card.read_bytes()


def test_a_series_over_several_delta_pages_is_one_file(fake_graph, graph, mailenv, monkeypatch):
    """Delta pages of 2 (the series' five occurrences span three): the series is
    downloaded and written once, a rerun downloads nothing, and an exception given to it
    later replaces its one file."""
    from mailsync.stores import graph_items

    monkeypatch.setattr(graph_items, "PAGE_SIZE", 2)
    fake = fake_graph
    ids = _changing_items(fake)
    root = mailenv / "mail"
    url = graph(fake, items="calendar,contacts")
    assert pull(url, root).exit_code == 0
    series_reads = [r for r in fake.requests if ids["standup"] in unquote(r.path)]
    assert len(series_reads) == 2  # the master and its instances, once
    files = _vdir_files(root)
    assert len([k for k in files if k.startswith("Calendar/")]) == 2
    fake.requests.clear()
    assert pull(url, root).exit_code == 0
    assert _vdir_files(root) == files
    items_read = [r.path for r in fake.requests if "delta" not in r.path]
    assert not [path for path in items_read if "/events/" in path or "/contacts/" in path]
    _change_items(fake, ids)
    assert pull(url, root).exit_code == 0
    _assert_changed_items_current(root)


def test_items_changed_on_the_server_replace_their_files(fake_graph, graph, mailenv):
    """An event moved and renamed, a series given an exception, a contact changed: each
    local file is replaced by the new version (one file per item); reruns with nothing
    new rewrite nothing; a message whose flags change is not downloaded again."""
    fake = fake_graph
    ids = _changing_items(fake)
    root = mailenv / "mail"
    url = graph(fake, items="mail,calendar,contacts")
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    before = _vdir_files(root)
    assert len(before) == 3
    result = pull(url, root)  # nothing new: nothing rewritten
    assert result.exit_code == 0, result.output
    assert _vdir_files(root) == before
    _change_items(fake, ids)
    fake.update_message(ids["message"], is_read=True)
    downloads = value_fetches(fake)
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    _assert_changed_items_current(root)
    assert value_fetches(fake) == downloads  # mail: flags only
    after = _vdir_files(root)
    assert not set(after) & set(before)  # each item's file replaced
    fake.requests.clear()
    for _ in range(2):
        result = pull(url, root)
        assert result.exit_code == 0, result.output
        assert _vdir_files(root) == after
    items_read = [r.path for r in fake.requests if "delta" not in r.path]
    assert not [path for path in items_read if "/events/" in path or "/contacts/" in path]
    # A state from before Graph items had versions: an item the delta names as changed
    # is backed up again all the same, the others are left alone.
    for db in (mailenv / "state" / "mailsync").glob("*.db"):
        con = sqlite3.connect(db)
        with con:
            con.execute("UPDATE pairs SET version_a = NULL")
        con.close()
    fake.update_contact(ids["bob"], mobilePhone="+1 555 0142")
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    (card,) = (root / "Contacts").glob("*.vcf")
    assert b"+1 555 0142" in card.read_bytes()
    assert {k: v for k, v in _vdir_files(root).items() if k.startswith("Calendar")} == {
        k: v for k, v in after.items() if k.startswith("Calendar")
    }


def _recorded_item_files(state_home: Path) -> set[str]:
    """The local file of every pair of the channel's vdirs, as "folder/key" (None: a
    pair that lost its local file)."""
    (db,) = (state_home / "mailsync").glob("*.db")
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT folders.name_b, pairs.key_b FROM pairs JOIN folders"
            " ON pairs.folder_id = folders.id WHERE pairs.key_a IS NOT NULL"
        ).fetchall()
    finally:
        con.close()
    return {f"{name}/{key}" for name, key in rows}


def test_kill_at_every_step_of_replacing_changed_items(fake_graph, graph, mailenv):
    """The crash hook at each step of a run that replaces changed items, then a rerun:
    every time one file per item with the newest content, and a run after that rewrites
    nothing.  Each crash starts from the same backup (taken before the changes)."""
    import shutil

    fake = fake_graph
    ids = _changing_items(fake)
    work, base = mailenv / "work", mailenv / "base"
    root, state = work / "mail", work / "state"  # (the state knows the local root's path)
    url = graph(fake, items="calendar,contacts")
    done = run_process("-v", "pull", url, root, password="", state=state)
    assert done.returncode == 0, done.stderr
    shutil.copytree(work, base, symlinks=True)
    _change_items(fake, ids)
    replaced_steps = 0
    for crash_at in range(1, 100):
        shutil.rmtree(work)
        shutil.copytree(base, work, symlinks=True)
        crashed = run_process("-v", "pull", url, root, password="", state=state, crash_at=crash_at)
        assert crashed.returncode in (0, CRASHED), crashed.stderr
        replaced_steps += "replaced" in crashed.stderr
        done = run_process("-v", "pull", url, root, password="", state=state)
        assert done.returncode == 0, f"after a crash at step {crash_at}: {done.stderr}"
        _assert_changed_items_current(root)
        after = _vdir_files(root)
        assert _recorded_item_files(state) == set(after)  # each one recorded, none lost
        done = run_process("-v", "pull", url, root, password="", state=state)
        assert done.returncode == 0, done.stderr
        assert _vdir_files(root) == after
        if crashed.returncode == 0:
            break
    assert crash_at > 6
    assert replaced_steps > 0  # crashes after an old copy was deleted, before its record


def test_cancelled_occurrences_are_exdates_and_a_later_one_replaces_the_file(
    fake_graph, graph, mailenv
):
    """Graph v1.0 names no cancelled occurrence: a series' instances leave them out.  A
    timed series (in Los Angeles, across nothing but its own zone) and an all-day one,
    each with an occurrence deleted: EXDATE at that occurrence's start in the series'
    zone (a date for all-day), so a calendar program expands the series without it; an
    exception stays a RECURRENCE-ID.  Cancelling one more later (by a run that never
    saw the series' occurrence ids) replaces the file on the next pull."""
    from datetime import date, timedelta
    from zoneinfo import ZoneInfo

    import recurring_ical_events

    fake = fake_graph
    fake.max_page_size = 2  # every list in pages of two: a series' instances too
    soon = datetime.now(UTC).date() + timedelta(days=10)
    daily = {
        "pattern": {"type": "daily", "interval": 1},
        "range": {"type": "numbered", "startDate": str(soon), "numberOfOccurrences": 6},
    }
    standup = fake.add_event(
        None,
        _event("Standup", f"{soon}T09:00:00", f"{soon}T09:15:00", "Pacific Standard Time",
               recurrence=daily),
    )  # fmt: skip
    holiday = fake.add_event(
        None,
        _event("Gym", f"{soon}T00:00:00", f"{soon + timedelta(days=1)}T00:00:00",
               "Tokyo Standard Time", isAllDay=True, recurrence=daily),
    )  # fmt: skip
    fake.cancel_occurrence(standup, soon + timedelta(days=2))
    fake.modify_occurrence(standup, soon + timedelta(days=3), subject="Standup (late)")
    fake.cancel_occurrence(holiday, soon + timedelta(days=1))
    root = mailenv / "mail"
    url = graph(fake, items="calendar")
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    la = ZoneInfo("America/Los_Angeles")

    def expanded(name: str) -> list:
        found = recurring_ical_events.of(_calendars(root)[name]).between(
            soon - timedelta(days=1), soon + timedelta(days=9)
        )
        return sorted((e.decoded("DTSTART"), str(e["SUMMARY"])) for e in found)

    def exdates(name: str) -> list:
        (main,) = [c for c in _calendars(root)[name].walk("VEVENT") if "RRULE" in c]
        values = main.get("EXDATE", [])
        values = values if isinstance(values, list) else [values]
        return [when.dt for value in values for when in value.dts]

    def at_nine(n: int) -> datetime:
        return datetime.combine(soon + timedelta(days=n), datetime.min.time(), la).replace(hour=9)

    assert exdates("Standup") == [at_nine(2)]
    assert expanded("Standup") == [
        (at_nine(n), "Standup (late)" if n == 3 else "Standup") for n in (0, 1, 3, 4, 5)
    ]
    assert exdates("Gym") == [soon + timedelta(days=1)]
    assert [when for when, _ in expanded("Gym")] == [
        soon + timedelta(days=n) for n in (0, 2, 3, 4, 5)
    ]
    assert all(isinstance(when, date) and not isinstance(when, datetime)
               for when, _ in expanded("Gym"))  # fmt: skip
    before = _vdir_files(root)
    # Nothing new: the series are not read again.
    fake.requests.clear()
    assert pull(url, root).exit_code == 0
    assert not [r for r in fake.requests if "/events/" in r.path]
    # One more cancelled, through Graph's DELETE of the occurrence's id.
    (fifth,) = [
        i["id"]
        for i in fake.instances(standup, datetime.now(UTC), datetime.now(UTC) + timedelta(days=30))
        if i["originalStart"].startswith(str(soon + timedelta(days=4)))
    ]
    request = urllib.request.Request(
        f"{fake.base}/users/{USER}/events/{quote(fifth, safe='')}",
        method="DELETE",
        headers={"Authorization": f"Bearer {fake.token}"},
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 204
    result = pull(url, root)
    assert result.exit_code == 0, result.output
    assert exdates("Standup") == [at_nine(2), at_nine(4)]
    assert [when for when, _ in expanded("Standup")] == [at_nine(n) for n in (0, 1, 3, 5)]
    after = _vdir_files(root)
    assert len(after) == 2 and len(set(after) - set(before)) == 1  # the series' file replaced
    assert exdates("Gym") == [soon + timedelta(days=1)]


def _login_config(home: Path, fake: FakeGraph, **options) -> Path:
    """A config with [store.work] (the fake's mailbox, OAuth2 with the tests'
    authorization server), [store.backup] (a Maildir) and a pulling [channel.work]."""
    host = fake.url.removeprefix("http://")
    lines = [
        "[store.work]",
        f'url = "graph://{USER}@{host}"',
        'tls = "none"',
        *(f"{key} = {json.dumps(value)}" for key, value in options.items()),
        "[store.backup]",
        f"url = {json.dumps('maildir:' + str(home / 'Mail'))}",
        "[channel.work]",
        'remote = "work"',
        'local = "backup"',
        'direction = "pull"',
    ]
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_device_login_then_client_credentials_reach_the_mailbox(
    fake_graph, oauth_server, mailenv, tmp_path
):
    """`mailsync login` (device flow) of the user, then a pull; and an application's
    client-credentials login (which Graph serves only at /users/USER, never /me) pulls
    the same mailbox with no sign-in."""
    import subprocess
    import sys

    fake = fake_graph
    fake.trust(oauth_server)
    fake.add_message("inbox", mime(1))
    client = oauth_server.add_client()
    custom = {
        "oauth2": "custom",
        "token_url": oauth_server.token_url,
        "device_url": oauth_server.device_url,
        "authorize_url": oauth_server.authorize_url,
        "scope": "Mail.ReadWrite offline_access",
    }
    config = _login_config(mailenv, fake, client_id=client.client_id, **custom)
    login = subprocess.Popen(
        [sys.executable, "-m", "mailsync", "--config", str(config), "login", "work"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert login.stdout is not None
    for line in login.stdout:
        found = re.search(r"open (\S+) and enter the code (\S+)", line)
        if found:
            oauth_server.approve_device(found.group(2), USER)
            break
    out, err = login.communicate(timeout=60)
    assert login.returncode == 0, err
    result = run("--config", config, "pull", "work")
    assert result.exit_code == 0, result.output
    assert maildir_bodies(mailenv / "Mail")["INBOX"] == Counter([to_lf(mime(1))])
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    daemon = oauth_server.add_client(secret="s3cret", app_user=USER)
    fake.add_message("inbox", mime(2))
    config = _login_config(
        mailenv,
        fake,
        client_id=daemon.client_id,
        grant="client_credentials",
        client_secret_command=f"cat {secret_file}",
        **{**custom, "scope": "https://graph.microsoft.com/.default"},
    )
    result = run("--config", config, "pull", "work")
    assert result.exit_code == 0, result.output
    assert maildir_bodies(mailenv / "Mail")["INBOX"] == Counter([to_lf(mime(n)) for n in (1, 2)])

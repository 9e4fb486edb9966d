"""The Microsoft Graph store through the CLI, against the fake Graph server: the pull of
every mail folder, reruns that download nothing, incremental changes (new, read, flagged,
deleted, moved, a folder renamed), a void delta link, throttling, a refused token, flags
and deletions going back, a message Graph could only make a draft refused, and kill -9
between delta pages."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from fakegraph import FakeGraph
from imaptools import file_flags, maildir_bodies, maildir_files, run, run_process

from mailsync.message import to_lf
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


def test_user_written_percent_encoded_is_the_same_mailbox(fake_graph, graph, mailenv):
    fake_graph.add_message("inbox", mime(1))
    url = graph(fake_graph).replace(f"graph://{USER}@", "graph://alice%40example.org@")
    result = pull(url, mailenv / "mail")
    assert result.exit_code == 0, result.output
    assert maildir_bodies(mailenv / "mail")["INBOX"] == Counter([to_lf(mime(1))])

"""Store.creation_problem(): what the dry run says about a folder it would create, for
every store, without creating anything or connecting."""

from __future__ import annotations

import pytest

from mailsync.stores import open_store


@pytest.mark.parametrize(
    "url, name, kind, expected",
    [
        ("maildir:{tmp}/m", "Archive/2019", "mail", None),
        ("maildir:{tmp}/m", "a/../b", "mail", "has an empty, '.' or '..' part"),
        ("maildir:{tmp}/m", "x/cur", "mail", "cur, new or tmp"),
        ("maildir:{tmp}/m?layout=maildir++", "a.b", "mail", "contains '.'"),
        ("maildir:{tmp}/m?layout=maildir++", "Calendar", "calendar", "need layout=verbatim"),
        ("mbox:{tmp}/b", "Archive/2019", "mail", None),
        ("mbox:{tmp}/b", ".hidden", "mail", "starts with '.'"),
        ("mbox:{tmp}/b", "Calendar", "calendar", "back them up into a Maildir tree"),
        ("imaps://a@h", "Archive/2019", "mail", None),
        ("imaps://a@h", "bad\x01name", "mail", "cannot be created on the server"),
        ("imaps://a@h", "Contacts", "contacts", "back them up into a Maildir tree"),
        ("ews://a@h/EWS/Exchange.asmx", "Archive/2019", "mail", None),
        ("ews://a@h/EWS/Exchange.asmx", "Archive/..", "mail", "cannot create a folder named"),
        ("ews://a@h/EWS/Exchange.asmx", "Calendar", "calendar", "does not create calendar"),
        ("memory:creation-test", "Anything", "mail", None),
    ],
)
def test_creation_problem(tmp_path, url, name, kind, expected):
    store = open_store(url.format(tmp=tmp_path))
    problem = store.creation_problem(name, kind)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem
    assert list(tmp_path.iterdir()) == []  # nothing was created to find out


@pytest.mark.parametrize("url", ["maildir:{tmp}/m", "mbox:{tmp}/b", "imaps://a@h", "memory:ro"])
def test_a_read_only_store_can_create_nothing(tmp_path, url):
    store = open_store(url.format(tmp=tmp_path), read_only=True)
    assert store.creation_problem("Archive") == "the store is read-only"

"""What a server stores when it is given awkward bytes: shared by the fixture tests of
Cyrus, Courier and Dovecot (test_*_fixture.py), which each state the exact answer of
their server for every sample.

``SAMPLES`` are messages as they go on the wire in an APPEND literal, byte for byte
(``append_raw`` bypasses imaplib's append, which turns lone CR and LF into CRLF, just as
mailsync's IMAP store does).  ``stored(client, raw)`` appends one to INBOX and returns
what the server answered and what ``FETCH BODY.PEEK[]`` gives back.
"""

from __future__ import annotations

import imaplib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imapclient import IMAPClient

HEAD = b"From: a@example.org\r\nTo: b@example.org\r\nMessage-ID: <m1@example.org>\r\n"
LONG_LINE = b"x" * 10_000

SAMPLES: dict[str, bytes] = {
    "plain": HEAD + b"Subject: plain\r\n\r\nbody\r\n",
    # UTF-8 (caf\u00e9) and Latin-1 (J\u00f6rg) bytes in header fields.
    "header_8bit": HEAD + b"Subject: caf\xc3\xa9\r\nX-Name: J\xf6rg\r\n\r\nbody\r\n",
    "body_8bit": HEAD
    + b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
    + b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9 \xe2\x9c\x93 J\xf6rg\r\n",
    "nul_body": HEAD + b"Subject: nul\r\n\r\nbefore\x00after\r\n",
    "no_final_crlf": HEAD + b"Subject: unterminated\r\n\r\nlast line",
    "bare_lf": HEAD + b"Subject: lf\r\n\r\none\ntwo\r\n",
    "bare_cr": HEAD + b"Subject: cr\r\n\r\none\rtwo\r\n",
    "long_body_line": HEAD + b"Subject: long\r\n\r\n" + LONG_LINE + b"\r\n",
    "long_header_line": HEAD + b"X-Long: " + LONG_LINE + b"\r\nSubject: long\r\n\r\nbody\r\n",
    "empty_body": HEAD + b"Subject: empty\r\n\r\n",
    "headers_only": HEAD + b"Subject: no separator\r\n",
}


@dataclass
class Stored:
    """The server's tagged answer to the APPEND, and the bytes it then serves (None when
    the APPEND was refused)."""

    status: str  # "OK" or "NO" (or "BAD")
    text: str
    body: bytes | None
    size: int | None  # RFC822.SIZE
    found_by_message_id: bool | None  # UID SEARCH HEADER Message-ID <m1@example.org>


def append_raw(client: IMAPClient, folder: str, raw: bytes) -> tuple[str, str]:
    """APPEND `raw` exactly as given; (status, the response text)."""
    imap = client._imap
    imap.literal = raw
    try:
        typ, data = imap._simple_command("APPEND", client._normalise_folder(folder), "()")
    except imaplib.IMAP4.error as exc:  # imaplib raises on BAD (and returns NO)
        return "BAD", str(exc)
    last = data[-1] if data else b""
    return typ, last.decode(errors="replace") if isinstance(last, bytes) else str(last)


def stored(client: IMAPClient, raw: bytes, folder: str = "INBOX") -> Stored:
    """Append `raw` to an empty `folder` and fetch it back."""
    client.select_folder(folder)
    assert not client.search("ALL"), f"{folder} must be empty"
    status, text = append_raw(client, folder, raw)
    body = size = found = None
    if status == "OK":
        client.noop()
        uids = client.search("ALL")
        assert len(uids) == 1, uids
        data = client.fetch(uids, ["BODY.PEEK[]", "RFC822.SIZE"])[uids[0]]
        body, size = data[b"BODY[]"], data[b"RFC822.SIZE"]
        found = client.search(["HEADER", "Message-ID", "<m1@example.org>"]) == uids
        client.delete_messages(uids)
    client.close_folder()  # expunges; Courier has no UNSELECT
    return Stored(status, text, body, size, found)

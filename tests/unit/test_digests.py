"""The digests that recognise a copy a destination changed: message.tolerant_fingerprint
(what Cyrus, Courier, Dovecot and mbox measurably do to a message, and nothing else) and
message.header_identity (the headers a server has no reason to touch)."""

from __future__ import annotations

import pytest
from servers.rewrites import SAMPLES
from servers.test_courier_fixture import REWRITES as COURIER
from servers.test_cyrus_fixture import REWRITES as CYRUS
from servers.test_dovecot_fixture import DOVECOT_REWRITES as DOVECOT

from mailsync.message import fingerprint, header_identity, to_lf, tolerant_fingerprint

# (server, sample) -> the bytes it stored, as its fixture test measured them.
STORED = {
    **{("cyrus", name): body for name, (status, body) in CYRUS.items() if status == "OK"},
    **{("courier", name): body for name, body in COURIER.items()},
    **{("dovecot", name): body for name, body in DOVECOT.items()},
}


@pytest.mark.parametrize(
    "server,sample", sorted(STORED), ids=[f"{a}-{b}" for a, b in sorted(STORED)]
)
def test_what_each_server_stores_is_recognised(server, sample):
    sent, stored = SAMPLES[sample], STORED[server, sample]
    assert tolerant_fingerprint(stored) == tolerant_fingerprint(sent)
    assert tolerant_fingerprint(to_lf(stored)) == tolerant_fingerprint(to_lf(sent))


def test_the_measured_rewrites_are_not_all_line_ends():
    """The cases above that fingerprint() alone cannot recognise (so the test above
    covers more than CRLF -> LF): Cyrus's "X", Courier's dropped CR and added CRLF,
    Dovecot's 0x80."""
    differ = {
        key for key, body in STORED.items() if fingerprint(body) != fingerprint(SAMPLES[key[1]])
    }
    assert differ == {
        ("cyrus", "header_8bit"),
        ("courier", "no_final_crlf"),
        ("courier", "bare_cr"),
        ("dovecot", "nul_body"),
    }


HEAD = b"From: a@example.org\nMessage-ID: <1@example.org>\nSubject: caf\xc3\xa9\n"


TOLERATED = {
    "cyrus-8bit-header": (HEAD + b"\nbody\n", HEAD.replace(b"\xc3\xa9", b"XX") + b"\nbody\n"),
    "other-8bit-header": (HEAD + b"\nb\n", HEAD.replace(b"\xc3\xa9", b"\xe9\xe9") + b"\nb\n"),
    "final-line-ends": (HEAD + b"\nbody", HEAD + b"\nbody\r\n\n"),  # mbox, Courier
    "courier-lone-cr": (HEAD + b"\none\rtwo\n", HEAD + b"\nonetwo\n"),
    "dovecot-nul": (HEAD + b"\na\x00b\n", HEAD + b"\na\x80b\n"),
    "nul-in-header": (b"Subject: a\x00b\n\nx\n", b"Subject: aXb\n\nx\n"),  # Dovecot + Cyrus
    "no-body": (HEAD, HEAD.replace(b"\xc3\xa9", b"XX")),  # all of it is the header
}


@pytest.mark.parametrize("one,other", TOLERATED.values(), ids=TOLERATED)
def test_tolerated(one, other):
    assert fingerprint(one) != fingerprint(other)
    assert tolerant_fingerprint(one) == tolerant_fingerprint(other)


NOT_TOLERATED = {
    "8bit-body-x": (HEAD + b"\ncaf\xc3\xa9\n", HEAD + b"\ncafXX\n"),
    "8bit-body": (HEAD + b"\ncaf\xc3\xa9\n", HEAD + b"\ncaf\xe9\xe9\n"),
    "nul-0x81": (HEAD + b"\na\x00b\n", HEAD + b"\na\x81b\n"),  # only NUL and 0x80 alike
    "nul-x-body": (HEAD + b"\na\x00b\n", HEAD + b"\naXb\n"),
    "ascii-header": (HEAD + b"\nb\n", HEAD.replace(b"caf", b"cab") + b"\nb\n"),
    "8bit-header-y": (HEAD + b"\nb\n", HEAD.replace(b"\xc3\xa9", b"Y") + b"\nb\n"),
    "lf-inside": (HEAD + b"\none\ntwo\n", HEAD + b"\nonetwo\n"),
    "blank-line-inside": (HEAD + b"\none\n\ntwo\n", HEAD + b"\none\ntwo\n"),
    "trailing-space": (HEAD + b"\nbody\n", HEAD + b"\nbody \n"),
    "blank-body-start": (HEAD + b"\n\nbody\n", HEAD + b"\nbody\n"),
    "added-header": (HEAD + b"\nbody\n", HEAD + b"X-Added: 1\n\nbody\n"),
}


@pytest.mark.parametrize("one,other", NOT_TOLERATED.values(), ids=NOT_TOLERATED)
def test_not_tolerated(one, other):
    assert tolerant_fingerprint(one) != tolerant_fingerprint(other)


# -- header_identity --------------------------------------------------------------------------

MESSAGE = (
    b"From: J\xc3\xb6rg Smith <Joerg@Example.org>\nTo: b@example.org\n"
    b"Date: Mon, 4 Mar 2019 05:06:07 +0000\nMessage-ID: <1@example.org>\n"
    b"Subject: Gr\xc3\xbc\xc3\x9fe\n\nbody\n"
)


@pytest.mark.parametrize(
    "rewritten",
    [
        MESSAGE.replace(b"\n", b"\r\n"),
        MESSAGE.replace(b"\xc3\xb6", b"XX").replace(b"\xc3\xbc\xc3\x9f", b"XXXX"),  # Cyrus
        MESSAGE.replace(b"Subject: Gr\xc3\xbc\xc3\x9fe", b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?="),
        b"X-Spam-Score: 0.1\nReceived: by mx\n" + MESSAGE,  # headers added
        MESSAGE.replace(b"body\n", b"another body, re-encoded\n"),
        MESSAGE.replace(b"Date: Mon,", b"Date:\n  Mon,"),  # folded
        MESSAGE.replace(b"<Joerg@Example.org>", b"<joerg@example.org>"),
    ],
)
def test_header_identity_survives_rewrites(rewritten):
    assert header_identity(rewritten) == header_identity(MESSAGE) is not None


@pytest.mark.parametrize(
    "other",
    [
        MESSAGE.replace(b"<1@example.org>", b"<2@example.org>"),
        MESSAGE.replace(b"05:06:07", b"05:06:08"),
        MESSAGE.replace(b"Joerg@", b"Jorg@"),
    ],
)
def test_header_identity_tells_messages_apart(other):
    assert header_identity(other) != header_identity(MESSAGE)


@pytest.mark.parametrize("missing", [b"Message-ID", b"Date", b"From"])
def test_header_identity_needs_message_id_date_and_from(missing):
    lines = [line for line in MESSAGE.split(b"\n") if not line.startswith(missing + b":")]
    assert header_identity(b"\n".join(lines)) is None
    assert header_identity(b"From: <>\nDate: x\nMessage-ID: <1@x>\n\n") is None

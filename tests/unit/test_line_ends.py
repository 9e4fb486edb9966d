"""to_crlf and to_lf: the wire's line ends and the disk's, byte for byte."""

from __future__ import annotations

import random
import re

import pytest

from mailsync.message import to_crlf, to_lf

BARE_LF = re.compile(rb"(?<!\r)\n")  # what to_crlf means, spelt out


def bodies() -> list[bytes]:
    rng = random.Random(14)
    out = [b"", b"\n", b"\r", b"\r\n", b"a\nb", b"a\r\nb\n", b"\n\n\r\r\n", b"x" * 100]
    for _ in range(300):  # short runs of the three bytes that matter, and letters
        out.append(bytes(rng.choice(b"\r\nab") for _ in range(rng.randrange(1, 40))))
    return out


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_to_crlf_turns_every_bare_lf_and_only_those(kind):
    """The fast path (no CR at all: bytes.replace) and the regular expression agree."""
    for body in bodies():
        got = to_crlf(kind(body))
        assert got == BARE_LF.sub(b"\r\n", body), body
        assert type(got) is bytes


def test_lf_bodies_round_trip():
    for body in bodies():
        if b"\r" not in body:
            assert to_lf(to_crlf(body)) == body

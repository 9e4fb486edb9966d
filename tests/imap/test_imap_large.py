"""Big messages come in pieces (UID FETCH uid BODY.PEEK[]<offset.length>), converted CRLF ->
LF piece by piece into one bytearray: byte-exact across piece boundaries (a CRLF split by
a boundary, lone CRs right before and after one), per-message errors when a message
vanishes or changes size in mid-read, and the peak RSS of a real `mailsync pull` of a
folder holding one 50 MiB message (the target is 100 MiB; it was ~130 MiB when the
whole literal and its LF copy were alive at once)."""

from __future__ import annotations

import base64
import os
import random
import re
import subprocess
import sys

import pytest
from imaptools import CommandSpy, connect, maildir_files

from mailsync import net as netmod
from mailsync.errors import MessageError
from mailsync.message import to_lf
from mailsync.stores import imap_bodies
from mailsync.stores.imap import IMAPFolder, IMAPStore

MIB = 1024 * 1024
RSS_LIMIT_MIB = 100  # the target (bench/RESULTS.md); measured 86-88 MiB, see the test


def store_for(server, user, read_only=True) -> IMAPStore:
    url = f"{server.url('imaps', user)}?cafile={server.cafile}"
    netmod._PASSWORDS.clear()
    store = IMAPStore(url, read_only=read_only)
    store._password = user.password
    return store


def append_raw(server, user, wire: bytes, folder: str = "INBOX") -> None:
    """APPEND exactly these bytes (imaplib's own append would rewrite lone CRs)."""
    with connect(server, user) as client:
        imap = client._imap
        imap.literal = wire
        typ, data = imap._simple_command("APPEND", folder, "()")
        assert typ == "OK", data


def server_wire(server, user, folder: str = "INBOX") -> dict[int, bytes]:
    """uid -> the body as the server sends it whole (BODY.PEEK[])."""
    with connect(server, user) as client:
        client.select_folder(folder, readonly=True)
        data = client.fetch(client.search(["ALL"]), ["BODY.PEEK[]"])
        return {uid: item[b"BODY[]"] for uid, item in data.items()}


def header(subject: str) -> bytes:
    return (
        f"From: big@example.org\r\nTo: b@example.org\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()


def base64_lines(size: int, seed: int) -> bytearray:
    """`size` bytes of random base64 in 76-character CRLF lines."""
    raw = random.Random(seed).randbytes(size * 3 // 4 + 64)
    text = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return bytearray(text[:size])


def place(wire: bytearray, at: int, marks: bytes) -> None:
    """Overwrite wire[at - 1 : at + 1 + len(marks)] with 'x' + marks + 'x': the marks sit
    at `at`, fenced by letters so no CRLF around them merges with them."""
    wire[at - 1 : at + len(marks) + 1] = b"x" + marks + b"x"


# -- store level: small pieces, every boundary case ---------------------------------------

PIECE = 64


def boundary_body(total: int, seed: int, cases: list[tuple[int, bytes]]) -> bytes:
    wire = header(f"pieces {seed}") + base64_lines(total, seed)
    wire = bytearray(wire[:total])
    for at, marks in cases:
        place(wire, at, marks)
    return bytes(wire)


_PIECE_COMMAND = re.compile(r"UID FETCH (\d+) \(RFC822\.SIZE BODY\.PEEK\[\]<(\d+)\.(\d+)>\)")


def piece_requests(spy: CommandSpy) -> list[tuple[int, int, int]]:
    """(uid, offset, length) of every piece asked for."""
    return [tuple(map(int, m.groups())) for c in spy.commands if (m := _PIECE_COMMAND.fullmatch(c))]


def test_pieces_equal_to_lf_of_the_whole_body(dovecot_server, monkeypatch):
    user = dovecot_server.add_user()
    b = PIECE * 5  # a piece boundary in the middle of the body
    bodies = [
        # A CRLF split by a boundary; a lone CR ending a piece; one starting a piece; two
        # CRs ending a piece; a lone CR just after a boundary.  (Dovecot turns CR CR LF
        # into CRLF on APPEND: that case is in the unit test below.)
        boundary_body(
            PIECE * 12 + 17,
            1,
            [
                (b - 1, b"\r\n"),
                (b + PIECE - 1, b"\r"),
                (b + 2 * PIECE, b"\r"),
                (b + 3 * PIECE - 2, b"\r\r"),
                (b + 4 * PIECE + 1, b"\r"),
            ],
        ),
        # The last whole piece ends in a lone CR, the short last piece begins with it.
        # (Dovecot drops a CR that ends a message: that case is in the unit test below.)
        boundary_body(PIECE * 12, 2, [(b - 1, b"\r\n")])[:-2] + b"x\rx",
        # Ending in CRLF right at a boundary (one more, empty, piece finds the end).
        boundary_body(PIECE * 12 - 3, 3, [(b, b"\r")]) + b"x\r\n",
    ]
    small = b"Subject: small\r\n\r\nline\r\nlone\rcr\r\n"
    for body in (small, *bodies, small):
        append_raw(dovecot_server, user, body)
    wire = server_wire(dovecot_server, user)
    assert [wire[uid] for uid in sorted(wire)] == [small, *bodies, small]  # Dovecot keeps CRs

    monkeypatch.setattr(imap_bodies, "FETCH_LARGE_BYTES", 500)
    monkeypatch.setattr(imap_bodies, "FETCH_PIECE_BYTES", PIECE)
    spy = CommandSpy(monkeypatch)
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        keys = sorted(folder.list(), key=int)
        got = list(folder.fetch_many(keys))
    assert [k for k, _ in got] == keys  # in the order asked for
    for (_, data), uid in zip(got, sorted(wire), strict=True):
        assert not isinstance(data, MessageError), data
        assert data == to_lf(wire[uid]), uid
        assert type(data) is (bytearray if len(wire[uid]) > 500 else bytes)
    requests = piece_requests(spy)
    assert {uid for uid, _, _ in requests} == set(sorted(wire)[1:-1])
    assert len(requests) > 3 * 12
    for uid, offset, length in requests:
        assert length == PIECE
        # Dovecot 2.3 drops the byte after a lone CR when a piece starts right after it.
        assert offset == 0 or wire[uid][offset - 1 : offset] != b"\r", (uid, offset)


def fake_server(monkeypatch, wire: dict[int, bytes], sizes: dict[int, int] | None = None):
    """An IMAPFolder whose UID FETCHes of pieces are answered from `wire` (no network);
    like Dovecot 2.3 it corrupts a piece that starts right after a CR (a test failure
    here).  Returns the folder and the list of (uid, offset, length) asked for."""
    store = IMAPStore("imaps://u@example.org")
    folder = IMAPFolder(store, "INBOX", "INBOX")
    folder._sizes.update(sizes or {uid: len(body) for uid, body in wire.items()})
    monkeypatch.setattr(folder, "select", lambda: {})
    asked: list[tuple[int, int, int]] = []

    def call(operation, uid_set, items, folder=None, message_level=False, literal_budget=None):
        assert operation == "fetch" and message_level
        m = re.fullmatch(r"BODY\.PEEK\[\]<(\d+)\.(\d+)>", items[1])
        offset, length = int(m.group(1)), int(m.group(2))
        assert literal_budget == length  # a longer piece is refused before it is read
        uid = int(uid_set)
        asked.append((uid, offset, length))
        body = wire[uid]
        assert offset == 0 or body[offset - 1] != 13, f"a piece starts after a CR: {offset}"
        return {
            uid: {b"RFC822.SIZE": len(body), f"BODY[]<{offset}>".encode(): body[offset:][:length]}
        }

    monkeypatch.setattr(store, "call", call)
    return folder, asked


@pytest.mark.parametrize("piece", [2, 3, 4, 7])
def test_pieces_equal_to_lf_whatever_the_crs_and_boundaries(piece, monkeypatch):
    """Random bodies of CR, LF and letters (CR CR LF, runs of CRs longer than a piece,
    CRs at the end) cut at every possible place: the same as to_lf() of the whole."""
    monkeypatch.setattr(imap_bodies, "FETCH_LARGE_BYTES", 0)
    monkeypatch.setattr(imap_bodies, "FETCH_PIECE_BYTES", piece)
    rng = random.Random(piece)
    wire = {
        uid: bytes(rng.choice(b"\r\r\na") for _ in range(rng.randrange(1, 40)))
        for uid in range(1, 400)
    }
    wire[400] = b"\r" * 9 + b"\n"
    wire[401] = b"a" + b"\r" * 9
    wire[402] = b"a\r\r\n\r\n\r"
    folder, asked = fake_server(monkeypatch, wire)
    got = dict(folder.fetch_many([str(uid) for uid in wire]))
    for uid, body in wire.items():
        assert got[str(uid)] == to_lf(body), body
        assert isinstance(got[str(uid)], bytearray)
    assert max(length for _, _, length in asked) > piece  # a run of CRs: a bigger piece


def test_a_size_far_off_the_listing_still_gives_the_whole_body(monkeypatch):
    """RFC822.SIZE sizes nothing (some servers report it inexactly)."""
    monkeypatch.setattr(imap_bodies, "FETCH_LARGE_BYTES", 10)
    monkeypatch.setattr(imap_bodies, "FETCH_PIECE_BYTES", 16)
    body = b"Subject: x\r\n\r\n" + b"line\r\n" * 50
    folder, _ = fake_server(monkeypatch, {1: body, 2: body}, sizes={1: 11, 2: 10_000})
    got = dict(folder.fetch_many(["1", "2"]))
    assert got["1"] == got["2"] == to_lf(body)


def test_a_message_vanishing_in_mid_read_fails_alone(dovecot_server, monkeypatch):
    user = dovecot_server.add_user()
    bodies = [boundary_body(PIECE * 20, n, []) for n in range(3)]
    for body in bodies:
        append_raw(dovecot_server, user, body)
    monkeypatch.setattr(imap_bodies, "FETCH_LARGE_BYTES", 500)
    monkeypatch.setattr(imap_bodies, "FETCH_PIECE_BYTES", PIECE)
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        keys = sorted(folder.list(), key=int)
        call = store.call
        pieces = []

        def expunging_call(operation, *args, **kw):
            if operation == "fetch" and "BODY.PEEK[]<" in " ".join(args[1]):
                pieces.append(args[0])
                if args[0] == keys[1] and pieces.count(keys[1]) == 3:
                    with connect(dovecot_server, user) as other:  # another client deletes it
                        other.select_folder("INBOX")
                        other.delete_messages([int(keys[1])])
                        other.expunge()
            return call(operation, *args, **kw)

        monkeypatch.setattr(store, "call", expunging_call)
        got = dict(folder.fetch_many(keys))
    assert got[keys[0]] == to_lf(bodies[0]) and got[keys[2]] == to_lf(bodies[2])
    assert isinstance(got[keys[1]], MessageError)
    assert "vanished from the server while being read" in str(got[keys[1]])


def test_a_size_change_in_mid_read_fails_that_message(dovecot_server, monkeypatch):
    user = dovecot_server.add_user()
    append_raw(dovecot_server, user, boundary_body(PIECE * 20, 5, []))
    monkeypatch.setattr(imap_bodies, "FETCH_LARGE_BYTES", 500)
    monkeypatch.setattr(imap_bodies, "FETCH_PIECE_BYTES", PIECE)
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        (key,) = folder.list()
        call = store.call
        seen = []

        def growing_call(operation, *args, **kw):
            response = call(operation, *args, **kw)
            if operation == "fetch" and "BODY.PEEK[]<" in " ".join(args[1]):
                seen.append(1)
                if len(seen) == 2:
                    response[int(key)][b"RFC822.SIZE"] += 10
            return response

        monkeypatch.setattr(store, "call", growing_call)
        (result,) = folder.fetch_many([key])
    assert isinstance(result[1], MessageError)
    assert "changed size" in str(result[1])


# -- a real pull of one 50 MiB message ----------------------------------------------------


def big_wire() -> tuple[bytes, int, list[int]]:
    """~50 MiB: random base64 in 76-character CRLF lines, with CRs placed at the 4 MiB
    piece boundaries as mailsync will cut them (CRs ending a piece are left for the next
    one, which then starts at the first of them): a CRLF straddling a boundary, a lone CR
    ending a piece, one starting a piece, two ending one, one just after a boundary, and
    a straddling CRLF again.  Returns the bytes, the number of lone CRs and where the
    first seven pieces start."""
    piece = imap_bodies.FETCH_PIECE_BYTES
    wire = bytearray(header("fifty megabytes")) + base64_lines(50 * MIB, 50)
    start, lone, starts = 0, 0, [0]
    for marks, at, held in [
        (b"\r\n", -1, 1),  # CR the last byte of this piece, LF the first of the next
        (b"\r", -1, 1),  # a lone CR the last byte
        (b"\r", 0, 0),  # a lone CR the first byte of the next piece
        (b"\r\r", -2, 2),  # two lone CRs end this piece
        (b"\r", 1, 0),  # a lone CR the second byte of the next piece
        (b"\r\n", -1, 1),
    ]:
        end = start + piece
        place(wire, end + at, marks)
        lone += marks.count(b"\r") - marks.count(b"\r\n")
        start = end - held
        starts.append(start)
    return bytes(wire), lone, starts


# Forks exec()s mailsync and reports its rusage.  It runs as a separate small process:
# on Linux ru_maxrss survives exec(), so a child forked (or vforked) straight from this
# test process would report this process's RSS (the 50 MiB message, twice) as its own.
_LAUNCHER = """
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
pid = os.fork()
if pid == 0:
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.execv(sys.executable, [sys.executable, "-m", "mailsync", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def pull_process(server, user, dest, state) -> tuple[int, int, str]:
    """`python -m mailsync pull` as a child; (exit code, peak RSS in KiB, its output)."""
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(state),
        "XDG_CONFIG_HOME": str(state / "config"),
        "MAILSYNC_PASSWORD": user.password,
    }
    env.pop("MAILSYNC_PASSWORD_COMMAND", None)
    env.pop("MAILSYNC_CRASH_AT", None)
    url = f"{server.url('imaps', user)}?cafile={server.cafile}"
    state.mkdir(parents=True, exist_ok=True)
    log = state / "pull.log"
    launcher = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log), "pull", url, f"maildir:{dest}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    code, rss_kib = map(int, launcher.stdout.split())
    return code, rss_kib, log.read_text(errors="replace")


def test_pull_of_a_50_mib_message_is_exact_and_stays_under_100_mib(
    dovecot_server, mailenv, monkeypatch, capsys
):
    user = dovecot_server.add_user()
    wire, lone_crs, starts = big_wire()
    append_raw(dovecot_server, user, wire)
    (served,) = server_wire(dovecot_server, user).values()
    assert served == wire  # Dovecot serves exactly what was appended, lone CRs and all
    del served
    expected = to_lf(wire)
    del wire

    # In this process first: the pieces start where big_wire() meant them to.
    spy = CommandSpy(monkeypatch)
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        (key,) = folder.list()
        assert folder.fetch(key) == expected
    offsets = [offset for _, offset, _ in piece_requests(spy)]
    assert offsets[: len(starts)] == starts
    assert starts[1] == imap_bodies.FETCH_PIECE_BYTES - 1  # the straddling CRLF's CR
    assert len(offsets) >= len(expected) // imap_bodies.FETCH_PIECE_BYTES

    dest = mailenv / "mail"
    code, rss_kib, output = pull_process(dovecot_server, user, dest, mailenv / "state")
    assert code == 0, output
    (path,) = maildir_files(dest)["INBOX"]
    stored = path.read_bytes()
    assert len(stored) == len(expected)
    assert stored == expected
    assert stored.count(b"\r") == lone_crs == 5
    del stored, expected

    rss_mib = rss_kib / 1024
    with capsys.disabled():
        print(f"\n[peak RSS of `mailsync pull`, one 50 MiB message: {rss_mib:.1f} MiB]")
    # Peak RSS is deterministic to a MiB or two here: interpreter and imports (~29 MiB),
    # the body in one bytearray (50 MiB), one 4 MiB piece and its LF copy.  Measured
    # 86-88 MiB, so the limit (the target itself) leaves a margin of ~12 MiB: enough for
    # noise and small growth elsewhere, not for a second copy of the body (+48 MiB, as
    # before pieces: ~128-130 MiB).
    assert rss_mib < RSS_LIMIT_MIB, output


@pytest.mark.parametrize("extra", [0, 1])
def test_the_threshold_is_strictly_above(extra, dovecot_server, monkeypatch):
    """Up to FETCH_LARGE_BYTES the batched path (bytes), above it pieces (bytearray)."""
    user = dovecot_server.add_user()
    monkeypatch.setattr(imap_bodies, "FETCH_LARGE_BYTES", 4000)
    monkeypatch.setattr(imap_bodies, "FETCH_PIECE_BYTES", 1000)
    body = boundary_body(4000 + extra, 9, [(1999, b"\r\n"), (3000, b"\r")])
    append_raw(dovecot_server, user, body)
    with store_for(dovecot_server, user) as store:
        folder = store.open_folder("INBOX")
        (key,) = folder.list()
        data = folder.fetch(key)
    assert data == to_lf(body)
    assert type(data) is (bytearray if extra else bytes)

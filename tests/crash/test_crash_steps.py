"""Kill the process after each step of a run in turn, rerun, and require every message
exactly once.  The test-only hook MAILSYNC_CRASH_AT=N makes the N-th step of a run exit
the process at once (os._exit: no cleanup, no flush, as kill -9 would)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from mailsync.stores import open_store

CRASHED = 137


def seed(url: str, folder: str, bodies: list[bytes]) -> None:
    with open_store(url) as store:
        box = store.open_folder(folder, create=True)
        for body in bodies:
            box.append(body, frozenset(), 1_700_000_000)
        box.close()


def delete_where(url: str, folder: str, body: bytes) -> None:
    with open_store(url) as store:
        box = store.open_folder(folder)
        for key in list(box.list()):
            if box.fetch(key) == body:
                box.delete(key)
                break
        box.close()


def contents(url: str) -> dict[str, Counter]:
    with open_store(url, read_only=True) as store:
        out = {}
        for name in store.list_folders():
            box = store.open_folder(name)
            out[name] = Counter(box.fetch(k) for k in box.list())
            box.close()
        return out


def mailsync(args: list[str], state: str, crash_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_STATE_HOME": state, "MAILSYNC_CRASH_AT": str(crash_at or "")}
    return subprocess.run(
        [sys.executable, "-m", "mailsync", "-q", *args], env=env, capture_output=True, text=True
    )


def message(n: int, size: int = 0) -> bytes:
    filler = b"".join(b"line %d of a longer body\n" % i for i in range(size))
    return b"From: x@example.org\nSubject: message %d\n\nFrom here on, body %d\n%s" % (
        n,
        n,
        filler,
    )


def crash_every_step(tmp_path, prepare, args_of, check) -> int:
    """prepare(dir) builds a scenario; run args_of(dir) with a crash at step 1, 2, ...;
    after each crash, rerun to completion and check(dir).  Returns the number of steps.
    (Each run gets a fresh prepare(): state files are keyed by the stores' paths.)"""
    n = 1
    while True:
        work = tmp_path / f"run{n}"
        prepare(work)
        crashed = mailsync(args_of(work), str(work / "state"), crash_at=n)
        if crashed.returncode != CRASHED:
            assert crashed.returncode == 0, crashed.stderr
            check(work)
            return n
        rerun = mailsync(args_of(work), str(work / "state"))
        assert rerun.returncode == 0, f"rerun after crash at step {n}: {rerun.stderr}"
        check(work)
        # and a third run changes nothing further
        again = mailsync(args_of(work), str(work / "state"))
        assert again.returncode == 0
        check(work)
        shutil.rmtree(work)
        n += 1
        assert n < 400, "the run never completes"


INBOX = [message(i) for i in range(5)] + [message(5)]  # message 5 twice: duplicates are real
INBOX.append(message(5))
ARCHIVE = [message(100 + i, size=50) for i in range(3)]


@pytest.mark.parametrize(
    "source,dest",
    [("maildir", "mbox"), ("mbox", "maildir"), ("maildir", "maildir")],
    ids=["maildir-to-mbox", "mbox-to-maildir", "maildir-to-maildir"],
)
def test_pull_crash_at_every_step(tmp_path, source, dest):
    def urls(d):
        return f"{source}:{d / 'src'}", f"{dest}:{d / 'dst'}"

    def prepare(d):
        src, dst = urls(d)
        seed(src, "INBOX", INBOX)
        seed(src, "Archive/2019", ARCHIVE)
        # A destination that already holds one of the messages (a lost state, say).
        seed(dst, "INBOX", [message(2)])

    def check(d):
        src, dst = urls(d)
        got = contents(dst)
        assert got["INBOX"] == Counter(INBOX)
        assert got["Archive/2019"] == Counter(ARCHIVE)
        assert contents(src)["INBOX"] == Counter(INBOX)

    steps = crash_every_step(tmp_path, prepare, lambda d: ["pull", *urls(d)], check)
    assert steps > 5


@pytest.mark.parametrize("local", ["mbox", "maildir"])
def test_push_crash_at_every_step(tmp_path, local):
    def urls(d):
        return f"{local}:{d / 'local'}", f"maildir:{d / 'remote'}"

    def prepare(d):
        seed(urls(d)[0], "INBOX", INBOX[:4])
        seed(urls(d)[0], "Sent", ARCHIVE)

    def check(d):
        got = contents(urls(d)[1])
        assert got["INBOX"] == Counter(INBOX[:4])
        assert got["Sent"] == Counter(ARCHIVE)

    crash_every_step(tmp_path, prepare, lambda d: ["push", *urls(d)], check)


@pytest.mark.parametrize("pair", [("maildir", "mbox"), ("mbox", "maildir")], ids=str)
def test_two_way_crash_at_every_step(tmp_path, pair):
    kind_a, kind_b = pair

    def urls(d):
        return f"{kind_a}:{d / 'a'}", f"{kind_b}:{d / 'b'}"

    def prepare(d):
        a, b = urls(d)
        seed(a, "INBOX", INBOX[:5])
        seed(b, "Lists", ARCHIVE)
        first = mailsync(["sync", a, b], str(d / "state"))
        assert first.returncode == 0, first.stderr
        # then both sides change: new mail on each, a deletion on each
        seed(a, "INBOX", [message(50), message(51)])
        seed(b, "INBOX", [message(60)])
        seed(b, "Lists", [message(61)])
        delete_where(a, "INBOX", message(0))
        delete_where(b, "Lists", ARCHIVE[0])

    def check(d):
        a, b = urls(d)
        inbox = Counter(INBOX[1:5] + [message(50), message(51), message(60)])
        lists = Counter(ARCHIVE[1:] + [message(61)])
        for side in (a, b):
            got = contents(side)
            assert got["INBOX"] == inbox, side
            assert got["Lists"] == lists, side

    crash_every_step(tmp_path, prepare, lambda d: ["sync", *urls(d)], check)


# Messages an mbox gives a final newline (stored_form): after a crash between the append
# and the state commit, the rerun must know the copy although its bytes differ.
BARE = [
    b"From: x@example.org\nSubject: bare %d\n\nFrom here, no final newline %d" % (i, i)
    for i in range(4)
] + [b"Subject: ends in a lone CR\n\nlast line\r", message(7)]


def stored(body: bytes) -> bytes:
    return body + b"\n" if body and not body.endswith(b"\n") else body


@pytest.mark.parametrize("adopt", [False, True], ids=["fresh", "adopting"])
def test_pull_into_mbox_of_messages_without_a_final_newline(tmp_path, adopt):
    def urls(d):
        return f"maildir:{d / 'src'}", f"mbox:{d / 'dst'}"

    def prepare(d):
        src, dst = urls(d)
        seed(src, "INBOX", BARE)
        if adopt:  # a lost state: the destination already holds two of them, normalised
            seed(dst, "INBOX", [BARE[0], BARE[4]])

    def check(d):
        got = contents(urls(d)[1])
        assert got["INBOX"] == Counter(stored(b) for b in BARE)

    steps = crash_every_step(tmp_path, prepare, lambda d: ["pull", *urls(d)], check)
    assert steps > 3


def test_two_way_between_mbox_and_maildir_without_final_newlines(tmp_path):
    """The mbox copy comes back to the Maildir side as it is stored (one newline more):
    a rerun and a crash at any step change nothing further and duplicate nothing."""

    def urls(d):
        return f"maildir:{d / 'a'}", f"mbox:{d / 'b'}"

    def prepare(d):
        seed(urls(d)[0], "INBOX", BARE[:3])
        seed(urls(d)[1], "INBOX", [BARE[3]])

    def check(d):
        a, b = urls(d)
        assert contents(b)["INBOX"] == Counter(stored(x) for x in BARE[:4])
        assert contents(a)["INBOX"] == Counter(BARE[:3] + [stored(BARE[3])])

    crash_every_step(tmp_path, prepare, lambda d: ["sync", *urls(d)], check)

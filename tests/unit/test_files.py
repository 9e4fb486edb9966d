"""mailsync/files.py, the file primitives of the local stores, on a real file system."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from mailsync import files
from mailsync.errors import FolderError, MessageError


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_dirs_parents_too_and_their_parents_synced(tmp_path, umask, monkeypatch):
    umask(0o002)
    synced = []
    monkeypatch.setattr(files, "fsync_dir", synced.append)
    files.make_private_dirs(str(tmp_path / "a" / "b" / "c"))
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode(path) == 0o700
    # Each directory whose entries changed, top down; nothing when all is there already.
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    synced.clear()
    files.make_private_dirs(str(tmp_path / "a" / "b" / "c"))
    assert synced == []


def test_private_dirs_collect_what_to_sync_for_the_caller(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "fsync_dir", lambda path: pytest.fail("synced too early"))
    dirty: set[str] = set()
    files.make_private_dirs(str(tmp_path / "x" / "y"), dirty)
    assert dirty == {str(tmp_path), str(tmp_path / "x")}


def test_private_dirs_name_what_is_in_the_way(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FolderError, match="file exists and is not a directory; move it away"):
        files.make_private_dirs(str(tmp_path / "file" / "sub"))


@pytest.mark.parametrize("value", [0, 0o277])
def test_atomic_write_private_whatever_the_umask(tmp_path, umask, value):
    umask(value)
    target = tmp_path / "message"
    files.atomic_write(
        str(tmp_path / "tmp1"), str(target), b"body\n", where="here", mtime_ns=10**18
    )
    assert target.read_bytes() == b"body\n"
    assert mode(target) == 0o600
    assert os.stat(target).st_mtime_ns == 10**18
    assert not (tmp_path / "tmp1").exists()


def test_atomic_write_fails_cleanly_with_the_sentence(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(
        MessageError, match="^disk full writing to the folder: free space and rerun$"
    ):
        files.atomic_write(str(tmp_path / "t"), str(tmp_path / "m"), b"x", where="the folder")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == []  # neither the temporary file nor the target


def test_atomic_write_exclusive_or_reusing_a_leftover(tmp_path):
    leftover = tmp_path / "tmp"
    leftover.write_bytes(b"a killed run's half file, longer than the new one")
    with pytest.raises(MessageError, match=f"cannot write to {tmp_path} .*File exists"):
        files.atomic_write(str(leftover), str(tmp_path / "m"), b"new", where="w")
    files.atomic_write(str(leftover), str(tmp_path / "m"), b"new", where="w", exclusive=False)
    assert (tmp_path / "m").read_bytes() == b"new"


def test_atomic_write_follows_no_link_at_the_temporary_name(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, tmp_path / "tmp")
    with pytest.raises(MessageError):
        files.atomic_write(
            str(tmp_path / "tmp"), str(tmp_path / "m"), b"x", where="w", exclusive=False
        )
    assert victim.read_bytes() == b"keep"


def test_write_in_place_is_private_and_complete(tmp_path, umask, monkeypatch):
    umask(0o277)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    files.write_in_place(str(tmp_path / "journal"), b"12345 678\n")
    monkeypatch.undo()
    assert (tmp_path / "journal").read_bytes() == b"12345 678\n"
    assert mode(tmp_path / "journal") == 0o600


@pytest.mark.parametrize(
    "code, sentence",
    [
        (errno.EDQUOT, "disk quota exceeded writing to W: free space or raise the quota and rerun"),
        (errno.EACCES, "permission denied writing to W: fix its permissions and rerun"),
        (errno.EROFS, "W is on a read-only file system: remount it read-write and rerun"),
        (errno.EIO, "cannot write to W (Input/output error): check the disk and rerun"),
    ],
)
def test_write_error_sentences(code, sentence):
    assert files.write_error(OSError(code, os.strerror(code)), "W") == sentence


def test_pid_alive():
    assert files.pid_alive(os.getpid())
    assert files.pid_alive(1)  # init: alive, whoever owns it
    assert not files.pid_alive(2**22 + 1)  # above pid_max on Linux


def test_a_directory_made_by_another_thread_meanwhile_is_no_error(tmp_path, monkeypatch):
    """Four folders created at once (--jobs 4) under a root none has made yet: between
    one thread's isdir() and its lexists() another makes the root; that is a directory,
    not "something in the way" (a run failed a folder so, exit 1)."""
    root = tmp_path / "Mail"
    real_isdir = os.path.isdir
    raced = []

    def isdir(path):
        if str(path) == str(root) and not raced:
            raced.append(path)
            os.mkdir(root, 0o700)  # the other thread, right after this look
            return False
        return real_isdir(path)

    monkeypatch.setattr(files.os.path, "isdir", isdir)
    files.make_private_dirs(str(root / "INBOX"))
    assert real_isdir(root / "INBOX") and raced

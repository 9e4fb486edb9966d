"""File primitives the local stores share (Maildir, its vdirs, mbox): what mailsync writes
is private (files 0600, directories 0700, whatever the umask), durable (fsync of the file,
and of each directory whose entries changed) and atomic (a new file is written under a
temporary name and renamed into place, so readers see the old file or the whole new one);
a write that fails says so in one sentence that names the place and what to do.

Only the standard library and mailsync.errors: no store imports another, they all import
this.  Imported with a local store, never at start-up.
"""

from __future__ import annotations

import errno
import os

from mailsync.errors import FolderError, MessageError

DIR_MODE = 0o700
FILE_MODE = 0o600


def fsync_dir(path: str) -> None:
    """Make the entries of directory `path` (files created, renamed or removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: str, dirty: set[str] | None = None) -> None:
    """mkdir -p with mode 0700 whatever the umask: the missing directories of `path`
    from the top down, in a loop (a path a thousand levels deep is no recursion).  A
    directory someone else makes meanwhile is fine; something that is no directory on
    the way is a FolderError.  The parents whose entries changed are added to `dirty`
    for the caller to fsync with its other changes, or, without `dirty`, fsynced before
    this returns.  OSError for anything else (no permission, disk full)."""
    missing = []
    current = path
    while not os.path.isdir(current):
        if os.path.lexists(current):
            if os.path.isdir(current):  # made by another thread after the test above
                break
            raise FolderError(f"{current} exists and is not a directory; move it away")
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    changed = set() if dirty is None else dirty
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:  # made by someone else meanwhile
            if not os.path.isdir(directory):
                raise FolderError(f"{directory} exists and is not a directory; move it away")
            continue
        os.chmod(directory, DIR_MODE)
        changed.add(os.path.dirname(directory))
    if dirty is None:
        for directory in sorted(changed):
            fsync_dir(directory)


def write_all(fd: int, data) -> None:
    """os.write until every byte of `data` (bytes, bytearray, memoryview) is written:
    a write may take fewer bytes than it was given."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_error(error: OSError, where: str) -> str:
    """The sentence for a failed write to `where`: what happened and what to do."""
    code = error.errno
    if code == errno.ENOSPC:
        return f"disk full writing to {where}: free space and rerun"
    if code == errno.EDQUOT:
        return f"disk quota exceeded writing to {where}: free space or raise the quota and rerun"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied writing to {where}: fix its permissions and rerun"
    if code == errno.EROFS:
        return f"{where} is on a read-only file system: remount it read-write and rerun"
    reason = error.strerror or str(error)
    return f"cannot write to {where} ({reason}): check the disk and rerun"


def write_in_place(path: str, data) -> None:
    """Create or truncate `path` (no symbolic link followed), make it 0600 whatever the
    umask, write `data` and fsync it.  Not atomic, for small files a crash may leave
    empty or short, whose readers take that as no file (a journal, a marker); the
    caller fsyncs the directory.  OSError as it came."""
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        os.fchmod(fd, FILE_MODE)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    tmp: str,
    path: str,
    data,
    *,
    where: str,
    mtime_ns: int | None = None,
    mode: int = FILE_MODE,
    owner: tuple[int, int] | None = None,
    exclusive: bool = True,
) -> None:
    """Write `data` to the new file `tmp`, give it `mode` (whatever the umask), `owner`
    (uid, gid; where this process may) and the modification time `mtime_ns`, fsync it
    and rename it to `path`.  The directories' entries are not fsynced here: the caller
    does that, once for many files if it likes.

    `exclusive`: `tmp` must not exist (a unique name); otherwise a file left there by a
    run that died is truncated and reused (a name per process).  No symbolic link at
    `tmp` is followed.  On failure `tmp` is removed and MessageError raised, naming the
    directory of `tmp` if it could not be created, else `where`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    try:
        fd = os.open(tmp, flags, FILE_MODE)
    except OSError as e:
        raise MessageError(write_error(e, os.path.dirname(tmp)))
    try:
        try:
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, *owner)
                except OSError:
                    pass  # not ours to give away: the file stays this process's
            os.fchmod(fd, mode)
            write_all(fd, data)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise MessageError(write_error(e, where))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` (on this machine) still exists; this process always does.
    Tells a lock or a temporary file whose writer died from one still in use."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, owned by someone else
    return True
